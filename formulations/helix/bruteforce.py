"""Exhaustive enumeration of Helix placements: an independent check of the MILP on toy instances.

Every node picks one range ``[s, s+k)`` with ``1 <= k <= min(K_i, L)``; every combination is evaluated
with :func:`~formulations.helix.flow.max_flow` (OR-Tools), so nothing here shares code with the MILP
models. Interchangeable nodes (:func:`~formulations.helix.arcflow.node_classes`) are enumerated as
multisets, not sequences, since permuting their ranges keeps the flow.
"""
from __future__ import annotations

import itertools
import math

from gpusched.errors import ConfigError

from .arcflow import node_classes
from .flow import flow_value_or_zero
from .problem import HelixProblem, Node


def _ranges(problem: HelixProblem, node: Node) -> list[tuple[int, int]]:
    L = problem.num_layers
    return [(s, s + k) for k in range(1, min(problem.max_layers(node), L) + 1) for s in range(L - k + 1)]


def count_placements(problem: HelixProblem) -> int:
    """Number of placements :func:`brute_force_optimum` evaluates (multisets per interchangeable class)."""
    classes = node_classes(problem)
    return math.prod(math.comb(len(_ranges(problem, cl[0])) + len(cl) - 1, len(cl)) for cl in classes)


def brute_force_optimum(problem: HelixProblem, max_placements: int = 200_000
                        ) -> tuple[float, dict[Node, tuple[int, int]]]:
    """``(max flow in tokens/s, placement)`` of the best placement, by enumerating all of them.

    Raises :class:`ConfigError` if there are more than ``max_placements`` (name the count; shrink ``L``
    or the node count, or raise the limit).
    """
    n = count_placements(problem)
    if n > max_placements:
        raise ConfigError(f"{n} placements to enumerate exceed max_placements={max_placements}; "
                          f"use a smaller instance or raise the limit")
    classes = node_classes(problem)
    per_class = [list(itertools.combinations_with_replacement(_ranges(problem, cl[0]), len(cl)))
                 for cl in classes]
    best_val, best = -1.0, None
    for combo in itertools.product(*per_class):
        placement = {i: r for cl, rs in zip(classes, combo) for i, r in zip(cl, rs)}
        val = flow_value_or_zero(problem, placement)
        if val > best_val:
            best_val, best = val, placement
    return best_val, {i: best[i] for i in problem.nodes}
