"""Nested WAIT in ``gpusched reproduce``: registered with quick and full cells, the toy cells give the closed forms
(hand calculations of the spec's T1/T2), a simulator cell is deterministic, and the claims read the table."""
import math

import pandas as pd
import pytest

from experiments.reproduce import experiments
from experiments.reproduce.papers import nested_wait as nw
from experiments.reproduce.verdict import evaluate


def test_both_experiments_are_registered_under_the_paper_with_valid_cells():
    exps = {e.name: e for e in experiments(["nested-wait"])}
    assert set(exps) == {"nested-wait-toy", "nested-wait-stable-rate"}
    for e in exps.values():
        quick, full = e.plan(True), e.plan(False)  # plan() checks JSON scalars and duplicates
        assert 0 < len(quick) < len(full)
    rates = {(c["workload"], c["policy"]) for c in exps["nested-wait-stable-rate"].plan(False)}
    assert set(nw.PAPER_STABLE) <= rates and ("p512d1000", "sarathi") in rates
    # the quick budget: cells x the module's own estimate stays well under 1.5 min on 2 cores
    quick_s = sum(len(e.plan(True)) * e.seconds_per_cell[0] for e in exps.values())
    assert quick_s / 2 < 90


def test_toy_cells_give_the_hand_computed_fluid_values():
    # T1: l = l' = 1, lambda = 4, d0 = 1/2, d1 = 1/24: w = 3, DeltaT* = 1/2 / (1 - 4 * 3 / 24) = 1, n* = 4, M* = 12
    t1 = nw.toy_cell("T1", "fluid", 0, 0)
    assert (t1["iteration_s"], t1["per_stage"], t1["memory_tokens"]) == pytest.approx((1.0, 4.0, 12.0))
    # T2: w = (2 * 1.5, 3 * 2) = (3, 6), sum lambda w = 9, DeltaT* = (1 - 9 d1) / (1 - 9 d1) = 1, M* = 9
    t2 = nw.toy_cell("T2", "fluid", 0, 0)
    assert (t2["iteration_s"], t2["memory_tokens"]) == pytest.approx((1.0, 9.0))
    # WAIT n = 4 on the running example: the fluid's 4 completions per iteration, no eviction
    w = nw.toy_cell("running-example", "wait", 0, 60)
    assert w["evictions"] == 0 and w["completions_per_iteration"] == pytest.approx(4.0)


def test_a_simulator_cell_is_deterministic():
    a = nw.rate_cell("p512d20", "wait", 16.0, 0, 80)
    b = nw.rate_cell("p512d20", "wait", 16.0, 0, 80)
    assert a == b and a["requests"] == 80 and a["finished"] == 80 and a["restarts"] == 0.0


def test_claims_read_the_stable_rate_from_a_table():
    """A hand-made table: wait stable up to 23 (unstable at 24), vLLM up to 19; the claims say 23 and 19, the
    difference agrees in direction."""
    rows = []
    for policy, last in (("wait", 23), ("vllm", 19)):
        for rate in (19, 23, 24):
            ok = rate <= last
            rows.append({"workload": "p512d20", "policy": policy, "rate_per_s": float(rate), "seed": 0,
                         "growth": 1.0 if ok else 3.0, "service_ratio": 1.0 if ok else 0.8, "restarts": 0.0})
    table = pd.DataFrame(rows)
    out = {o.claim.label: o for o in evaluate(nw.rate_claims(False), table)}
    assert out["p512d20: largest stable rate of wait (req/s)"].ours == 23.0
    assert out["p512d20: largest stable rate of vllm (req/s)"].ours == 19.0
    assert out["p512d20: WAIT's stable rate minus vLLM's (req/s)"].ours == 4.0
    assert math.isnan(out["mix: largest stable rate of nested-wait (req/s)"].ours)  # no mix rows: not computed
