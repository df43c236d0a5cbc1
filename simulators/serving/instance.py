"""One serving instance as a SimPy process: an iteration loop of schedule -> step -> account.

Each iteration asks the instance's :class:`~gpusched.policy.BatchScheduler` for a plan, lasts the
step-time model's prediction for that plan, then advances every scheduled sequence: computed tokens
grow by what was scheduled, a sequence whose computed tokens reach its length samples one token, a
sequence that has sampled all its output tokens finishes and frees its KV.

Invariants checked as it runs (``check_invariants=True``): KV blocks in use never exceed capacity,
a sequence's computed tokens never exceed its length nor the KV slots it holds, and a plan never
schedules a sequence twice. Violations raise :class:`SimulationInvariantError`. The checks ride along
the passes that account a step (no pass of their own); a decode run is checked at the end of each of
its segments: the KV its sequences grew into was free, and a sequence that finishes has generated
exactly its output (see :meth:`InstanceEngine._end_segment`).

Fast mode advances runs of decode steps in a few events (:class:`_DecodeRun`) when the scheduler
promises what its next plans are (:class:`gpusched.policy.BatchScheduler`); step mode schedules every
step, and is the reference the fast modes are tested against.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from typing import Callable

import simpy
from simpy.core import URGENT

from gpusched.errors import ConfigError, GpuschedError
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
    on_first_token : on a prefill-role instance, called ``f(seq, now_s)`` when a sequence has its first
        token and more to generate; the sequence leaves ``running`` but keeps its KV until :meth:`release`
        (the hand-off). A sequence whose first token is its last finishes here.
    on_finish : called ``f(seq, now_s)`` when a sequence emits its last token (its KV is freed, full
        blocks kept as cached prefix blocks under ``seq.block_hashes``).
    record_timeline : keep one row per step (time, KV blocks, running, waiting, batch tokens); in fast
        mode one row covers a whole run of decode steps (its ``steps`` column counts them).
    fast : advance over runs of identical decode steps in one event (see :class:`_DecodeRun`); results
        are identical to step-by-step mode (``fast=False``), which is kept for checking.
    kv_bytes_per_token, host_link_bytes_per_s : price swap preemption (KV bytes over the host link,
        added to the step that moves them).
    on_prefill_done : on any role, called ``f(seq, now_s)`` when a sequence samples its first token and has
        more to generate; if it answers True the sequence is handed off as on a prefill instance (it leaves
        ``running``, keeps its KV until :meth:`release`, ``on_first_token`` is called), else it decodes here.
        A cluster-level dispatcher decides there where each decode runs (``None``: today's behaviour).

    What a router reads of the instance (:attr:`live_view`) is kept up to date as the instance runs, in
    O(1) per change: the tokens still to process of its running and of its waiting sequences are two
    counters (``_todo_running``, ``_todo_waiting``) moved by every step, admission, preemption, finish
    and hand-off, so that routing an arrival costs O(instances), not O(queue).
    """

    def __init__(self, env: simpy.Environment, index: int, scheduler: BatchScheduler,
                 step_model: StepTimeModel, kv: BlockManager, role: str = "colocated",
                 on_first_token: Callable[[SeqState, float], None] | None = None,
                 on_finish: Callable[[SeqState, float], None] | None = None,
                 record_timeline: bool = True, check_invariants: bool = True, fast: bool = True,
                 kv_bytes_per_token: int = 0, host_link_bytes_per_s: float = 0.0,
                 on_prefill_done: Callable[[SeqState, float], bool] | None = None):
        self.env = env
        self.on_prefill_done = on_prefill_done
        self.index = index
        self.scheduler = scheduler
        self.step_model = step_model
        self.kv = kv
        self.role = role
        self.on_first_token = on_first_token
        self.on_finish = on_finish
        self.check_invariants = check_invariants
        self.kv_bytes_per_token = kv_bytes_per_token
        self.host_link_bytes_per_s = host_link_bytes_per_s
        self.waiting: deque[SeqState] = deque()
        self.running: list[SeqState] = []
        self.timeline: list[tuple] | None = [] if record_timeline else None
        self.num_steps = 0
        self.busy_time_s = 0.0
        self.clock = env.now  # exact time of the last step end (SimPy's clock may differ by rounding)
        self.fast = fast
        # decode-only steps are priced through the model's scalar shortcut when it has one
        self._decode_time = getattr(step_model, "decode_step_time_s", None)
        self._decode_ends = getattr(step_model, "decode_run_ends_s", self._decode_run_ends_s)
        # decode runs (gpusched.policy.BatchScheduler): while requests wait (stable_decode_runs), or only
        # when none waits (decode_runs_when_queue_empty)
        stable = bool(getattr(scheduler, "stable_decode_runs", False))
        self._runs = fast and self._decode_time is not None and (
            stable or bool(getattr(scheduler, "decode_runs_when_queue_empty", False)))
        self._runs_while_waiting = stable
        self._wake: simpy.Event | None = None
        self._run: _DecodeRun | None = None
        # when the next request arrives, if the cluster knows (a run is priced up to it: it may cut it there)
        self.next_arrival_s: Callable[[], float] = _never
        self._decode_step_s = 0.0  # the last decode step priced: how many steps reach a time
        # prompt + output - computed tokens, summed over running / waiting sequences (waiting ones as
        # they were queued: the scheduler does not touch a sequence while it waits)
        self._todo_running = 0
        self._todo_waiting = 0
        self._queued: dict[int, int] = {}  # seq.index -> its term in _todo_waiting
        self.live_view = LiveInstanceView(self)
        self.process = env.process(self._loop())

    # -- arrivals -----------------------------------------------------------------------------------
    def submit(self, seq: SeqState) -> None:
        """Queue ``seq`` at this instance (at the current simulated time)."""
        seq.instance = self.index
        self.waiting.append(seq)
        todo = seq.prompt_tokens + seq.output_tokens - seq.num_computed_tokens
        self._queued[seq.index] = todo
        self._todo_waiting += todo
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        elif self._run is not None and not self._run.cut and self.env.active_process is not self.process:
            self._run.cut = True  # the step in flight is the run's last: the next one sees this request
            self.process.interrupt()

    def withdraw(self, seq: SeqState) -> bool:
        """Take ``seq`` out of this instance's queue if it waits here and was never scheduled (it abandons);
        False (nothing changes) otherwise. O(queue length)."""
        if seq.scheduled_time_s is not None or seq.index not in self._queued:
            return False
        try:
            self.waiting.remove(seq)
        except ValueError:
            return False
        self._todo_waiting -= self._queued.pop(seq.index)
        return True

    def outstanding_tokens(self) -> int:
        """Prompt tokens still to prefill plus output tokens still to generate, over the running and
        waiting sequences, as of the last step that ended before now (O(1))."""
        todo = self._todo_running + self._todo_waiting
        run = self._run
        if run is not None:  # a decode run is under way: the steps done in its segment computed a token each
            done = run.steps_done(self.env.now)
            todo -= (done - run.seg_start) * len(run.seqs) + (run.extra_tokens if done else 0)
        return todo

    def kv_used_blocks(self) -> int:
        """KV blocks in use as of the last step that ended before now (O(log run length))."""
        used = self.kv.num_used_blocks
        run = self._run
        if run is not None:  # the blocks a decode run's segment has taken are added to the manager at its end
            used += run.blocks_taken_by(run.steps_done(self.env.now))
        return used

    def view(self) -> InstanceView:
        """What a router sees now, frozen (:attr:`live_view` reads the same values when asked)."""
        return self.live_view.snapshot()

    # -- the iteration loop -------------------------------------------------------------------------
    def _loop(self):
        env = self.env
        run = None
        while True:
            if run is not None:  # the scheduler's promise made the next plans known: a decode run
                self._run = run
                yield from self._wait_for_run(run)
                self._run = None
                self._finish_run(run)
                run = self._continue_run()
                continue
            waiting_before = len(self.waiting)
            plan = self.scheduler.schedule(self.waiting, self.running, self.kv, self.clock)
            if plan.preempted or len(self.waiting) != waiting_before:
                self._count_moves(plan, waiting_before)
            if not plan:
                if self.running and not plan.hold and self.check_invariants:
                    raise SimulationInvariantError(
                        f"instance {self.index}: scheduler {self.scheduler.name!r} scheduled nothing while "
                        f"{len(self.running)} sequences hold KV; the instance would stall forever (a pause "
                        f"on purpose returns StepPlan(hold=True))")
                self._wake = env.event()
                if plan.wake_at_s is not None:
                    self._wake_later(plan.wake_at_s, self._wake)
                yield self._wake
                self._wake = None
                self.clock = env.now
                continue
            run = self._start_run(plan) if self._runs else None
            if run is not None:
                continue
            everyone = not plan.preempted and len(plan.entries) == len(self.running)
            start = self.clock
            end = start + self._step_time_s(plan)
            yield from wait_until(env, end)
            self._account(plan.entries, end, start, plan.num_tokens, len(plan.entries), 1)
            if everyone and self._runs:
                run = self._continue_run()

    def _wake_later(self, at_s: float, wake: simpy.Event) -> None:
        """Trigger ``wake`` at ``at_s`` (a scheduler's ``StepPlan.wake_at_s``) unless something woke it first."""
        if not at_s > self.clock:
            raise SimulationInvariantError(
                f"instance {self.index}: scheduler {self.scheduler.name!r} asked to be woken at {at_s!r} s, "
                f"not after now ({self.clock!r} s); return a plan to run now instead")

        def alarm():
            yield from wait_until(self.env, at_s)
            if not wake.triggered:
                wake.succeed()

        self.env.process(alarm())

    def _count_moves(self, plan: StepPlan, waiting_before: int) -> None:
        """Move the tokens-to-do counters for what ``schedule`` admitted and preempted.

        Admitted sequences are in ``running`` (at its end for every scheduler here), with their queued
        term still in ``_queued``; preempted ones are back in ``waiting``. After a preemption the running
        term is summed again (preemptions are rare; the computed tokens a victim lost are not known).
        """
        queued = self._queued
        admitted = waiting_before + len(plan.preempted) - len(self.waiting)
        if admitted > 0:
            for seq in reversed(self.running):
                todo = queued.pop(seq.index, None)
                if todo is not None:
                    self._todo_waiting -= todo
                    self._todo_running += seq.prompt_tokens + seq.output_tokens - seq.num_computed_tokens
                    admitted -= 1
                    if not admitted:
                        break
        if plan.preempted:
            for seq in plan.preempted:
                todo = seq.prompt_tokens + seq.output_tokens - seq.num_computed_tokens
                self._todo_waiting += todo - queued.get(seq.index, 0)
                queued[seq.index] = todo
            self._todo_running = sum(s.prompt_tokens + s.output_tokens - s.num_computed_tokens
                                     for s in self.running)

    def _account(self, entries, end_s: float, start_s: float, tokens: int, seqs: int, steps: int) -> None:
        self.clock = end_s
        self.busy_time_s += end_s - start_s
        self.num_steps += steps
        if self.check_invariants and len({id(seq) for seq, _ in entries}) != len(entries):
            self._raise_twice(entries)
        self._todo_running -= tokens
        self._complete(entries, end_s)
        self._end_step(tokens, seqs, steps)

    def _end_step(self, tokens: int, seqs: int, steps: int) -> None:
        """After a step's sequences are accounted: the KV capacity check, the timeline row."""
        kv = self.kv
        if self.check_invariants and kv.num_used_blocks > kv.num_blocks:
            raise SimulationInvariantError(
                f"instance {self.index}: {kv.num_used_blocks} KV blocks in use > capacity {kv.num_blocks}")
        if self.timeline is not None:
            self.timeline.append((self.clock, self.index, kv.num_used_blocks, len(self.running),
                                  len(self.waiting), tokens, seqs, steps))

    # -- fast mode: runs of identical decode steps ----------------------------------------------------
    def _start_run(self, plan: StepPlan) -> "_DecodeRun | None":
        """A decode run starting with ``plan``, or None if the steps after it will not repeat it.

        They repeat it (the same sequences, one decode token each) when it decodes every running
        sequence, preempts nothing and moves no KV over the host link (a swap-in makes its step longer),
        until KV must be reclaimed or a request arrives, and, while requests wait, until a sequence
        finishes (see :class:`_DecodeRun`); with a scheduler that promises this only while nothing waits,
        only then. A plan that also prefills, when each of its prefills completes its prompt (every
        running sequence decodes after it) and nothing waits, starts a run too: its first step is that
        plan, priced as step mode prices it, and the scheduler's promise holds from the second on.
        """
        entries = plan.entries
        if (plan.preempted or plan.swap_tokens or len(entries) != len(self.running)
                or (self.waiting and not self._runs_while_waiting)):
            return None
        seqs = [seq for seq, _ in entries]
        first_step_s, extra_tokens = None, 0
        if all(n == 1 for _, n in entries):
            inputs = _decode_run_inputs(seqs)
            if inputs is None:
                return None
            ids, context_sum = inputs
        else:  # (the same check as _decode_run_inputs, after step 0)
            if self.waiting or self.role == "prefill" or any(
                    seq.num_computed_tokens + n != seq.prompt_tokens + seq.generated_tokens for seq, n in entries):
                return None
            first_step_s = self._step_time_s(plan)
            ids, context_sum = [seq.index for seq in seqs], 0
            for seq, n in entries:  # counted as decodes from here (one more token each at step 0's end)
                seq.num_computed_tokens += n - 1
                extra_tokens += n - 1
                context_sum += seq.num_computed_tokens
        if self.check_invariants:  # as _complete checks a step: each scheduled once, within the KV it holds
            if len(set(ids)) != len(ids):  # seq.index is unique per request
                self._raise_twice(entries)
            for seq, held in zip(seqs, self.kv.tokens_each(ids)):
                if held < seq.num_computed_tokens + 1:
                    self._raise_kv_short(seq, held)
        return _DecodeRun(self, seqs, ids, context_sum, first_step_s, extra_tokens)

    def _continue_run(self) -> "_DecodeRun | None":
        """The decode run that the scheduler's promise makes the next step, without calling it: called
        after a step that scheduled every running sequence and preempted nothing, when nothing waits and
        every running sequence is decoding; the engine grows their KV by the token as the scheduler
        would. None (nothing changed) when that does not hold or the KV is not free."""
        running = self.running
        if self.waiting or not running:
            return None
        inputs = _decode_run_inputs(running)
        if inputs is None:
            return None
        ids, context_sum = inputs
        if not self.kv.grow_each_to(ids, [seq.num_computed_tokens + 1 for seq in running]):
            return None
        return _DecodeRun(self, list(running), ids, context_sum)

    def _wait_for_run(self, run: "_DecodeRun"):
        """Advance the run: wait for the end of the steps priced, price further while nothing happens,
        end a segment at each step in which a sequence emits its last token (it finishes then, as in step
        mode) and go on with the others. An arrival cuts the run after the step in flight. Returns when
        the run is over (its last segment ended)."""
        env = self.env
        ends = run.ends
        while True:
            try:
                yield from wait_until(env, ends[-1])
            except simpy.Interrupt:  # the step in flight is the last
                del ends[run.steps_done(env.now) + 1:]
                continue
            last = len(ends) - 1
            over = run.cut or last + 1 >= run.limit
            if last == run.next_finish:
                self._end_segment(run, last)
                # while requests wait, a finish may let the scheduler admit one: its promise ends there
                if over or not run.seqs or self.waiting or not run.start_segment(self):
                    return
            elif over or not run.extend(self):
                self._end_segment(run, last)
                return

    def _end_segment(self, run: "_DecodeRun", last: int) -> None:
        """The steps of the run's segment up to ``last`` (0-based in the run) have ended: grow every
        sequence's KV to what step ``last`` needed (``computed + 1 + last`` slots; a scheduler that
        reserved more, like static batching, takes nothing), finish the sequences that emitted their last
        token in it, and add the segment's timeline row.

        Sequences that go on keep their run-start token counts until :meth:`_finish_run`; the block
        manager holds their KV as of now. Checks: the growth fits (the run stopped before a block that
        was not free).
        """
        kv, end = self.kv, run.ends[last]
        seqs, n = run.seqs, len(run.seqs)
        steps = last + 1 - run.seg_start
        self.clock = end
        self.busy_time_s += end - run.seg_start_s
        self.num_steps += steps
        if not kv.grow_each_to(run.ids, [seq.num_computed_tokens + last + 1 for seq in seqs]):
            raise SimulationInvariantError(
                f"instance {self.index}: a decode run took more KV blocks than were free")
        tokens = steps * n + run.extra_tokens  # (the prefill tokens of a first step that prefilled)
        self._todo_running -= tokens
        run.extra_tokens = 0
        if run.seg_start == 0:  # those that had no token yet got their first at the end of step 0
            for seq in seqs:
                if seq.first_token_time_s is None:
                    seq.first_token_time_s = run.ends[0]
        run.seg_start, run.seg_start_s = last + 1, end
        if last == run.next_finish:
            finished = [seq for seq, f in zip(seqs, run.last_steps) if f == last]
            for seq in finished:
                run.context0 -= seq.num_computed_tokens
                seq.num_computed_tokens += last + 1
                seq.generated_tokens += last + 1
                if self.check_invariants and seq.generated_tokens != seq.output_tokens:
                    self._raise_accounting(seq)
                seq.finish_time_s = end
            run.drop(finished)
            self._retire(finished, end)
        self._end_step(tokens, n, steps)

    def _finish_run(self, run: "_DecodeRun") -> None:
        """The run is over (its last segment ended): the sequences still running take its steps into
        their token counts (``computed = prompt + generated - 1`` held at the run's start, see
        :meth:`_start_run`, and both grew by a token per step)."""
        steps = run.seg_start
        for seq in run.seqs:
            seq.num_computed_tokens += steps
            seq.generated_tokens += steps

    def _decode_run_ends_s(self, start_s: float, batch: int, context_sum: int, steps: int) -> list[float]:
        """End times of ``steps`` decode steps from ``start_s``, summed one step at a time as step mode
        does (for step models without their own ``decode_run_ends_s``)."""
        t, ends = start_s, []
        for s in range(steps):
            t = t + self._decode_time(batch, context_sum + s * batch)
            ends.append(t)
        return ends

    def _step_time_s(self, plan: StepPlan) -> float:
        swap_s = 0.0
        if plan.swap_tokens:
            if self.host_link_bytes_per_s <= 0 or self.kv_bytes_per_token <= 0:
                raise ConfigError(
                    f"instance {self.index}: the scheduler swaps KV but the instance has no host link "
                    f"(host_link_bytes_per_s={self.host_link_bytes_per_s}) or kv_bytes_per_token="
                    f"{self.kv_bytes_per_token}; set both on its InstanceConfig")
            swap_s = plan.swap_tokens * self.kv_bytes_per_token / self.host_link_bytes_per_s
        return swap_s + self._compute_time_s(plan)

    def _compute_time_s(self, plan: StepPlan) -> float:
        prefill_lens, prefill_cached, decode_contexts = [], [], []
        num_sampled = 0  # sequences that emit a token at the end of this step (LM head + sampler work)
        for seq, n in plan.entries:
            c, g = seq.num_computed_tokens, seq.generated_tokens
            if n == 1 and g > 0 and c == seq.prompt_tokens + g - 1:  # a decode (as _decode_run_inputs)
                decode_contexts.append(c)
                num_sampled += 1
            else:
                prefill_lens.append(n)
                prefill_cached.append(c)
                num_sampled += c + n >= seq.prompt_tokens + g
        if self._decode_time is not None and not prefill_lens:
            # decode-only: priced exactly as a fast-mode run prices it, so both modes agree to the bit
            return self._decode_time(len(decode_contexts), sum(decode_contexts))
        return self.step_model.step_time_s(prefill_lens=prefill_lens, decode_contexts=decode_contexts,
                                           prefill_cached=prefill_cached, num_sampled=num_sampled)

    def _complete(self, entries, now_s: float) -> None:
        """Account for a finished step: tokens computed, tokens sampled, sequences finished.

        Checks (``check_invariants``), before finished sequences free their KV: computed tokens within
        the sequence's length and its KV slots, generated tokens within its output.
        """
        finished = []
        hand_off = self.on_first_token is not None and self.role == "prefill"
        tokens_of = self.kv.tokens_of if self.check_invariants else None
        for seq, n in entries:
            c = seq.num_computed_tokens + n
            seq.num_computed_tokens = c
            g = seq.generated_tokens
            if c >= seq.prompt_tokens + g:  # else a prefill chunk that did not reach the end of the prompt
                g += 1
                seq.generated_tokens = g
                if g == 1:
                    seq.first_token_time_s = now_s
                if g >= seq.output_tokens:  # (a one-token output finishes on a prefill instance too)
                    seq.finish_time_s = now_s
                    finished.append(seq)
                elif g == 1 and (hand_off or (self.on_prefill_done is not None
                                              and self.on_prefill_done(seq, now_s))):
                    finished.append(seq)
            if tokens_of is not None:
                if c > seq.prompt_tokens + g or g > seq.output_tokens:
                    self._raise_accounting(seq)
                if tokens_of(seq.index) < c:
                    self._raise_kv_short(seq, tokens_of(seq.index))
        if finished:
            self._retire(finished, now_s)

    def _retire(self, finished: list[SeqState], now_s: float) -> None:
        """Take finished (or handed-off) sequences out of ``running``; free the KV of finished ones."""
        done = {id(s) for s in finished}
        self.running = [s for s in self.running if id(s) not in done]
        for seq in finished:
            self._todo_running -= seq.prompt_tokens + seq.output_tokens - seq.num_computed_tokens
            if seq.finish_time_s is None:  # a prefill instance hands the sequence (and its KV) off
                self.on_first_token(seq, now_s)
                continue
            self.kv.free(seq.index, seq.block_hashes, _reused(seq))
            if self.on_finish is not None:
                self.on_finish(seq, now_s)

    def release(self, seq: SeqState) -> None:
        """Free the KV a handed-off sequence still holds here, and wake the loop if it was idle (the
        sequence does not come back here; a session's next round may)."""
        self.kv.free(seq.index, seq.block_hashes, _reused(seq))
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _raise_twice(self, entries) -> None:
        seen = set()
        for seq, _ in entries:
            if id(seq) in seen or seq.index in seen:
                raise SimulationInvariantError(f"instance {self.index}: {seq} scheduled twice in one step")
            seen.update((id(seq), seq.index))

    def _raise_accounting(self, seq: SeqState) -> None:
        raise SimulationInvariantError(f"instance {self.index}: token accounting broken for {seq}")

    def _raise_kv_short(self, seq: SeqState, held_tokens: int) -> None:
        raise SimulationInvariantError(
            f"instance {self.index}: {seq} computed more tokens than the KV slots it holds ({held_tokens})")


