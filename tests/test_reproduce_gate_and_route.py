"""Gate-and-Route in ``gpusched reproduce``: registered, planned, the LP cell computes the spec's values, the claims
read the table (cheap: one LP cell and hand-made tables)."""
from __future__ import annotations

import pandas as pd
import pytest

from experiments.reproduce.papers.gate_and_route import convergence_cell
from experiments.reproduce.registry import experiments, get
from experiments.reproduce.verdict import AGREES, DISAGREES, OUTSIDE, WITHIN, evaluate


def test_registered_with_quick_and_full_cells():
    names = {e.name for e in experiments(["gate-and-route"])}
    assert names == {"gate-and-route-convergence", "gate-and-route-serving", "gate-and-route-azure"}
    conv = get("gate-and-route-convergence")
    assert {(c["kind"], c["n"]) for c in conv.plan(False)} >= {("lp", 0), ("ctmc", 20), ("ctmc", 50), ("ctmc", 100)}


def test_lp_cell_and_claims_on_a_hand_made_table():
    lp = convergence_cell("lp", 0, 0, 0.0, 0.0)
    assert lp["R_star"] == pytest.approx(297.70317, abs=1e-5)  # spec B3, checked there against the knapsack oracle
    assert lp["R_sep_star"] == pytest.approx(298.58656, abs=1e-5)
    # gaps as the spec measured them (B6): every claim within / agrees; a table with the trend reversed disagrees
    rows = [{"kind": "lp", "n": 0, **lp}] + [{"kind": "ctmc", "n": n, "gap": g, "R_star": lp["R_star"]}
                                            for n, g in ((20, 0.041), (50, 0.031), (100, 0.028))]
    claims = get("gate-and-route-convergence").claims(False)
    verdicts = [o.verdict for o in evaluate(claims, pd.DataFrame(rows))]
    assert verdicts == [WITHIN] * 5 + [AGREES]
    rows[-1]["gap"] = 0.09
    verdicts = [o.verdict for o in evaluate(claims, pd.DataFrame(rows))]
    assert verdicts[4] == OUTSIDE and verdicts[5] == DISAGREES
