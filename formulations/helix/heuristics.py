"""Placement heuristics: warm starts for the MILP and baselines (spec §1.c-3).

* :func:`petals_placement`: Petals-style "weakest span" greedy (every node takes ``K_i`` layers; evaluate
  with partial inference, as the paper does).
* :func:`swarm_placement`: Swarm-style equal stages, nodes assigned greedily to the weakest stage.
* :func:`~formulations.helix.chain.chain_placement` (module ``chain``): one pipeline at the largest
  bottleneck throughput.
* :func:`~formulations.helix.regional.regional_chain_placement` (module ``regional``): geo-aware; regions
  as pipeline stages whose boundaries are crossed through several slow links.
"""
from __future__ import annotations

import random
import time

from gpusched.errors import ConfigError, UnknownNameError

from .chain import chain_placement
from .flow import max_flow
from .result import PlacementResult
from .problem import HelixProblem, Node
from .regional import regional_chain_placement


def petals_placement(problem: HelixProblem, seed: int = 0) -> dict[Node, tuple[int, int]]:
    """Petals-style: nodes in random order (``seed``) each take ``min(K_i, L)`` layers at the window whose
    sorted per-layer throughput-sum vector is lexicographically smallest; then add ``T_i(K_i)`` there."""
    L = problem.num_layers
    order = list(problem.nodes)
    random.Random(seed).shuffle(order)
    per_layer = [0.0] * L
    out = {}
    for i in order:
        k = min(problem.max_layers(i), L)
        best, best_key = 0, None
        for s in range(L - k + 1):
            key = sorted(per_layer[s:s + k])
            if best_key is None or key < best_key:
                best, best_key = s, key
        out[i] = (best, best + k)
        t = problem.throughput[i][k - 1]
        for l in range(best, best + k):
            per_layer[l] += t
    return {i: out[i] for i in problem.nodes}


def swarm_placement(problem: HelixProblem, num_stages: int | None = None) -> dict[Node, tuple[int, int]]:
    """Swarm-style: ``P`` equal stages of ``L/P <= min_i K_i`` layers (smallest such ``P`` dividing ``L``);
    nodes sorted by ``T_i(L/P)`` descending go to the stage with the smallest summed throughput."""
    L = problem.num_layers
    kmin = min(problem.max_layers(i) for i in problem.nodes)
    if num_stages is None:
        num_stages = next(p for p in range(1, L + 1) if L % p == 0 and L // p <= kmin)
    if L % num_stages or L // num_stages > kmin:
        raise ConfigError(f"num_stages={num_stages}: needs L={L} divisible and L/P <= min K_i = {kmin}")
    if len(problem.nodes) < num_stages:
        raise ConfigError(f"swarm placement needs >= {num_stages} nodes for {num_stages} stages, "
                          f"cluster has {len(problem.nodes)}")
    per = L // num_stages
    order = sorted(problem.nodes, key=lambda i: -problem.throughput[i][per - 1])
    load = [0.0] * num_stages
    out = {}
    for i in order:
        p = min(range(num_stages), key=lambda q: (load[q], q))
        load[p] += problem.throughput[i][per - 1]
        out[i] = (p * per, (p + 1) * per)
    return {i: out[i] for i in problem.nodes}


HEURISTICS = {"petals": petals_placement, "swarm": swarm_placement, "chain": chain_placement,
              "regional": regional_chain_placement}


def heuristic_placement(problem: HelixProblem, name: str) -> dict[Node, tuple[int, int]] | None:
    """Placement by heuristic name (``"petals"``, ``"swarm"``, ``"chain"``, ``"regional"``, or ``"best"``:
    the best of them by max flow, evaluated without partial inference since the MILP has none).

    ``"best"`` skips a heuristic that does not apply to the cluster (swarm needs enough nodes) or whose
    placement :func:`max_flow` refuses, so it never hands an invalid warm start to the MILP; it returns None
    if no heuristic gives a valid placement."""
    if name == "best":
        best, val = None, -1.0
        for n in HEURISTICS:
            try:
                p = HEURISTICS[n](problem)
                v = max_flow(problem, p).value_tokens_per_s
            except ConfigError:
                continue
            if v > val:
                best, val = p, v
        return best
    if name not in HEURISTICS:
        raise UnknownNameError(f"unknown heuristic {name!r}; known: {sorted(HEURISTICS) + ['best']}")
    return HEURISTICS[name](problem)


def heuristic_result(problem: HelixProblem, name: str) -> PlacementResult:
    """Run a heuristic and evaluate it (Petals with partial inference, as the paper's baseline)."""
    t0 = time.perf_counter()
    p = heuristic_placement(problem, name)
    val = max_flow(problem, p, allow_partial_inference=(name == "petals")).value_tokens_per_s
    ub = problem.upper_bound_tokens_per_s()
    return PlacementResult(p, val, ub, "heuristic", time.perf_counter() - t0, (ub - val) / ub if ub else 0.0,
                           method=name)
