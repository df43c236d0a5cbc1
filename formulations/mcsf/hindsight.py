"""The hindsight-optimal integer program, eqs. (1)-(4) of the spec (§1(b)).

``x[i,k] = 1`` iff request ``i`` starts at round ``k``::

    min  sum_i ( sum_k k x[i,k] + o_i - a_i )                                              (1)
    s.t. sum_k x[i,k] = 1                                    for every i                   (2)
         sum_i sum_{k = max(a_i, t - o_i)}^{t-1} (s_i + t - k) x[i,k] <= M       for every t (3)
         x binary                                                                          (4)

Horizon tightening (valid, so the optimum is the optimum of the spec's IP): given a feasible schedule with
total latency ``U`` (MC-SF's by default), every optimal schedule has total waiting ``sum_i (p_i - a_i) <=
U - sum_i o_i =: W``, so each request's start lies in ``[a_i, min(a_i + W, T - o_i)]`` with the spec's
``T = max a + sum o``.
Rows (3) that cannot bind (sum over requests of their largest coefficient in the row ``<= M``) are dropped.
Valid inequalities (``separation=True``, default): the starts of each separation family of :mod:`.bounds` are
pairwise at least ``d_i`` apart, one clique row per round; they cut off no schedule and lift the root LP bound
from 64-80 % to 79-96 % of MC-SF's total latency on the synthetic instances.
The incumbent is handed to HiGHS as a starting solution. The objective is an integer, so the run stops at an
absolute gap below 1 (``mip_abs_gap = 1 - 1e-6``, ``mip_rel_gap = 0``): "optimal" means proven optimal.

Two builders: ``backend="highspy"`` (column-wise arrays into ``highspy.Highs`` directly, the default: see
``experiments/bench_mcsf.py`` for the measurement) and ``backend="pulp"`` (a ``pulp.LpProblem`` solved by
:func:`gpusched.solve.solve`). ``solver="cp-sat"`` solves the same problem as a constraint program instead
(:mod:`.cpsat`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from gpusched.errors import ConfigError, InfeasibleError, SolverError, SolverTimeoutError, UnboundedError
from gpusched.solve import new_highs, prepare_highs_threads

from .bounds import latency_lower_bound, separation_families
from .cpsat import solve_hindsight_cpsat
from .model import InfeasibleScheduleError, Instance, Schedule, check_schedule, identical_classes
from .online import mcsf

__all__ = ["SOLVERS", "HindsightArrays", "HindsightResult", "hindsight_optimal", "build_hindsight_arrays",
           "highs_model", "mcsf_warm_start"]

SOLVERS = ("highs", "cp-sat", "cp-sat+highs")  # see hindsight_optimal


@dataclass
class HindsightResult:
    """Outcome of :func:`hindsight_optimal`.

    Attributes:
        schedule: the best schedule found (checked against the model).
        objective: its total end-to-end latency (rounds).
        status: ``"optimal"`` (proven) or ``"feasible"`` (stopped by the time limit; see ``gap``).
        best_bound: proven lower bound on the optimum: the larger of the solver's and
            :func:`.bounds.latency_lower_bound` (equal to ``objective`` when optimal).
        gap: ``(objective - best_bound) / objective`` (0 when optimal).
        solve_time_s: seconds in the solver; build_time_s: seconds building the model.
        termination: ``"optimal"``, ``"time_limit"``, ... (the solver's reason to stop).
        n_vars, n_rows, n_nonzeros: model size after tightening (CP-SAT: start variables, 1 cumulative
            constraint, its layer intervals).
        incumbent_objective: total latency of the warm-start schedule (``None`` if none was given).
        backend: ``"highspy"``, ``"pulp"``, ``"cp-sat"`` or ``"cp-sat+highs"``.
    """

    schedule: Schedule
    objective: int
    status: str
    best_bound: float
    gap: float
    solve_time_s: float
    build_time_s: float
    termination: str
    n_vars: int
    n_rows: int
    n_nonzeros: int
    incumbent_objective: int | None
    backend: str

    @property
    def is_optimal(self) -> bool:
        return self.status == "optimal"


class HindsightArrays(NamedTuple):
    """The IP as arrays (see :func:`build_hindsight_arrays`).

    Columns ``j`` are ``(col_req[j], col_start[j])`` with cost ``cost[j]``; the inequality rows ``A x <= row_upper``
    are a CSC matrix (``indptr``, ``rows``, ``vals``): first the memory rows (3), named ``mem_<round>``, then the
    separation rows, named ``sep<family>_<round>``; ``row_names`` has one name per row. ``offset = sum_i (o_i -
    a_i)`` is the constant of (1); ``count[r]`` is the right-hand side of (2) for row ``r`` of (2).
    """

    col_req: np.ndarray
    col_start: np.ndarray
    cost: np.ndarray
    indptr: np.ndarray
    rows: np.ndarray
    vals: np.ndarray
    row_upper: np.ndarray
    row_names: list
    offset: int
    count: np.ndarray


def build_hindsight_arrays(instance: Instance, upper_bound: int | None = None, aggregate: bool = False,
                           separation_rows: bool = True) -> HindsightArrays:
    """The IP's columns and inequality rows.

    With ``aggregate``, ``i`` ranges over classes of identical requests (:func:`identical_classes`) and the
    column is the *number* of the class's requests that start at ``k`` (integer, at most the class size).
    With ``separation_rows``, for every family ``(B, d)`` of :func:`.bounds.separation_families` and round
    ``t``, ``sum_{i in B} sum_{t - d_i < k <= t} x[i,k] <= 1`` (the starts of a family are at least ``d_i``
    apart; valid for every schedule, see :mod:`.bounds`; in the aggregated model a class lies wholly inside
    or outside ``B``, so the row also bounds the count of its members). Rows that cannot bind are dropped.
    """
    offset = int((np.asarray(instance.output, dtype=np.int64) - np.asarray(instance.arrival, dtype=np.int64)).sum())
    if aggregate:
        first, cls = identical_classes(instance)
        count = np.bincount(cls)
    else:
        first, cls, count = np.arange(instance.n), np.arange(instance.n), np.ones(instance.n, dtype=np.int64)
    a = np.asarray(instance.arrival, dtype=np.int64)[first]
    s = np.asarray(instance.prompt, dtype=np.int64)[first]
    o = np.asarray(instance.output, dtype=np.int64)[first]
    n = first.size
    T = instance.serial_horizon()
    last = T - o  # spec horizon: start <= T (we also need completion <= T for a serial schedule to exist)
    if upper_bound is not None:
        slack = int(upper_bound) - int(o.sum())
        if slack < 0:
            raise ConfigError(f"upper_bound {upper_bound} is below sum(o) = {int(o.sum())}, no schedule can meet it")
        last = np.minimum(last, a + slack)
    last = np.maximum(last, a)
    width = last - a + 1
    col_req = np.repeat(np.arange(n), width)
    col_start = np.concatenate([np.arange(a[i], last[i] + 1) for i in range(n)]) if n else np.zeros(0, np.int64)

    # memory rows: column (i, k) touches rounds k+1 .. k+o_i with coefficients s_i+1 .. s_i+o_i
    # row blocks: (entries' columns, entries' rounds, values, rounds whose row is kept, row name, right-hand side)
    cols, age = _expand(o[col_req])
    age += 1  # 1..o within each column
    rounds = col_start[cols] + age
    horizon = int(rounds.max()) + 2 if col_req.size else 2
    # a round's row cannot bind if the requests' largest coefficients there (s_i + min(o_i, t - a_i)) sum to <= M
    cap = np.zeros(horizon, dtype=np.int64)
    for i in range(n):
        ts = np.arange(a[i] + 1, last[i] + o[i] + 1)
        cap[ts] += count[i] * (s[i] + np.minimum(o[i], ts - a[i]))
    blocks = [(cols, rounds, (s[col_req[cols]] + age).astype(float), np.flatnonzero(cap > instance.memory),
               "mem_{}", float(instance.memory))]

    if separation_rows:
        for f, (members, sep) in enumerate(separation_families(instance)):
            sep_of = np.zeros(n, dtype=np.int64)
            sep_of[cls[members]] = sep  # a class is wholly in or out of the family
            cols, offset_in = _expand(sep_of[col_req])  # column (i, k) is in rows k .. k+d_i-1
            members_at = np.zeros(horizon, dtype=np.int64)  # most starts a row could count
            for i in np.flatnonzero(sep_of):
                members_at[a[i]:last[i] + sep_of[i]] += count[i]
            blocks.append((cols, col_start[cols] + offset_in, np.ones(cols.size), np.flatnonzero(members_at > 1),
                           f"sep{f}_{{}}", 1.0))

    # number the kept rows block after block; drop the entries of the others
    col_parts, row_parts, val_parts, names, upper, base = [], [], [], [], [], 0
    for cols, rounds, vals, keep_rounds, name, rhs in blocks:
        remap = np.full(horizon, -1, dtype=np.int64)
        remap[keep_rounds] = base + np.arange(keep_rounds.size)
        r = remap[rounds]
        ok = r >= 0
        col_parts.append(cols[ok])
        row_parts.append(r[ok])
        val_parts.append(vals[ok])
        names += [name.format(t) for t in keep_rounds]
        upper.append(np.full(keep_rounds.size, rhs))
        base += keep_rounds.size
    cols, rows, vals = (np.concatenate(x) for x in (col_parts, row_parts, val_parts))
    order = np.lexsort((rows, cols))  # CSC: by column, then row
    indptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=col_req.size))])
    return HindsightArrays(col_req, col_start, col_start.astype(float), indptr, rows[order], vals[order],
                           np.concatenate(upper), names, offset, count)


def _expand(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For columns with ``lengths[j]`` entries each: the column of every entry and its 0-based position in it."""
    cols = np.repeat(np.arange(lengths.size), lengths)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return cols, np.arange(cols.size) - first[cols]


def request_rows(instance: Instance, aggregate_identical: bool) -> np.ndarray:
    """The row of (2) of every request: its class of identical requests (:func:`identical_classes`) in the
    aggregated model, else its own."""
    return identical_classes(instance)[1] if aggregate_identical else np.arange(instance.n)


def starts_from_counts(instance: Instance, rows: np.ndarray, col_row, col_start, counts,
                       error: type[Exception] = SolverError, advice: str = "") -> tuple[int, ...]:
    """Start of every request from integer column values: column ``j`` starts ``counts[j]`` requests of row
    ``col_row[j]`` (:func:`request_rows`) at round ``col_start[j]``. Raises ``error`` (message ending in
    ``advice``) if a row is started a number of times other than its size."""
    col_row, col_start, counts = (np.asarray(v, dtype=np.int64) for v in (col_row, col_start, counts))
    start = [-1] * instance.n
    for i in range(int(rows.max()) + 1 if rows.size else 0):
        reqs = np.flatnonzero(rows == i)
        on_row = col_row == i
        starts = np.sort(np.repeat(col_start[on_row], counts[on_row]))
        if starts.size != reqs.size:
            raise error(f"class {i} (requests {reqs.tolist()}) is started {starts.size} times in the solution, "
                        f"not {reqs.size}{advice}")
        for j, k in zip(reqs, starts):  # identical requests: any assignment of the starts is the same schedule
            start[j] = int(k)
    return tuple(start)


def highs_model(arrays: HindsightArrays, integer: bool = True):
    """The IP of ``arrays`` as a ``highspy.HighsLp``: the inequality rows, then one row (2) per request (or
    class); columns integer unless ``integer=False`` (the LP relaxation)."""
    import highspy

    col_req, _, cost, mp, mr, mv, row_upper, _, offset, count = arrays
    n = count.size
    ncol = col_req.size
    nmem = row_upper.size
    # one-start rows (2) appended below the inequality rows: column j has one entry in row nmem + col_req[j]
    cnt = np.diff(mp)
    indptr = np.concatenate([[0], np.cumsum(cnt + 1)])
    idx = np.empty(indptr[-1], dtype=np.int32)
    val = np.empty(indptr[-1], dtype=np.float64)
    pos_mem = np.repeat(indptr[:-1], cnt) + (np.arange(mp[-1]) - np.repeat(mp[:-1], cnt))
    idx[pos_mem] = mr
    val[pos_mem] = mv
    idx[indptr[1:] - 1] = nmem + col_req
    val[indptr[1:] - 1] = 1.0
    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = nmem + n
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(ncol)
    lp.col_upper_ = count[col_req].astype(float)
    lp.row_lower_ = np.concatenate([np.full(nmem, -highspy.kHighsInf), count.astype(float)])
    lp.row_upper_ = np.concatenate([row_upper, count.astype(float)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = indptr.astype(np.int32)
    lp.a_matrix_.index_ = idx
    lp.a_matrix_.value_ = val
    lp.a_matrix_.num_col_ = ncol
    lp.a_matrix_.num_row_ = nmem + n
    kind = highspy.HighsVarType.kInteger if integer else highspy.HighsVarType.kContinuous
    lp.integrality_ = [kind] * ncol
    lp.offset_ = float(offset)
    return lp


def _solve_highspy(instance, arrays, time_limit_s, threads, msg, warm, warm_rows):
    import highspy

    col_req, count = arrays.col_req, arrays.count
    n = count.size
    ncol = col_req.size
    lp = highs_model(arrays)
    h = new_highs(bool(msg))
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1.0 - 1e-6)  # integer objective: a gap below 1 proves optimality
    # Presolve removes nothing from these models (measured: "Not reduced") but at the paper's size (~1M
    # nonzeros) it took 35-56 s of a 60 s limit, leaving no time for the root LP; off, the root bound is
    # reached in ~13 s. Mid-size instances prove as fast or faster without it.
    h.setOptionValue("presolve", "off")
    prepare_highs_threads(threads)
    if threads is not None:
        h.setOptionValue("threads", int(threads))
    h.passModel(lp)
    x0 = None
    if warm is not None:
        x0 = np.zeros(ncol)
        # column of (row i, start p): columns of row i are contiguous, starting at i's arrival
        first = np.concatenate([[0], np.cumsum(np.bincount(col_req, minlength=n))[:-1]])
        row_of = np.asarray(warm_rows)
        np.add.at(x0, first[row_of] + (np.asarray(warm.start) - np.asarray(instance.arrival)), 1.0)
        h.setSolution(ncol, np.arange(ncol, dtype=np.int32), x0)
    t0 = time.perf_counter()
    h.run()
    elapsed = time.perf_counter() - t0
    MS = highspy.HighsModelStatus
    ms = h.getModelStatus()
    text = h.modelStatusToString(ms)
    info = h.getInfo()
    if ms == MS.kInfeasible:
        raise InfeasibleError(f"hindsight IP: HiGHS says {text!r}; the instance admits no schedule within the horizon")
    if ms in (MS.kUnbounded, MS.kUnboundedOrInfeasible):
        raise UnboundedError(f"hindsight IP: HiGHS says {text!r}")
    has_sol = info.primal_solution_status == 2
    term = {MS.kOptimal: "optimal", MS.kTimeLimit: "time_limit", MS.kIterationLimit: "iteration_limit",
            MS.kInterrupt: "interrupt"}.get(ms, "other")
    if not has_sol and warm is not None:  # stopped (e.g. in presolve) before HiGHS adopted the warm start
        bound = float(info.mip_dual_bound) if math.isfinite(info.mip_dual_bound) else -math.inf
        return x0, term, bound, elapsed
    if not has_sol:
        if term == "time_limit":
            raise SolverTimeoutError(f"hindsight IP: {time_limit_s} s time limit hit with no feasible schedule; "
                                     f"pass a warm start or more time")
        raise SolverError(f"hindsight IP: HiGHS stopped with {text!r} and no solution")
    x = np.asarray(h.getSolution().col_value)
    bound = float(info.mip_dual_bound)
    return x, term, bound, elapsed


def _solve_pulp(instance, arrays, time_limit_s, threads, msg, warm):
    import pulp

    from gpusched.solve import solve

    col_req, col_start, cost, mp, mr, mv, row_upper, row_names, offset, count = arrays
    ncol = col_req.size
    prob = pulp.LpProblem("mcsf_hindsight", pulp.LpMinimize)
    xs = [prob.add_variable(f"x_{int(col_req[j])}_{int(col_start[j])}", lowBound=0,
                            upBound=int(count[col_req[j]]), cat="Integer") for j in range(ncol)]
    prob += pulp.LpAffineExpression(zip(xs, cost.tolist()), constant=float(offset))
    by_req: dict[int, list] = {}
    for j in range(ncol):
        by_req.setdefault(int(col_req[j]), []).append(xs[j])
    for i, v in by_req.items():
        prob += pulp.lpSum(v) == int(count[i]), f"one_start_{i}"
    rows: list[list] = [[] for _ in range(row_upper.size)]
    for j in range(ncol):
        for q in range(mp[j], mp[j + 1]):
            rows[mr[q]].append((xs[j], float(mv[q])))
    for terms, rhs, name in zip(rows, row_upper, row_names):
        prob += pulp.LpAffineExpression(terms) <= float(rhs), name
    res = solve(prob, time_limit_s=time_limit_s, threads=threads, msg=msg)
    x = np.array([res.values[v.name] for v in xs])
    bound = res.best_bound if res.best_bound is not None else -math.inf
    if res.status == "optimal":
        term = "optimal"
    else:
        term = res.termination
    return x, term, float(bound), res.solve_time_s


def mcsf_warm_start(instance: Instance) -> Schedule:
    """MC-SF's schedule of ``instance`` with exact predictions (``õ = o``): the default warm start and upper
    bound of the hindsight problem.

    The hindsight problem is full-information: it schedules the true outputs ``o``. MC-SF run with the
    instance's own predictions ``õ`` is a schedule for *those*; when some ``õ_i < o_i`` it may hold more
    than ``M`` tokens under the true outputs (spec P1 guarantees feasibility only for ``õ >= o``), and its
    latency is then no upper bound. With ``õ = o`` P1 applies, so this schedule is feasible
    (:func:`.model.check_schedule` confirms it) and its total latency bounds the optimum.
    """
    exact = instance if instance.predicted_output is None else replace(instance, predicted_output=None)
    return mcsf(exact)


def hindsight_optimal(instance: Instance, time_limit_s: float = 60.0, solver: str = "highs",
                      backend: str = "highspy", threads: int | None = None, warm_start: Schedule | None | str = "mcsf",
                      msg: bool = False, aggregate_identical: bool = True, separation: bool = True) -> HindsightResult:
    """Solve the hindsight IP (1)-(4) for ``instance``; the minimum total end-to-end latency.

    ``aggregate_identical`` (default on) solves an exact reformulation: requests with the same
    ``(a_i, s_i, o_i)`` are interchangeable, so their binaries ``x[i,k]`` are replaced by one integer
    ``y[c,k] = sum_{i in c} x[i,k]`` per class ``c`` with ``sum_k y[c,k] = |c|``. Every schedule maps to a
    ``y`` with the same objective and memory use and back, so the optimum is the same; the model loses the
    permutation symmetry that makes the branch-and-bound re-prove the same subtrees (the synthetic
    instances draw 40-60 outputs from 30-50 values, so many requests coincide). ``False`` builds the
    spec's binary model as written.

    Args:
        instance: the requests (true output lengths are used: full information).
        time_limit_s: solver wall-clock limit, seconds. A run stopped by it is reported ``"feasible"``.
        solver: ``"highs"`` (the IP above, default), ``"cp-sat"`` (the same problem as a constraint
            program on OR-Tools CP-SAT, :mod:`.cpsat`: weaker bounds, much better schedules on the
            paper-size instances; ``backend`` and ``aggregate_identical`` do not apply to it) or
            ``"cp-sat+highs"`` (CP-SAT for half the time limit, then the IP warm-started from its schedule
            for the rest: the better schedule and the stronger bound of the two; the times add up).
        backend: ``"highspy"`` (matrix API, default) or ``"pulp"``.
        threads: solver threads (``None``: the solver's default).
        warm_start: a feasible schedule to tighten the horizon and seed the search, ``"mcsf"`` (default:
            :func:`mcsf_warm_start`, MC-SF's schedule with exact predictions, which is feasible whatever
            ``instance.predicted_output`` says) or ``None`` (spec horizon ``T = max a + sum o``, no seed).
            A given schedule that breaks the model raises
            :class:`~formulations.mcsf.model.InfeasibleScheduleError` naming the violation.

    An empty instance (no requests) returns at once: objective 0, proven optimal.
        msg: print the solver log.
        aggregate_identical: solve the class-aggregated model (see above).
        separation: add the separation inequalities of :mod:`.bounds` (IP: clique rows over each family's
            start windows; CP-SAT: a no-overlap constraint over its separation intervals). Valid for every
            schedule, so the optimum is unchanged; they lift the IP's root LP bound from 64-80 % to
            79-96 % of MC-SF's total latency on the synthetic instances. ``False``: the spec's model alone.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"solver {solver!r} is not supported; use one of {SOLVERS}")
    if backend not in ("highspy", "pulp"):
        raise ConfigError(f"backend must be 'highspy' or 'pulp', got {backend!r}")
    if not (time_limit_s > 0 and math.isfinite(time_limit_s)):
        raise ConfigError(f"time_limit_s must be a finite number > 0, got {time_limit_s!r}")
    t0 = time.perf_counter()
    if instance.n == 0:
        return HindsightResult(Schedule(instance, (), "hindsight"), 0, "optimal", 0.0, 0.0, 0.0,
                               time.perf_counter() - t0, "optimal", 0, 0, 0, None, backend)
    warm = mcsf_warm_start(instance) if isinstance(warm_start, str) and warm_start == "mcsf" else warm_start
    if isinstance(warm, str) or not (warm is None or isinstance(warm, Schedule)):
        raise ConfigError(f"warm_start must be a Schedule, 'mcsf' or None, got {warm_start!r}")
    ub = None
    if warm is not None:
        try:
            ub = check_schedule(instance, warm.start)
        except InfeasibleScheduleError as e:
            raise InfeasibleScheduleError(f"warm_start: {e}; pass a feasible schedule, 'mcsf' or None") from None
    if solver == "cp-sat":
        return _hindsight_cpsat(instance, time_limit_s, threads, msg, warm, ub, time.perf_counter() - t0,
                                separation)
    if solver == "cp-sat+highs":
        return _hindsight_portfolio(instance, time_limit_s, threads, msg, warm, aggregate_identical, separation)
    arrays = build_hindsight_arrays(instance, ub, aggregate=aggregate_identical, separation_rows=separation)
    rows = request_rows(instance, aggregate_identical)
    build_s = time.perf_counter() - t0
    col_req, col_start = arrays.col_req, arrays.col_start
    if backend == "highspy":
        x, term, bound, elapsed = _solve_highspy(instance, arrays, time_limit_s, threads, msg, warm, rows)
    else:
        t1 = time.perf_counter()
        x, term, bound, elapsed = _solve_pulp(instance, arrays, time_limit_s, threads, msg, warm)
        elapsed = time.perf_counter() - t1  # PuLP's model building happens here too
    start = starts_from_counts(instance, rows, col_req, col_start, np.rint(x).astype(np.int64).clip(min=0),
                               advice="; report this instance")
    # HiGHS-direct runs use an absolute gap < 1, so its "optimal" is exact; via PuLP the default relative gap
    # applies, so optimality is only claimed when the bound proves it (in _result).
    size = (int(col_req.size), int(arrays.row_upper.size + arrays.count.size), int(arrays.indptr[-1] + col_req.size))
    return _result(instance, start, term == "optimal" and backend == "highspy", bound, elapsed, build_s, term,
                   size, warm, ub, backend)


def _hindsight_cpsat(instance, time_limit_s, threads, msg, warm, ub, build_s, separation) -> HindsightResult:
    out = solve_hindsight_cpsat(instance, time_limit_s, workers=threads, warm=warm, upper_bound=ub, msg=msg,
                                separation=separation)
    if out.termination == "infeasible":
        raise InfeasibleError("hindsight model (CP-SAT): no schedule within the horizon")
    if out.start is None and warm is None:
        raise SolverTimeoutError(f"hindsight model (CP-SAT): {time_limit_s} s time limit hit with no feasible "
                                 f"schedule; pass a warm start or more time")
    start = out.start if out.start is not None else tuple(warm.start)
    return _result(instance, start, out.termination == "optimal", out.best_bound, out.solve_time_s, build_s,
                   out.termination, (out.n_vars, 1, out.n_intervals), warm, ub, "cp-sat")


def _hindsight_portfolio(instance, time_limit_s, threads, msg, warm, aggregate_identical, separation) -> HindsightResult:
    cp = hindsight_optimal(instance, time_limit_s / 2, "cp-sat", threads=threads, warm_start=warm, msg=msg,
                           separation=separation)
    if cp.is_optimal:
        return cp
    ip = hindsight_optimal(instance, time_limit_s / 2, "highs", threads=threads, warm_start=cp.schedule, msg=msg,
                           aggregate_identical=aggregate_identical, separation=separation)
    best = ip if ip.objective <= cp.objective else cp
    return _result(instance, best.schedule.start, ip.is_optimal, max(cp.best_bound, ip.best_bound),
                   cp.solve_time_s + ip.solve_time_s, cp.build_time_s + ip.build_time_s, ip.termination,
                   (ip.n_vars, ip.n_rows, ip.n_nonzeros), None, cp.incumbent_objective, "cp-sat+highs")


def _result(instance, start, solver_proved, bound, elapsed, build_s, term, size, warm, incumbent,
            backend) -> HindsightResult:
    """The result for schedule ``start`` (or ``warm``, whose total latency is ``incumbent``, if that is
    better: never return worse than the incumbent). Optimal if the solver proved it or the bound, raised
    to the combinatorial one, is within 1 of the objective (integer objective)."""
    obj = check_schedule(instance, start)
    if warm is not None and incumbent < obj:
        start, obj = tuple(warm.start), incumbent
    bound = max(bound, latency_lower_bound(instance))  # the solver's bound is -inf if it stopped in its root LP
    proven = solver_proved or obj - bound < 1.0 - 1e-9
    status = "optimal" if proven else "feasible"
    bound_eff = float(obj) if status == "optimal" else bound
    gap = 0.0 if status == "optimal" else (obj - bound) / max(obj, 1)
    return HindsightResult(Schedule(instance, start, "hindsight"), int(obj), status, bound_eff, float(gap),
                           float(elapsed), float(build_s), term, *size, incumbent, backend)
