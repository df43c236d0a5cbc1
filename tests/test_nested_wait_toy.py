"""The paper's discrete model (formulations.nested_wait.discrete) on the spec's toy cases: T1/T2 dynamics and the
property tests P1-P6 (spec shared/papers/nested_wait.md §10). Invariants are re-derived from the recorded states
and batches, not read from the policies."""
from collections import Counter

import numpy as np
import pytest

from formulations.nested_wait.discrete import (ToyFcfs, ToyInstance, ToyNestedWait, ToyWait, poisson_type_arrivals,
                                               simulate_toy)
from formulations.nested_wait.fluid import PromptType
from formulations.nested_wait.segments import SegmentDesign
from formulations.nested_wait.thresholds import check_wait_thresholds
from gpusched.errors import ConfigError

T1 = [PromptType(1, 1, 4.0)]
T2 = [PromptType(1, 1, 1.0), PromptType(1, 2, 1.0)]


def test_running_example_fcfs_cascade_vs_wait():
    """Running example [P §2.3, §4.1]: from (6 waiting, 3 at stage 1), 4 arrivals per time unit, C = 12.
    By hand, FCFS: iteration 1 runs 3 + admits 6 (memory 6 + 6 = 12); iteration 2 runs the 6 at stage 1 (12, no room);
    iteration 3 admits the 8 waiting (8); iteration 4 finds 8 x 2 = 16 > 12 and evicts 2 (LIFO). It then settles
    near 3 completions per iteration (the spec's narrative says 3-3.5), 3 tokens per time unit against the fluid's 4.
    WAIT with n = 4 never evicts and completes 4 per iteration."""
    inst = ToyInstance(T1, 0.5, 1 / 24, 12)
    arrivals = [(float(k), 0) for k in range(1, 300) for _ in range(4)]
    fcfs = simulate_toy(inst, ToyFcfs(), arrivals, initial=[(0, 0, 6), (0, 1, 3)])
    it = fcfs.iterations
    assert it["completed"].tolist()[:2] == [3, 6]
    assert it["admitted"].tolist()[:3] == [6, 0, 8]
    assert it["evicted"].tolist()[:4] == [0, 0, 0, 2]
    assert it["completed"].iloc[10:200].mean() == pytest.approx(3.0, abs=0.1)
    assert fcfs.throughput_tokens_per_s(T1, 250.0) == pytest.approx(3.0, abs=0.1)
    wait = simulate_toy(inst, ToyWait([4]), arrivals, initial=[(0, 0, 6), (0, 1, 3)])
    assert wait.evictions == 0 and (wait.iterations["memory_tokens"] <= 12).all()
    assert wait.iterations["completed"].iloc[5:200].eq(4).all()
    assert wait.throughput_tokens_per_s(T1, 250.0) == pytest.approx(4.0, abs=0.05)


def _check_wait_invariants(run, thresholds, types, capacity):
    """P1 and P2 from the records: at most n_j per (type, stage) in every batch; memory <= C; no eviction; a
    resident left out of a batch is still resident at the same stage at the next decision."""
    for batch in run.batches:
        counts = Counter((j, s) for _, j, s in batch)
        assert all(c <= thresholds[j] for (j, _), c in counts.items())
    assert run.evictions == 0 and (run.iterations["memory_tokens"] <= capacity).all()
    for (state, batch, nxt) in zip(run.states, run.batches, run.states[1:]):
        ran = {i for i, _, _ in batch}
        later = {i: s for i, _, s in nxt[1]}
        for i, _, s in state[1]:
            if i not in ran:
                assert later[i] == s  # paused: same stage, KV still resident (not evicted, not finished)


def test_p1_p2_wait_caps_and_pauses():
    """P1/P2 on T2's types at C = 9 with n = (1, 1) (M^pi = 3 + 6 = 9 <= C)."""
    inst = ToyInstance(T2, 1 - 9 * 0.02, 0.02, 9)
    assert check_wait_thresholds(T2, [1, 1], inst.d0_s, inst.d1_s_per_token, 9).admissible
    run = simulate_toy(inst, ToyWait([1, 1]), poisson_type_arrivals(T2, 400, seed=3), record=True)
    _check_wait_invariants(run, (1, 1), T2, 9)
    paused = sum(1 for state, batch in zip(run.states, run.batches)
                 if {i for i, _, _ in state[1]} - {i for i, _, _ in batch})
    assert paused > 10  # the pause rule was exercised
    assert run.jobs["completion_s"].notna().all()  # the tail was drained


