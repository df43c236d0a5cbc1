"""WAIT's eq. (11) and Nested WAIT's eqs. (12)-(14): T1, T4-T8 of spec shared/papers/nested_wait.md §10, and the
choosers against brute-force enumeration and scipy's MILP solver."""
import itertools
import math

import numpy as np
import pytest
from scipy.optimize import LinearConstraint, milp

from formulations.nested_wait.fluid import PromptType, fluid_equilibrium
from formulations.nested_wait.segments import (SegmentDesign, boundary_theta, check_nested_thresholds,
                                               choose_nested_thresholds, continuation_ratios, equal_width_ends,
                                               hoeffding_theta, nested_memory, safety_buffer_prompts,
                                               split_in_flight_cap)
from formulations.nested_wait.thresholds import (NoAdmissibleThresholdsError, check_wait_thresholds,
                                                 choose_wait_thresholds)
from gpusched.errors import ConfigError

T1 = [PromptType(1, 1, 4.0)]


def test_t1_only_n4_is_admissible_and_at_equality():
    """T1 by hand: n = 3 gives M^pi = 9, DeltaT = 0.5 + 9/24 = 0.875 > n/lambda = 0.75; n = 5 gives M^pi = 15 > 12;
    n = 4 gives DeltaT = 1 = n/lambda and M^pi = 12 = C: admissible, at equality."""
    c3, c4, c5 = (check_wait_thresholds(T1, [n], 0.5, 1 / 24, 12) for n in (3, 4, 5))
    assert c3.iteration_s == pytest.approx(0.875) and not c3.balance and c3.memory_ok
    assert c5.memory_tokens == 15 and c5.balance and not c5.memory_ok
    assert c4.admissible and not c4.strict and c4.regime.startswith("balance at equality")
    assert c4.fluid_memory_tokens == pytest.approx(12)
    assert choose_wait_thresholds(T1, 0.5, 1 / 24, 12, strict=False).thresholds == (4,)
    with pytest.raises(NoAdmissibleThresholdsError):
        choose_wait_thresholds(T1, 0.5, 1 / 24, 12, strict=True)  # strict slack needs n = 5: M^pi = 15 > 12
    assert choose_wait_thresholds(T1, 0.5, 1 / 24, 15, strict=True).thresholds == (5,)


def _brute_force_least(types, d0, d1, C, strict, top=12):
    """Every integer vector in [1, top]^m satisfying eq. (11); returns (the least-memory ones, all admissible)."""
    ok = []
    for n in itertools.product(range(1, top + 1), repeat=len(types)):
        M = sum(nj * t.kv_token_iterations for nj, t in zip(n, types))
        dt = d0 + d1 * M
        slack = [nj / t.rate_per_s - dt for nj, t in zip(n, types)]
        if M <= C and all(s > 1e-12 if strict else s >= -1e-12 for s in slack):
            ok.append((M, n))
    return ok


