"""Helix placement MILP (spec §1.b (ii), ``ilp_layout.py``) on HiGHS, with optional strengthening.

Variables (per node ``i``): ``s_i`` integer start layer, ``b_ik`` binary "holds exactly k layers"; per arc
``(u, v)`` of ``A`` (two arcs per undirected compute link, one per source/sink link): ``f_uv >= 0`` flow,
``d_uv`` binary "arc enabled" (its layer ranges chain). Objective ``max Σ f_Si``. Rows, in the paper's order:

* ``Σ_k b_ik = 1``; ``e_i = s_i + Σ_k k b_ik <= L``; conservation; ``inflow_i <= Σ_k T_i(k) b_ik``  (4 n rows)
* ``s_i <= L (1 - d_Si)`` per source arc; ``L d_iT <= e_i`` per sink arc
* ``L d_ij <= L + (s_j - e_i)`` and ``L d_ij <= L - (s_j - e_i)`` per compute arc
* ``f_uv <= c_uv d_uv`` per arc

With ``remove_redundant=True`` as in every AE run, and no partial inference, this reproduces Gurobi's model
size exactly (24 nodes, complete graph: 1,848 rows x 1,376 columns x 13,960 nonzeros; see
:func:`build_placement_model`). Unlimited capacities use the big-M ``Σ_i max_k T_i(k)``.

Strengthening (each optional, each measured by ``experiments.bench_helix_placement``):

* ``valid_cut``: ``L Σ_i f_Si <= Σ_i Σ_k k T_i(k) b_ik`` (spec §1.f-6): every token crosses every layer,
  and node ``i`` can push at most ``T_i(k)`` tokens/s through each of its ``k`` layers.
* ``tight_big_m``: ``f_uv <= min(c_uv, max_k T_u(k), max_k T_v(k)) d_uv`` (a flow never exceeds the node
  capacities at its ends) and ``f_uv <= Σ_k T_u(k) b_uk`` style bounds through the node rows already there.
* ``symmetry_breaking``: ``s_i <= s_j`` for interchangeable nodes ``i < j`` (same ``T`` table, same source,
  sink and link capacities to every other node); valid because permuting their ranges keeps the flow.
* ``prove``: certify the incumbent with :func:`~formulations.helix.optimality.prove_optimal` (the
  layer-cover bound of :mod:`.coverbound`, then a feasibility MILP); HiGHS's own bound on this model
  closes too slowly for that (10-node instance: 286.587 vs a bound of ~364 after 60 s).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np

from gpusched.errors import ConfigError, SolverTimeoutError

from ._highs import ModelBuilder, solve as _solve
from .flow import SINK, SOURCE, max_flow
from .heuristics import heuristic_placement
from .optimality import prove_optimal
from .problem import HelixProblem, Node, Placement, _sort_key
from .result import PlacementResult


# ------------------------------------------------------------------------------------------ pruning
def prune_links(problem: HelixProblem, top_k: int) -> HelixProblem:
    """Keep, for the source, the sink and every compute node, its ``top_k`` fastest links (spec §1.c-2).

    A compute link is kept if either endpoint keeps it; a source/sink link if the source/sink keeps it.
    Ties in capacity prefer the neighbour that sorts last (this puts the 42-node cluster's source and sink
    on nodes 30-41, as in the artifact; the artifact's compute-link tie-break is not reproduced exactly).
    Unlimited source/sink links (``None``) are left unlimited.
    """
    if top_k < 1:
        raise ConfigError(f"prune_top_k must be >= 1, got {top_k!r}")

    def top(cands: list[tuple[Node, float]]) -> set:
        cands = sorted(cands, key=lambda x: (x[1], _sort_key(x[0])), reverse=True)
        return {w for w, _ in cands[:top_k]}

    src, snk = problem.source_links, problem.sink_links
    if src is not None:
        keep = top(list(src.items()))
        src = {v: c for v, c in src.items() if v in keep}
    if snk is not None:
        keep = top(list(snk.items()))
        snk = {v: c for v, c in snk.items() if v in keep}
    nbrs: dict[Node, list[tuple[Node, float]]] = {i: [] for i in problem.nodes}
    for (u, v), c in problem.links.items():
        nbrs[u].append((v, c))
        nbrs[v].append((u, c))
    kept = {i: top(nbrs[i]) for i in problem.nodes}
    links = {(u, v): c for (u, v), c in problem.links.items() if v in kept[u] or u in kept[v]}
    return HelixProblem(problem.num_layers, dict(problem.throughput), links, src, snk,
                        link_latency_s=problem.link_latency_s, node_types=problem.node_types)


def interchangeable_classes(problem: HelixProblem) -> list[list[Node]]:
    """Groups of nodes that can swap layer ranges without changing any flow (same T table and same
    capacities to the source, the sink and every third node). Singletons are omitted."""
    nodes = problem.nodes

    def signature(i):
        return (problem.throughput[i], problem.source_capacity(i), problem.sink_capacity(i))

    groups: dict = {}
    for i in nodes:
        groups.setdefault(signature(i), []).append(i)
    out = []
    for g in groups.values():
        # refine: i, j interchangeable iff cap(i, w) == cap(j, w) for every w not in {i, j}
        classes: list[list[Node]] = []
        for i in g:
            for cl in classes:
                j = cl[0]
                if all(problem.link_capacity(i, w) == problem.link_capacity(j, w) for w in nodes if w not in (i, j)):
                    cl.append(i)
                    break
            else:
                classes.append([i])
        out.extend(cl for cl in classes if len(cl) > 1)
    return out


# ------------------------------------------------------------------------------------------ model
@dataclass
class PlacementModel:
    """A built (not yet solved) placement MILP, with the column indices needed to read/write solutions."""

    problem: HelixProblem
    builder: ModelBuilder
    s: dict[Node, int]
    b: dict[Node, list[int]]
    f: dict[tuple, int]
    d: dict[tuple, int]
    arcs: dict[tuple, float]

    @property
    def size(self) -> tuple[int, int, int]:
        """``(rows, columns, nonzeros)``."""
        return self.builder.num_rows, self.builder.num_cols, self.builder.num_nonzeros

    def start_vector(self, placement: Placement) -> np.ndarray:
        """A complete feasible point for ``placement``: ``s``, ``b``, ``d`` of its chaining arcs and the
        max-flow ``f`` on this model's arcs (so HiGHS gets a full incumbent, not just ``s``/``b``)."""
        p = self.problem.validate_placement(placement, require_coverage=False)
        x = np.zeros(self.builder.num_cols)
        L = self.problem.num_layers
        for i, (s, e) in p.items():
            x[self.s[i]] = s
            x[self.b[i][e - s - 1]] = 1.0
        for (u, v), col in self.d.items():
            if u == SOURCE:
                ok = p[v][0] == 0
            elif v == SINK:
                ok = p[u][1] == L
            else:
                ok = p[u][1] == p[v][0]
            x[col] = 1.0 if ok else 0.0
        try:
            fr = max_flow(self.problem, p)
        except ConfigError:  # a layer uncovered: zero flow is still feasible
            return x
        for a, val in fr.arc_flows.items():
            if a in self.f:
                x[self.f[a]] = val  # OR-Tools' flows conserve exactly (scaled integers)
        return x

    def placement_from(self, x: np.ndarray) -> dict[Node, tuple[int, int]]:
        out = {}
        for i in self.problem.nodes:
            s = int(round(x[self.s[i]]))
            k = 1 + int(np.argmax([x[c] for c in self.b[i]]))
            out[i] = (s, s + k)
        return out


def build_placement_model(problem: HelixProblem, *, valid_cut: bool = False, tight_big_m: bool = False,
                          symmetry_breaking: bool = False) -> PlacementModel:
    """Build the MILP of spec §1.b (ii) (``remove_redundant=True``, no partial inference)."""
    L = problem.num_layers
    nodes = problem.nodes
    big = sum(max(t) for t in problem.throughput.values())
    maxT = {i: max(problem.throughput[i]) for i in nodes}
    # the arc set A, in Gurobi's order: source arcs, sink arcs, compute arcs (both directions)
    arcs: dict[tuple, float] = {}
    for i in nodes:
        c = problem.source_capacity(i)
        if c is not None:
            arcs[(SOURCE, i)] = c
    for i in nodes:
        c = problem.sink_capacity(i)
        if c is not None:
            arcs[(i, SINK)] = c
    for (u, v), c in problem.links.items():
        arcs[(u, v)] = c
        arcs[(v, u)] = c

    mb = ModelBuilder()
    s = {i: mb.var(0, L - 1, integer=True) for i in nodes}
    b = {i: [mb.var(0, 1, integer=True) for _ in problem.throughput[i]] for i in nodes}
    f = {a: mb.var(0, highspy.kHighsInf, cost=1.0 if a[0] == SOURCE else 0.0) for a in arcs}
    d = {a: mb.var(0, 1, integer=True) for a in arcs}
    inn: dict[Node, list[int]] = {i: [] for i in nodes}
    out: dict[Node, list[int]] = {i: [] for i in nodes}
    for (u, v), col in f.items():
        if v != SINK:
            inn[v].append(col)
        if u != SOURCE:
            out[u].append(col)

    def e_terms(i, sign=1.0):
        return [(s[i], sign)] + [(b[i][k - 1], sign * k) for k in range(1, len(b[i]) + 1)]

    for i in nodes:
        mb.row([(c, 1.0) for c in b[i]], 1.0, 1.0)
    for i in nodes:
        mb.row(e_terms(i), ub=L)
    for i in nodes:
        mb.row([(c, 1.0) for c in inn[i]] + [(c, -1.0) for c in out[i]], 0.0, 0.0)
    for i in nodes:
        mb.row([(c, 1.0) for c in inn[i]] + [(b[i][k - 1], -t) for k, t in enumerate(problem.throughput[i], 1)],
               ub=0.0)
    for (u, v) in arcs:
        if u == SOURCE:
            mb.row([(s[v], 1.0), (d[(u, v)], float(L))], ub=L)
    for (u, v) in arcs:
        if v == SINK:
            mb.row([(d[(u, v)], float(L))] + e_terms(u, -1.0), ub=0.0)
    for (u, v) in arcs:
        if u != SOURCE and v != SINK:
            # L d <= L + s_v - e_u   and   L d <= L - s_v + e_u
            mb.row([(d[(u, v)], float(L)), (s[v], -1.0)] + e_terms(u, 1.0), ub=L)
            mb.row([(d[(u, v)], float(L)), (s[v], 1.0)] + e_terms(u, -1.0), ub=L)
    for a, c in arcs.items():
        cap = big if math.isinf(c) else c
        if tight_big_m:
            ends = [maxT[w] for w in a if w not in (SOURCE, SINK)]
            cap = min([cap] + ends)
        mb.row([(f[a], 1.0), (d[a], -cap)], ub=0.0)
    if valid_cut:
        terms = [(f[(SOURCE, i)], float(L)) for i in nodes if (SOURCE, i) in f]
        for i in nodes:
            terms += [(b[i][k - 1], -k * t) for k, t in enumerate(problem.throughput[i], 1)]
        mb.row(terms, ub=0.0)
    if symmetry_breaking:
        for cl in interchangeable_classes(problem):
            for i, j in zip(cl, cl[1:]):
                mb.row([(s[i], 1.0), (s[j], -1.0)], ub=0.0)
    return PlacementModel(problem, mb, s, b, f, d, arcs)


# ------------------------------------------------------------------------------------------ solve


def solve_placement(problem: HelixProblem, time_limit_s: float, warm_start: Placement | str | None = "best",
                    prune_top_k: int | None = None, *, valid_cut: bool = False, tight_big_m: bool = False,
                    symmetry_breaking: bool = False, threads: int = 1, seed: int = 0,
                    prove: bool = False) -> PlacementResult:
    """Solve the Helix placement MILP on HiGHS within ``time_limit_s`` seconds; the best valid placement found.

    ``warm_start``: the name of a heuristic (``"best"``, the default: the best of ``petals``, ``swarm``,
    ``chain``, ``regional`` by max flow, see :func:`.heuristics.heuristic_placement`), a placement
    ``{node: (s, e)}``, or ``None`` for the bare MILP. It is handed to HiGHS as a full feasible point
    (``s``, ``b``, ``d`` and the max-flow ``f``).

    **What is returned.** A placement is valid when every node holds a range within ``[0, L)`` of at most
    ``K_i`` layers and every layer is held by some node (:meth:`HelixProblem.validate_placement`); the MILP
    itself does not ask for coverage, so a time-limited incumbent with no flow may leave layers uncovered
    (on the 24-node cluster, the bare MILP's 60-s incumbent had flow 0). The result is the MILP's incumbent
    if it is valid and at least as good as the warm start by max flow on the unpruned problem
    (``method="milp"``); otherwise the warm start itself (``method="warm-start"``, with
    ``extra["kept_warm_start"]`` saying why). ``status`` stays HiGHS's own. With ``warm_start=None`` an
    invalid incumbent raises :class:`~gpusched.errors.SolverTimeoutError`: no invalid placement is ever
    returned. ``extra["milp_objective"]`` is the incumbent's max flow (None if invalid) and
    ``extra["warm_start_objective"]`` the warm start's.

    ``prune_top_k`` keeps each vertex's k fastest links (:func:`prune_links`); the returned objective is the
    placement's max flow on the *unpruned* problem. ``prove``: if HiGHS did not prove the result optimal, run
    :func:`~formulations.helix.optimality.prove_optimal` on it (layer-cover bound, then the hub feasibility
    MILP with what is left of ``time_limit_s``, at least 1 s); the proof goes to ``res.proof`` and its bound
    tightens ``upper_bound`` and ``gap``. Raises :class:`~gpusched.errors.SolverTimeoutError` if no valid
    placement is found in time.
    """
    t0 = time.perf_counter()
    model_problem = prune_links(problem, prune_top_k) if prune_top_k else problem
    pm = build_placement_model(model_problem, valid_cut=valid_cut, tight_big_m=tight_big_m,
                               symmetry_breaking=symmetry_breaking)
    ws = heuristic_placement(problem, warm_start) if isinstance(warm_start, str) else warm_start
    start = None
    if ws is not None:
        start = pm.start_vector(ws)
        if symmetry_breaking:
            start = _sort_within_classes(pm, start)
    h = pm.builder.load(maximize=True)
    budget = max(1e-3, time_limit_s - (time.perf_counter() - t0))
    try:
        outcome = _solve(h, time_limit_s=budget, threads=threads, seed=seed, start=start)
    except SolverTimeoutError:
        if _valid_flow(problem, ws) is None:
            raise
        outcome = None  # HiGHS stopped before adopting the warm start: keep it
    milp_placement = pm.placement_from(outcome.values) if outcome is not None else None
    milp_value = _valid_flow(problem, milp_placement)
    ws_value = _valid_flow(problem, ws)
    placement, objective, method, kept = milp_placement, milp_value, "milp", None
    if ws_value is not None and (milp_value is None or milp_value < ws_value):
        kept = ("the MILP found no incumbent in time" if outcome is None else
                "the MILP's incumbent leaves layers uncovered" if milp_value is None else
                f"the MILP's incumbent has a lower max flow ({milp_value:.6g} tokens/s)")
        placement, objective, method = dict(ws), ws_value, "warm-start"
    if objective is None:
        raise SolverTimeoutError(
            f"no valid placement within {time_limit_s} s: the MILP's incumbent leaves layers uncovered "
            f"(HiGHS: {outcome.model_status_text}); pass warm_start='best' (a heuristic placement) or more time")
    placement = problem.validate_placement(placement)
    status = outcome.status if outcome is not None else "time_limit"
    dual = outcome.dual_bound if outcome is not None else math.inf
    ub = min(dual, problem.upper_bound_tokens_per_s()) if not prune_top_k else problem.upper_bound_tokens_per_s()
    ub = max(ub, objective)
    proof = None
    if prove and status != "optimal" and objective > 0:
        proof = prove_optimal(problem, placement, max(1.0, time_limit_s - (time.perf_counter() - t0)),
                              threads=threads, seed=seed)
        ub = max(objective, min(ub, proof.upper_bound_tokens_per_s))
    extra = {"dual_bound": dual, "highs_gap": outcome.gap if outcome is not None else math.inf,
             "highs_status": outcome.model_status_text if outcome is not None else "no incumbent",
             "milp_objective": milp_value, "warm_start_objective": ws_value}
    if kept is not None:
        extra["kept_warm_start"] = kept
    return PlacementResult(placement, objective, ub, status, time.perf_counter() - t0,
                           (ub - objective) / ub if ub > 0 else 0.0, pm.size,
                           outcome.objective if outcome is not None else None, method=method, extra=extra,
                           proof=proof)


def _valid_flow(problem: HelixProblem, placement: Placement | None) -> float | None:
    """Max flow of ``placement`` if it is valid (every layer held, ranges within ``K_i``), else None."""
    if placement is None:
        return None
    try:
        return max_flow(problem, placement).value_tokens_per_s
    except ConfigError:
        return None


def _sort_within_classes(pm: PlacementModel, x: np.ndarray) -> np.ndarray:
    """Permute the warm start's ranges inside each interchangeable class so that ``s`` is non-decreasing."""
    placement = pm.placement_from(x)
    for cl in interchangeable_classes(pm.problem):
        ranges = sorted(placement[i] for i in cl)
        for i, r in zip(cl, ranges):
            placement[i] = r
    return pm.start_vector(placement)
