"""Eq. (1)-(3) fitted on step-time models (formulations.gate_and_route.calibration).

Expected values: [hand] for a step model that follows Eq. (1) exactly (worked out in the test), and the
step model's own timings for the shared models (the fit must reproduce what it measured).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import linregress

from gpusched.errors import ConfigError
from gpusched.perf import ProfiledStepTime, RooflineStepTime
from formulations.gate_and_route import (CHUNK_GRID, PAPER_QWEN3_8B_A100, fit_iteration_time, paper_classes,
                                         solve_fluid)


class Eq1StepTime:
    """tau(b') = c + a max(0, b' - b0), b' = prefill tokens + decodes (Eq. (1))."""

    def __init__(self, c=0.022, a=6.2e-5, b0=74):
        self.c, self.a, self.b0 = c, a, b0

    def step_time_s(self, prefill_lens=(), decode_contexts=(), prefill_cached=None):
        b = sum(prefill_lens) + len(decode_contexts)
        return self.c + self.a * max(0, b - self.b0)


def test_fit_recovers_eq1_exactly():
    fit = fit_iteration_time(Eq1StepTime(), max_decodes=16)
    # [hand] every grid chunk C >= 128 puts b' = C + 15 above b0 = 74: tau = 0.022 + 6.2e-5 (C + 15 - 74)
    assert fit.beta_s_per_token == pytest.approx(6.2e-5, rel=1e-9)
    assert fit.alpha_s == pytest.approx(0.022 - 6.2e-5 * 59, rel=1e-9)
    assert fit.gamma_tokens_per_s == pytest.approx(1 / 0.022, rel=1e-12)   # B = 16 <= b0: flat
    assert fit.r_squared == pytest.approx(1.0, abs=1e-12)
    assert fit.solo_spread == 0.0
    assert fit.knee_tokens == pytest.approx(59, rel=1e-9)                  # [hand] b0 - (B - 1)
    assert fit.tau_mix_s(256) == pytest.approx(0.022 + 6.2e-5 * (256 + 15 - 74), rel=1e-12)
    assert fit.chunk_tokens == CHUNK_GRID


def test_paper_calibration_constants():
    fit = PAPER_QWEN3_8B_A100
    assert fit.tau_mix_s(256) == pytest.approx(0.033272, rel=1e-12)         # spec §3.1
    assert fit.knee_tokens == pytest.approx(74.2, abs=0.1)                  # spec §3.1: b0 ~ 74
    assert fit.tau_mix_s(256) * fit.gamma_tokens_per_s == pytest.approx(1.5122124, abs=1e-7)


@pytest.mark.parametrize("make", [lambda: RooflineStepTime("llama3-8b", "A100-40GB"),
                                  lambda: ProfiledStepTime.from_profile_dir("h100", model="llama3-8b")],
                         ids=["roofline-a100", "profiled-h100"])
def test_fit_on_shared_step_models(make):
    model = make()
    B, ctx = 16, 1024
    fit = fit_iteration_time(model, max_decodes=B, context_tokens=ctx)
    # gamma is the model's own decode-only step at B decodes
    assert fit.gamma_tokens_per_s == pytest.approx(1 / model.step_time_s([], [ctx] * B), rel=1e-12)
    measured = np.array([model.step_time_s([c], [ctx] * (B - 1)) for c in CHUNK_GRID])
    np.testing.assert_allclose(fit.mixed_step_s, measured, rtol=1e-12)
    # the spec expects R^2 >= 0.99 when the model is linear in chunk tokens (E1); both are
    assert fit.r_squared >= 0.99
    ols = linregress(CHUNK_GRID, measured)                                  # scipy's OLS, independently
    assert fit.beta_s_per_token == pytest.approx(ols.slope, rel=1e-9)
    assert fit.alpha_s == pytest.approx(ols.intercept, rel=1e-9)
    assert fit.r_squared == pytest.approx(ols.rvalue ** 2, rel=1e-9)
    assert 0 < fit.solo_spread < 0.2                                        # nearly flat below the knee
    assert fit.beta_s_per_token > 0 and math.isfinite(fit.alpha_s)
    plan = solve_fluid(fit.fluid_model(paper_classes(), 256, 0.1, 0.2))
    assert plan.status == "optimal" and plan.revenue > 0


def test_chunk_below_the_knee_is_refused():
    fit = fit_iteration_time(Eq1StepTime(), max_decodes=16)
    with pytest.raises(ConfigError, match="knee"):
        fit.fluid_model(paper_classes(), 32, 0.1, 0.2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(step_model=object()), "step_time_s"),
    (dict(max_decodes=0), "max_decodes"),
    (dict(max_decodes=True), "max_decodes"),
    (dict(context_tokens=-1), "context_tokens"),
    (dict(chunk_grid=(256,)), "chunk_grid"),
    (dict(chunk_grid=(256, 256)), "chunk_grid"),
    (dict(chunk_grid=(0, 256)), "chunk_grid"),
])
def test_bad_fit_arguments(kwargs, match):
    args = dict(step_model=Eq1StepTime(), max_decodes=16) | kwargs
    with pytest.raises(ConfigError, match=match):
        fit_iteration_time(**args)


def test_bad_step_times_are_named():
    class Broken:
        def step_time_s(self, prefill_lens=(), decode_contexts=(), prefill_cached=None):
            return math.nan

    class Flat(Eq1StepTime):
        def step_time_s(self, prefill_lens=(), decode_contexts=(), prefill_cached=None):
            return 0.02

    with pytest.raises(ConfigError, match="finite"):
        fit_iteration_time(Broken(), 16)
    with pytest.raises(ConfigError, match="beta"):
        fit_iteration_time(Flat(), 16)
