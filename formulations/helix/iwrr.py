"""Helix per-request pipeline scheduler as a pure algorithm (spec §1.c-5 and §1.c-6).

* :class:`InterleavedWeightedRoundRobin`: one per vertex; weights are the max-flow arc flows ``w_uv = f_uv``
  (not link capacities). A choice picks ``argmin_v load_v + x / w_v`` over unmasked ``v`` (strict ``<``, so
  ties go to the lowest index) and adds ``x / w_v`` to that load.
* :class:`KVExpectation`: expected free KV slots per node; admission ``free - ⌊x + 240 ρ⌋ (e - s) >= (1-h) KV``.
* :class:`PipelineScheduler`: walks from the source to the sink over the max-flow arcs, masking successors
  with too little flow ("Fail-Flow", ``f_uv < 0.05 Σ_v f_uv``), too short prompt limits ("Fail-Length") or no
  KV room ("Fail-KV"); returns the request's pipeline or ``None`` (loads and KV restored).

Plugging this into the pipelined simulator waits for ``gpusched.policy``'s router protocol.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

from gpusched.errors import ConfigError

from .flow import SINK, SOURCE


class InterleavedWeightedRoundRobin:
    """IWRR over candidates with positive weights (tokens/s of max flow on each out-arc)."""

    def __init__(self, weights: Sequence[float]) -> None:
        weights = [float(w) for w in weights]
        if not weights or any(not (w > 0 and math.isfinite(w)) for w in weights):
            raise ConfigError(f"IWRR weights must be a non-empty list of positive finite numbers, got {weights}")
        self.weights = weights
        self.loads = [0.0] * len(weights)

    def choose(self, workload: float = 1.0, mask: Sequence[bool] | None = None) -> int | None:
        """Index of the chosen candidate (and charge it ``workload/w``), or ``None`` if all are masked.

        ``mask[v] = True`` means candidate ``v`` is excluded.
        """
        best, best_val = None, math.inf
        for v, w in enumerate(self.weights):
            if mask is not None and mask[v]:
                continue
            val = self.loads[v] + workload / w
            if val < best_val:  # strict: ties to the lowest index
                best, best_val = v, val
        if best is not None:
            self.loads[best] += workload / self.weights[best]
        return best

    def increment(self, index: int, workload: float = 1.0) -> None:
        """Charge ``workload/w`` to a candidate already chosen (decode steps: ``schedule_increment``)."""
        self.loads[index] += workload / self.weights[index]

    def undo(self, index: int, workload: float) -> None:
        self.loads[index] -= workload / self.weights[index]


class KVExpectation:
    """Expected KV usage of one node (token-layer slots), spec §1.c-6.

    ``capacity_slots`` = ``KV_i``, ``num_layers`` = layers the node holds; ``expected_output_tokens`` (240) x
    ``expected_output_ratio`` ``ρ`` (online 0.6, offline 1.0); ``high_water_mark`` ``h`` (online 0.9).
    """

    def __init__(self, capacity_slots: int, num_layers: int, expected_output_ratio: float = 0.6,
                 high_water_mark: float = 0.9, expected_output_tokens: int = 240) -> None:
        if capacity_slots <= 0 or num_layers <= 0:
            raise ConfigError(f"KV capacity {capacity_slots} and layers {num_layers} must be positive")
        if not 0 < high_water_mark <= 1:
            raise ConfigError(f"high_water_mark must be in (0, 1], got {high_water_mark}")
        self.capacity_slots = int(capacity_slots)
        self.num_layers = int(num_layers)
        self.rho = float(expected_output_ratio)
        self.hwm = float(high_water_mark)
        self.expected_output_tokens = int(expected_output_tokens)
        self.free_slots = self.capacity_slots
        self._held: dict[Hashable, int] = {}

    def cost(self, prompt_tokens: int, num_layers: int | None = None) -> int:
        """``⌊x + 240 ρ⌋ · layers`` slots."""
        layers = self.num_layers if num_layers is None else num_layers
        return int(math.floor(prompt_tokens + self.expected_output_tokens * self.rho)) * layers

    def can_admit(self, prompt_tokens: int, num_layers: int | None = None) -> bool:
        return self.free_slots - self.cost(prompt_tokens, num_layers) >= (1 - self.hwm) * self.capacity_slots

    def admit(self, request_id: Hashable, prompt_tokens: int, num_layers: int | None = None) -> bool:
        """Reserve the expected slots if the admission check passes; returns whether it did."""
        if request_id in self._held:
            raise ConfigError(f"request {request_id!r} already holds KV on this node")
        if not self.can_admit(prompt_tokens, num_layers):
            return False
        c = self.cost(prompt_tokens, num_layers)
        self.free_slots -= c
        self._held[request_id] = c
        return True

    def release(self, request_id: Hashable) -> None:
        """Give back a request's slots (when its last decode finishes)."""
        self.free_slots += self._held.pop(request_id)