@pytest.mark.parametrize("case", [
    ([PromptType(4, 3, 2.0), PromptType(2, 6, 1.0)], 0.3, 0.01, 200.0),
    ([PromptType(1, 1, 3.0), PromptType(2, 2, 1.5), PromptType(3, 1, 0.5)], 0.4, 0.02, 120.0),
    ([PromptType(8, 4, 1.0), PromptType(1, 9, 2.5)], 0.2, 0.004, 500.0),
    ([PromptType(8, 4, 1.0), PromptType(1, 9, 2.5)], 0.2, 0.004, 300.0),  # none: (2, 4) already needs 320
])
@pytest.mark.parametrize("strict", [True, False])
def test_wait_chooser_is_the_least_admissible_vector(case, strict):
    """The chooser's vector is admissible, componentwise below every admissible vector of the box (brute force), and
    of least M^pi; scipy's MILP (HiGHS via scipy, min M^pi s.t. the balance rows) finds the same memory."""
    types, d0, d1, C = case
    ok = _brute_force_least(types, d0, d1, C, strict)
    if not ok:  # w >= 50 and C = 300: the box holds every vector of memory <= C
        with pytest.raises(NoAdmissibleThresholdsError):
            choose_wait_thresholds(types, d0, d1, C, strict=strict)
        return
    chosen = choose_wait_thresholds(types, d0, d1, C, strict=strict)
    assert chosen.admissible and (chosen.strict or not strict)
    assert all(all(a <= b for a, b in zip(chosen.thresholds, n)) for _, n in ok)
    assert chosen.memory_tokens == pytest.approx(min(M for M, _ in ok))
    w = np.array([t.kv_token_iterations for t in types])
    lam = np.array([t.rate_per_s for t in types])
    A = np.eye(len(types)) - np.outer(lam * d1, w)  # n_j - lambda_j d1 w.n >= lambda_j d0 (+ margin)
    margin = 1e-6 if strict else 0.0
    res = milp(w, constraints=[LinearConstraint(A, lam * (d0 + margin), np.inf), LinearConstraint(w, 0, C)],
               integrality=np.ones(len(types)), bounds=(1, 50))
    assert res.status == 0 and res.fun == pytest.approx(chosen.memory_tokens)


def test_wait_chooser_pads_for_blocks_and_explains_failures():
    """memory_pad_tokens adds (bs - 1) per resident prompt: one p512d20 prompt per stage holds 21 x 522 = 10,962
    tokens, padded 10,962 + 21 x 15 = 11,277."""
    t = [PromptType(512, 20, 10.0)]
    c = check_wait_thresholds(t, [1], 0.002, 3e-6, 11_277, memory_pad_tokens=15)
    assert c.memory_tokens == 10_962 and c.memory_bound_tokens == 11_277 and c.memory_ok
    assert not check_wait_thresholds(t, [1], 0.002, 3e-6, 11_276, memory_pad_tokens=15).memory_ok
    with pytest.raises(NoAdmissibleThresholdsError, match="one prompt per stage"):
        choose_wait_thresholds([PromptType(512, 1000, 0.5)], 0.008, 3e-7, 137_000)  # w = 1,013,012 > C
    with pytest.raises(NoAdmissibleThresholdsError, match="stability region"):
        choose_wait_thresholds([PromptType(512, 20, 30.0)], 0.002, 3e-6, 20_000)
    with pytest.raises(ConfigError, match="1 thresholds for 2"):
        check_wait_thresholds(t * 2, [1], 0.1, 0.1, 10)
    with pytest.raises(ConfigError):
        check_wait_thresholds(t, [0], 0.1, 0.1, 10)


def test_t4_two_type_split():
    """T4: n_2 = 0.3 n_1, 20 n_1 + 30 n_2 = 30 => n_1 = 30/29 = 1.0345, n_2 = 0.3103, caps 20.69 -> 21 and
    9.31 -> 9. M^pi (eq. 13, l = 512, ends 20 and 50) = 1.0345 x 522 x 21 + 0.3103 x 547.5 x 30 = 16,437; with
    n = (1, 1): 522 x 21 + 547.5 x 30 = 27,387."""
    n, caps = split_in_flight_cap(30, [20, 30], [0.3])
    assert n == pytest.approx((30 / 29, 9 / 29))
    assert caps == (21, 9)
    design = SegmentDesign((20, 50), (0.7, 0.3), 512)
    assert design.stage_counts == (21, 30) and design.mean_stages == (10.0, 35.5)
    M = sum(nk * (512 + s) * d for nk, s, d in zip(n, design.mean_stages, design.stage_counts))
    assert round(M) == 16_437
    assert nested_memory(design, (1, 1)) == 522 * 21 + 547.5 * 30 == 27_387


