"""Gate-and-Route fluid LPs (formulations.gate_and_route.fluid / .oracle / .sli).

Where each expected value comes from (marked on every assertion):

* [hand] the hand derivations of spec ``shared/papers/gate_and_route.md`` §6 (B1, B2, the B4 row eta_1 = 0),
  re-derived in the comments below;
* [spec] the spec's tables (B3, B4), which its authors verified with HiGHS;
* [cbc] the same LP written again below in PuLP, independently of the package's matrix builder, and solved
  with CBC (a different solver);
* [oracle] the closed forms of spec §2.2 / §2.3 (formulations.gate_and_route.oracle, no LP solver);
* [golden] a golden-section search over X with the LP at fixed X (CBC), for the TPOT penalty (48).
"""
from __future__ import annotations

import math

import numpy as np
import pulp
import pytest

from gpusched.errors import ConfigError, InfeasibleError
from gpusched.solve import solve
from formulations.gate_and_route import (FluidModel, RequestClass, Sli, knapsack_optimum, mixed_gpu_count,
                                         paper_instance, separate_optimum, solve_fluid)

REL = 1e-9


# --------------------------------------------------------------------------- independent PuLP + CBC model
def cbc_fluid(model: FluidModel, charging="bundled", sli: Sli | None = None, q_d_zero=False, fixed_X=None):
    """(objective, x, y_m, y_s, q_p, q_d) of (40)/(42) with SLI rows, written from the paper's equations."""
    I, B = model.num_classes, model.max_decodes
    C, tau, g = model.chunk_tokens, model.tau_mix_s, model.gamma_tokens_per_s
    cls = model.classes
    prob = pulp.LpProblem("fluid", pulp.LpMaximize)
    x = [prob.add_variable(f"x{i}", 0) for i in range(I)]
    ym = [prob.add_variable(f"ym{i}", 0) for i in range(I)]
    ys = [prob.add_variable(f"ys{i}", 0) for i in range(I)]
    qp = [prob.add_variable(f"qp{i}", 0) for i in range(I)]
    qd = [prob.add_variable(f"qd{i}", 0) for i in range(I)]
    mu_p = [C / (c.prompt_tokens * tau) for c in cls]
    mu_m = [1 / (c.decode_tokens * tau) for c in cls]
    mu_s = [g / c.decode_tokens for c in cls]
    w = [model.price_prefill * c.prompt_tokens + model.price_decode * c.decode_tokens for c in cls]
    if charging == "bundled":
        obj = pulp.lpSum(w[i] * (mu_m[i] * ym[i] + mu_s[i] * ys[i]) for i in range(I))
    else:  # Eq. (42) as printed: class-independent coefficients
        obj = (model.price_prefill * C / tau * pulp.lpSum(x) + model.price_decode / tau * pulp.lpSum(ym)
               + model.price_decode * g * pulp.lpSum(ys))
    sli = sli or Sli()
    X = pulp.lpSum(x)
    prob += X <= 1
    prob += pulp.lpSum(ym) <= (B - 1) * X
    prob += pulp.lpSum(ys) <= B * (1 - X)
    for i, c in enumerate(cls):
        prob += c.arrival_rate - c.abandon_rate * qp[i] == mu_p[i] * x[i]
        prob += mu_p[i] * x[i] - c.abandon_rate * qd[i] == mu_m[i] * ym[i] + mu_s[i] * ys[i]
        if q_d_zero:
            prob += qd[i] == 0
    pairs = [(i, j) for i in range(I) for j in range(I) if i != j]
    if sli.prefill_fairness is not None:
        for i, j in pairs:
            prob += x[i] - x[j] <= sli.prefill_fairness
    if sli.decode_fairness is not None:
        for i, j in pairs:
            prob += ys[i] - ys[j] <= sli.decode_fairness
    if sli.tpot_cap_s is not None:
        eta = sli.tpot_cap_s
        prob += tau * (B - 1) * X + (B / g) * (1 - X) <= eta * (B - X)
    for price, vars_ in ((sli.prefill_fairness_price, x), (sli.decode_fairness_price, ys)):
        if price:
            s = prob.add_variable(f"s_{vars_[0].name}", 0)
            for i, j in pairs:
                prob += s >= vars_[i] - vars_[j]
            obj -= price * s
    if fixed_X is not None:
        prob += X == fixed_X
    prob += obj
    res = solve(prob, solver="cbc")
    assert res.status == "optimal", res.solver_status
    val = lambda vs: np.array([v.value() for v in vs])  # noqa: E731
    return res.objective, val(x), val(ym), val(ys), val(qp), val(qd)


