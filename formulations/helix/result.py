"""The outcome of a Helix placement solve, shared by the MILP, the arc-flow model and the heuristics."""
from __future__ import annotations

from dataclasses import dataclass, field

from .problem import Node


@dataclass
class PlacementResult:
    """Outcome of a placement solve.

    ``placement`` ``{node: (start, end)}``; ``objective`` the incumbent's flow in tokens/s (re-evaluated with
    :func:`max_flow` on the solved graph); ``upper_bound`` the best proven bound in tokens/s (min of the
    solver's dual bound and ``UB = Σ max_k k T_i(k) / L``); ``gap = (upper_bound - objective) / upper_bound``;
    ``status`` HiGHS's own model status (``"optimal"`` only if HiGHS proved it; ``"time_limit"`` otherwise,
    ``"heuristic"`` for placements not from a solver); ``solve_time_s`` wall time of the solve; ``method``
    where the placement came from: ``"milp"`` (the solver's incumbent), ``"warm-start"`` (the solver's
    incumbent was invalid or worse than the warm start, which is returned instead; ``extra["kept_warm_start"]``
    says why), or the heuristic's name.
    """

    placement: dict[Node, tuple[int, int]]
    objective: float
    upper_bound: float
    status: str
    solve_time_s: float
    gap: float
    model_size: tuple[int, int, int] | None = None  # rows, cols, nonzeros
    solver_objective: float | None = None
    method: str = "milp"
    extra: dict = field(default_factory=dict)
    #: with ``solve_placement(..., prove=True)``: an :class:`~formulations.helix.optimality.OptimalityProof`
    #: of the incumbent (``proof.status == "optimal"`` certifies it within ``proof.epsilon_tokens_per_s``,
    #: even when ``status`` is HiGHS's ``"time_limit"``)
    proof: object | None = None
