"""WAIT and Nested WAIT on the compiled engine (``kernel.SCHED_WAIT``, ``SCHED_NESTED_WAIT``) against the SimPy
engine run step by step.

The reference is :class:`formulations.nested_wait.WaitScheduler` / :class:`NestedWaitScheduler` themselves on the
SimPy engine in ``mode="step"``: the compiled transcription must give the same per-request table and per-step
timeline, to the bit, in every branch of the rules (thresholds met or not, segments' boundary queues, ``"no-wait"``,
the in-flight cap, the ``max_wait_s`` release, the drain, LIFO eviction, the re-decision after an eviction that
empties the step) and of the engine (pauses with ``StepPlan.hold``, wake-up timers, held requests left unfinished,
routers, several instances). Each case also checks that the branch it is named for was taken (counted on the
Python policy's plans, or read off the results), so that no case passes vacuously.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from formulations.nested_wait import NestedWaitScheduler, PromptType, WaitScheduler
from formulations.nested_wait import policy as nw_policy
from gpusched.synthetic import agent_sessions
from gpusched.workload import Trace, load_trace
from simulators.compiled import driver
from simulators.compiled.driver import unsupported_reason
from simulators.serving import InstanceConfig
from test_sim_compiled import _assert_same_as_step_mode, _h100  # (_h100: a new model, its own price tables)


def _azure(n=300, rate=2.0):
    return load_trace("azure-conv-2023").head(n).scale_rate(rate)


@pytest.fixture
def plans(monkeypatch):
    """Counts of the Python policy's empty plans (made in the step-mode run) by what they ask of the engine."""
    counts: dict[str, int] = {}
    schedule = nw_policy._StageScheduler.schedule

    def counted(self, waiting, running, kv, now_s):
        plan = schedule(self, waiting, running, kv, now_s)
        if not plan.entries:
            w = plan.wake_at_s
            kind = ("no wake-up" if w is None else "re-decide" if w == math.nextafter(now_s, math.inf)
                    else "drain" if w == self.drain_after_s else "release")
            counts[kind] = counts.get(kind, 0) + 1
            counts["hold"] = counts.get("hold", 0) + plan.hold
        return plan

    monkeypatch.setattr(nw_policy._StageScheduler, "schedule", counted)
    return counts


@pytest.mark.parametrize("name", ["wait", "nested-wait"])
@pytest.mark.parametrize("rate, blocks", [(1.0, 3000), (8.0, 700)])  # light load; heavy load, tight KV
def test_registered_factories_on_the_compiled_engine_equal_step_mode(name, rate, blocks, plans):
    res = _assert_same_as_step_mode(_azure(rate=rate), [InstanceConfig(_h100(), blocks, 16, name)])
    assert res.num_unfinished == 0
    assert plans["hold"] > 0 and plans["release"] > 0 and plans["drain"] > 0  # paused, woken by both timers
    if rate > 1:
        assert res.requests["num_preemptions"].sum() > 0  # LIFO eviction


@pytest.mark.parametrize("name, knobs, rate, blocks, expect", [
    ("nested-wait", {"segment_ends": [50, 200, 2000], "thresholds": [4, 3, 2]}, 4.0, 1500, "preempted"),
    ("wait", {"thresholds": [3, 3, 2, 2, 2, 1, 1, 1]}, 4.0, 1500, "preempted"),
    ("nested-wait", {"mode": "no-wait"}, 4.0, 1500, "no hold"),
    ("wait", {"mode": "no-wait"}, 4.0, 1500, "no hold"),
    ("nested-wait", {"max_in_flight": 5, "max_wait_s": None}, 4.0, 1500, "capped"),
    ("wait", {"max_in_flight": 5, "max_wait_s": None}, 4.0, 1500, "capped"),
    ("nested-wait", {"max_wait_s": 0.5, "thresholds": [6, 3, 2, 1]}, 1.0, 3000, "release"),
    ("wait", {"max_wait_s": 0.5, "thresholds": [6, 4, 4, 3, 3, 2, 2, 2]}, 1.0, 3000, "release"),
    ("nested-wait", {"thresholds": [8, 6, 4, 2]}, 8.0, 400, "preempted"),  # tight KV
    ("wait", {"thresholds": [6, 4, 4, 3, 3, 2, 2, 2]}, 8.0, 400, "preempted"),
])
def test_knobs_on_the_compiled_engine_equal_step_mode(name, knobs, rate, blocks, expect, plans):
    res = _assert_same_as_step_mode(_azure(rate=rate), [InstanceConfig(_h100(), blocks, 16, name, knobs)])
    assert res.num_unfinished == 0
    if expect == "preempted":
        assert res.requests["num_preemptions"].sum() > 0
    elif expect == "no hold":
        assert plans.get("hold", 0) == 0
    elif expect == "capped":  # never more than 5 requests hold KV
        assert res.timeline["running"].max() == 5
    else:
        assert plans[expect] > 0


