"""Max flow of a placed Helix cluster (spec §1.b (i), ``network_flow.py``), solved with OR-Tools.

Graph: source ``S``, sink ``T``, and each compute node ``i`` split into ``i_in -> i_out`` with capacity
``T_i(e_i - s_i)``. Only chaining links are present: ``S -> j`` iff ``s_j = 0``, ``i -> T`` iff ``e_i = L``,
``i -> j`` iff ``e_i = s_j`` (or, with partial inference, ``s_j <= e_i < e_j``). Arc capacities are the
problem's ``c_uv`` (``B/α`` between compute nodes, ``B/τ`` on source/sink links), as in the MILP: this is
what reproduces the published objectives. The runtime graph's NIC arcs (``NIC/(τ+α)`` ≈ 610k tokens/s) never
bind on the artifact clusters and are left out; the ``B/(τ+α)`` vs ``B/α`` difference is ignored likewise.

OR-Tools' ``SimpleMaxFlow`` takes int64 capacities: tokens/s are multiplied by ``scale`` (default 1e6) and
rounded, so each arc is off by at most 5e-7 tokens/s and a cut of a few hundred arcs by < 1e-3 tokens/s.
Unlimited capacities become ``Σ_i max_k T_i(k)`` (+1), which no flow can exceed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ortools.graph.python import max_flow as _mf

from gpusched.errors import ConfigError, SolverError

from .problem import HelixProblem, Node, Placement

SOURCE, SINK = "source", "sink"


@dataclass
class FlowResult:
    """Max flow of a placement.

    ``value_tokens_per_s``: the flow value; ``arc_flows``: ``{(u, v): tokens/s}`` on every present arc with
    positive flow, ``u``/``v`` being nodes, ``"source"`` or ``"sink"``; ``node_flows``: tokens/s through
    each compute node; ``arcs``: ``{(u, v): capacity_tokens_per_s}`` of every present arc (the chaining graph).
    """

    value_tokens_per_s: float
    arc_flows: dict[tuple, float]
    node_flows: dict[Node, float]
    arcs: dict[tuple, float]


def chaining_arcs(problem: HelixProblem, placement: Placement, allow_partial_inference: bool = False
                  ) -> dict[tuple, float]:
    """The present arcs ``{(u, v): capacity}`` of the placed cluster (compute arcs, source and sink arcs)."""
    L = problem.num_layers
    arcs: dict[tuple, float] = {}
    for i, (s, e) in placement.items():
        if s == 0:
            c = problem.source_capacity(i)
            if c is not None:
                arcs[(SOURCE, i)] = c
        if e == L:
            c = problem.sink_capacity(i)
            if c is not None:
                arcs[(i, SINK)] = c
    for (u, v), c in problem.links.items():
        for a, b in ((u, v), (v, u)):
            ea, sb, eb = placement[a][1], placement[b][0], placement[b][1]
            ok = (ea == sb) or (allow_partial_inference and sb <= ea < eb)
            if ok:
                arcs[(a, b)] = c
    return arcs


def max_flow(problem: HelixProblem, placement: Placement, *, allow_partial_inference: bool = False,
             scale: float = 1e6) -> FlowResult:
    """Max flow (tokens/s) from source to sink of ``problem`` placed as ``placement`` (``{node: (s, e)}``).

    Raises :class:`ConfigError` (naming the node and value) if the placement is invalid: a node missing,
    a range outside ``[0, L)``, more than ``K_i`` layers, or a layer nobody holds.
    """
    placement = problem.validate_placement(placement)
    arcs = chaining_arcs(problem, placement, allow_partial_inference)
    node_cap = {i: problem.throughput[i][e - s - 1] for i, (s, e) in placement.items()}
    big = sum(max(t) for t in problem.throughput.values()) + 1.0
    if big * scale * (len(arcs) + len(node_cap)) > 2 ** 62:
        raise ConfigError(f"scale {scale} overflows int64 capacities (max capacity {big} tokens/s); lower it")

    def q(c: float) -> int:
        return int(round((big if math.isinf(c) else min(c, big)) * scale))

    index = {SOURCE: 0, SINK: 1}
    for j, i in enumerate(placement):
        index[("in", i)] = 2 + 2 * j
        index[("out", i)] = 3 + 2 * j
    smf = _mf.SimpleMaxFlow()
    arc_ids: dict[tuple, int] = {}
    node_ids: dict[Node, int] = {}
    for i, c in node_cap.items():
        node_ids[i] = smf.add_arc_with_capacity(index[("in", i)], index[("out", i)], q(c))
    for (u, v), c in arcs.items():
        tail = index[SOURCE] if u == SOURCE else index[("out", u)]
        head = index[SINK] if v == SINK else index[("in", v)]
        arc_ids[(u, v)] = smf.add_arc_with_capacity(tail, head, q(c))
    status = smf.solve(index[SOURCE], index[SINK])
    if status != smf.OPTIMAL:
        raise SolverError(f"OR-Tools max flow returned status {status}")
    value = smf.optimal_flow() / scale
    arc_flows = {a: smf.flow(k) / scale for a, k in arc_ids.items() if smf.flow(k) > 0}
    node_flows = {i: smf.flow(k) / scale for i, k in node_ids.items()}
    return FlowResult(value, arc_flows, node_flows, dict(arcs))


def flow_value_or_zero(problem: HelixProblem, placement: Placement) -> float:
    """Max flow of a placement, 0.0 if it leaves a layer uncovered (a solver incumbent with no flow may)."""
    try:
        return max_flow(problem, placement).value_tokens_per_s
    except ConfigError:
        return 0.0
