"""WAIT and Nested WAIT inside the shared SimPy serving engine: caps per (type, stage), no preemption when
M^pi <= C, pauses keep KV, Nested WAIT's prefix rule, the registry path. The checks look at every plan through a
recorder that classifies requests by their lengths and stages by their tokens, independently of the policies."""
import math
from collections import Counter

import numpy as np
import pytest

from formulations.nested_wait.calibrate import types_from_lengths
from formulations.nested_wait.fluid import PromptType
from formulations.nested_wait.policy import NestedWaitScheduler, WaitScheduler
from formulations.nested_wait.segments import SegmentDesign
from formulations.nested_wait.thresholds import check_wait_thresholds
from gpusched.errors import ConfigError
from gpusched.perf import RooflineStepTime
from gpusched.policy import BatchScheduler
from gpusched.synthetic import synthetic_trace
from simulators.serving import InstanceConfig, simulate

STEP = RooflineStepTime("llama2-7b", "A100-80GB")
BS = 16


def _mixed_trace(rate, n, seed, lengths=((64, 9), (32, 17)), share=0.6):
    rng = np.random.default_rng(seed)
    pick = rng.random(n) < share
    prompts = np.where(pick, lengths[0][0], lengths[1][0])
    outputs = np.where(pick, lengths[0][1], lengths[1][1])
    return synthetic_trace(rate, n=n, seed=seed, prompt_tokens=lambda r, k: prompts[:k],
                           output_tokens=lambda r, k: outputs[:k])


