"""WAIT and Nested WAIT pause through the engine's ``StepPlan.hold`` and wake themselves for the end-of-trace drain
through ``StepPlan.wake_at_s`` (spec §3-4, Algorithms 1-2). Expected times are hand calculations with a constant
10 ms step: a request of output 3 is a prefill step (token 1) and two decode steps (tokens 2, 3)."""
from collections import Counter

import numpy as np
import pytest

from formulations.nested_wait.fluid import PromptType
from formulations.nested_wait.policy import NestedWaitScheduler, WaitScheduler
from formulations.nested_wait.segments import SegmentDesign, check_nested_thresholds
from gpusched.perf import RooflineStepTime
from gpusched.synthetic import synthetic_trace
from gpusched.workload import Trace
from simulators.serving import InstanceConfig, simulate

from constant_step import STEP_S, ConstantStep, tiny_trace


def _trace(rows) -> Trace:
    return tiny_trace(rows, "hold")


class Plans:
    """Records, per call, the plan's (entries, hold, wake_at_s) and whether a request holding KV sits in ``waiting``
    (the old workaround parked residents there)."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    def schedule(self, waiting, running, kv, now_s):
        plan = self.inner.schedule(waiting, running, kv, now_s)
        parked = any(s.index in kv for s in waiting)
        self.calls.append((len(plan.entries), plan.hold, plan.wake_at_s, len(running), parked, now_s))
        return plan


# two requests at 0 (a cohort of n = 2), one at 0.5, one at 0.6 (the second cohort); all p16 / output 3
COHORTS = [(0.0, 16, 3), (0.0, 16, 3), (0.5, 16, 3), (0.6, 16, 3)]


def _wait(drain_after_s):
    return WaitScheduler([PromptType(16, 2, 1.0)], [2], drain_after_s=drain_after_s)


@pytest.mark.parametrize("mode", ["simpy", "step"])
def test_wait_advances_a_type_only_when_a_cohort_is_complete_then_drains_on_its_own_clock(mode):
    """Algorithm 1 by hand: the first cohort prefills at 0-0.01 and is then paused (KV kept) because nothing waits;
    at 0.6 the second cohort is complete: its prefill runs with the first cohort's stage-1 decode (0.60-0.61); paused
    again. No event follows, so only the policy's own wake-up at drain_after_s = 1.0 restarts the pipeline: 1.00-1.01
    finishes the first cohort (token 3), 1.01-1.02 the second."""
    sched = Plans(_wait(1.0))
    res = simulate(_trace(COHORTS), [InstanceConfig(ConstantStep(), 64, 16, scheduler=sched)], mode=mode)
    r = res.requests
    assert r["first_token_time_s"].tolist() == pytest.approx([0.01, 0.01, 0.61, 0.61])
    assert r["finish_time_s"].tolist() == pytest.approx([1.01, 1.01, 1.02, 1.02])
    assert r["num_preemptions"].sum() == 0 and res.num_unfinished == 0
    idle = [c for c in sched.calls if c[0] == 0]
    assert idle and all(hold == (resident > 0) for _, hold, _, resident, _, _ in idle)
    assert any(resident for _, _, _, resident, _, _ in idle)  # a pause with KV resident did happen
    assert all(wake == 1.0 for _, _, wake, _, _, now in idle if now < 1.0)
    assert not any(parked for *_, parked, _ in sched.calls)


def test_without_a_drain_rule_the_run_ends_with_the_held_requests_reported():
    """The paper's rule to the end (drain_after_s=None): no hang, no error; the two cohorts stay resident at stages
    2 and 1 (the engine reports them unfinished, decoding) and :meth:`held` lists them with their KV."""
    inner = _wait(None)
    res = simulate(_trace(COHORTS), [InstanceConfig(ConstantStep(), 64, 16, scheduler=inner)])
    assert res.num_unfinished == 4
    assert res.requests["finish_time_s"].isna().all()
    assert set(res.requests["status"]) == {"unfinished: decoding when the run ended"}
    held = inner.held()
    assert sorted(s.generated_tokens for s in held) == [1, 1, 2, 2]


def test_a_lone_request_waits_for_the_drain_time_not_for_an_arrival():
    """One request, threshold 2: nothing is resident, the policy idles with a wake-up at 0.5 s and is admitted then
    (without the wake-up it would never be served: no further event)."""
    res = simulate(_trace([(0.0, 16, 3)]), [InstanceConfig(ConstantStep(), 64, 16, scheduler=_wait(0.5))])
    row = res.requests.iloc[0]
    assert row["scheduled_time_s"] == pytest.approx(0.5) and row["finish_time_s"] == pytest.approx(0.53)


def test_nested_wait_holds_downstream_segments_while_the_entry_queue_is_short():
    """Algorithm 2, P3 by hand: segments end at decode stages (0, 2); n = (2, 1). Cohort 1 (two requests) prefills at
    0-0.01; at 0.01 nothing waits, so segment 2 is paused too, although its boundary queue (stage 1) holds two
    >= n_2. At 0.6 cohort 2 completes: its prefill runs with the boundary stage of segment 2 (n_2 = 1: the older
    request of cohort 1 only) in 0.60-0.61; then paused again. The drain at 1.0 lifts the wait, not the caps (one
    request per stage of segment 2): 1.00-1.01 request 0 (stage 2, done) and 1 (stage 1); 1.01-1.02 request 1
    (done) and 2; 1.02-1.03 request 2 (done) and 3; 1.03-1.04 request 3 (done)."""
    sched = NestedWaitScheduler(SegmentDesign((0, 2), (0.0, 1.0), 16), (2, 1), drain_after_s=1.0)
    rec = Plans(sched)
    res = simulate(_trace(COHORTS), [InstanceConfig(ConstantStep(), 64, 16, scheduler=rec)])
    r = res.requests
    assert r["first_token_time_s"].tolist() == pytest.approx([0.01, 0.01, 0.61, 0.61])
    assert r["finish_time_s"].tolist() == pytest.approx([1.01, 1.02, 1.03, 1.04])
    assert not any(parked for *_, parked, _ in rec.calls)


def _two_type_trace(rate, n, seed):
    rng = np.random.default_rng(seed)
    pick = rng.random(n) < 0.6
    prompts, outputs = np.where(pick, 64, 32), np.where(pick, 9, 17)
    return synthetic_trace(rate, n=n, seed=seed, prompt_tokens=lambda r, k: prompts[:k],
                           output_tokens=lambda r, k: outputs[:k])


def test_nested_wait_caps_every_stage_and_does_not_preempt_within_its_memory_requirement():
    """P1 for Algorithm 2 in the engine (roofline A100 step times, a queue builds at 120 req/s): every plan has at
    most n_k requests at each stage of segment k, and with C >= M^pi + the boundaries' carry-over (eq. 14's
    deterministic part n_k (l + r_(k-1)), plus a block of padding per resident) nothing is ever preempted; the
    caps bind. Stages are read from the requests' generated tokens."""
    design = SegmentDesign((8, 16), (0.6, 0.4), 64)
    n = (3, 2)
    check = check_nested_thresholds(design, n, 0.01, 1e-5, horizon_s=1.0, delta=0.5)
    residents = n[0] * design.stage_counts[0] + n[1] * (design.stage_counts[1] + 1)
    blocks = int(np.ceil((check.required_memory_tokens + 15 * residents) / 16))
    trace = _two_type_trace(120.0, 500, seed=7)
    seen = Counter()

    class Caps:
        name = "caps"

        def __init__(self, inner):
            self.inner = inner

        def schedule(self, waiting, running, kv, now_s):
            plan = self.inner.schedule(waiting, running, kv, now_s)
            assert not plan.preempted
            per_stage = Counter(0 if k > 1 or s.generated_tokens == 0 else s.generated_tokens
                                for s, k in plan.entries)
            for stage, c in per_stage.items():
                assert c <= n[design.segment_of_stage(stage)]
            seen.update({stage: 0 for stage in per_stage})
            for stage, c in per_stage.items():
                seen[stage] = max(seen[stage], c)
            return plan

    sched = NestedWaitScheduler(design, n, drain_after_s=float(trace.df["arrival_time_s"].max()))
    res = simulate(trace, [InstanceConfig(RooflineStepTime("llama2-7b", "A100-80GB"), blocks, 16, Caps(sched))],
                   record_timeline=False)
    assert res.requests["num_preemptions"].sum() == 0 and res.num_unfinished == 0
    assert seen[0] == n[0] and seen[design.first_stages[1]] == n[1]  # the caps bind: the check is not vacuous


