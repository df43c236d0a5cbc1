"""Helix per-request pipeline routers (issue 5 item 5): IWRR sequences, KV admission, masks, baselines.

Expected sequences and counts are computed by hand in the comments (the IWRR rule of spec §1.c-5:
``argmin load_v + x / w_v``, strict ``<``; the KV rule of §1.c-6), not taken from the code under test.
"""
import math

import pytest

from formulations.helix import (HelixProblem, HelixRouter, RandomRouter, ShortestQueueRouter, SwarmRouter,
                                routing_graph, stages_from_path)
from gpusched.errors import ConfigError
from gpusched.policy import PipelineNodeView, PipelineRouter, PipelineStage, SeqState

INF = math.inf


def _seq(i, prompt=1, output=2):
    return SeqState(i, i, 0.0, prompt, output)


def _fan_in(ta=200.0, tb=100.0, tc=300.0):
    """L = 2: A[0,1) and B[0,1) both feed C[1,2); unlimited links. Max flow: S->A = T_A, S->B = T_B."""
    pr = HelixProblem(2, {"A": [ta], "B": [tb], "C": [tc]}, {("A", "C"): INF, ("B", "C"): INF})
    return pr, {"A": (0, 1), "B": (0, 1), "C": (1, 2)}


def _first(stages):
    return stages[0].node


def test_routers_implement_the_protocol():
    pr, pl = _fan_in()
    for r in (HelixRouter(pr, pl), RandomRouter(pr, pl), ShortestQueueRouter(pr, pl), SwarmRouter(pr, pl)):
        assert isinstance(r, PipelineRouter)


def test_iwrr_sequence_on_toy_graph():
    # weights at the source: w_A = 200, w_B = 100 (flows). x = 1 per prompt:
    # 1: A .005 < B .01 -> A;  2: A .010 = B .010 -> A (tie, lower index);  3: A .015 > B .010 -> B;
    # 4: A .015 < B .020 -> A; 5: A .020 = B .020 -> A; 6: B. So A, A, B, A, A, B.
    pr, pl = _fan_in()
    r = HelixRouter(pr, pl)
    firsts = []
    for i in range(6):
        st = r.route(_seq(i), {}, 0.0)
        assert [s.node for s in st] == [_first(st), "C"]
        assert st == [PipelineStage(_first(st), 0, 1), PipelineStage("C", 1, 2)]
        firsts.append(_first(st))
    assert firsts == ["A", "A", "B", "A", "A", "B"]


def test_decode_steps_charge_the_path():
    # route r0 -> A (A load .005); two decode steps add 2/200 -> A load .015; next prompt: A .020 vs B .010 -> B
    pr, pl = _fan_in()
    r = HelixRouter(pr, pl)
    s0 = _seq(0)
    assert _first(r.route(s0, {}, 0.0)) == "A"
    r.on_decode(s0, 0.1)
    r.on_decode(s0, 0.2)
    assert _first(r.route(_seq(1), {}, 0.3)) == "B"


def test_kv_admission_count_through_router():
    # spec §1.f case 8: KV = 1e6 slots, 10 layers, h = 0.9, rho = 0.6, prompts of 763 tokens:
    # cost = floor(763 + 240*0.6) * 10 = 9070; admitted n while 1e6 - 9070 n >= 1e5 -> n <= 99.2 -> 99.
    pr = HelixProblem(10, {"A": [1000.0] * 10}, {})
    r = HelixRouter(pr, {"A": (0, 10)}, {"A": 1_000_000}, mode="online")
    seqs = [_seq(i, prompt=763) for i in range(101)]
    admitted = [r.route(s, {}, 0.0) is not None for s in seqs]
    assert admitted == [True] * 99 + [False] * 2
    r.release(seqs[0], 1.0)  # frees 9070 -> one more fits
    assert r.route(seqs[99], {}, 1.0) is not None


def test_offline_mode_kv_settings():
    # offline: rho = 1.0, h = 0.85 -> cost = (763 + 240) * 10 = 10030; n <= (1e6 - 1.5e5) / 10030 = 84.7 -> 84
    pr = HelixProblem(10, {"A": [1000.0] * 10}, {})
    r = HelixRouter(pr, {"A": (0, 10)}, {"A": 1_000_000}, mode="offline")
    n = 0
    while r.route(_seq(n, prompt=763), {}, 0.0) is not None:
        n += 1
    assert n == 84


def test_fail_flow_mask():
    # w_B = 40 is 40/1040 = 3.8 % < 5 % of the source's out-flow: B is never chosen (unmasked, IWRR
    # would pick it at the 25th prompt, when A's load 25/1000 reaches B's 1/40).
    pr, pl = _fan_in(ta=1000.0, tb=40.0, tc=2000.0)
    r = HelixRouter(pr, pl)
    assert {_first(r.route(_seq(i), {}, 0.0)) for i in range(100)} == {"A"}
    r = HelixRouter(pr, pl, flow_threshold=0.0)
    assert "B" in {_first(r.route(_seq(i), {}, 0.0)) for i in range(100)}


