"""MC-SF and the paper's baselines on the discrete-time model (spec §1(c); every batch takes one round).

* :func:`mcsf` -- Memory-Constrained Shortest First: running requests stay; waiting requests sorted by
  predicted output (ties by id); the longest prefix that passes the future-feasibility check
  ``sum_{j in S} (s_j + t' - p_j) 1{õ_j >= t' - p_j} + sum_{i in U} (s_i + t' - t) 1{õ_i >= t' - t} <= M``
  for all ``t' > t``, checked at completion points only, starts now.
* :func:`mc_benchmark` -- the same check with waiting requests in FCFS order.
* :func:`alpha_greedy` -- alpha-protection greedy with a full memory reset on overflow.
* :func:`alpha_beta` -- alpha-protection beta-clearing.
"""
from __future__ import annotations

from .engine import run_batches
from .model import Instance, Schedule

__all__ = ["mcsf", "mc_benchmark", "alpha_greedy", "alpha_beta"]


def _run(instance: Instance, policy: str, name: str, **kw) -> Schedule:
    r = run_batches(instance.arrival, instance.prompt, instance.output, instance.predicted, instance.memory,
                    policy, **kw)
    return Schedule(instance, tuple(int(x) for x in r.start_time), name, r.resets, r.restarts)


def mcsf(instance: Instance) -> Schedule:
    """MC-SF's schedule of ``instance`` (uses ``instance.predicted`` for order and check, true ``o`` for
    completion). With ``õ >= o`` the schedule never exceeds ``M`` (spec P1); with under-predictions it may,
    and :meth:`Schedule.is_feasible` says so."""
    return _run(instance, "mcsf", "mcsf")


def mc_benchmark(instance: Instance) -> Schedule:
    """MC-Benchmark: MC-SF's future-feasibility check with FCFS order (arrival, then id)."""
    return _run(instance, "mc-benchmark", "mc-benchmark")


def alpha_greedy(instance: Instance, alpha: float = 0.25, batch_cap: int | None = None) -> Schedule:
    """Alpha-protection greedy: admit every waiting prompt FCFS (up to ``batch_cap`` jobs in the batch) when
    the current usage is ``<= (1 - alpha) M``; when a round's memory exceeds ``M``, every request of that round
    restarts from scratch. ``Schedule.resets`` counts the overflow events.

    Raises :class:`~gpusched.errors.InfeasibleError` if it livelocks (small alpha, small M)."""
    return _run(instance, "alpha-greedy", f"alpha-greedy({alpha:g})", alpha=alpha, batch_cap=batch_cap)


def alpha_beta(instance: Instance, alpha: float = 0.1, beta: float = 0.1, batch_cap: int | None = None,
               seed: int = 0) -> Schedule:
    """Alpha-protection beta-clearing: same admission as :func:`alpha_greedy`; on overflow each request of the
    round restarts independently with probability ``beta``, repeated until the memory fits."""
    return _run(instance, "alpha-beta", f"alpha-beta({alpha:g},{beta:g})", alpha=alpha, beta=beta,
                batch_cap=batch_cap, seed=seed)