class LiveInstanceView:
    """What a router sees of an instance (the attributes of :class:`gpusched.policy.InstanceView`), read
    from the instance when asked: a router that reads nothing costs nothing, and every attribute is O(1).

    Valid during the ``route`` call it is passed to (the instance moves on afterwards); keep
    :meth:`snapshot` to hold on to the values.
    """

    __slots__ = ("_engine", "index", "role", "kv_total_blocks")

    def __init__(self, engine: InstanceEngine):
        self._engine = engine
        self.index = engine.index
        self.role = engine.role
        self.kv_total_blocks = engine.kv.num_blocks

    @property
    def num_waiting(self) -> int:
        return len(self._engine.waiting)

    @property
    def num_running(self) -> int:
        return len(self._engine.running)

    @property
    def outstanding_tokens(self) -> int:
        return self._engine.outstanding_tokens()

    @property
    def kv_used_blocks(self) -> int:
        return self._engine.kv_used_blocks()

    @property
    def kv_utilization(self) -> float:
        return self.kv_used_blocks / self.kv_total_blocks if self.kv_total_blocks else 0.0

    def snapshot(self) -> InstanceView:
        """The values now, frozen."""
        return InstanceView(self.index, self.role, self.num_waiting, self.num_running, self.outstanding_tokens,
                            self.kv_used_blocks, self.kv_total_blocks)

    def __repr__(self) -> str:
        return f"Live{self.snapshot()!r}"