def test_a_step_whose_requests_were_all_evicted_re_decides_at_once():
    """KV of 3 blocks x 16 tokens. A (p32, type 0, n = 1) arrives at 0, is prefilled (2 blocks) and paused (its queue
    is empty). B1 (p16, type 1) arrives at 0.1, is prefilled (1 block), paused. B2 arrives at 0.2: type 1 is eligible,
    B1 must grow to 17 tokens (a 2nd block), none is free; LIFO evicts the newest resident, B1 itself. The plan is
    empty with a preemption: the policy asks to be called again just after 0.2 (not at the next arrival, there is
    none). The drain at 1.0 then serves everything: A first (it fits), then B1 and B2."""
    types = [PromptType(32, 2, 1.0), PromptType(16, 2, 1.0)]
    rec = Plans(WaitScheduler(types, [1, 1], drain_after_s=1.0))
    trace = _trace([(0.0, 32, 3), (0.1, 16, 3), (0.2, 16, 3)])
    res = simulate(trace, [InstanceConfig(ConstantStep(), 3, 16, scheduler=rec)])
    evicted = [c for c in rec.calls if c[0] == 0 and c[5] == pytest.approx(0.2) and c[2] is not None and c[2] < 0.3]
    assert len(evicted) == 1 and evicted[0][2] > 0.2 and evicted[0][1]  # woken just after, A held
    r = res.requests
    assert r["num_preemptions"].tolist() == [0, 1, 0] and res.num_unfinished == 0
    assert r["finish_time_s"].iloc[0] == pytest.approx(1.02)  # A: two decodes from 1.0