@pytest.mark.parametrize("n_prev,n_k,p,theta,bound,buf2,buf10", [
    (10, 5, 0.3, 1.6946, 1.6, 8.56, 13.59),
    (10, 4, 0.3, 0.8711, 0.8, 16.66, 26.43),
    (100, 50, 0.45, 0.4013, 0.4, 36.15, 57.37),
])
def test_t5_theta_and_buffer(n_prev, n_k, p, theta, bound, buf2, buf10):
    """T5: theta is a root of -theta n_k + n_prev ln(1 - p + p e^theta) (checked by evaluating it), above the
    Hoeffding bound 8 (n_k - p n_prev)/n_prev; buffer = ln(m (1 + zeta T/d0)/delta)/theta with (m = 2, 1e4, 1e-2)
    and (m = 10, 1e6, 1e-3)."""
    th = boundary_theta(n_prev, n_k, p)
    assert round(th, 4) == theta
    assert -th * n_k + n_prev * math.log(1 - p + p * math.exp(th)) == pytest.approx(0, abs=1e-9)
    assert hoeffding_theta(n_prev, n_k, p) == pytest.approx(bound) and th > bound
    assert round(safety_buffer_prompts(th, 2, 1e4, 1.0, 1e-2), 2) == buf2
    assert round(safety_buffer_prompts(th, 10, 1e6, 1.0, 1e-3), 2) == buf10


def test_theta_degenerate_cases():
    assert boundary_theta(4, 4, 0.5) == math.inf  # n_k >= n_prev: the queue cannot grow
    assert boundary_theta(4, 2, 0.0) == math.inf  # nothing survives
    with pytest.raises(ConfigError, match="no negative drift"):
        boundary_theta(10, 3, 0.3)  # n_k = p n_prev
    with pytest.raises(ConfigError):
        boundary_theta(10, 5, 1.5)


def test_t6_nested_toy():
    """T6: l = 1, l' = (1, 2), lambda = (2, 2), n = (4, 3), d0 = 0.5, d1 = 0.02. By hand: p_2 = 0.5,
    M^pi = 4 x 1.5 x 2 + 3 x 3 x 1 = 21, DeltaT = 0.92 < n_1/Lambda_1 = 1, 0.5 < 0.75 < 1, theta_2 = 2.4375;
    zeta T = 1000, delta = 0.01: buffer = 2 (3 + ln(2 x 2001/0.01)/theta) = 16.58, M_req = 37.58; the known-length
    fluid has M* = 0.5 x 18/(1 - 0.36) = 14.06 and n* = 1.5625."""
    types = [PromptType(1, 1, 2.0), PromptType(1, 2, 2.0)]
    design = SegmentDesign.from_types(types)
    assert design.ends == (1, 2) and design.continuation == (0.5,) and design.prefill_tokens == (1, 1)
    c = check_nested_thresholds(design, (4, 3), 0.5, 0.02, capacity_tokens=38, horizon_s=1000, delta=0.01)
    assert c.memory_tokens == 21 and c.iteration_s == pytest.approx(0.92)
    assert c.entry_ok and c.drift_ok == (True,) and c.admissible
    assert round(c.theta[0], 4) == 2.4375
    assert c.buffer_tokens == pytest.approx(2 * (3 + math.log(2 * 2001 / 0.01) / c.theta[0]))
    assert round(c.required_memory_tokens, 2) == 37.58
    assert not check_nested_thresholds(design, (4, 3), 0.5, 0.02, 37, 1000, 0.01).admissible
    eq = fluid_equilibrium(types, 0.5, 0.02)
    assert round(eq.memory_tokens, 2) == 14.06 and eq.per_stage == pytest.approx((1.5625, 1.5625))
    # the chooser's least vector for (12) is exactly T6's (4, 3): by hand, (1,1) -> (3,2) -> (4,3), a fixed point
    assert choose_nested_thresholds(design, 0.5, 0.02, 38, 1000, 0.01).thresholds == (4, 3)


