"""WAIT (Algorithm 1) and Nested WAIT (Algorithm 2) as batch schedulers of the serving engines
(:class:`gpusched.policy.BatchScheduler`); spec ``shared/papers/nested_wait.md`` §3-4.

From the paper's model to the engine
------------------------------------
* **Stages.** The paper's prompt is processed at stages ``0 .. l'`` (stage 0 = prefill). In the engine a request
  with ``o`` output tokens takes ``o`` steps: a prefill step that samples the first token, then ``o - 1`` decode
  steps. So ``l' = o - 1`` and a resident request's stage is its ``generated_tokens``; stage 0 is the waiting queue.
  A whole prompt is prefilled in its stage-0 step (the paper's model has no chunking).
* **Memory.** The paper's prompt holds ``l + s`` KV tokens at stage ``s``; in the engine, after its stage-``s`` step
  a request has computed exactly ``l + s`` tokens. The KV is paged: it occupies ``ceil((l + s) / bs)`` blocks of
  ``bs`` tokens, at most ``bs - 1`` tokens more per resident request than the paper counts (the calibration pads
  the memory condition by that, see :mod:`.calibrate`). ``C`` = ``num_blocks x bs``.
* **Time.** The paper's iteration lasts ``d0 + d1 x (KV tokens of the batch)``; the engine prices every step with
  its step-time model (roofline or profile). ``d0, d1`` are used only to choose thresholds, fitted to that
  step-time model on the batches the policy runs (:func:`.calibrate.fit_iteration_time`).
* **Eviction.** The paper's server evicts LIFO when memory overflows and the evicted prompt restarts from
  prefill. Here: a new admission is made only if its KV blocks are free (the newest prompt is the first LIFO
  victim, so not admitting it is the same); when a resident cannot grow by one token, the most recently admitted
  resident is evicted (engine recompute preemption: KV dropped, prompt + generated tokens prefilled again at its
  next admission, generated tokens kept; the paper discards them too) and re-queued at the front of its queue.
  With ``M^pi <= C`` (and the block padding) neither happens (spec P1).
* **Pausing.** A type (WAIT) or segment (Nested WAIT) that is not eligible does not advance and keeps its KV: its
  residents stay in the engine's ``running`` list (admission order, paused or not) and are simply left out of the
  plan. When nothing is eligible the plan is empty with ``StepPlan.hold = True`` (the engines then wait, KV kept, for
  the next arrival or finish, which is Algorithm 1/2's "wait": the thresholds can only become true at an arrival).
* **The end of a trace.** Algorithm 1/2 wait for ``n`` arrivals; when arrivals stop, the last prompts would wait
  forever (the authors' code drops them, spec §9). ``drain_after_s`` is the end-of-trace rule, a parameter: from that
  time on the thresholds become plain caps, so the tail is served (the factories set it to the trace's last arrival
  time). A policy idling before it asks the engine to wake it then (``StepPlan.wake_at_s = drain_after_s``), so the
  drain starts on time even if nothing arrives or finishes. With ``drain_after_s=None`` the paper's rule is kept to
  the end: the run ends with the held requests reported unfinished (``status`` "unfinished: ..."), never a hang;
  :meth:`_StageScheduler.held` lists them.
* **All selected residents evicted.** If LIFO eviction removes every request the step was about to run, the plan is
  empty; the policy asks to be called again at the next representable instant (``wake_at_s``) to re-decide with
  the freed KV, instead of waiting for an arrival that may never come.
* **Light load: ``max_wait_s``** (not in Algorithms 1-2; default None = the algorithms as published). With thresholds
  that round a fluid occupancy far below one prompt per stage up to 1, the paper's wait stops a whole pipeline
  whenever its queue is empty, so at light load a request advances one stage per arrival. With ``max_wait_s``, a
  type (WAIT) or the pipeline (Nested WAIT) that has had work but no eligible cohort for ``max_wait_s`` seconds
  runs under its caps without the wait (``"no-wait"``) until it has no work left (queued or resident); the policy
  asks to be woken when the time is up (``wake_at_s``). It plays the part of the paper's GPU implementation's
  fallback to the native rule when lightly loaded [P appendix]; :mod:`.calibrate` sets it only when eq. (11)/(12)
  has no solution.
* **Modes.** ``"paper"``: the algorithms as published. ``"no-wait"``: the same caps without the accumulation wait
  (the paper's "WAIT-no-wait" ablation). ``max_in_flight``: the experiments' system-wide in-flight cap ``tl``
  [P §6] (not part of Algorithms 1-2), applied to admissions.

Requests are admitted with their whole prompt (no prefix caching: KV is allocated without block hashes).

* **Engines.** The SimPy engine runs these policies step by step (they make no decode-run promise). The compiled
  engine (``simulate(..., mode="fast")``) carries a transcription of both rules, opted into by
  :meth:`WaitScheduler.compiled_rule` / :meth:`NestedWaitScheduler.compiled_rule` (:class:`gpusched.policy.CompiledRule`
  ``"wait"``/``"nested-wait"``); this module stays the rules' source, ``tests/test_sim_compiled_wait.py`` checks the
  two agree to the bit.
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from itertools import islice
from typing import Callable, Sequence

from gpusched.errors import ConfigError
from gpusched.kvcache import BlockManager
from gpusched.policy import CompiledRule, SeqState, StepPlan

from .discrete import prefix_length
from .fluid import PromptType, _count, _finite, _types
from .segments import SegmentDesign
from .thresholds import _thresholds

__all__ = ["WaitScheduler", "NestedWaitScheduler", "MODES"]

MODES = ("paper", "no-wait")


class _StageScheduler:
    """Shared machinery: per-group waiting queues mirrored in the engine's ``waiting``, residents bucketed by
    (group, stage), LIFO eviction, pauses (``hold``), the drain and ``max_wait_s`` timers. Subclasses implement
    :meth:`_select`."""

    name: str

    def __init__(self, num_groups: int, mode: str, max_in_flight: int | None, drain_after_s: float | None,
                 max_wait_s: float | None = None):
        if mode not in MODES:
            raise ConfigError(f"mode = {mode!r}; use one of {MODES}")
        self.mode = mode
        self.max_in_flight = None if max_in_flight is None else _count("max_in_flight", max_in_flight, 1)
        self.drain_after_s = None if drain_after_s is None else _finite("drain_after_s", drain_after_s)
        self.max_wait_s = None if max_wait_s is None else _finite("max_wait_s", max_wait_s)
        self.calibration: dict | None = None  # how a factory chose the thresholds (for reports)
        self._num_groups = num_groups
        self._reset(None)

    def _reset(self, waiting) -> None:
        """Forget the previous run (a scheduler object handed to a second run sees a new ``waiting`` deque)."""
        self._waiting = waiting
        self._queues = [deque() for _ in range(self._num_groups)]
        self._group: dict[int, int] = {}  # seq.index -> group
        self._known = 0  # entries at the right of ``waiting`` already in the queues
        self._running: list | None = None  # the engine's ``running`` (for :meth:`held`)
        self._stalled_since: list[float | None] = [None] * self._num_groups  # work but no eligible cohort since
        self._released = [False] * self._num_groups  # past max_wait_s: caps without the wait until eligible/empty

    # -- hooks --------------------------------------------------------------------------------------------
    def _classify(self, seq: SeqState) -> int:
        return 0

    def _select(self, buckets: dict, wait: bool, now_s: float) -> tuple[list[int], list[SeqState]]:
        """(admissions allowed per group, residents to run, oldest first per stage)."""
        raise NotImplementedError

    def _release(self, g: int, stalled: bool, now_s: float, has_work: bool = True) -> bool:
        """``max_wait_s`` for group ``g``: True if it runs without the wait now. ``stalled``: it has work but its
        threshold rule lets nothing of it run; ``has_work``: it has requests queued or resident."""
        if self._released[g]:  # released until the group has no work left (the light-load spell is over)
            if not has_work:
                self._released[g] = False
            return self._released[g]
        if not stalled:
            self._stalled_since[g] = None
            return False
        if self.max_wait_s is None:
            return False
        since = self._stalled_since[g]
        if since is None:
            since = self._stalled_since[g] = now_s
        if now_s >= since + self.max_wait_s:  # the very sum the wake-up time was (no rounding gap)
            self._released[g], self._stalled_since[g] = True, None
        return self._released[g]

    def _next_release_s(self) -> float | None:
        """When the earliest stalled group is released (None: no timer runs)."""
        if self.max_wait_s is None:
            return None
        times = [t + self.max_wait_s for t, free in zip(self._stalled_since, self._released)
                 if t is not None and not free]
        return min(times) if times else None

    def _rule_params(self) -> dict:
        """The settings every compiled transcription of this scheduler needs (:class:`CompiledRule` ``params``)."""
        return {"mode": self.mode, "thresholds": tuple(self.thresholds), "max_in_flight": self.max_in_flight,
                "drain_after_s": self.drain_after_s, "max_wait_s": self.max_wait_s}

    # -- the step -----------------------------------------------------------------------------------------
    def schedule(self, waiting: deque, running: list, kv: BlockManager, now_s: float) -> StepPlan:
        if waiting is not self._waiting:
            self._reset(waiting)
        self._running = running
        group, queues = self._group, self._queues
        for i in range(len(waiting) - self._known, 0, -1):  # arrivals since the last call, oldest first
            seq = waiting[-i]
            g = group[seq.index] = self._classify(seq)
            queues[g].append(seq)
        draining = self.drain_after_s is not None and now_s >= self.drain_after_s
        buckets: dict = {}
        for seq in running:
            key = (group[seq.index], seq.generated_tokens)
            b = buckets.get(key)
            if b is None:
                buckets[key] = [seq]
            else:
                b.append(seq)
        admit, selected = self._select(buckets, self.mode == "paper" and not draining, now_s)
        plan = StepPlan()
        entries = plan.entries
        for seq in selected:
            if seq.num_computed_tokens == 0:  # evicted earlier in this step
                continue
            if not kv.grow_to(seq.index, seq.num_computed_tokens + 1) and not self._evict_for(seq, waiting, running,
                                                                                                kv, plan):
                continue
            entries.append((seq, 1))
        if plan.preempted:
            gone = {id(s) for s in plan.preempted}
            plan.entries = [(s, n) for s, n in entries if id(s) not in gone]
        else:
            self._admit(admit, waiting, running, kv, plan, now_s)
        if not plan.entries:
            if plan.preempted:  # every request of the step was evicted: re-decide at once with the freed KV
                plan.wake_at_s = math.nextafter(now_s, math.inf)
            elif self.mode == "paper" and not draining:
                # the thresholds turn into caps at the drain time, a stalled group at its release: even with no event
                times = [t for t in (self.drain_after_s, self._next_release_s()) if t is not None and t > now_s]
                plan.wake_at_s = min(times) if times else None
            plan.hold = bool(running)  # Algorithm 1/2's wait: paused residents keep their KV
        self._known = len(waiting)
        return plan

    def held(self) -> list[SeqState]:
        """The requests the last run left resident but not finished (paused below a threshold with their KV, when
        the run ended without a drain rule); empty after a drained run. The engine reports them unfinished. Only a
        run on the SimPy engine moves this object: after a run on the compiled engine (``compiled_rule``), which
        follows a transcription of it, read the results' ``status`` column instead."""
        return list(self._running or ())  # the engine removes finished requests from ``running``

    def _admit(self, admit: list[int], waiting: deque, running: list, kv: BlockManager, plan: StepPlan,
               now_s: float) -> None:
        """Admit the heads of the groups' queues (``admit[g]`` from group g), in arrival order across groups, while
        the in-flight cap and free KV allow."""
        cands = [s for g, k in enumerate(admit) if k for s in islice(self._queues[g], k)]
        if not cands:
            return
        if len(cands) > 1:
            cands.sort(key=lambda s: (s.arrival_time_s, s.index))
        room = len(cands) if self.max_in_flight is None else max(self.max_in_flight - len(running), 0)
        for seq in cands[:room]:
            tokens = seq.num_tokens  # prompt (+ generated tokens of a restarted request)
            if kv.allocate_if_free(seq.index, tokens) is None:
                break  # LIFO: the newest admission is the first to go
            self._queues[self._group[seq.index]].popleft()
            waiting.remove(seq)
            seq.num_computed_tokens = 0
            if seq.scheduled_time_s is None:
                seq.scheduled_time_s = now_s
            running.append(seq)
            plan.entries.append((seq, tokens))

    def _evict_for(self, seq: SeqState, waiting: deque, running: list, kv: BlockManager, plan: StepPlan) -> bool:
        """Evict the most recently admitted residents until ``seq`` can grow by one token; False if ``seq`` itself
        was evicted."""
        while True:
            victim = running.pop()
            kv.free(victim.index)
            victim.num_computed_tokens = 0
            victim.num_preemptions += 1
            waiting.appendleft(victim)
            self._queues[self._group[victim.index]].appendleft(victim)
            plan.preempted.append(victim)
            if victim is seq:
                return False
            if kv.grow_to(seq.index, seq.num_computed_tokens + 1):
                return True


