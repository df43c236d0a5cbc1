"""Geo-aware placement (our addition): regions laid out as pipeline stages with widened boundaries.

A geo cluster's cross-region links are ~100x slower than its in-region links, so a single chain that
crosses a region boundary through one link is capped by that link. :func:`regional_chain_placement`
lays regions out as stages (several regions in one stage run the same layers as parallel lanes) and
shapes each region's block so that the boundary is crossed through several links; every plan is scored
with the real max flow.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

from gpusched.errors import ConfigError

from .chain import chain_placement, fast_link_regions, max_layers_at
from .flow import flow_value_or_zero, max_flow
from .problem import HelixProblem, Node

# In a geo cluster a layer boundary between two regions is crossed only through the slow cross-region
# links of the nodes that end / start there, so one chain crossing it through one link (~700 tokens/s on
# geo24) caps the whole pipeline. A *plan* orders the regions into stages (a stage with several regions
# runs them as parallel lanes over the same layers); each region lays out its layers as a *block* whose
# boundary segments may be held by several nodes, so that a boundary is crossed by
# ``(#nodes ending) x (#nodes starting)`` links. Per plan, a DP over the stages finds the largest flow
# target ``F`` whose stages cover ``L`` layers with every boundary able to carry ``F``; each plan's
# placement is then scored with the exact max flow.


@dataclass(frozen=True)
class _Shape:
    """Layout of one region's block of consecutive layers.

    ``chains > 1``: that many parallel chains, each spanning the block (``w_in = w_out = chains``).
    ``chains == 1``: one chain whose first (last) segment is held by a group of ``w_in`` (``w_out``) nodes
    in parallel; a wider end costs layers but multiplies the links crossing that block boundary.
    """

    chains: int = 1
    w_in: int = 1
    w_out: int = 1

    @property
    def is_chains(self) -> bool:
        return self.w_in == self.w_out == self.chains


@dataclass
class _Block:
    """A region's block: ``pieces`` = ``[(node, first layer offset in the block, layers)]``; ``extras``
    = the region's nodes it leaves unused; ``throughput`` in tokens/s (compute only: in-region links are
    assumed fast)."""

    pieces: list
    extras: list
    throughput: float


def _max_min_chain(problem: HelixProblem, nodes: list, n: int):
    """Split ``n`` layers over ``nodes`` (kept in order) to maximise the chain's bottleneck.

    Greedy: the next layer goes to the node whose throughput after taking it is highest (optimal for
    the min when every ``T_i`` is non-increasing in ``k``). Returns ``([(node, k >= 1)],
    bottleneck tokens/s)`` or ``None`` if the nodes cannot hold ``n`` layers.
    """
    if n <= 0:
        return None
    k = {i: 0 for i in nodes}
    heap = [(-problem.throughput[i][0], j, i) for j, i in enumerate(nodes)]
    heapq.heapify(heap)
    for _ in range(n):
        if not heap:
            return None
        _, j, i = heapq.heappop(heap)
        k[i] += 1
        if k[i] < problem.max_layers(i):
            heapq.heappush(heap, (-problem.throughput[i][k[i]], j, i))
    used = [(i, k[i]) for i in nodes if k[i] > 0]
    return used, min(problem.throughput[i][c - 1] for i, c in used)


def _split_chains(problem: HelixProblem, nodes: list, p: int, theta: float) -> tuple[list[list], int]:
    """Nodes into ``p`` chains, longest-first onto the shortest chain, each node at ``max_k(theta)``
    layers; returns the chains and the fewest layers any chain covers at bottleneck ``theta``."""
    chains, sums = [[] for _ in range(p)], [0] * p
    items = sorted(((max_layers_at(problem.throughput[i], theta), j, i) for j, i in enumerate(nodes)),
                   key=lambda x: (-x[0], x[1]))
    for k, _, i in items:
        c = min(range(p), key=lambda q: (sums[q], q))
        chains[c].append(i)
        sums[c] += k
    return chains, min(sums)


def _end_group(problem: HelixProblem, nodes: list, w: int, f: float, taken: set):
    """Cheapest ``w``-node group holding one segment at ``>= f`` tokens/s in total.

    A node costs the ``max_k(f)`` layers it would hold alone in the chain; the group gains its segment
    length ``l``. Returns ``(gain, l, members)`` maximising ``l - cost`` (two greedy member orders per
    ``l``), or ``None``.
    """
    cost = {i: max_layers_at(problem.throughput[i], f) for i in nodes}
    best = None
    for ell in range(1, max(problem.max_layers(i) for i in nodes) + 1):
        cand = [i for i in nodes if i not in taken and problem.max_layers(i) >= ell]
        if len(cand) < w:
            break
        for key in (lambda i: (cost[i], -problem.throughput[i][ell - 1]),
                    lambda i: (-problem.throughput[i][ell - 1], cost[i])):
            members = sorted(cand, key=key)[:w]
            if sum(problem.throughput[i][ell - 1] for i in members) >= f:
                gain = ell - sum(cost[i] for i in members)
                if best is None or gain > best[0]:
                    best = (gain, ell, members)
    return best


def _widened_parts(problem: HelixProblem, nodes: list, shape: _Shape, f: float):
    """``(layers coverable at >= f, (in-group, out-group, chain nodes))`` of a one-chain shape."""
    taken: set = set()
    groups = []
    for w in (shape.w_in, shape.w_out):
        g = _end_group(problem, nodes, w, f, taken) if w > 1 else None
        if w > 1 and g is None:
            return 0, None
        taken |= set(g[2]) if g else set()
        groups.append(g)
    singles = [i for i in nodes if i not in taken]
    cover = sum(max_layers_at(problem.throughput[i], f) for i in singles) + sum(g[1] for g in groups if g)
    return cover, (groups[0], groups[1], singles)


def _block_parts(problem: HelixProblem, nodes: list, shape: _Shape, f: float):
    """``(layers coverable at >= f tokens/s, parts)``: the chains of a multi-chain shape, or the end
    groups and chain nodes of a one-chain shape; :func:`_build_block` lays out ``n`` layers on them."""
    if shape.is_chains:
        if shape.chains > len(nodes):
            return 0, None
        chains, cover = _split_chains(problem, nodes, shape.chains, f / shape.chains)
        return cover, chains
    return _widened_parts(problem, nodes, shape, f)


def _build_chains(problem: HelixProblem, chains: list[list], n: int) -> _Block:
    pieces, extras, thr = [], [], 0.0
    for chain in chains:
        used, t = _max_min_chain(problem, chain, n)  # re-spread: a chain with spare layers speeds up
        thr += t
        off = 0
        for i, k in used:
            pieces.append((i, off, k))
            off += k
        held = {i for i, _ in used}
        extras += [i for i in chain if i not in held]
    return _Block(pieces, extras, thr)


def _build_widened(problem: HelixProblem, parts, n: int) -> _Block | None:
    g_in, g_out, singles = parts
    l_in, l_out = (g_in[1] if g_in else 0), (g_out[1] if g_out else 0)
    while n - l_in - l_out < 1 and max(l_in, l_out) > 1:  # short block: shrink the groups, keep a chain
        if l_out >= l_in:
            l_out -= 1
        else:
            l_in -= 1
    chain = _max_min_chain(problem, singles, n - l_in - l_out)
    if chain is None:
        return None
    used, t = chain
    pieces, thr = [], [t]
    if g_in:
        pieces += [(i, 0, l_in) for i in g_in[2]]
        thr.append(sum(problem.throughput[i][l_in - 1] for i in g_in[2]))
    off = l_in
    for i, k in used:
        pieces.append((i, off, k))
        off += k
    if g_out:
        pieces += [(i, off, l_out) for i in g_out[2]]
        thr.append(sum(problem.throughput[i][l_out - 1] for i in g_out[2]))
    held = {i for i, _ in used}
    return _Block(pieces, [i for i in singles if i not in held], min(thr))


def _build_block(problem: HelixProblem, shape: _Shape, n: int, cover: int, parts) -> _Block | None:
    """Region block of ``n`` layers on ``parts`` of :func:`_block_parts` (``None`` if ``cover < n``)."""
    if cover < n:
        return None
    if shape.is_chains:
        return _build_chains(problem, parts, n)
    return _build_widened(problem, parts, n)


class _RegionTable:
    """Per shape, ``theta[shape][n]``: tokens/s of the region's best block of ``n`` layers (0 = none).

    A block of ``n`` layers is built for the highest flow target (a node throughput times a width)
    whose coverage reaches ``n``, then re-spread. ``theta`` is made non-increasing in ``n`` (a block of
    more layers, re-spread over fewer, is at least as fast); ``target[shape][n]`` is the flow target of
    the block actually built for ``n``.
    """

    def __init__(self, problem: HelixProblem, nodes: list, shapes: list[_Shape]):
        self.problem, self.nodes, L = problem, nodes, problem.num_layers
        self.shapes = [s for s in shapes if self._fits(s, len(nodes))]
        self._parts: dict = {}
        values = sorted({t for i in nodes for t in problem.throughput[i]})
        self.theta, self.target = {}, {}
        for s in self.shapes:
            width = max(s.chains, s.w_in, s.w_out)
            cands = sorted({v * m for v in values for m in range(1, width + 1)}, reverse=True)
            theta, target = [0.0] * (L + 1), [0.0] * (L + 1)
            best, best_f = 0.0, 0.0
            for n in range(L, 0, -1):
                f = self._highest_target(s, cands, n)
                b = self.block_at(s, n, f) if f > 0 else None
                if b is not None and b.throughput > best:
                    best, best_f = b.throughput, f
                theta[n], target[n] = best, best_f
            self.theta[s], self.target[s] = theta, target

    def _parts_at(self, shape: _Shape, f: float):
        if (shape, f) not in self._parts:
            self._parts[shape, f] = _block_parts(self.problem, self.nodes, shape, f)
        return self._parts[shape, f]

    def _highest_target(self, shape: _Shape, cands: list[float], n: int) -> float:
        """Highest ``f`` in ``cands`` (descending) covering ``n`` layers; coverage only grows as ``f``
        falls, so a binary search; 0.0 if none."""
        if self._parts_at(shape, cands[-1])[0] < n:
            return 0.0
        lo, hi = 0, len(cands) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._parts_at(shape, cands[mid])[0] >= n:
                hi = mid
            else:
                lo = mid + 1
        return cands[lo]

    @staticmethod
    def _fits(s: _Shape, size: int) -> bool:
        if s.is_chains:
            return s.chains <= size
        return (s.w_in if s.w_in > 1 else 0) + (s.w_out if s.w_out > 1 else 0) + 1 <= size

    def block_at(self, shape: _Shape, n: int, f: float) -> _Block | None:
        return _build_block(self.problem, shape, n, *self._parts_at(shape, f))

    def block(self, shape: _Shape, n: int) -> _Block | None:
        f = self.target[shape][n]
        return self.block_at(shape, n, f) if f > 0 else None


def _shapes(max_chains: int, max_width: int) -> list[_Shape]:
    """``chains`` in ``1..max_chains``, plus one chain with end groups of widths ``1..max_width``."""
    out = [_Shape(p, p, p) for p in range(1, max_chains + 1)]
    return out + [_Shape(1, a, b) for a in range(1, max_width + 1) for b in range(1, max_width + 1)
                  if (a, b) != (1, 1)]


def _stage_plans(num_regions: int, max_stages: int) -> list[tuple[tuple[int, ...], ...]]:
    """Every ordered partition of every non-empty subset of the regions into at most ``max_stages``
    stages (regions left out are idle and only replicate segments)."""
    def ordered_partitions(items):
        if not items:
            yield []
            return
        for part in ordered_partitions(items[1:]):
            for j in range(len(part)):
                yield part[:j] + [part[j] | {items[0]}] + part[j + 1:]
            for j in range(len(part) + 1):
                yield part[:j] + [frozenset([items[0]])] + part[j:]

    plans = set()
    for size in range(1, num_regions + 1):
        for subset in itertools.combinations(range(num_regions), size):
            for part in ordered_partitions(list(subset)):
                if len(part) <= max_stages:
                    plans.add(tuple(tuple(sorted(st)) for st in part))
    return sorted(plans, key=lambda pl: (len(pl), pl))


def _merge_regions(problem: HelixProblem, regions: list[list], max_regions: int) -> list[list]:
    """Merge the pair of regions with the fastest mean cross link until at most ``max_regions`` remain
    (bounds the plan enumeration; a merged region is treated as one, its inner slow links ignored)."""
    regions = [list(r) for r in regions]
    while len(regions) > max_regions:
        pairs = itertools.combinations(range(len(regions)), 2)
        a, b = max(pairs, key=lambda ab: (_mean_link(problem, regions[ab[0]], regions[ab[1]]), -ab[0], -ab[1]))
        regions[a] += regions.pop(b)
    return regions


def _mean_link(problem: HelixProblem, xs: list, ys: list) -> float:
    """Mean capacity (tokens/s) of the links between two node sets, a missing link counting as 0."""
    return sum(problem.link_capacity(u, v) or 0.0 for u in xs for v in ys) / (len(xs) * len(ys))


class _RegionalPlanner:
    """Region tables, mean cross-region link capacities and the per-plan DP of
    :func:`regional_chain_placement`."""

    def __init__(self, problem: HelixProblem, regions: list[list], shapes: list[_Shape], max_states: int):
        self.problem, self.L, self.regions, self.max_states = problem, problem.num_layers, regions, max_states
        self.tables = [_RegionTable(problem, r, shapes) for r in regions]
        R = len(regions)
        self.link = {(a, b): _mean_link(problem, regions[a], regions[b])
                     for a in range(R) for b in range(R) if a != b}

    def _states(self, plan, s: int) -> list[tuple[_Shape, ...]]:
        """Shape combinations of stage ``s``'s lanes. The source (sink) reaches every node directly, so
        a wide entry of the first stage (exit of the last) would only cost layers: those are skipped."""
        first, last = s == 0, s == len(plan) - 1
        lanes = [[sh for sh in self.tables[r].shapes
                  if (not first or sh.w_in == sh.chains) and (not last or sh.w_out == sh.chains)]
                 for r in plan[s]]
        if len(plan[s]) > 1 and math.prod(len(x) for x in lanes) > self.max_states:
            lanes = [[sh for sh in x if sh.is_chains] for x in lanes]  # many lanes: plain chains only
        return list(itertools.product(*lanes))

    def _stage_throughput(self, plan, s: int, state) -> list[float]:
        """``[tokens/s of stage s covering n layers for n = 0..L]`` (summed over its lanes)."""
        cols = [self.tables[r].theta[sh] for r, sh in zip(plan[s], state)]
        return [sum(c[n] for c in cols) for n in range(self.L + 1)]

    def _crossing(self, plan, s: int, x, y) -> float:
        """Estimated tokens/s across the boundary after stage ``s``: every (ending, starting) node pair
        has a link of the regions' mean cross capacity."""
        return sum(a.w_out * b.w_in * self.link[r, q]
                   for r, a in zip(plan[s], x) for q, b in zip(plan[s + 1], y))

    @staticmethod
    def _layers_at(thr: list[float], flow: float) -> int:
        """Most layers ``n`` with ``thr[n] >= flow`` (binary search: ``thr`` is non-increasing)."""
        lo, hi = 0, len(thr) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if thr[mid] >= flow:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _most_layers(self, thr, cross, flow: float):
        """DP over stages: ``(most layers coverable at flow, state index path)`` with every boundary
        able to carry ``flow`` and every stage holding >= 1 layer. ``thr[s][j]``: stage ``s``'s
        throughput list in state ``j``; ``cross[s][j][k]``: boundary capacity after stage ``s``."""
        best: dict = {}
        for s in range(len(thr)):
            nxt = {}
            for y, t in enumerate(thr[s]):
                n = self._layers_at(t, flow)
                if n < 1:
                    continue
                if s == 0:
                    nxt[y] = (n, [y])
                    continue
                ok = [v for x, v in best.items() if cross[s - 1][x][y] >= flow]
                if ok:
                    tot, path = max(ok, key=lambda v: v[0])
                    nxt[y] = (tot + n, path + [y])
            best = nxt
        return max(best.values(), key=lambda v: v[0], default=(0, None))

    def best_path(self, plan):
        """Largest flow target the plan supports: ``(flow estimate tokens/s, shape path)`` or ``None``.

        Feasibility only changes at a stage throughput or a boundary capacity, so the target is found
        by binary search over those values (largest feasible one)."""
        states = [self._states(plan, s) for s in range(len(plan))]
        thr = [[self._stage_throughput(plan, s, st) for st in states[s]] for s in range(len(plan))]
        cross = [[[self._crossing(plan, s, x, y) for y in states[s + 1]] for x in states[s]]
                 for s in range(len(plan) - 1)]
        cands = sorted({v for stage in thr for t in stage for v in t if v > 0}
                       | {v for b in cross for row in b for v in row if v > 0})
        lo, hi, best = 0, len(cands) - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            tot, path = self._most_layers(thr, cross, cands[mid])
            if tot >= self.L:
                best, lo = (cands[mid], path), mid + 1
            else:
                hi = mid - 1
        if best is None:
            return None
        return best[0], [states[s][j] for s, j in enumerate(best[1])]

    def split_layers(self, plan, path, flow: float) -> list[int]:
        """Layers per stage: the most each covers at ``flow``, then surplus layers taken off the slowest
        stage one at a time (fewer layers make it faster)."""
        thr = [self._stage_throughput(plan, s, path[s]) for s in range(len(plan))]
        ns = [self._layers_at(t, flow) for t in thr]
        while sum(ns) > self.L:
            s = min((s for s in range(len(plan)) if ns[s] > 1), key=lambda s: (thr[s][ns[s]], s))
            ns[s] -= 1
        return ns

    def build(self, plan, path, ns) -> dict[Node, tuple[int, int]]:
        """Placement of a plan: stage by stage, each lane's block at the stage's offset; unused nodes
        replicate a segment."""
        out, extras, pos = {}, [], 0
        for s, stage in enumerate(plan):
            for r, sh in zip(stage, path[s]):
                b = self.tables[r].block(sh, ns[s])
                if b is None:
                    extras += self.regions[r]
                    continue
                out.update({i: (pos + off, pos + off + k) for i, off, k in b.pieces})
                extras += b.extras
            pos += ns[s]
        extras += [i for i in self.problem.nodes if i not in out and i not in extras]
        for i in extras:
            out[i] = _replica_range(self.problem, i, out)
        return {i: out[i] for i in self.problem.nodes}