def wait_until(env: simpy.Environment, at_s: float, urgent: bool = False):
    """Wait (``yield from``) until SimPy's clock reads exactly ``at_s``, or one event if it is past.

    SimPy adds a delay to its clock, and ``now + (at_s - now)`` is exactly ``at_s`` when ``now >= at_s / 2``
    (the subtraction is then exact, by Sterbenz's lemma); from further back a first wait to about three
    quarters of the way gets there. So every engine time (a step's end, an arrival) is exactly an event
    time, whatever chain of waits led to it: fast and step modes wait in different chunks and must see
    the same clock, which also starts session rounds and hand-offs. ``urgent``: processed before every
    NORMAL event at the same time (SimPy's Timeout has no priority): arrivals use it, so that a step
    starting at the arrival time already sees the request.
    """
    now = env.now
    if 0 < now < at_s / 2:
        yield _timeout(env, 0.75 * at_s - now, urgent)
    yield _timeout(env, max(at_s - env.now, 0.0), urgent)


def _timeout(env: simpy.Environment, delay_s: float, urgent: bool) -> simpy.Event:
    if not urgent:
        return env.timeout(delay_s)
    event = simpy.Event(env)
    event._ok, event._value = True, None  # a pre-triggered event, as simpy.Timeout builds itself
    env.schedule(event, URGENT, delay_s)
    return event


