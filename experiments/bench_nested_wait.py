"""How long one WAIT / Nested WAIT scheduling decision takes with 1,000 requests waiting and 200 running.

Each policy is driven through a minimal step loop (no SimPy): call ``schedule``, apply the plan as the engine does
(computed tokens, sampled tokens, finished requests free their KV), top the queue back up to 1,000 waiting; only
the ``schedule`` call is timed. The workloads keep about 200 requests resident: WAIT with one type of 200 stages
(one request per stage), WAIT with 8 types, Nested WAIT with 4 segments of 50 stages. vLLM V1's scheduler
(``simulators.serving.schedulers.VllmV1Scheduler``, 256 sequences, 8,192-token budget) runs the same loop on the
same workload in the same process as the baseline. Target from the issue: below 1 ms per decision (the median is
the figure; the p99 of every policy, vLLM's included, carries Python's garbage-collector pauses and, on a shared
machine, the other processes).

Run: ``python -m experiments.bench_nested_wait [--steps 2000]``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import deque

from formulations.nested_wait import NestedWaitScheduler, PromptType, WaitScheduler
from gpusched.kvcache import BlockManager
from gpusched.policy import SeqState
from simulators.serving.schedulers import VllmV1Scheduler

WAITING, RUNNING = 1_000, 200


def _workloads():
    """name -> (scheduler factory, (prompt, output) lengths cycled by arrivals)."""
    one = [(512, 200)]
    eight = [(64 * (k + 1), 10 + 5 * k) for k in range(8)]  # outputs 10..45: 220 stages in all
    eight_types = [PromptType(p, o - 1, 1.0) for p, o in eight]
    return {
        "wait (1 type, 200 stages)": (lambda: WaitScheduler([PromptType(512, 199, 1.0)], [1]), one),
        "wait (8 types)": (lambda: WaitScheduler(eight_types, [1, 1, 1, 1, 1, 1, 2, 2]), eight),
        "nested-wait (4 segments)": (lambda: NestedWaitScheduler((49, 99, 149, 199), (1, 1, 1, 1)), one),
        "vllm-v1 (baseline)": (lambda: VllmV1Scheduler(max_num_seqs=256, max_num_batched_tokens=8192,
                                                       enable_prefix_caching=False), one),
    }


def _drive(make, lengths, steps: int) -> tuple[list[float], int, int]:
    """Per-decision seconds over ``steps`` decisions (after the first, which absorbs the initial queue), and the
    mean numbers of waiting and running requests seen by the timed decisions."""
    sched = make()
    kv = BlockManager(200_000, 16)
    waiting: deque = deque()
    running: list = []
    next_id = 0

    def arrive():
        nonlocal next_id
        p, o = lengths[next_id % len(lengths)]
        waiting.append(SeqState(next_id, next_id, float(next_id), p, o))
        next_id += 1

    for _ in range(WAITING):
        arrive()
    times, seen_w, seen_r = [], 0, 0
    for step in range(steps + 1):
        w, r = len(waiting), len(running)
        t0 = time.perf_counter()
        plan = sched.schedule(waiting, running, kv, float(step))
        dt = time.perf_counter() - t0
        if step:
            times.append(dt)
            seen_w += w
            seen_r += r
        for seq, n in plan.entries:  # what the engine does after the step
            seq.num_computed_tokens += n
            if seq.num_computed_tokens >= seq.prompt_tokens + seq.generated_tokens:
                seq.generated_tokens += 1
                if seq.generated_tokens >= seq.output_tokens:
                    kv.free(seq.index)
                    running.remove(seq)
        for _ in range(WAITING - sum(1 for s in waiting if s.index not in kv)):  # queued = no KV held
            arrive()
    return times, seen_w // steps, seen_r // steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="timed decisions per workload")
    args = ap.parse_args(argv)
    rows = {}
    print(f"{'workload':28s} {'waiting':>8s} {'running':>8s} {'median us':>10s} {'p99 us':>8s} {'mean us':>8s}")
    for name, (make, lengths) in _workloads().items():
        times, w, r = _drive(make, lengths, args.steps)
        times.sort()
        med, p99, mean = (statistics.median(times), times[int(0.99 * len(times))], statistics.fmean(times))
        rows[name] = med
        print(f"{name:28s} {w:8d} {r:8d} {med * 1e6:10.1f} {p99 * 1e6:8.1f} {mean * 1e6:8.1f}")
    base = rows["vllm-v1 (baseline)"]
    for name, med in rows.items():
        if name != "vllm-v1 (baseline)":
            print(f"{name}: {med / base:.2f}x vLLM V1's decision time; {'below' if med < 1e-3 else 'ABOVE'} 1 ms")


if __name__ == "__main__":
    main()
