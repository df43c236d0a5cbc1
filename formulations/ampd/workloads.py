"""Multi-round agent sessions: the stand-ins for the paper's four traces (spec §4), in the project's trace format.

A session alternates decode with an environment interaction (a tool or retrieval call). Round 0 prefills the
prompt; round r > 0 prefills, on top of the cached history, the interaction's result (the *increment*), then
decodes. The paper's traces are not public in a form we hold (ToolBench/StableToolBench, TRAIL for GAIA, and
HotpotQA/DuReader runs the authors recorded), so sessions are drawn to match the paper's Table 1 [P] with the
spec's stand-in distributions [R]:

* rounds: ``1 + Geometric`` matched to the mean (``rounds_dist="geometric"``), or a constant (HotpotQA and
  DuReader make 3 retrieval calls per request: ``"constant"``);
* per-round new input tokens and output tokens: log-normal with the Table 1 means and coefficient of
  variation ``length_cv`` (1.0 by default; the paper reports means only). Table 1's "prefill length" and
  "decode length" are read as per-round averages of new input tokens and of output tokens (spec §4.1 [R]);
  round 0's prompt is drawn like any increment;
* interaction latency: log-normal with median 1 s and σ = 1 for tool calls (ToolBench, GAIA), a constant
  0.2 s for retrieval (HotpotQA, DuReader) (spec §4.1 [R]; the paper does not report it);
* session arrivals: Poisson at ``rate_per_s`` [P].

**Trace format** (:class:`gpusched.workload.Trace`, release contract of :func:`gpusched.synthetic.agent_sessions`):
one row per round; ``prompt_tokens`` is the round's whole prompt (history + increment), so the increment of
round r is ``prompt[r] - prompt[r-1] - output[r-1]``; ``arrival_time_s`` is the session's arrival on every row;
``think_time_s`` is the interaction that precedes round r (0 on round 0): round r is released that long after
round r-1's last token. :func:`session_prefills` turns a trace into AMPD's (l_hist, l_incr) prefill tasks,
:func:`check_sessions` validates a loaded one, :func:`save_sessions`/:func:`load_sessions` round-trip CSV.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, TraceError
from gpusched.synthetic import poisson_arrivals
from gpusched.workload import Trace, load_trace

__all__ = ["AgentWorkload", "WORKLOADS", "get_workload", "agent_trace", "session_prefills", "check_sessions",
           "save_sessions", "load_sessions"]

_SESSION_COLUMNS = ("session_id", "round", "think_time_s")


@dataclass(frozen=True)
class AgentWorkload:
    """How sessions of one workload are drawn (module docstring).

    name : short name.
    mean_rounds : mean rounds per session (>= 1).
    rounds_dist : ``"geometric"`` (1 + Geometric, mean ``mean_rounds``) or ``"constant"`` (integer mean).
    mean_incr_tokens : mean new input tokens per round (round 0's prompt included).
    mean_output_tokens : mean output tokens per round.
    length_cv : coefficient of variation of both log-normal lengths.
    interaction : ``"tool"`` (log-normal latency, median ``interaction_median_s``, log-σ ``interaction_sigma``)
        or ``"retrieval"`` (constant ``interaction_median_s``).
    gpus : GPUs of the paper's experiment on this trace (Table 1), for reference.
    source : what the numbers come from.
    """

    name: str
    mean_rounds: float
    rounds_dist: str
    mean_incr_tokens: float
    mean_output_tokens: float
    length_cv: float = 1.0
    interaction: str = "tool"
    interaction_median_s: float = 1.0
    interaction_sigma: float = 1.0
    gpus: int | None = None
    source: str = ""

    def __post_init__(self):
        owner = f"AgentWorkload {self.name!r}"
        for f in ("mean_rounds", "mean_incr_tokens", "mean_output_tokens"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 1:
                raise ConfigError(f"{owner}: {f} must be a finite number >= 1, got {v!r}")
        if self.rounds_dist not in ("geometric", "constant"):
            raise ConfigError(f"{owner}: rounds_dist must be 'geometric' or 'constant', got {self.rounds_dist!r}")
        if self.rounds_dist == "constant" and self.mean_rounds != int(self.mean_rounds):
            raise ConfigError(f"{owner}: a constant round count must be an integer, got {self.mean_rounds!r}")
        if self.interaction not in ("tool", "retrieval"):
            raise ConfigError(f"{owner}: interaction must be 'tool' or 'retrieval', got {self.interaction!r}")
        for f in ("length_cv", "interaction_median_s", "interaction_sigma"):
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{owner}: {f} must be a finite number >= 0, got {v!r}")

    def _lognormal(self, rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
        if self.length_cv == 0:
            return np.full(n, max(1, round(mean)), dtype=np.int64)
        s2 = math.log1p(self.length_cv ** 2)
        draw = rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), n)
        return np.maximum(1, np.rint(draw)).astype(np.int64)

    def draw_rounds(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.rounds_dist == "constant":
            return np.full(n, int(self.mean_rounds), dtype=np.int64)
        return rng.geometric(1.0 / self.mean_rounds, n).astype(np.int64)  # support 1, 2, ...; mean = mean_rounds

    def draw_interactions_s(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.interaction == "retrieval":
            return np.full(n, float(self.interaction_median_s))
        return rng.lognormal(math.log(self.interaction_median_s), self.interaction_sigma, n) \
            if self.interaction_median_s > 0 else np.zeros(n)


_TABLE1 = "AMPD Table 1 (per-round means, spec §4.1) with the spec's stand-in distributions"
WORKLOADS: dict[str, AgentWorkload] = {w.name: w for w in (
    AgentWorkload("toolbench", 3.96, "geometric", 703.79, 50.39, interaction="tool", gpus=8, source=_TABLE1),
    AgentWorkload("gaia", 11.32, "geometric", 6161.02, 528.76, interaction="tool", gpus=32, source=_TABLE1),
    AgentWorkload("hotpotqa", 3, "constant", 1569.8, 80.03, interaction="retrieval", interaction_median_s=0.2,
                  gpus=8, source=_TABLE1),
    AgentWorkload("dureader", 3, "constant", 3081.23, 150.10, interaction="retrieval", interaction_median_s=0.2,
                  gpus=16, source=_TABLE1),
)}
"""The paper's four workloads (Table 1) as stand-ins."""


def get_workload(name: str) -> AgentWorkload:
    try:
        return WORKLOADS[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown AMPD workload {name!r}; known: {', '.join(WORKLOADS)}") from None


def agent_trace(workload: AgentWorkload | str, rate_per_s: float, num_sessions: int, seed: int = 0,
                max_context_tokens: int | None = None) -> Trace:
    """``num_sessions`` sessions of ``workload`` arriving as a Poisson process at ``rate_per_s`` (seeded).

    ``max_context_tokens``: if given, a session ends before the round whose prompt + output would exceed it
    (the model's context window); how many sessions were cut and rounds dropped is recorded in
    ``trace.meta`` (``sessions_cut``, ``rounds_cut``), and a session whose first round alone exceeds it raises.
    """
    w = get_workload(workload) if isinstance(workload, str) else workload
    if not isinstance(w, AgentWorkload):
        raise ConfigError(f"workload must be an AgentWorkload or a name, got {type(workload).__name__}")
    if isinstance(num_sessions, bool) or not isinstance(num_sessions, (int, np.integer)) or num_sessions < 0:
        raise ConfigError(f"num_sessions must be an int >= 0, got {num_sessions!r}")
    rng = np.random.default_rng(seed)
    starts = poisson_arrivals(rate_per_s, n=int(num_sessions), seed=rng)
    rounds = w.draw_rounds(rng, num_sessions)
    total = int(rounds.sum())
    incr = w._lognormal(rng, w.mean_incr_tokens, total)
    out = w._lognormal(rng, w.mean_output_tokens, total)
    think = w.draw_interactions_s(rng, total)
    session = np.repeat(np.arange(num_sessions, dtype=np.int64), rounds)
    first = np.r_[0, np.cumsum(rounds)[:-1]] if num_sessions else np.zeros(0, np.int64)
    rnd = np.arange(total, dtype=np.int64) - np.repeat(first, rounds)
    # prompt[r] = prompt[r-1] + out[r-1] + incr[r]: cumulative sums restarted at each session
    step = incr + np.where(rnd == 0, 0, np.roll(out, 1))
    csum = np.cumsum(step)
    prompt = csum - np.repeat(csum[first] - step[first], rounds) if total else csum
    df = pd.DataFrame({"request_id": np.arange(total, dtype=np.int64), "arrival_time_s": np.repeat(starts, rounds),
                       "prompt_tokens": prompt, "output_tokens": out, "session_id": session, "round": rnd,
                       "think_time_s": np.where(rnd == 0, 0.0, think)})
    sessions_cut = rounds_cut = 0
    if max_context_tokens is not None:
        over = (df["prompt_tokens"] + df["output_tokens"]).to_numpy() > max_context_tokens
        if over.any():
            if (over & (rnd == 0)).any():
                i = int(np.flatnonzero(over & (rnd == 0))[0])
                raise ConfigError(f"session {int(session[i])}: its first round alone needs "
                                  f"{int(prompt[i] + out[i])} tokens > max_context_tokens={max_context_tokens}; "
                                  f"raise the limit or shorten the workload's lengths")
            # drop every round from the first one that overflows, per session
            cut = pd.Series(over).groupby(session).cummax().to_numpy()
            sessions_cut, rounds_cut = int(len(np.unique(session[cut]))), int(cut.sum())
            df = df[~cut].reset_index(drop=True)
            df["request_id"] = np.arange(len(df), dtype=np.int64)
    meta = {"workload": asdict(w), "rate_per_s": rate_per_s, "seed": seed, "max_context_tokens": max_context_tokens,
            "sessions_cut": sessions_cut, "rounds_cut": rounds_cut,
            "release": "round r>0 released think_time_s after round r-1 of the session finishes"}
    return Trace(df, name=f"ampd-{w.name}", source="synthetic", meta=meta)


def check_sessions(trace: Trace) -> Trace:
    """Validate a multi-round trace (returns it): the session columns exist and are whole numbers, rounds are
    0, 1, ... per session, round 0 has no think time, and each round's prompt holds the previous round's
    prompt and output plus at least one new token. Raises :class:`TraceError` naming the row."""
    df = trace.df
    missing = [c for c in _SESSION_COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(f"trace {trace.name!r}: missing session column(s) {missing}; a multi-round trace needs "
                         f"{list(_SESSION_COLUMNS)}")

    def plain(v):  # numpy scalars print as np.int64(...); show the number
        return v.item() if isinstance(v, np.generic) else v

    def fail(i: int, field: str, what: str):
        raise TraceError(f"trace {trace.name!r}: row {i} (request_id={plain(df['request_id'].iloc[i])!r}): "
                         f"{field}={plain(df[field].iloc[i])!r} {what}")

    bad = df["session_id"].isna().to_numpy()
    if bad.any():
        fail(int(np.flatnonzero(bad)[0]), "session_id", "is empty: every round names its session (the native "
                                                         "CSV reader reads session ids as numbers)")
    v = pd.to_numeric(df["round"], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(v) | (v != np.floor(v)) | (v < 0)
    if bad.any():
        fail(int(np.flatnonzero(bad)[0]), "round", "must be an integer >= 0")
    think = pd.to_numeric(df["think_time_s"], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(think) | (think < 0)
    if bad.any():
        fail(int(np.flatnonzero(bad)[0]), "think_time_s", "must be a finite number of seconds >= 0")
    order = df.assign(_row=np.arange(len(df))).sort_values(["session_id", "round"], kind="stable")
    sid, rnd = order["session_id"].to_numpy(), order["round"].to_numpy()
    rows = order["_row"].to_numpy()
    new = np.r_[True, sid[1:] != sid[:-1]]
    expect = np.arange(len(order)) - np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
    bad = rnd != expect
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        fail(int(rows[k]), "round", f"breaks session {plain(sid[k])!r}'s rounds 0, 1, 2, ... (expected {int(expect[k])})")
    bad = new & (think[rows] != 0)
    if bad.any():
        fail(int(rows[np.flatnonzero(bad)[0]]), "think_time_s", "must be 0 on a session's first round")
    prompt, out = order["prompt_tokens"].to_numpy(), order["output_tokens"].to_numpy()
    hist = np.r_[0, prompt[:-1] + out[:-1]]
    bad = ~new & (prompt <= hist)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        fail(int(rows[k]), "prompt_tokens", f"must exceed the previous round's prompt + output ({int(hist[k])}): "
                                            f"a round's prompt is the whole history plus new tokens")
    return trace


def session_prefills(trace: Trace) -> pd.DataFrame:
    """One row per round: ``request_id, session_id, round, hist_tokens, incr_tokens, output_tokens,
    think_time_s, arrival_time_s`` -- AMPD's prefill tasks (l_hist = the previous round's prompt + output,
    0 on round 0; l_incr = the rest of the prompt), in session and round order."""
    check_sessions(trace)
    df = trace.df.sort_values(["session_id", "round"], kind="stable")
    prompt, out = df["prompt_tokens"].to_numpy(), df["output_tokens"].to_numpy()
    first = df["round"].to_numpy() == 0
    hist = np.where(first, 0, np.r_[0, prompt[:-1] + out[:-1]])
    return pd.DataFrame({"request_id": df["request_id"].to_numpy(),
                         "session_id": df["session_id"].to_numpy(),
                         "round": df["round"].to_numpy().astype(np.int64), "hist_tokens": hist.astype(np.int64),
                         "incr_tokens": (prompt - hist).astype(np.int64), "output_tokens": out,
                         "think_time_s": df["think_time_s"].to_numpy(float),
                         "arrival_time_s": df["arrival_time_s"].to_numpy(float)})


def save_sessions(trace: Trace, path: str | Path) -> Path:
    """Write a validated multi-round trace as the project's native CSV (:meth:`Trace.to_csv`)."""
    return check_sessions(trace).to_csv(path)


def load_sessions(path: str | Path) -> Trace:
    """Read a native-CSV multi-round trace (:func:`gpusched.workload.load_trace`), validate it and give
    ``round`` an integer dtype; ``session_id`` keeps what the loader read (integers, or text ids)."""
    trace = check_sessions(load_trace(str(path)))
    df = trace.df.copy()
    df["round"] = df["round"].astype(np.int64)
    return Trace(df, name=trace.name, source=trace.source, meta=trace.meta)
