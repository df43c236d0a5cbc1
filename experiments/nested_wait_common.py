"""Shared pieces of the Nested WAIT experiments: the A100 instance, the baselines, per-run metrics, a resumable
CSV of rows, the stability test and the markdown table writer.

Instance: Llama-2-7B on one A100-80GB with the **roofline** step-time model (``gpusched.perf.RooflineStepTime``;
no A100 profile is bundled) and the paper's KV capacity ``C = 1.37e5`` tokens (8,562 blocks of 16; the
catalogue's A100 has 80e9 bytes, which gives 125k tokens at 99 %: the paper's figure needs 80 GiB).

Baselines, as the paper's Vidur defaults (spec §5a): vLLM = ``vllm-v1`` with whole-prompt prefill in one step
(``enable_chunked_prefill=False``, 4,096-token steps) and no prefix cache; Sarathi = ``sarathi`` with 512-token
chunks. Both admit greedily (FCFS) and recompute-preempt the newest request when the KV runs out.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from gpusched.perf import RooflineStepTime
from simulators.serving import InstanceConfig, simulate

PAPER_KV_TOKENS = 137_000
BLOCK = 16
VLLM = ("vllm-v1", {"max_num_batched_tokens": 4096, "enable_chunked_prefill": False, "enable_prefix_caching": False})
SARATHI = ("sarathi", {"token_budget": 512})
STABLE_GROWTH = 1.5  # late/mid latency ratio above which a run counts as unstable (see is_stable)
STABLE_SERVICE = 0.97  # completions / arrivals over the second half of the arrivals, below: unstable


def a100_instance(scheduler="vllm-v1", knobs=None) -> InstanceConfig:
    """Llama-2-7B, one A100-80GB, roofline step times, the paper's 1.37e5-token KV."""
    return InstanceConfig(RooflineStepTime("llama2-7b", "A100-80GB"), PAPER_KV_TOKENS // BLOCK, BLOCK, scheduler,
                          dict(knobs or {}))


