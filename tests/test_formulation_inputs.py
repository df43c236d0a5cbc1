"""Formulation inputs (issue 15): MC-SF instances and the hindsight warm start, Helix's file readers, and
what Helix's default MILP call returns.

Regression values come from independent computations: the brute-force enumerations of
``tests/test_mcsf.py`` (every start vector) and :mod:`formulations.helix.bruteforce` (every placement,
evaluated by OR-Tools max flow, which shares no code with the MILP).
"""
import math

import numpy as np
import pytest

from formulations.helix import (DATA_DIR, HelixProblem, PlacementModel, brute_force_optimum, heuristic_placement,
                                load_helix_placement, load_helix_problem, load_throughput_table, max_flow,
                                read_cluster_ini, solve_placement)
from formulations.helix import milp as helix_milp
from formulations.helix._highs import HighsOutcome
from formulations.mcsf import mcsf
from formulations.mcsf.hindsight import hindsight_optimal, mcsf_warm_start
from formulations.mcsf.model import (MAX_HORIZON_ROUNDS, MAX_MEMORY_TOKENS, InfeasibleScheduleError, Instance,
                                     Schedule)
from gpusched.errors import ConfigError, SolverTimeoutError, UnknownNameError
from test_mcsf import brute_force_optimum as mcsf_brute_force

# ---- MC-SF instances ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,match", [
    ((0, 1, 1, 10), r"arrival must be a sequence of integers.*got int 0 \(for one request pass \(0,\)\)"),
    (((0,), 1, (1,), 10), r"prompt must be a sequence"),
    (("ab", (1, 1), (1, 1), 10), r"arrival must be a sequence.*got str"),
    (((0,), (1,), (1,), (10,)), r"memory = \(10,\) is not an integer"),
    (((0,), (1,), (1.5,), 10), r"output\[0\] = 1\.5 is not an integer"),
    (((0,), (1,), (True,), 10), r"output\[0\] = True is not an integer"),
    (((float("nan"),), (1,), (1,), 10), r"arrival\[0\] = nan is not an integer"),
])
def test_instance_of_wrong_types_is_a_config_error(args, match):
    with pytest.raises(ConfigError, match=match):
        Instance(*args)


def test_empty_instance_is_valid_and_solved_at_once():
    empty = Instance((), (), (), 10)
    assert empty.n == 0 and mcsf(empty).start == ()
    for solver in ("highs", "cp-sat", "cp-sat+highs"):
        r = hindsight_optimal(empty, time_limit_s=5, solver=solver)
        assert r.objective == 0 and r.is_optimal and r.schedule.start == ()


@pytest.mark.parametrize("args,match", [
    (((2**70,), (1,), (1,), 10), r"arrival\[0\] = 1180591620717411303424 is above 10,000,000"),
    (((0,), (1,), (1,), 2**64), r"memory = 18446744073709551616 is above 4,294,967,296"),
    (((0,), (2**40,), (1,), 2**32), r"prompt\[0\] = 1099511627776 is above 4,294,967,296"),
    (((0,), (1,), (2**40,), 2**32), r"output\[0\] = 1099511627776 is above 10,000,000.*MAX_HORIZON_ROUNDS"),
    (((MAX_HORIZON_ROUNDS, 0), (1, 1), (1, 1), 10), r"T = max\(arrival\) \+ sum\(output\) = 10,000,002 rounds"),
])
def test_huge_values_are_refused_before_any_array_is_built(args, match):
    with pytest.raises(ConfigError, match=match):
        Instance(*args)


def test_the_limits_themselves_are_accepted():
    assert MAX_MEMORY_TOKENS == 2**32 and MAX_HORIZON_ROUNDS == 10**7
    inst = Instance((0,), (1,), (MAX_HORIZON_ROUNDS,), MAX_MEMORY_TOKENS)
    assert inst.serial_horizon() == MAX_HORIZON_ROUNDS


