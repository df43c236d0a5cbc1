"""The paper's policies and baselines, each a :class:`GateRoutePolicy` built from a fluid plan.

=========================  ==============  ============================  =========================  ===================
name                       plan            gate                          decode coupling            paper / spec
=========================  ==============  ============================  =========================  ===================
``gate-and-route``         static, M mixed occupancy index ``xi``        greedy router, one buffer  Sec. 4.1, §2.4 (GG-SP)
``prioritize-and-route``   static, M~      largest ``D/P`` first         greedy router              Sec. 4.2.1, §2.5
``sli-gate-and-route``     static, M       occupancy index ``xi``        randomised, split buffers  Sec. 5.1, §2.7
``fg-sp``                  static, M       FCFS (no gate)                greedy router              §2.8 "static planning alone"
``gi-wsp``                 none (shared)   occupancy index ``xi``        immediate                  §2.8 "gating alone"
``gf-wsp``                 none (shared)   occupancy index ``xi``        decoupled, prefill first   §2.8
``fi-wsp``                 none (shared)   FCFS (no gate)                immediate                  §2.8 (Sarathi-like)
=========================  ==============  ============================  =========================  ===================

Static planning (spec §2.4): ``M = ceil(n sum_i x_i*)`` GPUs are ``mixed`` -- [R] the first ``M`` indices,
the paper allows any ``M`` -- and the rest ``solo``. Without a partition every GPU is ``shared`` (spec §2.8
[R]: ``B`` generic slots, at most one prefill). Which plan to pass: the bundled optimum of (40) for every
policy except ``prioritize-and-route`` (the separate optimum of (42)) and ``sli-gate-and-route`` (an SLI-aware
optimum); the WSP baselines read ``x*`` and ``q_p*`` from it for their gate ([R]). ``fi-wsp`` reads no plan.
"""
from __future__ import annotations

from typing import Callable

from gpusched.errors import ConfigError, UnknownNameError

from .fluid import FluidSolution, mixed_gpu_count
from .gates import FcfsGate, OccupancyGate, PriorityGate
from .protocol import MIXED, SHARED, SOLO, GateRoutePolicy
from .routers import GreedyRouter, ImmediateRouter, RandomizedRouter

__all__ = ["static_plan", "gate_and_route", "prioritize_and_route", "sli_gate_and_route", "fg_sp", "gi_wsp",
           "gf_wsp", "fi_wsp", "make_policy", "POLICIES"]


def static_plan(mixed_fraction: float, num_gpus: int) -> tuple[str, ...]:
    """Roles of static planning: the first ``M = ceil(n X*)`` GPUs ``mixed``, the rest ``solo`` (spec §2.4)."""
    M = mixed_gpu_count(mixed_fraction, num_gpus)
    return (MIXED,) * M + (SOLO,) * (num_gpus - M)


def _occupancy_gate(solution: FluidSolution, num_gpus: int, admit_unplanned: bool) -> OccupancyGate:
    return OccupancyGate(solution.x, solution.q_prefill, num_gpus, admit_unplanned)


def _shared(num_gpus: int) -> tuple[str, ...]:
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 1:
        raise ConfigError(f"num_gpus = {num_gpus!r} must be an integer >= 1")
    return (SHARED,) * num_gpus


def gate_and_route(solution: FluidSolution, num_gpus: int, seed: int = 0,
                   admit_unplanned: bool = False) -> GateRoutePolicy:
    """Gate-and-Route (GG-SP): static planning, the occupancy gate, the greedy router (spec §2.4)."""
    return GateRoutePolicy("gate-and-route", static_plan(solution.mixed_fraction, num_gpus),
                           _occupancy_gate(solution, num_gpus, admit_unplanned), GreedyRouter((SOLO, MIXED), seed))