def test_p1_with_larger_thresholds():
    """P1 with n = (3, 2) on a two-type instance whose M^pi = 3 x 3 + 2 x 6 = 21 equals C."""
    types = [PromptType(1, 1, 2.0), PromptType(1, 2, 1.0)]
    inst = ToyInstance(types, 0.3, 0.02, 21)
    run = simulate_toy(inst, ToyWait([3, 2]), poisson_type_arrivals(types, 300, seed=5), record=True)
    _check_wait_invariants(run, (3, 2), types, 21)
    assert max(max(Counter((j, s) for _, j, s in b).values(), default=0) for b in run.batches) == 3


def _segments_run(design, thresholds, state):
    """Algorithm 2's prefix, from a recorded state (independent of the policy's code)."""
    queued, residents = state
    at = Counter(s for _, _, s in residents)
    if len(queued) < thresholds[0]:
        return 0
    k = 1
    for first, nk in zip(design.first_stages[1:], thresholds[1:]):
        if at[first] < nk:
            break
        k += 1
    return k


def test_p3_p4_nested_wait_prefix_rule():
    """P3: nothing runs while fewer than n_1 wait, even with full downstream queues. P4: segment k runs only with
    segments 1..k-1, and then all of its stages (capped at n_k) run; no eviction with M_req <= C (T6's (4, 3))."""
    types = [PromptType(1, 1, 2.0), PromptType(1, 2, 2.0)]
    design = SegmentDesign.from_types(types)
    inst = ToyInstance(types, 0.5, 0.02, 38)
    run = simulate_toy(inst, ToyNestedWait(design, (4, 3)), poisson_type_arrivals(types, 300, seed=2), drain=False,
                       record=True)  # no drain: the thresholds hold to the end
    waited = 0
    seg = design.segment_of_stage
    for state, batch in zip(run.states, run.batches):
        k = _segments_run(design, (4, 3), state)
        stages = Counter(s for _, _, s in batch)
        if len(state[0]) < 4:
            assert not batch  # P3
            waited += bool(state[1])  # ... even with prompts resident downstream
        assert all(seg(s) < k for s in stages)  # P4: only segments of the prefix
        at = Counter(s for _, _, s in state[1])
        for s, c in at.items():  # P4: every stage of a running segment runs, min(n_k, present)
            if seg(s) < k:
                assert stages[s] == min(c, (4, 3)[seg(s)])
        if k:
            assert stages[0] == min(len(state[0]), 4)
    assert waited > 10 and run.evictions == 0


def test_p5_balance_regime_grows_slack_regime_is_flat():
    """P5 on T1: at C = M* (d0 = 1/2, DeltaT(4) = n/lambda) the waiting queue is a critical random walk and mean
    latency grows with the horizon (about sqrt(N): x2.1 for 16x more arrivals here, tending to x4); with slack
    (d0 = 1/4, DeltaT = 0.75 < 1) it stays flat. Mean of 4 seeds."""
    def growth(d0):
        inst = ToyInstance(T1, d0, 1 / 24, 12)
        mean = {N: np.mean([simulate_toy(inst, ToyWait([4]), poisson_type_arrivals(T1, N, seed)).mean_latency_s()
                            for seed in range(4)]) for N in (125, 2000)}
        return mean[2000] / mean[125]
    assert growth(0.5) > 1.6
    assert growth(0.25) == pytest.approx(1.0, abs=0.15)


def test_p6_fcfs_evicts_on_t2_wait_does_not():
    """P6: T2 at C = M* = 9 (d1 = 0.02): FCFS evicts thousands of times and delivers about 2.5 of the fluid's 3
    tokens/s; WAIT with n = (1, 1) never evicts and delivers about 3."""
    inst = ToyInstance(T2, 1 - 9 * 0.02, 0.02, 9)
    arrivals = poisson_type_arrivals(T2, 2000, seed=0)
    fcfs = simulate_toy(inst, ToyFcfs(), arrivals)
    wait = simulate_toy(inst, ToyWait([1, 1]), arrivals)
    assert fcfs.evictions > 1000 and fcfs.throughput_tokens_per_s(T2, 2000) < 0.9 * 3.0
    assert wait.evictions == 0 and wait.throughput_tokens_per_s(T2, 2000) > 0.95 * 3.0
    assert (fcfs.jobs["restarts"] > 0).sum() > 100


def test_toy_engine_refuses_bad_input():
    inst = ToyInstance(T1, 0.5, 1 / 24, 12)
    with pytest.raises(ConfigError, match="type 3"):
        simulate_toy(inst, ToyFcfs(), [(0.0, 3)])
    with pytest.raises(ConfigError):
        simulate_toy(inst, ToyFcfs(), [(float("nan"), 0)])
    with pytest.raises(ConfigError):
        simulate_toy(inst, ToyFcfs(), initial=[(0, 5, 1)])
    with pytest.raises(ConfigError):
        ToyInstance(T1, 0.0, 0.0, 12)
