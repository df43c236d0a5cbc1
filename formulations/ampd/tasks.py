"""The objects AMPD's online algorithms read: a prefill task and what a worker exposes (spec section 1).

A prefill task is the paper's tuple (session, l_hist, l_incr, T_enq, d) [P] plus the postponement counter of
Algorithm 2. Workers are read through :class:`PrefillWorkerView` / :class:`DecodeWorkerView`: their key in the
cost model (θ), their windowed statistics, and their prefill queue. These are plain frozen snapshots, so the
algorithms are pure functions that an engine, a test or a notebook can call alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable

from gpusched.errors import ConfigError

__all__ = ["PrefillTask", "PrefillWorkerView", "DecodeWorkerView", "Slo"]


def _count(owner: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{owner}: {name} must be an int >= 0, got {value!r}")


def _seconds(owner: str, name: str, value, positive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(f"{owner}: {name} must be a finite number {'>' if positive else '>='} 0 seconds, "
                          f"got {value!r}")


@dataclass(frozen=True)
class PrefillTask:
    """One prefill: ``incr_tokens`` new tokens over ``hist_tokens`` cached ones of ``session``, bound to
    decode worker ``decode_worker``, enqueued at ``enqueue_time_s``; ``postponed`` counts how often
    Algorithm 2 moved it later (spec §2.4). ``hist_tokens = 0`` is an initial prefill."""

    session: Hashable
    hist_tokens: int
    incr_tokens: int
    enqueue_time_s: float = 0.0
    decode_worker: Hashable = 0
    postponed: int = 0

    def __post_init__(self):
        owner = f"PrefillTask(session={self.session!r})"
        _count(owner, "hist_tokens", self.hist_tokens)
        _count(owner, "incr_tokens", self.incr_tokens)
        if self.incr_tokens == 0:
            raise ConfigError(f"{owner}: incr_tokens must be >= 1 (a prefill computes at least one new token)")
        _seconds(owner, "enqueue_time_s", self.enqueue_time_s)
        _count(owner, "postponed", self.postponed)


def _queue(owner: str, queue) -> tuple[PrefillTask, ...]:
    queue = tuple(queue)
    for k, task in enumerate(queue):
        if not isinstance(task, PrefillTask):
            raise ConfigError(f"{owner}: queue[{k}] is a {type(task).__name__}, not a PrefillTask")
    return queue


def _check_view(view, stat: str) -> None:
    """Validate a worker view's windowed statistic, remaining time and queue (the queue becomes a tuple)."""
    owner = f"{type(view).__name__}({view.key!r})"
    _seconds(owner, stat, getattr(view, stat))
    _seconds(owner, "running_remaining_s", view.running_remaining_s)
    object.__setattr__(view, "queue", _queue(owner, view.queue))


@dataclass(frozen=True)
class PrefillWorkerView:
    """A prefill worker as Algorithm 1 reads it: ``key`` in the cost model, ``ttft_hat_s`` = average TTFT of
    prefills completed on it in the last window (0 when none: an idle worker is eligible, spec §2.3 [R]),
    ``queue`` its pending prefills (head first), ``running_remaining_s`` the time left of the prefill it is
    executing (read only when the router is asked to count it, spec pitfall 6)."""

    key: Hashable
    ttft_hat_s: float = 0.0
    queue: tuple[PrefillTask, ...] = ()
    running_remaining_s: float = 0.0

    def __post_init__(self):
        _check_view(self, "ttft_hat_s")


@dataclass(frozen=True)
class DecodeWorkerView:
    """A decode worker as Algorithm 1 reads it: ``key`` in the cost model, ``itl_hat_s`` = its average ITL
    over the last window (0 when idle), ``queue`` its *local* prefill queue, ``running_remaining_s`` as for
    :class:`PrefillWorkerView`."""

    key: Hashable
    itl_hat_s: float = 0.0
    queue: tuple[PrefillTask, ...] = ()
    running_remaining_s: float = 0.0

    def __post_init__(self):
        _check_view(self, "itl_hat_s")


@dataclass(frozen=True)
class Slo:
    """Service-level objectives (seconds): ``ttft_s`` for every prefill task (initial and incremental),
    ``itl_s`` for the inter-token latency (spec §1)."""

    ttft_s: float
    itl_s: float

    def __post_init__(self):
        _seconds("Slo", "ttft_s", self.ttft_s, positive=True)
        _seconds("Slo", "itl_s", self.itl_s, positive=True)