UNDER = Instance((0, 0, 0), (2, 2, 2), (5, 5, 5), 14, predicted_output=(1, 1, 1))


def test_hindsight_with_under_predictions_uses_a_feasible_warm_start():
    # MC-SF with the under-predictions starts all three at 0: 3 x (2 + 5) = 21 tokens > M = 14 at round 5
    assert not mcsf(UNDER).is_feasible
    warm = mcsf_warm_start(UNDER)
    assert warm.is_feasible  # exact predictions: spec P1
    best, _ = mcsf_brute_force([(0, 2, 5)] * 3, 14)
    for solver in ("highs", "cp-sat", "cp-sat+highs"):
        r = hindsight_optimal(UNDER, time_limit_s=10, solver=solver)
        assert r.is_optimal and r.objective == best
        assert r.schedule.is_feasible


def test_hindsight_under_predictions_on_random_tiny_instances_match_brute_force():
    rng = np.random.default_rng(15)
    checked = overflowing = 0
    while checked < 6:
        n, M = int(rng.integers(2, 5)), int(rng.integers(6, 10))
        reqs = [(int(rng.integers(0, 3)), int(rng.integers(0, 3)), int(rng.integers(1, 4))) for _ in range(n)]
        if any(s + o > M for _, s, o in reqs):
            continue
        pred = [max(1, o - int(rng.integers(0, 3))) for _, _, o in reqs]
        inst = Instance.from_requests(reqs, M, predicted_output=pred)
        overflowing += not mcsf(inst).is_feasible
        assert hindsight_optimal(inst, time_limit_s=10).objective == mcsf_brute_force(reqs, M)[0]
        checked += 1
    assert overflowing >= 1  # the loop did exercise an infeasible MC-SF schedule


def test_an_infeasible_warm_start_given_by_hand_is_named():
    bad = Schedule(UNDER, (0, 0, 0))
    with pytest.raises(InfeasibleScheduleError, match=r"warm_start: infeasible schedule: round 3: 15 tokens held > M = 14"):
        hindsight_optimal(UNDER, time_limit_s=5, warm_start=bad)
    with pytest.raises(ConfigError, match="warm_start must be"):
        hindsight_optimal(UNDER, time_limit_s=5, warm_start=(0, 0, 5))


# ---- Helix files ------------------------------------------------------------------------------------------------

CLUSTER = """[ComputeNode-0]
type=T4

[ComputeNode-1]
type=L4

[Link-source-0]
bandwidth=1000 * mbps
latency=1 * MilliSec

[Link-0-1]
bandwidth=1000 * mbps
latency=1 * MilliSec

[Link-1-sink]
bandwidth=1000 * mbps
latency=1 * MilliSec
"""


