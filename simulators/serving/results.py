"""What a simulation returns: per-request and per-instance tables, a summary, plots, and an overload check.

:func:`overload_report` says whether a run was overloaded, so that a huge mean TTFT is not read as a
property of the policy when it is the queue's. Two symptoms are checked on the per-request table, with
``N`` requests, ``W(t)`` the requests waiting at time ``t`` (arrived, not yet scheduled for the first
time), ``t_mid`` and ``t_end`` the middle and the end of the arrival window:

* **backlog growing to the end**: ``W(t_end) >= max(10, 5 % of N)`` and ``W(t_end) > W(t_mid)`` -- when the
  last request arrives, a sizeable queue is waiting and it is longer than halfway through the arrivals,
  so the instances fell behind the offered load and did not catch up;
* **TTFT many times the service time**: the median TTFT is at least 10 times the median service time
  after the first token (``e2e - TTFT``, the time the request then spends decoding): requests wait far
  longer for a first token than it takes to serve them once started;

and requests left unfinished are reported too. Any symptom makes the run "overloaded"; the report names
the numbers, and the command line prints it as a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gpusched import metrics

REQUEST_COLUMNS = [
    "request_id", "arrival_time_s", "scheduled_time_s", "first_token_time_s", "finish_time_s",
    "prompt_tokens", "output_tokens", "instance", "num_preemptions", "cached_tokens", "status",
]
TIMELINE_COLUMNS = ["time_s", "instance", "kv_used_blocks", "running", "waiting", "batch_tokens", "batch_seqs",
                    "steps"]

_TIMELINE_DTYPES = {c: float if c == "time_s" else np.int64 for c in TIMELINE_COLUMNS}  # also when empty


@dataclass
class SimResult:
    """Results of one run.

    requests : one row per request (times in simulated seconds; ``ttft_s``, ``tpot_s``, ``e2e_s`` and
        ``queueing_s`` added by :func:`gpusched.metrics.request_latencies`); ``status`` is ``finished`` or
        the reason a request did not finish.
    timeline : one row per engine step and instance (empty if the run did not record it); on the
        ``simpy`` engine a row may cover a run of identical decode steps (``steps`` > 1, ``batch_tokens``
        summed over them).
    kv_blocks : KV capacity of each instance in blocks, to turn ``kv_used_blocks`` into utilisation.
    engine : what ran it: ``compiled`` (:mod:`simulators.compiled`), ``simpy`` or ``step`` (SimPy, one
        event per step).
    """

    requests: pd.DataFrame
    timeline: pd.DataFrame
    kv_blocks: list[int]
    num_steps: int
    wall_time_s: float = float("nan")
    engine: str = "simpy"

    @classmethod
    def from_run(cls, trace, seqs, engines, engine: str = "simpy") -> "SimResult":
        requests = sequences_frame(trace.df["request_id"].to_numpy(), seqs)  # seqs are the trace's rows, in order
        timeline = timeline_frame(engines)
        return cls(requests, timeline, [e.kv.num_blocks for e in engines], sum(e.num_steps for e in engines),
                   engine=engine)

    @property
    def num_unfinished(self) -> int:
        return int((self.requests["status"] != "finished").sum())

    def summary(self) -> pd.DataFrame:
        """TTFT, TPOT, end-to-end and queueing latency: mean and percentiles (seconds)."""
        return metrics.summary(self.requests)

    def save(self, out_dir: str | Path, plots: bool = True, timeline: bool = True) -> Path:
        """Write ``requests.csv``, ``summary.csv``, ``timeline.csv`` (one row per step: large; skipped with
        ``timeline=False``) and (optionally) PNG plots (the timeline plot only with the timeline)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.requests.to_csv(out / "requests.csv", index=False)
        if timeline:
            self.timeline.to_csv(out / "timeline.csv", index=False)
        self.summary().to_csv(out / "summary.csv")
        if plots:
            self.plot_latency_cdfs(out / "latency_cdf.png")
            if timeline and len(self.timeline):
                self.plot_timeline(out / "timeline.png")
        return out

    def overload(self) -> "OverloadReport":
        """:func:`overload_report` of this run's requests."""
        return overload_report(self.requests)

    def plot_latency_cdfs(self, path: str | Path) -> None:
        """Empirical CDFs of TTFT, TPOT and end-to-end latency."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
        names = {"ttft_s": "time to first token", "tpot_s": "time per output token", "e2e_s": "end-to-end latency"}
        for ax, col in zip(axes, names):
            values = np.sort(self.requests[col].dropna().to_numpy())
            if values.size:
                ax.plot(values, np.arange(1, values.size + 1) / values.size)
            ax.set_title(names[col])
            ax.set_xlabel(f"{names[col]} (s)")
            ax.set_ylabel("fraction of requests")
            ax.grid(alpha=0.3)
        finished = int((self.requests["status"] == "finished").sum())
        fig.suptitle(f"Latency distributions ({finished:,} finished requests, {self.engine} engine)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def plot_timeline(self, path: str | Path) -> None:
        """KV utilisation and running/waiting counts of every instance over time."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_kv, ax_q) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
        for inst, rows in self.timeline.groupby("instance"):
            ax_kv.plot(rows["time_s"], rows["kv_used_blocks"] / self.kv_blocks[inst], lw=0.8, label=f"instance {inst}")
            ax_q.plot(rows["time_s"], rows["running"], lw=0.8, label=f"running {inst}")
            ax_q.plot(rows["time_s"], rows["waiting"], lw=0.8, ls="--", label=f"waiting {inst}")
        ax_kv.set_ylabel("KV blocks in use (fraction)")
        ax_kv.set_title("KV cache utilisation per instance")
        ax_q.set_ylabel("requests")
        ax_q.set_title("running (solid) and waiting (dashed) requests per instance")
        ax_q.set_xlabel("simulated time (s)")
        for ax in (ax_kv, ax_q):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


