"""Proving Helix placements optimal: the layer-cover bound, the hub feasibility MILP, brute force.

Everything here runs in well under a second per test (the instance-size proofs are combinatorial or a
root-node infeasibility); timings of the alternatives live in ``experiments/bench_helix_placement.py``.
"""
import math
import random

import pytest

from gpusched.errors import ConfigError
from formulations.helix import (DATA_DIR, HelixProblem, brute_force_optimum, chain_placement,
                                count_placements, cover_bound_at_level, cover_weight, layer_cover_bound,
                                links_never_bind, load_helix_placement, load_helix_problem, max_flow,
                                prove_optimal, solve_placement)

INF = math.inf
C, P = DATA_DIR / "clusters", DATA_DIR / "placements"
T_L4_6 = 286.5874  # LLaMA-30B, L4 holding 6 layers: the 10-node optimum (spec §1.e, §1.f-6)


def _toy(ab=INF, ac=INF, bc=INF):
    return HelixProblem(4, {"A": [400 / k for k in range(1, 5)], "B": [200, 100], "C": [200, 100]},
                        {("A", "B"): ab, ("A", "C"): ac, ("B", "C"): bc})


GEO = HelixProblem(2, {n: [100] for n in "ABCD"}, {("A", "B"): INF, ("C", "D"): INF, ("A", "C"): 10,
                                                  ("A", "D"): 10, ("B", "C"): 10, ("B", "D"): 10})


def test_cover_weight_is_valid():
    """Any multiset of throughputs summing to >= F has weights summing to >= m (the cut's premise)."""
    rng = random.Random(0)
    for _ in range(3000):
        m, F = rng.randint(2, 9), rng.uniform(1, 100)
        ts = [rng.uniform(0.01, 1.2) * F for _ in range(rng.randint(1, 6))]
        if sum(ts) >= F:
            assert sum(cover_weight(t, F, m) for t in ts) >= m
    assert cover_weight(50.0, 100.0, 2) == 1 and cover_weight(100.0, 100.0, 2) == 2
    assert [cover_weight(t, 90.0, 4) for t in (10, 30, 60, 89.9, 90)] == [1, 2, 3, 3, 4]


def test_cover_bound_proves_the_10_node_optimum():
    pr = load_helix_problem(C / "cluster10.ini", "llama1_30b")
    cb = layer_cover_bound(pr)
    assert cb.level == 2 and cb.bound_tokens_per_s == pytest.approx(T_L4_6, abs=1e-4)
    assert cover_bound_at_level(pr, 2) == pytest.approx(T_L4_6, abs=1e-4)
    pub = load_helix_placement(P / "cluster10_30b_ilp.ini", pr)
    proof = prove_optimal(pr, pub, 5)
    assert proof.status == "optimal" and proof.method == "cover_bound"
    assert proof.incumbent_tokens_per_s == pytest.approx(286.587, abs=1e-3)
    assert proof.upper_bound_tokens_per_s - proof.incumbent_tokens_per_s < 1e-3


def test_hub_milp_with_cover_cuts_proves_the_10_node_optimum():
    pr = load_helix_problem(C / "cluster10.ini", "llama1_30b")
    pub = load_helix_placement(P / "cluster10_30b_ilp.ini", pr)
    proof = prove_optimal(pr, pub, 5, use_cover_bound=False)
    assert proof.status == "optimal" and proof.method == "hub_feasibility_milp"
    assert proof.upper_bound_tokens_per_s == pytest.approx(T_L4_6 + 1e-3, abs=1e-6)
    assert proof.extra["mip_nodes"] <= 1  # infeasible at the root


def test_chain_is_optimal_on_single_24():
    pr = load_helix_problem(C / "single24.ini", "llama2_70b")
    assert layer_cover_bound(pr).bound_tokens_per_s == pytest.approx(2045.64, abs=0.01)
    proof = prove_optimal(pr, chain_placement(pr), 5)
    assert proof.status == "optimal" and proof.incumbent_tokens_per_s == pytest.approx(2045.64, abs=0.01)


