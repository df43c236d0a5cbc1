"""AMPD's TTFT-aware prefill reordering: Algorithm 2 with Eq. (3)-(4) and the anti-starvation cap (spec §2.4).

Each time a worker is about to start a prefill, it looks at the first ``w`` tasks ``W`` of its queue and
tries every ordering π of them. With ``C(π(k)) = Σ_{j<=k} t_pre(π(j))`` (Eq. 3, relative to now) the number
of tasks that would meet the TTFT threshold is

    S_π = Σ_k 1[(T_now - T_enq(π(k))) + C(π(k)) <= TTFT_thres]                         (Eq. 4)

The ordering with the largest ``S_π`` wins; its first task runs now. Orderings are enumerated in
lexicographic order of queue positions (identity first) and a later ordering wins only with a strictly
larger ``S_π``, so FCFS order survives every tie (spec [R]). A task is *postponed* by π when its position in
π is strictly later than in the queue ([R]); each postponement increments its counter, and an ordering that
would postpone a task whose counter has reached the cap (``w`` by default [P]) is skipped. The identity is
never skipped, so a choice always exists. ``w = 1`` is FCFS. Cost: ``w!`` orderings (the paper uses w <= 5).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from gpusched.errors import ConfigError

from .tasks import PrefillTask

__all__ = ["Reordering", "reorder_window", "WINDOW"]

WINDOW = 3  # w [P]


@dataclass(frozen=True)
class Reordering:
    """Algorithm 2's choice for one dequeue.

    order : queue positions of the window in their new order (head first); ``order[0]`` runs now.
    postponed : queue positions whose tasks this order moves later (their counters go up by one).
    satisfied : S_π of the chosen order (Eq. 4).
    orderings_evaluated : orderings scored (``w!`` minus the ones the cap skipped).
    """

    order: tuple[int, ...]
    postponed: tuple[int, ...]
    satisfied: int
    orderings_evaluated: int

    @property
    def picked(self) -> int:
        """Queue position of the task to run now."""
        return self.order[0]

    def apply(self, queue: Sequence[PrefillTask]) -> tuple[PrefillTask, list[PrefillTask]]:
        """(task to run now, the queue left behind): the window reordered, postponed counters incremented,
        the tail untouched."""
        queue = list(queue)
        w = len(self.order)
        if len(queue) < w or sorted(self.order) != list(range(w)):
            raise ConfigError(f"Reordering.apply: this order {self.order} was made for a queue of at least {w} "
                              f"tasks, got {len(queue)}")
        head = [replace(queue[p], postponed=queue[p].postponed + 1) if p in self.postponed else queue[p]
                for p in self.order]
        return head[0], head[1:] + queue[w:]


def reorder_window(queue: Sequence[PrefillTask], now_s: float, ttft_slo_s: float,
                   prefill_time_s: Callable[[PrefillTask], float], window: int = WINDOW,
                   max_postponements: int | None = None) -> Reordering:
    """Algorithm 2 on ``queue`` (head first) at time ``now_s`` (see the module docstring).

    Args:
        queue: the worker's pending prefills; must not be empty.
        now_s: T_now, seconds.
        ttft_slo_s: TTFT_thres, seconds.
        prefill_time_s: t_pre of a task on *this* worker (e.g. ``lambda t: perf.prefill_time_s(t.hist_tokens,
            t.incr_tokens, worker)``).
        window: w, the number of head tasks considered (>= 1).
        max_postponements: the anti-starvation cap; ``None`` uses ``window`` [P].
    """
    queue = list(queue)
    if not queue:
        raise ConfigError("reorder_window: the queue is empty; there is nothing to dequeue")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"reorder_window: window must be an int >= 1, got {window!r}")
    cap = window if max_postponements is None else max_postponements
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise ConfigError(f"reorder_window: max_postponements must be an int >= 0, got {cap!r}")
    for name, v in (("now_s", now_s), ("ttft_slo_s", ttft_slo_s)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"reorder_window: {name} must be a finite number of seconds, got {v!r}")
    head = queue[:window]
    for k, task in enumerate(head):
        if not isinstance(task, PrefillTask):
            raise ConfigError(f"reorder_window: queue[{k}] is a {type(task).__name__}, not a PrefillTask")
    t_pre = [float(prefill_time_s(task)) for task in head]
    for k, t in enumerate(t_pre):
        if not math.isfinite(t) or t < 0:
            raise ConfigError(f"reorder_window: prefill_time_s(queue[{k}]) = {t!r}; need a finite time >= 0")
    waited = [now_s - task.enqueue_time_s for task in head]
    capped = {p for p, task in enumerate(head) if task.postponed >= cap}

    best, best_s, best_late, evaluated = None, -1, (), 0
    for order in itertools.permutations(range(len(head))):            # lexicographic, identity first
        late = tuple(p for new, p in enumerate(order) if new > p)     # postponed: moved strictly later
        if capped.intersection(late):
            continue
        evaluated += 1
        done, s = 0.0, 0
        for p in order:                                                # Eq. (3) then Eq. (4)
            done += t_pre[p]
            s += waited[p] + done <= ttft_slo_s
        if s > best_s:                                                 # strict: the first found keeps ties
            best, best_s, best_late = order, s, late
    return Reordering(best, tuple(sorted(best_late)), best_s, evaluated)
