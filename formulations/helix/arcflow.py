"""Arc-flow ("layer hub") reformulation of the Helix placement MILP — a decomposition by layer boundary.

When every pair of nodes is linked and no link can bind (``c_uv >= min(max T_u, max T_v)``, source/sink
links ``>= max T``, as in the single-24, 42-node and 10-node artifact clusters), all nodes ending at layer
boundary ``p`` can pass tokens to all nodes starting at ``p``: boundary ``p`` acts as a hub. A placement
is then an assignment of nodes to arcs ``[s, s+k)`` of a path-of-hubs graph ``0 -> 1 -> ... -> L`` and its
max flow is the hub graph's max flow. Interchangeable nodes (same ``T`` table; see
:func:`~formulations.helix.milp.interchangeable_classes`) are aggregated per class ``c``:

    max  Σ_{c,k} y_{c,0,k}
    s.t. Σ_{s,k} z_{c,s,k} = n_c                           every node holds one range
         y_{c,s,k} <= T_c(k) z_{c,s,k}                     capacity of the replicas of [s, s+k)
         Σ_{s+k=p} y_{c,s,k} = Σ_k y_{c,p,k}   (p=1..L-1)  hub conservation
         z integer in [0, n_c], y >= 0

No big-M at all: the LP bound is at most ``UB = Σ max_k k T_i(k) / L`` (summing the layer cuts gives
``L F <= Σ k y <= Σ k T z``), whereas the per-node MILP's root bound is in the 1e4-1e5 range.

In general (slow or missing links, e.g. the geo cluster) the same model, built with singleton classes, is
a *relaxation* of the Helix MILP (any placement's flow aggregates onto the hubs), so its dual bound is a
valid upper bound, and its placement is a candidate whose true max flow is re-evaluated.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ._highs import ModelBuilder, solve as _solve
from .flow import flow_value_or_zero, max_flow
from .milp import interchangeable_classes
from .result import PlacementResult
from .problem import HelixProblem, Node, Placement


def links_never_bind(problem: HelixProblem) -> bool:
    """True if the hub model is exact: complete graph and no link (or source/sink link) can bind."""
    nodes = problem.nodes
    maxT = {i: max(problem.throughput[i]) for i in nodes}
    for i in nodes:
        for cap in (problem.source_capacity(i), problem.sink_capacity(i)):
            if cap is None or cap < maxT[i]:
                return False
    for a in range(len(nodes)):
        for b in range(a + 1, len(nodes)):
            u, v = nodes[a], nodes[b]
            c = problem.link_capacity(u, v)
            if c is None or c < min(maxT[u], maxT[v]):
                return False
    return True


def node_classes(problem: HelixProblem, aggregate: bool = True) -> list[list[Node]]:
    """Classes of the arc-flow model: interchangeable groups (or singletons with ``aggregate=False``)."""
    if not aggregate:
        return [[i] for i in problem.nodes]
    grouped = interchangeable_classes(problem)
    seen = {i for cl in grouped for i in cl}
    return grouped + [[i] for i in problem.nodes if i not in seen]


def solve_placement_arcflow(problem: HelixProblem, time_limit_s: float, warm_start: Placement | None = None,
                            *, aggregate: bool = True, coverage_rows: bool = True,
                            flow_cap_tokens_per_s: float | None = None, threads: int = 1, seed: int = 0) -> PlacementResult:
    """Solve the arc-flow model on HiGHS; return the placement with its *true* max flow as objective.

    ``upper_bound`` is the HiGHS dual bound (valid for the Helix MILP in every case, see module doc), capped
    by ``UB``; ``extra["exact"]`` says whether the hub model equals the Helix MILP on this problem.
    """
    t0 = time.perf_counter()
    L = problem.num_layers
    classes = node_classes(problem, aggregate)
    mb = ModelBuilder()
    z: dict[tuple[int, int, int], int] = {}
    y: dict[tuple[int, int, int], int] = {}
    for c, cl in enumerate(classes):
        tab = problem.throughput[cl[0]]
        for k in range(1, min(len(tab), L) + 1):
            for s in range(0, L - k + 1):
                z[(c, s, k)] = mb.var(0, len(cl), integer=True)
                y[(c, s, k)] = mb.var(0, math.inf, cost=1.0 if s == 0 else 0.0)
    for c, cl in enumerate(classes):
        mb.row([(col, 1.0) for (cc, s, k), col in z.items() if cc == c], len(cl), len(cl))
    # with a flow cap F_hi, every replica carries <= F_hi, so y <= min(T(k), F_hi) z: the model's optimum
    # is min(OPT, F_hi) and its LP sees that a thin slice of a fast node cannot carry a whole layer
    cap = math.inf if flow_cap_tokens_per_s is None else float(flow_cap_tokens_per_s)
    for key, col in y.items():
        c, s, k = key
        mb.row([(col, 1.0), (z[key], -min(cap, problem.throughput[classes[c][0]][k - 1]))], ub=0.0)
    if flow_cap_tokens_per_s is not None:
        mb.row([(col, 1.0) for (c, s, k), col in y.items() if s == 0], ub=cap)
    into: list[list[int]] = [[] for _ in range(L + 1)]
    outof: list[list[int]] = [[] for _ in range(L + 1)]
    for (c, s, k), col in y.items():
        into[s + k].append(col)
        outof[s].append(col)
    for p in range(1, L):
        mb.row([(col, 1.0) for col in into[p]] + [(col, -1.0) for col in outof[p]], 0.0, 0.0)
    if coverage_rows:
        # every layer is held by >= 1 node (valid whenever the flow is positive); this is what makes the
        # LP bound see that 24 nodes cannot all sit at their k = 1 sweet spot while covering 80 layers
        for l in range(L):
            mb.row([(col, 1.0) for (c, s, k), col in z.items() if s <= l < s + k], lb=1.0)
    start = None
    if warm_start is not None:
        start = np.zeros(mb.num_cols)
        wp = problem.validate_placement(warm_start, require_coverage=False)
        try:
            nf = max_flow(problem, wp).node_flows
        except Exception:  # uncovered layer: zero flow
            nf = {i: 0.0 for i in wp}
        for c, cl in enumerate(classes):
            for i in cl:
                s, e = wp[i]
                start[z[(c, s, e - s)]] += 1
                start[y[(c, s, e - s)]] += nf.get(i, 0.0)
        # a true max flow may be smaller than what the hub graph allows, but it is feasible for it only
        # if links never bind; otherwise drop the flows and let HiGHS repair from z alone.
        if not links_never_bind(problem):
            for col in y.values():
                start[col] = 0.0
    h = mb.load(maximize=True)
    budget = max(1e-3, time_limit_s - (time.perf_counter() - t0))
    out = _solve(h, time_limit_s=budget, threads=threads, seed=seed, start=start)
    placement: dict[Node, tuple[int, int]] = {}
    for c, cl in enumerate(classes):
        ranges = []
        for (cc, s, k), col in z.items():
            if cc == c:
                ranges += [(s, s + k)] * int(round(out.values[col]))
        ranges.sort()
        for i, r in zip(cl, ranges):
            placement[i] = r
    placement = {i: placement[i] for i in problem.nodes}
    objective = flow_value_or_zero(problem, placement)
    ub = max(min(out.dual_bound, problem.upper_bound_tokens_per_s()), objective)
    exact = links_never_bind(problem)
    status = out.status if exact else f"relaxation_{out.status}"
    return PlacementResult(placement, objective, ub, status, time.perf_counter() - t0,
                           (ub - objective) / ub if ub > 0 else 0.0, (mb.num_rows, mb.num_cols, mb.num_nonzeros),
                           out.objective, method="arcflow",
                           extra={"exact": exact, "dual_bound": out.dual_bound, "highs_gap": out.gap,
                                  "classes": len(classes)})
