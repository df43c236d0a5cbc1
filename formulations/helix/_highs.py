"""A thin column/row builder over highspy's matrix API, and a solve that reads HiGHS's own status.

Kept separate so both placement models (:mod:`.milp`, :mod:`.arcflow`) share the status handling: a run
that stopped on the time limit is reported as ``"time_limit"`` even if its incumbent happens to be optimal.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import highspy
import numpy as np

from gpusched.errors import InfeasibleError, SolverError, SolverTimeoutError, UnboundedError
from gpusched.solve import new_highs, prepare_highs_threads


class ModelBuilder:
    """Accumulates columns and rows, then loads them into a ``highspy.Highs`` in one go."""

    def __init__(self) -> None:
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.cost: list[float] = []
        self.integer: list[bool] = []
        self.row_lb: list[float] = []
        self.row_ub: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def var(self, lb: float = 0.0, ub: float = highspy.kHighsInf, cost: float = 0.0, integer: bool = False) -> int:
        self.lb.append(lb)
        self.ub.append(ub)
        self.cost.append(cost)
        self.integer.append(integer)
        return len(self.lb) - 1

    def row(self, coefs: dict[int, float] | list[tuple[int, float]], lb: float = -highspy.kHighsInf,
            ub: float = highspy.kHighsInf) -> int:
        items = coefs.items() if isinstance(coefs, dict) else coefs
        merged: dict[int, float] = {}
        for j, a in items:
            merged[j] = merged.get(j, 0.0) + a
        self.starts.append(len(self.index))
        for j, a in merged.items():
            if a != 0.0:
                self.index.append(j)
                self.value.append(a)
        self.row_lb.append(lb)
        self.row_ub.append(ub)
        return len(self.row_lb) - 1

    @property
    def num_cols(self) -> int:
        return len(self.lb)

    @property
    def num_rows(self) -> int:
        return len(self.row_lb)

    @property
    def num_nonzeros(self) -> int:
        return len(self.index)

    def load(self, maximize: bool) -> highspy.Highs:
        h = new_highs()
        n = self.num_cols
        h.addVars(n, np.array(self.lb, dtype=np.float64), np.array(self.ub, dtype=np.float64))
        h.changeColsCost(n, np.arange(n, dtype=np.int32), np.array(self.cost, dtype=np.float64))
        ints = np.array([j for j, b in enumerate(self.integer) if b], dtype=np.int32)
        if len(ints):
            h.changeColsIntegrality(len(ints), ints,
                                    np.full(len(ints), highspy.HighsVarType.kInteger, dtype=np.uint8))
        if self.num_rows:
            h.addRows(self.num_rows, np.array(self.row_lb, dtype=np.float64),
                      np.array(self.row_ub, dtype=np.float64), len(self.index),
                      np.array(self.starts, dtype=np.int32), np.array(self.index, dtype=np.int32),
                      np.array(self.value, dtype=np.float64))
        h.changeObjectiveSense(highspy.ObjSense.kMaximize if maximize else highspy.ObjSense.kMinimize)
        return h


_STATUS = {
    highspy.HighsModelStatus.kOptimal: "optimal",
    highspy.HighsModelStatus.kTimeLimit: "time_limit",
    highspy.HighsModelStatus.kSolutionLimit: "solution_limit",
    highspy.HighsModelStatus.kIterationLimit: "iteration_limit",
    highspy.HighsModelStatus.kInterrupt: "interrupted",
    highspy.HighsModelStatus.kHighsInterrupt: "interrupted",
    highspy.HighsModelStatus.kObjectiveBound: "objective_bound",
    highspy.HighsModelStatus.kObjectiveTarget: "objective_target",
    highspy.HighsModelStatus.kMemoryLimit: "memory_limit",
}


@dataclass
class HighsOutcome:
    status: str  # "optimal", "time_limit", ... (HiGHS's own model status, never upgraded)
    values: np.ndarray
    objective: float
    dual_bound: float
    gap: float
    solve_time_s: float
    model_status_text: str


def solve(h: highspy.Highs, *, time_limit_s: float, threads: int = 1, seed: int = 0,
          start: np.ndarray | None = None, mip_rel_gap: float = 1e-6) -> HighsOutcome:
    """Run HiGHS with a time limit; raise typed errors when no incumbent exists."""
    if not time_limit_s > 0:
        raise SolverError(f"time_limit_s must be > 0, got {time_limit_s!r}")
    h.setOptionValue("time_limit", float(time_limit_s))
    prepare_highs_threads(int(threads))
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("random_seed", int(seed))
    h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
    if start is not None:
        idx = np.arange(len(start), dtype=np.int32)
        h.setSolution(len(start), idx, np.asarray(start, dtype=np.float64))
    t0 = time.perf_counter()
    h.run()
    elapsed = time.perf_counter() - t0
    ms = h.getModelStatus()
    text = h.modelStatusToString(ms)
    if ms == highspy.HighsModelStatus.kInfeasible:
        raise InfeasibleError(f"HiGHS: model infeasible ({text})")
    if ms in (highspy.HighsModelStatus.kUnbounded, highspy.HighsModelStatus.kUnboundedOrInfeasible):
        raise UnboundedError(f"HiGHS: {text}")
    info = h.getInfo()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    if ms not in _STATUS:
        raise SolverError(f"HiGHS stopped with model status {text!r}")
    if not has_sol:
        if ms == highspy.HighsModelStatus.kTimeLimit:
            raise SolverTimeoutError(f"HiGHS reached the {time_limit_s} s time limit without a feasible "
                                     f"placement; give a warm_start or more time")
        raise SolverError(f"HiGHS stopped ({text}) without a feasible solution")
    values = np.array(h.getSolution().col_value)
    return HighsOutcome(_STATUS[ms], values, float(info.objective_function_value), float(info.mip_dual_bound),
                        float(info.mip_gap), elapsed, text)


def run_feasibility(h: highspy.Highs, *, time_limit_s: float, threads: int = 1, seed: int = 0) -> str:
    """Run a feasibility model until its first integer point: ``"infeasible"``, ``"feasible"`` (a point is
    in ``h.getSolution()``) or ``"time_limit"`` (undecided). HiGHS's counters stay readable in ``h.getInfo()``."""
    h.setOptionValue("time_limit", float(time_limit_s))
    prepare_highs_threads(int(threads))
    h.setOptionValue("threads", int(threads))
    h.setOptionValue("random_seed", int(seed))
    h.setOptionValue("mip_rel_gap", 1.0)  # any integer point answers the question
    h.run()
    if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
        return "infeasible"
    return "feasible" if h.getInfo().primal_solution_status == 2 else "time_limit"