@dataclass(frozen=True)
class OverloadReport:
    """Symptoms of overload in one run (see the module docstring for the definitions).

    waiting_mid, waiting_end : requests waiting (arrived, never scheduled) at the middle and the end of the
        arrival window. median_ttft_s, median_service_s : medians over finished requests of TTFT and of
        ``e2e - TTFT``. unfinished : requests not finished when the run ended. reasons : one sentence per
        symptom found (empty: not overloaded).
    """

    waiting_mid: int
    waiting_end: int
    median_ttft_s: float
    median_service_s: float
    unfinished: int
    reasons: tuple[str, ...] = field(default=())

    @property
    def overloaded(self) -> bool:
        return bool(self.reasons)

    def message(self) -> str:
        """One line for the user: the symptoms and what to do."""
        if not self.reasons:
            return "not overloaded"
        return ("the run is overloaded: " + "; ".join(self.reasons) + ". Latencies then measure the queue more "
                "than the policy: lower the load (--rate-scale below 1, --limit) or add capacity (--instances, "
                "--tp, a larger GPU)")


BACKLOG_MIN_REQUESTS = 10
BACKLOG_MIN_FRACTION = 0.05
TTFT_OVER_SERVICE = 10.0


def overload_report(requests: pd.DataFrame) -> OverloadReport:
    """Check a per-request table (:attr:`SimResult.requests`) for the overload symptoms of the module docstring."""
    n = len(requests)
    arrivals = np.sort(requests["arrival_time_s"].to_numpy(float))
    scheduled = np.sort(requests["scheduled_time_s"].to_numpy(float))
    scheduled = scheduled[~np.isnan(scheduled)]
    if n == 0:
        return OverloadReport(0, 0, float("nan"), float("nan"), 0)
    t_end = arrivals[-1]
    t_mid = arrivals[0] + 0.5 * (t_end - arrivals[0])

    def waiting(t: float) -> int:  # arrived by t and not scheduled by t (first scheduling only)
        return int(np.searchsorted(arrivals, t, side="right") - np.searchsorted(scheduled, t, side="right"))

    w_mid, w_end = waiting(t_mid), waiting(t_end)
    done = requests[requests["status"] == "finished"]
    ttft = float(done["ttft_s"].median()) if len(done) else float("nan")
    service = float((done["e2e_s"] - done["ttft_s"]).median()) if len(done) else float("nan")
    unfinished = int(n - len(done))
    reasons = []
    if w_end >= max(BACKLOG_MIN_REQUESTS, BACKLOG_MIN_FRACTION * n) and w_end > w_mid:
        reasons.append(f"{w_end:,} requests were waiting when the last one arrived (t = {t_end:,.0f} s), "
                       f"up from {w_mid:,} halfway through the arrivals")
    if service > 0 and ttft >= TTFT_OVER_SERVICE * service:
        reasons.append(f"the median TTFT ({ttft:,.1f} s) is {ttft / service:,.0f}x the median service time after "
                       f"the first token ({service:,.2f} s)")
    if unfinished:
        reasons.append(f"{unfinished:,} request(s) did not finish")
    return OverloadReport(w_mid, w_end, ttft, service, unfinished, tuple(reasons))


