"""Nested WAIT's fluid model (spec shared/papers/nested_wait.md §2): T1, T2, T3, T9, T10, the stability region and our
overload LP. Every expected value comes from a closed form written here, or from a second solver."""
import math

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.stats import poisson

from formulations.nested_wait.fluid import (FluidInstabilityError, PromptType, fluid_equilibrium, in_stability_region,
                                            max_stable_scale, overload_benchmark, stability_load_limit, stage_count,
                                            workload_load)
from gpusched.errors import ConfigError
from gpusched.llm import get_model


def test_t1_running_example_fluid():
    """T1: l = l' = 1, lambda = 4, d0 + 12 d1 = 1 (d0 = 1/2, d1 = 1/24). By hand: w = (1+1)(1 + 1/2) = 3,
    L = 12, DeltaT* = d0/(1 - d1 L) = 0.5/0.5 = 1, n* = 4, M* = n* w = 12, Throughput* = lambda l' = 4."""
    eq = fluid_equilibrium([PromptType(1, 1, 4.0)], 0.5, 1 / 24)
    assert PromptType(1, 1, 4.0).kv_token_iterations == 3
    assert eq.iteration_s == pytest.approx(1.0)
    assert eq.per_stage == pytest.approx((4.0,))
    assert eq.memory_tokens == pytest.approx(12.0)
    assert eq.throughput_tokens_per_s == pytest.approx(4.0)
    assert eq.in_flight == pytest.approx(8.0)  # 4 per stage x 2 stages
    assert eq.fits(12) and not eq.fits(11.9)


@pytest.mark.parametrize("d1", [0.001, 0.05, 0.1, 1 / 9 - 1e-6])
def test_t2_fcfs_instance_fluid(d1):
    """T2: types (1,1,1), (1,2,1), d0 = 1 - 9 d1. By hand: w = (3, 6), L = 9, DeltaT* = (1 - 9 d1)/(1 - 9 d1) = 1,
    n* = (1, 1), M* = 9, for every d1 < 1/9."""
    eq = fluid_equilibrium([PromptType(1, 1, 1.0), PromptType(1, 2, 1.0)], 1 - 9 * d1, d1)
    assert eq.iteration_s == pytest.approx(1.0)
    assert eq.per_stage == pytest.approx((1.0, 1.0))
    assert eq.memory_tokens == pytest.approx(9.0)
    assert eq.throughput_tokens_per_s == pytest.approx(3.0)


def test_t2_overflow_probability():
    """T2: the safe arrival pairs per block are (0,0), (1,0), (0,1), (1,1), (2,0) with independent Poisson(1) counts:
    P(overflow) = 1 - 9/(2 e^2) (closed form) = 0.3910; the sum over the set with scipy's Poisson pmf agrees."""
    safe = [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0)]
    p_safe = sum(poisson.pmf(a, 1) * poisson.pmf(b, 1) for a, b in safe)
    assert 1 - p_safe == pytest.approx(1 - 9 / (2 * math.e ** 2), rel=1e-12)
    assert round(1 - p_safe, 4) == 0.3910


def test_t3_lmsys_memory_table_and_crossing():
    """T3: the paper's LMSYS table is M*(lambda) = a lambda / (1 - b lambda) with a = d0 E[w] = 298.836 and
    b = d1 E[w] = 0.011307. One type with w = W and d0 = a/W, d1 = b/W gives the same M*; the paper's entries
    (rounded a, b: at lambda = 80 the denominator 1 - 80 b = 0.095 amplifies their last digit) within 0.1 %,
    and the crossing with C = 1.37e5 is C/(a + b C) = 74.14."""
    a, b = 298.836, 0.011307
    t = PromptType(58, 146, 1.0)  # any type: only w matters
    W = t.kv_token_iterations
    for lam, paper in ((50, 34_377), (60, 55_758), (70, 100_327), (80, 250_509)):
        eq = fluid_equilibrium([t.scaled(lam)], a / W, b / W)
        assert eq.memory_tokens == pytest.approx(a * lam / (1 - b * lam), rel=1e-12)
        assert eq.memory_tokens == pytest.approx(paper, rel=1e-3)
    crossing = max_stable_scale([t], a / W, b / W, 1.37e5)
    assert crossing == pytest.approx(1.37e5 / (a + b * 1.37e5), rel=1e-12)
    assert round(crossing, 2) == 74.14
    assert in_stability_region([t.scaled(74.1)], a / W, b / W, 1.37e5)
    assert not in_stability_region([t.scaled(74.2)], a / W, b / W, 1.37e5)
    with pytest.raises(FluidInstabilityError, match="outside the stability region"):
        fluid_equilibrium([t.scaled(80)], a / W, b / W, capacity_tokens=1.37e5)