@pytest.mark.parametrize("name, knobs", [
    ("nested-wait", {"thresholds": [6, 3, 2, 1]}),
    ("wait", {"thresholds": [6, 4, 4, 3, 3, 2, 2, 2]}),
])
def test_without_a_drain_held_requests_end_unfinished_as_in_step_mode(name, knobs, plans):
    """``drain=False``: the paper's rule to the end; the run ends with requests paused (KV held) or queued."""
    knobs = {**knobs, "drain": False, "max_wait_s": None}
    res = _assert_same_as_step_mode(_azure(rate=2.0), [InstanceConfig(_h100(), 3000, 16, name, knobs)])
    status = res.requests["status"].value_counts()
    assert status["unfinished: decoding when the run ended"] > 0 and status["unfinished: waiting when the run ended"] > 0
    assert plans["hold"] > 0 and "drain" not in plans and "release" not in plans


def _two_types(n_b=8) -> Trace:
    """Five requests of type A (48 + 100 tokens) at once, then ``n_b`` of type B (64 + 20) one every 0.2 s."""
    arrival = [0.0] * 5 + [1.0 + 0.2 * i for i in range(n_b)]
    df = pd.DataFrame({"request_id": range(5 + n_b), "arrival_time_s": arrival,
                       "prompt_tokens": [48] * 5 + [64] * n_b, "output_tokens": [100] * 5 + [20] * n_b})
    return Trace(df, name="two-types")


def test_an_eviction_that_empties_the_step_re_decides_at_once(plans):
    """By hand (16-token blocks, 20 blocks): the five A's (3 blocks each after their prefill) pause once their queue
    is empty (n_A = 5); B1 takes 4 blocks, grows into the last free one while B2 waits (n_B = 1 keeps B running, B2
    finds no KV), and needs a sixth at 80 tokens: the newest resident is B1 itself, so the step is empty and the
    policy asks to re-decide at the next instant. Then nothing fits until the drain at 5 s turns thresholds into caps
    and the A's evict each other (LIFO) to finish."""
    types = [PromptType(48, 99, 1.0, "A"), PromptType(64, 19, 1.0, "B")]
    policy = WaitScheduler(types, [5, 1], drain_after_s=5.0)
    res = _assert_same_as_step_mode(_two_types(), [InstanceConfig(_h100(), 20, 16, policy)])
    assert plans["re-decide"] > 0 and plans["drain"] > 0
    assert res.num_unfinished == 0 and res.requests["num_preemptions"].sum() > 0


def test_explicit_nested_wait_object():
    policy = NestedWaitScheduler([10, 40, 99], [2, 2, 1], drain_after_s=6.0, max_wait_s=0.3)
    res = _assert_same_as_step_mode(_two_types(), [InstanceConfig(_h100(), 30, 16, policy)])
    assert res.num_unfinished == 0


@pytest.mark.parametrize("router", ["round-robin", "random", "least-outstanding-tokens", "kv-aware"])
@pytest.mark.parametrize("name", ["wait", "nested-wait"])
def test_several_instances_behind_each_router(name, router):
    model = _h100()
    instances = [InstanceConfig(model, 900, 16, name) for _ in range(3)]
    res = _assert_same_as_step_mode(_azure(300, 6.0), instances, router=router)
    assert res.requests["instance"].nunique() == 3


def test_settings_the_transcription_does_not_cover_run_on_the_simpy_engine():
    trace = _azure(50)
    model = _h100()
    types = [PromptType(int(p), int(o) - 1, 1.0) for p, o in
             sorted(set(zip(trace.df["prompt_tokens"], trace.df["output_tokens"])))]
    covered = {
        "exact types": WaitScheduler(types, [1] * len(types)),
        "nested": NestedWaitScheduler([100, 2000], [2, 1]),
    }
    for policy in covered.values():
        assert unsupported_reason(trace, [InstanceConfig(model, 900, 16, policy)], "round-robin", None) is None
    for name in ("wait", "nested-wait"):  # the factories (WAIT's types: output-length bins)
        assert unsupported_reason(trace, [InstanceConfig(model, 900, 16, name)], "round-robin", None) is None
    others = {
        "custom type_of": WaitScheduler(types, [1] * len(types), type_of=lambda seq: 0),
        "a WAIT subclass": type("Mine", (WaitScheduler,), {})(types, [1] * len(types)),
        "a Nested WAIT subclass": type("Mine", (NestedWaitScheduler,), {})([100, 2000], [2, 1]),
    }
    for what, policy in others.items():
        assert policy.compiled_rule() is None, what
        assert unsupported_reason(trace, [InstanceConfig(model, 900, 16, policy)], "round-robin", None), what
    shared = NestedWaitScheduler([100, 2000], [2, 1])  # one object keeps one instance's queues
    assert "several instances" in unsupported_reason(
        trace, [InstanceConfig(model, 900, 16, shared), InstanceConfig(model, 900, 16, shared)], "round-robin", None)
    other_trace = Trace(trace.df.assign(output_tokens=trace.df["output_tokens"] + 1), name="shifted")
    assert "no WAIT type" in unsupported_reason(other_trace, [InstanceConfig(model, 900, 16, covered["exact types"])],
                                                "round-robin", None)
    pd_pair = [InstanceConfig(model, 900, 16, "wait", role="prefill", kv_bytes_per_token=131072),
               InstanceConfig(model, 900, 16, "wait", role="decode")]
    assert unsupported_reason(trace, pd_pair, "round-robin", None)
    assert unsupported_reason(trace, [InstanceConfig(model, 900, 16, "wait")], "round-robin", True)  # own hashes
    sessions = agent_sessions(num_sessions=3, rounds=2, think_time_s=1.0, new_tokens_per_round=50,
                              output_tokens=20)
    assert "sessions" in unsupported_reason(sessions, [InstanceConfig(model, 900, 16, covered["nested"])],
                                            "round-robin", None)


