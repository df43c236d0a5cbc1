"""Helix (ASPLOS'25) placement: loaders, max flow on the published placements, toy MILPs, IWRR, KV admission.

Every MILP here is a toy that HiGHS proves in well under a second; the long solves live in
``experiments/bench_helix_placement.py``.
"""
import math

import pytest

from gpusched.errors import ConfigError, UnknownNameError
from formulations.helix import (DATA_DIR, HelixProblem, InterleavedWeightedRoundRobin, KVExpectation,
                                PipelineScheduler, build_placement_model, chain_placement, heuristic_result,
                                load_helix_placement, load_helix_problem, max_flow, prune_links,
                                solve_placement, solve_placement_arcflow)

INF = math.inf
C, P = DATA_DIR / "clusters", DATA_DIR / "placements"


def _load(cluster, model):
    return load_helix_problem(C / cluster, model)


@pytest.mark.parametrize("cluster,model,placement,partial,expected", [
    ("single24.ini", "llama2_70b", "single24_70b_ilp.ini", False, 1289.56),
    ("geo24.ini", "llama2_70b", "geo24_70b_ilp.ini", False, 1212.18),
    ("cluster42.ini", "llama2_70b", "cluster42_70b_ilp.ini", False, 4137.55),
    ("cluster10.ini", "llama1_30b", "cluster10_30b_ilp.ini", False, 286.587),
    ("single24.ini", "llama2_70b", "single24_70b_swarm.ini", False, 757.85),
    ("single24.ini", "llama2_70b", "single24_70b_petals.ini", True, 952.11),
    ("single24.ini", "llama1_30b", "single24_30b_petals.ini", True, 898.57),
    ("cluster42.ini", "llama2_70b", "cluster42_70b_swarm.ini", False, 4892.24),
])
def test_published_max_flow(cluster, model, placement, partial, expected):
    pr = _load(cluster, model)
    pl = load_helix_placement(P / placement, pr)
    assert max_flow(pr, pl, allow_partial_inference=partial).value_tokens_per_s == pytest.approx(expected, abs=0.01)


def test_upper_bound_and_model_size_match_gurobi():
    pr = _load("single24.ini", "llama2_70b")
    assert pr.upper_bound_tokens_per_s() == pytest.approx(2803.86, abs=0.01)
    assert build_placement_model(pr).size == (1848, 1376, 13960)
    assert build_placement_model(_load("cluster42.ini", "llama2_70b")).size == (5502, 4004, 49546)
    assert build_placement_model(_load("cluster10.ini", "llama1_30b")).size == (350, 316, 3002)
    geo = _load("geo24.ini", "llama2_70b")
    assert build_placement_model(prune_links(geo, 12)).size == (1122, 876, 8326)
    assert build_placement_model(prune_links(_load("cluster42.ini", "llama2_70b"), 12)).size[:2] == (2772, 2144)


def test_heuristic_baselines():
    pr = _load("single24.ini", "llama2_70b")
    assert heuristic_result(pr, "swarm").objective == pytest.approx(757.85, abs=0.01)
    assert heuristic_result(pr, "petals").objective == pytest.approx(952.11, abs=0.01)
    assert max_flow(pr, chain_placement(pr)).value_tokens_per_s == pytest.approx(2045.64, abs=0.01)


def _toy(ab=INF, ac=INF, bc=INF):
    return HelixProblem(4, {"A": [400 / k for k in range(1, 5)], "B": [200, 100], "C": [200, 100]},
                        {("A", "B"): ab, ("A", "C"): ac, ("B", "C"): bc})


GEO = HelixProblem(2, {n: [100] for n in "ABCD"}, {("A", "B"): INF, ("C", "D"): INF, ("A", "C"): 10,
                                                  ("A", "D"): 10, ("B", "C"): 10, ("B", "D"): 10})


@pytest.mark.parametrize("problem,expected", [
    (_toy(), 200.0), (_toy(30, 30, 50), 150.0), (GEO, 200.0),
    (HelixProblem(2, {"A": [100], "B": [100]}, {("A", "B"): 30}), 30.0),
    (HelixProblem(1, {"A": [100]}, {}, source_links={"A": 40}), 40.0),
])
@pytest.mark.parametrize("strong", [False, True])
def test_toy_milp_optimum(problem, expected, strong):
    r = solve_placement(problem, 20, valid_cut=strong, tight_big_m=strong, symmetry_breaking=strong,
                        warm_start="best" if strong else None)
    assert r.status == "optimal"
    assert r.objective == pytest.approx(expected, abs=1e-6)
    assert max_flow(problem, r.placement).value_tokens_per_s == pytest.approx(expected, abs=1e-6)