def test_nested_chooser_against_brute_force():
    """The least vector for (12) is below every admissible vector of the box and has the least M^pi."""
    types = [PromptType(2, 3, 3.0), PromptType(2, 7, 2.0), PromptType(2, 12, 1.0)]
    design = SegmentDesign.from_types(types)
    d0, d1, C = 0.2, 0.002, 2000.0
    ok = [n for n in itertools.product(range(1, 14), repeat=3)
          if check_nested_thresholds(design, n, d0, d1, C).admissible]
    chosen = choose_nested_thresholds(design, d0, d1, C)
    assert ok and chosen.thresholds in ok
    assert all(all(a <= b for a, b in zip(chosen.thresholds, n)) for n in ok)
    assert chosen.memory_tokens == min(nested_memory(design, n) for n in ok)
    with pytest.raises(NoAdmissibleThresholdsError):
        choose_nested_thresholds(design, d0, d1, chosen.memory_tokens - 1)


def test_t7_v1_thresholds_sit_on_the_boundary():
    """T7: 66:43:...:1 are the tail sums of the rates 23:11:8:7:6:4:3:2:1:1, so n_k/n_(k-1) = p_k exactly; (12)
    needs it strictly larger, so every boundary fails."""
    rates = [23, 11, 8, 7, 6, 4, 3, 2, 1, 1]
    n = [66, 43, 32, 24, 17, 11, 7, 4, 2, 1]
    assert n == [sum(rates[k:]) for k in range(10)]
    design = SegmentDesign(tuple(50 * (k + 1) for k in range(10)), rates, 60)
    c = check_nested_thresholds(design, n, 0.001, 1e-7)
    assert [round(p, 4) for p in c.continuation] == [0.6515, 0.7442, 0.75, 0.7083, 0.6471, 0.6364, 0.5714, 0.5, 0.5]
    assert c.ratios == pytest.approx(c.continuation) and not any(c.drift_ok)


def test_t8_real_data_allocation_rule():
    """T8: p = 0.30, eta = 0.05 -> q = 0.35; L = 2 segments of 250, tl = 100: n_1 = 100/(250 x 1.35) = 0.2963,
    n_2 = 0.1037, caps 74.07 -> 74 and 25.93 -> 26."""
    design = SegmentDesign((249, 499), (0.7, 0.3), 60)
    assert design.stage_counts == (250, 250)
    (q,) = continuation_ratios(design, eta=0.05)
    assert q == pytest.approx(0.35)
    n, caps = split_in_flight_cap(100, design.stage_counts, [q])
    assert n == pytest.approx((100 / 337.5, 35 / 337.5)) and round(n[0], 4) == 0.2963 and round(n[1], 4) == 0.1037
    assert caps == (74, 26)


def test_segment_design_from_lengths():
    """Segments from a length table: rates by where outputs end, survival, and the segment-wise prefill bound."""
    prompt = [10, 20, 30, 40]
    output = [3, 6, 11, 11]  # l' = 2, 5, 10, 10
    d = SegmentDesign.from_lengths(prompt, output, 4.0, ends=(4, 10))
    assert d.rates_per_s == (1.0, 3.0) and d.reach_rates_per_s == (4.0, 3.0) and d.continuation == (0.75,)
    assert d.prefill_tokens == (40, 40)  # max over the prompts present in the segment
    assert SegmentDesign.from_lengths(prompt, output, 4.0, (4, 10), prefill="mean").prefill_tokens == (25, 30)
    with pytest.raises(ConfigError, match="exceeds the last segment end"):
        SegmentDesign.from_lengths(prompt, output, 4.0, ends=(4, 9))
    assert equal_width_ends(500, 2) == (250, 500)
    assert d.segment_of_stage(0) == 0 and d.segment_of_stage(4) == 0 and d.segment_of_stage(5) == 1
    assert d.segment_of_stage(99) == 1  # past the last end: the last segment
    with pytest.raises(ConfigError, match="strictly increasing"):
        SegmentDesign((5, 5), (1.0, 1.0), 10)