def sequences_frame(request_ids, seqs, **columns) -> pd.DataFrame:
    """The per-request table of an engine's sequences ``seqs`` (one per id of ``request_ids``, in order): their
    times, lengths, instance, preemptions, cached tokens and status; an engine that tracks one of these
    differently passes it in ``columns`` (a sequence per request), which replaces the derived one."""
    derived = {
        "request_id": request_ids,
        "arrival_time_s": [s.arrival_time_s for s in seqs],
        "scheduled_time_s": [_nan(s.scheduled_time_s) for s in seqs],
        "first_token_time_s": [_nan(s.first_token_time_s) for s in seqs],
        "finish_time_s": [_nan(s.finish_time_s) for s in seqs],
        "prompt_tokens": [s.prompt_tokens for s in seqs],
        "output_tokens": [s.output_tokens for s in seqs],
        "instance": [-1 if s.instance is None else s.instance for s in seqs],
        "num_preemptions": [s.num_preemptions for s in seqs],
        "cached_tokens": [s.cached_tokens for s in seqs],
        "status": [_status(s) for s in seqs],
    }
    return requests_frame({**derived, **columns})


def timeline_frame(engines) -> pd.DataFrame:
    """The engines' per-step timelines in one table, in time order (ties: instance), with fixed dtypes."""
    rows = [row for e in engines if e.timeline for row in e.timeline]
    return pd.DataFrame(rows, columns=TIMELINE_COLUMNS).astype(_TIMELINE_DTYPES).sort_values(
        ["time_s", "instance"], kind="stable", ignore_index=True)


def requests_frame(columns: dict) -> pd.DataFrame:
    """The per-request table from an engine's ``columns`` (:data:`REQUEST_COLUMNS`; a missing ``status``
    is derived from the times as :func:`_status` does), times as floats, with the latencies added."""
    if "status" not in columns:
        finished = ~np.isnan(np.asarray(columns["finish_time_s"], float))
        started = ~np.isnan(np.asarray(columns["first_token_time_s"], float))
        columns = {**columns, "status": np.where(finished, "finished",
                                                 np.where(started, _UNFINISHED_DECODING, _UNFINISHED_WAITING))}
    frame = pd.DataFrame(columns, columns=REQUEST_COLUMNS)
    times = ["arrival_time_s", "scheduled_time_s", "first_token_time_s", "finish_time_s"]
    frame[times] = frame[times].astype(float)  # SimPy's clock starts at the int 0
    if frame.empty:  # the same dtypes from every engine when there is nothing to infer them from
        counts = ["prompt_tokens", "output_tokens", "instance", "num_preemptions", "cached_tokens"]
        frame = frame.astype({**dict.fromkeys(counts, np.int64), "status": str})
    return metrics.request_latencies(frame)


_UNFINISHED_DECODING = "unfinished: decoding when the run ended"
_UNFINISHED_WAITING = "unfinished: waiting when the run ended"


def _nan(value):
    return float("nan") if value is None else value


def _status(seq) -> str:
    if seq.finish_time_s is not None:
        return "finished"
    if seq.instance is None:
        return "never routed"
    if seq.first_token_time_s is not None:
        return _UNFINISHED_DECODING
    return _UNFINISHED_WAITING
