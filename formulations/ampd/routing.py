"""AMPD's adaptive prefill routing: Algorithm 1 with the cost estimates of Eq. (1) and Eq. (2) (spec §2.3).

For a prefill task of a session bound to decode worker d:

1. visit the prefill workers in random order; return the first whose windowed TTFT satisfies
   ``TTFT_hat[i] <= slack_prefill * TTFT_thres`` (the first eligible one, not the least loaded, pitfall 4);
2. else, if ``ITL_hat[d] <= slack_decode * ITL_thres``, run it locally on d;
3. else return the cheapest of

   * Eq. (1): ``t_local = T_pre(task; θ_d) + Σ_{k in queue[d]} T_pre(k; θ_d)``
   * Eq. (2): ``t_remote[i] = T_pre(task; θ_i) + T_kv(l_hist; d -> i) + T_kv(l_incr; i -> d)
     + Σ_{k in queue[i]} T_pre(k; θ_i)``

   with ties to ``local`` first, then to the lowest worker index (spec [R]).

Defaults: ``slack_prefill = 0.9`` (the paper's α), ``slack_decode = 0.85`` (β) [P]; named so to keep them
apart from the network α-β (pitfall 3). The queue sums ignore reordering and the prefill in execution, as
the paper does [P]; ``count_running=True`` adds the running prefill's remaining time (pitfall 6, [R]).
The random order comes from the caller's seeded generator; ``rng=None`` visits workers in index order
(deterministic, for tests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Protocol, Sequence, runtime_checkable

import numpy as np

from gpusched.errors import ConfigError

from .tasks import DecodeWorkerView, PrefillTask, PrefillWorkerView, Slo

__all__ = ["CostModel", "RouteDecision", "route_prefill", "local_cost_s", "remote_cost_s",
           "SLACK_PREFILL", "SLACK_DECODE"]

SLACK_PREFILL = 0.9   # α of Algorithm 1 [P]
SLACK_DECODE = 0.85   # β of Algorithm 1 [P]


@runtime_checkable
class CostModel(Protocol):
    """What routing reads of the performance model (:class:`~formulations.ampd.perf.PerfModel` is one)."""

    def prefill_time_s(self, hist_tokens: int, incr_tokens: int, worker: Hashable) -> float: ...

    def kv_time_s(self, tokens: int, src: Hashable, dst: Hashable) -> float: ...


@dataclass(frozen=True)
class RouteDecision:
    """Where a prefill runs.

    local : True to run on the session's decode worker, False on prefill worker ``index``.
    worker : the chosen worker's key (the decode worker's for local).
    index : position of the chosen prefill worker in the list given to :func:`route_prefill` (None if local).
    rule : which line decided: ``"prefill-slack"`` (line 2), ``"decode-slack"`` (line 3) or ``"min-cost"``
        (line 9).
    local_cost_s, remote_costs_s : the Eq. (1)/(2) estimates when line 9 ran (None otherwise); remote costs
        in the order of the prefill-worker list.
    """

    local: bool
    worker: Hashable
    index: int | None
    rule: str
    local_cost_s: float | None = None
    remote_costs_s: tuple[float, ...] | None = None


def _queue_s(cost: CostModel, queue: Sequence[PrefillTask], worker: Hashable) -> float:
    return sum(cost.prefill_time_s(k.hist_tokens, k.incr_tokens, worker) for k in queue)


def local_cost_s(task: PrefillTask, decode: DecodeWorkerView, cost: CostModel,
                 count_running: bool = False) -> float:
    """Eq. (1): predicted TTFT (s) of ``task`` run locally on ``decode``."""
    t = cost.prefill_time_s(task.hist_tokens, task.incr_tokens, decode.key) + _queue_s(cost, decode.queue, decode.key)
    return t + decode.running_remaining_s if count_running else t


def remote_cost_s(task: PrefillTask, decode: DecodeWorkerView, worker: PrefillWorkerView, cost: CostModel,
                  count_running: bool = False) -> float:
    """Eq. (2): predicted TTFT (s) of ``task`` on prefill ``worker``: compute + history read from the decode
    worker + increment return + the worker's queue."""
    t = (cost.prefill_time_s(task.hist_tokens, task.incr_tokens, worker.key)
         + cost.kv_time_s(task.hist_tokens, decode.key, worker.key)
         + cost.kv_time_s(task.incr_tokens, worker.key, decode.key)
         + _queue_s(cost, worker.queue, worker.key))
    return t + worker.running_remaining_s if count_running else t


def _slack(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"route_prefill: {name} must be a finite number > 0, got {value!r}")


def route_prefill(task: PrefillTask, decode: DecodeWorkerView, prefill_workers: Sequence[PrefillWorkerView],
                  cost: CostModel, slo: Slo, slack_prefill: float = SLACK_PREFILL,
                  slack_decode: float = SLACK_DECODE, rng: np.random.Generator | None = None,
                  count_running: bool = False) -> RouteDecision:
    """Algorithm 1: local or which prefill worker (see the module docstring).

    Args:
        task: the prefill to place (its ``decode_worker`` is not read; ``decode`` is the bound worker).
        decode: the session's decode worker, with its windowed ITL and local prefill queue.
        prefill_workers: every prefill worker, with windowed TTFT and queue; may be empty (then local).
        cost: T_pre and T_kv (a :class:`~formulations.ampd.perf.PerfModel` or any :class:`CostModel`).
        slo: TTFT and ITL thresholds.
        slack_prefill, slack_decode: α and β of Algorithm 1.
        rng: the coordinator's seeded generator for the random visiting order of line 1 (one permutation
            drawn per call); ``None`` visits prefill workers in list order.
        count_running: add each worker's ``running_remaining_s`` to its Eq. (1)/(2) estimate.
    """
    if not isinstance(task, PrefillTask):
        raise ConfigError(f"route_prefill: task must be a PrefillTask, got {type(task).__name__}")
    if not isinstance(decode, DecodeWorkerView):
        raise ConfigError(f"route_prefill: decode must be a DecodeWorkerView, got {type(decode).__name__}")
    workers = list(prefill_workers)
    for k, w in enumerate(workers):
        if not isinstance(w, PrefillWorkerView):
            raise ConfigError(f"route_prefill: prefill_workers[{k}] is a {type(w).__name__}, not a PrefillWorkerView")
    _slack("slack_prefill", slack_prefill)
    _slack("slack_decode", slack_decode)
    order = range(len(workers)) if rng is None else rng.permutation(len(workers)).tolist()
    for i in order:                                                              # lines 1-2
        if workers[i].ttft_hat_s <= slack_prefill * slo.ttft_s:
            return RouteDecision(False, workers[i].key, i, "prefill-slack")
    if decode.itl_hat_s <= slack_decode * slo.itl_s:                             # line 3
        return RouteDecision(True, decode.key, None, "decode-slack")
    t_local = local_cost_s(task, decode, cost, count_running)                   # line 4, Eq. (1)
    t_remote = tuple(remote_cost_s(task, decode, w, cost, count_running) for w in workers)  # lines 5-8, Eq. (2)
    best, best_cost = None, t_local                                              # line 9: ties -> local,
    for i, t in enumerate(t_remote):                                             # then the lowest index
        if t < best_cost:
            best, best_cost = i, t
    if best is None:
        return RouteDecision(True, decode.key, None, "min-cost", t_local, t_remote)
    return RouteDecision(False, workers[best].key, best, "min-cost", t_local, t_remote)