def _replica_range(problem: HelixProblem, i: Node, out: dict) -> tuple[int, int]:
    """A spare node copies the range of the placed node it has the fastest link to (its region, so its
    flow can join that segment's neighbours), then the range it runs fastest; adding a node never
    lowers the max flow."""
    K = problem.max_layers(i)
    best, key = None, None
    for j, (s, e) in out.items():
        if e - s <= K:
            k = (problem.link_capacity(i, j) or 0.0, problem.throughput[i][e - s - 1])
            if key is None or k > key:
                best, key = (s, e), k
    return best if best is not None else (0, min(K, problem.num_layers))


def _polish_swaps(problem: HelixProblem, placement: dict, value: float, budget: int):
    """Swap the ranges of two nodes with the same throughput table while that raises the max flow
    (it only changes which cross-region links the boundaries use); at most ``budget`` evaluations.
    Returns ``(placement, value)``."""
    nodes = problem.nodes
    pairs = [(a, b) for a, b in itertools.combinations(nodes, 2)
             if problem.throughput[a] == problem.throughput[b]]
    improved = True
    while improved and budget > 0:
        improved = False
        for a, b in pairs:
            if budget <= 0:
                break
            if placement[a] == placement[b]:
                continue
            trial = dict(placement)
            trial[a], trial[b] = placement[b], placement[a]
            budget -= 1
            v = max_flow(problem, trial).value_tokens_per_s
            if v > value + 1e-6:
                placement, value, improved = trial, v, True
    return placement, value