class Recorder:
    """Wraps a scheduler; records, per call, snapshots (the engine mutates the requests later): the number of
    queued requests (no KV), {index: (stage, KV tokens)} of the residents before and after the call, the plan's
    entries as (index, (prompt, output), stage), the number preempted and the time. A stage is the request's
    generated tokens; a prefill entry (more than one token, or nothing generated yet) is stage 0."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    @staticmethod
    def _residents(running, waiting, kv):
        return {s.index: (s.generated_tokens, kv.tokens_of(s.index)) for s in list(running) + list(waiting)
                if s.index in kv}

    def schedule(self, waiting, running, kv, now_s):
        queued = sum(1 for s in waiting if s.index not in kv)
        before = self._residents(running, waiting, kv)
        plan = self.inner.schedule(waiting, running, kv, now_s)
        entries = [(s.index, (s.prompt_tokens, s.output_tokens), 0 if n > 1 or s.generated_tokens == 0
                    else s.generated_tokens) for s, n in plan.entries]
        self.calls.append((queued, before, entries, self._residents(running, waiting, kv), len(plan.preempted),
                           now_s))
        return plan


def _wait_setup(n=(3, 2)):
    """Two types and thresholds n; KV blocks just above M^pi with the block padding (eq. 11's memory row)."""
    types = [PromptType(64, 8, 36.0), PromptType(32, 16, 24.0)]
    check = check_wait_thresholds(types, n, 0.01, 1e-5, 1e9, memory_pad_tokens=BS - 1)
    return types, check, math.ceil(check.memory_bound_tokens / BS)


KIND = {(64, 9): 0, (32, 17): 1}


def test_wait_caps_per_type_and_stage_and_never_preempts_at_capacity():
    """P1 in the engine: at 180 req/s (a queue builds) with C = padded M^pi, every plan has at most n_j requests of
    type j at each stage, nothing is ever preempted, all requests finish (drain); the caps do bind."""
    types, check, blocks = _wait_setup()
    n = check.thresholds
    trace = _mixed_trace(180.0, 600, seed=1)
    sched = Recorder(WaitScheduler(types, n, drain_after_s=float(trace.df["arrival_time_s"].max())))
    res = simulate(trace, [InstanceConfig(STEP, blocks, BS, sched)], record_timeline=False)
    most = Counter()
    for queued, before, entries, after, preempted, now in sched.calls:
        counts = Counter((KIND[lengths], stage) for _, lengths, stage in entries)
        assert all(c <= n[j] for (j, _), c in counts.items())
        assert preempted == 0
        most |= counts
    assert res.requests["num_preemptions"].sum() == 0
    assert (res.requests["status"] == "finished").all()
    assert most[(0, 3)] == n[0] and most[(1, 10)] == n[1]  # the caps bind: the check is not vacuous


def test_paused_requests_keep_their_kv_and_stage():
    """P2 in the engine: between two calls a resident request that was not scheduled keeps its stage and its KV."""
    types, check, blocks = _wait_setup()
    trace = _mixed_trace(30.0, 300, seed=2)
    sched = Recorder(WaitScheduler(types, check.thresholds, drain_after_s=float(trace.df["arrival_time_s"].max())))
    simulate(trace, [InstanceConfig(STEP, blocks, BS, sched)], record_timeline=False)
    paused = 0
    for call, nxt in zip(sched.calls, sched.calls[1:]):
        ran = {idx for idx, _, _ in call[2]}
        for idx, state in call[3].items():
            if idx not in ran:
                assert nxt[1][idx] == state  # same generated tokens, same KV tokens at the next call
                paused += 1
    assert paused > 100


def test_tight_memory_evicts_lifo_and_still_finishes():
    """With C below M^pi the LIFO rule must act: preemptions happen and every request still finishes (the test
    above would fail with this capacity)."""
    types, check, blocks = _wait_setup()
    trace = _mixed_trace(180.0, 600, seed=1)
    sched = WaitScheduler(types, check.thresholds, drain_after_s=float(trace.df["arrival_time_s"].max()))
    res = simulate(trace, [InstanceConfig(STEP, blocks // 3, BS, sched)], record_timeline=False)
    assert res.requests["num_preemptions"].sum() > 0
    assert (res.requests["status"] == "finished").all()


def test_nested_wait_prefix_rule_in_the_engine():
    """P3/P4 in the engine: nothing runs while fewer than n_1 wait (before the drain); only a prefix of segments runs,
    and in it every stage runs min(n_k, present) requests. Stages are read from the requests' tokens."""
    design = SegmentDesign((8, 16), (0.6, 0.4), 64)
    n = (3, 2)
    trace = _mixed_trace(40.0, 400, seed=3)
    last = float(trace.df["arrival_time_s"].max())
    sched = Recorder(NestedWaitScheduler(design, n, drain_after_s=last))
    res = simulate(trace, [InstanceConfig(STEP, 4000, BS, sched)], record_timeline=False)
    seg = design.segment_of_stage
    idle_with_residents = 0
    for queued, before, entries, after, preempted, now in sched.calls:
        if now >= last:
            continue
        at = Counter(stage for stage, _ in before.values())
        k = 0 if queued < n[0] else (2 if at[design.first_stages[1]] >= n[1] else 1)
        stages = Counter(stage for _, _, stage in entries)
        if k == 0:
            assert not entries
            idle_with_residents += bool(before)
        assert all(seg(s) < k for s in stages)
        for s, c in at.items():
            if seg(s) < k:
                assert stages[s] == min(c, n[seg(s)])
    assert idle_with_residents > 10
    assert (res.requests["status"] == "finished").all()


def test_registry_runs_wait_and_nested_wait():
    """simulate(..., InstanceConfig(scheduler=name)) builds both through the registry, calibrated on the run."""
    trace = _mixed_trace(20.0, 300, seed=4)
    for name, knobs in (("wait", {}), ("nested-wait", {}), ("nested-wait", {"num_segments": 2, "mode": "no-wait"})):
        res = simulate(trace, [InstanceConfig(STEP, 2000, BS, name, knobs)], record_timeline=False)
        assert (res.requests["status"] == "finished").all(), name


def test_registry_calibration_is_recorded_and_deterministic():
    from gpusched.registry import BuildContext, build
    trace = _mixed_trace(20.0, 300, seed=4)
    ctx = BuildContext(trace=trace, step_model=STEP, num_kv_blocks=2000, block_size_tokens=BS)
    a, b = build("scheduler", "wait", ctx), build("scheduler", "wait", ctx)
    assert isinstance(a, BatchScheduler) and a.name == "wait"
    assert a.thresholds == b.thresholds and a.calibration["rule"].startswith("eq. (11)")
    assert a.calibration["d0_s"] >= 0 and a.calibration["d1_s_per_token"] > 0
    nested = build("scheduler", "nested-wait", ctx)
    assert nested.design.ends == (8, 16) and len(nested.thresholds) == 2
    r1 = simulate(trace, [InstanceConfig(STEP, 2000, BS, "nested-wait")], record_timeline=False).requests
    r2 = simulate(trace, [InstanceConfig(STEP, 2000, BS, "nested-wait")], record_timeline=False).requests
    assert r1.equals(r2)


def test_calibration_falls_back_for_long_outputs():
    """p512d1000 on 137k tokens: one prompt per stage needs 1,013,012 tokens, so no thresholds satisfy (11); the
    factory says so and caps the prompts in flight instead."""
    from gpusched.registry import BuildContext, build
    trace = synthetic_trace(2.0, n=50, prompt_tokens=512, output_tokens=1001, seed=0)
    sched = build("scheduler", "wait", BuildContext(trace=trace, step_model=STEP, num_kv_blocks=8562))
    assert sched.calibration["rule"].startswith("fallback") and "one prompt per stage" in sched.calibration["reason"]
    # the fluid's mean KV per resident prompt is w / (l' + 1) = 512 + 1000/2 = 1012, + 15 block padding:
    assert sched.max_in_flight == (8562 * 16) // 1027 == 133


def test_wait_refuses_requests_of_no_type_and_bad_knobs():
    trace = _mixed_trace(20.0, 20, seed=5)
    sched = WaitScheduler([PromptType(64, 8, 1.0)], [1])
    with pytest.raises(ConfigError, match="matches no WAIT type"):
        simulate(trace, [InstanceConfig(STEP, 2000, BS, sched)], record_timeline=False)
    with pytest.raises(ConfigError, match="mode"):
        WaitScheduler([PromptType(64, 8, 1.0)], [1], mode="greedy")
    with pytest.raises(ConfigError):
        NestedWaitScheduler((8, 16), (1,))
    with pytest.raises(ConfigError):
        WaitScheduler([PromptType(64, 8, 1.0)], [1], max_in_flight=0)
    with pytest.raises(ConfigError, match="needs the run's trace"):
        from gpusched.registry import build
        build("scheduler", "wait")


def test_types_from_lengths_bins_long_tails():
    prompts = np.arange(1, 1001)
    outputs = np.arange(1, 1001)
    types, type_of = types_from_lengths(prompts, outputs, 10.0, max_types=4)
    assert len(types) == 4 and sum(t.rate_per_s for t in types) == pytest.approx(10.0)
    assert types[-1].decode_tokens == 999  # the last bin covers the longest output

    class S:
        prompt_tokens, output_tokens = 5, 1000
    assert type_of(S) == 3


def test_a_scheduler_object_serves_a_second_run_afresh():
    """The queues mirror one run's ``waiting``; handed a second run (a new deque), the object starts over and gives
    the same results as a fresh object."""
    types, check, blocks = _wait_setup()
    trace = _mixed_trace(60.0, 200, seed=6)
    last = float(trace.df["arrival_time_s"].max())
    reused = WaitScheduler(types, check.thresholds, drain_after_s=last)
    first = simulate(trace, [InstanceConfig(STEP, blocks, BS, reused)], record_timeline=False).requests
    again = simulate(trace, [InstanceConfig(STEP, blocks, BS, reused)], record_timeline=False).requests
    fresh = simulate(trace, [InstanceConfig(STEP, blocks, BS, WaitScheduler(types, check.thresholds, drain_after_s=last))],
                     record_timeline=False).requests
    assert again.equals(fresh) and first.equals(fresh)