class WaitScheduler(_StageScheduler):
    """WAIT, Algorithm 1 [P §4] (known output lengths): per type j a threshold ``n_j``; type j runs (its stage-0
    admissions and every stage, at most ``n_j`` requests each, oldest first) only when ``n_j`` of its requests wait
    for prefill; other types pause, KV resident.

    Parameters
    ----------
    types : the :class:`~.fluid.PromptType` list (for reports and the default classification).
    thresholds : ``n_j``, one integer >= 1 per type (e.g. :func:`.thresholds.choose_wait_thresholds`).
    type_of : ``f(seq) -> type index``; default: the type with ``prefill_tokens == prompt_tokens`` and
        ``decode_tokens == output_tokens - 1`` (a request of no type raises :class:`ConfigError`).
    mode, max_in_flight, drain_after_s, max_wait_s : see the module docstring.
    """

    def __init__(self, types: Sequence[PromptType], thresholds: Sequence[int],
                 type_of: Callable[[SeqState], int] | None = None, mode: str = "paper",
                 max_in_flight: int | None = None, drain_after_s: float | None = None, name: str = "wait",
                 max_wait_s: float | None = None):
        self.types = _types(types)
        self.thresholds = _thresholds(thresholds, len(self.types))
        self.name = name
        super().__init__(len(self.types), mode, max_in_flight, drain_after_s, max_wait_s)
        if type_of is None:
            index = {}
            for j, t in enumerate(self.types):
                index.setdefault((t.prefill_tokens, t.decode_tokens + 1), j)
            type_of = _exact_type(index)
        self.type_of = type_of

    def compiled_rule(self) -> CompiledRule | None:
        """Algorithm 1 on the compiled serving engine (:class:`gpusched.policy.CompiledRule` ``"wait"``), or None
        where its transcription does not cover the settings: a subclass (which may change any step), or a
        ``type_of`` other than a function of the request's lengths known here (the default exact map, or the
        output-length bins of :func:`.calibrate.types_from_lengths`): the engine classifies each request once,
        from its lengths, as this policy does when it first sees it."""
        if type(self) is not WaitScheduler:
            return None
        type_map = _type_map(self.type_of)
        if type_map is None:
            return None
        return CompiledRule("wait", 0, params={**self._rule_params(), "type_map": type_map})

    def _classify(self, seq: SeqState) -> int:
        j = self.type_of(seq)
        if not 0 <= j < len(self.types):
            raise ConfigError(f"type_of(request {seq.request_id!r}) = {j!r}; there are {len(self.types)} types")
        return j

    def _select(self, buckets, wait, now_s):
        n, queues = self.thresholds, self._queues
        if wait:
            eligible = [len(q) >= nj for q, nj in zip(queues, n)]
            resident = {j for j, _ in buckets}
            for j, ok in enumerate(eligible):
                work = len(queues[j]) > 0 or j in resident
                eligible[j] = self._release(j, work and not ok, now_s, work) or ok
        else:
            eligible = [True] * len(n)
        admit = [min(nj, len(q)) if ok else 0 for q, nj, ok in zip(queues, n, eligible)]
        selected = []
        for (j, _), seqs in buckets.items():
            if eligible[j]:
                selected.extend(seqs[:n[j]])
        return admit, selected