def b1(arrival_rate=2.0):
    # B = 4, C = 100, tau = 0.5, gamma = 4 -> mu_p = 2, mu_m = 0.2, mu_s = 0.4; w = 0.1*100 + 0.2*10 = 12
    return FluidModel((RequestClass(100, 10, arrival_rate, 1),), 4, 100, 0.5, 4, 0.1, 0.2)


def b2():
    return FluidModel((RequestClass(100, 10, 1, 1), RequestClass(20, 40, 1, 1)), 4, 100, 0.5, 4, 0.1, 0.2)


# --------------------------------------------------------------------------- B1, B2: hand-checked
def test_b1_single_class_closed_form():
    sol = solve_fluid(b1())
    # [hand] r = 2x, decode capacity 0.2*3x + 0.4*4(1-x) = 1.6 - x; 2x = 1.6 - x -> x = 8/15, R = 12 * 16/15
    assert sol.revenue == pytest.approx(12.8, rel=REL)
    assert sol.x[0] == pytest.approx(8 / 15, rel=REL)
    assert sol.y_mixed[0] == pytest.approx(8 / 5, rel=REL)        # [hand] (B-1) x
    assert sol.y_solo[0] == pytest.approx(28 / 15, rel=REL)       # [hand] B (1 - x)
    assert sol.q_prefill[0] == pytest.approx(14 / 15, rel=REL)    # [hand] (2 - 16/15) / 1
    assert sol.q_decode[0] == pytest.approx(0, abs=1e-12)
    assert sol.mixed_gpus(15) == 8                                # [hand] ceil(15 * 8/15) = 8, not 9
    assert sol.status == "optimal" and sol.gap == 0.0 and sol.solve_time_s >= 0
    assert knapsack_optimum(b1()).revenue == pytest.approx(12.8, rel=REL)     # [oracle]
    assert cbc_fluid(b1())[0] == pytest.approx(12.8, rel=1e-7)                # [cbc]


def test_b1b_light_load_serves_everything():
    sol = solve_fluid(b1(arrival_rate=0.5))
    assert sol.revenue == pytest.approx(6.0, rel=REL)             # [hand] 12 * 0.5
    assert sol.x[0] == pytest.approx(0.25, rel=REL)               # [hand] 0.5 / mu_p
    assert sol.q_prefill[0] == pytest.approx(0, abs=1e-12)
    # [hand] general single-class formula of spec B1
    m = b1()
    mu_p, mu_m, mu_s, B = m.mu_prefill[0], m.mu_mixed[0], m.mu_solo[0], m.max_decodes
    x = min(1, 2.0 / mu_p, B * mu_s / (mu_p + B * mu_s - (B - 1) * mu_m))
    assert solve_fluid(m).revenue == pytest.approx(m.weights[0] * mu_p * x, rel=REL)