def _write(tmp_path, text, name="c.ini"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_cluster_ini_reads():
    types, links = read_cluster_ini(DATA_DIR / "clusters" / "cluster10.ini")
    assert len(types) == 10 and all(lat == pytest.approx(1e-3) for *_, lat in links)


@pytest.mark.parametrize("text,match", [
    ("type=T4\n" + CLUSTER, r"line 1: not a valid cluster file \(MissingSectionHeaderError"),
    (CLUSTER + "\n[ComputeNode-0]\ntype=A100\n", r"line 19: not a valid cluster file \(DuplicateSectionError"),
    (CLUSTER.replace("type=T4", "type=T4\ntype=L4"), r"line 3: not a valid cluster file \(DuplicateOptionError"),
    (CLUSTER.replace("type=L4", "type L4 please"), r"line 5: not a valid cluster file \(ParsingError"),
    (CLUSTER.replace("latency=1 * MilliSec", "latency=-1 * MilliSec", 1),
     r"line 9: \[Link-source-0\]: latency = '-1 \* MilliSec' must be a finite number >= 0"),
    (CLUSTER.replace("bandwidth=1000 * mbps", "bandwidth=-5 * mbps", 1),
     r"line 8: \[Link-source-0\]: bandwidth = '-5 \* mbps' must be a finite number >= 0"),
    (CLUSTER.replace("bandwidth=1000 * mbps", "bandwidth=1e999 * mbps", 1), r"line 8: .*finite number >= 0"),
    (CLUSTER.replace("bandwidth=1000 * mbps", "bandwidth=1e * mbps", 1), r"line 8: .*is not a quantity"),
    (CLUSTER.replace("bandwidth=1000 * mbps", "bandwidth=50%", 1), r"line 8: .*'50%' is not a quantity"),
    (CLUSTER.replace("bandwidth=1000 * mbps", "bandwidth=5 * furlongs", 1), r"line 8: .*unknown unit 'furlongs'"),
    (CLUSTER + "\n[Link-1-0]\nbandwidth=1 * mbps\n", r"line 19: \[Link-1-0\]: the link 1-0 is already given"),
    (CLUSTER + "\n[Link-1-1]\nbandwidth=1 * mbps\n", r"line 19: \[Link-1-1\]: a link from 1 to itself"),
    (CLUSTER + "\n[Link-0-sink]\nlatency=0\n", r"line 19: \[Link-0-sink\] has no 'bandwidth'"),
    (CLUSTER.replace("type=T4", "type="), r"line 1: \[ComputeNode-0\] has no 'type'"),
    (CLUSTER + "\n[ComputeNode-01]\ntype=A100\n", r"line 19: \[ComputeNode-01\] defines node 1 again"),
    ("", r"no \[ComputeNode-i\] sections"),
    (CLUSTER.encode().replace(b"type=L4", b"type=L\xff4"), r"line 5: byte 0xff .* not valid UTF-8"),
])
def test_malformed_cluster_ini_is_a_located_config_error(tmp_path, text, match):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"c\.ini: " + match):
        read_cluster_ini(p)


def test_unknown_link_endpoint_is_located(tmp_path):
    with pytest.raises(UnknownNameError, match=r"c\.ini: line 19: \[Link-0-7\]: link to unknown node 7"):
        read_cluster_ini(_write(tmp_path, CLUSTER + "\n[Link-0-7]\nbandwidth=1 * mbps\n"))


THROUGHPUT_HEAD = "model,cluster_mix,gpu_type,k_layers,T_k_tokens_per_s\n"
THROUGHPUT = THROUGHPUT_HEAD + "m,2node,T4,1,100\nm,2node,T4,2,45\nm,2node,L4,1,200\n"


@pytest.mark.parametrize("text,match", [
    (THROUGHPUT.replace(",45\n", ",-45\n"), r"line 3: field 'T_k_tokens_per_s' = '-45' is negative"),
    (THROUGHPUT.replace(",45\n", ",fast\n"), r"line 3: field 'T_k_tokens_per_s' = 'fast' is not a number"),
    (THROUGHPUT.replace(",45\n", ",inf\n"), r"line 3: field 'T_k_tokens_per_s' = 'inf' is not a finite number"),
    (THROUGHPUT.replace("T4,2,", "T4,0,"), r"line 3: field 'k_layers' = '0' must be an integer >= 1"),
    (THROUGHPUT + "m,2node,T4,2,40\n", r"line 5: field 'k_layers' = '2' repeats an earlier row"),
    (THROUGHPUT.replace("T4,2,", "T4,3,"), r"line 2: the T\(k\) table of 'T4' .* has layer counts \[1, 3\]"),
    (THROUGHPUT + "m,2node,T4,4,1,extra\n", r"line 5: malformed row: 6 fields but the header \(line 1\) has 5"),
    (THROUGHPUT_HEAD, r"has a header \(line 1\) but no data rows"),
    (THROUGHPUT.replace("T_k_tokens_per_s", "T"), r"line 1: missing column 'T_k_tokens_per_s'"),
    (THROUGHPUT.encode() + b"m,2node,L4,2,\xfe\n", r"line 5: byte 0xfe"),
    ("", r"the file is empty"),
])
def test_malformed_throughput_csv_is_a_located_config_error(tmp_path, text, match):
    p = _write(tmp_path, text, "t.csv")
    with pytest.raises(ConfigError, match=r"t\.csv: " + match):
        load_throughput_table(p, "m", {0: "T4", 1: "L4"}, cluster_mix="2node")


