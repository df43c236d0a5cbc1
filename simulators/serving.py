"""Serving a trace on a set of instances: arrivals, routing, and the results tables.

``simulate(trace, instances, router=...)`` builds one :class:`~simulators.instance.InstanceEngine` per
:class:`InstanceConfig`, releases the trace's requests at their arrival times, routes each through the
router, runs SimPy to the end, and returns a :class:`~simulators.results.SimResult`.

Event order at equal times is fixed so that runs are reproducible: an arrival at time t is routed
before any instance starts the step that begins at t, so that step can already schedule it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import simpy
from simpy.core import URGENT

from gpusched.errors import ConfigError
from gpusched.kvcache import BlockManager
from gpusched.perf import StepTimeModel
from gpusched.policy import BatchScheduler, Router, SeqState
from gpusched.workload import Trace
from simulators.instance import InstanceEngine
from simulators.results import SimResult
from simulators.routers import make_router
from simulators.schedulers import make_scheduler

ROLES = ("colocated", "prefill", "decode")
MODES = ("fast", "step")


@dataclass
class InstanceConfig:
    """One instance to simulate.

    step_model : the step-time model of this instance's model, GPU kind and TP degree.
    num_kv_blocks : KV capacity in blocks (from :func:`gpusched.kvcache.kv_capacity`, or an engine's
        measured block count when replaying a real run).
    scheduler : a registered scheduler name or a :class:`~gpusched.policy.BatchScheduler` object.
    scheduler_knobs : keyword arguments for a scheduler given by name.
    """

    step_model: StepTimeModel
    num_kv_blocks: int
    block_size_tokens: int = 16
    scheduler: str | BatchScheduler = "vllm-v1"
    scheduler_knobs: dict = field(default_factory=dict)
    role: str = "colocated"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ConfigError(f"instance role {self.role!r} is not one of {ROLES}")
        if self.num_kv_blocks < 1 or self.block_size_tokens < 1:
            raise ConfigError(
                f"num_kv_blocks={self.num_kv_blocks} and block_size_tokens={self.block_size_tokens} "
                f"must both be >= 1")

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size_tokens

    def build_scheduler(self) -> BatchScheduler:
        if isinstance(self.scheduler, str):
            return make_scheduler(self.scheduler, **self.scheduler_knobs)
        return self.scheduler


def simulate(trace: Trace, instances: Sequence[InstanceConfig], router: str | Router = "round-robin",
             seed: int = 0, record_timeline: bool = True, check_invariants: bool = True,
             progress: bool = False, mode: str = "fast") -> SimResult:
    """Serve ``trace`` on ``instances`` and return per-request and per-instance results.

    Refuses, before running, a configuration that cannot serve the trace: a request whose prompt plus
    output exceeds the KV capacity of every instance, a scheduler token budget smaller than one block.
    """
    instances = list(instances)
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {MODES}")
    if not instances:
        raise ConfigError("no instances to simulate; pass at least one InstanceConfig")
    _check_servable(trace, instances)
    env = simpy.Environment()
    router = make_router(router, seed=seed) if isinstance(router, str) else router
    seqs = _sequences(trace)
    engines = [
        InstanceEngine(env, i, cfg.build_scheduler(), cfg.step_model,
                       BlockManager(cfg.num_kv_blocks, cfg.block_size_tokens),
                       role=cfg.role, record_timeline=record_timeline, check_invariants=check_invariants,
                       fast=mode == "fast")
        for i, cfg in enumerate(instances)
    ]
    _check_budgets(engines)
    env.process(_arrivals(env, seqs, engines, router, progress))
    env.run()
    return SimResult.from_run(trace, seqs, engines)


def _sequences(trace: Trace) -> list[SeqState]:
    df = trace.df
    hashes = df["prefix_block_hashes"].tolist() if "prefix_block_hashes" in df else [None] * len(df)
    return [
        SeqState(rid, i, float(t), int(p), int(o), tuple(h) if h is not None and len(h) else None)
        for i, (rid, t, p, o, h) in enumerate(zip(df["request_id"].tolist(), df["arrival_time_s"].tolist(),
                                                  df["prompt_tokens"].tolist(),
                                                  df["output_tokens"].tolist(), hashes))
    ]


def _arrivals(env: simpy.Environment, seqs: list[SeqState], engines: list[InstanceEngine], router: Router,
              progress: bool):
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seqs), unit="req", desc="simulating", mininterval=0.5)
    for seq in seqs:
        delay = seq.arrival_time_s - env.now
        if delay > 0:
            yield _urgent_timeout(env, delay)
        views = [e.view() for e in engines]
        target = router.route(seq, views, env.now)
        engines[target].submit(seq)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()


def _urgent_timeout(env: simpy.Environment, delay_s: float) -> simpy.Event:
    """A timeout processed before every NORMAL event at the same time (SimPy's Timeout has no priority).

    Arrivals use it so that a step starting at the arrival time already sees the request, whatever
    the order in which the two events were created: this keeps step and fast modes identical.
    """
    event = simpy.Event(env)
    event._ok, event._value = True, None  # a pre-triggered event, as simpy.Timeout builds itself
    env.schedule(event, URGENT, delay_s)
    return event


def _check_servable(trace: Trace, instances: list[InstanceConfig]) -> None:
    df = trace.df
    need = (df["prompt_tokens"] + df["output_tokens"]).to_numpy()
    biggest = max(cfg.kv_capacity_tokens for cfg in instances)
    too_big = np.flatnonzero(need > biggest)
    if too_big.size:
        row = df.iloc[too_big[0]]
        raise ConfigError(
            f"request {row['request_id']!r} needs {int(need[too_big[0]])} KV tokens (prompt "
            f"{int(row['prompt_tokens'])} + output {int(row['output_tokens'])}) but the largest instance holds "
            f"{biggest}; {too_big.size} request(s) like it can never run. Give the instances more KV "
            f"(more GPUs/TP, a larger GPU) or filter the trace explicitly")


def _check_budgets(engines: list[InstanceEngine]) -> None:
    for engine in engines:
        for knob in ("max_num_batched_tokens", "token_budget"):
            budget = getattr(engine.scheduler, knob, None)
            if budget is not None and budget < engine.kv.block_size_tokens:
                raise ConfigError(
                    f"instance {engine.index}: {knob}={budget} is smaller than one KV block "
                    f"({engine.kv.block_size_tokens} tokens); raise the budget")
