"""Prefill gates: which class's oldest waiting request prefills in an idle slot (spec §2.4, §2.5, §2.8).

* :class:`OccupancyGate` -- Gate-and-Route's gate (Sec. 4.1): the class furthest below its planned
  prefill occupancy, by the deviation index ``xi_i = (X_i - n x_i*) / x_i*``.
* :class:`PriorityGate` -- Prioritize-and-Route's gate (Sec. 4.2.1): a fixed class order (largest
  ``D_i / P_i`` first).
* :class:`FcfsGate` -- no gate: the oldest waiting request of any class (the FI-WSP and FG-SP baselines).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from gpusched.errors import ConfigError

from .model import FluidModel
from .protocol import ClusterView

__all__ = ["OccupancyGate", "PriorityGate", "FcfsGate"]

_TIE_RTOL = 1e-9  # xi values this close (relative to max(1, |xi|)) are a tie: float noise, e.g. 10 * 0.3 != 3


def _per_class(name: str, values: Sequence[float], size: int | None = None) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not out or (size is not None and len(out) != size):
        raise ConfigError(f"{name} has {len(out)} entries, expected {size if size is not None else 'at least 1'}")
    if any(not math.isfinite(v) or v < 0 for v in out):
        raise ConfigError(f"{name} = {out} must be finite and >= 0")
    return out


class OccupancyGate:
    """The prefill gate of Gate-and-Route (Sec. 4.1, spec §2.4).

    Among the classes with a waiting request, admit the one with the smallest occupancy deviation
    ``xi_i = (X_i - n x_i*) / x_i*`` (``X_i`` = class-``i`` requests in prefill on the cluster); ties (within
    a relative 1e-9) go to the largest excess queue ``delta_i = Q_p,i - n q_p,i*`` ([R]: the paper's undefined
    target ``Q†_P,i`` is the fluid queue ``n q_p,i*``), then to the lowest index.

    A class with ``x_i* = 0`` is planned to abandon and is never admitted ([R], default); with
    ``admit_unplanned=True`` it is admitted only when no planned class waits (work conservation).

    Args:
        x_star: (I,) planned prefill occupancies per GPU, ``x*`` of the LP.
        q_prefill_star: (I,) planned prefill queues per GPU, ``q_p*`` of the LP.
        num_gpus: ``n``, the cluster size.
        admit_unplanned: see above.
    """

    def __init__(self, x_star: Sequence[float], q_prefill_star: Sequence[float], num_gpus: int,
                 admit_unplanned: bool = False):
        self.x_star = _per_class("x_star", x_star)
        self.q_star = _per_class("q_prefill_star", q_prefill_star, len(self.x_star))
        if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, np.integer)) or num_gpus < 1:
            raise ConfigError(f"num_gpus = {num_gpus!r} must be an integer >= 1")
        self.num_gpus = int(num_gpus)
        self.admit_unplanned = bool(admit_unplanned)

    def deviation(self, view: ClusterView, cls: int) -> float:
        """``xi_cls`` at this state (``inf`` for an unplanned class)."""
        x = self.x_star[cls]
        return (view.prefilling[cls] - self.num_gpus * x) / x if x > 0 else math.inf

    def choose(self, view: ClusterView) -> int | None:
        n, waiting = self.num_gpus, view.waiting
        candidates = [i for i in range(len(self.x_star))
                      if waiting[i] > 0 and (self.x_star[i] > 0 or self.admit_unplanned)]
        if not candidates:
            return None
        xi = {i: self.deviation(view, i) for i in candidates}
        best = min(xi.values())
        tol = _TIE_RTOL * max(1.0, abs(best)) if math.isfinite(best) else 0.0
        tied = [i for i in candidates if xi[i] <= best + tol]
        return max(tied, key=lambda i: (waiting[i] - n * self.q_star[i], -i))


class PriorityGate:
    """A strict class priority: the first class of ``order`` with a waiting request (spec §2.5).

    :meth:`prioritize_and_route` builds Prioritize-and-Route's order: largest ``D_i / P_i`` first, ties to the
    lower index ([R]).
    """

    def __init__(self, order: Sequence[int]):
        self.order = tuple(int(i) for i in order)
        if sorted(self.order) != list(range(len(self.order))):
            raise ConfigError(f"order = {order!r} must be a permutation of the class indices 0..I-1")

    @classmethod
    def prioritize_and_route(cls, model: FluidModel) -> "PriorityGate":
        ratio = model.decode_tokens / model.prompt_tokens
        return cls(sorted(range(model.num_classes), key=lambda i: (-ratio[i], i)))

    def choose(self, view: ClusterView) -> int | None:
        waiting = view.waiting
        for i in self.order:
            if waiting[i] > 0:
                return i
        return None


class FcfsGate:
    """No gate: the class of the oldest waiting request (earliest arrival across classes; ties to the lower
    index)."""

    def choose(self, view: ClusterView) -> int | None:
        best, best_t = None, math.inf
        for i, t in enumerate(view.oldest_waiting_s):
            if view.waiting[i] > 0 and t < best_t:
                best, best_t = i, t
        return best