def prioritize_and_route(solution: FluidSolution, num_gpus: int, seed: int = 0) -> GateRoutePolicy:
    """Prioritize-and-Route: static planning from the separate optimum of (42), largest ``D/P`` first, the
    greedy router (spec §2.5)."""
    return GateRoutePolicy("prioritize-and-route", static_plan(solution.mixed_fraction, num_gpus),
                           PriorityGate.prioritize_and_route(solution.model), GreedyRouter((SOLO, MIXED), seed))


def sli_gate_and_route(solution: FluidSolution, num_gpus: int, seed: int = 0,
                       admit_unplanned: bool = False) -> GateRoutePolicy:
    """SLI-aware Gate-and-Route: static planning, the occupancy gate, the randomised router with
    ``p_s = solution.p_solo`` and split buffers (spec §2.7)."""
    return GateRoutePolicy("sli-gate-and-route", static_plan(solution.mixed_fraction, num_gpus),
                           _occupancy_gate(solution, num_gpus, admit_unplanned),
                           RandomizedRouter(solution.p_solo, seed))


def fg_sp(solution: FluidSolution, num_gpus: int, seed: int = 0) -> GateRoutePolicy:
    """FG-SP, static planning alone: the partition and the greedy router, FCFS admission (spec §2.8)."""
    return GateRoutePolicy("fg-sp", static_plan(solution.mixed_fraction, num_gpus), FcfsGate(),
                           GreedyRouter((SOLO, MIXED), seed))


def gi_wsp(solution: FluidSolution, num_gpus: int, seed: int = 0, admit_unplanned: bool = False) -> GateRoutePolicy:
    """GI-WSP, gating alone: shared GPUs, the occupancy gate on ``x*`` of (40), immediate decode (spec §2.8).
    ``seed`` is not used (the policy draws nothing)."""
    return GateRoutePolicy("gi-wsp", _shared(num_gpus), _occupancy_gate(solution, num_gpus, admit_unplanned),
                           ImmediateRouter())


def gf_wsp(solution: FluidSolution, num_gpus: int, seed: int = 0, admit_unplanned: bool = False) -> GateRoutePolicy:
    """GF-WSP: shared GPUs, the occupancy gate, decoupled decodes (a free shared slot uniformly at random, else
    one FCFS buffer) where a freed slot starts a prefill before it serves a buffered decode (spec §2.8)."""
    return GateRoutePolicy("gf-wsp", _shared(num_gpus), _occupancy_gate(solution, num_gpus, admit_unplanned),
                           GreedyRouter((SHARED,), seed), prefill_first=True)


def fi_wsp(solution: FluidSolution | None, num_gpus: int, seed: int = 0) -> GateRoutePolicy:
    """FI-WSP, the Sarathi-Serve-like baseline: shared GPUs, FCFS across classes, immediate decode (spec §2.8).
    ``solution`` and ``seed`` are not read (they keep the factories' signature uniform)."""
    return GateRoutePolicy("fi-wsp", _shared(num_gpus), FcfsGate(), ImmediateRouter())


POLICIES: dict[str, Callable[..., GateRoutePolicy]] = {
    "gate-and-route": gate_and_route,
    "prioritize-and-route": prioritize_and_route,
    "sli-gate-and-route": sli_gate_and_route,
    "fg-sp": fg_sp,
    "gi-wsp": gi_wsp,
    "gf-wsp": gf_wsp,
    "fi-wsp": fi_wsp,
}


def make_policy(name: str, solution: FluidSolution | None, num_gpus: int, **knobs) -> GateRoutePolicy:
    """The policy ``name`` (a key of :data:`POLICIES`) for ``num_gpus`` GPUs from ``solution``; ``knobs`` go to
    its factory (``seed``, ``admit_unplanned`` where it takes them)."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise UnknownNameError(f"unknown gate-and-route policy {name!r}; choose one of {sorted(POLICIES)}") from None
    if solution is None and name != "fi-wsp":
        raise ConfigError(f"policy {name!r} needs a fluid solution (solve_fluid)")
    try:
        return factory(solution, num_gpus, **knobs)
    except TypeError as err:
        raise ConfigError(f"policy {name!r} does not take the knobs {sorted(knobs)}: {err}") from None
