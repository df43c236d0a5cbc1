"""A scheduler may wait on a clock (``StepPlan.wake_at_s``) or pause sequences on purpose (``StepPlan.hold``).

Expected times are hand calculations with a constant 10 ms step.
"""
import pandas as pd
import pytest

from gpusched.policy import StepPlan
from gpusched.workload import Trace
from simulators.serving import InstanceConfig, simulate
from simulators.serving.instance import SimulationInvariantError
from simulators.serving.schedulers import VllmV1Scheduler

from constant_step import STEP_S, ConstantStep, tiny_trace


def _trace(rows) -> Trace:
    return tiny_trace(rows, "wakeups")


class StartAt:
    """vLLM V1, but nothing is admitted before ``start_s``: until then it asks to be woken at ``start_s``."""

    name = "start-at"

    def __init__(self, start_s: float):
        self.start_s, self.inner = start_s, VllmV1Scheduler()

    def schedule(self, waiting, running, kv, now_s):
        if now_s < self.start_s and not running:
            return StepPlan(wake_at_s=self.start_s)
        return self.inner.schedule(waiting, running, kv, now_s)


class DecodeInPairs:
    """vLLM V1 that holds a lone decoding sequence (KV kept) until a second one can decode with it."""

    name = "pairs"

    def __init__(self):
        self.inner = VllmV1Scheduler()

    def schedule(self, waiting, running, kv, now_s):
        if not waiting and len(running) == 1 and running[0].generated_tokens >= 1:
            return StepPlan(hold=True)
        return self.inner.schedule(waiting, running, kv, now_s)


def test_a_scheduler_woken_by_its_clock_starts_then_without_any_arrival():
    # one request at 0 s, 3 output tokens: admitted at the 0.5 s wake-up, prefill + 2 decodes = 3 steps
    res = simulate(_trace([(0.0, 16, 3)]), [InstanceConfig(ConstantStep(), 64, 16, scheduler=StartAt(0.5))])
    row = res.requests.iloc[0]
    assert row["scheduled_time_s"] == pytest.approx(0.5)
    assert row["finish_time_s"] == pytest.approx(0.5 + 3 * STEP_S)


@pytest.mark.parametrize("mode", ["simpy", "step"])
def test_a_held_sequence_keeps_its_kv_and_resumes_with_the_next_arrival(mode):
    # request 0 prefills at 0-10 ms (first token) and is held, KV kept; request 1 arrives at 1 s and vLLM V1
    # mixes its prefill with request 0's decode (1.00-1.01: 0 gets token 2, 1 its first); both decode at
    # 1.01-1.02 (0 finishes with token 3); then request 1 is alone with a token out, and the policy holds it
    trace = _trace([(0.0, 16, 3), (1.0, 16, 3)])
    res = simulate(trace, [InstanceConfig(ConstantStep(), 64, 16, scheduler=DecodeInPairs())], mode=mode)
    first, second = res.requests.iloc[0], res.requests.iloc[1]
    assert first["first_token_time_s"] == pytest.approx(STEP_S)
    assert first["num_preemptions"] == 0 and second["num_preemptions"] == 0
    assert first["finish_time_s"] == pytest.approx(1.0 + 2 * STEP_S)
    assert second["first_token_time_s"] == pytest.approx(1.0 + STEP_S)
    assert res.num_unfinished == 1 and pd.isna(second["finish_time_s"])


def test_a_sequence_held_to_the_end_is_reported_unfinished():
    res = simulate(_trace([(0.0, 16, 3)]), [InstanceConfig(ConstantStep(), 64, 16, scheduler=DecodeInPairs())])
    assert res.requests["status"].tolist() != ["finished"] and res.num_unfinished == 1


def test_an_empty_plan_without_hold_is_still_a_stall():
    class Stalls(DecodeInPairs):
        def schedule(self, waiting, running, kv, now_s):
            plan = super().schedule(waiting, running, kv, now_s)
            plan.hold = False
            return plan

    with pytest.raises(SimulationInvariantError, match="hold=True"):
        simulate(_trace([(0.0, 16, 3)]), [InstanceConfig(ConstantStep(), 64, 16, scheduler=Stalls())])


def test_a_wake_up_that_is_not_in_the_future_is_refused():
    class WakeNow(StartAt):
        def schedule(self, waiting, running, kv, now_s):
            return StepPlan(wake_at_s=now_s)

    with pytest.raises(SimulationInvariantError, match="woken at"):
        simulate(_trace([(0.0, 16, 3)]), [InstanceConfig(ConstantStep(), 64, 16, scheduler=WakeNow(0.0))])
