"""MC-SF as an online policy in the SimPy serving simulator vs the vLLM V1-like scheduler.

Setup: the bundled Azure LLM inference 2023 conversation trace (``azure-conv-2023``; quick mode: its first 500
requests) on one Llama-3-8B instance with the H100 profile (``simulators.serving.build.build_instances``: profiled step
times, KV blocks from the H100's memory), at a few load levels (``trace.scale_rate(f)``: arrival rate x f).
Schedulers: :class:`formulations.mcsf.McsfScheduler` (oracle output predictions, whole-prompt prefill,
8192-token step budget), the same with FCFS order (MC-Benchmark, the paper's baseline), ``vllm-v1`` with its
defaults (FCFS, chunked prefill, 2048-token budget, 256 sequences, prefix caching) and ``vllm-v1`` with the
MC policies' 8192-token budget. Metrics: mean / p50 / p99 end-to-end latency and TTFT, preemptions.

The paper's own claim (spec §1(e) row 3, secondary source): MC-SF lowers average latency vs **MC-Benchmark**
(the same memory check in FCFS order) by ~31% on 10k LMSYS conversations, Llama2-70B on 2xA100 (M = 16492
tokens). This experiment has a different baseline (vLLM V1, which admits while KV is free and preempts on
shortage), a different model/GPU/trace and a much larger KV (about 421k tokens), so the numbers are not
comparable to the paper's; they show how the policy behaves inside the engine.

Run: ``python -m experiments.mcsf_simulator [--quick] [--resume]`` (full: 6 load points x 4 schedulers on 19,366
requests, about 15 minutes; ``mcsf_simulator.csv`` grows after every run and ``--resume`` continues an
interrupted one). A ``--quick`` comparison whose sign differs from the full run's (README) is flagged.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from formulations.mcsf import PAPER_MEMORY_TOKENS, McsfScheduler

from ._ux import ResumableRows, announce, finish, progress, quick_note
from gpusched.workload import load_trace
from simulators.serving.build import build_instances
from simulators.serving import simulate

# memory regime -> (KV tokens or None for the H100's own capacity, arrival-rate factors)
REGIMES = {"h100-kv": (None, (1.0, 4.0, 16.0)), "paper-M": (PAPER_MEMORY_TOKENS, (0.25, 0.5, 1.0))}
QUICK_REGIMES = {"h100-kv": (None, (16.0,)), "paper-M": (PAPER_MEMORY_TOKENS, (1.0,))}
QUICK_REQUESTS = 500
SECONDS_PER_REQUEST = 2e-3  # wall time per request and scheduler run, measured on the 500-request quick run
# Full-run results (README, `python -m experiments.mcsf_simulator`): MC-SF's mean e2e latency relative to each
# baseline, %, per (regime, rate factor); a quick run is checked against their signs
FULL_RUN = {("h100-kv", 4.0): {"mc-benchmark": -20.4, "vllm-v1": -9.8},
            ("h100-kv", 16.0): {"mc-benchmark": -13.3, "vllm-v1": -11.6},
            ("paper-M", 1.0): {"mc-benchmark": -19.6, "vllm-v1": -12.8}}
PAPER_MD = ("Paper (spec §1(e) row 3, secondary source): MC-SF average latency 32.11 vs MC-Benchmark 46.47, about 31% "
            "lower, on LMSYS-Chat-1M / Llama2-70B / 2xA100 (M = 16492 tokens). Different baseline (MC-Benchmark = "
            "MC-SF's check in FCFS order, not vLLM) and different setting: not directly comparable.")


def _schedulers():
    """name -> (scheduler factory, knobs). ``mc-benchmark`` is the paper's own baseline (MC-SF's check in FCFS
    order); ``vllm-v1-8k`` gives vLLM the same 8192-token step budget as the MC policies, so that the
    comparison with vLLM is not a comparison of budgets."""
    return {
        "mc-sf": (lambda: McsfScheduler(), {}),
        "mc-benchmark": (lambda: McsfScheduler(fcfs=True, name="mc-benchmark"), {}),
        "vllm-v1": (lambda: "vllm-v1", {}),
        "vllm-v1-8k": (lambda: "vllm-v1", {"max_num_batched_tokens": 8192}),
    }


def run(out_dir="results/mcsf_simulator", quick: bool = False, seed: int = 0, resume: bool = False) -> pd.DataFrame:
    """Run the sweep; write ``mcsf_simulator.{csv,png,md}`` to ``out_dir`` and return the table (one row per
    memory regime x rate factor x scheduler; latencies in seconds). The CSV is rewritten after every run;
    ``resume`` keeps the runs an interrupted sweep with the same settings left there."""
    out = Path(out_dir)
    base = load_trace("azure-conv-2023")
    if quick:
        base = base.head(QUICK_REQUESTS)
    regimes = QUICK_REGIMES if quick else REGIMES
    jobs = [(regime, f, name) for regime, (_, factors) in regimes.items() for f in factors for name in _schedulers()]
    started = announce("mcsf_simulator", out, len(jobs) * len(base) * SECONDS_PER_REQUEST,
                       f"{len(jobs)} runs x {len(base):,} requests x ~{SECONDS_PER_REQUEST * 1e3:.0f} ms")
    table = ResumableRows(out, "mcsf_simulator", {"quick": quick, "seed": seed, "requests": len(base)},
                          ("regime", "rate_factor", "scheduler"), resume)
    (h100,) = build_instances("llama3-8b", profile="h100")
    for regime, f, name in progress(jobs, desc="mcsf simulator"):
        if table.done(regime=regime, rate_factor=f, scheduler=name):
            continue
        kv_tokens = regimes[regime][0]
        cfg = h100 if kv_tokens is None else dataclasses.replace(
            h100, num_kv_blocks=kv_tokens // h100.block_size_tokens)
        table.add(_run_one(base.scale_rate(f), cfg, regime, f, name, seed))
    df = table.frame()
    _plot(df, out / "mcsf_simulator.png")
    _markdown(df, out / "mcsf_simulator.md", quick)
    if quick and _quick_notes(df):
        notes = _quick_notes(df)
        print("\n".join(notes))
        with open(out / "mcsf_simulator.md", "a") as md:
            md.write("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    finish("mcsf_simulator", out, ["mcsf_simulator.csv", "mcsf_simulator.png", "mcsf_simulator.md"], started)
    return df


def _quick_notes(df: pd.DataFrame) -> list[str]:
    """The quick run's comparisons whose sign differs from the full run's (:data:`FULL_RUN`)."""
    notes = []
    for (regime, f), g in df.groupby(["regime", "rate_factor"], sort=False):
        m = g.set_index("scheduler")["e2e_mean_s"]
        for base, full in FULL_RUN.get((regime, f), {}).items():
            note = quick_note(f"MC-SF vs {base} ({regime}, rate x{f:g}), mean e2e latency %",
                              100 * (m["mc-sf"] / m[base] - 1), full, "README, full Azure trace")
            if note:
                notes.append(note)
    return notes


def _run_one(trace, cfg, regime: str, rate_factor: float, name: str, seed: int) -> dict:
    """The row of scheduler ``name`` on ``trace`` with instance ``cfg``."""
    make, knobs = _schedulers()[name]
    inst = dataclasses.replace(cfg, scheduler=make(), scheduler_knobs=knobs)
    t0 = time.perf_counter()
    res = simulate(trace, [inst], seed=seed, record_timeline=False)
    wall = time.perf_counter() - t0
    r = res.requests
    fin = r[r["status"] == "finished"]
    return {
        "regime": regime, "rate_factor": rate_factor, "rate_per_s": trace.rate_per_s, "scheduler": name,
        "requests": len(r), "finished": len(fin), "kv_blocks": cfg.num_kv_blocks,
        "e2e_mean_s": fin["e2e_s"].mean(), "e2e_p50_s": fin["e2e_s"].quantile(0.5),
        "e2e_p99_s": fin["e2e_s"].quantile(0.99), "ttft_mean_s": fin["ttft_s"].mean(),
        "ttft_p50_s": fin["ttft_s"].quantile(0.5), "ttft_p99_s": fin["ttft_s"].quantile(0.99),
        "preemptions": int(r["num_preemptions"].sum()), "steps": res.num_steps, "wall_s": wall,
    }


def _plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = list(dict.fromkeys(df["regime"]))
    fig, axes = plt.subplots(len(regimes), 2, figsize=(10, 4 * len(regimes)), squeeze=False)
    for row, regime in zip(axes, regimes):
        part = df[df["regime"] == regime]
        for ax, metric, label in ((row[0], "e2e", "end-to-end latency (s)"), (row[1], "ttft", "TTFT (s)")):
            for name, g in part.groupby("scheduler", sort=False):
                ax.plot(g["rate_per_s"], g[f"{metric}_mean_s"], marker="o", label=f"{name} mean")
                ax.plot(g["rate_per_s"], g[f"{metric}_p99_s"], marker="x", ls="--", label=f"{name} p99")
            ax.set_title(f"{regime} ({int(part['kv_blocks'].iloc[0])} KV blocks)", fontsize=9)
            ax.set_xlabel("arrival rate (req/s)")
            ax.set_ylabel(label)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Azure conv 2023, Llama-3-8B on one H100: MC-SF (oracle) vs MC-Benchmark vs vLLM V1")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(df: pd.DataFrame, path: Path, quick: bool) -> None:
    cols = ["regime", "rate_factor", "rate_per_s", "scheduler", "finished", "e2e_mean_s", "e2e_p50_s", "e2e_p99_s",
            "ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "preemptions"]
    lines = ["# MC-SF in the SimPy simulator vs vLLM V1", "",
             f"Azure conversation trace 2023{' (first 500 requests)' if quick else ''}, Llama-3-8B, one H100 "
             f"step-time model. Memory regimes: `h100-kv` = the H100's own KV capacity; `paper-M` = KV cut to the "
             f"paper's M = {PAPER_MEMORY_TOKENS} tokens (memory-bound, as in the paper). Latencies in seconds.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df[cols].iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    lines += ["", "Mean e2e latency of MC-SF relative to MC-Benchmark (the paper's comparison) and to vLLM V1 "
              "(its default 2048-token budget, and the MC policies' 8192):", ""]
    for (regime, f), g in df.groupby(["regime", "rate_factor"], sort=False):
        m = g.set_index("scheduler")["e2e_mean_s"]
        rel = ", ".join(f"vs {b} {100 * (m['mc-sf'] / m[b] - 1):+.1f}%" for b in ("mc-benchmark", "vllm-v1", "vllm-v1-8k"))
        lines.append(f"- {regime}, rate x{f:g}: {rel}")
    lines += ["", PAPER_MD, ""]
    path.write_text("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="first 500 requests, two load levels")
    ap.add_argument("--out", default="results/mcsf_simulator")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep the runs an interrupted sweep left in --out")
    args = ap.parse_args(argv)
    df = run(args.out, quick=args.quick, seed=args.seed, resume=args.resume)
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