class _ExactTypes:
    """``type_of`` by exact lengths: ``index[(prompt_tokens, output_tokens)]`` (a class, not a closure, so that
    :meth:`WaitScheduler.compiled_rule` can read the map)."""

    __slots__ = ("index",)

    def __init__(self, index: dict):
        self.index = index

    def __call__(self, seq: SeqState) -> int:
        try:
            return self.index[(seq.prompt_tokens, seq.output_tokens)]
        except KeyError:
            raise ConfigError(
                f"request {seq.request_id!r} (prompt {seq.prompt_tokens}, output {seq.output_tokens} tokens) matches "
                f"no WAIT type; pass type_of= to map requests to types (e.g. by output-length bins)") from None


def _exact_type(index: dict) -> Callable[[SeqState], int]:
    return _ExactTypes(index)


class OutputLengthBins:
    """``type_of`` by output-length bins (:func:`.calibrate.types_from_lengths`): ``slot[b]`` for the bin
    ``b = bisect_left(edges, output_tokens)`` (a class, not a closure, so that :meth:`WaitScheduler.compiled_rule`
    can read it)."""

    __slots__ = ("edges", "slot")

    def __init__(self, edges: list[int], slot: dict[int, int]):
        self.edges, self.slot = edges, slot

    def __call__(self, seq: SeqState) -> int:
        return self.slot[bisect.bisect_left(self.edges, seq.output_tokens)]