def test_b2_two_classes_knapsack():
    sol = solve_fluid(b2())
    # [hand] w = (12, 10), kappa = 0.05, a = (15, 41): fill A (ratio 0.8) then B with (16 - 15)/41
    assert sol.revenue == pytest.approx(12 + 10 / 41, rel=REL)
    assert sol.revenue == pytest.approx(12.243902439, rel=1e-10)
    np.testing.assert_allclose(sol.x, [0.5, 0.1 / 41], rtol=REL)
    np.testing.assert_allclose(sol.q_prefill, [0, 40 / 41], rtol=REL, atol=1e-12)
    assert sol.y_mixed.sum() == pytest.approx(1.50731707317, rel=1e-10)        # [hand] 3 X
    assert sol.y_solo.sum() == pytest.approx(1.99024390244, rel=1e-10)         # [hand] 4 (1 - X)
    plan = knapsack_optimum(b2())                                              # [oracle]
    assert plan.revenue == pytest.approx(sol.revenue, rel=REL)
    np.testing.assert_allclose(plan.throughput, [1, 1 / 41], rtol=REL)
    assert plan.budget_binds and plan.y_mixed_total == pytest.approx(sol.y_mixed.sum(), rel=REL)
    assert cbc_fluid(b2())[0] == pytest.approx(sol.revenue, rel=1e-7)          # [cbc]


def test_b2_separate_admits_everything():
    sol = solve_fluid(b2(), "separate")
    # [hand] X = 0.6, Y_m = 1.8, Y_s = 1.6: 20 * 0.6 + 0.4 * 1.8 + 0.8 * 1.6 = 14
    assert sol.revenue == pytest.approx(14.0, rel=REL)
    assert sol.mixed_fraction == pytest.approx(0.6, rel=REL)
    assert sol.q_decode.sum() > 0.1                              # prefill revenue of jobs that abandon later
    assert separate_optimum(b2()) == pytest.approx((14.0, 0.6), rel=REL)       # [oracle]
    assert cbc_fluid(b2(), "separate")[0] == pytest.approx(14.0, rel=1e-7)     # [cbc]
    assert sol.revenue_under("separate") == pytest.approx(14.0, rel=REL)


# --------------------------------------------------------------------------- B3: the paper's instance
def test_b3_paper_instance_bundled():
    m = paper_instance()
    assert m.tau_mix_s == pytest.approx(0.033272, rel=REL)                      # [hand] 0.0174 + 6.2e-5 * 256
    np.testing.assert_allclose(m.mu_prefill, [25.647191, 2.5647191], rtol=1e-7)  # [spec]
    np.testing.assert_allclose(m.mu_mixed, [0.0300553, 0.0751383], rtol=1e-6)    # [spec]
    np.testing.assert_allclose(m.mu_solo, [0.04545, 0.113625], rtol=REL)        # [spec]
    sol = solve_fluid(m)
    assert sol.revenue == pytest.approx(297.70317, abs=5e-6)                    # [spec]
    np.testing.assert_allclose(sol.x, [0.018258, 0.194953], atol=5e-7)          # [spec]
    assert sol.mixed_fraction == pytest.approx(0.2132114, abs=5e-8)             # [spec]
    np.testing.assert_allclose(sol.prefill_throughput, [0.468275, 0.5], atol=5e-7)
    np.testing.assert_allclose(sol.q_prefill, [0.317253, 0], atol=5e-7)
    np.testing.assert_allclose(sol.q_decode, [0, 0], atol=1e-12)                # Prop. 3.2: q_d free yet 0
    assert sol.y_mixed.sum() == pytest.approx(3.198172, abs=5e-7)               # [spec]
    assert sol.y_solo.sum() == pytest.approx(12.588617, abs=5e-7)               # [spec]
    assert [sol.mixed_gpus(n) for n in (5, 20, 50, 200, 500)] == [2, 5, 11, 43, 107]   # [spec]
    plan = knapsack_optimum(m)                                                  # [oracle]
    assert m.kappa == pytest.approx(0.0359195, abs=5e-8)
    assert plan.revenue == pytest.approx(sol.revenue, rel=REL)
    np.testing.assert_allclose(plan.x, sol.x, rtol=1e-9)
    assert plan.y_solo_total == pytest.approx(sol.y_solo.sum(), rel=1e-9)
    assert cbc_fluid(m)[0] == pytest.approx(sol.revenue, rel=1e-7)              # [cbc]