def test_fail_length_and_fail_kv_masks():
    pr, pl = _fan_in()
    r = HelixRouter(pr, pl, prompt_max_tokens={"A": 50, "B": 5000, "C": 5000})
    assert {_first(r.route(_seq(i, prompt=100), {}, 0.0)) for i in range(5)} == {"B"}
    # A has room for no request (cost (10 + 144) * 1 = 154 > 0.9 * 100); B and C are large
    r = HelixRouter(pr, pl, {"A": 100, "B": 10**6, "C": 10**6})
    assert {_first(r.route(_seq(i, prompt=10), {}, 0.0)) for i in range(5)} == {"B"}
    # nothing fits on either first-stage node: rejected
    r = HelixRouter(pr, pl, {"A": 100, "B": 100, "C": 10**6})
    assert r.route(_seq(0, prompt=10), {}, 0.0) is None


def test_routing_graph_prunes_dead_ends():
    # X[1,2) has no link to C[2,3): a walk into X could never reach the sink, so X is not a candidate
    pr = HelixProblem(3, {"A": [100.0], "B": [100.0], "X": [100.0], "C": [100.0]},
                      {("A", "B"): INF, ("A", "X"): INF, ("B", "C"): INF})
    pl = {"A": (0, 1), "B": (1, 2), "X": (1, 2), "C": (2, 3)}
    g = routing_graph(pr, pl)
    assert g["A"] == ["B"] and "X" not in g
    r = RandomRouter(pr, pl, seed=1)
    for i in range(20):
        assert [s.node for s in r.route(_seq(i), {}, 0.0)] == ["A", "B", "C"]


def test_partial_inference_stages():
    # B[0,2) may continue at layer 1 after A[0,1)? No: partial inference means s_v <= e_u < e_v, so
    # after A (e = 1) node B[0,2) computes only layer 1.
    pl = {"A": (0, 1), "B": (0, 2)}
    assert stages_from_path(["source", "A", "B", "sink"], pl) == [PipelineStage("A", 0, 1), PipelineStage("B", 1, 2)]
    with pytest.raises(ConfigError, match="cannot continue"):
        stages_from_path(["source", "B", "A", "sink"], pl)


def test_shortest_queue_uses_node_views():
    pr, pl = _fan_in()
    r = ShortestQueueRouter(pr, pl)

    def view(n, active, queued=0):
        s, e = pl[n]
        return PipelineNodeView(n, s, e, queued, active, 0, 100)

    nodes = {"A": view("A", 3), "B": view("B", 1), "C": view("C", 0)}
    assert _first(r.route(_seq(0), nodes, 0.0)) == "B"
    nodes = {"A": view("A", 1, 5), "B": view("B", 1, 7), "C": view("C", 0)}
    assert _first(r.route(_seq(1), nodes, 0.0)) == "A"


def test_random_and_swarm_are_seeded():
    pr, pl = _fan_in()
    for cls in (RandomRouter, SwarmRouter):
        r1, r2 = cls(pr, pl, seed=7), cls(pr, pl, seed=7)
        a = [_first(r1.route(_seq(i), {}, 0.0)) for i in range(30)]
        b = [_first(r2.route(_seq(i), {}, 0.0)) for i in range(30)]
        assert a == b and set(a) == {"A", "B"}
    # Swarm draws proportionally to T: a node with T = 0 is never drawn
    pr0, pl0 = _fan_in(tb=0.0)
    r = SwarmRouter(pr0, pl0, seed=0)
    assert {_first(r.route(_seq(i), {}, 0.0)) for i in range(30)} == {"A"}


def test_bad_router_inputs():
    pr, pl = _fan_in()
    with pytest.raises(ConfigError, match="mode"):
        HelixRouter(pr, pl, mode="batch")
    with pytest.raises(ConfigError, match="lacks node"):
        HelixRouter(pr, pl, {"A": 10})
    r = HelixRouter(pr, pl)
    r.route(_seq(0), {}, 0.0)
    with pytest.raises(ConfigError, match="routed twice"):
        r.route(_seq(0), {}, 0.0)


def test_expected_kv_used_slots_for_the_feeder():
    # spec §1.f case 8 costs: one online request of 763 tokens on 10 layers expects floor(763 + 144) * 10 = 9070
    # slots; after release nothing is expected. This is what the engine's offline feeder reads.
    from gpusched.policy import KVExpectingRouter

    pr = HelixProblem(10, {"A": [1000.0] * 10}, {})
    r = HelixRouter(pr, {"A": (0, 10)}, {"A": 1_000_000}, mode="online")
    assert isinstance(r, KVExpectingRouter)
    s = _seq(0, prompt=763)
    r.route(s, {}, 0.0)
    assert r.expected_kv_used_slots() == {"A": 9070}
    r.release(s, 1.0)
    assert r.expected_kv_used_slots() == {"A": 0}