@pytest.mark.parametrize("problem,expected,provable", [
    (_toy(), 200.0, True), (GEO, 200.0, True),
    # links bind: the hub relaxation (links dropped) allows more, so no proof, and none is claimed
    (_toy(30, 30, 50), 150.0, False),
    (HelixProblem(2, {"A": [100], "B": [100]}, {("A", "B"): 30}), 30.0, False),
    (HelixProblem(1, {"A": [100]}, {}, source_links={"A": 40}), 40.0, False),
])
def test_prove_on_spec_toys(problem, expected, provable):
    r = solve_placement(problem, 10, prove=True)
    assert r.objective == pytest.approx(expected, abs=1e-6)
    assert r.status == "optimal" and r.proof is None  # HiGHS proved it: nothing to add
    proof = prove_optimal(problem, r.placement, 5)
    assert (proof.status == "optimal") is provable
    assert proof.upper_bound_tokens_per_s >= expected - 1e-9


def test_a_worse_placement_is_improved_not_proven():
    pr = _toy()
    worse = {"A": (0, 4), "B": (0, 1), "C": (0, 1)}  # only A's 100 tokens/s reach layer 3
    proof = prove_optimal(pr, worse, 5)
    assert proof.status == "improved"
    assert max_flow(pr, proof.better_placement).value_tokens_per_s > 100.0 + 1e-3


def test_solve_placement_prove_option_closes_the_gap():
    pr = load_helix_problem(C / "cluster10.ini", "llama1_30b")
    r = solve_placement(pr, 1.0, warm_start="chain", prove=True)
    assert r.status == "time_limit"  # HiGHS's own status is never upgraded
    assert r.proof.status == "optimal" and r.objective == pytest.approx(T_L4_6, abs=1e-4)
    assert r.gap < 1e-6


def _random_problem(rng):
    L, n = rng.randint(2, 5), rng.randint(2, 4)
    thr = {f"N{i}": [round(rng.uniform(50, 300) / k * rng.uniform(0.6, 1.2), 1)
                     for k in range(1, rng.randint(1, L) + 1)] for i in range(n)}
    nodes = list(thr)
    dense = rng.random() < 0.5
    links = {(nodes[a], nodes[b]): INF if dense else rng.choice([INF, rng.uniform(10, 200)])
             for a in range(n) for b in range(a + 1, n) if dense or rng.random() < 0.8}
    return HelixProblem(L, thr, links)


def test_milp_and_bounds_agree_with_brute_force():
    """On random toys: MILP optimum == enumeration; cover bound >= optimum; the enumerated optimum is
    proven whenever the hub relaxation is exact; a proof is never issued for a worse placement."""
    rng, checked = random.Random(7), 0
    while checked < 8:
        pr = _random_problem(rng)
        if sum(min(len(t), pr.num_layers) for t in pr.throughput.values()) < pr.num_layers \
                or count_placements(pr) > 1500:
            continue
        best, placement = brute_force_optimum(pr)
        if best <= 0:
            continue
        checked += 1
        assert solve_placement(pr, 10).objective == pytest.approx(best, abs=1e-4)
        assert layer_cover_bound(pr).bound_tokens_per_s >= best - 1e-6
        status = prove_optimal(pr, placement, 5).status
        assert status == "optimal" or (status == "not_proven" and not links_never_bind(pr))


def test_bad_inputs():
    pr = _toy()
    with pytest.raises(ConfigError, match="level must be an int >= 2, got 1"):
        cover_bound_at_level(pr, 1)
    with pytest.raises(ConfigError, match="epsilon_tokens_per_s must be > 0, got 0"):
        prove_optimal(pr, {"A": (0, 4), "B": (0, 2), "C": (2, 4)}, 1, epsilon_tokens_per_s=0)
    big = load_helix_problem(C / "cluster10.ini", "llama1_30b")
    with pytest.raises(ConfigError, match=r"\d+ placements to enumerate exceed max_placements=1000"):
        brute_force_optimum(big, max_placements=1000)
