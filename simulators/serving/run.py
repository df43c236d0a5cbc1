"""Serving a trace on a set of instances: arrivals, routing, and the results tables.

``simulate(trace, instances, router=...)`` builds one :class:`~simulators.serving.instance.InstanceEngine` per
:class:`InstanceConfig`, releases the trace's requests at their arrival times, routes each through the
router, runs SimPy to the end, and returns a :class:`~simulators.serving.results.SimResult`.

Event order at equal times is fixed so that runs are reproducible: an arrival at time t is routed
before any instance starts the step that begins at t, so that step can already schedule it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import simpy

from gpusched.cluster import DEFAULT_LINK
from gpusched.errors import ConfigError
from gpusched.hardware import LinkSpec
from gpusched.kvcache import BlockManager
from gpusched.perf import StepTimeModel
from gpusched.policy import BatchScheduler, Router, SeqState
from gpusched.registry import BuildContext
from gpusched.workload import Trace
from simulators.compiled import driver as compiled
from simulators.serving.instance import InstanceEngine, wait_until
from simulators.serving.patience import AbandonRate, abandon_rate_of
from simulators.serving.prefix import SessionBlockHashes, TraceBlockHashes
from simulators.serving.results import SimResult
from simulators.serving.routers import make_router
from simulators.serving.schedulers import make_scheduler

ROLES = ("colocated", "prefill", "decode")
MODES = ("fast", "simpy", "step")


@dataclass
class InstanceConfig:
    """One instance to simulate.

    step_model : the step-time model of this instance's model, GPU kind and TP degree.
    num_kv_blocks : KV capacity in blocks (from :func:`gpusched.kvcache.kv_capacity`, or an engine's
        measured block count when replaying a real run).
    scheduler : a registered scheduler name (:mod:`gpusched.registry`; a fresh scheduler per instance and
        run, told the trace and this instance) or a
        :class:`~gpusched.policy.BatchScheduler` object, used as given: give each instance its own if
        the scheduler keeps state.
    scheduler_knobs : keyword arguments for a scheduler given by name.
    role : ``colocated``, or ``prefill``/``decode`` in a disaggregated cluster.
    kv_bytes_per_token : KV bytes of one token (all layers); required on prefill instances.
    host_link_bytes_per_s : host link bandwidth (PCIe, one direction), for swap preemption.
    """

    step_model: StepTimeModel
    num_kv_blocks: int
    block_size_tokens: int = 16
    scheduler: str | BatchScheduler = "vllm-v1"
    scheduler_knobs: dict = field(default_factory=dict)
    role: str = "colocated"
    kv_bytes_per_token: int = 0  # whole-model KV bytes per token: prices hand-offs and swaps
    host_link_bytes_per_s: float = 0.0  # GPU <-> host memory, one direction: prices swap preemption

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

    def build_scheduler(self, trace: Trace | None = None, seed: int = 0) -> BatchScheduler:
        """The instance's scheduler for one run over ``trace`` (a registered name is built fresh, told the
        trace and this instance through a :class:`~gpusched.registry.BuildContext`)."""
        if isinstance(self.scheduler, str):
            context = BuildContext(trace=trace, step_model=self.step_model, num_kv_blocks=self.num_kv_blocks,
                                   block_size_tokens=self.block_size_tokens, seed=seed)
            return make_scheduler(self.scheduler, context, **self.scheduler_knobs)
        return self.scheduler


def simulate(trace: Trace, instances: Sequence[InstanceConfig], router: str | Router = "round-robin",
             seed: int = 0, record_timeline: bool = True, check_invariants: bool = True,
             progress: bool = False, mode: str = "fast", decode_router: str | Router = "least-outstanding-tokens",
             link: LinkSpec = DEFAULT_LINK, hash_own_blocks: bool | None = None,
             abandon_rate_per_s: AbandonRate = 0.0) -> SimResult:
    """Serve ``trace`` on ``instances`` and return per-request and per-instance results.

    Parameters
    ----------
    router : picks the colocated or prefill instance of every arriving request.
    decode_router : in a disaggregated cluster, picks the decode instance a finished prefill hands to.
    link : the prefill -> decode link; a hand-off takes ``prompt KV bytes / bandwidth + latency`` during
        which the prefill instance still holds the KV.
    mode : ``step`` runs the SimPy engine one event per step (the reference); ``simpy`` advances runs of
        decode steps in a few events; ``fast`` (default) runs the compiled engine of
        :mod:`simulators.compiled` when it covers the configuration (colocated or disaggregated ``vllm-v1``,
        ``vllm-v0``, ``sarathi`` or ``static`` instances with an H100-format profile behind a router given by name, with
        or without sessions; :func:`simulators.compiled.driver.unsupported_reason` says why not) and ``simpy``
        otherwise. All three give identical per-request results (``result.engine`` says which ran).
    hash_own_blocks : give every request whose content is unknown (no trace prefix ids, no session) its
        own block hashes, as a prefix-caching engine hashes every full block by content: a preempted
        request then finds the blocks it left in the cache and recomputes only what was evicted (vLLM V1
        with prefix caching). ``None``: on when any instance's scheduler has prefix caching enabled.

    Routing is capacity-aware: the router (and the decode router) is offered only the instances whose KV
    holds the request's prompt + output (all of them unless the instances differ in KV size), so that in
    a cluster of unequal instances no request is sent where it can never run.

    Multi-round sessions (``session_id``/``round``/``think_time_s`` columns) release round r+1 a think
    time after round r finishes, and not before its own ``arrival_time_s`` (a lower bound); its prompt
    (the history) finds its KV cached on the instance that served round r if it is still resident, and
    only the new tokens are prefilled. Prefix hashes of the trace (Mooncake) are reused the same way.
    Both need a scheduler with prefix caching (vLLM V1's default).

    abandon_rate_per_s : a request still waiting for its first schedule when its patience runs out leaves
        its instance's queue (status ``abandoned waiting for prefill``); patience ``Exp(rate)`` per request,
        ``rate`` a number or ``f(request) -> rate`` (per second), drawn from ``seed``. 0 (default): nobody
        abandons (and the compiled engine may run).

    Refuses, before running, a configuration that cannot serve the trace: a request whose KV exceeds
    the capacity of every instance that takes new requests (or, disaggregated, of every decode
    instance), a scheduler token budget smaller than one block, prefill instances without decode
    instances (or the reverse).
    """
    instances = list(instances)
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {MODES}")
    if not instances:
        raise ConfigError("no instances to simulate; pass at least one InstanceConfig")
    _check_roles(instances)
    _check_servable(trace, instances)
    schedulers = [cfg.build_scheduler(trace, seed) for cfg in instances]
    _check_budgets(schedulers, instances)
    _check_whole_prefills(trace, schedulers)
    abandons = callable(abandon_rate_per_s) or abandon_rate_per_s != 0
    if mode == "fast" and not abandons and compiled.unsupported_reason(trace, instances, router, hash_own_blocks, schedulers,
                                                                         decode_router=decode_router, link=link) is None:
        return compiled.simulate_compiled(trace, instances, router, seed, record_timeline, check_invariants,
                                          hash_own_blocks, progress, schedulers[0], decode_router=decode_router,
                                          link=link)
    run = _ServingRun(trace, instances, schedulers, router, decode_router, link, seed, record_timeline,
                      check_invariants, mode != "step", hash_own_blocks)
    if abandons:
        run.patience_s = _patience_draws(run.seqs, abandon_rate_per_s, seed)
    run.env.process(run.arrivals(progress))
    run.env.run()
    result = SimResult.from_run(trace, run.seqs, run.engines, engine="step" if mode == "step" else "simpy")
    if run.abandoned:
        result.requests.loc[sorted(run.abandoned), "status"] = "abandoned waiting for prefill"
    return result


def _patience_draws(seqs: list[SeqState], rate: AbandonRate, seed: int) -> list[float]:
    """One ``Exp(rate)`` patience (s) per request, ``inf`` where the rate is 0 (:func:`simulate`)."""
    draws = np.random.default_rng(np.random.SeedSequence([seed, 0xAB])).standard_exponential(len(seqs))
    rates = [abandon_rate_of(rate, seq) for seq in seqs]
    return [e / r if r > 0 else math.inf for e, r in zip(draws.tolist(), rates)]


class _ServingRun:
    """The SimPy world of one :func:`simulate` call: engines, routing, sessions and hand-offs."""

    def __init__(self, trace, instances, schedulers, router, decode_router, link, seed, record_timeline,
                 check_invariants, fast, hash_own_blocks=None):
        self.env = env = simpy.Environment()
        self.router = make_router(router, seed=seed) if isinstance(router, str) else router
        self.decode_router = (make_router(decode_router, seed=seed) if isinstance(decode_router, str)
                              else decode_router)
        self.link = link
        self.instances = instances
        self.engines = [
            InstanceEngine(env, i, scheduler, cfg.step_model,
                           BlockManager(cfg.num_kv_blocks, cfg.block_size_tokens), role=cfg.role,
                           on_first_token=self._hand_off if cfg.role == "prefill" else None,
                           on_finish=self._finished, record_timeline=record_timeline,
                           check_invariants=check_invariants, fast=fast,
                           kv_bytes_per_token=cfg.kv_bytes_per_token,
                           host_link_bytes_per_s=cfg.host_link_bytes_per_s)
            for i, (cfg, scheduler) in enumerate(zip(instances, schedulers))
        ]
        block = {cfg.block_size_tokens for cfg in instances}
        if len(block) > 1:
            raise ConfigError(f"instances use different KV block sizes {sorted(block)}; use one block size")
        self.block_size_tokens = bs = block.pop()
        # what routers see: every instance (decode ones are not candidates of an entry router), then the
        # decode instances for a hand-off; a request larger than the smallest of them sees those it fits
        self._next_arrival_s = float("inf")  # of the trace's next request (not of sessions' later rounds)
        for engine in self.engines:  # decode runs are priced up to it
            engine.next_arrival_s = self._next_arrival
        self._entry_views = tuple(e.live_view for e in self.engines)
        self._decode_views = tuple(e.live_view for e in self.engines if e.role == "decode")
        self._entry_fits_all = min(cfg.kv_capacity_tokens for cfg in instances)
        self._decode_fits_all = min((cfg.kv_capacity_tokens for cfg in instances if cfg.role == "decode"), default=0)
        if hash_own_blocks is None:
            hash_own_blocks = any(getattr(e.scheduler, "enable_prefix_caching", False) for e in self.engines)
        self.seqs, self.next_round = _sequences(trace, bs, hash_own_blocks)
        self.patience_s: list[float] | None = None  # per request (simulate's abandon_rate_per_s), None: never
        self.abandoned: set[int] = set()

    def arrivals(self, progress: bool):
        env = self.env
        successors = set(self.next_round.values())
        first_rounds = [s for s in self.seqs if s.index not in successors]
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(first_rounds), unit="req", desc="simulating", mininterval=0.5)
        for k, seq in enumerate(first_rounds):
            if seq.arrival_time_s > env.now:
                yield from wait_until(env, seq.arrival_time_s, urgent=True)
            self._next_arrival_s = first_rounds[k + 1].arrival_time_s if k + 1 < len(first_rounds) else float("inf")
            self._dispatch(seq)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()

    def _next_arrival(self) -> float:
        return self._next_arrival_s

    def _dispatch(self, seq: SeqState) -> None:
        views = self._entry_views
        if seq.prompt_tokens + seq.output_tokens > self._entry_fits_all:
            views = _fitting(views, seq, self.block_size_tokens)
        engine = self.engines[self.router.route(seq, views, self.env.now)]
        engine.submit(seq)
        if self.patience_s is not None and math.isfinite(self.patience_s[seq.index]):
            timer = self.env.timeout(self.patience_s[seq.index])
            timer.callbacks.append(lambda _ev, seq=seq, engine=engine: self._abandon(seq, engine))

    def _abandon(self, seq: SeqState, engine: InstanceEngine) -> None:
        """Patience over: leave the queue if still never scheduled there."""
        if engine.withdraw(seq):
            self.abandoned.add(seq.index)

    def _finished(self, seq: SeqState, now_s: float) -> None:
        """A request finished: release the next round of its session after its think time."""
        nxt = self.next_round.get(seq.index)
        if nxt is not None:
            self.env.process(self._release_round(self.seqs[nxt], now_s))

    def _release_round(self, seq: SeqState, previous_finish_s: float):
        # the trace's arrival time of a later round is a lower bound (gpusched.synthetic.agent_sessions)
        seq.arrival_time_s = max(seq.arrival_time_s, previous_finish_s + seq.extra["think_time_s"])
        if seq.arrival_time_s > self.env.now:
            yield from wait_until(self.env, seq.arrival_time_s, urgent=True)
        self._dispatch(seq)

    def _hand_off(self, seq: SeqState, now_s: float) -> None:
        """A prefill instance produced the first token: move the KV to a decode instance."""
        self.env.process(self._transfer(seq, self.engines[seq.instance]))

    def _transfer(self, seq: SeqState, source: InstanceEngine):
        kv_bytes = seq.num_computed_tokens * self.instances[source.index].kv_bytes_per_token
        yield self.env.timeout(self.link.transfer_time_s(kv_bytes))
        source.release(seq)
        views = self._decode_views
        if seq.prompt_tokens + seq.output_tokens > self._decode_fits_all:
            views = _fitting(views, seq, self.block_size_tokens)
        self.engines[self.decode_router.route(seq, views, self.env.now)].submit(seq)


def _fitting(views, seq: SeqState, block_size_tokens: int) -> tuple:
    """The views of the instances whose KV holds ``seq``'s prompt + output."""
    need = seq.prompt_tokens + seq.output_tokens
    return tuple(v for v in views if v.kv_total_blocks * block_size_tokens >= need)


def _sequences(trace: Trace, block_size_tokens: int, own_blocks: bool = False) -> tuple[list[SeqState], dict[int, int]]:
    """Engine-side request states, and for multi-round sessions the index of each round's successor."""
    df = trace.df
    n = len(df)
    coarse = df["prefix_block_hashes"].tolist() if "prefix_block_hashes" in df else [None] * n
    trace_block = trace.prefix_block_tokens
    sessions = "session_id" in df and "round" in df and df["session_id"].notna().any()
    seqs = []
    for i, (rid, t, p, o, h) in enumerate(zip(df["request_id"].tolist(), df["arrival_time_s"].tolist(),
                                              df["prompt_tokens"].tolist(), df["output_tokens"].tolist(),
                                              coarse)):
        hashes = None
        if h is not None and len(h) and trace_block:
            hashes = TraceBlockHashes(h, trace_block, block_size_tokens, int(p))
        elif own_blocks:  # content unknown: the request's blocks are its own
            hashes = SessionBlockHashes(-1 - i, int(p) + int(o), block_size_tokens)
        seqs.append(SeqState(rid, i, float(t), int(p), int(o), hashes))
    next_round: dict[int, int] = {}
    if sessions:
        ordered = df.reset_index(drop=True).assign(_i=range(n)).dropna(subset=["session_id"])
        codes = {sid: k for k, sid in enumerate(pd.unique(ordered["session_id"]))}
        think = ordered["think_time_s"] if "think_time_s" in ordered else pd.Series(0.0, index=ordered.index)
        for (sid, rnd, i, th) in zip(ordered["session_id"], ordered["round"], ordered["_i"], think):
            seq = seqs[i]
            seq.extra = {"round": int(rnd), "think_time_s": float(th) if th == th else 0.0}
            seq.block_hashes = SessionBlockHashes(codes[sid], seq.prompt_tokens + seq.output_tokens,
                                                  block_size_tokens)
        for _, group in ordered.sort_values(["session_id", "round"], kind="stable").groupby("session_id", sort=False):
            idx = group["_i"].tolist()
            next_round.update(zip(idx[:-1], idx[1:]))
        for i in next_round:  # the next round reuses this round's blocks
            seqs[i].block_hashes.reused = True
    return seqs, next_round


def _check_roles(instances: list[InstanceConfig]) -> None:
    roles = {cfg.role for cfg in instances}
    if "prefill" in roles and "decode" not in roles:
        raise ConfigError("a disaggregated cluster has prefill instances but no decode instance to hand "
                          "requests to; add InstanceConfig(..., role='decode')")
    if "decode" in roles and "prefill" not in roles:
        raise ConfigError("decode instances receive requests only from prefill instances, and there are "
                          "none; add InstanceConfig(..., role='prefill') or make them 'colocated'")
    for i, cfg in enumerate(instances):
        if cfg.role == "prefill" and cfg.kv_bytes_per_token <= 0:
            raise ConfigError(f"prefill instance {i} has kv_bytes_per_token={cfg.kv_bytes_per_token}; the "
                              f"hand-off time needs it (gpusched.llm.get_model(name).kv_bytes_per_token())")


def _check_servable(trace: Trace, instances: list[InstanceConfig]) -> None:
    """Every request must fit the KV of some instance that takes new requests (colocated or prefill)
    and, in a disaggregated cluster, of some decode instance (routing offers only those, see
    :func:`simulate`)."""
    df = trace.df
    need = (df["prompt_tokens"] + df["output_tokens"]).to_numpy()
    groups = [("instance that takes new requests", [c for c in instances if c.role != "decode"])]
    if any(cfg.role == "decode" for cfg in instances):
        groups.append(("decode instance", [c for c in instances if c.role == "decode"]))
    for what, group in groups:
        biggest = max(cfg.kv_capacity_tokens for cfg in group)
        too_big = np.flatnonzero(need > biggest)
        if too_big.size:
            row = df.iloc[too_big[0]]
            raise ConfigError(
                f"request {row['request_id']!r} (trace row {too_big[0]}) needs {int(need[too_big[0]])} KV tokens "
                f"(prompt {int(row['prompt_tokens'])} + output {int(row['output_tokens'])}) but the largest "
                f"{what} holds {biggest}; {too_big.size} request(s) like it can never run. Give the instances "
                f"more KV (more GPUs/TP, a larger GPU) or filter the trace explicitly")


def _check_whole_prefills(trace: Trace, schedulers) -> None:
    """Schedulers without chunked prefill (``whole_sequence_budget``) must fit every request in one step.
    ``schedulers``: one per instance, in order."""
    budgets = [(index, scheduler, scheduler.whole_sequence_budget) for index, scheduler in enumerate(schedulers)
               if getattr(scheduler, "whole_sequence_budget", None) is not None]
    if not budgets:
        return
    need = trace.df["prompt_tokens"] + trace.df["output_tokens"]
    i = int(need.to_numpy().argmax())
    longest = int(need.iloc[i])
    for index, scheduler, budget in budgets:
        if longest > budget:
            raise ConfigError(
                f"instance {index}: scheduler {scheduler.name!r} prefills whole sequences, but "
                f"request {trace.df['request_id'].iloc[i]!r} has prompt + output = {longest} tokens "
                f"> max_num_batched_tokens={budget} ({int((need > budget).sum())} request(s) like it would "
                f"block the queue forever); raise max_num_batched_tokens to >= {longest} (vLLM "
                f"requires it >= max_model_len without chunked prefill) or use chunked prefill (vllm-v1's "
                f"default, sarathi)")


def _check_budgets(schedulers, instances) -> None:
    """Every scheduler's token budget must hold at least one KV block of its instance."""
    for index, (scheduler, cfg) in enumerate(zip(schedulers, instances)):
        for knob in ("max_num_batched_tokens", "token_budget"):
            budget = getattr(scheduler, knob, None)
            if budget is not None and budget < cfg.block_size_tokens:
                raise ConfigError(
                    f"instance {index}: {knob}={budget} is smaller than one KV block "
                    f"({cfg.block_size_tokens} tokens); raise the budget")
