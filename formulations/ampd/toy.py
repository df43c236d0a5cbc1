"""The spec's hand-checkable toy models (spec §6), as objects: tests and benchmarks use them, and a reader can
reproduce the T2/T3 numbers by hand from these few lines.

* :class:`ToyRoutingCosts` (T2): ``T_pre(h, m; TP) = (0.020 + 1e-4 m + 2e-8 m (h + m)) s(TP)`` with
  ``s(2) = 1.0, s(4) = 0.55, s(8) = 0.32``, and ``T_kv(l) = 0.001 + l · 327680 / 25e9`` (Llama-3.1-70B's KV
  bytes per token over 25 GB/s); workers are keyed by name and mapped to a TP degree.
* :class:`ToyPlannerCosts` (T3): 𝒯 = {1, 2, 4, 8}, TP1 infeasible, efficiency e = {2: 0.9, 4: 0.75, 8: 0.6}.
  A prefill replica (n, k) is an M/M/1 queue with service rate ``μ = n e(n) / 0.5`` per second and arrivals
  ``2.0 / k`` per second; its P95 sojourn time ``ln(20) / (μ - λ)`` over TTFT_thres = 1 s (``inf`` when
  ``μ <= λ``). A decode replica: ``1.2 (0.040 + 0.0004 · 120 / k) / (n e(n)) / 0.050``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Mapping

from gpusched.errors import ConfigError

__all__ = ["ToyRoutingCosts", "ToyPlannerCosts"]


@dataclass(frozen=True)
class ToyRoutingCosts:
    """T2's cost model; ``tp_of`` maps a worker key to its TP degree (2, 4 or 8)."""

    tp_of: Mapping[Hashable, int]
    speedup: Mapping[int, float] = field(default_factory=lambda: {2: 1.0, 4: 0.55, 8: 0.32})
    kv_bytes_per_token: float = 327680.0
    net_alpha_s: float = 0.001
    net_bandwidth_bytes_per_s: float = 25e9

    def prefill_time_s(self, hist_tokens: int, incr_tokens: int, worker: Hashable) -> float:
        tp = self.tp_of[worker]
        if tp not in self.speedup:
            raise ConfigError(f"ToyRoutingCosts: TP {tp} of worker {worker!r} has no speed-up; know {list(self.speedup)}")
        m, h = incr_tokens, hist_tokens
        return (0.020 + 1e-4 * m + 2e-8 * m * (h + m)) * self.speedup[tp]

    def kv_time_s(self, tokens: int, src: Hashable, dst: Hashable) -> float:
        return self.net_alpha_s + tokens * self.kv_bytes_per_token / self.net_bandwidth_bytes_per_s


@dataclass(frozen=True)
class ToyPlannerCosts:
    """T3's load-aware costs; :meth:`prefill` and :meth:`decode` are ``cost(tp, replicas)`` callables for
    :func:`~formulations.ampd.planner.plan_deployment`. The load knobs default to the spec's values."""

    efficiency: Mapping[int, float] = field(default_factory=lambda: {2: 0.9, 4: 0.75, 8: 0.6})
    prefill_rate_per_s: float = 2.0
    prefill_service_s: float = 0.5
    ttft_slo_s: float = 1.0
    decode_sessions: float = 120.0
    itl_slo_s: float = 0.050
    p95_quantile: float = 0.95

    def prefill(self, tp: int, replicas: int) -> float:
        """P95 TTFT / TTFT_thres of one of ``replicas`` M/M/1 prefill replicas of degree ``tp``."""
        e = self.efficiency.get(tp)
        if e is None:
            return math.inf  # the model does not fit (TP1) or the degree is unknown
        mu = tp * e / self.prefill_service_s
        lam = self.prefill_rate_per_s / replicas
        if mu <= lam:
            return math.inf
        return -math.log(1 - self.p95_quantile) / (mu - lam) / self.ttft_slo_s

    def decode(self, tp: int, replicas: int) -> float:
        """P95 ITL / ITL_thres of one of ``replicas`` decode replicas of degree ``tp``."""
        e = self.efficiency.get(tp)
        if e is None:
            return math.inf
        return 1.2 * (0.040 + 0.0004 * self.decode_sessions / replicas) / (tp * e) / self.itl_slo_s