def _type_map(type_of) -> tuple | None:
    """``type_of`` as :class:`gpusched.policy.CompiledRule`'s ``type_map`` when it is one this package defines as a
    function of the request's lengths (:class:`_ExactTypes`, :class:`OutputLengthBins`); None for any other callable."""
    if type(type_of) is _ExactTypes:
        return ("exact", tuple(sorted((int(p), int(o), int(j)) for (p, o), j in type_of.index.items())))
    if type(type_of) is OutputLengthBins:
        return ("output-bins", tuple(int(e) for e in type_of.edges),
                tuple(int(type_of.slot.get(b, -1)) for b in range(len(type_of.edges) + 1)))
    return None


class NestedWaitScheduler(_StageScheduler):
    """Nested WAIT, Algorithm 2 [P §5] (unknown output lengths): the policy never reads ``output_tokens``.

    Stages are grouped into segments ending at ``segment_ends`` (``r_1 < ... < r_L``; stages past ``r_L`` belong
    to the last segment). Segment k's boundary queue is the residents at stage ``r_{k-1} + 1`` (survivors of
    segment k-1, KV resident); segment 1's is the waiting queue. With ``k`` the longest prefix of segments whose
    boundary queues hold at least ``n_k``, segments ``1..k`` run, at most ``n_k`` requests per stage (oldest
    first); nothing runs while fewer than ``n_1`` wait (``mode="paper"``).

    Parameters
    ----------
    segment_ends : ``r_k`` in decode stages (``l' = output_tokens - 1`` units), or a :class:`~.segments.SegmentDesign`.
    thresholds : ``n_k``, one integer >= 1 per segment (e.g. :func:`.segments.choose_nested_thresholds`).
    mode, max_in_flight, drain_after_s, max_wait_s : see the module docstring.
    """

    def __init__(self, segment_ends: Sequence[int] | SegmentDesign, thresholds: Sequence[int], mode: str = "paper",
                 max_in_flight: int | None = None, drain_after_s: float | None = None, name: str = "nested-wait",
                 max_wait_s: float | None = None):
        if isinstance(segment_ends, SegmentDesign):
            self.design = segment_ends
        else:
            ends = tuple(segment_ends)
            self.design = SegmentDesign(ends, (0.0,) * (len(ends) - 1) + (1.0,), 1)  # rates unused by the policy
        self.thresholds = _thresholds(thresholds, self.design.num_segments)
        self.name = name
        super().__init__(1, mode, max_in_flight, drain_after_s, max_wait_s)
        d = self.design
        self._segment_of = d.segment_of_stage

    def compiled_rule(self) -> CompiledRule | None:
        """Algorithm 2 on the compiled serving engine (:class:`gpusched.policy.CompiledRule` ``"nested-wait"``), or
        None for a subclass (which may change any step)."""
        if type(self) is not NestedWaitScheduler:
            return None
        return CompiledRule("nested-wait", 0, params={**self._rule_params(), "segment_ends": tuple(self.design.ends)})

    def _select(self, buckets, wait, now_s):
        n, d = self.thresholds, self.design
        seg = self._segment_of
        queued = len(self._queues[0])
        k = prefix_length(d, n, queued, lambda s: len(buckets.get((0, s), ())), wait)
        if wait:  # stalled: work in a paused segment (or in the entry queue when k = 0)
            stalled = k < d.num_segments and ((k == 0 and queued > 0) or any(seg(s) >= k for _, s in buckets))
            if self._release(0, stalled, now_s, queued > 0 or bool(buckets)):
                k = d.num_segments
        if k == 0:
            return [0], []
        selected = []
        for (_, s), seqs in buckets.items():
            i = seg(s)
            if i < k:
                selected.extend(seqs[:n[i]])
        return [min(n[0], queued)], selected
