"""AMPD's deployment planner (spec §2.5, T3/T3b/T3c): the MILP on HiGHS against a plain brute force written
here, the spec's hand values, and the literal Eq. (5)."""
import math

import pytest

from formulations.ampd import ToyPlannerCosts, enumerate_layouts, plan_deployment, plan_literal
from gpusched.errors import ConfigError, InfeasibleError

TOY = ToyPlannerCosts()

# spec T3 coefficient table (4 decimals), computed by hand from the M/M/1 and decode formulas
SPEC_TABLE = {(2, 1): (1.8723, 1.1733), (2, 2): (1.1522, 0.8533), (2, 3): (1.0213, 0.7467),
              (2, 4): (0.9664, 0.6933), (4, 1): (0.7489, 0.7040), (4, 2): (0.5991, 0.5120),
              (8, 1): (0.3942, 0.4400)}


def brute_force(num_gpus, degrees):
    """Every (prefill, decode) pair of homogeneous pools within the budget, by two plain loops, sorted by
    (Z, cost sum, GPUs, configs) -- no numpy, no solver, no code shared with the planner."""
    cands = [(n, k) for n in degrees for k in range(1, num_gpus + 1) if n * k < num_gpus]
    rows = []
    for p in cands:
        for d in cands:
            cp, cd = TOY.prefill(*p), TOY.decode(*d)
            if p[0] * p[1] + d[0] * d[1] <= num_gpus and math.isfinite(cp) and math.isfinite(cd):
                rows.append((max(cp, cd), cp + cd, p[0] * p[1] + d[0] * d[1], p, d))
    return sorted(rows)


def test_toy_coefficients_match_the_spec_table():
    for (n, k), (tp, td) in SPEC_TABLE.items():
        assert TOY.prefill(n, k) == pytest.approx(tp, abs=6e-5)
        assert TOY.decode(n, k) == pytest.approx(td, abs=6e-5)
    assert TOY.prefill(1, 1) == math.inf and TOY.decode(1, 3) == math.inf    # TP1 does not fit
    assert TOY.prefill(2, 1) == pytest.approx(math.log(20) / (3.6 - 2.0))


@pytest.mark.parametrize("num_gpus, degrees, expected", [
    (8, (1, 2, 4, 8), [((4, 1), (4, 1), math.log(20) / 4), ((4, 1), (2, 2), 0.853333)]),          # T3
    (16, (1, 2, 4), [((4, 2), (4, 2), math.log(20) / 5), ((4, 2), (2, 4), 0.693333)]),            # T3b
    (16, (1, 2, 4, 8), [((8, 1), (8, 1), 0.44), ((8, 1), (4, 2), 0.512)]),                        # T3c
])
def test_spec_optimum_and_runner_up(num_gpus, degrees, expected):
    for method in ("milp", "enumeration"):
        plan = plan_deployment(TOY.prefill, TOY.decode, num_gpus, degrees, top_k=2, method=method)
        got = [(a.prefill, a.decode, a.objective) for a in plan.alternatives]
        for (p, d, z), (gp, gd, gz) in zip(expected, got):
            assert (gp, gd) == (p, d) and gz == pytest.approx(z, abs=5e-7)
        assert plan.status == "optimal" and plan.cost_evaluations > 0
    assert (plan.prefill, plan.decode, plan.objective) == (expected[0][0], expected[0][1], plan.alternatives[0].objective)


@pytest.mark.parametrize("num_gpus, degrees", [(8, (1, 2, 4, 8)), (16, (1, 2, 4)), (16, (1, 2, 4, 8)),
                                               (32, (1, 2, 4, 8))])
def test_milp_ranking_equals_brute_force(num_gpus, degrees):
    """The MILP's first 8 layouts (three lexicographic HiGHS solves each, no-good cuts between) are the
    brute force's first 8, in order; the numpy enumeration agrees on the whole list."""
    brute = brute_force(num_gpus, degrees)
    milp = plan_deployment(TOY.prefill, TOY.decode, num_gpus, degrees, top_k=8)
    assert [(a.prefill, a.decode) for a in milp.alternatives] == [(r[3], r[4]) for r in brute[:8]]
    enum = enumerate_layouts(TOY.prefill, TOY.decode, num_gpus, degrees)
    assert [(a.prefill, a.decode) for a in enum] == [(r[3], r[4]) for r in brute]
    assert [a.objective for a in enum] == [r[0] for r in brute]


