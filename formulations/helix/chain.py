"""The chain heuristic (spec §1.c-3, our addition): one pipeline at the largest bottleneck throughput.

:func:`chain_placement` binary-searches a bottleneck throughput ``θ`` (tokens/s); every node takes the
most layers ``k`` with ``T_i(k) >= θ``; nodes are chained region by region (:func:`fast_link_regions`)
until ``L`` layers are covered; nodes left over become parallel replicas of chain segments they can hold.
"""
from __future__ import annotations

from gpusched.errors import ConfigError

from .problem import HelixProblem, Node


def fast_link_regions(problem: HelixProblem, min_gap_ratio: float = 10.0) -> list[list[Node]]:
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


def max_layers_at(table: tuple[float, ...], theta: float) -> int:
    """Most layers ``k`` with ``T(k) >= theta`` (0 if none); ``table`` = ``T(1..K)`` in tokens/s."""
    ks = [k for k, t in enumerate(table, 1) if t >= theta]
    return max(ks) if ks else 0


def chain_placement(problem: HelixProblem) -> dict[Node, tuple[int, int]]:
    """Single pipeline at the largest bottleneck ``θ`` such that ``Σ_i max{k : T_i(k) >= θ} >= L``."""
    L = problem.num_layers
    nodes = problem.nodes

    def kk(i, theta):
        return max_layers_at(problem.throughput[i], theta)

    cand = sorted({t for tab in problem.throughput.values() for t in tab}, reverse=True)
    theta = next((t for t in cand if sum(kk(i, t) for i in nodes) >= L), None)
    if theta is None:
        raise ConfigError(f"the cluster cannot hold L = {L} layers even with every node at K_i")
    # chain order: region by region (fewest slow hops), strongest nodes first inside a region
    order = [i for comp in fast_link_regions(problem) for i in sorted(comp, key=lambda i: -kk(i, theta))]
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
