"""The hindsight problem of :mod:`.hindsight` as a constraint program (OR-Tools CP-SAT): a second exact solver.

Same problem, different model. A request started at round ``p`` holds ``s + (t - p)`` tokens in rounds
``t = p+1 .. p+o``; that ramp is a stack of ``o`` fixed-size intervals tied to ``p``: one of height
``s + 1`` over rounds ``p+1 .. p+o`` and one of height 1 over rounds ``p+j .. p+o`` for ``j = 2..o``. At
round ``p + d`` exactly the first ``d`` are active, ``s + 1 + (d - 1) = s + d`` tokens, so one cumulative
constraint of capacity ``M`` over all the stacks is the memory rows (3) of the IP, and the objective is (1).

Why a second model: the IP's LP relaxation lets a request split across start rounds and so smears its ramp
(the separation rows of :mod:`.bounds` repair part of that); CP-SAT reasons on the ramps directly
(timetabling, energetic reasoning) and, given a minute on two workers, its search found schedules better than
MC-SF's on every paper-size instance tried, where HiGHS only returned the warm start. Its own bound is weak,
so the lower bound of :mod:`.bounds` is added as a constraint on the objective (valid: every schedule meets it).

Added constraints, all valid (no optimum is cut off):

* the horizon of :mod:`.hindsight` (start ``<= a_i + U - sum o`` given a schedule of total latency ``U``);
* identical requests (same ``a, s, o``) start in index order (they are interchangeable);
* total latency ``>=`` :func:`.bounds.latency_lower_bound`;
* (``separation``) for every family ``(B, d)`` of :func:`.bounds.separation_families`, the intervals
  ``[p_i, p_i + d_i)``, ``i`` in ``B``, do not overlap.

Determinism: with one worker CP-SAT is deterministic for a fixed seed; with several the incumbent found
within a time limit can vary from run to run (a proven optimum's value never does).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gpusched.errors import SolverError

from .bounds import latency_lower_bound, separation_families
from .model import Instance, Schedule, identical_classes

__all__ = ["CpSatOutcome", "solve_hindsight_cpsat"]


@dataclass(frozen=True)
class CpSatOutcome:
    """Raw result of :func:`solve_hindsight_cpsat`: ``start`` is ``None`` when no schedule was found."""

    start: tuple[int, ...] | None
    termination: str  # "optimal", "time_limit" or "infeasible"
    best_bound: float
    solve_time_s: float
    n_vars: int
    n_intervals: int


def _hint_in_class_order(instance: Instance, start) -> list[int]:
    """``start`` with each class of identical requests' starts sorted, to satisfy the symmetry constraint."""
    cls = identical_classes(instance)[1]
    hint = list(start)
    for c in range(cls.max() + 1 if cls.size else 0):
        members = np.flatnonzero(cls == c)
        for i, p in zip(members, sorted(start[i] for i in members)):
            hint[i] = p
    return hint


def solve_hindsight_cpsat(instance: Instance, time_limit_s: float, workers: int | None = None,
                          warm: Schedule | None = None, upper_bound: int | None = None,
                          seed: int = 0, msg: bool = False, separation: bool = True) -> CpSatOutcome:
    """Minimise total latency with CP-SAT (see the module docstring).

    Args:
        instance: the requests (true output lengths).
        time_limit_s: wall-clock limit, seconds.
        workers: CP-SAT search workers (``None``: CP-SAT's default, all cores).
        warm: a feasible schedule given as a hint.
        upper_bound: total latency of a feasible schedule, to tighten the start windows.
        seed: CP-SAT's random seed.
        msg: print CP-SAT's search log.
        separation: add the no-overlap constraints of the separation families (see the module docstring).
    """
    from ortools.sat.python import cp_model

    a, s, o, M = instance.arrival, instance.prompt, instance.output, instance.memory
    m = cp_model.CpModel()
    horizon = instance.serial_horizon()  # spec horizon T = max a + sum o; completion <= T
    slack = None if upper_bound is None else int(upper_bound) - sum(o)
    starts, layers, heights = [], [], []
    for i in range(instance.n):
        hi = horizon - o[i] if slack is None else min(horizon - o[i], a[i] + slack)
        p = m.new_int_var(a[i], max(hi, a[i]), f"p{i}")
        starts.append(p)
        for j in range(1, o[i] + 1):  # layer j covers rounds p+j .. p+o: interval [p+j, p+o+1)
            layers.append(m.new_fixed_size_interval_var(p + j, o[i] - j + 1, f"layer{i}_{j}"))
            heights.append(s[i] + 1 if j == 1 else 1)
    m.add_cumulative(layers, heights, M)
    if separation:
        for f, (members, sep) in enumerate(separation_families(instance)):
            m.add_no_overlap([m.new_fixed_size_interval_var(starts[i], int(d), f"sep{f}_{i}")
                              for i, d in zip(members, sep)])
    cls = identical_classes(instance)[1]
    for c in range(cls.max() + 1 if cls.size else 0):  # identical requests start in index order
        members = np.flatnonzero(cls == c)
        for i, j in zip(members, members[1:]):
            m.add(starts[i] <= starts[j])
    total_latency = sum(starts) + (sum(o) - sum(a))
    m.add(total_latency >= latency_lower_bound(instance))
    m.minimize(total_latency)
    if warm is not None:
        for p, value in zip(starts, _hint_in_class_order(instance, warm.start)):
            m.add_hint(p, value)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.random_seed = int(seed)
    solver.parameters.log_search_progress = bool(msg)
    if workers is not None:
        solver.parameters.num_workers = int(workers)
    t0 = time.perf_counter()
    status = solver.solve(m)
    elapsed = time.perf_counter() - t0
    if status == cp_model.MODEL_INVALID:
        raise SolverError(f"CP-SAT rejected the hindsight model: {m.validate()}; report this instance")
    if status == cp_model.INFEASIBLE:
        return CpSatOutcome(None, "infeasible", float("inf"), elapsed, instance.n, len(layers))
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    start = tuple(int(solver.value(p)) for p in starts) if found else None
    term = "optimal" if status == cp_model.OPTIMAL else "time_limit"
    return CpSatOutcome(start, term, float(solver.best_objective_bound), elapsed, instance.n, len(layers))
