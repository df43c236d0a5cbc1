"""AMPD Algorithm 1 (adaptive prefill routing) with Eq. (1)-(2): the spec's T2a-T2d and the rules around it."""
import math

import numpy as np
import pytest

from formulations.ampd import (AMPD_NETWORK_LINK, DecodeWorkerView, PerfModel, PrefillTask, PrefillWorkerView, Slo,
                               ToyRoutingCosts, local_cost_s, remote_cost_s, route_prefill)
from gpusched.errors import ConfigError
from gpusched.hardware import LinkSpec
from gpusched.perf import RooflineStepTime

COSTS = ToyRoutingCosts({"d": 4, "p0": 2, "p1": 4})
SLO = Slo(ttft_s=2.0, itl_s=0.050)
TASK = PrefillTask("s", 6000, 500, decode_worker="d")


def tasks(*pairs):
    return tuple(PrefillTask(f"q{k}", h, m) for k, (h, m) in enumerate(pairs))


def workers(ttft0=1.90, ttft1=1.85, queue1=((0, 4000), (8000, 600), (0, 3000), (0, 2500))):
    return [PrefillWorkerView("p0", ttft0, tasks((0, 2000), (5000, 800), (0, 1500))),
            PrefillWorkerView("p1", ttft1, tasks(*queue1))]


def t_pre(h, m, scale):
    """The spec's T2 toy formula, written out again here."""
    return (0.020 + 1e-4 * m + 2e-8 * m * (h + m)) * scale


def test_t2a_costs_by_hand_and_local_wins():
    decode = DecodeWorkerView("d", 0.048, tasks((3000, 400)))
    r = route_prefill(TASK, decode, workers(), COSTS, SLO)
    # hand computation (spec T2): compute + history read + increment return + queue
    local = t_pre(6000, 500, 0.55) + t_pre(3000, 400, 0.55)
    kv = lambda l: 0.001 + l * 327680 / 25e9  # noqa: E731
    remote0 = t_pre(6000, 500, 1.0) + kv(6000) + kv(500) + sum(t_pre(h, m, 1.0) for h, m in
                                                                ((0, 2000), (5000, 800), (0, 1500)))
    assert t_pre(6000, 500, 1.0) == pytest.approx(0.135) and kv(6000) == pytest.approx(0.0796432)
    assert kv(500) == pytest.approx(0.0075536)
    assert r.local and r.rule == "min-cost"
    assert r.local_cost_s == pytest.approx(local) == pytest.approx(0.122210, abs=5e-7)
    assert r.remote_costs_s[0] == pytest.approx(remote0) == pytest.approx(0.929997, abs=5e-7)
    assert r.remote_costs_s[1] == pytest.approx(1.161457, abs=5e-7)


def test_t2b_decode_slack_rule():
    decode = DecodeWorkerView("d", 0.040, tasks((3000, 400)))   # 0.040 <= 0.85 * 0.050 = 0.0425
    r = route_prefill(TASK, decode, workers(), COSTS, SLO)
    assert r.local and r.rule == "decode-slack" and r.local_cost_s is None


def test_t2c_prefill_slack_rule_first_eligible_in_order():
    decode = DecodeWorkerView("d", 0.048, tasks((3000, 400)))
    r = route_prefill(TASK, decode, workers(ttft0=1.70), COSTS, SLO)  # 1.70 <= 0.9 * 2.0 = 1.80
    assert not r.local and r.index == 0 and r.worker == "p0" and r.rule == "prefill-slack"
    # both eligible: deterministic order takes the first, not the least loaded (pitfall 4)
    r = route_prefill(TASK, decode, workers(ttft0=1.0, ttft1=0.1), COSTS, SLO)
    assert r.index == 0


def test_t2d_remote_wins():
    decode = DecodeWorkerView("d", 0.048, tasks(*[(3000, 400)] * 4))
    r = route_prefill(TASK, decode, workers(queue1=()), COSTS, SLO)
    assert r.local_cost_s == pytest.approx(0.266090, abs=5e-7)
    assert r.remote_costs_s[0] == pytest.approx(0.929997, abs=5e-7)
    assert r.remote_costs_s[1] == pytest.approx(0.161447, abs=5e-7)
    assert not r.local and r.worker == "p1" and r.index == 1


