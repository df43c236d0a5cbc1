"""The session engine (simulators/serving/sessions.py) and AMPD's policies on it: spec T4 invariants.

Timelines are hand-computed from a toy cost model (``_Toy`` below): T_pre(h, m) = 0.1 + 0.001 m + 0.0001 h,
a decode step 0.01 s, T_kv(l) = 0.001 + 0.001 l between distinct workers (1000 B/token over 1 MB/s).
"""
import math

import numpy as np
import pandas as pd
import pytest

from formulations.ampd import (DecodeWorkerView, PerfModel, PrefillTask, PrefillWorkerView, Slo, StepTimes,
                               ToyRoutingCosts, agent_trace, route_prefill)
from formulations.ampd.serving import AmpdPlacement, AmpdReorderScheduler
from gpusched import registry
from gpusched.errors import ConfigError
from gpusched.llm import get_model
from gpusched.perf import RooflineStepTime
from gpusched.policy import SessionPrefillView, SessionWorkerView
from gpusched.trace import Trace
from simulators.serving.sessions import SessionWorker, simulate_sessions


class _Toy:
    kv_bytes_per_token = 1000.0

    def prefill_time_s(self, h, m, worker):
        return 0.1 + 0.001 * m + 0.0001 * h

    def decode_time_s(self, b, c, worker):
        return 0.01

    def kv_time_s(self, tokens, src, dst):
        return 0.0 if tokens == 0 or src == dst else 0.001 + 0.001 * tokens


def _trace(rows):
    """rows: (session, round, arrival, prompt, output, think)."""
    df = pd.DataFrame(rows, columns=["session_id", "round", "arrival_time_s", "prompt_tokens", "output_tokens",
                                     "think_time_s"])
    df.insert(0, "request_id", np.arange(len(df)))
    return Trace(df, name="toy")


ONE = _trace([(0, 0, 0.0, 100, 3, 0.0), (0, 1, 0.0, 153, 2, 1.0)])
PD = [SessionWorker("p", "prefill"), SessionWorker("d", "decode", 10_000)]


def test_remote_timeline_and_only_increments_transferred_by_hand():
    res = simulate_sessions(ONE, PD, _Toy(), placement="always-remote")
    r = res.rounds
    # round 0: no history read; compute 0.1 + 0.1 = 0.2; return 0.001 + 0.100 -> first token 0.301; 2 steps
    assert r.loc[0, "first_token_time_s"] == pytest.approx(0.301)
    assert r.loc[0, "finish_time_s"] == pytest.approx(0.321)
    # round 1 released 1.0 after: 1.321; history 103 read (0.104), compute 0.1 + 0.05 + 0.0103, return 50 (0.051)
    assert r.loc[1, "arrival_time_s"] == pytest.approx(1.321)
    assert (r.loc[1, "hist_tokens"], r.loc[1, "incr_tokens"]) == (103, 50)
    assert r.loc[1, "first_token_time_s"] == pytest.approx(1.321 + 0.104 + 0.1603 + 0.051)
    assert r.loc[1, "finish_time_s"] == pytest.approx(1.6463)
    # only increments come back: 100 + 50 tokens returned; 103 history tokens read; 253 x 1000 B in all
    assert r["kv_tokens_returned"].tolist() == [100, 50] and r["kv_tokens_read"].tolist() == [0, 103]
    assert res.kv_bytes_transferred == pytest.approx(253_000)
    assert res.local_share == 0 and res.num_evictions == 0


def test_local_timeline_by_hand_moves_no_kv():
    res = simulate_sessions(ONE, PD, _Toy(), placement="always-local")
    r = res.rounds
    assert r["first_token_time_s"].tolist() == pytest.approx([0.2, 1.22 + 0.1603])
    assert r["finish_time_s"].tolist() == pytest.approx([0.22, 1.3903])
    assert res.kv_bytes_transferred == 0 and res.local_share == 1


