"""MC-SF as an online batch scheduler for the SimPy serving engines (:class:`gpusched.policy.BatchScheduler`).

Jaillet et al., arXiv 2502.07115, spec ``shared/papers/mcsf.md`` §1(c). Every step:

1. every running sequence stays in the batch and decodes one token (non-preemptive, top priority);
2. waiting sequences are sorted by predicted output length (ties by arrival index = trace row), and the
   longest prefix that passes the future-feasibility check starts now, its whole prompt prefilled in this
   step (the paper's model: "a request's prompt is processed in the round it is started"). The scan stops at
   the first failure (``break``, spec §1(g).3), also when a prompt does not fit the step's token budget.

Time is counted in steps, so the check is the discrete one of spec §1(c) (and of the authors' real-data
code, whose projection in units of one average batch is the same thing, see :mod:`.realdata`).

Memory unit and safety
----------------------
The check runs in *tokens* with :func:`.engine.admit_prefix` (reused unchanged) against
``M = kv.num_blocks * kv.block_size_tokens``, and every sequence (running or candidate) is padded by
``block_size_tokens - 1`` tokens. A sequence holding ``T`` KV slots occupies ``ceil(T / bs) <= (T + bs - 1) / bs``
blocks, so a projected padded load ``<= M`` implies at most ``num_blocks`` blocks: the token check is a
sufficient condition for the block check, conservative by less than one block per sequence. (An exact block
check would lose ``admit_prefix``'s closed form ``load = W + t'``, since ``ceil`` is not linear.)

Token convention: the theory's request holds ``s + k`` tokens after ``k`` rounds; in the engine, after
``k`` steps a sequence has ``num_tokens = s + k`` tokens of which ``s + k - 1`` have KV (the last sampled
token's KV is computed in the next step). The projection uses ``num_tokens``, i.e. is one token above the
engine's real need per sequence. A running sequence with ``g`` tokens generated and prediction ``õ`` is
projected for ``max(õ - g, 1)`` more steps, holding ``num_tokens + t'`` after ``t'`` of them. Hence with
``õ >= o`` for every request (the oracle, or an over-estimate) every admitted sequence can grow to
``prompt + output`` without the block manager ever running out, and nothing is preempted (spec P1).

Predictions that under-estimate, or capped predictions (below), can still exhaust KV. The policy then does
what vLLM V1 does, on the ``on_kv_shortage="preempt"`` default: recompute-preempt the newest running sequence
until the growing one fits (it re-enters the queue with its generated tokens kept, ``num_preemptions``
counts it); ``on_kv_shortage="raise"`` raises :class:`KvShortageError` instead.

A prediction whose padded peak ``num_tokens + õ + bs - 1`` exceeds ``M`` could never pass the check and would
block the queue forever (spec §1(g).10); it is capped at ``M - num_tokens - bs + 1``.

Prefix caching is not used: KV is allocated without block hashes, so the check's accounting is exact.
"""
from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable

import numpy as np

from gpusched.errors import ConfigError, GpuschedError
from gpusched.kvcache import BlockManager
from gpusched.policy import CompiledRule, SeqState, StepPlan

from .engine import admit_prefix

__all__ = ["McsfScheduler", "KvShortageError", "PREDICTIONS"]

PREDICTIONS = ("oracle",)


class KvShortageError(GpuschedError, RuntimeError):
    """A running sequence cannot grow (predictions below the truth) and ``on_kv_shortage="raise"``."""


