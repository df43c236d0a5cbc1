"""AMPD's offline deployment planner: the usable reconstruction of Eq. (5) on HiGHS, and enumeration (spec §2.5).

The paper's ILP (5) minimises Z, "the maximum P95 latency among all workers", over the numbers of prefill and
decode workers of each model-parallel degree. As printed it is ill-posed (spec §2.5 [R]): nothing forces a
worker of each phase, constant per-degree latencies never reward more replicas (the optimum leaves GPUs
idle), the activation constraints need binaries, and Z mixes seconds of TTFT with tens of milliseconds of ITL.
The spec's usable form, implemented by :func:`plan_deployment`:

* a candidate per phase is ``(n, k)``: k replicas of TP degree n (every layout the paper reports is
  homogeneous per phase);
* ``τ̃_pre(n, k)`` = P95 TTFT / TTFT_thres of one prefill replica of degree n taking 1/k of the prefill load,
  ``τ̃_dec(n, k)`` = P95 ITL / ITL_thres of one decode replica taking 1/k of the sessions (dimensionless;
  ``inf`` = infeasible, e.g. the model does not fit on n GPUs or the replica is overloaded);
* binaries ``u_{n,k}``, ``v_{n,k}``; ``Σu = 1``, ``Σv = 1``; ``Σ n k (u + v) <= N``;
  ``Z >= Σ τ̃_pre u``, ``Z >= Σ τ̃_dec v``; minimise Z.

The costs are arguments (``cost(tp, replicas) -> float``, or a mapping whose keys are the candidates), so the
estimator is the caller's: the spec's analytic toy (:class:`~formulations.ampd.toy.ToyPlannerCosts`) or a
simulation of one replica at the target rate (phase 2). Each cost is evaluated once per candidate.

**Ranking** [R]. Many layouts share one Z (a dominant phase hides the other), so layouts are ranked
lexicographically by (Z, the sum of both phases' costs -- i.e. the non-binding phase's cost, lower is better,
GPUs used, then the order of ``(prefill tp, k, decode tp, k)``). The MILP reproduces this order exactly: each
layout is found by three HiGHS solves (min Z; min the cost sum with Z fixed; min an integer key of GPUs and
candidate order with both fixed), and the next one after a no-good cut ``u_a + v_b <= 1`` on every layout
already found. Objective values closer than :data:`TIE_TOLERANCE` count as equal.
:func:`enumerate_layouts` ranks every feasible pair by the same key without a solver: the cross-check.

:func:`plan_literal` solves Eq. (5) as printed (with one worker per phase at least, and the fewest GPUs among
its optima), for the regression of pitfall 7.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

import numpy as np

from gpusched.errors import ConfigError, InfeasibleError
from gpusched.solve import solve_highs_lp

__all__ = ["TP_DEGREES", "TIE_TOLERANCE", "Layout", "DeploymentPlan", "LiteralPlan", "plan_deployment",
           "enumerate_layouts", "plan_literal", "phase_candidates"]

TP_DEGREES = (1, 2, 4, 8)   # 𝒯 [P]
TIE_TOLERANCE = 1e-9        # relative: objective values closer than this are ties
PhaseCost = Union[Callable[[int, int], float], Mapping[tuple, float]]


@dataclass(frozen=True)
class Layout:
    """One deployment: ``prefill`` and ``decode`` = (TP degree, replicas); their SLO-normalised costs;
    ``objective`` = Z = max of the two."""

    prefill: tuple[int, int]
    decode: tuple[int, int]
    prefill_cost: float
    decode_cost: float

    @property
    def objective(self) -> float:
        return max(self.prefill_cost, self.decode_cost)

    @property
    def num_gpus(self) -> int:
        return self.prefill[0] * self.prefill[1] + self.decode[0] * self.decode[1]

    def rank_key(self) -> tuple:
        """The ranking order of the module docstring (objective, cost sum, GPUs, configs)."""
        return (self.objective, self.prefill_cost + self.decode_cost, self.num_gpus, self.prefill, self.decode)

    def __str__(self) -> str:
        return (f"P<{self.prefill[0]},{self.prefill[1]}> D<{self.decode[0]},{self.decode[1]}> "
                f"Z={self.objective:.6g}")


@dataclass
class DeploymentPlan:
    """The planner's answer.

    prefill, decode : the best layout's (TP degree, replicas) per phase.
    objective : its Z (dimensionless, SLO-normalised P95).
    alternatives : the ``top_k`` best layouts in rank order (``alternatives[0]`` is the plan).
    status : ``"optimal"`` when every solve was proven optimal, else ``"feasible"`` (a time limit hit).
    gap : the first solve's relative MIP gap (0 for enumeration).
    solve_time_s : wall time of all solves (or of the enumeration), excluding cost evaluation.
    cost_time_s : wall time spent evaluating the cost functions.
    cost_evaluations : calls made to the cost functions (one per candidate).
    num_candidates : (prefill, decode) candidates that are feasible and fit the budget.
    num_solves : HiGHS solves made (0 for enumeration).
    method : ``"milp"`` or ``"enumeration"``.
    """

    prefill: tuple[int, int]
    decode: tuple[int, int]
    objective: float
    alternatives: list[Layout]
    num_gpus: int
    status: str
    gap: float
    solve_time_s: float
    cost_time_s: float
    cost_evaluations: int
    num_candidates: tuple[int, int]
    num_solves: int
    method: str
    extra: dict = field(default_factory=dict)

    @property
    def best(self) -> Layout:
        return self.alternatives[0]


# ------------------------------------------------------------------------------------- candidates
def _check_budget(num_gpus) -> int:
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, np.integer)) or num_gpus < 2:
        raise ConfigError(f"num_gpus must be an int >= 2 (one prefill and one decode GPU at least), got {num_gpus!r}")
    return int(num_gpus)


def _check_degrees(tp_degrees) -> tuple[int, ...]:
    degrees = tuple(tp_degrees)
    if not degrees or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in degrees) \
            or len(set(degrees)) != len(degrees):
        raise ConfigError(f"tp_degrees must be distinct ints >= 1, got {tp_degrees!r}")
    return tuple(sorted(int(n) for n in degrees))


def _value(phase: str, tp: int, k: int, v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{phase} cost of (tp={tp}, replicas={k}) is {v!r}, not a number") from None
    if math.isnan(v) or v < 0:
        raise ConfigError(f"{phase} cost of (tp={tp}, replicas={k}) is {v!r}; costs are SLO-normalised P95 "
                          f"latencies >= 0 (math.inf marks an infeasible candidate)")
    return v


def phase_candidates(cost: PhaseCost, phase: str, max_gpus: int, tp_degrees: Sequence[int]
                     ) -> tuple[dict[tuple[int, int], float], int]:
    """``({(tp, k): cost}, evaluations)`` of one phase: every (n, k) with ``n * k <= max_gpus`` (for a
    mapping: its keys within the budget), infeasible (``inf``) ones left out."""
    if isinstance(cost, Mapping):
        keys = []
        for key in cost:
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(x, (int, np.integer)) and x >= 1
                                                                      for x in key)):
                raise ConfigError(f"{phase} cost table key {key!r} must be a (tp, replicas) pair of ints >= 1")
            keys.append((int(key[0]), int(key[1])))
        keys = sorted(k for k in keys if k[0] * k[1] <= max_gpus)
        get = lambda n, k: cost[(n, k)]  # noqa: E731
    elif callable(cost):
        keys = [(n, k) for n in tp_degrees for k in range(1, max_gpus // n + 1)]
        get = cost
    else:
        raise ConfigError(f"{phase} cost must be a callable (tp, replicas) -> float or a mapping "
                          f"{{(tp, replicas): float}}, got {type(cost).__name__}")
    out = {}
    for n, k in keys:
        v = _value(phase, n, k, get(n, k))
        if math.isfinite(v):
            out[(n, k)] = v
    return out, len(keys)


def _candidates(prefill_cost, decode_cost, num_gpus, tp_degrees):
    t0 = time.perf_counter()
    degrees = _check_degrees(tp_degrees)
    # a phase leaves at least the smallest degree's worth of GPUs to the other phase
    pre, n_pre = phase_candidates(prefill_cost, "prefill", num_gpus - degrees[0], degrees)
    dec, n_dec = phase_candidates(decode_cost, "decode", num_gpus - degrees[0], degrees)
    if not pre or not dec:
        empty = "prefill" if not pre else "decode"
        raise InfeasibleError(f"no feasible {empty} candidate within {num_gpus} GPUs and TP degrees {degrees}: "
                              f"every cost was inf; give more GPUs, other degrees, or check the cost function")
    return pre, dec, n_pre + n_dec, time.perf_counter() - t0


def _layouts_by_enumeration(pre, dec, num_gpus) -> list[Layout]:
    """Every feasible (prefill, decode) pair, ranked (vectorised: 10^5 pairs at 256 GPUs)."""
    pk, dk = list(pre), list(dec)
    pg = np.array([n * k for n, k in pk])
    dg = np.array([n * k for n, k in dk])
    pc = np.array([pre[c] for c in pk])
    dc = np.array([dec[c] for c in dk])
    i, j = np.nonzero(pg[:, None] + dg[None, :] <= num_gpus)
    if i.size == 0:
        raise InfeasibleError(f"no prefill and decode candidates fit together in {num_gpus} GPUs")
    z = np.maximum(pc[i], dc[j])
    # np.lexsort sorts by its last key first: objective, cost sum, GPUs, then candidate order
    order = np.lexsort((j, i, pg[i] + dg[j], pc[i] + dc[j], z))
    return [Layout(pk[a], dk[b], pre[pk[a]], dec[dk[b]]) for a, b in zip(i[order], j[order])]


def enumerate_layouts(prefill_cost: PhaseCost, decode_cost: PhaseCost, num_gpus: int,
                      tp_degrees: Sequence[int] = TP_DEGREES) -> list[Layout]:
    """Every feasible layout within ``num_gpus``, best first (ranking of the module docstring), by brute
    force: no solver involved."""
    num_gpus = _check_budget(num_gpus)
    pre, dec, _, _ = _candidates(prefill_cost, decode_cost, num_gpus, tp_degrees)
    return _layouts_by_enumeration(pre, dec, num_gpus)


# ------------------------------------------------------------------------------------------ MILP
class _PlannerMilp:
    """The one-hot MILP over columns ``[u (P) | v (D) | Z]`` with the lexicographic stages."""

    def __init__(self, pre, dec, num_gpus, time_limit_s, threads):
        self.pk, self.dk = sorted(pre), sorted(dec)   # candidate order = the rank key's tie order
        self.pc = np.array([pre[c] for c in self.pk])
        self.dc = np.array([dec[c] for c in self.dk])
        P, D = len(self.pk), len(self.dk)
        self.P, self.D, self.n = P, D, P + D + 1
        self.gpus = np.array([n * k for n, k in self.pk] + [n * k for n, k in self.dk], float)
        self.num_gpus = num_gpus
        self.time_limit_s, self.threads = time_limit_s, threads
        rows, rhs = [], []
        rows.append(np.concatenate([self.gpus, [0.0]]))                         # Σ n k (u + v) <= N
        rhs.append(num_gpus)
        rows.append(np.concatenate([self.pc, np.zeros(D), [-1.0]]))              # Σ τ̃_pre u - Z <= 0
        rhs.append(0.0)
        rows.append(np.concatenate([np.zeros(P), self.dc, [-1.0]]))              # Σ τ̃_dec v - Z <= 0
        rhs.append(0.0)
        self.base_ub, self.base_b = rows, rhs
        self.A_eq = np.array([np.concatenate([np.ones(P), np.zeros(D + 1)]),    # Σ u = 1
                              np.concatenate([np.zeros(P), np.ones(D), [0.0]])])  # Σ v = 1
        self.cuts: list[tuple[int, int]] = []
        self.solves, self.first_gap, self.all_optimal, self.time_s = 0, None, True, 0.0

    def _solve(self, c, extra_rows=(), extra_b=()):
        rows = self.base_ub + list(extra_rows)
        b = self.base_b + list(extra_b)
        for a, d in self.cuts:                                                 # no-good: not this pair again
            row = np.zeros(self.n)
            row[a], row[self.P + d] = 1.0, 1.0
            rows.append(row)
            b.append(1.0)
        integrality = np.r_[np.ones(self.P + self.D), 0]
        upper = np.r_[np.ones(self.P + self.D), np.inf]
        res = solve_highs_lp(c, A_ub=np.array(rows), b_ub=np.array(b), A_eq=self.A_eq, b_eq=np.ones(2),
                             bounds=(np.zeros(self.n), upper), integrality=integrality,
                             time_limit_s=self.time_limit_s, mip_gap=0.0, threads=self.threads)
        self.solves += 1
        self.time_s += res.solve_time_s
        self.all_optimal &= res.is_optimal
        if self.first_gap is None:
            self.first_gap = res.gap or 0.0
        return res

    def _chosen(self, res) -> tuple[int, int]:
        return int(np.argmax(res.x[:self.P])), int(np.argmax(res.x[self.P:self.P + self.D]))

    def next_layout(self) -> Layout:
        """The best layout not cut off yet (three stages), then cut it off.

        Each stage caps the previous stage's objective at the *chosen layout's exact* value (plus
        :data:`TIE_TOLERANCE`), not at the solver's reported value, which may sit below it by up to HiGHS's
        feasibility tolerance and would make the next stage infeasible.
        """
        P, D = self.P, self.D
        z_row = np.r_[np.zeros(P + D), 1.0]
        a, d = self._chosen(self._solve(z_row))
        z = max(self.pc[a], self.dc[d])
        z_cap = z + TIE_TOLERANCE * max(1.0, abs(z))
        sum_row = np.r_[self.pc, self.dc, 0.0]
        a, d = self._chosen(self._solve(sum_row, [z_row], [z_cap]))
        s = self.pc[a] + self.dc[d]
        s_cap = s + TIE_TOLERANCE * max(1.0, abs(s))
        # integer key: GPUs first, then candidate order (prefill before decode), all exact in a double
        key = np.r_[self.gpus[:P] * P * D + np.arange(P) * D, self.gpus[P:] * P * D + np.arange(D), 0.0]
        a, d = self._chosen(self._solve(key, [z_row, sum_row], [z_cap, s_cap]))
        self.cuts.append((a, d))
        return Layout(self.pk[a], self.dk[d], float(self.pc[a]), float(self.dc[d]))


def plan_deployment(prefill_cost: PhaseCost, decode_cost: PhaseCost, num_gpus: int,
                    tp_degrees: Sequence[int] = TP_DEGREES, top_k: int = 3, method: str = "milp",
                    time_limit_s: float = 60.0, threads: int | None = 1) -> DeploymentPlan:
    """Best homogeneous layout of ``num_gpus`` GPUs and the ``top_k`` best in rank order (module docstring).

    Args:
        prefill_cost, decode_cost: ``cost(tp, replicas) -> float`` (SLO-normalised P95; ``math.inf`` for an
            infeasible candidate), or a mapping ``{(tp, replicas): float}`` whose keys are the candidates.
        num_gpus: N, the GPU budget (layouts may use fewer).
        tp_degrees: 𝒯 for callable costs.
        top_k: number of ranked layouts to return (fewer if fewer exist).
        method: ``"milp"`` (HiGHS, the paper's approach) or ``"enumeration"`` (every pair, exact).
        time_limit_s: per HiGHS solve.
        threads: HiGHS threads.

    Raises:
        InfeasibleError: no candidate of a phase is feasible, or no pair fits the budget.
    """
    num_gpus = _check_budget(num_gpus)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an int >= 1, got {top_k!r}")
    if method not in ("milp", "enumeration"):
        raise ConfigError(f"method must be 'milp' or 'enumeration', got {method!r}")
    pre, dec, evaluations, cost_time = _candidates(prefill_cost, decode_cost, num_gpus, tp_degrees)
    t0 = time.perf_counter()
    if method == "enumeration":
        layouts = _layouts_by_enumeration(pre, dec, num_gpus)[:top_k]
        status, gap, solves, solve_time = "optimal", 0.0, 0, time.perf_counter() - t0
    else:
        if min(n * k for n, k in pre) + min(n * k for n, k in dec) > num_gpus:
            raise InfeasibleError(f"no prefill and decode candidates fit together in {num_gpus} GPUs")
        milp = _PlannerMilp(pre, dec, num_gpus, time_limit_s, threads)
        layouts = []
        for _ in range(min(top_k, len(pre) * len(dec))):
            try:
                layouts.append(milp.next_layout())
            except InfeasibleError:  # every fitting pair is cut off: fewer layouts than top_k exist
                if not layouts:
                    raise
                break
        status = "optimal" if milp.all_optimal else "feasible"
        gap, solves, solve_time = milp.first_gap or 0.0, milp.solves, time.perf_counter() - t0
    best = layouts[0]
    return DeploymentPlan(best.prefill, best.decode, best.objective, layouts, num_gpus, status, gap, solve_time,
                          cost_time, evaluations, (len(pre), len(dec)), solves, method)


# --------------------------------------------------------------------------------- literal Eq. (5)
@dataclass
class LiteralPlan:
    """Eq. (5) as printed: ``prefill``/``decode`` = {TP degree: workers}; ``objective`` = Z (the largest
    per-degree latency among the degrees in use); ``num_gpus_used``."""

    prefill: dict[int, int]
    decode: dict[int, int]
    objective: float
    num_gpus_used: int
    status: str
    solve_time_s: float


def plan_literal(tau_prefill: Mapping[int, float], tau_decode: Mapping[int, float], num_gpus: int,
                 time_limit_s: float = 60.0) -> LiteralPlan:
    """Eq. (5) with constant per-degree latencies ``τ_pre(n)``, ``τ_dec(n)`` (inf = infeasible degree): integer
    ``x^(n), y^(n) >= 0``, activation binaries ``a^(n) >= x^(n) / ⌊N/n⌋`` with ``Z >= τ_pre(n) a^(n)`` (C1)
    and likewise for decode (C2), ``Σ n (x + y) <= N`` (C3), plus ``Σx >= 1`` and ``Σy >= 1`` (spec fix 1).
    Among the optima the fewest GPUs are returned (a second solve; the printed model does not choose).

    It shows pitfall 7: the coefficients do not depend on the replica count, so the optimum never needs
    more than one worker per phase and leaves the rest of the budget idle.
    """
    num_gpus = _check_budget(num_gpus)
    pre = {int(n): _value("prefill", n, 1, t) for n, t in tau_prefill.items()}
    dec = {int(n): _value("decode", n, 1, t) for n, t in tau_decode.items()}
    pre = {n: t for n, t in pre.items() if math.isfinite(t) and 1 <= n <= num_gpus}
    dec = {n: t for n, t in dec.items() if math.isfinite(t) and 1 <= n <= num_gpus}
    if not pre or not dec:
        raise InfeasibleError(f"literal Eq. (5): no feasible {'prefill' if not pre else 'decode'} degree")
    # columns: x (P), y (D), a (P), b (D), Z
    pn, dn = sorted(pre), sorted(dec)
    P, D = len(pn), len(dn)
    ncol = 2 * (P + D) + 1
    z = ncol - 1
    rows, rhs = [], []

    def row(entries):
        r = np.zeros(ncol)
        for col, val in entries:
            r[col] += val
        return r

    rows.append(row([(i, pn[i]) for i in range(P)] + [(P + j, dn[j]) for j in range(D)]))   # (C3)
    rhs.append(num_gpus)
    for i, n in enumerate(pn):
        rows.append(row([(i, 1.0), (P + D + i, -(num_gpus // n))]))        # x <= ⌊N/n⌋ a
        rhs.append(0.0)
        rows.append(row([(P + D + i, pre[n]), (z, -1.0)]))                 # (C1)
        rhs.append(0.0)
    for j, n in enumerate(dn):
        rows.append(row([(P + j, 1.0), (2 * P + D + j, -(num_gpus // n))]))
        rhs.append(0.0)
        rows.append(row([(2 * P + D + j, dec[n]), (z, -1.0)]))             # (C2)
        rhs.append(0.0)
    rows.append(row([(i, -1.0) for i in range(P)]))                        # Σx >= 1
    rhs.append(-1.0)
    rows.append(row([(P + j, -1.0) for j in range(D)]))                    # Σy >= 1
    rhs.append(-1.0)
    upper = np.r_[[num_gpus // n for n in pn], [num_gpus // n for n in dn], np.ones(P + D), np.inf]
    integrality = np.r_[np.ones(2 * (P + D)), 0]
    common = dict(bounds=(np.zeros(ncol), upper), integrality=integrality, time_limit_s=time_limit_s,
                  mip_gap=0.0, threads=1)
    first = solve_highs_lp(np.eye(ncol)[z], A_ub=np.array(rows), b_ub=np.array(rhs), **common)
    cap = first.objective + TIE_TOLERANCE * max(1.0, abs(first.objective))
    gpus = np.r_[pn, dn, np.zeros(P + D + 1)]
    second = solve_highs_lp(gpus, A_ub=np.array(rows + [np.eye(ncol)[z]]), b_ub=np.array(rhs + [cap]), **common)
    x = np.rint(second.x).astype(int)
    prefill = {n: int(x[i]) for i, n in enumerate(pn) if x[i]}
    decode = {n: int(x[P + j]) for j, n in enumerate(dn) if x[P + j]}
    objective = max([pre[n] for n in prefill] + [dec[n] for n in decode])
    status = "optimal" if first.is_optimal and second.is_optimal else "feasible"
    return LiteralPlan(prefill, decode, objective, int(round(second.objective)), status,
                       first.solve_time_s + second.solve_time_s)
