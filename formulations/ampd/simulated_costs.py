"""The full deployment planner of AMPD (spec §2.5 [R]): coefficients from a latency estimator at a target rate.

:func:`~formulations.ampd.planner.plan_deployment` takes the SLO-normalised costs as arguments. This module makes
them from an *estimator* of one replica's P95 latency, as the spec's usable reconstruction asks:

* ``τ̃_pre(n, k) = P95 TTFT / TTFT_thres`` of ONE prefill replica of TP degree n that receives 1/k of the prefill
  load, i.e. sessions arriving at ``rate_per_s / k``;
* ``τ̃_dec(n, k) = P95 ITL / ITL_thres`` of ONE decode replica of degree n that receives 1/k of the sessions;
* ``inf`` when the model does not fit on n GPUs (``fits(n)`` is False; the estimator is then not called) or the
  estimator says so (e.g. a round larger than the replica's KV, or rounds left unfinished).

The estimator is a plain callable ``estimate(phase, tp, rate_per_s) -> seconds`` (``phase`` is ``"prefill"`` or
``"decode"``), so this module needs no engine: ``experiments/ampd_planner_sim.py`` passes one that simulates the
replica in the session engine (the paper's App. A.1 simulator), tests pass hand-made ones. Every (phase, n, k) is
estimated at most once per :class:`EstimatedCosts` (memoised), so a plan at N GPUs costs at most
``2 * Σ_n ⌊(N - min 𝒯) / n⌋`` estimates, and re-planning with the same object (another N, another ``top_k``)
reuses them.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

from gpusched.errors import ConfigError

from .planner import TP_DEGREES, DeploymentPlan, plan_deployment
from .tasks import Slo

__all__ = ["PHASES", "PhaseLatency", "EstimatedCosts", "plan_by_estimates"]

PHASES = ("prefill", "decode")
PhaseLatency = Callable[[str, int, float], float]   # (phase, TP degree, session rate 1/s) -> P95 latency, s


class EstimatedCosts:
    """Memoised SLO-normalised costs ``prefill(n, k)`` / ``decode(n, k)`` for :func:`plan_deployment`.

    Args:
        estimate: ``estimate(phase, tp, rate_per_s)`` -> P95 seconds (TTFT for ``"prefill"``, ITL for
            ``"decode"``) of one replica of degree ``tp`` receiving sessions at ``rate_per_s``; ``math.inf`` if
            infeasible.
        rate_per_s: the target session arrival rate of the whole deployment (1/s).
        slo: TTFT_thres and ITL_thres (seconds) that normalise the two phases (spec pitfall 7).
        fits: ``fits(tp) -> bool``: whether the model's weights fit on ``tp`` GPUs (spec §3.2); ``None``: all do.

    Attributes: ``table`` {(phase, n, k): cost}, ``latency_s`` {(phase, n, k): P95 seconds}, ``calls`` (estimator
    calls made), ``estimate_time_s`` (wall time inside the estimator).
    """

    def __init__(self, estimate: PhaseLatency, rate_per_s: float, slo: Slo,
                 fits: Callable[[int], bool] | None = None):
        if not callable(estimate):
            raise ConfigError(f"EstimatedCosts: estimate must be a callable (phase, tp, rate_per_s) -> seconds, "
                              f"got {type(estimate).__name__}")
        if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, (int, float)) or not math.isfinite(rate_per_s) \
                or rate_per_s <= 0:
            raise ConfigError(f"EstimatedCosts: rate_per_s must be a finite number > 0 sessions/s, got {rate_per_s!r}")
        if not isinstance(slo, Slo):
            raise ConfigError(f"EstimatedCosts: slo must be a formulations.ampd.Slo, got {type(slo).__name__}")
        self.estimate, self.rate_per_s, self.slo = estimate, float(rate_per_s), slo
        self.fits = fits if fits is not None else (lambda tp: True)
        self.table: dict[tuple[str, int, int], float] = {}
        self.latency_s: dict[tuple[str, int, int], float] = {}
        self.calls = 0
        self.estimate_time_s = 0.0

    def cost(self, phase: str, tp: int, replicas: int) -> float:
        """τ̃ of ``phase`` at (tp, replicas) (module docstring), estimated once."""
        if phase not in PHASES:
            raise ConfigError(f"EstimatedCosts: phase must be one of {PHASES}, got {phase!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ConfigError(f"EstimatedCosts: replicas must be an int >= 1, got {replicas!r}")
        key = (phase, int(tp), replicas)
        if key not in self.table:
            if not self.fits(tp):
                latency = math.inf
            else:
                t0 = time.perf_counter()
                latency = self.estimate(phase, int(tp), self.rate_per_s / replicas)
                self.estimate_time_s += time.perf_counter() - t0
                self.calls += 1
                latency = float(latency)
                if math.isnan(latency) or latency < 0:
                    raise ConfigError(f"EstimatedCosts: the estimator returned {latency!r} s for {phase} at "
                                      f"tp={tp}, replicas={replicas}; it must return a P95 latency >= 0 "
                                      f"(math.inf for infeasible)")
            thres = self.slo.ttft_s if phase == "prefill" else self.slo.itl_s
            self.latency_s[key] = latency
            self.table[key] = latency / thres
        return self.table[key]

    def prefill(self, tp: int, replicas: int) -> float:
        return self.cost("prefill", tp, replicas)

    def decode(self, tp: int, replicas: int) -> float:
        return self.cost("decode", tp, replicas)


def plan_by_estimates(estimate: PhaseLatency | EstimatedCosts, rate_per_s: float, num_gpus: int, slo: Slo,
                      tp_degrees: Sequence[int] = TP_DEGREES, fits: Callable[[int], bool] | None = None,
                      top_k: int = 3, method: str = "milp") -> DeploymentPlan:
    """Plan ``num_gpus`` GPUs for sessions at ``rate_per_s`` from P95 estimates (module docstring), then
    :func:`plan_deployment` on the normalised costs (``method`` ``"milp"`` on HiGHS or ``"enumeration"``).

    ``estimate`` may be an :class:`EstimatedCosts` (its memo is reused; ``rate_per_s``, ``slo`` and ``fits`` must
    then match it or be ``None`` for fits). The plan's ``extra`` holds ``costs`` (the memo table),
    ``latency_s``, ``estimator_calls`` (all calls of the memo so far) and ``estimate_time_s``; ``cost_time_s``
    is the wall time of this plan's cost evaluation (estimates included).
    """
    if isinstance(estimate, EstimatedCosts):
        costs = estimate
        if costs.rate_per_s != rate_per_s or costs.slo != slo:
            raise ConfigError(f"plan_by_estimates: the EstimatedCosts were made at rate {costs.rate_per_s} with "
                              f"{costs.slo}, not at {rate_per_s} with {slo}; make a new one")
    else:
        costs = EstimatedCosts(estimate, rate_per_s, slo, fits)
    plan = plan_deployment(costs.prefill, costs.decode, num_gpus, tp_degrees, top_k=top_k, method=method)
    plan.extra.update(costs=dict(costs.table), latency_s=dict(costs.latency_s), estimator_calls=costs.calls,
                      estimate_time_s=costs.estimate_time_s)
    return plan