def _random_case(seed: int):
    """A small random trace (ties in arrival times, one-token outputs) on 1-3 instances with random WAIT or Nested
    WAIT settings and KV from barely enough to ample."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    arrival = np.sort(np.round(rng.uniform(0.0, 2.0, n), int(rng.choice([1, 6]))))
    prompt = rng.integers(1, 200, n)
    output = np.where(rng.random(n) < 0.15, 1, rng.integers(1, 50, n))
    df = pd.DataFrame({"request_id": range(n), "arrival_time_s": arrival, "prompt_tokens": prompt,
                       "output_tokens": output})
    trace = Trace(df, name=f"random-{seed}")
    common = dict(mode=str(rng.choice(["paper", "paper", "no-wait"])),
                  max_in_flight=None if rng.random() < 0.6 else int(rng.integers(1, 6)),
                  drain_after_s=None if rng.random() < 0.3 else float(rng.uniform(0.0, 2.5)),
                  max_wait_s=None if rng.random() < 0.4 else float(rng.uniform(0.0, 0.5)))
    if seed % 2:
        pairs = sorted(set(zip(prompt.tolist(), output.tolist())))
        types = [PromptType(p, o - 1, 1.0) for p, o in pairs]
        make = lambda: WaitScheduler(types, rng.integers(1, 4, len(types)).tolist(), **common)  # noqa: E731
    else:
        ends = sorted(set(rng.integers(0, 60, int(rng.integers(1, 4))).tolist()))
        make = lambda: NestedWaitScheduler(ends, rng.integers(1, 4, len(ends)).tolist(), **common)  # noqa: E731
    fits = -(-int((prompt + output).max()) // 16)
    blocks = fits + int(rng.integers(0, 30))
    policies = [make() for _ in range(int(rng.integers(1, 4)))]
    for p in policies[1:]:  # the same settings on every instance, one object each
        p.thresholds = policies[0].thresholds
    model = _h100()
    instances = [InstanceConfig(model, blocks, 16, p) for p in policies]
    router = str(rng.choice(["round-robin", "random", "least-outstanding-tokens", "kv-aware"]))
    return trace, instances, router


@pytest.mark.parametrize("seed", range(40))
def test_random_cases_equal_step_mode(seed):
    trace, instances, router = _random_case(seed)
    _assert_same_as_step_mode(trace, instances, router=router)


def test_a_run_paused_for_progress_updates_resumes_the_policy_state(monkeypatch, plans):
    """The driver returns to Python every few arrivals (a progress bar); queues, clocks and timers carry over."""
    monkeypatch.setattr(driver, "PROGRESS_EVERY", 7)
    knobs = {"max_wait_s": 0.5, "thresholds": [6, 3, 2, 1]}
    res = _assert_same_as_step_mode(_azure(rate=1.0), [InstanceConfig(_h100(), 3000, 16, "nested-wait", knobs)],
                                    progress=True)
    assert res.num_unfinished == 0 and plans["release"] > 0


@pytest.mark.parametrize("max_types", [8, 1000])  # output-length bins; one type per distinct (prompt, output) pair
def test_the_engines_types_are_the_policys(max_types):
    """The per-request types the driver reads off ``CompiledRule.params["type_map"]`` are the policy's own
    ``type_of`` answers, request by request."""
    from gpusched.policy import SeqState
    from gpusched.registry import BuildContext
    from formulations.nested_wait.calibrate import calibrated_wait

    trace = _azure(200)
    context = BuildContext(trace=trace, step_model=_h100(), num_kv_blocks=3000, block_size_tokens=16)
    policy = calibrated_wait(context, max_types=max_types, thresholds=None)
    rule = policy.compiled_rule()
    assert rule.params["type_map"][0] == ("output-bins" if max_types == 8 else "exact")
    df = trace.df
    seqs = [SeqState(r.request_id, i, r.arrival_time_s, r.prompt_tokens, r.output_tokens)
            for i, r in enumerate(df.itertuples())]
    assert driver._wait_groups(rule, df).tolist() == [policy.type_of(s) for s in seqs]