def test_ties_go_local_then_lowest_index():
    flat = ToyRoutingCosts({"d": 2, "p0": 2, "p1": 2}, net_alpha_s=0.0, kv_bytes_per_token=0.0)
    decode = DecodeWorkerView("d", 1.0)
    busy = [PrefillWorkerView("p0", 9.0), PrefillWorkerView("p1", 9.0)]
    assert route_prefill(TASK, decode, busy, flat, SLO).local                     # all three cost the same
    decode = DecodeWorkerView("d", 1.0, tasks((0, 100)))
    r = route_prefill(TASK, decode, busy, flat, SLO)
    assert r.index == 0 and r.remote_costs_s[0] == r.remote_costs_s[1]


def test_seeded_random_order_is_reproducible_and_covers_workers():
    decode = DecodeWorkerView("d", 0.048)
    eligible = [PrefillWorkerView(f"p{i}", 0.0) for i in range(4)]
    costs = ToyRoutingCosts({"d": 4, **{f"p{i}": 2 for i in range(4)}})
    picks = [route_prefill(TASK, decode, eligible, costs, SLO, rng=np.random.default_rng(11)).index
             for _ in range(3)]
    assert len(set(picks)) == 1                                 # same seed, same choice
    rng = np.random.default_rng(0)
    seen = {route_prefill(TASK, decode, eligible, costs, SLO, rng=rng).index for _ in range(200)}
    assert seen == {0, 1, 2, 3}                                 # every eligible worker is drawn first sometimes


def test_count_running_adds_the_running_prefill():
    decode = DecodeWorkerView("d", 1.0, running_remaining_s=0.5)
    p = PrefillWorkerView("p0", 9.0, running_remaining_s=0.25)
    costs = ToyRoutingCosts({"d": 4, "p0": 2})
    assert local_cost_s(TASK, decode, costs, count_running=True) == pytest.approx(
        local_cost_s(TASK, decode, costs) + 0.5)
    assert remote_cost_s(TASK, decode, p, costs, count_running=True) == pytest.approx(
        remote_cost_s(TASK, decode, p, costs) + 0.25)


def test_initial_prefill_zero_alpha_remote_is_compute_plus_return_plus_queue():
    """T4's last bullet, on the real performance model: l_hist = 0 and a zero-latency link give
    remote = T_pre + increment return + queue, with no history-read term."""
    step = RooflineStepTime("llama3-8b", "h100")
    link = LinkSpec(25e9, 0.0)
    perf = PerfModel.from_step_models({"d": step, "p": step}, kv_bytes_per_token=131072, link=link)
    task = PrefillTask("s", 0, 1000)
    queue = tasks((0, 500), (2000, 300))
    worker = PrefillWorkerView("p", 9.0, queue)
    expected = (perf.prefill_time_s(0, 1000, "p") + 1000 * 131072 / 25e9
                + sum(perf.prefill_time_s(t.hist_tokens, t.incr_tokens, "p") for t in queue))
    assert remote_cost_s(task, DecodeWorkerView("d"), worker, perf) == pytest.approx(expected, rel=1e-12)
    # with history, the read adds alpha + bytes / bandwidth of the default AMPD link
    perf2 = PerfModel.from_step_models({"d": step, "p": step}, 131072)
    with_hist = remote_cost_s(PrefillTask("s", 4000, 1000), DecodeWorkerView("d"), PrefillWorkerView("p"), perf2)
    assert with_hist == pytest.approx(perf2.prefill_time_s(4000, 1000, "p") + 2 * AMPD_NETWORK_LINK.latency_s
                                      + 5000 * 131072 / 25e9, rel=1e-12)


def test_no_prefill_workers_means_local():
    r = route_prefill(TASK, DecodeWorkerView("d", 1.0), [], COSTS, SLO)
    assert r.local and r.remote_costs_s == ()


def test_bad_inputs():
    decode = DecodeWorkerView("d", 0.048)
    with pytest.raises(ConfigError, match="slack_prefill"):
        route_prefill(TASK, decode, workers(), COSTS, SLO, slack_prefill=math.nan)
    with pytest.raises(ConfigError, match="not a PrefillWorkerView"):
        route_prefill(TASK, decode, ["p0"], COSTS, SLO)
    with pytest.raises(ConfigError, match="ttft_hat_s"):
        PrefillWorkerView("p0", -1.0)
    with pytest.raises(ConfigError, match="ttft_s"):
        Slo(0.0, 0.05)
    with pytest.raises(ConfigError, match="hist_tokens"):
        PrefillTask("s", -5, 10)