def test_b3_paper_instance_separate():
    m = paper_instance()
    sol = solve_fluid(m, "separate")
    assert sol.revenue == pytest.approx(298.58656, abs=5e-6)                    # [spec]
    np.testing.assert_allclose(sol.x, [0.019495, 0.194953], atol=5e-7)          # [spec] everything admitted
    assert sol.mixed_fraction == pytest.approx(0.2144484, abs=5e-8)
    assert sol.mixed_gpus(500) == 108                                           # [spec]
    assert sol.q_decode.sum() > 0
    assert separate_optimum(m)[0] == pytest.approx(sol.revenue, rel=REL)        # [oracle]
    assert cbc_fluid(m, "separate")[0] == pytest.approx(sol.revenue, rel=1e-7)  # [cbc]
    forced = solve_fluid(m, "separate", q_d_zero=True)
    assert forced.revenue == pytest.approx(297.70317, abs=5e-6)                 # [spec] the bundled point
    assert cbc_fluid(m, "separate", q_d_zero=True)[0] == pytest.approx(forced.revenue, rel=1e-7)   # [cbc]


def test_proportional_split_keeps_the_plan_and_gives_the_spec_p_solo():
    m = paper_instance()
    prop, raw = solve_fluid(m), solve_fluid(m, decode_split="solver")
    assert prop.decode_split == "proportional" and raw.decode_split == "solver"
    # same aggregates and decode flows: the split is only a relabelling (spec §7.3)
    np.testing.assert_allclose(prop.decode_throughput, raw.decode_throughput, rtol=1e-9)
    assert prop.y_mixed.sum() == pytest.approx(raw.y_mixed.sum(), rel=1e-9)
    assert prop.y_solo.sum() == pytest.approx(raw.y_solo.sum(), rel=1e-9)
    # [spec B5] g = gamma Y_s / (gamma Y_s + Y_m / tau) = 572.1526 / (572.1526 + 96.1220) = 0.856164
    np.testing.assert_allclose(prop.p_solo, [0.856164, 0.856164], atol=5e-7)
    assert prop.solo_token_share == pytest.approx(0.856164, abs=5e-7)
    assert np.all((raw.p_solo >= 0) & (raw.p_solo <= 1))


# --------------------------------------------------------------------------- B4: SLI sweeps
@pytest.mark.parametrize("eta, revenue, X", [
    (0.030, 297.703170, 0.213211), (0.025, 297.703170, 0.213211), (0.024, 278.131673, 0.186880),
    (0.023, 187.500494, 0.093886), (0.0225, 141.783988, 0.046978)])
def test_b4_tpot_cap(eta, revenue, X):
    m = paper_instance()
    sol = solve_fluid(m, sli=Sli(tpot_cap_s=eta))
    assert sol.revenue == pytest.approx(revenue, abs=5e-7)                     # [spec]
    assert sol.mixed_fraction == pytest.approx(X, abs=5e-7)
    assert sol.tpot_s <= eta + 1e-12
    assert cbc_fluid(m, sli=Sli(tpot_cap_s=eta), q_d_zero=True)[0] == pytest.approx(sol.revenue, rel=1e-7)  # [cbc]


def test_b4_unconstrained_tpot():
    sol = solve_fluid(paper_instance())
    assert sol.tpot_s == pytest.approx(0.024285, abs=5e-7)                     # [spec]
    assert paper_instance().tpot_s(0) == pytest.approx(1 / 45.45, rel=REL)     # [hand] TPOT(0) = 1/gamma
    assert paper_instance().tpot_s(1) == pytest.approx(0.033272, rel=REL)      # [hand] TPOT(1) = tau


