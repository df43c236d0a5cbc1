"""Closed forms of the fluid LPs, independent of any LP solver (spec §2.2 and §2.3, [R] + [V]).

**Bundled (40) as a fractional knapsack.** With every ``theta_i > 0`` any prefill throughput
``r_i = mu_p,i x_i`` in ``[0, lambda_i]`` is feasible, and with Prop. 3.2's condition ``gamma tau >= (B-1)/B``
mixed and solo decode slots differ only by a class-independent speed factor, so the decode rows collapse to
one token budget. Substituting ``X = (tau/C) sum_i P_i r_i`` gives

    max sum_i w_i r_i   s.t.   0 <= r_i <= lambda_i,   sum_i a_i r_i <= B gamma,   (tau/C) sum_i P_i r_i <= 1,

with ``a_i = D_i + kappa P_i`` and ``kappa = (B gamma tau - (B-1)) / C >= 0``. When the last row is slack this
is a fractional knapsack: fill classes by decreasing ``w_i / a_i`` (ties: lower index first), each up to
``lambda_i``, until the budget ``B gamma`` is spent. :func:`knapsack_optimum` returns that plan and refuses
(``ConfigError``) outside its domain (a class with ``theta_i = 0``, ``kappa < 0``, or the prefill row binding).

**Separate (42).** The objective grows with ``X`` whenever ``c_p C/tau + c_d ((B-1)/tau - B gamma) > 0``, so the
optimum admits every prefill, ``X = (tau/C) sum_i lambda_i P_i`` (if <= 1), and earns
``c_p sum_i lambda_i P_i + c_d min(sum_i lambda_i D_i, (B-1) X / tau + B gamma (1-X))``
(:func:`separate_optimum`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusched.errors import ConfigError

from .model import FluidModel

__all__ = ["KnapsackPlan", "knapsack_optimum", "separate_optimum"]

_TOL = 1e-12


@dataclass(frozen=True)
class KnapsackPlan:
    """The bundled optimum from the knapsack form.

    Attributes:
        revenue: ``R* = sum_i w_i r_i`` per GPU-second.
        throughput: ``r`` (I,), served requests per GPU-second.
        x: ``x_i = r_i P_i tau / C`` (I,).
        q_prefill: ``q_p,i = (lambda_i - r_i) / theta_i`` (I,).
        mixed_fraction: ``X = sum_i x_i``.
        decode_tokens_per_s: ``sum_i r_i D_i`` per GPU.
        budget_binds: True when some class is not fully served (the token budget is spent); only then are
            the aggregates ``y_mixed_total = (B-1) X`` and ``y_solo_total = B (1-X)`` determined (else None).
    """

    revenue: float
    throughput: np.ndarray
    x: np.ndarray
    q_prefill: np.ndarray
    mixed_fraction: float
    decode_tokens_per_s: float
    budget_binds: bool
    y_mixed_total: float | None
    y_solo_total: float | None


def _require_abandonment(model: FluidModel, what: str) -> None:
    zero = [i for i, c in enumerate(model.classes) if c.abandon_rate <= 0]
    if zero:
        raise ConfigError(f"{what} needs abandon_rate > 0 for every class (classes {zero} have 0); "
                          f"solve the LP instead")


def knapsack_optimum(model: FluidModel) -> KnapsackPlan:
    """The bundled LP (40) solved as a fractional knapsack (module docstring); ConfigError outside its domain."""
    _require_abandonment(model, "the knapsack form")
    kappa = model.kappa
    if kappa < 0:
        raise ConfigError(f"the knapsack form needs Prop. 3.2's condition gamma tau >= (B-1)/B (kappa >= 0); "
                          f"kappa = {kappa}")
    m = model
    B, gamma, tau, C = m.max_decodes, m.gamma_tokens_per_s, m.tau_mix_s, m.chunk_tokens
    w, lam, P, D = m.weights, m.arrival_rates, m.prompt_tokens, m.decode_tokens
    a = D + kappa * P
    r = np.zeros(m.num_classes)
    budget = B * gamma
    for i in sorted(range(m.num_classes), key=lambda i: (-w[i] / a[i], i)):
        if w[i] <= 0 or budget <= 0:
            break
        r[i] = min(lam[i], budget / a[i])
        budget -= a[i] * r[i]
    x = r * P * tau / C
    X = float(x.sum())
    if X > 1 + _TOL:
        raise ConfigError(f"the prefill-capacity row binds (X = {X} > 1), so the knapsack form does not apply; "
                          f"solve the LP instead")
    binds = bool(np.any(r < lam * (1 - _TOL)))
    return KnapsackPlan(revenue=float(w @ r), throughput=r, x=x, q_prefill=(lam - r) / m.abandon_rates,
                        mixed_fraction=X, decode_tokens_per_s=float(r @ D), budget_binds=binds,
                        y_mixed_total=(B - 1) * X if binds else None, y_solo_total=B * (1 - X) if binds else None)


def separate_optimum(model: FluidModel) -> tuple[float, float]:
    """``(R~*, X)`` of the separate-charging LP (42) from its closed form (module docstring).

    ConfigError when the closed form does not apply: a class with ``theta_i = 0``, a non-increasing objective
    in ``X``, or ``X > 1``.
    """
    _require_abandonment(model, "the separate closed form")
    m = model
    B, gamma, tau, C = m.max_decodes, m.gamma_tokens_per_s, m.tau_mix_s, m.chunk_tokens
    slope = m.price_prefill * C / tau + m.price_decode * ((B - 1) / tau - B * gamma)
    if slope <= 0:
        raise ConfigError(f"the separate closed form needs c_p C/tau + c_d((B-1)/tau - B gamma) > 0; got {slope}")
    lam, P, D = m.arrival_rates, m.prompt_tokens, m.decode_tokens
    X = float(tau / C * (lam @ P))
    if X > 1 + _TOL:
        raise ConfigError(f"admitting every prefill needs X = {X} > 1; the closed form does not apply")
    capacity = (B - 1) * X / tau + B * gamma * (1 - X)
    return float(m.price_prefill * (lam @ P) + m.price_decode * min(float(lam @ D), capacity)), X
