"""Decode routers: where a request that finished prefill decodes (spec §2.4, §2.7, §2.8).

* :class:`GreedyRouter` -- Gate-and-Route's router (Sec. 4.1): a free slot in the first pool of its
  preference order that has one (solo before mixed), uniformly at random among that pool's GPUs, else the
  single FCFS decode buffer, whose oldest request takes the next freed slot.
* :class:`RandomizedRouter` -- the SLI-aware router (Sec. 5.1): a class-``i`` request targets the solo pool
  with probability ``p_s,i`` and the mixed pool otherwise; it takes a free slot there uniformly at random,
  or waits in that pool's buffer.
* :class:`ImmediateRouter` -- no routing: the decode keeps its prefill's slot on the same GPU (the
  "immediate" coupling of the WSP baselines).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from gpusched.errors import ConfigError

from ._draws import BlockDraws
from .protocol import MIXED, ROLES, SOLO, ClusterView

__all__ = ["GreedyRouter", "RandomizedRouter", "ImmediateRouter", "DECODE_BUFFER"]

DECODE_BUFFER = "decode"  # the greedy router's single FCFS buffer


def _uniform_pick(gpus: Sequence[int], u: float) -> int:
    return gpus[min(int(u * len(gpus)), len(gpus) - 1)]


class GreedyRouter:
    """Free slot in the first pool of ``order`` that has one, uniformly at random; else :data:`DECODE_BUFFER`.

    Args:
        order: GPU roles in preference order; ``("solo", "mixed")`` for Gate-and-Route, ``("shared",)`` for the
            decoupled WSP baselines.
        seed: seeds the uniform choice among free GPUs.
    """

    def __init__(self, order: Sequence[str] = (SOLO, MIXED), seed: int = 0):
        self.order = tuple(order)
        if not self.order or any(r not in ROLES for r in self.order):
            raise ConfigError(f"order = {order!r} must list GPU roles from {ROLES}")
        self._u = BlockDraws(np.random.default_rng(seed).random)

    def route(self, view: ClusterView, cls: int, from_gpu: int) -> int | str:
        for role in self.order:
            free = view.free_decode_gpus(role)
            if free:
                return _uniform_pick(free, self._u())
        return DECODE_BUFFER

    def pull(self, view: ClusterView, gpu: int) -> str | None:
        return DECODE_BUFFER


class RandomizedRouter:
    """The SLI-aware randomised router with split buffers (spec §2.7).

    A class-``i`` request draws ``U ~ U(0, 1)``: if ``U <= p_solo[i]`` it targets the solo pool, else the mixed
    pool; it takes a free slot of that pool uniformly at random or waits in that pool's buffer (named
    ``"solo"`` / ``"mixed"``). A freed slot pulls from its own pool's buffer.

    Args:
        p_solo: (I,) probabilities ``p_s,i`` in [0, 1] (:attr:`FluidSolution.p_solo`).
        seed: seeds the pool draws and the choice among free GPUs.
    """

    def __init__(self, p_solo: Sequence[float], seed: int = 0):
        self.p_solo = tuple(float(p) for p in p_solo)
        if not self.p_solo or any(not (0.0 <= p <= 1.0) or math.isnan(p) for p in self.p_solo):
            raise ConfigError(f"p_solo = {p_solo!r} must be probabilities in [0, 1], one per class")
        self._u = BlockDraws(np.random.default_rng(seed).random)

    def route(self, view: ClusterView, cls: int, from_gpu: int) -> int | str:
        pool = SOLO if self._u() <= self.p_solo[cls] else MIXED
        free = view.free_decode_gpus(pool)
        return _uniform_pick(free, self._u()) if free else pool

    def pull(self, view: ClusterView, gpu: int) -> str | None:
        role = view.roles[gpu]
        return role if role in (SOLO, MIXED) else None


class ImmediateRouter:
    """The decode stays in its prefill's slot on the same GPU; there is no decode buffer."""

    def route(self, view: ClusterView, cls: int, from_gpu: int) -> int | str:
        return from_gpu

    def pull(self, view: ClusterView, gpu: int) -> str | None:
        return None
