"""Simulator speed: requests per wall-second on a bundled trace, for any scheduler and cluster shape.

Default: the Azure 2023 conversation trace (19,366 requests, ~58 min) on one Llama-3-8B H100 instance
(our H100 profile) with the vLLM V1-like scheduler. Each configuration is timed on the trace once and
repeated back to back (``repeats``), so that the cost's growth with trace length can be read off (it
should be linear), and then the *reference* (vLLM V1 on one instance, same trace and rate) is timed once
in the same process, on the compiled engine, or on the SimPy engine when the configuration itself ran
compiled: the two figures, measured under the same machine load, are printed side by side. Each figure
is also given per CPU-second of this process, which other jobs on a shared machine do not lower.

    gpusched bench                                        # vLLM V1, compiled engine, vs the SimPy engine
    gpusched bench --scheduler mc-sf --repeats 1          # any registered scheduler (gpusched.registry)
    gpusched bench --scheduler vllm-v1 --preemption swap  # swap preemption over the host link
    gpusched bench --disaggregated                        # 1 prefill + 1 decode instance
    gpusched bench --sessions                             # multi-round sessions built from the trace's lengths
    gpusched bench --trace mooncake-conversation          # shared prefixes (the trace's block hashes)
    gpusched bench --rate 8 --repeats 1,4 --mode simpy    # overload: 8x the arrival rate

``fast`` runs a configuration on the compiled engine (:mod:`simulators.compiled`) when it covers it (it
prints which engine ran); numba compiles it once per machine and caches it on disk, so the first run
prints the compile (or cache load) time separately before timing. ``simpy`` is the SimPy engine with
decode runs, ``step`` the SimPy engine one event per step; all three give identical per-request results.
"""
from __future__ import annotations

import time

import numpy as np

from gpusched.errors import ConfigError
from gpusched.synthetic import agent_sessions
from gpusched.workload import Trace, load_trace
from simulators.serving.build import build_instances
from simulators.serving.run import simulate

SESSION_ROUNDS = (2, 6)  # rounds per session of the --sessions workload (4 on average)
SESSION_THINK_S = 10.0  # mean think time between rounds
SESSION_NEW_TOKENS = (16, 256)  # new user tokens per round after the first


def run_bench(repeats=(1, 10), mode: str = "fast", trace_name: str = "azure-conv-2023",
              baseline: str | None = "auto", scheduler: str = "vllm-v1", preemption: str | None = None,
              disaggregated: bool = False, sessions: bool = False, rate: float = 1.0) -> list[dict]:
    """Time ``mode`` on the configuration, with the trace repeated ``repeats`` times; then time the
    reference (vLLM V1 on one instance, on the trace's requests at the same rate, without sessions or
    shared prefixes, once) in mode ``baseline`` in the same process and print the two figures side by side.
    ``baseline="auto"``: the compiled engine (``fast``), or ``simpy`` when the configuration itself ran
    compiled; ``None``: no reference.

    scheduler : a registered scheduler name (``gpusched.registry``: the baselines, ``mc-sf``, ...).
    preemption : ``swap`` or ``recompute`` (a knob of the schedulers that take it, e.g. ``vllm-v1``).
    disaggregated : one prefill and one decode instance instead of one colocated instance.
    sessions : multi-round sessions (prompts carry the history, see :func:`sessions_like`) instead of
        the trace's independent requests.
    rate : arrival-rate factor (``Trace.scale_rate``; 8 is an overload on the Azure trace).

    Returns one dict per timed run (``requests_per_wall_s``, ``engine``, ...), the reference last.
    """
    base = workload(trace_name, sessions, rate)
    knobs = {} if preemption is None else {"preemption": preemption}
    instances = _instances(base, scheduler, knobs, disaggregated)
    label = _label(scheduler, preemption, disaggregated, sessions, rate)
    plain = workload(trace_name, False, rate)
    plain = Trace(plain.df.drop(columns=["prefix_block_hashes"], errors="ignore"), name=plain.name)
    if mode == "fast" or baseline in ("auto", "fast"):
        # untimed: compile (first run on this machine) or load the compiled engine, and tabulate the step
        # prices it looks up (kept on the step model, as a sweep reuses them)
        start = time.perf_counter()
        simulate(plain.head(20), _instances(plain, "vllm-v1", {}, False), record_timeline=False, mode="fast")
        simulate(base.head(20), instances, record_timeline=False, mode=mode)
        print(f"compiled engine ready in {time.perf_counter() - start:.1f} s (numba compiles once per machine, "
              f"then loads from its disk cache)")
    rows = [_timed(base, times, instances, mode, f"{base.name} x{times}, {label}") for times in repeats]
    if baseline == "auto":
        baseline = "simpy" if rows[0]["engine"] == "compiled" else "fast"
    if baseline is not None:
        ref = _timed(plain, 1, _instances(plain, "vllm-v1", {}, False), baseline,
                     f"{plain.name} x1, reference: vllm-v1, one instance, no shared prefixes")
        ours = next((row for row in rows if row["repeats"] == 1), rows[0])
        print(f"{label} on the {ours['engine']} engine: {ours['requests_per_wall_s']:,.0f} requests per wall-second; "
              f"reference on the {ref['engine']} engine: {ref['requests_per_wall_s']:,.0f} "
              f"(ratio {ours['requests_per_wall_s'] / ref['requests_per_wall_s']:.2f}; per CPU-second "
              f"{ours['requests_per_cpu_s']:,.0f} vs {ref['requests_per_cpu_s']:,.0f})")
        rows.append(ref)
    if len(rows) > 1 and rows[0]["repeats"] == 1:
        for row in rows[1:]:
            if row["repeats"] > 1 and row["engine"] == rows[0]["engine"]:
                print(f"x{row['repeats']} / x1 requests per wall-second: "
                      f"{row['requests_per_wall_s'] / rows[0]['requests_per_wall_s']:.2f} (1.00 is linear)")
    return rows


