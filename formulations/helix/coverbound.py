"""Layer-cover bound: a combinatorial upper bound on the Helix max flow of *any* placement.

Why it holds. Every source-to-sink path of a placed cluster passes through nodes whose ranges chain
``[0, e_1), [e_1, e_2), ..., [., L)``, so exactly one node on the path holds layer ``l``: the nodes holding
``l`` form an s-t cut and a placement with flow ``F`` needs, for every layer ``l``,

    Σ_{i holds l} T_i(k_i) >= F.                                                        (layer cut)

Summing ``min(T_i, F)`` over layers gives the known total layer-throughput bound ``UB`` (spec §1.f-6). A
*rounded* version is much stronger. For an integer level ``m >= 2`` give a node holding ``k`` layers the
weight ``w_m(T, F) = min(m, ⌊(m-1) T / F⌋ + 1)``. Any multiset of nodes with ``Σ T >= F`` has
``Σ w_m >= m``: either one node has ``T >= F`` (weight ``m``) or ``Σ w > Σ (m-1) T / F >= m-1`` and the
weights are integers. Summing over the ``L`` layers, a placement with flow ``F`` satisfies

    Σ_i k_i · w_m(T_i(k_i), F) >= m · L,                                                (layer cover)

and since each node picks one ``k``, the left side is at most ``g_m(F) = Σ_i max_k k · w_m(T_i(k), F)``. So
``g_m(F) < m L`` proves that no placement reaches ``F``. ``m = 2`` reads "a layer held by no node with
``T >= F`` is held by at least two nodes". The bound ignores links, so it holds on any cluster graph
(and with partial inference too, where a path still holds every layer at least once).

On the 10-node LLaMA-30B cluster, ``m = 2`` gives exactly ``T_L4(6) = 286.587`` tokens/s: the published
optimum, proven without a solver. On the single 24-node LLaMA-2-70B cluster, ``m = 3`` gives
``T_A100(8) = 2045.64``, the chain heuristic's value.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from gpusched.errors import ConfigError

from .problem import HelixProblem

#: relative slack added to the returned bound, so that floating-point rounding of a breakpoint
#: ``(m-1) T / j`` can only make the bound larger (weaker), never invalid
_REL_SAFETY = 1e-9


@dataclass(frozen=True)
class CoverBound:
    """``bound_tokens_per_s``: no placement has a max flow above it; ``level``: the ``m`` that gives it
    (``None`` if the plain ``UB`` was tighter); ``per_level``: ``{m: bound}`` for every level tried."""

    bound_tokens_per_s: float
    level: int | None
    per_level: dict[int, float]


def cover_weight(throughput_tokens_per_s: float, flow_tokens_per_s: float, level: int) -> int:
    """``w_m(T, F) = min(m, ⌊(m-1) T / F⌋ + 1)``, rounded *up* at exact breakpoints (which only weakens
    the cut, so it stays valid under floating point)."""
    x = (level - 1) * throughput_tokens_per_s / flow_tokens_per_s
    return min(level, math.floor(x * (1 + 1e-12)) + 1)


def _tables(problem: HelixProblem) -> Counter:
    """Distinct throughput tables (truncated to ``L`` layers) with their multiplicities."""
    L = problem.num_layers
    return Counter(tuple(tab[:L]) for tab in problem.throughput.values())


def cover_capacity(problem: HelixProblem, flow_tokens_per_s: float, level: int) -> int:
    """``g_m(F) = Σ_i max_k k · w_m(T_i(k), F)``; a flow ``F`` is impossible if this is ``< m L``."""
    return sum(n * max(k * cover_weight(t, flow_tokens_per_s, level) for k, t in enumerate(tab, 1))
               for tab, n in _tables(problem).items())


def cover_bound_at_level(problem: HelixProblem, level: int) -> float:
    """Largest flow ``F`` with ``g_m(F) >= m L`` (``inf`` if even weight-1 nodes cover ``m`` times).

    ``g_m`` is non-increasing in ``F`` and only steps just above the breakpoints ``(m-1) T_i(k) / j``,
    ``j = 1..m-1``, so the answer is a breakpoint: binary search over the sorted breakpoints.
    """
    if not isinstance(level, int) or level < 2:
        raise ConfigError(f"cover level must be an int >= 2, got {level!r}")
    L = problem.num_layers
    need = level * L
    tabs = _tables(problem)
    if sum(n * len(tab) for tab, n in tabs.items()) >= need:
        return math.inf  # every node at weight 1 already covers each layer m times: no information
    cands = sorted({(level - 1) * t / j for tab in tabs for t in tab if t > 0 for j in range(1, level)},
                   reverse=True)
    if not cands or cover_capacity(problem, cands[-1], level) < need:
        return 0.0  # not even the smallest positive flow passes: the layers cannot all be covered
    lo, hi = 0, len(cands) - 1  # the feasible breakpoints form a suffix of ``cands``
    while lo < hi:
        mid = (lo + hi) // 2
        if cover_capacity(problem, cands[mid], level) >= need:
            hi = mid
        else:
            lo = mid + 1
    return cands[lo] * (1 + _REL_SAFETY)


def layer_cover_bound(problem: HelixProblem, max_level: int = 64) -> CoverBound:
    """The tightest of the layer-cover bounds for ``m = 2..max_level`` and ``UB`` (tokens/s).

    Costs ``O(max_level² · log)`` table look-ups over the distinct node types: milliseconds.
    """
    if not isinstance(max_level, int) or max_level < 2:
        raise ConfigError(f"max_level must be an int >= 2, got {max_level!r}")
    per = {m: cover_bound_at_level(problem, m) for m in range(2, max_level + 1)}
    m_best = min(per, key=per.get)
    ub = problem.upper_bound_tokens_per_s()
    if per[m_best] < ub:
        return CoverBound(per[m_best], m_best, per)
    return CoverBound(ub, None, per)