def test_toy_geo_swarm_split_is_40():
    split = {"A": (0, 1), "B": (0, 1), "C": (1, 2), "D": (1, 2)}
    assert max_flow(GEO, split).value_tokens_per_s == pytest.approx(40.0)


def test_arcflow_exact_on_toy():
    r = solve_placement_arcflow(_toy(), 20)
    assert r.extra["exact"] and r.status == "optimal" and r.objective == pytest.approx(200.0)
    assert not solve_placement_arcflow(_toy(30, 30, 50), 20).extra["exact"]


def test_time_limited_run_is_not_optimal():
    pr = _load("cluster10.ini", "llama1_30b")
    r = solve_placement(pr, 1.0, warm_start="chain")
    assert r.status == "time_limit"
    assert r.objective >= 286.58 and r.upper_bound > r.objective and r.gap > 0


def test_bad_inputs(tmp_path):
    with pytest.raises(UnknownNameError, match="99"):
        HelixProblem(2, {0: [1.0]}, {(0, 99): 1.0})
    pr = _toy()
    with pytest.raises(ConfigError, match="layer"):
        max_flow(pr, {"A": (0, 2), "B": (0, 2), "C": (0, 1)})  # layers 2, 3 uncovered
    with pytest.raises(ConfigError, match="'B'.*K_i = 2"):
        max_flow(pr, {"A": (0, 4), "B": (0, 3), "C": (2, 4)})
    text = (C / "cluster10.ini").read_text()
    bad = tmp_path / "bad_link.ini"
    bad.write_text(text + "\n[Link-0-77]\nbandwidth=1000 * mbps\nlatency=1 * MilliSec\n")
    with pytest.raises(UnknownNameError, match="77"):
        load_helix_problem(bad, "llama1_30b")
    bad2 = tmp_path / "bad_type.ini"
    bad2.write_text(text.replace("type=L4", "type=H100", 1))
    with pytest.raises(UnknownNameError, match=r"node \d+ has type 'H100'"):
        load_helix_problem(bad2, "llama1_30b")
    with pytest.raises(UnknownNameError, match=r"node \d+ has type 'H100'"):
        load_helix_problem(bad2, "llama1_30b", cluster_mix="10node_L4x4_T4x6")


def test_iwrr_sequences():
    w = InterleavedWeightedRoundRobin([2, 1])
    assert [w.choose() for _ in range(6)] == [0, 0, 1, 0, 0, 1]
    w = InterleavedWeightedRoundRobin([1, 1, 2])
    assert [w.choose() for _ in range(8)] == [2, 0, 1, 2, 2, 0, 1, 2]
    w = InterleavedWeightedRoundRobin([1, 1])
    assert w.choose(mask=[True, False]) == 1 and w.choose(mask=[True, True]) is None


def test_kv_admission_count():
    kv = KVExpectation(1_000_000, 10, expected_output_ratio=0.6, high_water_mark=0.9)
    assert kv.cost(763) == 9070
    n = 0
    while kv.admit(n, 763):
        n += 1
    assert n == 99 and kv.free_slots == 102_070
    kv.release(0)
    assert kv.admit("again", 763)


def test_pipeline_scheduler_follows_flows():
    pr = _toy(30, 30, 50)
    pl = {"A": (0, 4), "B": (0, 2), "C": (2, 4)}
    fr = max_flow(pr, pl)
    sched = PipelineScheduler(fr.arc_flows, pl)
    paths = [sched.schedule(r, 1) for r in range(150)]
    via_a = sum(p == ["source", "A", "sink"] for p in paths)
    assert via_a == 100 and all(p[-1] == "sink" for p in paths)
    # Fail-KV masks a full node; with every node full the request is rejected and loads restored
    kv = {n: KVExpectation(1000, pl[n][1] - pl[n][0], 1.0, 0.9) for n in pl}
    sched = PipelineScheduler(fr.arc_flows, pl, kv=kv)
    p = sched.schedule("big", 10_000)
    assert p is None and all(k.free_slots == 1000 for k in kv.values())
