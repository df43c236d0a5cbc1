"""One worker serving its prefill queue with Algorithm 2, replayed exactly: AMPD's dequeue loop in isolation.

Not a serving simulator: one worker, prefills only, each lasting its given ``t_pre``, run back to back without
preemption; no decode, no KV, no network. It exists to test Algorithm 2 end to end (the counters it carries
from one dequeue to the next, the cap, FCFS at ``w = 1``) and to show what reordering buys on a given queue.

The loop: when the worker is free at time t, tasks with ``enqueue_time_s <= t`` join the queue in enqueue
order (ties by input order); if the queue is empty the worker idles to the next enqueue; otherwise
:func:`~formulations.ampd.reorder.reorder_window` picks the task to run from ``t`` to ``t + t_pre``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd

from gpusched.errors import ConfigError

from .reorder import WINDOW, reorder_window
from .tasks import PrefillTask

__all__ = ["replay_prefill_queue"]


def replay_prefill_queue(tasks: Sequence[PrefillTask], prefill_time_s: Callable[[PrefillTask], float],
                         ttft_slo_s: float, window: int = WINDOW, max_postponements: int | None = None,
                         start_s: float = 0.0) -> pd.DataFrame:
    """Serve ``tasks`` on one worker (module docstring) and return one row per task in service order:
    ``position`` (index in ``tasks``), ``session``, ``enqueue_time_s``, ``start_s``, ``finish_s``, ``ttft_s``
    (finish - enqueue: the first token comes with the prefill), ``postponed`` (its final counter) and
    ``meets_ttft``."""
    tasks = list(tasks)
    for k, t in enumerate(tasks):
        if not isinstance(t, PrefillTask):
            raise ConfigError(f"replay_prefill_queue: tasks[{k}] is a {type(t).__name__}, not a PrefillTask")
    arrivals = sorted(range(len(tasks)), key=lambda k: (tasks[k].enqueue_time_s, k))
    queue: list[PrefillTask] = []
    positions: list[int] = []  # input position of each queued task, kept in queue order
    rows, now, nxt = [], float(start_s), 0
    while nxt < len(arrivals) or queue:
        while nxt < len(arrivals) and tasks[arrivals[nxt]].enqueue_time_s <= now:
            queue.append(tasks[arrivals[nxt]])
            positions.append(arrivals[nxt])
            nxt += 1
        if not queue:
            now = max(now, tasks[arrivals[nxt]].enqueue_time_s)
            continue
        choice = reorder_window(queue, now, ttft_slo_s, prefill_time_s, window, max_postponements)
        task, queue = choice.apply(queue)
        positions = [positions[p] for p in choice.order] + positions[len(choice.order):]
        finish = now + float(prefill_time_s(task))
        ttft = finish - task.enqueue_time_s
        rows.append(dict(position=positions.pop(0), session=task.session, enqueue_time_s=task.enqueue_time_s,
                         start_s=now, finish_s=finish, ttft_s=ttft, postponed=task.postponed,
                         meets_ttft=ttft <= ttft_slo_s))
        now = finish
    return pd.DataFrame(rows, columns=["position", "session", "enqueue_time_s", "start_s", "finish_s", "ttft_s",
                                       "postponed", "meets_ttft"])
