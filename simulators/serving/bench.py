"""Simulator speed on the bundled Azure 2023 conversation trace (19,366 requests, ~58 min).

One Llama-3-8B instance on an H100 (our H100 profile), vLLM V1-like scheduler. Prints requests per
wall-second and simulated-over-wall time, for the trace once and repeated back to back, so that the
cost's growth with trace length can be read off (it should be linear).

    python -m simulators.serving.bench    # or: gpusched bench [--repeats 1,10] [--mode fast|simpy|step] [--baseline simpy|step|none]

``fast`` runs this configuration on the compiled engine (:mod:`simulators.compiled`); numba compiles it
once per machine and caches it on disk, so the first run prints the compile (or cache load) time
separately before timing. ``simpy`` is the SimPy engine with decode runs, ``step`` the SimPy engine one
event per step; all three give identical per-request results. The baseline (``simpy`` by default) runs
the trace once more in the same process, for a speed ratio measured under the same machine load.

On the 2-core development machine (shared, so +-20 %): ``fast`` about 60,000-75,000 requests per
wall-second for x1 and x10; ``simpy`` about 2,700 (~125 µs of Python per engine-loop iteration, 2.9
iterations per request).
"""
from __future__ import annotations

import time

from gpusched.workload import load_trace
from simulators.serving.build import build_instances
from simulators.serving.run import simulate


def run_bench(repeats=(1, 10), mode: str = "fast", trace_name: str = "azure-conv-2023",
              baseline: str | None = "simpy") -> list[dict]:
    """Time ``mode`` on the trace repeated ``repeats`` times; then, if ``baseline`` is a mode, time it on
    the trace once in the same process and print the speed ratio (same requests, identical results)."""
    base = load_trace(trace_name)
    instances = build_instances("llama3-8b", profile="h100")
    if mode == "fast":  # compile (first run on this machine) or load the compiled engine, untimed
        start = time.perf_counter()
        engine = simulate(base.head(20), instances, record_timeline=False, mode=mode).engine
        print(f"{engine} engine ready in {time.perf_counter() - start:.1f} s (numba compiles once per machine, "
              f"then loads from its disk cache)")
    rows = [_timed(base, times, instances, mode, trace_name) for times in repeats]
    if baseline is not None and baseline != mode:
        ref = _timed(base, 1, instances, baseline, trace_name)
        ours = next((row for row in rows if row["repeats"] == 1), rows[0])
        print(f"{ours['engine']} engine / {ref['engine']} engine: "
              f"{ours['requests_per_wall_s'] / ref['requests_per_wall_s']:,.1f}x the requests per wall-second")
        rows.append(ref)
    return rows


def _timed(base, times: int, instances, mode: str, trace_name: str) -> dict:
    trace = base.repeat(times) if times > 1 else base
    start = time.perf_counter()
    result = simulate(trace, instances, record_timeline=False, mode=mode)
    wall_s = time.perf_counter() - start
    simulated_s = float(result.requests["finish_time_s"].max())
    row = {"repeats": times, "requests": len(trace), "wall_s": wall_s,
           "requests_per_wall_s": len(trace) / wall_s, "sim_over_wall": simulated_s / wall_s,
           "steps": result.num_steps, "unfinished": result.num_unfinished, "engine": result.engine}
    print(f"{trace_name} x{times}: {row['requests']:,} requests, {row['steps']:,} steps in {wall_s:.2f} s wall "
          f"-> {row['requests_per_wall_s']:,.0f} requests per wall-second, "
          f"{row['sim_over_wall']:,.0f}x real time ({result.engine} engine)")
    return row


if __name__ == "__main__":
    run_bench()
