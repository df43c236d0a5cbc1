"""AMPD's full planner (spec §2.5 [R]): costs from a P95 estimator at a target rate, memoised per (phase, n, k).

* a hand-made estimator (the spec's T3 toy, rewritten as a function of the replica's rate) must give exactly the
  plan of :func:`plan_deployment` on the toy's own cost functions, the brute-force ranking of
  :func:`enumerate_layouts`, and the spec's hand value Z* = ln(20)/4 at P<4,1>D<4,1>;
* the simulation estimator on Llama-3.1-70B at a rate so low that sessions never overlap: its P95 TTFT equals the
  P95 of TTFTs computed by hand from the engine's stated semantics (history read + T_pre + increment return, no
  queueing), its P95 ITL lies between batch-1 decode steps at the shortest and longest contexts, and -- by hand
  reasoning from those values -- the plan is P<4,1>D<4,1> with Z = the TP4 prefill cost;
* determinism (same seed, same plan and costs) and typed errors.
"""
import math

import numpy as np
import pytest

from experiments.ampd_planner_sim import SimulatedLatency, fits_on, plan_by_simulation
from experiments.ampd_serving import Setup, model_spec
from formulations.ampd import PerfModel, Slo, ToyPlannerCosts, agent_trace, enumerate_layouts, plan_deployment
from formulations.ampd.simulated_costs import EstimatedCosts, plan_by_estimates
from formulations.ampd.testbed import NVLINK_H20
from formulations.ampd.workloads import session_prefills
from gpusched.errors import ConfigError

TOY = ToyPlannerCosts()
TOTAL_RATE = TOY.prefill_rate_per_s     # 2.0 sessions/s; replica k of K sees 2/K
TOY_SLO = Slo(TOY.ttft_slo_s, TOY.itl_slo_s)


def toy_estimate(phase, tp, rate_per_s, calls=None):
    """The T3 toy as P95 seconds of one replica at ``rate_per_s`` (not at k): M/M/1 prefill, and a decode
    replica holding 120 * rate / 2 sessions. Written from the spec's formulas, independently of ToyPlannerCosts."""
    if calls is not None:
        calls.append((phase, tp, rate_per_s))
    e = {2: 0.9, 4: 0.75, 8: 0.6}[tp]
    if phase == "prefill":
        mu = tp * e / 0.5
        return math.log(20) / (mu - rate_per_s) if mu > rate_per_s else math.inf
    return 1.2 * (0.040 + 0.0004 * 120 * rate_per_s / TOTAL_RATE) / (tp * e)


@pytest.mark.parametrize("num_gpus, method", [(8, "milp"), (8, "enumeration"), (16, "milp")])
def test_hand_made_estimator_gives_the_plan_of_the_toy_costs(num_gpus, method):
    calls = []
    plan = plan_by_estimates(lambda p, n, r: toy_estimate(p, n, r, calls), TOTAL_RATE, num_gpus, TOY_SLO,
                             fits=lambda n: n > 1, top_k=3, method=method)
    ref = plan_deployment(TOY.prefill, TOY.decode, num_gpus, top_k=3)
    brute = enumerate_layouts(TOY.prefill, TOY.decode, num_gpus)[:3]
    for got in (ref.alternatives, brute):
        assert [(a.prefill, a.decode) for a in plan.alternatives] == [(a.prefill, a.decode) for a in got]
        assert [a.objective for a in plan.alternatives] == pytest.approx([a.objective for a in got], rel=1e-12)
    if num_gpus == 8:   # spec T3, by hand: Z* = ln(20)/4 at P<4,1> D<4,1>
        assert (plan.prefill, plan.decode) == ((4, 1), (4, 1))
        assert plan.objective == pytest.approx(math.log(20) / 4, rel=1e-12)
    # TP1 never reaches the estimator (fits), and every other (phase, n, k) exactly once
    assert all(n > 1 for _, n, _ in calls)
    assert len(calls) == len(set(calls)) == plan.extra["estimator_calls"]