def test_throughput_csv_reads(tmp_path):
    tables = load_throughput_table(_write(tmp_path, THROUGHPUT, "t.csv"), "m", {0: "T4", 1: "L4"},
                                   cluster_mix="2node")
    assert tables == {"T4": (100.0, 45.0), "L4": (200.0,)}


PLACEMENT = "[Settings]\noffset=2\n\n[Solution]\ncompute_node_2=[0, 1]\ncompute_node_3=[2, 3]\n"


@pytest.mark.parametrize("text,match,error", [
    (PLACEMENT.replace("[2, 3]", "abc"), r"line 6: \[Solution\]: compute_node_3 = 'abc' is not a non-empty list",
     ConfigError),
    (PLACEMENT.replace("[2, 3]", "5"), r"line 6: .*'5' is not a non-empty list", ConfigError),
    (PLACEMENT.replace("[2, 3]", "[2.5, 3]"), r"line 6: .*is not a non-empty list of layer ids", ConfigError),
    (PLACEMENT.replace("[2, 3]", "[2, 4]"), r"line 6: .*node 1 holds non-contiguous layers \[2, 4\]", ConfigError),
    (PLACEMENT.replace("offset=2", "offset=two"), r"line 2: \[Settings\]: offset = 'two' is not an integer",
     ConfigError),
    (PLACEMENT + "compute_node_02=[0]\n", r"line 7: .*node 0 is placed twice", ConfigError),
    (PLACEMENT + "gpu_3=[0]\n", r"line 7: .*unexpected key 'gpu_3'", ConfigError),
    (PLACEMENT + "compute_node_9=[0]\n", r"line 7: \[Solution\]: node 7 \(offset 2\) is not in the problem",
     UnknownNameError),
    (PLACEMENT.replace("[2, 3]", "[1, 2, 3]"), r"line 6: .*node 1 holds layers \[1, 4\) but .* at most K = 2",
     ConfigError),
    (PLACEMENT.replace("[2, 3]", "[2]"), r"p\.ini: placement leaves layer\(s\) \[3\] uncovered", ConfigError),
    ("[Settings]\noffset=2\n", r"no \[Solution\] section", ConfigError),
])
def test_malformed_placement_ini_is_a_located_error(tmp_path, text, match, error):
    problem = HelixProblem(4, {0: [100.0, 50.0], 1: [100.0, 50.0]}, {(0, 1): math.inf})
    p = _write(tmp_path, text, "p.ini")
    with pytest.raises(error, match=match):
        load_helix_placement(p, problem)


def test_published_placements_still_load():
    pr = load_helix_problem(DATA_DIR / "clusters" / "cluster10.ini", "llama1_30b")
    pl = load_helix_placement(DATA_DIR / "placements" / "cluster10_30b_ilp.ini", pr)
    assert max_flow(pr, pl).value_tokens_per_s == pytest.approx(286.587, abs=1e-3)


# ---- Helix's default MILP call ------------------------------------------------------------------------------

# 4 layers; A holds up to 4, B and C up to 2; finite links so they bind. Small enough to enumerate.
SMALL = HelixProblem(4, {"A": [400 / k for k in range(1, 5)], "B": [200.0, 100.0], "C": [180.0, 90.0]},
                     {("A", "B"): 60.0, ("A", "C"): 150.0, ("B", "C"): 40.0})