@dataclass
class McsfScheduler:
    """Memory-Constrained Shortest First (spec §1(c)) for :func:`simulators.serving.simulate`.

    Parameters
    ----------
    max_num_batched_tokens : token budget of one step: decodes (one token each) first, then whole prompts
        of admitted sequences. A prompt larger than the whole budget is admitted only as the step's first
        prefill (else it would wait forever).
    prediction : ``"oracle"``: ``seq.predicted_output_tokens``, falling back to the true ``seq.output_tokens``
        when it is None (the engines do not set it, so this is the oracle prediction the authors' real-data
        code uses, spec §1(g).11); or a callable ``f(seq) -> int >= 1`` giving the predicted output tokens.
    fcfs : order waiting sequences by arrival instead of predicted length: MC-Benchmark (spec §1(c)).
    on_kv_shortage : ``"preempt"`` (recompute-preempt the newest running sequence, vLLM V1 style) or
        ``"raise"`` (:class:`KvShortageError`), when a running sequence cannot grow.
    name : reported name.

    No ``stable_decode_runs``: admission depends on a projection that changes every step. But with nothing
    waiting, every running sequence decodes (step 1 below), so engines may advance runs of decode steps
    then (``decode_runs_when_queue_empty``, :class:`gpusched.policy.BatchScheduler`).
    """

    decode_runs_when_queue_empty = True  # (a class attribute, not a parameter)

    max_num_batched_tokens: int = 8192
    prediction: str | Callable[[SeqState], int] = "oracle"
    fcfs: bool = False
    on_kv_shortage: str = "preempt"
    name: str = "mc-sf"
    # the waiting queue in priority order, kept across steps (see _queue_order): (key, index, seq)
    _order: list = field(default_factory=list, init=False, repr=False, compare=False)
    _queue: object = field(default=None, init=False, repr=False, compare=False)  # the queue it orders
    _known: int = field(default=0, init=False, repr=False, compare=False)  # its length once ordered

    def __post_init__(self):
        if not isinstance(self.max_num_batched_tokens, int) or self.max_num_batched_tokens < 1:
            raise ConfigError(f"McsfScheduler.max_num_batched_tokens = {self.max_num_batched_tokens!r}; it must be "
                              f"a positive integer")
        if not callable(self.prediction) and self.prediction not in PREDICTIONS:
            raise ConfigError(f"McsfScheduler.prediction = {self.prediction!r}; use one of {PREDICTIONS} or a "
                              f"callable seq -> predicted output tokens")
        if self.on_kv_shortage not in ("preempt", "raise"):
            raise ConfigError(f"McsfScheduler.on_kv_shortage = {self.on_kv_shortage!r}; use 'preempt' or 'raise'")

    def compiled_rule(self) -> CompiledRule | None:
        """This rule on the compiled serving engine (:class:`gpusched.policy.CompiledRule`), or None where its
        transcription does not cover the settings: a prediction callable, ``on_kv_shortage="raise"``, or a
        subclass (which may change any step). The stock oracle is the true output there, as here (the engines
        do not set ``seq.predicted_output_tokens``)."""
        if type(self) is not McsfScheduler or callable(self.prediction) or self.on_kv_shortage != "preempt":
            return None
        return CompiledRule("mc-sf", self.max_num_batched_tokens, "arrival" if self.fcfs else "output")

    # -- predictions ------------------------------------------------------------------------------------
    def predicted_output_tokens(self, seq: SeqState) -> int:
        """``õ`` of ``seq`` (tokens), before capping."""
        if callable(self.prediction):
            p = int(self.prediction(seq))
        else:
            p = seq.predicted_output_tokens if seq.predicted_output_tokens is not None else seq.output_tokens
        if p < 1:
            raise ConfigError(f"predicted output of request {seq.request_id!r} is {p}; it must be >= 1")
        return int(p)

    def _remaining(self, seq: SeqState, pad: int, memory: int) -> int:
        """Predicted steps left (>= 1), capped so that the padded peak fits ``memory`` (spec §1(g).10)."""
        left = max(self.predicted_output_tokens(seq) - seq.generated_tokens, 1)
        return max(min(left, memory - seq.num_tokens - pad), 1)

    # -- the step ---------------------------------------------------------------------------------------
    def schedule(self, waiting, running: list, kv: BlockManager, now_s: float) -> StepPlan:
        plan = StepPlan()
        # 1. running sequences continue (whole-prompt admission: each is a decode of one token). Their KV
        # grows in one all-or-nothing call (the same blocks as one grow_to each, in order, when it succeeds);
        # if it fails, one grow_to each finds where to preempt, as before.
        tokens = [s.prompt_tokens + s.generated_tokens for s in running]  # num_tokens, inlined (hot path)
        if kv.grow_each_to([s.index for s in running], tokens):
            news = [t - s.num_computed_tokens for s, t in zip(running, tokens)]
            plan.entries.extend(zip(running, news))
            budget = self.max_num_batched_tokens - sum(news)
        else:
            budget = self._grow_one_by_one(waiting, running, kv, plan)
            tokens = [s.num_tokens for s in running]
        if plan.preempted or not waiting:
            return plan
        # 2. the longest feasible prefix of the waiting queue in predicted-length order
        bs = kv.block_size_tokens
        pad = bs - 1
        memory = kv.num_blocks * bs
        m = len(running)
        run_S = [t + pad for t in tokens]  # everything is measured from now: P = 0, t' = steps ahead
        oracle = self._oracle()
        # the oracle's remaining steps are needed only if a candidate passes the cheap check below (under
        # overload often none does); a callable's are asked every step, as it may check or count calls
        run_E = None if oracle else [self._remaining(s, pad, memory) for s in running]
        order = self._queue_order(waiting)
        # cheap necessary condition first (the load after the next step must fit): bounds the candidates
        free = memory - sum(run_S) - m
        cands = []
        prefill = 0
        for _, _, seq in order:
            n = seq.num_tokens - seq.num_computed_tokens
            oversized_alone = prefill == 0 and n > self.max_num_batched_tokens
            if free < seq.num_tokens + pad + 1 or (n > budget - prefill and not oversized_alone):
                break
            cands.append(seq)
            free -= seq.num_tokens + pad + 1
            prefill += n
        if not cands:
            return plan
        if run_E is None:
            run_E = _oracle_remaining(running, run_S, memory)
        cand_S = [s.num_tokens + pad for s in cands]
        if oracle and not self.fcfs and type(self)._remaining is McsfScheduler._remaining:
            # (their predictions were checked >= 1 when they were queued: _priority)
            cand_K = _oracle_remaining(cands, cand_S, memory)
        else:
            cand_K = [self._remaining(s, pad, memory) for s in cands]
        if sum(run_S) + sum(run_E) + sum(cand_S) + sum(cand_K) <= memory:
            # A member's projected load S + t' peaks at its last step E, so this sum bounds the load at
            # every point: every prefix fits, and admit_prefix (which returns the longest that does, under
            # a bound that is then the whole list since E >= 1) would admit them all. Saves its numpy work
            # in the common case of a lightly loaded instance; the decision is the same.
            k = len(cands)
        else:
            k = admit_prefix(0, np.zeros(m, dtype=np.int64), np.array(run_S, dtype=np.int64),
                             np.array(run_E, dtype=np.int64), cand_S, cand_K, memory)
        admitted = cands[:k]
        if order is self._order:  # the admitted are its first k
            del order[:k]
            self._known -= k
        for seq in admitted:
            waiting.remove(seq)
            n = seq.num_tokens - seq.num_computed_tokens
            kv.allocate(seq.index, seq.num_computed_tokens + n)
            if seq.scheduled_time_s is None:
                seq.scheduled_time_s = now_s
            running.append(seq)
            plan.entries.append((seq, n))
        return plan

    def _grow_one_by_one(self, waiting, running: list, kv: BlockManager, plan: StepPlan) -> int:
        """Step 1 when the running sequences' KV does not all fit: grow them in order, preempting the newest
        (:meth:`_make_room`) when one cannot grow; stop if a sequence is itself preempted. Returns the token
        budget left."""
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(running):
            seq = running[i]
            n = seq.num_tokens - seq.num_computed_tokens
            if not kv.grow_to(seq.index, seq.num_tokens):
                if not self._make_room(seq, seq.num_tokens - kv.tokens_of(seq.index), running, waiting, kv, plan):
                    break
                kv.extend(seq.index, seq.num_tokens - kv.tokens_of(seq.index))  # fits now (raises if not)
            plan.entries.append((seq, n))
            budget -= n
            i += 1
        return budget

    def _priority(self, seq: SeqState) -> tuple:
        """The sort key of a waiting sequence: predicted output tokens (or arrival, ``fcfs``), then its row."""
        if self.fcfs:
            return seq.arrival_time_s, seq.index, seq
        return self.predicted_output_tokens(seq), seq.index, seq

    def _oracle(self) -> bool:
        """Whether predictions are the stock oracle's (fixed per request: ``seq.predicted_output_tokens`` or
        the true output), rather than a callable's or a subclass's, which may change with progress."""
        return not callable(self.prediction) and type(self).predicted_output_tokens is McsfScheduler.predicted_output_tokens

    def _queue_order(self, waiting) -> list:
        """``waiting`` sorted by :meth:`_priority`, as ``(key, index, seq)``. With fixed keys (FCFS, or the
        oracle's predictions) kept across steps and updated with what changed (O(log n) per request, not
        O(n log n) per step; the queue of an overloaded instance holds thousands): engines append arrivals
        at the queue's end, and the scheduler itself admits from it (the first of the order) and puts the
        preempted back (:meth:`_make_room`). Otherwise sorted every step."""
        if not (self.fcfs or self._oracle()):
            return sorted(map(self._priority, waiting))
        if waiting is not self._queue or len(waiting) < self._known:  # another queue (a new run)
            self._queue, self._order = waiting, sorted(map(self._priority, waiting))
        else:
            for seq in islice(reversed(waiting), len(waiting) - self._known):  # the arrivals since the last step
                insort(self._order, self._priority(seq))
        self._known = len(waiting)
        return self._order

    def _make_room(self, seq: SeqState, grow: int, running: list, waiting, kv: BlockManager,
                   plan: StepPlan) -> bool:
        """KV ran short (predictions below the truth): preempt the newest until ``seq`` can grow, or raise.
        Returns False if ``seq`` itself was preempted."""
        if self.on_kv_shortage == "raise":
            raise KvShortageError(
                f"MC-SF: request {seq.request_id!r} needs {kv.blocks_needed_to_extend(seq.index, grow)} more KV "
                f"blocks, {kv.num_free_blocks} free of {kv.num_blocks}: an output prediction was below the truth "
                f"(generated {seq.generated_tokens}, predicted {self.predicted_output_tokens(seq)}); use "
                f"on_kv_shortage='preempt' or over-estimating predictions")
        while kv.blocks_needed_to_extend(seq.index, grow) > kv.num_free_blocks:
            victim = running.pop()
            kv.free(victim.index)
            victim.num_computed_tokens = 0  # recompute on resume; generated tokens are kept
            victim.num_preemptions += 1
            waiting.appendleft(victim)
            if waiting is self._queue and (self.fcfs or self._oracle()):  # (see _queue_order)
                insort(self._order, self._priority(victim))
                self._known += 1
            plan.preempted.append(victim)
            if victim is seq:
                return False
        return True


def _oracle_remaining(seqs: list, padded_tokens: list, memory: int) -> list:
    """:meth:`McsfScheduler._remaining` of every sequence of ``seqs`` (running ones, or candidates) under the
    stock oracle, in steps (>= 1): ``max(min(max(õ - g, 1), memory - S), 1)`` with
    ``õ = seq.predicted_output_tokens``, or the true output when it is None, and ``S`` the matching padded
    ``num_tokens`` (tokens) of ``padded_tokens``. The hot path of a loaded instance (hundreds of running
    sequences, every step): one loop of comparisons instead of three builtin calls and a property per
    sequence. It does not check ``õ >= 1`` (:meth:`McsfScheduler.predicted_output_tokens` does, when a
    sequence is queued)."""
    out = []
    append = out.append
    for seq, S in zip(seqs, padded_tokens):
        p = seq.predicted_output_tokens
        if p is None:
            p = seq.output_tokens
        if type(p) is not int:
            p = int(p)
        e = p - seq.generated_tokens
        if e < 1:
            e = 1
        cap = memory - S  # the padded peak must fit (spec §1(g).10)
        if e > cap:
            e = cap
        if e < 1:
            e = 1
        append(e)
    return out
