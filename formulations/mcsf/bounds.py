"""A combinatorial lower bound on the hindsight optimum's total latency (ours, not the paper's).

The paper proves MC-SF against the IP optimum; on the paper-size synthetic instances HiGHS often cannot
even finish the IP's root relaxation within a minute, so the ratio MC-SF / optimum would have no upper
bound. This bound gives one cheaply, from two facts true of every feasible schedule:

* request ``i`` started at ``p_i >= a_i`` completes at ``C_i = p_i + o_i >= a_i + o_i``;
* it holds ``s_i + t - p_i`` tokens in rounds ``t = p_i+1 .. p_i+o_i``, a memory *area* of
  ``A_i = o_i s_i + o_i (o_i + 1) / 2`` token-rounds, and rounds ``1..C`` hold at most ``M C`` in all, so
  when ``k`` requests have completed, ``M C_(k) >=`` the sum of the ``k`` smallest areas.

Hence the k-th smallest completion time is at least both the k-th smallest ``a_i + o_i`` and
``ceil(sum of the k smallest A / M)``, and ``TEL = sum_i C_i - sum_i a_i`` is at least the sum over ``k`` of the
larger of the two, minus ``sum_i a_i``.
"""
from __future__ import annotations

import numpy as np

from .model import Instance

__all__ = ["latency_lower_bound"]


def latency_lower_bound(instance: Instance) -> int:
    """Lower bound on the minimum total end-to-end latency (rounds) of ``instance``; see the module docstring."""
    a = np.asarray(instance.arrival, dtype=np.int64)
    s = np.asarray(instance.prompt, dtype=np.int64)
    o = np.asarray(instance.output, dtype=np.int64)
    area = o * s + o * (o + 1) // 2
    by_area = -(-np.cumsum(np.sort(area)) // instance.memory)  # ceil division
    by_length = np.sort(a + o)
    return int(np.maximum(by_area, by_length).sum() - a.sum())
