"""Simulator speed on the bundled Azure 2023 conversation trace (19,366 requests, ~58 min).

One Llama-3-8B instance on an H100 (our H100 profile), vLLM V1-like scheduler. Prints requests per
wall-second and simulated-over-wall time, for the trace once and repeated back to back, so that the
cost's growth with trace length can be read off (it should be linear).

    python -m simulators.bench            # or: gpusched bench [--repeats 1,10] [--mode fast|step]

On the 2-core development machine (shared with other jobs, so +-20 %): ~2,400-2,550 requests per
wall-second for x1 (412,517 steps) and ~2,400 for x10, against ~2,000-2,100 for the code before batched
LRU bookkeeping and one-pass admission, measured alternately in the same session.
"""
from __future__ import annotations

import time

from gpusched.workload import load_trace
from simulators.build import build_instances
from simulators.serving import simulate


def run_bench(repeats=(1, 10), mode: str = "fast", trace_name: str = "azure-conv-2023") -> list[dict]:
    base = load_trace(trace_name)
    instances = build_instances("llama3-8b", profile="h100")
    rows = []
    for times in repeats:
        trace = base.repeat(times) if times > 1 else base
        start = time.perf_counter()
        result = simulate(trace, instances, record_timeline=False, mode=mode)
        wall_s = time.perf_counter() - start
        simulated_s = float(result.requests["finish_time_s"].max())
        row = {"repeats": times, "requests": len(trace), "wall_s": wall_s,
               "requests_per_wall_s": len(trace) / wall_s, "sim_over_wall": simulated_s / wall_s,
               "steps": result.num_steps, "unfinished": result.num_unfinished}
        rows.append(row)
        print(f"{trace_name} x{times}: {row['requests']:,} requests, {row['steps']:,} steps in {wall_s:.2f} s wall "
              f"-> {row['requests_per_wall_s']:,.0f} requests per wall-second, "
              f"{row['sim_over_wall']:,.0f}x real time ({mode} mode)")
    return rows


if __name__ == "__main__":
    run_bench()