def run_metrics(trace, cfg: InstanceConfig) -> dict:
    """Simulate ``trace`` on ``cfg``; latency metrics in seconds.

    e2e_mean_s / ttft_mean_s: over requests arriving in the central window (20 %-80 % of the arrivals, as the paper
    averages after the transient); e2e_all_mean_s: over all. growth: mean e2e of the last quarter of arrivals over
    that of the second quarter (about 1 when stable). service_ratio: requests finished in the second half of the
    arrival window over those arriving in it (about 1 when stable, whatever the latency; the service rate over the
    arrival rate when overloaded). completion_rate: requests finished by the last arrival over all. throughput_
    tokens_per_s: output tokens of requests finished by the last arrival, per second of the arrival window.
    restarts: preemptions per request (the paper's eviction-restarts).
    """
    res = simulate(trace, [cfg], record_timeline=False)
    r = res.requests.sort_values("arrival_time_s", kind="stable").reset_index(drop=True)
    n = len(r)
    e2e = r["e2e_s"].to_numpy(float)
    central = slice(int(0.2 * n), int(0.8 * n))
    last = float(r["arrival_time_s"].iloc[-1])
    finish = r["finish_time_s"].to_numpy(float)
    done = finish <= last
    half = last / 2
    late_arrivals = int((r["arrival_time_s"].to_numpy(float) >= half).sum())
    return {
        "requests": n, "finished": int((r["status"] == "finished").sum()),
        "e2e_mean_s": float(np.nanmean(e2e[central])), "e2e_all_mean_s": float(np.nanmean(e2e)),
        "e2e_p99_s": float(np.nanquantile(e2e, 0.99)),
        "ttft_mean_s": float(np.nanmean(r["ttft_s"].to_numpy(float)[central])),
        "growth": float(np.nanmean(e2e[3 * n // 4:]) / np.nanmean(e2e[n // 4: n // 2])),
        "service_ratio": float(((finish >= half) & done).sum() / late_arrivals) if late_arrivals else math.nan,
        "completion_rate": float(done.sum() / n),
        "throughput_tokens_per_s": float(r["output_tokens"].to_numpy()[done].sum() / last) if last > 0 else math.nan,
        "restarts": float(r["num_preemptions"].sum() / n), "steps": res.num_steps,
    }


def is_stable(growth: float, service_ratio: float) -> bool:
    """[R] The paper's "latency stays controlled and the completion rate tracks lambda" as two tests that do not
    depend on the latency level: the mean latency of the last quarter of arrivals is at most 1.5x that of the second
    quarter, and the requests finished in the second half of the arrival window are at least 97 % of those arriving
    in it (a policy at a high but steady latency passes; one whose service rate is below lambda does not)."""
    return growth <= STABLE_GROWTH and service_ratio >= STABLE_SERVICE


def largest_stable_rate(df: pd.DataFrame, policy: str) -> float:
    """The largest rate up to which every tested rate is stable for ``policy`` (:func:`is_stable` on the means over
    seeds); NaN if the lowest is not."""
    g = df[df["policy"] == policy].groupby("rate_per_s")[["growth", "service_ratio"]].mean().sort_index()
    best = math.nan
    for rate, row in g.iterrows():
        if not is_stable(row["growth"], row["service_ratio"]):
            break
        best = float(rate)
    return best


class ResultLog:
    """Rows of a sweep in a CSV, rewritten after each finished point, so that an interrupted run resumes.

    ``key``: the columns that identify a point (``done`` tells whether a point is in the log).
    """

    def __init__(self, path: Path, key: tuple[str, ...], resume: bool):
        self.path, self.key = Path(path), key
        if resume and self.path.exists():
            self.df = pd.read_csv(self.path)
        else:
            self.df = pd.DataFrame()
            if self.path.exists():
                self.path.unlink()
        self._done = {tuple(r) for r in self.df[list(key)].itertuples(index=False)} if len(self.df) else set()

    def done(self, point: tuple) -> bool:
        return tuple(point) in self._done

    def add(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.df = pd.concat([self.df, pd.DataFrame(rows)], ignore_index=True)
        self._done.update(tuple(r[k] for k in self.key) for r in rows)
        tmp = self.path.with_suffix(".tmp")
        self.df.to_csv(tmp, index=False)
        os.replace(tmp, self.path)


def run_tasks(tasks: list, work: Callable, log: ResultLog, jobs: int, desc: str) -> None:
    """Run ``work(task) -> rows`` for every task (in ``jobs`` processes), logging rows as each finishes."""
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit="point")
    if jobs <= 1:
        for t in tasks:
            log.add(work(t))
            bar.update()
    else:
        with ProcessPoolExecutor(jobs) as pool:
            for fut in as_completed([pool.submit(work, t) for t in tasks]):
                log.add(fut.result())
                bar.update()
    bar.close()


def markdown_table(df: pd.DataFrame, cols: Iterable[str], floats: str = "{:.3f}") -> list[str]:
    cols = list(cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df[cols].iterrows():
        lines.append("| " + " | ".join(floats.format(v) if isinstance(v, float) else str(v) for v in r) + " |")
    return lines


def sweep_arguments(ap, out: Path) -> None:
    """The options every sweep takes: ``--jobs``, ``--resume``, ``--out``."""
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--resume", action="store_true", help="keep the points already in the CSV")
    ap.add_argument("--out", default=str(out))


def plot_policies(df: pd.DataFrame, x: str, panels: list[tuple[str, str]], title: str, path: Path, xlabel: str,
                  log_x: bool = False, log_y: tuple[bool, ...] = (True,), vline: tuple[float, str] | None = None) -> None:
    """One panel per ``(column, y label)``, one line per policy against ``x``; error bars from ``<column>``'s
    ``_mean_s`` -> ``_sd_s`` partner when ``df`` has it; ``log_y[i]`` for panel i (missing: linear)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    axes = axes[0]
    for name, g in df.groupby("policy", sort=False):
        g = g.sort_values(x)
        for ax, (col, _) in zip(axes, panels):
            sd = col.replace("_mean_s", "_sd_s")
            err = g[sd] if sd != col and sd in g else None
            ax.errorbar(g[x], g[col], yerr=err, marker="o", ms=3, capsize=2, label=name)
    for i, (ax, (_, label)) in enumerate(zip(axes, panels)):
        if vline is not None:
            ax.axvline(vline[0], color="k", ls=":", lw=1, label=vline[1])
        if log_x:
            ax.set_xscale("log", base=2)
        if i < len(log_y) and log_y[i]:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def with_scheduler(cfg: InstanceConfig, scheduler, knobs=None) -> InstanceConfig:
    return replace(cfg, scheduler=scheduler, scheduler_knobs=dict(knobs or {}))
