"""AMPD's online algorithms as policies of the session engine (``simulators/serving/sessions.py``).

* :class:`AmpdPlacement` -- Algorithm 1 (spec §2.3) as a :class:`gpusched.policy.PrefillPlacement`: it turns the
  engine's worker views into :class:`~formulations.ampd.tasks.DecodeWorkerView`/``PrefillWorkerView`` snapshots
  and calls :func:`~formulations.ampd.routing.route_prefill` with the run's cost model (Eq. (1)-(2)) and a
  generator seeded from the run's seed (line 1's random order; ``random_order=False`` visits workers by index).
  It counts which line decided (``rules``).
* :class:`AmpdReorderScheduler` -- Algorithm 2 (spec §2.4) as a :class:`gpusched.policy.BatchScheduler` for a
  worker's prefill queue: :func:`~formulations.ampd.reorder.reorder_window` over the first ``window`` queued
  tasks with the engine's predicted compute times on this worker (``extra["t_pre_s"]``), the anti-starvation
  counters kept in ``extra["postponed"]``; it dequeues exactly one task. ``window=1`` is FCFS.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from gpusched.errors import ConfigError
from gpusched.policy import SeqState, SessionPrefillView, SessionWorkerView, StepPlan

from .reorder import WINDOW, reorder_window
from .routing import SLACK_DECODE, SLACK_PREFILL, CostModel, route_prefill
from .tasks import DecodeWorkerView, PrefillTask, PrefillWorkerView, Slo

__all__ = ["AmpdPlacement", "AmpdReorderScheduler"]


def _task(v: SessionPrefillView, decode_key) -> PrefillTask:
    return PrefillTask(v.session_id, v.hist_tokens, v.incr_tokens, v.enqueue_time_s, decode_key, v.postponed)


class AmpdPlacement:
    """Algorithm 1 over the engine's views (module docstring). ``cost``: T_pre/T_kv keyed by the workers' keys
    (a :class:`~formulations.ampd.perf.PerfModel`); ``slo``: the thresholds; ``slack_prefill``/``slack_decode``:
    α/β; ``seed``: seeds line 1's random order; ``count_running``: add the running prefill's remaining time to
    Eq. (1)/(2) (pitfall 6; off as in the paper)."""

    def __init__(self, cost: CostModel, slo: Slo, slack_prefill: float = SLACK_PREFILL,
                 slack_decode: float = SLACK_DECODE, seed: int = 0, random_order: bool = True,
                 count_running: bool = False, name: str = "ampd"):
        if not isinstance(slo, Slo):
            raise ConfigError(f"AmpdPlacement: slo must be a formulations.ampd.Slo, got {type(slo).__name__}")
        if not isinstance(cost, CostModel):
            raise ConfigError("AmpdPlacement: cost must offer prefill_time_s(h, m, worker) and kv_time_s(l, src, dst)")
        self.cost, self.slo, self.name = cost, slo, name
        self.slack_prefill, self.slack_decode, self.count_running = slack_prefill, slack_decode, count_running
        self.rng = np.random.default_rng([seed, 18]) if random_order else None
        self.rules: Counter = Counter()

    def place(self, task: SessionPrefillView, decode: SessionWorkerView,
              prefill_workers: Sequence[SessionWorkerView], now_s: float) -> int | None:
        dv = DecodeWorkerView(decode.key, decode.itl_hat_s, tuple(_task(q, decode.key) for q in decode.queue),
                              decode.running_remaining_s)
        pv = [PrefillWorkerView(w.key, w.ttft_hat_s, tuple(_task(q, decode.key) for q in w.queue),
                                w.running_remaining_s) for w in prefill_workers]
        d = route_prefill(_task(task, decode.key), dv, pv, self.cost, self.slo, self.slack_prefill,
                          self.slack_decode, self.rng, self.count_running)
        self.rules[("local " if d.local else "remote ") + d.rule] += 1
        return None if d.local else prefill_workers[d.index].index


class AmpdReorderScheduler:
    """Algorithm 2 on one worker's prefill queue (module docstring). ``ttft_slo_s``: TTFT_thres (s);
    ``window``: w (also the postponement cap unless ``max_postponements`` is given)."""

    def __init__(self, ttft_slo_s: float, window: int = WINDOW, max_postponements: int | None = None,
                 name: str = "ampd-reorder"):
        if not isinstance(ttft_slo_s, (int, float)) or not ttft_slo_s > 0:
            raise ConfigError(f"AmpdReorderScheduler: ttft_slo_s must be > 0 seconds, got {ttft_slo_s!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"AmpdReorderScheduler: window must be an int >= 1, got {window!r}")
        self.ttft_slo_s, self.window, self.max_postponements, self.name = ttft_slo_s, window, max_postponements, name

    def schedule(self, waiting: list[SeqState], running: list[SeqState], kv, now_s: float) -> StepPlan:
        if not waiting:
            return StepPlan()
        head = waiting[:self.window]
        for s in head:
            if not s.extra or "t_pre_s" not in s.extra:
                raise ConfigError("ampd-reorder: queued tasks need extra['t_pre_s'] (the session engine sets it)")
        tasks = [PrefillTask(k, s.num_computed_tokens, s.prompt_tokens - s.num_computed_tokens, s.arrival_time_s,
                             0, s.extra.get("postponed", 0)) for k, s in enumerate(head)]
        times = [s.extra["t_pre_s"] for s in head]
        r = reorder_window(tasks, now_s, self.ttft_slo_s, lambda t: times[t.session], self.window,
                           self.max_postponements)
        for p in r.postponed:
            head[p].extra["postponed"] = head[p].extra.get("postponed", 0) + 1
        waiting[:len(head)] = [head[p] for p in r.order]
        seq = waiting.pop(0)
        running.append(seq)
        return StepPlan([(seq, seq.prompt_tokens - seq.num_computed_tokens)])
