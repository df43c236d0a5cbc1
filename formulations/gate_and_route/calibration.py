"""The iteration-time law of Eq. (1)-(3) fitted on any step-time model (spec §3.1, §3.2 [R]).

The paper times vLLM iterations and fits ``tau_mix(C) = alpha + beta C`` by OLS over chunk sizes (Eq. (3)),
with ``gamma = 1 / tau_solo`` from decode-only iterations (Eq. (2)). On a
:class:`gpusched.perf.StepTimeModel` the same measurements are [R]:

* mixed iteration: ``step_time_s([C], [ctx] * (B - 1))``, one prefill chunk of ``C`` new tokens (over
  ``prefill_cached_tokens`` cached ones) beside ``B - 1`` decodes at context ``ctx``; OLS of these times on
  ``C`` over ``chunk_grid`` gives ``alpha`` (s) and ``beta`` (s/token) and the fit's ``R^2``;
* solo iteration: ``step_time_s([], [ctx] * B)``, ``B`` decodes; ``gamma = 1 / tau_solo``. The paper takes it
  as flat in the batch below the knee ``b0``; :attr:`IterationTimeFit.solo_spread` reports how far the model
  is from that over batches ``1..B``.

Eq. (1)'s knee follows as ``(1/gamma - alpha) / beta`` (``alpha = c - a b0`` with ``c = 1/gamma``, ``a = beta``):
the chunk size below which the fitted line falls under ``tau_solo``. The paper writes ``b' ~ C`` for a mixed
iteration, so its knee is ``b0``; the timed iterations here also carry the ``B - 1`` decodes, so on a model
that follows Eq. (1) exactly the fit gives ``alpha = c - a (b0 - (B - 1))`` and a knee of ``b0 - (B - 1)`` chunk
tokens. The linear mixed form only holds for chunks above the knee (spec §7.15), which
:meth:`IterationTimeFit.fluid_model` enforces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gpusched.errors import ConfigError

from .model import FluidModel, RequestClass

__all__ = ["IterationTimeFit", "fit_iteration_time", "CHUNK_GRID", "PAPER_QWEN3_8B_A100"]

CHUNK_GRID = (128, 256, 512, 1024, 2048)  # spec §3.2


@dataclass(frozen=True)
class IterationTimeFit:
    """Eq. (1)-(3) parameters fitted on a step-time model.

    Attributes:
        alpha_s: intercept of ``tau_mix(C) = alpha + beta C``, seconds.
        beta_s_per_token: slope, seconds per prefill token.
        gamma_tokens_per_s: ``1 / tau_solo``, tokens per second of one decode stream.
        r_squared: of the OLS fit.
        chunk_tokens: (k,) the chunk sizes timed.
        mixed_step_s: (k,) the timed mixed iterations, seconds.
        solo_step_s: ``tau_solo`` at ``B`` decodes, seconds.
        solo_spread: ``(max - min) / tau_solo`` of decode-only steps over batches ``1..B`` (0 = flat, as the
            paper assumes).
        max_decodes: ``B`` used for the measurements.
        context_tokens: decode context used.
    """

    alpha_s: float
    beta_s_per_token: float
    gamma_tokens_per_s: float
    r_squared: float
    chunk_tokens: tuple[int, ...]
    mixed_step_s: tuple[float, ...]
    solo_step_s: float
    solo_spread: float
    max_decodes: int
    context_tokens: int

    @property
    def knee_tokens(self) -> float:
        """``(1/gamma - alpha) / beta``: the chunk size (tokens) below which the fitted line is under ``tau_solo``
        (module docstring)."""
        return (1.0 / self.gamma_tokens_per_s - self.alpha_s) / self.beta_s_per_token

    def tau_mix_s(self, chunk_tokens: float) -> float:
        """``alpha + beta C`` seconds (Eq. (3))."""
        return self.alpha_s + self.beta_s_per_token * chunk_tokens

    def fluid_model(self, classes: Sequence[RequestClass], chunk_tokens: int, price_prefill: float,
                    price_decode: float) -> FluidModel:
        """A :class:`FluidModel` with ``tau = tau_mix(C)`` from this fit and ``B = max_decodes``.

        Raises ConfigError when ``C`` is below the knee ``b0`` (Eq. (3) then predicts a mixed iteration
        faster than a solo one, outside the law's window; spec §7.15).
        """
        if chunk_tokens < self.knee_tokens:
            raise ConfigError(f"chunk_tokens = {chunk_tokens} is below the knee {self.knee_tokens:.1f} tokens of "
                              f"Eq. (1); the linear mixed form tau = alpha + beta C only holds for C >= b0. Use a "
                              f"larger chunk")
        return FluidModel(tuple(classes), self.max_decodes, chunk_tokens, self.tau_mix_s(chunk_tokens),
                          self.gamma_tokens_per_s, price_prefill, price_decode)


# The paper's calibration, Qwen-8B on one A100-SXM4-40GB with vLLM 0.11 (spec §3.1 [P]); R^2 as printed.
PAPER_QWEN3_8B_A100 = IterationTimeFit(alpha_s=0.0174, beta_s_per_token=6.2e-5, gamma_tokens_per_s=45.45,
                                       r_squared=0.998, chunk_tokens=(), mixed_step_s=(), solo_step_s=1 / 45.45,
                                       solo_spread=0.0, max_decodes=16, context_tokens=0)


def _timed(step_model, prefill, decodes) -> float:
    t = float(step_model.step_time_s(prefill, decodes))
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(f"step model {type(step_model).__name__} returned {t!r} s for prefill {list(prefill)} "
                          f"with {len(decodes)} decodes; a step time must be a finite number > 0")
    return t


def fit_iteration_time(step_model, max_decodes: int, context_tokens: int = 1024,
                       chunk_grid: Sequence[int] = CHUNK_GRID) -> IterationTimeFit:
    """Fit ``alpha``, ``beta`` (Eq. (3)) and ``gamma`` (Eq. (2)) on ``step_model`` (module docstring).

    Args:
        step_model: anything with ``step_time_s(prefill_lens, decode_contexts)`` (a
            :class:`gpusched.perf.StepTimeModel`).
        max_decodes: ``B`` (an integer >= 1).
        context_tokens: context of every decode in the timed steps (tokens, >= 0).
        chunk_grid: chunk sizes to time (at least two distinct positive integers).
    """
    if not callable(getattr(step_model, "step_time_s", None)):
        raise ConfigError(f"step_model {step_model!r} has no step_time_s(prefill_lens, decode_contexts)")
    if isinstance(max_decodes, bool) or not isinstance(max_decodes, (int, np.integer)) or max_decodes < 1:
        raise ConfigError(f"max_decodes = {max_decodes!r} must be an integer >= 1")
    if isinstance(context_tokens, bool) or not isinstance(context_tokens, (int, np.integer)) or context_tokens < 0:
        raise ConfigError(f"context_tokens = {context_tokens!r} must be an integer >= 0")
    grid = tuple(chunk_grid)
    if (len(set(grid)) < 2 or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1
                                  for c in grid)):
        raise ConfigError(f"chunk_grid = {chunk_grid!r} needs at least two distinct positive integer chunk sizes")
    B, ctx = int(max_decodes), int(context_tokens)
    times = np.array([_timed(step_model, [int(c)], [ctx] * (B - 1)) for c in grid])
    C = np.array(grid, dtype=float)
    beta, alpha = np.polyfit(C, times, 1)
    resid = times - (alpha + beta * C)
    total = float(((times - times.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / total if total > 0 else 1.0
    solo = np.array([_timed(step_model, [], [ctx] * b) for b in range(1, B + 1)])
    tau_solo = float(solo[-1])
    if beta <= 0:
        raise ConfigError(f"the fitted beta = {beta} s/token is not positive: the step model's mixed iterations do "
                          f"not grow with the chunk over {grid}")
    return IterationTimeFit(alpha_s=float(alpha), beta_s_per_token=float(beta), gamma_tokens_per_s=1.0 / tau_solo,
                            r_squared=r2, chunk_tokens=tuple(int(c) for c in grid),
                            mixed_step_s=tuple(float(t) for t in times), solo_step_s=tau_solo,
                            solo_spread=float((solo.max() - solo.min()) / tau_solo), max_decodes=B,
                            context_tokens=ctx)