def _never() -> float:
    return float("inf")


def _reused(seq: SeqState) -> bool:
    """Whether a sequence that has finished (or left this instance) leaves blocks others may ask for:
    not its own blocks, nor a session's last round (:mod:`simulators.serving.prefix`)."""
    return getattr(seq.block_hashes, "reused", True)


def _decode_run_inputs(seqs) -> "tuple[list[int], int] | None":
    """``(indices, computed tokens summed)`` of sequences that are all decoding (the last sampled token is
    the only one not computed: ``computed = prompt + generated - 1``), or None."""
    ids, context_sum = [], 0
    for seq in seqs:
        c, g = seq.num_computed_tokens, seq.generated_tokens
        if g == 0 or c != seq.prompt_tokens + g - 1:
            return None
        ids.append(seq.index)
        context_sum += c
    return ids, context_sum


_NO_LIMIT = 1 << 62  # a run's limit while no step needs a block that is not free


class _DecodeRun:
    """Decode steps that fast mode advances in a few SimPy events: one per segment (a step in which a
    sequence emits its last token ends one) and per chunk of steps priced.

    When a step decodes every running sequence and nothing else, the following steps repeat it, with
    every context one token longer, until (a) a sequence emits its last token (then the others go on in
    a new segment, unless requests wait: the scheduler may admit one), (b) a sequence needs a new KV
    block that is not free (the scheduler would preempt), or (c) a request arrives (the next step may
    admit it). Waiting requests that could not be admitted at the run's start cannot be admitted during a
    segment either: running count and token budget stay the same and free KV only shrinks. When
    requests are waiting, only empty blocks (not evictable cached ones) are used for growth, since
    evicting a cached prefix can change what a waiting request needs.

    Steps are numbered from 0 at the run's start. ``ends[s]`` is the end time of step ``s`` priced so far,
    summed one step at a time exactly as step mode does. Sequence ``i`` of ``seqs`` (those still running;
    their token counts are those at the run's start until the run ends) needs ``computed + 1 + s`` KV
    slots at step ``s``: it enters a new block at step ``first[i]`` and every ``block_size`` steps after,
    and emits its last token at step ``last_steps[i]``. ``crossings`` lists, sorted, the steps of the
    current segment priced so far at which some sequence enters a new block; ``limit`` is the first step
    that would need a block that is not free.
    """

    __slots__ = ("seqs", "ids", "first", "last_steps", "next_finish", "context0", "seg_start", "seg_start_s",
                 "ends", "crossings", "free_blocks", "limit", "cut", "extra_tokens")

    FIRST_CHUNK = 16  # steps priced when a segment starts; each further chunk doubles, up to MAX_CHUNK
    MAX_CHUNK = 256

    def __init__(self, engine: InstanceEngine, seqs: list, ids: list, context_sum: int,
                 first_step_s: float | None = None, extra_tokens: int = 0):
        """``seqs``: the sequences decoded; ``ids``: their indices; ``context_sum``: their computed tokens
        summed (step 0's KV is allocated). ``first_step_s``: if step 0 prefills, its duration (then the
        sequences' counts are as if it decoded, and ``extra_tokens`` its tokens beyond one per sequence)."""
        self.seqs = seqs
        self.ids = ids
        self.first = [held - seq.num_computed_tokens for held, seq in zip(engine.kv.slots_each(ids), seqs)]
        self.last_steps = [seq.output_tokens - seq.generated_tokens - 1 for seq in seqs]
        self.context0 = context_sum
        self.seg_start, self.seg_start_s = 0, engine.clock
        self.ends = [] if first_step_s is None else [engine.clock + first_step_s]
        self.extra_tokens = extra_tokens
        self.cut = False
        self.start_segment(engine)  # prices step 0 at least: its KV is allocated

    def start_segment(self, engine: InstanceEngine) -> bool:
        """Price the first chunk of a segment starting at step ``seg_start``; False if not even its first
        step can run (it needs a block that is not free)."""
        kv = engine.kv
        self.next_finish = min(self.last_steps)
        self.free_blocks = kv.num_free_blocks - (kv.num_cached_blocks if engine.waiting else 0)
        self.crossings = []
        self.limit = _NO_LIMIT
        start = len(self.ends)
        self._price(engine, min(self.next_finish + 1, start + self._chunk(engine, self.FIRST_CHUNK)))
        return len(self.ends) > self.seg_start

    def _chunk(self, engine: InstanceEngine, default: int) -> int:
        """Steps to price next: up to the next arrival (it may cut the run then) at the last decode step's
        pace, with a tenth and a few steps to spare (steps lengthen as contexts grow: an extra chunk costs
        an event); ``default`` when no arrival is known ahead."""
        t = self.ends[-1] if self.ends else self.seg_start_s
        ahead = engine.next_arrival_s() - t
        if engine._decode_step_s > 0 and ahead < self.MAX_CHUNK * engine._decode_step_s:
            return max(int(1.1 * ahead / engine._decode_step_s) + 4, 1)
        return default

    def drop(self, finished: list) -> None:
        """Take ``finished`` sequences out of the run (identity)."""
        gone = {id(seq) for seq in finished}
        keep = [i for i, seq in enumerate(self.seqs) if id(seq) not in gone]
        self.seqs = [self.seqs[i] for i in keep]
        self.ids = [self.ids[i] for i in keep]
        self.first = [self.first[i] for i in keep]
        self.last_steps = [self.last_steps[i] for i in keep]

    def extend(self, engine: InstanceEngine) -> bool:
        """Price the next chunk of steps if the segment goes on; False if it ends with the steps priced."""
        priced = len(self.ends)
        stop = min(self.limit, self.next_finish + 1)
        if priced >= stop:
            return False
        self._price(engine, min(stop, priced + self._chunk(engine, min(max(priced - self.seg_start, self.FIRST_CHUNK),
                                                                       self.MAX_CHUNK))))
        return len(self.ends) > priced

    def _price(self, engine: InstanceEngine, until: int) -> None:
        """Price steps ``len(ends)`` .. ``until - 1``, stopping before the first that needs a block that
        is not free (then that is the run's limit)."""
        ends, bs = self.ends, engine.kv.block_size_tokens
        start = len(ends)
        new = []
        for first in self.first:  # crossings of each sequence in [start, until): every bs steps
            if first < until:
                if first < start:
                    first += -(-(start - first) // bs) * bs
                new.extend(range(first, until, bs))
        crossings = self.crossings
        if new:
            new.sort()
            crossings.extend(new)
            if len(crossings) > self.free_blocks:
                until = self.limit = crossings[self.free_blocks]  # that step would need a block that is not free
                del crossings[self.free_blocks:]
        batch = len(self.seqs)
        t = ends[-1] if ends else self.seg_start_s
        ends.extend(engine._decode_ends(t, batch, self.context0 + start * batch, until - start))
        if len(ends) > start:
            engine._decode_step_s = ends[-1] - (ends[-2] if len(ends) > 1 else t)

    def steps_done(self, now_s: float) -> int:
        """Steps of the run that have ended by ``now_s``, as an arrival at ``now_s`` sees them: arrivals
        are processed before steps that end at the same time (as in step mode), but after the segment end
        being processed now."""
        return bisect_left(self.ends, now_s, self.seg_start)

    def blocks_taken_by(self, steps_done: int) -> int:
        """KV blocks the segment has added once ``steps_done`` steps of the run have ended (the next one
        is scheduled)."""
        return bisect_right(self.crossings, steps_done)
