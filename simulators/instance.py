"""One serving instance as a SimPy process: an iteration loop of schedule -> step -> account.

Each iteration asks the instance's :class:`~gpusched.policy.BatchScheduler` for a plan, lasts the
step-time model's prediction for that plan, then advances every scheduled sequence: computed tokens
grow by what was scheduled, a sequence whose computed tokens reach its length samples one token, a
sequence that has sampled all its output tokens finishes and frees its KV.

Invariants checked as it runs (``check_invariants=True``): KV blocks in use never exceed capacity,
a sequence's computed tokens never exceed its length nor the KV slots it holds, and a plan never
schedules a sequence twice. Violations raise :class:`SimulationInvariantError`.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import simpy

from gpusched.errors import GpuschedError
from gpusched.kvcache import BlockManager
from gpusched.perf import StepTimeModel
from gpusched.policy import BatchScheduler, InstanceView, SeqState, StepPlan


class SimulationInvariantError(GpuschedError, AssertionError):
    """The engine reached a state that must never happen (a bug in an engine or a policy)."""


class InstanceEngine:
    """A SimPy process serving requests on one instance.

    Parameters
    ----------
    env : the SimPy environment.
    index : the instance's position in the cluster (recorded in results).
    scheduler : the batch scheduler deciding every step.
    step_model : predicts the duration (s) of a step from its prefill chunks and decode contexts.
    kv : the instance's block manager.
    role : ``colocated``, ``prefill`` or ``decode``.
    on_first_token, on_finish : callbacks ``f(seq, now_s)`` (e.g. hand-off in disaggregation, the next
        round of a session); a prefill-role instance hands a sequence off after its first token.
    record_timeline : keep one row per step (time, KV blocks, running, waiting, batch tokens).
    """

    def __init__(self, env: simpy.Environment, index: int, scheduler: BatchScheduler,
                 step_model: StepTimeModel, kv: BlockManager, role: str = "colocated",
                 on_first_token: Callable[[SeqState, float], None] | None = None,
                 on_finish: Callable[[SeqState, float], None] | None = None,
                 record_timeline: bool = True, check_invariants: bool = True):
        self.env = env
        self.index = index
        self.scheduler = scheduler
        self.step_model = step_model
        self.kv = kv
        self.role = role
        self.on_first_token = on_first_token
        self.on_finish = on_finish
        self.check_invariants = check_invariants
        self.waiting: deque[SeqState] = deque()
        self.running: list[SeqState] = []
        self.timeline: list[tuple] | None = [] if record_timeline else None
        self.num_steps = 0
        self.busy_time_s = 0.0
        self._wake: simpy.Event | None = None
        self.process = env.process(self._loop())

    # -- arrivals -----------------------------------------------------------------------------------
    def submit(self, seq: SeqState) -> None:
        """Queue ``seq`` at this instance (at the current simulated time)."""
        seq.instance = self.index
        self.waiting.append(seq)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def view(self) -> InstanceView:
        """What a router sees now."""
        outstanding = 0
        for seq in self.running:
            outstanding += seq.prompt_tokens + seq.output_tokens - seq.num_computed_tokens
        for seq in self.waiting:
            outstanding += seq.prompt_tokens + seq.output_tokens - seq.num_computed_tokens
        return InstanceView(self.index, self.role, len(self.waiting), len(self.running), outstanding,
                            self.kv.num_used_blocks, self.kv.num_blocks)

    # -- the iteration loop -------------------------------------------------------------------------
    def _loop(self):
        env = self.env
        while True:
            plan = self.scheduler.schedule(self.waiting, self.running, self.kv, env.now)
            if not plan:
                if self.running and self.check_invariants:
                    raise SimulationInvariantError(
                        f"instance {self.index}: scheduler {self.scheduler.name!r} scheduled nothing while "
                        f"{len(self.running)} sequences hold KV; the instance would stall forever")
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            duration_s = self._step_time_s(plan)
            yield env.timeout(duration_s)
            self.busy_time_s += duration_s
            self.num_steps += 1
            self._complete(plan, env.now)
            if self.timeline is not None:
                self.timeline.append((env.now, self.index, self.kv.num_used_blocks, len(self.running),
                                      len(self.waiting), plan.num_tokens, len(plan.entries)))

    def _step_time_s(self, plan: StepPlan) -> float:
        prefill_lens, prefill_cached, decode_contexts = [], [], []
        num_sampled = 0  # sequences that emit a token at the end of this step (LM head + sampler work)
        for seq, n in plan.entries:
            if n == 1 and seq.generated_tokens > 0 and seq.num_computed_tokens == seq.num_tokens - 1:
                decode_contexts.append(seq.num_computed_tokens)
                num_sampled += 1
            else:
                prefill_lens.append(n)
                prefill_cached.append(seq.num_computed_tokens)
                num_sampled += seq.num_computed_tokens + n >= seq.num_tokens
        return self.step_model.step_time_s(prefill_lens=prefill_lens, decode_contexts=decode_contexts,
                                           prefill_cached=prefill_cached, num_sampled=num_sampled)

    def _complete(self, plan: StepPlan, now_s: float) -> None:
        """Account for a finished step: tokens computed, tokens sampled, sequences finished."""
        finished = []
        for seq, n in plan.entries:
            seq.num_computed_tokens += n
            if seq.num_computed_tokens < seq.num_tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            seq.generated_tokens += 1
            if seq.generated_tokens == 1:
                seq.first_token_time_s = now_s
                if self.on_first_token is not None and self.role == "prefill":
                    finished.append(seq)
                    continue
            if seq.generated_tokens >= seq.output_tokens:
                seq.finish_time_s = now_s
                finished.append(seq)
        if self.check_invariants:
            self._check(plan)
        if finished:
            done = {id(s) for s in finished}
            self.running = [s for s in self.running if id(s) not in done]
            for seq in finished:
                self.kv.free(seq.index)
                callback = self.on_first_token if seq.finish_time_s is None else self.on_finish
                if callback is not None:
                    callback(seq, now_s)

    def _check(self, plan: StepPlan) -> None:
        kv = self.kv
        if kv.num_used_blocks > kv.num_blocks:
            raise SimulationInvariantError(
                f"instance {self.index}: {kv.num_used_blocks} KV blocks in use > capacity {kv.num_blocks}")
        seen = set()
        for seq, _ in plan.entries:
            if id(seq) in seen:
                raise SimulationInvariantError(f"instance {self.index}: {seq} scheduled twice in one step")
            seen.add(id(seq))
            if seq.num_computed_tokens > seq.num_tokens or seq.generated_tokens > seq.output_tokens:
                raise SimulationInvariantError(f"instance {self.index}: token accounting broken for {seq}")
            if seq.finish_time_s is None and kv.tokens_of(seq.index) < seq.num_computed_tokens:
                raise SimulationInvariantError(
                    f"instance {self.index}: {seq} computed more tokens than the KV slots it holds "
                    f"({kv.tokens_of(seq.index)})")