def test_stability_region_is_the_half_space():
    """M*(lambda) <= C  <=>  L <= C / (d0 + d1 C) (spec §2 [R]): at the boundary scale M* = C exactly."""
    types = [PromptType(512, 20, 7.0), PromptType(512, 50, 3.0)]
    d0, d1, C = 0.008, 3e-6, 137_000.0
    a = max_stable_scale(types, d0, d1, C)
    eq = fluid_equilibrium([t.scaled(a) for t in types], d0, d1)
    assert eq.memory_tokens == pytest.approx(C, rel=1e-9)
    assert workload_load([t.scaled(a) for t in types]) == pytest.approx(stability_load_limit(d0, d1, C))


def test_instability_condition_raises():
    """d1 sum lambda w >= 1: no equilibrium (the paper's instability proposition)."""
    t = PromptType(512, 20, 1.0)
    with pytest.raises(FluidInstabilityError, match=">= 1"):
        fluid_equilibrium([t.scaled(1.01 / (1e-5 * t.kv_token_iterations))], 0.01, 1e-5)
    fluid_equilibrium([t.scaled(0.99 / (1e-5 * t.kv_token_iterations))], 0.01, 1e-5)  # just inside: fine


def test_overload_lp_matches_linprog_and_the_knapsack():
    """Our overload LP on HiGHS against scipy's linprog and the fractional knapsack by l'/w (closed form)."""
    types = [PromptType(512, 20, 30.0), PromptType(512, 200, 5.0), PromptType(100, 500, 2.0)]
    d0, d1, C = 0.008, 3e-6, 137_000.0
    res = overload_benchmark(types, d0, d1, C)
    w = np.array([t.kv_token_iterations for t in types])
    lp = linprog(-np.array([t.decode_tokens for t in types]), A_ub=[w], b_ub=[C / (d0 + d1 * C)],
                 bounds=[(0, t.rate_per_s) for t in types], method="highs-ipm")
    assert res.throughput_tokens_per_s == pytest.approx(-lp.fun, rel=1e-7)
    budget, knap = C / (d0 + d1 * C), 0.0
    for j in np.argsort([-t.decode_tokens / wj for t, wj in zip(types, w)]):
        r = min(types[j].rate_per_s, budget / w[j])
        knap += r * types[j].decode_tokens
        budget -= r * w[j]
    assert res.throughput_tokens_per_s == pytest.approx(knap, rel=1e-7)
    assert res.solve.status == "optimal"
    assert float(np.dot(res.admitted_rates_per_s, w)) == pytest.approx(res.load_limit)  # overloaded: the row binds


def test_overload_lp_inside_the_region_admits_everything():
    """Inside the stability region the LP's optimum is r = lambda and the paper's Throughput* (10)."""
    types = [PromptType(512, 20, 5.0), PromptType(512, 50, 2.0)]
    res = overload_benchmark(types, 0.008, 3e-6, 137_000)
    assert res.admitted_fraction == pytest.approx((1.0, 1.0))
    assert res.throughput_tokens_per_s == pytest.approx(fluid_equilibrium(types, 0.008, 3e-6).throughput_tokens_per_s)


def test_t9_kv_arithmetic():
    """T9: 2 (K, V) x 32 layers x 32 heads x 128 dims x 2 bytes = 524,288 B per token; 1.37e5 tokens = 66.9 GiB."""
    assert get_model("llama2-7b").kv_bytes_per_token() == 2 * 32 * 32 * 128 * 2 == 524_288
    assert round(1.37e5 * 524_288 / 2 ** 30, 1) == 66.9


def test_t10_stage_count_with_chunked_prefill():
    """T10: ceil(512/384) + 20 = 22 stages (the GPU run's tl = 21 with n = 1 is one short of a full pipeline)."""
    assert stage_count(512, 20, 384) == 22
    assert stage_count(512, 20) == 21 == PromptType(512, 20, 1.0).stages


@pytest.mark.parametrize("bad", [
    dict(prefill_tokens=0, decode_tokens=1, rate_per_s=1.0), dict(prefill_tokens=1.5, decode_tokens=1, rate_per_s=1.0),
    dict(prefill_tokens=1, decode_tokens=-1, rate_per_s=1.0), dict(prefill_tokens=1, decode_tokens=1, rate_per_s=0.0),
    dict(prefill_tokens=1, decode_tokens=1, rate_per_s=float("nan")), dict(prefill_tokens=True, decode_tokens=1,
                                                                          rate_per_s=1.0),
    dict(prefill_tokens=1, decode_tokens=1, rate_per_s=float("inf")), dict(prefill_tokens=1, decode_tokens=1,
                                                                          rate_per_s="3"),
])
def test_prompt_type_refuses_bad_input(bad):
    with pytest.raises(ConfigError):
        PromptType(**bad)


def test_fluid_refuses_bad_time_model():
    t = [PromptType(1, 1, 1.0)]
    for d0, d1 in ((-1, 0.1), (float("nan"), 0.1), (0.1, float("inf"))):
        with pytest.raises(ConfigError):
            fluid_equilibrium(t, d0, d1)
    with pytest.raises(ConfigError, match="no prompt types"):
        fluid_equilibrium([], 0.1, 0.1)
    with pytest.raises(ConfigError, match="not a PromptType"):
        fluid_equilibrium([(1, 1, 1.0)], 0.1, 0.1)