def workload(trace_name: str, sessions: bool = False, rate: float = 1.0) -> Trace:
    """The bench's requests: the bundled trace (or :func:`sessions_like` it), at ``rate`` x its arrival rate."""
    trace = load_trace(trace_name)
    if sessions:
        trace = sessions_like(trace)
    return trace.scale_rate(rate) if rate != 1.0 else trace


def sessions_like(trace: Trace, seed: int = 0) -> Trace:
    """Multi-round sessions with about as many requests, and the same request rate, as ``trace``: first
    prompts and outputs drawn from the trace's own lengths, :data:`SESSION_NEW_TOKENS` new tokens per later
    round, :data:`SESSION_ROUNDS` rounds, :data:`SESSION_THINK_S` mean think time
    (:func:`gpusched.synthetic.agent_sessions`)."""
    prompts = trace.df["prompt_tokens"].to_numpy()
    outputs = trace.df["output_tokens"].to_numpy()
    mean_rounds = sum(SESSION_ROUNDS) / 2
    return agent_sessions(
        num_sessions=max(int(len(trace) / mean_rounds), 1), rounds=SESSION_ROUNDS, think_time_s=SESSION_THINK_S,
        new_tokens_per_round=SESSION_NEW_TOKENS, output_tokens=lambda rng, n: rng.choice(outputs, n),
        first_prompt_tokens=lambda rng, n: rng.choice(prompts, n), seed=seed,
        session_rate_per_s=trace.rate_per_s / mean_rounds, name=f"{trace.name}-sessions")


def _instances(trace: Trace, scheduler: str, knobs: dict, disaggregated: bool):
    """One Llama-3-8B H100 instance (or a prefill + decode pair). A scheduler that prefills whole
    sequences gets a token budget that holds the trace's longest request (vLLM requires
    ``max_num_batched_tokens >= max_model_len`` without chunked prefill)."""
    roles = ("prefill", "decode") if disaggregated else ("colocated",)
    instances = []
    for role in roles:  # one step model for both roles (the compiled engine runs instances that share it)
        instances += build_instances("llama3-8b", profile="h100", scheduler=scheduler, scheduler_knobs=knobs,
                                     role=role, step_model=instances[0].step_model if instances else None)
    if getattr(instances[0].build_scheduler(trace), "whole_sequence_budget", None) is not None:
        longest = int((trace.df["prompt_tokens"] + trace.df["output_tokens"]).max())
        for cfg in instances:
            budget = cfg.build_scheduler(trace).whole_sequence_budget
            cfg.scheduler_knobs = {**cfg.scheduler_knobs, "max_num_batched_tokens": max(budget, longest)}
    return instances


def _label(scheduler: str, preemption, disaggregated: bool, sessions: bool, rate: float) -> str:
    parts = [scheduler + (f" ({preemption} preemption)" if preemption else "")]
    parts.append("1 prefill + 1 decode" if disaggregated else "one instance")
    if sessions:
        parts.append("sessions")
    if rate != 1.0:
        parts.append(f"{rate:g}x rate")
    return ", ".join(parts)


def _timed(base: Trace, times: int, instances, mode: str, label: str) -> dict:
    trace = base.repeat(times) if times > 1 else base
    start, start_cpu = time.perf_counter(), time.process_time()
    result = simulate(trace, instances, record_timeline=False, mode=mode)
    wall_s = time.perf_counter() - start
    cpu_s = time.process_time() - start_cpu  # this process only: what other jobs on the machine take is not in it
    if result.num_unfinished:
        raise ConfigError(f"bench {label}: {result.num_unfinished} requests did not finish")
    simulated_s = float(np.nanmax(result.requests["finish_time_s"].to_numpy()))
    row = {"repeats": times, "requests": len(trace), "wall_s": wall_s, "cpu_s": cpu_s,
           "requests_per_wall_s": len(trace) / wall_s, "requests_per_cpu_s": len(trace) / max(cpu_s, 1e-9),
           "sim_over_wall": simulated_s / wall_s,
           "steps": result.num_steps, "unfinished": result.num_unfinished, "engine": result.engine}
    print(f"{label}: {row['requests']:,} requests, {row['steps']:,} steps in {wall_s:.2f} s wall "
          f"-> {row['requests_per_wall_s']:,.0f} requests per wall-second ({row['requests_per_cpu_s']:,.0f} per "
          f"CPU-second), "
          f"{row['sim_over_wall']:,.0f}x real time ({result.engine} engine)")
    return row


if __name__ == "__main__":
    run_bench()