def test_default_call_returns_the_brute_force_optimum_as_a_valid_placement():
    best, _ = brute_force_optimum(SMALL)  # every placement, evaluated by OR-Tools max flow
    r = solve_placement(SMALL, time_limit_s=10)
    assert r.objective == pytest.approx(best, abs=1e-4)
    assert max_flow(SMALL, r.placement).value_tokens_per_s == pytest.approx(r.objective)
    assert r.extra["warm_start_objective"] == pytest.approx(
        max_flow(SMALL, heuristic_placement(SMALL, "best")).value_tokens_per_s)
    bare = solve_placement(SMALL, time_limit_s=10, warm_start=None)
    assert bare.objective == pytest.approx(best, abs=1e-4) and bare.extra["warm_start_objective"] is None


def _stopped_at_time_limit(monkeypatch, placement):
    """Make HiGHS stop on its time limit with ``placement`` as its incumbent (the 24-node case, in small)."""
    def fake_solve(h, **kw):
        return HighsOutcome("time_limit", np.zeros(h.getNumCol()), 0.0, 1e9, math.inf, 0.0, "Time limit reached")
    monkeypatch.setattr(helix_milp, "_solve", fake_solve)
    monkeypatch.setattr(PlacementModel, "placement_from", lambda self, x: dict(placement))


def test_an_incumbent_that_leaves_layers_uncovered_is_never_returned(monkeypatch):
    uncovered = {"A": (0, 1), "B": (0, 1), "C": (0, 1)}  # the bare MILP's flow-0 incumbent has this shape
    _stopped_at_time_limit(monkeypatch, uncovered)
    r = solve_placement(SMALL, time_limit_s=10)
    warm = heuristic_placement(SMALL, "best")
    assert r.method == "warm-start" and r.placement == warm and r.status == "time_limit"
    assert r.objective == pytest.approx(max_flow(SMALL, warm).value_tokens_per_s) and r.objective > 0
    assert "uncovered" in r.extra["kept_warm_start"] and r.extra["milp_objective"] is None
    with pytest.raises(SolverTimeoutError, match="leaves layers uncovered.*warm_start='best'"):
        solve_placement(SMALL, time_limit_s=10, warm_start=None)


def test_an_incumbent_worse_than_the_warm_start_is_replaced_by_it(monkeypatch):
    worse = {"A": (0, 4), "B": (0, 1), "C": (1, 2)}  # only A carries tokens: 100 tokens/s
    assert max_flow(SMALL, worse).value_tokens_per_s == pytest.approx(100.0)
    _stopped_at_time_limit(monkeypatch, worse)
    r = solve_placement(SMALL, time_limit_s=10)
    assert r.method == "warm-start" and "lower max flow (100 tokens/s)" in r.extra["kept_warm_start"]
    assert r.objective > 100.0
    keep = solve_placement(SMALL, time_limit_s=10, warm_start=worse)  # equal: the MILP's own is kept
    assert keep.method == "milp" and keep.objective == pytest.approx(100.0)


@pytest.mark.slow
def test_default_call_on_the_24_node_cluster_is_valid_and_at_least_the_chain():
    pr = load_helix_problem(DATA_DIR / "clusters" / "single24.ini", "llama2_70b")
    r = solve_placement(pr, time_limit_s=60)
    assert max_flow(pr, r.placement).value_tokens_per_s == pytest.approx(r.objective)
    assert r.objective >= 2045.64  # the chain heuristic's max flow (test_helix.test_heuristic_baselines)



def test_helix_problem_refuses_a_negative_latency_or_throughput():
    with pytest.raises(ConfigError, match=r"link_latency_s\[\(0, 1\)\] = -0\.001 must be a finite number"):
        HelixProblem(2, {0: [1.0], 1: [1.0]}, {(0, 1): 1.0}, link_latency_s={(0, 1): -0.001})
    with pytest.raises(ConfigError, match=r"node 0: T\(1\) = -1\.0 tokens/s must be finite and >= 0"):
        HelixProblem(2, {0: [-1.0], 1: [1.0]}, {(0, 1): 1.0})