def test_local_prefill_adds_exactly_its_time_to_the_decode_gap():
    """T4: A decodes 10 tokens (first at 0.2, alone it would finish at 0.29); B arrives at 0.245 and its local
    prefill of 200 tokens (0.3 s) pauses A after the step that ends at 0.25 -> A finishes 0.29 + 0.3."""
    alone = simulate_sessions(_trace([(0, 0, 0.0, 100, 10, 0.0)]), PD[1:], _Toy())
    both = simulate_sessions(_trace([(0, 0, 0.0, 100, 10, 0.0), (1, 0, 0.245, 200, 2, 0.0)]), PD[1:], _Toy())
    assert alone.rounds.loc[0, "finish_time_s"] == pytest.approx(0.29)
    assert both.rounds.loc[0, "finish_time_s"] == pytest.approx(0.29 + 0.3)
    assert both.rounds.loc[1, "first_token_time_s"] == pytest.approx(0.55)


def test_eviction_recomputes_the_history_and_is_counted():
    """Capacity 400: A (102 tokens) idles in its tool call when B needs 302 -> A evicted; A's next round re-prefills
    its 102-token history with its 50 new tokens (hist 0, incr 152). With room, nothing is evicted."""
    tr = _trace([(0, 0, 0.0, 100, 2, 0.0), (0, 1, 0.0, 152, 2, 5.0), (1, 0, 1.0, 300, 2, 0.0)])
    small = simulate_sessions(tr, [SessionWorker("d", "decode", 400)], _Toy())
    r = small.rounds.set_index(["session_id", "round"])
    assert small.num_evictions == 1 and small.recomputed_tokens == 102
    assert (r.loc[(0, 1), "hist_tokens"], r.loc[(0, 1), "incr_tokens"]) == (0, 152)
    big = simulate_sessions(tr, [SessionWorker("d", "decode", 10_000)], _Toy())
    rb = big.rounds.set_index(["session_id", "round"])
    assert big.num_evictions == 0 and (rb.loc[(0, 1), "hist_tokens"], rb.loc[(0, 1), "incr_tokens"]) == (102, 50)


def test_kv_ttl_pins_an_idle_session_and_the_newcomer_waits():
    """Same trace with A's KV pinned for 10 s (vLLM-Continuum): B cannot evict A and waits; A's round 1 (released
    at 0.21 + 5 = 5.21, in flight, so not queued behind B) runs 0.1 + 0.05 + 0.0102 s and one step, ending A at
    5.3802, which frees A's 154 tokens: B is admitted then. Nothing is evicted."""
    tr = _trace([(0, 0, 0.0, 100, 2, 0.0), (0, 1, 0.0, 152, 2, 5.0), (1, 0, 1.0, 300, 2, 0.0)])
    res = simulate_sessions(tr, [SessionWorker("d", "decode", 400)], _Toy(), kv_ttl_s=10.0)
    r = res.rounds.set_index(["session_id", "round"])
    assert res.num_evictions == 0
    assert r.loc[(0, 1), "finish_time_s"] == pytest.approx(5.3802)
    assert r.loc[(1, 0), "arrival_time_s"] == 1.0 and r.loc[(1, 0), "admit_time_s"] == pytest.approx(5.3802)
    assert r.loc[(1, 0), "first_token_time_s"] == pytest.approx(5.3802 + 0.4)


def test_per_round_reservation_not_the_session_peak():
    """Two sessions whose peaks (1000 + 10 tokens each) exceed the worker together (1500) but whose rounds fit:
    reserving per round serves both concurrently (no eviction needed while both run round 0)."""
    tr = _trace([(0, 0, 0.0, 300, 2, 0.0), (0, 1, 0.0, 1000, 10, 1.0),
                 (1, 0, 0.0, 300, 2, 0.0), (1, 1, 0.0, 1000, 10, 1.0)])
    res = simulate_sessions(tr, [SessionWorker("d", "decode", 1500)], _Toy())
    r = res.rounds
    assert r.loc[r["round"] == 0, "admit_time_s"].tolist() == [0.0, 0.0]
    assert r["finish_time_s"].notna().all()


def _llama_cluster():
    step = RooflineStepTime(get_model("llama3.1-70b"), "H100", tp=4)
    perf = PerfModel({k: StepTimes(step) for k in ("p0", "p1", "d0", "d1")}, get_model("llama3.1-70b").kv_bytes_per_token())
    workers = [SessionWorker("p0", "prefill"), SessionWorker("p1", "prefill"),
               SessionWorker("d0", "decode", 200_000), SessionWorker("d1", "decode", 200_000)]
    return perf, workers


