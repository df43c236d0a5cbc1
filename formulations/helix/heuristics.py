"""Placement heuristics: warm starts for the MILP and baselines (spec §1.c-3).

* :func:`petals_placement`: Petals-style "weakest span" greedy (every node takes ``K_i`` layers; evaluate
  with partial inference, as the paper does).
* :func:`swarm_placement`: Swarm-style equal stages, nodes assigned greedily to the weakest stage.
* :func:`chain_placement`: binary-search a bottleneck throughput ``θ``; every node takes the most layers
  ``k`` with ``T_i(k) >= θ``; chain nodes (grouped by fast-link component, i.e. region) until ``L`` layers
  are covered. Nodes left over are placed as parallel replicas of chain segments they can hold.
"""
from __future__ import annotations

import random
import time

from gpusched.errors import ConfigError, UnknownNameError

from .flow import max_flow
from .milp import PlacementResult
from .problem import HelixProblem, Node


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


def _regions(problem: HelixProblem, min_gap_ratio: float = 10.0) -> list[list[Node]]:
    """Connected components of the fast links (the regions of a geo cluster), largest first.

    Links count as fast above the widest gap in their sorted capacities, when that gap is a factor of
    at least ``min_gap_ratio`` (a geo cluster's cross-region links are ~100x slower than its in-region
    ones); with no such gap the cluster is one region. A median rule fails on geo clusters, where the
    slow cross-region pairs outnumber the fast ones.
    """
    caps = sorted(c for c in problem.links.values() if c > 0)
    ratios = [(b / a, b) for a, b in zip(caps, caps[1:])]
    widest = max(ratios, default=(1.0, 0.0))
    if widest[0] < min_gap_ratio:
        return [list(problem.nodes)]
    thr = widest[1]
    parent = {i: i for i in problem.nodes}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (u, v), c in problem.links.items():
        if c >= thr:
            parent[find(u)] = find(v)
    comps: dict = {}
    for i in problem.nodes:
        comps.setdefault(find(i), []).append(i)
    return sorted(comps.values(), key=len, reverse=True)


def chain_placement(problem: HelixProblem) -> dict[Node, tuple[int, int]]:
    """Single pipeline at the largest bottleneck ``θ`` such that ``Σ_i max{k : T_i(k) >= θ} >= L``."""
    L = problem.num_layers
    nodes = problem.nodes

    def kk(i, theta):
        ks = [k for k, t in enumerate(problem.throughput[i], 1) if t >= theta]
        return max(ks) if ks else 0

    cand = sorted({t for tab in problem.throughput.values() for t in tab}, reverse=True)
    theta = next((t for t in cand if sum(kk(i, t) for i in nodes) >= L), None)
    if theta is None:
        raise ConfigError(f"the cluster cannot hold L = {L} layers even with every node at K_i")
    # chain order: region by region (fewest slow hops), strongest nodes first inside a region
    order = [i for comp in _regions(problem) for i in sorted(comp, key=lambda i: -kk(i, theta))]
    out: dict[Node, tuple[int, int]] = {}
    pos = 0
    chain = []
    for i in order:
        k = kk(i, theta)
        if k == 0 or pos >= L:
            continue
        need = L - pos
        if k > need:
            ok = [kk_ for kk_ in range(need, 0, -1) if problem.throughput[i][kk_ - 1] >= theta]
            k = ok[0] if ok else need
        out[i] = (pos, pos + k)
        chain.append(i)
        pos += k
    # leftovers replicate the chain segment whose node they beat most, if they can hold it
    for i in nodes:
        if i in out:
            continue
        best, best_gain = None, -1.0
        for j in chain:
            s, e = out[j]
            if e - s <= problem.max_layers(i):
                gain = problem.throughput[i][e - s - 1]
                if gain > best_gain:
                    best, best_gain = (s, e), gain
        out[i] = best if best is not None else (0, 1)
    return {i: out[i] for i in nodes}


HEURISTICS = {"petals": petals_placement, "swarm": swarm_placement, "chain": chain_placement}


def heuristic_placement(problem: HelixProblem, name: str) -> dict[Node, tuple[int, int]]:
    """Placement by heuristic name (``"petals"``, ``"swarm"``, ``"chain"``, or ``"best"``: the best of
    them by max flow, evaluated without partial inference since the MILP has none)."""
    if name == "best":
        best, val = None, -1.0
        for n in HEURISTICS:
            try:
                p = HEURISTICS[n](problem)
            except ConfigError:
                continue
            v = max_flow(problem, p).value_tokens_per_s
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
