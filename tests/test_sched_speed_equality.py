"""The fast MC-SF and static schedulers against straightforward references (same decisions, bit for bit).

1. MC-SF's ``schedule`` (one all-or-nothing KV growth for the running batch, the oracle's remaining steps in
   one loop, the queue kept sorted across steps, admit_prefix or its closed-form shortcut) against a reference
   kept here that does the paper's rule literally (spec §1(c)): grow each running sequence in order, preempting
   the newest when one cannot grow; then scan the waiting queue in (predicted output, row) order and admit a
   candidate while its prompt fits the step's token budget and the projected load ``sum (S + t')`` over the
   members alive at ``t'`` fits memory at *every* step ``t' = 1 .. last candidate's end`` (brute force, no
   completion-point argument, no bisection). Random small states, driven several steps so the kept queue order
   and the preemption path are exercised.
2. The SimPy engine with decode runs (``mode="simpy"``) against one event per step (``mode="step"``) on a
   slice of the Azure conversation trace, for ``mc-sf`` and ``static``, at the trace's rate and at 8x it.
"""
from __future__ import annotations

import copy
import random
from collections import deque

import numpy as np
import pandas as pd
import pytest

from formulations.mcsf.policy import KvShortageError, McsfScheduler
from gpusched.kvcache import BlockManager
from gpusched.policy import SeqState, StepPlan


# ---------------------------------------------------------------- reference MC-SF step (straightforward)
def reference_schedule(sched: McsfScheduler, waiting: deque, running: list, kv: BlockManager,
                       now_s: float) -> StepPlan:
    """One MC-SF step done literally; reads only ``sched``'s knobs and its prediction rule."""
    plan = StepPlan()
    budget = sched.max_num_batched_tokens
    i = 0
    while i < len(running):  # 1. running sequences decode (or finish their prompt), in order
        seq = running[i]
        n = seq.num_tokens - seq.num_computed_tokens
        if not kv.grow_to(seq.index, seq.num_tokens):
            if sched.on_kv_shortage == "raise":
                raise KvShortageError("reference: KV short")
            preempted_self = False
            while kv.blocks_needed_to_extend(seq.index, seq.num_tokens - kv.tokens_of(seq.index)) > kv.num_free_blocks:
                victim = running.pop()
                kv.free(victim.index)
                victim.num_computed_tokens = 0
                victim.num_preemptions += 1
                waiting.appendleft(victim)
                plan.preempted.append(victim)
                if victim is seq:
                    preempted_self = True
                    break
            if preempted_self:
                break
            kv.extend(seq.index, seq.num_tokens - kv.tokens_of(seq.index))
        plan.entries.append((seq, n))
        budget -= n
        i += 1
    if plan.preempted or not waiting:
        return plan
    pad = kv.block_size_tokens - 1
    memory = kv.num_blocks * kv.block_size_tokens

    def steps_left(seq):  # spec §1(g).10: at least one step, padded peak capped at memory
        left = max(sched.predicted_output_tokens(seq) - seq.generated_tokens, 1)
        return max(min(left, memory - seq.num_tokens - pad), 1)

    members = [(s.num_tokens + pad, steps_left(s)) for s in running]  # (S, E): holds S + t' for t' <= E
    if sched.fcfs:
        order = sorted(waiting, key=lambda s: (s.arrival_time_s, s.index))
    else:
        order = sorted(waiting, key=lambda s: (sched.predicted_output_tokens(s), s.index))
    admitted, horizon, prefill = [], 0, 0
    for seq in order:
        n = seq.num_tokens - seq.num_computed_tokens
        if n > budget - prefill and not (prefill == 0 and n > sched.max_num_batched_tokens):
            break
        trial = members + [(seq.num_tokens + pad, steps_left(seq))]
        end = max(horizon, trial[-1][1])
        if any(sum(S + t for S, E in trial if E >= t) > memory for t in range(1, end + 1)):
            break
        members, horizon, prefill = trial, end, prefill + n
        admitted.append(seq)
    for seq in admitted:
        waiting.remove(seq)
        n = seq.num_tokens - seq.num_computed_tokens
        kv.allocate(seq.index, seq.num_computed_tokens + n)
        if seq.scheduled_time_s is None:
            seq.scheduled_time_s = now_s
        running.append(seq)
        plan.entries.append((seq, n))
    return plan