def _ampd_run(trace, seed, window=3):
    perf, workers = _llama_cluster()
    slo = Slo(0.08, 0.005)  # tight enough that neither slack rule always fires: both paths run
    for w in workers:
        w.scheduler = AmpdReorderScheduler(slo.ttft_s, window=window)
    return simulate_sessions(trace, workers, perf, placement=AmpdPlacement(perf, slo, seed=seed), seed=seed)


def test_every_round_served_kv_kept_and_deterministic():
    tr = agent_trace("toolbench", 3.0, 60, seed=3)
    a, b = _ampd_run(tr, seed=1), _ampd_run(tr, seed=1)
    assert a.events == b.events                                       # same seed, same run
    r = a.rounds
    assert len(r) == len(tr) and r["finish_time_s"].notna().all()     # every round served
    assert 0 < a.local_share < 1                                      # both paths taken at this load
    # a session's KV is never lost between rounds: history = previous prompt + output, unless evicted (counted)
    for _, g in r.groupby("session_id"):
        g = g.sort_values("round")
        prev = (g["prompt_tokens"] + g["output_tokens"]).shift(1).fillna(0).astype(int)
        assert (g["hist_tokens"] + g["recomputed_tokens"] == prev).all()
        assert (g["incr_tokens"] == g["prompt_tokens"] - g["hist_tokens"]).all()
        assert g["decode_worker"].nunique() == 1                      # one decode worker for the whole session
    assert a.num_evictions == 0 and a.recomputed_tokens == 0


def test_ampd_with_always_remote_and_window_1_is_dynamo():
    """T4: routing forced to always remote and w = 1 -> identical event trace to the Dynamo-like baseline."""
    tr = agent_trace("toolbench", 3.0, 40, seed=5)
    perf, workers = _llama_cluster()
    dyn = simulate_sessions(tr, workers, perf, placement="always-remote")
    perf, workers = _llama_cluster()
    for w in workers:
        w.scheduler = AmpdReorderScheduler(0.5, window=1)
    amp = simulate_sessions(tr, workers, perf, placement="always-remote")
    assert amp.events == dyn.events


def _views(itl_hat, ttft_hats, decode_queue, queues):
    """The spec's T2 state as the engine's views (tasks bound to decode worker 0)."""
    def tasks(q):
        return tuple(SessionPrefillView(k, 1, h, m, 0.0, 0) for k, (h, m) in enumerate(q))
    d = SessionWorkerView(2, "decode", "d", tasks(decode_queue), 0.0, itl_hat, 0.0, 4, 1, 1)
    ps = [SessionWorkerView(i, "prefill", f"p{i}", tasks(q), t, 0.0, 0.0, 0, 0, 0)
          for i, (t, q) in enumerate(zip(ttft_hats, queues))]
    return d, ps


@pytest.mark.parametrize("itl_hat, ttft_hats, dq, q1, expected", [
    (0.048, (1.90, 1.85), [(3000, 400)], [(0, 4000), (8000, 600), (0, 3000), (0, 2500)], None),        # T2a
    (0.040, (1.90, 1.85), [(3000, 400)], [(0, 4000), (8000, 600), (0, 3000), (0, 2500)], None),        # T2b
    (0.048, (1.70, 1.85), [(3000, 400)], [(0, 4000), (8000, 600), (0, 3000), (0, 2500)], 0),           # T2c
    (0.048, (1.90, 1.85), [(3000, 400)] * 4, [], 1),                                                    # T2d
])
def test_placement_decisions_match_route_prefill_on_t2(itl_hat, ttft_hats, dq, q1, expected):
    """Answers from the spec's T2 hand values, and the same call to route_prefill on the same state."""
    cost = ToyRoutingCosts({"d": 4, "p0": 2, "p1": 4})
    slo = Slo(2.0, 0.050)
    q0 = [(0, 2000), (5000, 800), (0, 1500)]
    d, ps = _views(itl_hat, ttft_hats, dq, [q0, q1])
    task = SessionPrefillView("s", 1, 6000, 500, 0.0, 2)
    got = AmpdPlacement(cost, slo, random_order=False).place(task, d, ps, 0.0)
    assert got == expected
    direct = route_prefill(PrefillTask("s", 6000, 500), DecodeWorkerView("d", itl_hat, tuple(PrefillTask(k, h, m) for k, (h, m) in enumerate(dq))),
                           [PrefillWorkerView(f"p{i}", t, tuple(PrefillTask(k, h, m) for k, (h, m) in enumerate(q)))
                            for i, (t, q) in enumerate(zip(ttft_hats, [q0, q1]))], cost, slo)
    assert (None if direct.local else direct.index) == expected