@pytest.mark.parametrize("eta, revenue", [(1.0, 297.703170), (0.1, 231.459325), (0.05, 182.729663), (0, 134.0)])
def test_b4_prefill_fairness(eta, revenue):
    m = paper_instance()
    sol = solve_fluid(m, sli=Sli(prefill_fairness=eta))
    assert sol.revenue == pytest.approx(revenue, abs=5e-7)                     # [spec]
    assert abs(sol.x[0] - sol.x[1]) <= eta + 1e-12
    assert np.all(sol.q_decode == 0)                                           # Sec. 5's standing assumption
    assert cbc_fluid(m, sli=Sli(prefill_fairness=eta), q_d_zero=True)[0] == pytest.approx(sol.revenue, rel=1e-7)
    if eta == 0:
        # [hand] x_0 <= lambda_0 / mu_p,0 = 0.019495 caps x_1 too: r_1 = 2.5647 * 0.019495 = 0.05,
        # R = 230 * 0.5 + 380 * 0.05 = 134
        np.testing.assert_allclose(sol.x, [0.0194953125, 0.0194953125], rtol=1e-9)


@pytest.mark.parametrize("eta, revenue", [(100, 297.703170), (1.0, 268.040143), (0.5, 262.719873), (0, 257.399602)])
def test_b4_decode_fairness(eta, revenue):
    m = paper_instance()
    sol = solve_fluid(m, sli=Sli(decode_fairness=eta))
    assert sol.revenue == pytest.approx(revenue, abs=5e-7)                     # [spec]
    assert sol.decode_split == "solver"                                        # the row reads the split
    assert abs(sol.y_solo[0] - sol.y_solo[1]) <= eta + 1e-9
    assert cbc_fluid(m, sli=Sli(decode_fairness=eta), q_d_zero=True)[0] == pytest.approx(sol.revenue, rel=1e-7)
    if eta == 0:
        np.testing.assert_allclose(sol.y_solo, [4.40044, 4.40044], atol=5e-6)  # [spec]


@pytest.mark.parametrize("price", [5e3, 9.1e4, 1e5, 1e6])  # 9.1e4: optimum strictly inside (0.0195, 0.2132)
def test_tpot_penalty_matches_golden_section(price):
    """(48) by tangent cuts vs a golden-section search over X of [LP at fixed X] - price TPOT(X) [golden]."""
    m = paper_instance()
    sol = solve_fluid(m, sli=Sli(tpot_price=price))

    def value(X):
        return cbc_fluid(m, q_d_zero=True, fixed_X=X)[0] - price * m.tpot_s(X)

    lo, hi = 0.0, cbc_fluid(m)[1].sum()  # X beyond the bundled X* lowers revenue and raises TPOT
    phi = (math.sqrt(5) - 1) / 2
    a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
    fa, fb = value(a), value(b)
    while hi - lo > 1e-7:
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + phi * (hi - lo)
            fb = value(b)
        else:
            hi, b, fb = b, a, fa
            a = hi - phi * (hi - lo)
            fa = value(a)
    best = max(fa, fb, value(0.0), value(hi))
    assert sol.status == "optimal" and sol.gap <= 1e-7
    assert sol.objective == pytest.approx(best, abs=2e-3)
    # the reported gap is honest: the plan is no further below the (golden) optimum than it says
    assert sol.objective >= best - sol.gap * max(1.0, abs(sol.objective)) - 1e-9
    assert sol.objective == pytest.approx(sol.revenue - price * sol.tpot_s, rel=1e-12)


def test_fairness_penalties_are_lps():
    m = paper_instance()
    for sli in (Sli(prefill_fairness_price=500.0), Sli(decode_fairness_price=5.0)):
        sol = solve_fluid(m, sli=sli)
        assert sol.objective == pytest.approx(cbc_fluid(m, sli=sli, q_d_zero=True)[0], rel=1e-7)   # [cbc]
        assert sol.penalty > 0 and sol.objective == pytest.approx(sol.revenue - sol.penalty, rel=1e-12)


