"""WAIT and Nested WAIT on the bundled Azure LLM inference 2023 conversation trace, beside MC-SF, vLLM V1 and
Sarathi, at 1x-16x the trace's arrival rate (``trace.scale_rate``) on one H100 (Llama-3-8B, the measured ``h100``
profile, KV from the H100's memory: 26,322 blocks of 16 tokens). Not in the paper: it puts the paper's policies on
the project's common trace and hardware.

Policies (all through the registry, calibrated by the run's BuildContext):

* ``wait``: known output lengths (the oracle, as MC-SF's default), 8 output-length bins as types, thresholds from
  eq. (11) at the trace's rate (or the calibration's fallback), Algorithm 1 as published;
* ``wait-no-wait``: the same caps without the accumulation wait (the paper's ablation);
* ``nested-wait`` / ``nested-wait-no-wait``: unknown lengths, 4 segments cut at output-length quantiles, the
  segment-wise mean prompt in eq. (13), thresholds from (12)-(14) or the fallback;
* ``mc-sf`` (oracle predictions), ``vllm-v1`` and ``sarathi`` with their defaults.

One run per rate (the trace fixes the arrivals). Writes ``results/nested_wait_azure/{azure.csv, azure.md,
azure.png}``; ``--resume``. Run: ``python -m experiments.nested_wait_azure [--quick] [--jobs 2]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from gpusched.workload import load_trace
from simulators.serving.build import build_instances

from .nested_wait_common import ResultLog, markdown_table, plot_policies, run_metrics, run_tasks, sweep_arguments

OUT = Path("results/nested_wait_azure")
FACTORS = (1.0, 2.0, 4.0, 8.0, 16.0)
QUICK = (1.0, 16.0)
QUICK_REQUESTS = 1000
POLICIES = {
    "wait": ("wait", {}), "wait-no-wait": ("wait", {"mode": "no-wait", "name": "wait-no-wait"}),
    "nested-wait": ("nested-wait", {}),
    "nested-wait-no-wait": ("nested-wait", {"mode": "no-wait", "name": "nested-wait-no-wait"}),
    "mc-sf": ("mc-sf", {}), "vllm-v1": ("vllm-v1", {}), "sarathi": ("sarathi", {}),
}


def _point(task) -> list[dict]:
    factor, policy, quick = task
    trace = load_trace("azure-conv-2023")
    if quick:
        trace = trace.head(QUICK_REQUESTS)
    trace = trace.scale_rate(factor)
    (h100,) = build_instances("llama3-8b", profile="h100")
    name, knobs = POLICIES[policy]
    cfg = dataclasses.replace(h100, scheduler=name, scheduler_knobs=knobs)
    sched = cfg.build_scheduler(trace)
    t0 = time.perf_counter()
    m = run_metrics(trace, dataclasses.replace(cfg, scheduler=sched))
    cal = getattr(sched, "calibration", None) or {}
    return [{"rate_factor": factor, "policy": policy, "rate_per_s": trace.rate_per_s, **m,
             "thresholds": str(cal.get("thresholds", "")), "max_in_flight": cal.get("max_in_flight"),
             "rule": cal.get("rule", ""), "wall_s": time.perf_counter() - t0}]


def _plot(df: pd.DataFrame, path: Path) -> None:
    plot_policies(df, "rate_factor", [("e2e_all_mean_s", "mean end-to-end latency (s), all requests"),
                                      ("ttft_mean_s", "mean TTFT (s), central window"),
                                      ("e2e_p99_s", "p99 end-to-end latency (s)")],
                  "Azure conversation trace 2023, Llama-3-8B on one H100 (measured profile)", path,
                  "arrival rate x the trace's", log_x=True, log_y=(True, True, True))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"first {QUICK_REQUESTS} requests, rates x1 and x16")
    sweep_arguments(ap, OUT)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = ResultLog(out / "azure.csv", ("rate_factor", "policy"), args.resume)
    tasks = [(f, p, args.quick) for f in (QUICK if args.quick else FACTORS) for p in POLICIES if not log.done((f, p))]
    print(f"{len(tasks)} runs, about {len(tasks) * (0.1 if args.quick else 1.0) / args.jobs:.0f} min (a full-trace run "
          f"takes 0.5-2 min); rows go to {out / 'azure.csv'}")
    t0 = time.perf_counter()
    run_tasks(tasks, _point, log, args.jobs, "nested_wait_azure")
    df = log.df.sort_values(["rate_factor", "policy"])
    _plot(df, out / "azure.png")
    lines = ["# WAIT / Nested WAIT on the Azure conversation trace (H100, Llama-3-8B) beside MC-SF, vLLM V1, Sarathi",
             "", f"{'QUICK run (first 1000 requests).' if args.quick else 'Full trace (19,366 requests).'} "
             f"{(time.perf_counter() - t0) / 60:.1f} min. Latencies in seconds; e2e_mean_s and ttft_mean_s over the "
             f"central 60 % of arrivals, e2e_all_mean_s over all. Not in the paper.", ""]
    lines += markdown_table(df, ["rate_factor", "rate_per_s", "policy", "finished", "e2e_all_mean_s", "e2e_mean_s",
                                 "e2e_p99_s", "ttft_mean_s", "throughput_tokens_per_s", "restarts", "thresholds",
                                 "max_in_flight", "rule"])
    (out / "azure.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'azure.csv'}, {out / 'azure.md'}, {out / 'azure.png'}")


if __name__ == "__main__":
    main()