def test_reorder_scheduler_is_t1():
    """Spec T1: at T_now = 10, queue r1 (9.2, 0.5), r2 (9.5, 0.2), r3 (9.9, 0.35) -> r2 runs, r1 postponed once."""
    from gpusched.policy import SeqState
    q = []
    for k, (enq, t) in enumerate(((9.2, 0.5), (9.5, 0.2), (9.9, 0.35))):
        s = SeqState(k, k, enq, 110, 5)
        s.num_computed_tokens = 100
        s.extra = {"postponed": 0, "t_pre_s": t, "round": 1}
        q.append(s)
    running = []
    plan = AmpdReorderScheduler(1.0, window=3).schedule(q, running, None, 10.0)
    assert plan.entries[0][0].request_id == 1 and [s.request_id for s in q] == [2, 0]
    assert [s.extra["postponed"] for s in q] == [0, 1] and running == [plan.entries[0][0]]


def test_registry_and_bad_inputs():
    assert {"ampd", "always-local", "always-remote"} <= set(registry.names("placement"))
    assert "ampd-reorder" in registry.names("prefill-queue")
    assert "ampd-reorder" not in registry.names("scheduler")  # not a serving-engine batch scheduler
    with pytest.raises(ConfigError, match="session"):
        simulate_sessions(Trace(pd.DataFrame({"request_id": [0], "arrival_time_s": [0.0], "prompt_tokens": [10],
                                              "output_tokens": [2]})), PD, _Toy())
    with pytest.raises(ConfigError, match="holds 50"):
        simulate_sessions(ONE, [SessionWorker("d", "decode", 50)], _Toy())

    class Bad:
        name = "bad"

        def place(self, *a):
            return 7
    with pytest.raises(ConfigError, match="index of a prefill worker"):
        simulate_sessions(ONE, PD, _Toy(), placement=Bad())
    with pytest.raises(ConfigError, match="kv_capacity_tokens"):
        SessionWorker("d", "decode", 0)
    assert math.isfinite(simulate_sessions(ONE, PD, _Toy()).rounds["finish_time_s"].max())


def test_reproduce_registration_and_claims_on_a_hand_table():
    """The reproduce module plans scalar cells (quick settings a subset of full) and its claims read a table as by hand:
    AMPD 0.6 / 0.3 vs Dynamo 0.4 / 0.3 -> mean gain (50 % + 0 %) / 2 = 25 %; best layout per system is taken."""
    from experiments.reproduce import experiments
    from experiments.reproduce.papers import ampd as rp
    exps = {e.name: e for e in experiments(["ampd"])}
    assert set(exps) == {"ampd-serving", "ampd-ablation", "ampd-window"}
    def settings(cells):  # quick runs fewer sessions of the same (system, layout, workload, rate) settings
        return {tuple(sorted((k, v) for k, v in c.items() if k != "sessions")) for c in cells}
    for e in exps.values():
        assert settings(e.plan(True)) <= settings(e.plan(False))
    t = pd.DataFrame([
        dict(workload="w", rate_per_s=1.0, system="ampd", layout="a", attainment=0.6),
        dict(workload="w", rate_per_s=1.0, system="ampd", layout="b", attainment=0.1),
        dict(workload="w", rate_per_s=1.0, system="dynamo", layout="a", attainment=0.4),
        dict(workload="w", rate_per_s=2.0, system="ampd", layout="a", attainment=0.3),
        dict(workload="w", rate_per_s=2.0, system="dynamo", layout="a", attainment=0.3),
    ])
    assert rp._mean_gain("dynamo")(t) == pytest.approx(25.0)
    assert rp._share_not_worse("dynamo")(t) == 1.0
