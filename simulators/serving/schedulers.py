"""Baseline batch schedulers, named after the engines the papers compare against.

Every scheduler implements :class:`gpusched.policy.BatchScheduler`: it reads the instance's ``waiting``
deque and ``running`` list, allocates KV through the instance's block manager for every token it
schedules, preempts by recomputation when KV runs out, and returns a :class:`~gpusched.policy.StepPlan`.

- :class:`VllmV1Scheduler` — vLLM V1 (v0.6+ "V1 engine"): running sequences first in order, each gets
  ``min(remaining, token budget)`` new tokens; when KV cannot grow, the newest running sequence is
  preempted (recompute) until it can; waiting sequences are admitted FCFS only if nothing was preempted
  this step, while the token budget and ``max_num_seqs`` allow, with chunked prefill.
- :class:`VllmV0Scheduler` — vLLM V0 default: a step is either all prefills (whole prompts of waiting
  sequences, FCFS, while they fit the token budget, the sequence cap and KV) or all decodes.
- :class:`SarathiScheduler` — Sarathi-Serve's stall-free batching: decodes first, then the ongoing
  partial prefill, then new prefills chunked to fill the token budget; KV for the whole prompt is
  reserved at admission (as Sarathi's block manager does), so a prefill is never preempted mid-way.
- :class:`StaticBatchScheduler` — FasterTransformer-like static batching: when idle, take up to
  ``max_batch_size`` waiting requests, run their prefill together, then decode until the longest one
  ends; nothing joins a batch in flight. Finished members stop generating and free their KV.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from gpusched import registry
from gpusched.errors import ConfigError
from gpusched.kvcache import BlockManager
from gpusched.policy import SeqState, StepPlan


def _preempt(seq: SeqState, waiting: deque, kv: BlockManager, plan: StepPlan, swap: bool = False) -> None:
    """Preempt ``seq`` and put it back at the head of the queue.

    Recompute (default): its KV is dropped (full blocks stay cached: a resume may find them, as in
    vLLM V1) and computed again on resume. Swap: its KV moves to host memory in this step and back
    when it is resumed; nothing is recomputed.
    """
    kv.free(seq.index, seq.block_hashes)
    if swap and seq.num_computed_tokens:
        seq.swapped = True
        plan.swap_tokens += seq.num_computed_tokens
    else:
        seq.num_computed_tokens = 0
    seq.num_preemptions += 1
    waiting.appendleft(seq)
    plan.preempted.append(seq)


def _grow_or_preempt(seq: SeqState, n: int, running: list, waiting: deque, kv: BlockManager,
                     plan: StepPlan, swap: bool = False) -> bool:
    """Make KV slots for ``n`` more computed tokens of running ``seq``, preempting from the tail.

    Slots already reserved (a whole prompt reserved at admission) are used first. Returns False when
    ``seq`` itself had to be preempted (it was the newest left).
    """
    target = seq.num_computed_tokens + n
    while not kv.grow_to(seq.index, target):
        victim = running.pop()
        _preempt(victim, waiting, kv, plan, swap)
        if victim is seq:
            return False
    return True


def _admit(seq: SeqState, n_new: int, kv: BlockManager, running: list, plan: StepPlan, now_s: float,
           hit_tokens: int, reserve_tokens: int = 0) -> bool:
    """Move ``seq`` (the head of the queue; the caller pops it) into ``running`` with ``n_new`` tokens
    scheduled, if the KV blocks it takes are free; else return False, changing nothing.

    KV is allocated for the ``hit_tokens + n_new`` tokens it will hold, or ``reserve_tokens`` if more
    (a scheduler that reserves the whole prompt at admission).
    """
    tokens = max(hit_tokens + n_new, reserve_tokens)
    if kv.allocate_if_free(seq.index, tokens, _full_block_hashes(seq, kv, tokens)) is None:
        return False
    if seq.swapped:  # its KV comes back from host memory in this step
        plan.swap_tokens += hit_tokens
        seq.swapped = False
    elif not seq.num_computed_tokens:  # a prefix-cache hit (KV handed over or swapped in is not one)
        seq.cached_tokens = hit_tokens
    seq.num_computed_tokens = hit_tokens
    if seq.scheduled_time_s is None:
        seq.scheduled_time_s = now_s
    running.append(seq)
    plan.entries.append((seq, n_new))
    return True


def _full_block_hashes(seq: SeqState, kv: BlockManager, tokens: int):
    """The prefix hashes of ``seq`` covering the full blocks among its first ``tokens`` tokens."""
    if not seq.block_hashes:
        return None
    return seq.block_hashes[: tokens // kv.block_size_tokens]


def _prefix_hit_tokens(seq: SeqState, kv: BlockManager, enabled: bool) -> int:
    """Tokens of a waiting ``seq`` whose KV need not be computed.

    A sequence handed over with its KV (disaggregated decode, or swapped out) keeps its
    ``num_computed_tokens``;
    otherwise the prefix cache is probed, capped so that at least one token is computed.
    """
    if seq.num_computed_tokens:
        return seq.num_computed_tokens
    if not enabled or not seq.block_hashes:
        return 0
    hit = kv.cached_prefix_tokens(seq.block_hashes)
    cap = (seq.num_tokens - 1) // kv.block_size_tokens * kv.block_size_tokens
    return min(hit, cap)


@dataclass
class VllmV1Scheduler:
    """vLLM V1's scheduler (FCFS policy), step for step.

    Parameters
    ----------
    max_num_batched_tokens : token budget of one step (vLLM's ``max_num_batched_tokens``).
    max_num_seqs : cap on running sequences.
    enable_chunked_prefill : if False, a waiting prompt that does not fit the remaining budget waits.
    enable_prefix_caching : reuse resident KV blocks whose hash matches the prompt's prefix.
    long_prefill_token_threshold : if > 0, a prefill computes at most this many tokens per step.
    reserve_full_prompt : admit a waiting sequence only if KV for its whole remaining prompt is free
        (vLLM 0.19's ``scheduler_reserve_full_isl``); only the scheduled chunk is allocated either way.
    preemption : ``recompute`` (vLLM V1's only mode) or ``swap`` (KV moved over the host link, priced
        by the engine from the instance's ``host_link_bytes_per_s``).
    """

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    long_prefill_token_threshold: int = 0
    reserve_full_prompt: bool = False
    preemption: str = "recompute"
    name: str = "vllm-v1"
    stable_decode_runs: ClassVar[bool] = True  # a promise of the class (gpusched.policy.BatchScheduler), not a knob

    @property
    def whole_sequence_budget(self) -> int | None:
        """Without chunked prefill (and no long-prefill threshold within the budget) a prompt, or a
        recompute of prompt + output, is scheduled whole, so it must fit one step's budget (vLLM requires
        ``max_num_batched_tokens >= max_model_len`` then); None when prefills are chunked."""
        if self.enable_chunked_prefill or 0 < self.long_prefill_token_threshold <= self.max_num_batched_tokens:
            return None
        return self.max_num_batched_tokens

    def __post_init__(self):
        _check_positive(self, "max_num_batched_tokens", "max_num_seqs")
        if self.preemption not in ("recompute", "swap"):
            raise ConfigError(f"preemption={self.preemption!r}; choose 'recompute' or 'swap'")

    def schedule(self, waiting: deque, running: list, kv: BlockManager, now_s: float) -> StepPlan:
        plan = StepPlan()
        budget = self.max_num_batched_tokens
        limit = self.long_prefill_token_threshold
        swap = self.preemption == "swap"
        entries, grow_to = plan.entries, kv.grow_to
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            c = seq.num_computed_tokens
            n = seq.prompt_tokens + seq.generated_tokens - c  # num_tokens - computed, inlined (hot loop)
            if 0 < limit < n:
                n = limit
            if n > budget:
                n = budget
            # the common case (the blocks are free) in one call; a failed grow_to changes nothing
            if not grow_to(seq.index, c + n) and not _grow_or_preempt(seq, n, running, waiting, kv, plan, swap):
                break
            entries.append((seq, n))
            budget -= n
            i += 1
        if plan.preempted:
            return plan
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            seq = waiting[0]
            hit = _prefix_hit_tokens(seq, kv, self.enable_prefix_caching)
            remaining = seq.num_tokens - hit
            n = remaining if not 0 < limit < remaining else limit
            if not self.enable_chunked_prefill and n > budget:
                break
            n = min(n, budget)
            whole = hit + remaining
            if self.reserve_full_prompt and not kv.can_allocate(whole, _full_block_hashes(seq, kv, whole)):
                break
            if not _admit(seq, n, kv, running, plan, now_s, hit):
                break
            waiting.popleft()
            budget -= n
        return plan


@dataclass
class VllmV0Scheduler:
    """vLLM V0's default scheduler: prefill-first, whole prompts, no chunking.

    A step that can admit at least one waiting prompt (FCFS, whole prompt within the token budget,
    under ``max_num_seqs``, KV for the whole prompt free) is a prefill-only step; otherwise every
    running sequence decodes one token, preempting the newest when KV cannot grow.

    A whole prompt (or a preempted sequence recomputed whole) must fit one step's budget, so, as vLLM V0
    requires ``max_num_batched_tokens >= max_model_len`` without chunked prefill, a run is refused
    before it starts when some request's prompt + output exceeds ``max_num_batched_tokens``
    (:attr:`whole_sequence_budget`; otherwise that request would block the FCFS queue forever).
    """

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    enable_prefix_caching: bool = False
    name: str = "vllm-v0"
    stable_decode_runs: ClassVar[bool] = True  # a promise of the class (gpusched.policy.BatchScheduler), not a knob

    @property
    def whole_sequence_budget(self) -> int:
        """Tokens one step can prefill for one sequence: its prompt + output must fit (no chunking)."""
        return self.max_num_batched_tokens

    def __post_init__(self):
        _check_positive(self, "max_num_batched_tokens", "max_num_seqs")

    def schedule(self, waiting: deque, running: list, kv: BlockManager, now_s: float) -> StepPlan:
        plan = StepPlan()
        budget = self.max_num_batched_tokens
        while waiting and len(running) < self.max_num_seqs:
            seq = waiting[0]
            hit = _prefix_hit_tokens(seq, kv, self.enable_prefix_caching)
            n = seq.num_tokens - hit
            if n > budget or not _admit(seq, n, kv, running, plan, now_s, hit):
                break
            waiting.popleft()
            budget -= n
        if plan:
            return plan
        i = 0
        while i < len(running):
            seq = running[i]
            if not _grow_or_preempt(seq, 1, running, waiting, kv, plan):
                break
            plan.entries.append((seq, 1))
            i += 1
        return plan


@dataclass
class SarathiScheduler:
    """Sarathi-Serve's stall-free batching with a token budget (``chunk_size`` tokens per step).

    Order within a step: every decode, then running partial prefills, then new prefills from the
    queue (FCFS), each chunked to the budget left. KV for a new sequence's whole prompt is reserved
    when it is admitted.
    """

    token_budget: int = 512
    max_num_seqs: int = 256
    enable_prefix_caching: bool = False
    name: str = "sarathi"
    stable_decode_runs: ClassVar[bool] = True  # a promise of the class (gpusched.policy.BatchScheduler), not a knob

    def __post_init__(self):
        _check_positive(self, "token_budget", "max_num_seqs")

    def schedule(self, waiting: deque, running: list, kv: BlockManager, now_s: float) -> StepPlan:
        plan = StepPlan()
        budget = self.token_budget
        decodes = [s for s in running if not s.in_prefill]
        prefills = [s for s in running if s.in_prefill]
        for seq in decodes:
            if budget == 0:
                break
            if seq in plan.preempted or not _grow_or_preempt(seq, 1, running, waiting, kv, plan):
                continue
            plan.entries.append((seq, 1))
            budget -= 1
        for seq in prefills:  # KV of the whole prompt was reserved at admission: nothing to grow
            if budget == 0:
                break
            if seq in plan.preempted:
                continue
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            plan.entries.append((seq, n))
            budget -= n
        if plan.preempted:
            return plan
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            seq = waiting[0]
            hit = _prefix_hit_tokens(seq, kv, self.enable_prefix_caching)
            n = min(seq.num_tokens - hit, budget)
            if not _admit(seq, n, kv, running, plan, now_s, hit, reserve_tokens=seq.num_tokens):
                break
            waiting.popleft()
            budget -= n
        return plan


@dataclass
class StaticBatchScheduler:
    """FasterTransformer-like static batching: a batch forms only when the instance is idle.

    KV for each member's whole prompt plus output is reserved at batch formation (FasterTransformer
    pre-allocates the cache for the maximum length), so static batches are never preempted. A member
    keeps the tokens it arrived with computed: on the decode instance of a prefill/decode pair, the
    prompt's KV handed over (its first step is a decode).
    """

    max_batch_size: int = 32
    name: str = "static"
    stable_decode_runs: ClassVar[bool] = True  # a promise of the class (gpusched.policy.BatchScheduler), not a knob

    def __post_init__(self):
        _check_positive(self, "max_batch_size")

    def schedule(self, waiting: deque, running: list, kv: BlockManager, now_s: float) -> StepPlan:
        plan = StepPlan()
        if not running:
            while waiting and len(running) < self.max_batch_size:
                seq = waiting[0]
                if not kv.can_allocate(seq.prompt_tokens + seq.output_tokens):
                    break
                waiting.popleft()
                kv.allocate(seq.index, seq.prompt_tokens + seq.output_tokens)
                if seq.scheduled_time_s is None:
                    seq.scheduled_time_s = now_s
                running.append(seq)
        # every member computes what it has left: its prompt (or the tokens it lacks) at formation, then
        # one token per step (num_tokens inlined: the engine calls this at every arrival and finish)
        plan.entries = [(seq, seq.prompt_tokens + seq.generated_tokens - seq.num_computed_tokens) for seq in running]
        return plan


def _check_positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{type(obj).__name__}.{name} = {value!r}; it must be a positive integer")


SCHEDULERS = {
    "vllm-v1": VllmV1Scheduler,
    "vllm-v0": VllmV0Scheduler,
    "sarathi": SarathiScheduler,
    "static": StaticBatchScheduler,
}
_SUMMARIES = {
    "vllm-v1": "vLLM V1: running first, chunked prefill, FCFS admission, recompute (or swap) preemption",
    "vllm-v0": "vLLM V0 default: whole-prompt prefill steps first, else decode steps",
    "sarathi": "Sarathi-Serve: stall-free batching, decodes then chunked prefills within a token budget",
    "static": "static batching (FasterTransformer-like): a batch forms only when the instance is idle",
}
for _name, _cls in SCHEDULERS.items():
    registry.register("scheduler", _name, lambda context, _cls=_cls, **knobs: _cls(**knobs), _SUMMARIES[_name],
                      "simulators.serving.schedulers")


def make_scheduler(name: str, context: registry.BuildContext | None = None, /, **knobs):
    """Build a registered scheduler by name: the baselines above, or a paper's policy registered in
    :mod:`gpusched.registry` (``gpusched policies`` lists them). ``context`` tells it the run it serves.
    ``name`` and ``context`` are positional so that a policy may take a knob called ``name``."""
    return registry.build("scheduler", name, context, **knobs)
