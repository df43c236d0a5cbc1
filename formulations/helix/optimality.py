"""Prove a Helix placement optimal: "is there a placement with max flow >= incumbent + ε?" answered *no*.

:func:`prove_optimal` tries, cheapest first:

1. the :mod:`layer-cover bound <.coverbound>` (combinatorial, milliseconds): if no placement can exceed
   ``B`` and the incumbent reaches ``B - ε``, the incumbent is optimal;
2. a feasibility MILP on the layer-hub relaxation (:func:`hub_feasibility_model`) at the target flow
   ``F0 = incumbent + ε``, with the layer-cover rows as cuts; if HiGHS proves it infeasible, no placement
   reaches ``F0``. A feasible answer is a candidate placement whose true max flow is checked: at or above
   ``F0`` it is a better placement (``status="improved"``); below, the relaxation was too weak.

Why a feasibility question: a flow can always be scaled down, so "some placement carries ``F >= F0``" is
the same as "some placement carries exactly ``F0``". With the flow fixed, every replica carries at most
``min(T(k), F0)`` and the cover weights are those of ``F0``: both are far tighter than in the
optimisation model, whose LP bound must hold for every ``F`` at once.

What "optimal" means here: no placement has a max flow ``>= incumbent + ε`` (``ε = epsilon_tokens_per_s``,
default 1e-3 tokens/s). ``ε`` is far above the 1e-6 tokens/s rounding of the max-flow evaluation and
HiGHS's primal feasibility tolerance (1e-7); tolerances only make HiGHS accept slightly infeasible points,
so they can hide a proof but not fake one.

Measured on the 10-node LLaMA-30B instance (2 shared cores; ``experiments.bench_helix_placement
--prove-ideas``): step 1 proves 286.587 optimal in ~0.05 s; step 2 alone (cover bound skipped) proves
it infeasible at the root node in ~0.3 s; without the cover cuts the same MILP, and the paper's MILP
with the target row, time out at 60 s.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from gpusched.errors import ConfigError

from ._highs import ModelBuilder, run_feasibility
from .coverbound import cover_weight, layer_cover_bound
from .flow import flow_value_or_zero, max_flow
from .problem import HelixProblem, Node, Placement


@dataclass
class OptimalityProof:
    """Outcome of :func:`prove_optimal`.

    ``status``: ``"optimal"`` (no placement reaches ``incumbent + ε``), ``"improved"`` (the MILP found a
    placement with a higher flow: ``better_placement``), or ``"not_proven"``. ``upper_bound_tokens_per_s``
    is the best proven bound (``incumbent + ε`` after an infeasibility proof). ``method``: ``"cover_bound"``
    or ``"hub_feasibility_milp"``. ``extra`` holds HiGHS counters (B&B nodes, simplex iterations).
    """

    status: str
    incumbent_tokens_per_s: float
    upper_bound_tokens_per_s: float
    epsilon_tokens_per_s: float
    method: str
    solve_time_s: float
    better_placement: dict[Node, tuple[int, int]] | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class HubFeasibilityModel:
    """The hub-relaxation feasibility MILP at flow ``F0`` (columns ``z[(c, s, k)]`` replicas of node class
    ``c`` on ``[s, s+k)``, ``y`` their flows) and the node classes it aggregates."""

    builder: ModelBuilder
    classes: list[list[Node]]
    z: dict[tuple[int, int, int], int]
    y: dict[tuple[int, int, int], int]

    def placement_from(self, values: np.ndarray) -> dict[Node, tuple[int, int]]:
        out: dict[Node, tuple[int, int]] = {}
        for c, cl in enumerate(self.classes):
            ranges = sorted((s, s + k) for (cc, s, k), col in self.z.items() if cc == c
                            for _ in range(int(round(values[col]))))
            out.update(zip(cl, ranges))
        return out


def hub_feasibility_model(problem: HelixProblem, flow_tokens_per_s: float,
                          cover_levels: tuple[int, ...] = (2, 3, 4)) -> HubFeasibilityModel:
    """Feasibility MILP "some placement carries ``F0`` through the layer hubs" (links ignored).

    Nodes with identical ``T`` tables are aggregated into one class (they are interchangeable once links
    are dropped). Rows: ``Σ z_c = n_c``; ``y <= min(T_c(k), F0) z``; ``Σ_{s=0} y = F0``; conservation at
    hubs ``1..L-1``; for every layer ``l`` and level ``m`` in ``cover_levels``,
    ``Σ_{[s,s+k) ∋ l} w_m(T_c(k), F0) z >= m`` (the layer-cover cut of :mod:`.coverbound`). The model is a
    relaxation of the Helix placement problem, so its infeasibility proves that no placement reaches ``F0``.
    """
    if not flow_tokens_per_s > 0:
        raise ConfigError(f"flow_tokens_per_s must be > 0, got {flow_tokens_per_s!r}")
    F0 = float(flow_tokens_per_s)
    L = problem.num_layers
    groups: dict[tuple, list[Node]] = {}
    for i in problem.nodes:
        groups.setdefault(tuple(problem.throughput[i]), []).append(i)
    classes = list(groups.values())
    mb = ModelBuilder()
    z: dict[tuple[int, int, int], int] = {}
    y: dict[tuple[int, int, int], int] = {}
    for c, cl in enumerate(classes):
        for k in range(1, min(problem.max_layers(cl[0]), L) + 1):
            for s in range(L - k + 1):
                z[(c, s, k)] = mb.var(0, len(cl), integer=True)
                y[(c, s, k)] = mb.var(0, math.inf)
    for c, cl in enumerate(classes):
        mb.row([(col, 1.0) for (cc, _, _), col in z.items() if cc == c], len(cl), len(cl))
    for key, col in y.items():
        t = problem.throughput[classes[key[0]][0]][key[2] - 1]
        mb.row([(col, 1.0), (z[key], -min(t, F0))], ub=0.0)
    into: list[list[int]] = [[] for _ in range(L + 1)]
    outof: list[list[int]] = [[] for _ in range(L + 1)]
    for (c, s, k), col in y.items():
        into[s + k].append(col)
        outof[s].append(col)
    mb.row([(col, 1.0) for col in outof[0]], F0, F0)
    for p in range(1, L):
        mb.row([(col, 1.0) for col in into[p]] + [(col, -1.0) for col in outof[p]], 0.0, 0.0)
    for m in cover_levels:
        w = {key: cover_weight(problem.throughput[classes[key[0]][0]][key[2] - 1], F0, m) for key in z}
        for l in range(L):
            mb.row([(col, float(w[key])) for key, col in z.items() if key[1] <= l < key[1] + key[2]],
                   lb=float(m))
    return HubFeasibilityModel(mb, classes, z, y)


def prove_optimal(problem: HelixProblem, placement: Placement, time_limit_s: float, *,
                  epsilon_tokens_per_s: float = 1e-3, cover_levels: tuple[int, ...] = (2, 3, 4),
                  max_cover_level: int = 64, use_cover_bound: bool = True, threads: int = 1,
                  seed: int = 0) -> OptimalityProof:
    """Try to prove that ``placement`` has the largest max flow of any placement of ``problem``.

    ``time_limit_s`` bounds the MILP step (the cover bound is instant). ``cover_levels=()`` turns the
    cuts off in the MILP and ``use_cover_bound=False`` skips step 1 (both for measuring what each buys).
    See the module docstring for what is proven.
    """
    if not epsilon_tokens_per_s > 0:
        raise ConfigError(f"epsilon_tokens_per_s must be > 0, got {epsilon_tokens_per_s!r}")
    if not time_limit_s > 0:
        raise ConfigError(f"time_limit_s must be > 0, got {time_limit_s!r}")
    t0 = time.perf_counter()
    eps = float(epsilon_tokens_per_s)
    incumbent = max_flow(problem, placement).value_tokens_per_s
    cb = layer_cover_bound(problem, max_cover_level)
    extra = {"cover_bound": cb.bound_tokens_per_s, "cover_level": cb.level}
    if use_cover_bound and cb.bound_tokens_per_s < incumbent + eps:
        return OptimalityProof("optimal", incumbent, max(incumbent, cb.bound_tokens_per_s), eps, "cover_bound",
                               time.perf_counter() - t0, extra=extra)
    target = incumbent + eps
    hm = hub_feasibility_model(problem, target, cover_levels)
    h = hm.builder.load(maximize=True)
    answer = run_feasibility(h, time_limit_s=max(1e-3, float(time_limit_s) - (time.perf_counter() - t0)),
                             threads=threads, seed=seed)
    info = h.getInfo()
    extra.update(mip_nodes=int(info.mip_node_count), lp_iterations=int(info.simplex_iteration_count),
                 highs_status=h.modelStatusToString(h.getModelStatus()), model_size=hm.builder.num_rows)
    bound = min(cb.bound_tokens_per_s, problem.upper_bound_tokens_per_s())
    if answer == "infeasible":
        return OptimalityProof("optimal", incumbent, target, eps, "hub_feasibility_milp",
                               time.perf_counter() - t0, extra=extra)
    if answer == "feasible":  # a hub point at F0: check the placement on the real graph
        cand = hm.placement_from(np.array(h.getSolution().col_value))
        value = flow_value_or_zero(problem, cand)
        extra["candidate_tokens_per_s"] = value
        if value >= target - 1e-6:
            return OptimalityProof("improved", incumbent, bound, eps, "hub_feasibility_milp",
                                   time.perf_counter() - t0, better_placement=cand, extra=extra)
    return OptimalityProof("not_proven", incumbent, max(bound, incumbent), eps, "hub_feasibility_milp",
                           time.perf_counter() - t0, extra=extra)
