"""One way to solve the LP/MILP of every formulation.

:func:`solve` takes a ``pulp.LpProblem`` and solves it with HiGHS (through PuLP's highspy-backed
``pulp.HiGHS`` class) or CBC (``pulp.PULP_CBC_CMD``); :func:`solve_highs_lp` takes the matrices
directly (``min/max c @ x`` s.t. ``A_ub @ x <= b_ub``, ``A_eq @ x == b_eq``, bounds, integrality) for
formulations whose PuLP model would take longer to build than to solve. Both return a
:class:`SolveResult`.

Status semantics (why this module exists rather than ``problem.solve()``): PuLP 3.3 maps HiGHS's
``kTimeLimit`` / ``kIterationLimit`` / ``kInterrupt`` to ``LpStatusOptimal``. Here the real HiGHS model
status is read back from ``problem.solverModel`` so that a run stopped by the time limit with an
incumbent is reported as ``status="feasible"``, ``termination="time_limit"`` — never "optimal".

* ``"optimal"``: the solver proved optimality within its default tolerance (HiGHS ``mip_rel_gap`` 1e-4).
* ``"feasible"``: an incumbent exists but was not proven optimal (time limit, iteration limit, or a
  user ``mip_gap`` looser than the default that stopped the search early); ``gap`` says how far.
* No incumbent: :class:`~gpusched.errors.InfeasibleError`, :class:`~gpusched.errors.UnboundedError`,
  :class:`~gpusched.errors.SolverTimeoutError` (time limit hit with no feasible point) or
  :class:`~gpusched.errors.SolverError` (anything else), each carrying the solver's own status text.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pulp

from gpusched.errors import (
    ConfigError,
    InfeasibleError,
    SolverError,
    SolverTimeoutError,
    UnboundedError,
)

__all__ = ["SolveResult", "solve", "solve_highs_lp", "prepare_highs_threads", "new_highs", "silence_highs_banner",
           "SOLVERS"]

SOLVERS = ("highs", "cbc")
_HIGHS_DEFAULT_MIP_REL_GAP = 1e-4
_highs_threads_in_use: list = [None]  # thread count HiGHS's process-wide scheduler was last set up for


_highs_banner_done: list = [False]  # HiGHS prints its start-up banner once per process


def silence_highs_banner() -> None:
    """Use up HiGHS's start-up banner with the process's standard output (file descriptor 1, where the C
    library writes it) sent to /dev/null. highspy prints the banner when the first ``Highs`` object of a
    process is built, before any option can switch output off; after this call no later one prints it."""
    if _highs_banner_done[0]:
        return
    import os
    import sys

    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _highs_banner_done[0] = True


def new_highs(output: bool = False):
    """A ``highspy.Highs`` with its log on (``output``) or off, and the start-up banner silenced with it."""
    import highspy

    if not output:
        silence_highs_banner()
    h = highspy.Highs()
    h.setOptionValue("output_flag", bool(output))
    return h


def prepare_highs_threads(threads: int | None) -> None:
    """HiGHS keeps ONE thread scheduler per process: asking for a different ``threads`` than the one it
    was initialised with fails ("scheduler has already been initialized", model status 'Not Set').
    Reset it whenever the requested count changes."""
    if threads != _highs_threads_in_use[0]:
        import highspy

        highspy.Highs.resetGlobalScheduler(True)
        _highs_threads_in_use[0] = threads


@dataclass
class SolveResult:
    """Outcome of one solve.

    Attributes:
        status: ``"optimal"`` or ``"feasible"`` (see module docstring; failures raise instead).
        objective: objective value of the returned solution, in the problem's own sense and units
            (PuLP objective constants included).
        best_bound: proven bound on the optimum (dual bound of a MILP; equals ``objective`` for an LP
            solved to optimality); ``None`` when the solver does not report one (CBC).
        gap: relative gap ``|objective - best_bound| / max(|objective|, 1e-9)``; 0.0 for an optimal
            LP, ``None`` when no bound is known.
        solve_time_s: wall-clock seconds spent in the solver call (including handing the model over).
        values: variable name -> value.
        termination: why the solver stopped: ``"optimal"``, ``"time_limit"``, ``"iteration_limit"``,
            ``"gap_limit"``, ``"interrupt"``, ``"other"``.
        solver_status: the solver's own status text, e.g. ``"Time limit reached"``.
        solver: ``"highs"`` or ``"cbc"``.
        x: the solution as an array in column order (matrix API only), else ``None``.
    """

    status: str
    objective: float | None
    best_bound: float | None
    gap: float | None
    solve_time_s: float
    values: dict[str, float]
    termination: str = "optimal"
    solver_status: str = ""
    solver: str = "highs"
    x: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_optimal(self) -> bool:
        return self.status == "optimal"

    def value(self, name: str) -> float:
        """Value of one variable by name (KeyError naming it if absent)."""
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"no variable named {name!r} in the solution ({len(self.values)} variables)") from None


def _check_args(time_limit_s: float, mip_gap: float | None, threads: int | None) -> None:
    if not (isinstance(time_limit_s, (int, float)) and time_limit_s > 0 and math.isfinite(time_limit_s)):
        raise ConfigError(f"time_limit_s must be a finite number > 0, got {time_limit_s!r}")
    if mip_gap is not None and not (0 <= mip_gap < 1):
        raise ConfigError(f"mip_gap must be in [0, 1), got {mip_gap!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive int or None, got {threads!r}")


def _rel_gap(objective: float | None, bound: float | None) -> float | None:
    if objective is None or bound is None or not math.isfinite(bound):
        return None
    return abs(objective - bound) / max(abs(objective), 1e-9)


def _highs_outcome(h, is_mip: bool, sign: float, offset: float, mip_gap: float | None, where: str):
    """Read HiGHS's real status; raise on no incumbent. Returns (status, termination, text, obj, bound).

    ``sign`` is -1 when the original problem maximises but HiGHS was given the negated objective
    (PuLP does this); ``offset`` is a constant PuLP keeps out of the HiGHS model.
    """
    import highspy

    MS = highspy.HighsModelStatus
    ms = h.getModelStatus()
    if ms == MS.kUnboundedOrInfeasible:
        # Presolve could not tell which; rerun without it to get a definite answer.
        h.setOptionValue("presolve", "off")
        h.run()
        ms = h.getModelStatus()
    text = h.modelStatusToString(ms)
    info = h.getInfo()
    has_incumbent = info.primal_solution_status == 2  # kSolutionStatusFeasible
    msg = f"{where}: HiGHS status {text!r}"
    if ms == MS.kInfeasible or ms == MS.kUnboundedOrInfeasible:
        raise InfeasibleError(msg + " — no feasible solution; check constraints/bounds")
    if ms == MS.kUnbounded:
        raise UnboundedError(msg + " — objective unbounded; a bound or constraint is missing")
    if ms == MS.kOptimal:
        termination = "optimal"
    elif ms == MS.kTimeLimit:
        termination = "time_limit"
    elif ms == MS.kIterationLimit:
        termination = "iteration_limit"
    elif ms in (MS.kInterrupt, MS.kHighsInterrupt):
        termination = "interrupt"
    else:
        termination = "other"
    if not has_incumbent:
        if termination == "time_limit":
            raise SolverTimeoutError(msg + " with no feasible solution found; raise time_limit_s")
        raise SolverError(msg + " with no feasible solution")
    objective = sign * info.objective_function_value + offset
    if is_mip:
        bound = sign * info.mip_dual_bound + offset
    else:
        bound = objective if termination == "optimal" else None
    gap = _rel_gap(objective, bound)
    if termination == "optimal":
        if is_mip and mip_gap is not None and gap is not None and gap > _HIGHS_DEFAULT_MIP_REL_GAP + 1e-12:
            return "feasible", "gap_limit", text, objective, bound
        return "optimal", "optimal", text, objective, bound
    return "feasible", termination, text, objective, bound


def solve(
    problem: pulp.LpProblem,
    time_limit_s: float = 60.0,
    mip_gap: float | None = None,
    solver: str = "highs",
    threads: int | None = None,
    msg: bool = False,
) -> SolveResult:
    """Solve a PuLP problem; see the module docstring for status semantics.

    Args:
        problem: the model; its variables receive their values (``var.varValue``) as with ``problem.solve``.
        time_limit_s: wall-clock limit, seconds.
        mip_gap: relative MIP gap at which to stop (fraction, e.g. 0.01); ``None`` keeps the solver default.
        solver: ``"highs"`` (default) or ``"cbc"``.
        threads: maximum solver threads; ``None`` keeps the solver default.
        msg: show the solver log.
    """
    _check_args(time_limit_s, mip_gap, threads)
    name = solver.lower()
    if name not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    is_mip = any(v.cat == pulp.LpInteger for v in problem.variables())
    offset = float(problem.objective.constant) if problem.objective is not None else 0.0
    where = f"problem {problem.name!r}"
    t0 = time.perf_counter()
    if name == "highs":
        if not pulp.HiGHS().available():
            raise SolverError("HiGHS (highspy) is not available; install highspy or pass solver='cbc'")
        prepare_highs_threads(threads)
        if not msg:
            silence_highs_banner()
        s = pulp.HiGHS(msg=msg, timeLimit=time_limit_s, gapRel=mip_gap, threads=threads)
        problem.solve(s)
        elapsed = time.perf_counter() - t0
        sign = -1.0 if problem.sense == pulp.LpMaximize else 1.0
        status, term, text, obj, bound = _highs_outcome(problem.solverModel, is_mip, sign, offset, mip_gap, where)
        gap = _rel_gap(obj, bound)
        solver_name = "highs"
    else:
        s = pulp.PULP_CBC_CMD(msg=msg, timeLimit=time_limit_s, gapRel=mip_gap, threads=threads)
        if not s.available():
            raise SolverError("CBC (PULP_CBC_CMD) is not available in this PuLP install; use solver='highs'")
        problem.solve(s)
        elapsed = time.perf_counter() - t0
        st, sol = problem.status, problem.sol_status
        text = f"{pulp.LpStatus[st]} / {pulp.LpSolution[sol]}"
        if st == pulp.LpStatusInfeasible or sol == pulp.LpSolutionInfeasible:
            raise InfeasibleError(f"{where}: CBC status {text!r} — no feasible solution")
        if st == pulp.LpStatusUnbounded or sol == pulp.LpSolutionUnbounded:
            raise UnboundedError(f"{where}: CBC status {text!r} — objective unbounded")
        if sol == pulp.LpSolutionNoSolutionFound:
            if elapsed >= 0.95 * time_limit_s:
                raise SolverTimeoutError(f"{where}: CBC status {text!r} at the time limit; raise time_limit_s")
            raise SolverError(f"{where}: CBC status {text!r}")
        obj = pulp.value(problem.objective)
        obj = float(obj) if obj is not None else offset
        bound, gap = None, None
        if sol == pulp.LpSolutionOptimal:
            status, term = "optimal", "optimal"
            if not is_mip:
                bound, gap = obj, 0.0
        else:  # integer feasible: time limit or gap limit
            status = "feasible"
            term = "time_limit" if elapsed >= 0.95 * time_limit_s else "gap_limit"
        solver_name = "cbc"
    # "+ 0.0" turns the solver's -0.0 into 0.0
    # (PuLP adds a "__dummy" variable to constraint-free objectives; it is not the caller's)
    values = {v.name: (float(v.varValue) + 0.0 if v.varValue is not None else math.nan)
              for v in problem.variables() if v.name != "__dummy"}
    return SolveResult(status, obj, bound, gap, elapsed, values, term, text, solver_name)


def solve_highs_lp(
    c,
    A_ub=None,
    b_ub=None,
    A_eq=None,
    b_eq=None,
    bounds=(0.0, None),
    integrality=None,
    maximize: bool = False,
    time_limit_s: float = 60.0,
    mip_gap: float | None = None,
    threads: int | None = None,
    msg: bool = False,
    var_names=None,
) -> SolveResult:
    """Solve ``min`` (or ``max``) ``c @ x`` s.t. ``A_ub @ x <= b_ub``, ``A_eq @ x == b_eq``, bounds, via highspy.

    Args:
        c: (n,) objective coefficients.
        A_ub, A_eq: (m, n) dense arrays or scipy.sparse matrices, or ``None``.
        b_ub, b_eq: (m,) right-hand sides.
        bounds: ``(lo, hi)`` applied to every variable, or a pair of (n,) arrays; ``None`` means
            unbounded on that side. Default ``(0, None)`` as in ``scipy.optimize.linprog``.
        integrality: (n,) of 0 (continuous) / 1 (integer), or ``None`` for a pure LP.
        var_names: n names for :attr:`SolveResult.values`; default ``"x0"``, ``"x1"``, ...
        Other arguments as in :func:`solve`.

    Returns a :class:`SolveResult` with ``x`` set to the (n,) solution array.
    """
    import highspy
    import scipy.sparse as sp

    _check_args(time_limit_s, mip_gap, threads)
    c = np.asarray(c, dtype=float).ravel()
    n = c.size
    inf = highspy.kHighsInf

    def _bound_vec(b, default):
        if b is None:
            return np.full(n, default)
        arr = np.broadcast_to(np.asarray(b, dtype=float), (n,)).copy()
        return np.where(np.isnan(arr), default, arr)

    lo, hi = bounds
    lower = _bound_vec(lo, -inf)
    upper = _bound_vec(hi, inf)
    lower[np.isneginf(lower)] = -inf
    upper[np.isposinf(upper)] = inf

    blocks, row_lo, row_hi = [], [], []
    for A, b, eq, label in ((A_ub, b_ub, False, "A_ub"), (A_eq, b_eq, True, "A_eq")):
        if A is None:
            continue
        A = sp.csr_matrix(A, dtype=float)
        b = np.asarray(b, dtype=float).ravel()
        if A.shape[1] != n or A.shape[0] != b.size:
            raise ConfigError(f"{label} has shape {A.shape}, expected ({b.size}, {n}) to match b and c")
        blocks.append(A)
        row_hi.append(b)
        row_lo.append(b if eq else np.full(b.size, -inf))
    A = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, n))
    m = A.shape[0]

    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = m
    lp.col_cost_ = c
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = np.concatenate(row_lo) if row_lo else np.zeros(0)
    lp.row_upper_ = np.concatenate(row_hi) if row_hi else np.zeros(0)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = A.indptr.astype(np.int32)
    lp.a_matrix_.index_ = A.indices.astype(np.int32)
    lp.a_matrix_.value_ = A.data
    lp.a_matrix_.num_col_ = n
    lp.a_matrix_.num_row_ = m
    if maximize:
        lp.sense_ = highspy.ObjSense.kMaximize
    is_mip = False
    if integrality is not None:
        integ = np.asarray(integrality, dtype=int).ravel()
        if integ.size != n:
            raise ConfigError(f"integrality has {integ.size} entries, expected {n}")
        if integ.any():
            is_mip = True
            lp.integrality_ = [highspy.HighsVarType.kInteger if k else highspy.HighsVarType.kContinuous for k in integ]

    prepare_highs_threads(threads)
    h = new_highs(bool(msg))
    h.setOptionValue("time_limit", float(time_limit_s))
    if mip_gap is not None:
        h.setOptionValue("mip_rel_gap", float(mip_gap))
    if threads is not None:
        h.setOptionValue("threads", int(threads))
    t0 = time.perf_counter()
    h.passModel(lp)
    h.run()
    # sense is native here (no negation, no offset)
    status, term, text, obj, bound = _highs_outcome(h, is_mip, 1.0, 0.0, mip_gap, "matrix model")
    elapsed = time.perf_counter() - t0
    x = np.asarray(h.getSolution().col_value, dtype=float) + 0.0
    names = list(var_names) if var_names is not None else [f"x{i}" for i in range(n)]
    if len(names) != n:
        raise ConfigError(f"var_names has {len(names)} names, expected {n}")
    values = dict(zip(names, x.tolist()))
    return SolveResult(status, obj, bound, _rel_gap(obj, bound), elapsed, values, term, text, "highs", x)