def test_memo_is_reused_across_plans():
    calls = []
    costs = EstimatedCosts(lambda p, n, r: toy_estimate(p, n, r, calls), TOTAL_RATE, TOY_SLO, fits=lambda n: n > 1)
    plan_by_estimates(costs, TOTAL_RATE, 16, TOY_SLO)
    first = len(calls)
    again = plan_by_estimates(costs, TOTAL_RATE, 8, TOY_SLO, top_k=5)   # 8 GPUs: a subset of the candidates
    assert len(calls) == first and again.extra["estimator_calls"] == first
    assert costs.table[("prefill", 4, 1)] == pytest.approx(TOY.prefill(4, 1), rel=1e-12)
    assert costs.table[("decode", 2, 3)] == pytest.approx(TOY.decode(2, 3), rel=1e-12)
    assert costs.table[("decode", 1, 2)] == math.inf


@pytest.mark.parametrize("bad", [
    dict(rate_per_s=0.0), dict(rate_per_s=math.nan), dict(slo=(1.0, 0.05)), dict(estimate=3.0)])
def test_bad_input_raises(bad):
    kw = dict(estimate=toy_estimate, rate_per_s=2.0, slo=TOY_SLO) | bad
    with pytest.raises(ConfigError):
        EstimatedCosts(kw["estimate"], kw["rate_per_s"], kw["slo"])


def test_nan_estimate_and_mismatched_memo_raise():
    with pytest.raises(ConfigError, match="returned nan"):
        plan_by_estimates(lambda p, n, r: math.nan, 1.0, 8, TOY_SLO)
    costs = EstimatedCosts(toy_estimate, 2.0, TOY_SLO)
    with pytest.raises(ConfigError, match="make a new one"):
        plan_by_estimates(costs, 1.0, 8, TOY_SLO)


# ------------------------------------------------------------------------------- the simulation estimator
LLAMA = Setup("llama3.1-70b")
SPARSE_RATE = 1e-3        # one session per ~1000 s on average; a session lasts seconds: no two overlap
SPARSE_SESSIONS = 30


def hand_ttfts(tp: int) -> np.ndarray:
    """Isolated TTFT of every round, by hand from the engine's stated semantics (sessions.py docstring):
    lazy history read decode->prefill, T_pre(h, m) on the prefill replica, the m new tokens' KV back."""
    trace = agent_trace("toolbench", SPARSE_RATE, SPARSE_SESSIONS, seed=0)
    perf = PerfModel.from_step_models({"p": LLAMA.step(tp), "d": LLAMA.step(8)},
                                      model_spec(LLAMA.model_name).kv_bytes_per_token(), link=NVLINK_H20)
    t = session_prefills(trace)
    return np.array([perf.kv_time_s(h, "d", "p") + perf.prefill_time_s(h, m, "p") + perf.kv_time_s(m, "p", "d")
                     for h, m in zip(t["hist_tokens"], t["incr_tokens"])])


def decode_bounds(tp: int) -> tuple[float, float]:
    """Batch-1 decode step at the shortest prompt and at the longest prompt + output of the trace."""
    df = agent_trace("toolbench", SPARSE_RATE, SPARSE_SESSIONS, seed=0).df
    perf = PerfModel.from_step_models({"d": LLAMA.step(tp)}, model_spec(LLAMA.model_name).kv_bytes_per_token())
    return (perf.decode_time_s(1, int(df["prompt_tokens"].min()), "d"),
            perf.decode_time_s(1, int((df["prompt_tokens"] + df["output_tokens"]).max()), "d"))


def test_isolated_replica_latencies_match_hand_values():
    est = SimulatedLatency(LLAMA, "toolbench", num_sessions=SPARSE_SESSIONS, seed=0)
    for tp in (2, 4):
        assert est("prefill", tp, SPARSE_RATE) == pytest.approx(np.percentile(hand_ttfts(tp), 95), rel=1e-9)
        lo, hi = decode_bounds(tp)
        assert lo <= est("decode", tp, SPARSE_RATE) <= hi
    assert est("prefill", 1, SPARSE_RATE) == math.inf and not fits_on(LLAMA, 1)   # 141 GB on one 96 GB H20
    assert est.runs == 4


