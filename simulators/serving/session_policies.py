"""Baseline policies of the session engine (:mod:`simulators.serving.sessions`), registered by name.

* binder (kind ``router``) ``most-free-kv``: the decode worker with the most free KV, ties to the lowest index
  (Dynamo's binding "by memory usage" as the AMPD spec reads it, §2.2 [R]);
* placement (kind ``placement``) ``always-local`` (co-located serving: every prefill on the session's worker)
  and ``always-remote`` (Dynamo-like disaggregation: every prefill on the prefill worker with the fewest
  queued new tokens, the running task counting as its remaining seconds' worth; ties to the lowest index);
* prefill-queue schedulers (kind ``scheduler``) ``session-fcfs`` (first come first served) and
  ``session-inflight-first`` (vLLM-Continuum's order, AMPD spec §2.6 [R]: tasks of sessions already in flight,
  i.e. rounds after the first, before new sessions; FCFS within each class).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from gpusched import registry
from gpusched.errors import ConfigError
from gpusched.policy import InstanceView, SeqState, SessionPrefillView, SessionWorkerView, StepPlan

SOURCE = "simulators.serving.session_policies"


@dataclass
class MostFreeKvBinder:
    name: str = "most-free-kv"

    def route(self, request: SeqState, instances: Sequence[InstanceView], now_s: float) -> int:
        if not instances:
            raise ConfigError("most-free-kv: no decode worker can hold this session")
        return min(instances, key=lambda v: (-(v.kv_total_blocks - v.kv_used_blocks), v.index)).index


@dataclass
class AlwaysLocal:
    name: str = "always-local"

    def place(self, task: SessionPrefillView, decode: SessionWorkerView,
              prefill_workers: Sequence[SessionWorkerView], now_s: float) -> int | None:
        return None


@dataclass
class AlwaysRemote:
    name: str = "always-remote"
    needs_prefill_workers: bool = True

    def place(self, task: SessionPrefillView, decode: SessionWorkerView,
              prefill_workers: Sequence[SessionWorkerView], now_s: float) -> int | None:
        if not prefill_workers:
            raise ConfigError("always-remote: the cluster has no prefill worker; use always-local or add one")
        return min(prefill_workers, key=lambda w: (sum(t.incr_tokens for t in w.queue) + (w.running_remaining_s > 0),
                                                   w.index)).index


def _take(waiting: list[SeqState], running: list[SeqState], k: int) -> StepPlan:
    seq = waiting.pop(k)
    running.append(seq)
    return StepPlan([(seq, seq.prompt_tokens - seq.num_computed_tokens)])


@dataclass
class SessionFcfs:
    """Runs the oldest queued prefill (one task per step)."""

    name: str = "session-fcfs"

    def schedule(self, waiting, running, kv, now_s) -> StepPlan:
        return _take(waiting, running, 0) if waiting else StepPlan()


@dataclass
class InFlightFirst:
    """vLLM-Continuum's queue: the oldest task of an in-flight session (round > 0), else the oldest task."""

    name: str = "session-inflight-first"

    def schedule(self, waiting, running, kv, now_s) -> StepPlan:
        if not waiting:
            return StepPlan()
        k = next((i for i, s in enumerate(waiting) if s.extra and s.extra.get("round", 0) > 0), 0)
        return _take(waiting, running, k)


registry.register("router", "most-free-kv", lambda context, **knobs: MostFreeKvBinder(**knobs),
                  "session binder: the decode worker with the most free KV (ties: lowest index)", SOURCE)
registry.register("placement", "always-local", lambda context, **knobs: AlwaysLocal(**knobs),
                  "every session prefill on the session's decode worker (co-located serving)", SOURCE)
registry.register("placement", "always-remote", lambda context, **knobs: AlwaysRemote(**knobs),
                  "every session prefill on the least-queued prefill worker (Dynamo-like)", SOURCE)
registry.register("prefill-queue", "session-fcfs", lambda context, **knobs: SessionFcfs(**knobs),
                  "session engine prefill queue: first come first served", SOURCE)
registry.register("prefill-queue", "session-inflight-first", lambda context, **knobs: InFlightFirst(**knobs),
                  "session engine prefill queue: in-flight sessions first (vLLM-Continuum)", SOURCE)