def test_command_line_knobs_are_parsed_or_refused_by_name():
    """``--scheduler-knob thresholds=3,2`` arrives as text; a single number as an int; nonsense is refused naming the
    knob, and a buffer half-specified (delta without horizon_s) is refused before any calibration."""
    from gpusched.errors import ConfigError
    from gpusched.registry import BuildContext, build
    trace = _two_type_trace(20.0, 100, seed=8)
    ctx = BuildContext(trace=trace, step_model=RooflineStepTime("llama2-7b", "A100-80GB"), num_kv_blocks=2000)
    assert build("scheduler", "nested-wait", ctx, thresholds="3,2", segment_ends="8,16").thresholds == (3, 2)
    assert build("scheduler", "wait", ctx, thresholds="4 2").thresholds == (4, 2)
    with pytest.raises(ConfigError, match="thresholds = 'a,b'"):
        build("scheduler", "nested-wait", ctx, thresholds="a,b")
    with pytest.raises(ConfigError, match="1 thresholds for 2"):
        build("scheduler", "wait", ctx, thresholds=3)
    with pytest.raises(ConfigError, match="give both"):
        build("scheduler", "nested-wait", ctx, delta=0.1)


def test_max_wait_releases_a_stalled_type_until_it_has_no_work():
    """max_wait_s = 0.2 on the cohort trace, no drain: cohort 1 prefills at 0-0.01, stalls from 0.01, is released at
    0.21 and decodes to the end (0.21-0.23) without waiting for arrivals; then the type has no work and the wait is
    back: request 2 (0.5) waits for request 3 (0.6), the cohort prefills at 0.60-0.61, stalls, is released at 0.81
    and finishes at 0.83. Wake-ups at 0.21 and 0.81 come from the policy (no event then)."""
    sched = WaitScheduler([PromptType(16, 2, 1.0)], [2], max_wait_s=0.2)
    res = simulate(_trace(COHORTS), [InstanceConfig(ConstantStep(), 64, 16, scheduler=sched)])
    r = res.requests
    assert r["first_token_time_s"].tolist() == pytest.approx([0.01, 0.01, 0.61, 0.61])
    assert r["finish_time_s"].tolist() == pytest.approx([0.23, 0.23, 0.83, 0.83])


def test_max_wait_releases_a_stalled_nested_pipeline():
    """The Nested WAIT case of the test above with max_wait_s = 0.2, no drain: released at 0.21, the capped pipeline
    (one request per stage of segment 2) runs request 0 at 0.21-0.22 then 0.22-0.23 (done) with request 1 one step
    behind (done at 0.24); requests 2 and 3 form a cohort at 0.6 (request 2 arrived alone at 0.5: the timer runs
    from 0.5, but the cohort completes at 0.6 first)."""
    sched = NestedWaitScheduler(SegmentDesign((0, 2), (0.0, 1.0), 16), (2, 1), max_wait_s=0.2)
    res = simulate(_trace(COHORTS), [InstanceConfig(ConstantStep(), 64, 16, scheduler=sched)])
    r = res.requests
    assert r["first_token_time_s"].tolist() == pytest.approx([0.01, 0.01, 0.61, 0.61])
    assert r["finish_time_s"].tolist() == pytest.approx([0.23, 0.24, 0.83, 0.84])


def test_a_name_knob_reaches_the_policy_through_an_instance_config():
    """InstanceConfig(scheduler="wait", knobs={"name": ...}) builds through make_scheduler: the policy's own ``name``
    knob must not collide with the registry name (it did: 'got multiple values for argument name')."""
    trace = _two_type_trace(20.0, 30, seed=9)
    cfg = InstanceConfig(RooflineStepTime("llama2-7b", "A100-80GB"), 2000, 16, "wait",
                         {"mode": "no-wait", "name": "wait-no-wait"})
    assert cfg.build_scheduler(trace).name == "wait-no-wait"