def test_light_load_plan_by_hand_reasoning():
    """At a load this light, every k gives the isolated latencies (k only thins the arrivals), so by hand:
    TP4's prefill P95 (hand_ttfts) is below TP2's, and its decode upper bound below TP2's lower bound; in 8 GPUs
    with TP1 infeasible the only layouts with a TP4 prefill are P<4,1> + D<2,1|2,2|4,1>, and D<4,1> has the
    smallest decode cost; Z = TP4's prefill cost, which dominates the decode side (checked below)."""
    slo = LLAMA.slo("toolbench")
    plan = plan_by_simulation("llama3.1-70b", "toolbench", SPARSE_RATE * 3, 8, num_sessions=SPARSE_SESSIONS,
                              top_k=3)
    p4, p2 = np.percentile(hand_ttfts(4), 95), np.percentile(hand_ttfts(2), 95)
    assert p4 < p2 and decode_bounds(4)[1] < decode_bounds(2)[0]
    assert p4 / slo.ttft_s > decode_bounds(4)[1] / slo.itl_s    # prefill is the binding phase
    assert (plan.prefill, plan.decode) == ((4, 1), (4, 1))
    assert plan.objective == pytest.approx(p4 / slo.ttft_s, rel=1e-9)
    assert plan.extra["simulations"] == 8          # (2,1..3), (4,1) per phase; TP1 not simulated


def test_same_seed_same_plan():
    a = plan_by_simulation("llama3.1-70b", "hotpotqa", 0.45, 8, num_sessions=40, seed=3)
    b = plan_by_simulation("llama3.1-70b", "hotpotqa", 0.45, 8, num_sessions=40, seed=3)
    assert a.extra["costs"] == b.extra["costs"]
    assert [(x.prefill, x.decode, x.objective) for x in a.alternatives] == \
           [(x.prefill, x.decode, x.objective) for x in b.alternatives]
    c = plan_by_simulation("llama3.1-70b", "hotpotqa", 0.45, 8, num_sessions=40, seed=4)
    assert c.extra["costs"] != a.extra["costs"]       # the seed does reach the simulations


def test_simulated_latency_rejects_bad_input():
    with pytest.raises(ConfigError, match="num_sessions"):
        SimulatedLatency(LLAMA, "toolbench", num_sessions=5)
    with pytest.raises(ConfigError, match="phase"):
        SimulatedLatency(LLAMA, "toolbench", num_sessions=20)("both", 4, 1.0)


def test_routing_variant_is_deterministic():
    """placement='ampd' (pitfall 8, Algorithm 1's seeded random order inside): same seed, same estimates."""
    kw = dict(num_sessions=60, seed=1)
    a = SimulatedLatency(LLAMA, "toolbench", placement="ampd", **kw)
    b = SimulatedLatency(LLAMA, "toolbench", placement="ampd", **kw)
    assert a("prefill", 2, 0.75) == b("prefill", 2, 0.75) and a("decode", 4, 0.75) == b("decode", 4, 0.75)
    with pytest.raises(ConfigError, match="placement"):
        SimulatedLatency(LLAMA, "toolbench", placement="random", num_sessions=20)


def test_experiment_layout_space_by_hand():
    """Llama-3.1-70B in 8 GPUs (TP1 does not fit): prefill and decode pools from {(2,1),(2,2),(2,3),(4,1)}
    whose GPUs sum to <= 8, counted by hand: (2,1) with 4 partners, (2,2) with 3, (2,3) with 1, (4,1) with 3."""
    from experiments.ampd_planner import all_layouts
    lays = all_layouts(LLAMA, 8)
    assert len(lays) == 11 and len(set(lays)) == 11
    assert ((4, 1), (4, 1)) in lays and ((2, 3), (2, 1)) in lays and ((4, 1), (2, 3)) not in lays
