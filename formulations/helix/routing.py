"""Per-request pipeline routers for the pipelined engine (spec §1.c-5/6, §6.7 baselines).

Each class implements :class:`gpusched.policy.PipelineRouter`: ``route`` walks from the source to the sink
of the placed cluster's chaining graph (:func:`~formulations.helix.flow.chaining_arcs`) and returns the
request's stages; a node ``v`` reached from ``u`` computes layers ``[e_u, e_v)`` (``e_u = 0`` at the source),
which is its whole range without partial inference.

* :class:`HelixRouter` — Helix: IWRR over the max-flow arc flows, Fail-Flow / Fail-Length / Fail-KV masks
  and KV-expectation admission (wraps :class:`~formulations.helix.iwrr.PipelineScheduler`).
* :class:`RandomRouter` — a uniformly random successor at each vertex (seeded).
* :class:`ShortestQueueRouter` — the successor with the fewest active requests (then fewest queued tokens).
* :class:`SwarmRouter` — Swarm-style "stochastic wiring": a random successor drawn with probability
  proportional to its node throughput ``T_v(e_v - s_v)``; it knows nothing of links, flows or KV.

The three baselines walk the chaining graph restricted to vertices on some source-to-sink path (a walk
can never dead-end) and do no KV admission: the engine refuses a pipeline whose KV does not fit, calls
``release`` and retries later. Choices between equal candidates follow the placement's node order.
"""
from __future__ import annotations

import random
from typing import Hashable, Mapping, Sequence

from gpusched.errors import ConfigError
from gpusched.policy import PipelineNodeView, PipelineStage, SeqState

from .flow import SINK, SOURCE, chaining_arcs, max_flow
from .iwrr import KVExpectation, PipelineScheduler
from .problem import HelixProblem, Placement

#: Helix's KV-expectation settings per mode (spec §1.c-6): (expected_output_ratio ρ, expected_kv_hwm h)
KV_SETTINGS = {"online": (0.6, 0.9), "offline": (1.0, 0.85)}


def stages_from_path(path: Sequence, placement: Placement) -> list[PipelineStage]:
    """``[source, n1, ..., sink]`` -> stages; node ``n_k`` computes ``[e_{n_{k-1}}, e_{n_k})``."""
    stages, last = [], 0
    for v in path[1:-1]:
        s, e = placement[v]
        if not s <= last < e:
            raise ConfigError(f"path {list(path)}: node {v!r} holds [{s}, {e}) and cannot continue at layer {last}")
        stages.append(PipelineStage(v, last, e))
        last = e
    return stages


def routing_graph(problem: HelixProblem, placement: Placement, allow_partial_inference: bool = False
                  ) -> dict[Hashable, list]:
    """Successor lists of the chaining graph, restricted to vertices on a source-to-sink path.

    Successors keep the placement's node order (the sink last) so that choices are reproducible.
    """
    placement = problem.validate_placement(placement)
    arcs = [a for a, c in chaining_arcs(problem, placement, allow_partial_inference).items() if c > 0]
    succ: dict = {}
    pred: dict = {}
    for u, v in arcs:
        succ.setdefault(u, []).append(v)
        pred.setdefault(v, []).append(u)

    def reach(start, nbrs):
        seen, stack = {start}, [start]
        while stack:
            for w in nbrs.get(stack.pop(), []):
                if w not in seen:
                    seen.add(w)
                    stack.append(w)
        return seen

    alive = reach(SOURCE, succ) & reach(SINK, pred)
    if SINK not in alive:
        raise ConfigError("the placed cluster has no source-to-sink path: no request can be served")
    order = {n: k for k, n in enumerate(placement)}
    order[SINK] = len(order)
    return {u: sorted((v for v in vs if v in alive), key=order.__getitem__)
            for u, vs in succ.items() if u in alive}