def test_t3b_tie_at_0704_is_ranked_by_the_other_phase():
    """T3b's third value 0.704 is shared by P<4,3> D<4,1> and P<4,2> D<4,1> (decode binds both); the ranking
    puts the one with the cheaper prefill (0.5617 < 0.5991) first."""
    plan = plan_deployment(TOY.prefill, TOY.decode, 16, (1, 2, 4), top_k=4)
    third, fourth = plan.alternatives[2:4]
    assert third.objective == fourth.objective == pytest.approx(0.704)
    assert (third.prefill, fourth.prefill) == ((4, 3), (4, 2)) and third.decode == fourth.decode == (4, 1)


def test_literal_eq5_leaves_gpus_idle():
    """Pitfall 7 (spec T3b): with per-degree constants (the k = 1 values), Eq. (5) as printed picks P<4,1> +
    D<4,1> at Z = 0.748933 using 8 of 16 GPUs, while the load-aware form reaches 0.599146 with all 16."""
    tau_p = {n: TOY.prefill(n, 1) for n in (1, 2, 4)}
    tau_d = {n: TOY.decode(n, 1) for n in (1, 2, 4)}
    lit = plan_literal(tau_p, tau_d, 16)
    assert lit.prefill == {4: 1} and lit.decode == {4: 1} and lit.num_gpus_used == 8
    assert lit.objective == pytest.approx(math.log(20) / 4, abs=1e-9) and lit.status == "optimal"
    aware = plan_deployment(TOY.prefill, TOY.decode, 16, (1, 2, 4), top_k=1)
    assert aware.best.num_gpus == 16 and aware.objective < lit.objective
    # at N = 8 the literal form happens to give the same pair as the load-aware one (spec T3)
    lit8 = plan_literal({n: TOY.prefill(n, 1) for n in (1, 2, 4, 8)}, {n: TOY.decode(n, 1) for n in (1, 2, 4, 8)}, 8)
    assert lit8.prefill == {4: 1} and lit8.decode == {4: 1}


def test_cost_tables_and_top_k_beyond_the_layouts():
    table_p = {(2, 1): 1.0, (4, 1): 0.5}
    table_d = {(2, 1): 0.7, (2, 2): 0.2}
    plan = plan_deployment(table_p, table_d, 6, top_k=10)
    # pairs within 6 GPUs: (2,1)+(2,1), (2,1)+(2,2), (4,1)+(2,1); ranked by hand
    assert [(a.prefill, a.decode, a.objective) for a in plan.alternatives] == [
        ((4, 1), (2, 1), 0.7), ((2, 1), (2, 2), 1.0), ((2, 1), (2, 1), 1.0)]
    assert plan.cost_evaluations == 4


def test_bad_inputs():
    with pytest.raises(InfeasibleError, match="decode"):
        plan_deployment(TOY.prefill, lambda n, k: math.inf, 8)
    with pytest.raises(ConfigError, match="prefill cost of \\(tp=1, replicas=1\\) is nan"):
        plan_deployment(lambda n, k: math.nan, TOY.decode, 8)
    with pytest.raises(ConfigError, match=">= 0"):
        plan_deployment(lambda n, k: -1.0, TOY.decode, 8)
    with pytest.raises(ConfigError, match="num_gpus"):
        plan_deployment(TOY.prefill, TOY.decode, 1)
    with pytest.raises(ConfigError, match="tp_degrees"):
        plan_deployment(TOY.prefill, TOY.decode, 8, tp_degrees=(2, 2))
    with pytest.raises(ConfigError, match="method"):
        plan_deployment(TOY.prefill, TOY.decode, 8, method="scip")
    with pytest.raises(ConfigError, match="key"):
        plan_deployment({(2,): 1.0}, TOY.decode, 8)
    with pytest.raises(InfeasibleError, match="fit together"):
        plan_deployment({(4, 1): 1.0}, {(4, 1): 1.0}, 6)