# --------------------------------------------------------------------------- errors and edges
def test_zero_abandonment_overload_is_infeasible_with_a_hint():
    m = FluidModel((RequestClass(100, 10, 5.0, 0.0),), 4, 100, 0.5, 4, 0.1, 0.2)
    with pytest.raises(InfeasibleError, match="abandon_rate 0"):
        solve_fluid(m)
    light = FluidModel((RequestClass(100, 10, 0.5, 0.0),), 4, 100, 0.5, 4, 0.1, 0.2)
    assert solve_fluid(light).revenue == pytest.approx(6.0, rel=REL)          # [hand] as B1b
    with pytest.raises(ConfigError, match="abandon_rate > 0"):
        knapsack_optimum(light)


def test_tpot_cap_below_the_floor_is_infeasible():
    with pytest.raises(InfeasibleError, match="1/gamma|min"):
        solve_fluid(paper_instance(), sli=Sli(tpot_cap_s=0.02))


def test_tpot_penalty_needs_convexity():
    m = FluidModel((RequestClass(100, 10, 1, 1),), 4, 100, 0.1, 4, 0.1, 0.2)  # tau = 0.1 < 1/gamma = 0.25
    with pytest.raises(ConfigError, match="convex"):
        solve_fluid(m, sli=Sli(tpot_price=1.0))


@pytest.mark.parametrize("bad", [
    dict(prompt_tokens=0), dict(prompt_tokens=-3), dict(decode_tokens=math.nan), dict(arrival_rate=math.inf),
    dict(abandon_rate=-0.1), dict(prompt_tokens="300"), dict(arrival_rate=True)])
def test_request_class_rejects_bad_fields(bad):
    fields = dict(prompt_tokens=300, decode_tokens=1000, arrival_rate=0.5, abandon_rate=0.1) | bad
    with pytest.raises(ConfigError, match=next(iter(bad))):
        RequestClass(**fields)


@pytest.mark.parametrize("bad", [
    dict(classes=()), dict(classes=RequestClass(1, 1, 1, 1)), dict(classes=("x",)), dict(max_decodes=0),
    dict(max_decodes=2.5), dict(chunk_tokens=0), dict(tau_mix_s=0), dict(gamma_tokens_per_s=-1),
    dict(price_prefill=-0.1), dict(price_decode=math.nan)])
def test_fluid_model_rejects_bad_fields(bad):
    fields = dict(classes=(RequestClass(1, 1, 1, 1),), max_decodes=4, chunk_tokens=100, tau_mix_s=0.5,
                  gamma_tokens_per_s=4, price_prefill=0.1, price_decode=0.2) | bad
    with pytest.raises(ConfigError):
        FluidModel(**fields)


def test_bad_arguments():
    m = b1()
    with pytest.raises(ConfigError, match="charging"):
        solve_fluid(m, "per-token")
    with pytest.raises(ConfigError, match="decode_split"):
        solve_fluid(m, decode_split="even")
    with pytest.raises(ConfigError):
        Sli(tpot_cap_s=0)
    with pytest.raises(ConfigError):
        Sli(prefill_fairness=-1)
    with pytest.raises(ConfigError):
        mixed_gpu_count(0.5, 0)
    with pytest.raises(ConfigError):
        mixed_gpu_count(1.5, 10)
    assert mixed_gpu_count(0.0, 10) == 0 and mixed_gpu_count(1.0, 10) == 10


def test_no_arrivals_no_revenue():
    m = FluidModel((RequestClass(100, 10, 0.0, 1.0),), 4, 100, 0.5, 4, 0.1, 0.2)
    sol = solve_fluid(m)
    assert sol.revenue == 0 and sol.mixed_fraction == 0 and sol.mixed_gpus(100) == 0
    np.testing.assert_array_equal(sol.p_solo, [1.0])                          # spec §2.7: 1 if no decodes