def regional_chain_placement(problem: HelixProblem, *, max_regions: int = 4, max_stages: int = 4,
                             max_chains: int = 4, max_width: int = 3, max_lane_states: int = 400,
                             swap_budget: int = 300) -> dict[Node, tuple[int, int]]:
    """Geo-aware placement: regions as pipeline stages / parallel lanes with widened boundaries.

    For every plan (an ordered partition of the regions of :func:`fast_link_regions` into at most ``max_stages``
    stages; a stage's regions are parallel lanes over the same layers, e.g. two weak regions each run
    layers ``[0, b)`` and hand off to a strong region's tail ``[b, L)``), a DP picks each region's block
    shape (``1..max_chains`` parallel chains, or one chain with end groups of ``1..max_width`` nodes) and
    a bisection the largest flow target (tokens/s) such that the stages cover ``L`` layers and every
    stage boundary, crossed through ``(#ending nodes) x (#starting nodes)`` links of the regions' mean
    cross capacity, carries it. Every plan's placement is scored by :func:`max_flow`; the best (or the
    :func:`chain_placement`, if better) is polished by same-type node swaps (``swap_budget`` max-flow
    evaluations). Deterministic, no time limit. With a single region it is :func:`chain_placement`.
    """
    regions = fast_link_regions(problem)
    if len(regions) == 1:
        return chain_placement(problem)
    regions = _merge_regions(problem, regions, max_regions)
    planner = _RegionalPlanner(problem, regions, _shapes(max_chains, max_width), max_lane_states)
    best, best_val = None, -1.0
    try:
        best = chain_placement(problem)
        best_val = max_flow(problem, best).value_tokens_per_s
    except ConfigError:
        pass
    for plan in _stage_plans(len(regions), max_stages):
        found = planner.best_path(plan)
        if found is None:
            continue
        flow, path = found
        placement = planner.build(plan, path, planner.split_layers(plan, path, flow))
        val = flow_value_or_zero(problem, placement)  # 0 for an invalid placement: never kept
        if val > best_val + 1e-6:
            best, best_val = placement, val
    if best is None:
        raise ConfigError(f"no regional plan covers L = {problem.num_layers} layers on this cluster")
    return _polish_swaps(problem, best, best_val, swap_budget)[0]