class HelixRouter:
    """Helix's per-request pipeline scheduler as a :class:`~gpusched.policy.PipelineRouter`.

    Parameters
    ----------
    problem, placement : the placed cluster; the IWRR weights are its max-flow arc flows (tokens/s).
    kv_capacity_slots : ``{node: KV_i}`` token-layer slots for the KV-expectation admission (``None``: no
        Fail-KV mask).
    mode : ``"online"`` (ρ = 0.6, h = 0.9) or ``"offline"`` (ρ = 1.0, h = 0.85); explicit
        ``expected_output_ratio`` / ``high_water_mark`` override them.
    prompt_max_tokens : ``{node: tokens}`` for the Fail-Length mask.
    flow_threshold : the Fail-Flow share (0.05 of a vertex's out-flow).
    allow_partial_inference : route over ``s_v <= e_u < e_v`` arcs too (the paper does so for Petals).

    A rejected request (every successor masked somewhere) leaves loads and KV expectations unchanged. Decode
    steps charge ``1 / w`` along the path (``schedule_increment``); ``release`` frees the expected KV. If
    the engine refuses a routed pipeline and releases it, the IWRR loads it charged stay charged (the
    spec's scheduler has no undo after a successful schedule either).
    """

    def __init__(self, problem: HelixProblem, placement: Placement,
                 kv_capacity_slots: Mapping[Hashable, int] | None = None, *, mode: str = "online",
                 expected_output_ratio: float | None = None, high_water_mark: float | None = None,
                 expected_output_tokens: int = 240, prompt_max_tokens: Mapping[Hashable, int] | None = None,
                 flow_threshold: float = 0.05, allow_partial_inference: bool = False,
                 name: str = "helix-iwrr") -> None:
        if mode not in KV_SETTINGS:
            raise ConfigError(f"mode {mode!r} unknown; use one of {sorted(KV_SETTINGS)}")
        rho, hwm = KV_SETTINGS[mode]
        rho = rho if expected_output_ratio is None else expected_output_ratio
        hwm = hwm if high_water_mark is None else high_water_mark
        self.name = name
        self.placement = problem.validate_placement(placement)
        self.flow = max_flow(problem, self.placement, allow_partial_inference=allow_partial_inference)
        if self.flow.value_tokens_per_s <= 0:
            raise ConfigError("the placement's max flow is 0: the IWRR router has no arc to route over")
        kv = None
        if kv_capacity_slots is not None:
            missing = [n for n in self.placement if n not in kv_capacity_slots]
            if missing:
                raise ConfigError(f"kv_capacity_slots lacks node(s) {missing}; give every node's KV_i")
            kv = {n: KVExpectation(kv_capacity_slots[n], e - s, rho, hwm, expected_output_tokens)
                  for n, (s, e) in self.placement.items()}
        self.scheduler = PipelineScheduler(self.flow.arc_flows, self.placement, kv=kv,
                                           prompt_max_tokens=prompt_max_tokens, flow_threshold=flow_threshold)
        self._paths: dict[Hashable, list] = {}

    def route(self, request: SeqState, nodes: Mapping[Hashable, PipelineNodeView],
              now_s: float) -> list[PipelineStage] | None:
        if request.request_id in self._paths:
            raise ConfigError(f"request {request.request_id!r} routed twice without release")
        path = self.scheduler.schedule(request.request_id, request.prompt_tokens)
        if path is None:
            return None
        self._paths[request.request_id] = path
        return stages_from_path(path, self.placement)

    def on_decode(self, request: SeqState, now_s: float) -> None:
        self.scheduler.schedule_increment(self._paths[request.request_id], 1)

    def release(self, request: SeqState, now_s: float) -> None:
        self.scheduler.finish(request.request_id, self._paths.pop(request.request_id))

    def expected_kv_used_slots(self) -> dict:
        """``{node: KV_i - expected free slots}`` (spec §1.c-6); what Helix's offline feeder measures."""
        kv = self.scheduler.kv or {}
        return {n: e.capacity_slots - e.free_slots for n, e in kv.items()}


class _WalkRouter:
    """A walk over :func:`routing_graph`; subclasses pick one successor per vertex."""

    name = "walk"

    def __init__(self, problem: HelixProblem, placement: Placement, *, seed: int = 0,
                 allow_partial_inference: bool = False) -> None:
        self.placement = problem.validate_placement(placement)
        self.problem = problem
        self.graph = routing_graph(problem, self.placement, allow_partial_inference)
        self.rng = random.Random(seed)

    def _pick(self, candidates: list, nodes: Mapping[Hashable, PipelineNodeView]):
        raise NotImplementedError

    def route(self, request: SeqState, nodes: Mapping[Hashable, PipelineNodeView],
              now_s: float) -> list[PipelineStage]:
        path, u = [SOURCE], SOURCE
        while u != SINK:
            cands = self.graph[u]
            u = SINK if SINK in cands else self._pick(cands, nodes)
            path.append(u)
        return stages_from_path(path, self.placement)

    def on_decode(self, request: SeqState, now_s: float) -> None:
        pass

    def release(self, request: SeqState, now_s: float) -> None:
        pass


class RandomRouter(_WalkRouter):
    """Uniformly random successor at each vertex (spec §6.7 "random" baseline)."""

    name = "random"

    def _pick(self, candidates, nodes):
        return candidates[self.rng.randrange(len(candidates))]


class ShortestQueueRouter(_WalkRouter):
    """Successor with the fewest active requests, then the fewest queued tokens (spec §6.7 baseline).

    "Queue" is ambiguous in a pipeline; we take the node's active requests (each cycles through the node
    once per decode step), because the instantaneous token queue is mostly empty under continuous batching.
    """

    name = "shortest-queue"

    def _pick(self, candidates, nodes):
        def key(k):
            view = nodes.get(candidates[k])
            return (0, 0, k) if view is None else (view.active_requests, view.queued_tokens, k)
        return candidates[min(range(len(candidates)), key=key)]


class SwarmRouter(_WalkRouter):
    """Swarm-style stochastic wiring: successor ``v`` drawn with probability ∝ ``T_v(e_v - s_v)``.

    Swarm's peers route by their estimated next-stage throughput; we use the node's ``T_i(k)`` (tokens/s) as
    that estimate, a fixed stand-in for Swarm's measured running averages.
    """

    name = "swarm"

    def __init__(self, problem: HelixProblem, placement: Placement, **kwargs) -> None:
        super().__init__(problem, placement, **kwargs)
        self.weights = {v: problem.throughput[v][e - s - 1] for v, (s, e) in self.placement.items()}

    def _pick(self, candidates, nodes):
        w = [self.weights[v] for v in candidates]
        return self.rng.choices(candidates, weights=w)[0] if sum(w) > 0 else candidates[0]


ROUTERS = {"helix": HelixRouter, "random": RandomRouter, "shortest-queue": ShortestQueueRouter,
           "swarm": SwarmRouter}