@dataclass
class PipelineScheduler:
    """IWRR routing over a placement's max-flow arc flows.

    ``arc_flows``: ``{(u, v): tokens/s}`` from :func:`~formulations.helix.flow.max_flow`; ``placement``
    ``{node: (s, e)}``; ``kv``: optional ``{node: KVExpectation}``; ``prompt_max_tokens``: optional
    ``{node: int}``; ``flow_threshold``: the Fail-Flow share (0.05).
    """

    arc_flows: Mapping[tuple, float]
    placement: Mapping[Hashable, tuple[int, int]]
    kv: Mapping[Hashable, KVExpectation] | None = None
    prompt_max_tokens: Mapping[Hashable, int] | None = None
    flow_threshold: float = 0.05
    _succ: dict = field(init=False, repr=False)
    _iwrr: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        succ: dict = {}
        for (u, v), f in self.arc_flows.items():
            if f > 0:
                succ.setdefault(u, []).append((v, f))
        self._succ = succ  # candidate order = arc order of the max-flow result
        self._iwrr = {u: InterleavedWeightedRoundRobin([f for _, f in vs]) for u, vs in self._succ.items()}

    def _masked(self, u, prompt_tokens: int, request_id) -> list[bool]:
        vs = self._succ[u]
        total = sum(f for _, f in vs)
        mask = []
        for v, f in vs:
            bad = f < self.flow_threshold * total
            if not bad and v != SINK and self.prompt_max_tokens is not None:
                bad = prompt_tokens > self.prompt_max_tokens.get(v, math.inf)
            if not bad and v != SINK and self.kv is not None and v in self.kv:
                s, e = self.placement[v]
                lo = self.placement[u][1] if u != SOURCE else 0
                bad = not self.kv[v].can_admit(prompt_tokens, e - max(s, lo))
            mask.append(bad)
        return mask

    def schedule(self, request_id: Hashable, prompt_tokens: int) -> list | None:
        """Route a prompt: the list of vertices ``[source, n1, ..., sink]``, or ``None`` (rejected for now;
        loads and KV reservations are restored)."""
        path, charged, reserved = [SOURCE], [], []
        u, last = SOURCE, 0
        while u != SINK:
            if u not in self._succ:
                break
            mask = self._masked(u, prompt_tokens, request_id)
            idx = self._iwrr[u].choose(prompt_tokens, mask)
            if idx is None:
                break
            charged.append((u, idx))
            v = self._succ[u][idx][0]
            if v != SINK and self.kv is not None and v in self.kv:
                s, e = self.placement[v]
                self.kv[v].admit(request_id, prompt_tokens, e - max(s, last))
                reserved.append(v)
            if v != SINK:
                last = self.placement[v][1]
            path.append(v)
            u = v
        if u == SINK:
            return path
        for w, idx in charged:
            self._iwrr[w].undo(idx, prompt_tokens)
        for v in reserved:
            self.kv[v].release(request_id)
        return None

    def schedule_increment(self, path: Sequence, tokens: int = 1) -> None:
        """A decode step of a routed request: add ``tokens / w`` to the loads along its path."""
        for u, v in zip(path, path[1:]):
            idx = next(k for k, (w, _) in enumerate(self._succ[u]) if w == v)
            self._iwrr[u].increment(idx, tokens)

    def finish(self, request_id: Hashable, path: Sequence) -> None:
        """Release the request's KV reservations (after its last decode)."""
        if self.kv is None:
            return
        for v in path:
            if v in self.kv and request_id in self.kv[v]._held:
                self.kv[v].release(request_id)