# ---------------------------------------------------------------- random states, driven a few steps
def _random_state(rng: random.Random):
    """A small instance in the middle of a run: running sequences (some of whose KV must grow), a queue
    (fresh arrivals and preempted ones), tight memory so that admissions fail and growth may not fit."""
    bs = rng.choice((1, 4, 16))
    blocks = rng.randint(4, 60) * (16 // bs)
    kv = BlockManager(blocks, bs)
    running, waiting, index = [], deque(), 0
    pred_mode = rng.choice(("truth", "none", "over", "under", "under", "under", "numpy"))  # under: KV runs short

    def new_seq(arrival):
        nonlocal index
        s = SeqState(f"r{index}", index, arrival, rng.randint(1, 60), rng.randint(1, 40))
        s.predicted_output_tokens = {"truth": s.output_tokens, "none": None,
                                     "over": s.output_tokens + rng.choice((0, 5, 20, 200, 2000)),  # large: the cap binds
                                     "under": max(1, s.output_tokens - rng.randint(0, 30)),
                                     "numpy": np.int64(s.output_tokens)}[pred_mode]
        index += 1
        return s

    for _ in range(rng.randint(0, 8)):
        s = new_seq(rng.uniform(0, 5))
        s.generated_tokens = rng.randint(1, s.output_tokens) if s.output_tokens > 1 else 1
        if s.generated_tokens >= s.output_tokens:
            s.generated_tokens = s.output_tokens - 1 if s.output_tokens > 1 else 0
        s.num_computed_tokens = s.num_tokens - 1 if s.generated_tokens else 0
        s.scheduled_time_s = 0.0
        if kv.allocate_if_free(s.index, max(s.num_computed_tokens, 1) + rng.randint(0, 1)) is None:
            break
        running.append(s)
    for _ in range(rng.randint(0, 10)):
        s = new_seq(rng.uniform(0, 10))
        if rng.random() < 0.15:  # a sequence preempted earlier: generated tokens kept, recomputed whole
            s.generated_tokens = rng.randint(1, s.output_tokens)
            if s.generated_tokens >= s.output_tokens:
                s.generated_tokens = s.output_tokens - 1
            s.num_preemptions = 1
        waiting.append(s)
    knobs = dict(max_num_batched_tokens=rng.choice((8, 40, 100, 8192)), fcfs=rng.random() < 0.25,
                 on_kv_shortage=rng.choice(("preempt", "preempt", "raise")))
    return waiting, running, kv, knobs


def _advance(plan: StepPlan, running: list, kv: BlockManager, rng: random.Random, waiting: deque) -> None:
    """What an engine does after a step: computed tokens grow, full sequences sample a token, finished ones
    leave and free their KV; sometimes a request arrives (at the queue's end)."""
    for seq, n in plan.entries:
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens:
            seq.generated_tokens += 1
    for seq in [s for s in running if s.generated_tokens >= s.output_tokens]:
        running.remove(seq)
        kv.free(seq.index)
    if rng.random() < 0.3:
        s = SeqState(f"late{rng.random()}", 1000 + rng.randint(0, 10 ** 6), 20.0, rng.randint(1, 60),
                     rng.randint(1, 40))
        waiting.append(s)


def _snapshot(plan, waiting, running, kv):
    def seq_state(s):
        return (s.request_id, s.num_computed_tokens, s.generated_tokens, s.num_preemptions, s.scheduled_time_s)
    return ([(s.request_id, n) for s, n in plan.entries], [s.request_id for s in plan.preempted],
            [seq_state(s) for s in waiting], [seq_state(s) for s in running],
            kv.num_used_blocks, kv.tokens_each([s.index for s in running]))


def test_mcsf_schedule_equals_the_literal_rule_on_random_states():
    """Random small states, each driven up to 12 steps with both the scheduler (one instance kept across
    the steps, as an engine keeps it) and the reference, on deep copies: identical plans, queues, batches
    and KV after every step (or the same KvShortageError). Counts what was exercised so that the test
    cannot pass on trivial states."""
    rng = random.Random(20)
    seen = {"admitted": 0, "refused": 0, "preempted": 0, "raised": 0, "steps": 0}
    for case in range(600):
        waiting, running, kv, knobs = _random_state(rng)
        fast_state = copy.deepcopy((waiting, running, kv))
        ref_state = copy.deepcopy((waiting, running, kv))
        fast_sched, ref_sched = McsfScheduler(**knobs), McsfScheduler(**knobs)
        step_rng = random.Random(case)
        for step in range(12):
            now = float(step)
            try:
                fast_plan = fast_sched.schedule(*fast_state, now)
            except KvShortageError:
                with pytest.raises(KvShortageError):
                    reference_schedule(ref_sched, *ref_state, now)
                seen["raised"] += 1
                break
            ref_plan = reference_schedule(ref_sched, *ref_state, now)
            assert _snapshot(fast_plan, *fast_state) == _snapshot(ref_plan, *ref_state), (case, step, knobs)
            seen["steps"] += 1
            seen["preempted"] += len(ref_plan.preempted)
            seen["admitted"] += sum(1 for s, _ in ref_plan.entries if s.scheduled_time_s == now)
            seen["refused"] += bool(ref_state[0]) and not ref_plan.preempted
            if not ref_plan and not ref_state[0]:
                break
            seed = step_rng.random()
            _advance(fast_plan, fast_state[1], fast_state[2], random.Random(seed), fast_state[0])
            _advance(ref_plan, ref_state[1], ref_state[2], random.Random(seed), ref_state[0])
    assert seen["steps"] > 3000 and seen["admitted"] > 1000 and seen["refused"] > 500, seen
    assert seen["preempted"] > 10 and seen["raised"] > 5, seen


# ---------------------------------------------------------------- engine modes on the Azure trace
@pytest.mark.parametrize("scheduler", ["mc-sf", "static"])
@pytest.mark.parametrize("rate", [1.0, 8.0])
def test_simpy_mode_equals_step_mode_on_the_azure_trace(scheduler, rate):
    """Decode runs (mode="simpy") give the per-request results of one event per step (mode="step") on the
    first 300 requests of the bundled Azure conversation trace, at its rate and overloaded 8x (MC-SF then
    schedules with a queue every step; static batches form back to back)."""
    from simulators.serving.bench import _instances, workload
    from simulators.serving.run import simulate

    trace = workload("azure-conv-2023", rate=rate).head(300)
    instances = _instances(trace, scheduler, {}, False)
    step = simulate(trace, instances, record_timeline=False, mode="step")
    runs = simulate(trace, instances, record_timeline=False, mode="simpy")
    assert step.num_unfinished == 0
    pd.testing.assert_frame_equal(step.requests, runs.requests)
    assert step.num_steps == runs.num_steps
