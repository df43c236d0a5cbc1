"""Verdicts of the reproduction report, each case worked out by hand."""
import math

import pandas as pd
import pytest

from experiments.reproduce.verdict import (AGREES, DISAGREES, NOT_COMPUTED, OUTSIDE, WITHIN, Claim, evaluate,
                                           verdict)
from gpusched.errors import ConfigError


def _value(paper, **kw):
    return Claim("x", paper, lambda t: 0.0, **kw)


@pytest.mark.parametrize("paper, kw, ours, expected", [
    # |ours - paper| <= abs_tol: 2.5 - 2.0 = 0.5 exactly (binary-exact numbers), so the boundary is within
    (2.0, {"abs_tol": 0.5}, 2.5, WITHIN),
    (2.0, {"abs_tol": 0.5}, 1.5, WITHIN),
    (2.0, {"abs_tol": 0.5}, 2.5000001, OUTSIDE),
    (2.0, {"abs_tol": 0.5}, 1.25, OUTSIDE),
    # rel_tol 10 % of 5 = 0.5: 4.5 within, 4.4 outside
    (5.0, {"rel_tol": 0.1}, 4.5, WITHIN),
    (5.0, {"rel_tol": 0.1}, 4.4, OUTSIDE),
    # both: 1 + 10 % of |-10| = 2 -> [-12, -8]
    (-10.0, {"abs_tol": 1.0, "rel_tol": 0.1}, -12.0, WITHIN),
    (-10.0, {"abs_tol": 1.0, "rel_tol": 0.1}, -7.5, OUTSIDE),
    # no tolerance: only the exact number is within
    (1.0, {}, 1.0, WITHIN),
    (1.0, {}, 1.0 + 1e-12, OUTSIDE),
])
def test_value_verdicts(paper, kw, ours, expected):
    assert verdict(_value(paper, **kw), ours) == expected


@pytest.mark.parametrize("paper, expect, ours, expected", [
    (2.5, None, 1.2, AGREES),       # paper above the pivot 1, ours above too
    (2.5, None, 0.8, DISAGREES),    # ours below
    (2.5, None, 1.0, DISAGREES),    # on the pivot: no effect is not the paper's effect
    (0.7, None, 0.9, AGREES),       # paper below the pivot, ours below
    (0.7, None, 1.1, DISAGREES),
    (None, "above", math.inf, AGREES),
    (None, "below", 1.5, DISAGREES),
])
def test_direction_verdicts(paper, expect, ours, expected):
    claim = Claim("x", paper, lambda t: 0.0, kind="direction", pivot=1.0, expect=expect)
    assert verdict(claim, ours) == expected
    assert claim.tolerance_text == "side of 1"


def test_not_computed_and_text():
    assert verdict(_value(1.0, abs_tol=1.0), math.nan) == NOT_COMPUTED
    assert verdict(_value(1.0, abs_tol=1.0), None) == NOT_COMPUTED
    assert _value(1.005, abs_tol=0.01).tolerance_text == "±0.01"
    assert _value(5.0, rel_tol=0.15).tolerance_text == "±15 %"
    assert Claim("x", None, lambda t: 0, kind="direction", pivot=1.0, expect="above").paper_text == "> 1"


@pytest.mark.parametrize("kw", [
    {"paper": None},                                        # a value claim needs the paper's number
    {"paper": math.nan},
    {"paper": 1.0, "abs_tol": -0.1},
    {"paper": 1.0, "kind": "ratio"},
    {"paper": 1.0, "pivot": 1.0},                           # pivots belong to direction claims
    {"paper": 2.0, "kind": "direction"},                    # no pivot
    {"paper": 1.0, "kind": "direction", "pivot": 1.0},      # the paper's number is the pivot: no direction
    {"paper": None, "kind": "direction", "pivot": 0.0},     # no number and no side
])
def test_bad_claims_refused(kw):
    with pytest.raises(ConfigError):
        Claim("bad", ours=lambda t: 0.0, **kw)


def test_evaluate_on_a_table_and_a_missing_cell():
    table = pd.DataFrame({"policy": ["a", "b"], "latency_s": [3.0, 4.0]})
    claims = [
        Claim("a/b", 0.75, lambda t: t.set_index("policy").loc["a", "latency_s"] / t.set_index("policy").loc["b", "latency_s"],
              abs_tol=0.0),
        Claim("c/b", 0.5, lambda t: t.set_index("policy").loc["c", "latency_s"], abs_tol=0.1),
    ]
    within, missing = evaluate(claims, table)
    assert (within.ours, within.verdict) == (0.75, WITHIN)
    assert missing.verdict == NOT_COMPUTED and "KeyError" in missing.error
    assert all(o.verdict == NOT_COMPUTED for o in evaluate(claims, table.iloc[:0]))
