"""The paper's primitives: request classes and one fluid model (spec ``shared/papers/gate_and_route.md`` §1).

A cluster of ``n`` identical GPUs serves request classes ``i``. Class ``i`` has a representative prompt of
``P_i`` tokens and output of ``D_i`` tokens, arrives as a Poisson stream of rate ``n * lambda_i`` (per-GPU
rate ``lambda_i``), and a request waiting for prefill or for a decode slot abandons at rate ``theta_i``.
Each GPU holds at most ``B`` decodes and prefills one request at a time in chunks of ``C`` tokens.

Service rates, Eq. (4) [P], from the iteration-time law Eq. (1)-(3) (``tau = tau_mix(C) = alpha + beta C``
seconds for an iteration carrying a prefill chunk, ``1 / gamma`` seconds for a decode-only one):

    prefill          mu_p,i = C / (P_i tau)        per second
    mixed decode     mu_m,i = 1 / (D_i tau)        (a decode co-resident with a prefill)
    solo decode      mu_s,i = gamma / D_i          (a decode on a GPU that is not prefilling)

Revenue [P]: a class-``i`` request is worth ``w_i = c_p P_i + c_d D_i`` (Eq. (21)-(22), bundled, credited at
decode completion); under separate charging (Eq. (23)) ``c_p P_i`` is credited at prefill completion and
``c_d D_i`` at decode completion. Rates are per GPU and per second; revenue is price units per GPU-second.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Sequence

import numpy as np

from gpusched.errors import ConfigError

__all__ = ["RequestClass", "FluidModel"]


def _number(owner: str, field: str, value, *, positive: bool, integer: bool = False) -> float | int:
    """``value`` as a finite number (> 0 if ``positive``, else >= 0), or a ConfigError naming it."""
    bad_type = isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.integer, np.floating))
    if integer and not bad_type and not float(value).is_integer():
        bad_type = True
    if bad_type:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{owner}.{field} = {value!r} is not {kind}")
    v = float(value)
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ConfigError(f"{owner}.{field} = {value!r} must be a finite number {'> 0' if positive else '>= 0'}")
    return int(v) if integer else v


@dataclass(frozen=True)
class RequestClass:
    """One request class (spec §1).

    Attributes:
        prompt_tokens: representative prompt length ``P_i`` (tokens, > 0; a mean, so it may be fractional).
        decode_tokens: representative output length ``D_i`` (tokens, > 0).
        arrival_rate: ``lambda_i``, arrivals per second *per GPU* (>= 0); the cluster sees ``n lambda_i``.
        abandon_rate: ``theta_i``, per second, of each request waiting for prefill or in the decode buffer
            (>= 0). With ``theta_i = 0`` the fluid LP is infeasible when the class cannot all be served
            (spec §7.2); :func:`~formulations.gate_and_route.solve_fluid` then says so.
    """

    prompt_tokens: float
    decode_tokens: float
    arrival_rate: float
    abandon_rate: float

    def __post_init__(self) -> None:
        for f, positive in (("prompt_tokens", True), ("decode_tokens", True), ("arrival_rate", False),
                            ("abandon_rate", False)):
            object.__setattr__(self, f, _number("RequestClass", f, getattr(self, f), positive=positive))


@dataclass(frozen=True)
class FluidModel:
    """A cluster-per-GPU fluid model: classes, engine limits, iteration times and prices (spec §1, §2.1).

    Attributes:
        classes: the request classes, a non-empty tuple of :class:`RequestClass` (index ``i`` = class ``i``).
        max_decodes: ``B``, decode streams a GPU holds at once (an integer >= 1); a mixed GPU holds ``B - 1``
            next to its prefill.
        chunk_tokens: ``C``, prefill tokens per iteration (an integer >= 1).
        tau_mix_s: ``tau = tau_mix(C)``, seconds of an iteration carrying a prefill chunk (Eq. (3)).
        gamma_tokens_per_s: ``gamma = 1 / tau_solo``, tokens per second of one decode stream on a GPU
            that is not prefilling (Eq. (2)).
        price_prefill: ``c_p``, price per prompt token (>= 0).
        price_decode: ``c_d``, price per output token (>= 0).

    Derived (numpy arrays of shape ``(I,)``): :attr:`mu_prefill`, :attr:`mu_mixed`, :attr:`mu_solo` (Eq. (4)),
    :attr:`weights` ``w_i`` (Eq. (22)), plus :attr:`kappa` of the knapsack form (spec §2.2).
    """

    classes: tuple[RequestClass, ...]
    max_decodes: int
    chunk_tokens: int
    tau_mix_s: float
    gamma_tokens_per_s: float
    price_prefill: float
    price_decode: float

    def __post_init__(self) -> None:
        classes = self.classes
        if isinstance(classes, RequestClass) or not isinstance(classes, Sequence) or isinstance(classes, str):
            raise ConfigError(f"FluidModel.classes must be a sequence of RequestClass, got {classes!r}")
        classes = tuple(classes)
        if not classes:
            raise ConfigError("FluidModel.classes is empty; give at least one RequestClass")
        for i, c in enumerate(classes):
            if not isinstance(c, RequestClass):
                raise ConfigError(f"FluidModel.classes[{i}] = {c!r} is not a RequestClass")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "max_decodes", _number("FluidModel", "max_decodes", self.max_decodes,
                                                        positive=True, integer=True))
        object.__setattr__(self, "chunk_tokens", _number("FluidModel", "chunk_tokens", self.chunk_tokens,
                                                         positive=True, integer=True))
        for f in ("tau_mix_s", "gamma_tokens_per_s"):
            object.__setattr__(self, f, _number("FluidModel", f, getattr(self, f), positive=True))
        for f in ("price_prefill", "price_decode"):
            object.__setattr__(self, f, _number("FluidModel", f, getattr(self, f), positive=False))

    # ------------------------------------------------------------------ per-class arrays (Eq. (4), (22))
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _per_class(self, field: str) -> np.ndarray:
        return np.array([getattr(c, field) for c in self.classes], dtype=float)

    @property
    def prompt_tokens(self) -> np.ndarray:
        """``P`` (I,), tokens."""
        return self._per_class("prompt_tokens")

    @property
    def decode_tokens(self) -> np.ndarray:
        """``D`` (I,), tokens."""
        return self._per_class("decode_tokens")

    @property
    def arrival_rates(self) -> np.ndarray:
        """``lambda`` (I,), per GPU per second."""
        return self._per_class("arrival_rate")

    @property
    def abandon_rates(self) -> np.ndarray:
        """``theta`` (I,), per second."""
        return self._per_class("abandon_rate")

    @property
    def mu_prefill(self) -> np.ndarray:
        """``mu_p,i = C / (P_i tau)`` (I,), prefills per second of one busy prefill slot (Eq. (4))."""
        return self.chunk_tokens / (self.prompt_tokens * self.tau_mix_s)

    @property
    def mu_mixed(self) -> np.ndarray:
        """``mu_m,i = 1 / (D_i tau)`` (I,), completions per second of a decode next to a prefill (Eq. (4))."""
        return 1.0 / (self.decode_tokens * self.tau_mix_s)

    @property
    def mu_solo(self) -> np.ndarray:
        """``mu_s,i = gamma / D_i`` (I,), completions per second of a decode on a non-prefilling GPU (Eq. (4))."""
        return self.gamma_tokens_per_s / self.decode_tokens

    @property
    def weights(self) -> np.ndarray:
        """``w_i = c_p P_i + c_d D_i`` (I,), price units per request (Eq. (22))."""
        return self.price_prefill * self.prompt_tokens + self.price_decode * self.decode_tokens

    @property
    def kappa(self) -> float:
        """``kappa = (B gamma tau - (B - 1)) / C`` of the knapsack form (spec §2.2); >= 0 iff Prop. 3.2 holds."""
        B = self.max_decodes
        return (B * self.gamma_tokens_per_s * self.tau_mix_s - (B - 1)) / self.chunk_tokens

    @property
    def solo_at_least_as_efficient(self) -> bool:
        """Prop. 3.2's condition ``gamma tau >= (B - 1) / B``: a solo GPU decodes at least as many tokens per
        second as a mixed one, so an optimal plan leaves no decode buffer."""
        B = self.max_decodes
        return self.gamma_tokens_per_s * self.tau_mix_s * B >= B - 1

    def tpot_s(self, mixed_fraction: float) -> float:
        """Average time per output token at full decode occupancy when a fraction ``X`` of GPU time prefills
        (Eq. (47)): ``[tau (B-1) X + (B/gamma)(1-X)] / [(B-1) X + B (1-X)]`` seconds."""
        X = float(mixed_fraction)
        if not 0.0 <= X <= 1.0:
            raise ConfigError(f"mixed_fraction = {mixed_fraction!r} must be in [0, 1]")
        B, tau, g = self.max_decodes, self.tau_mix_s, self.gamma_tokens_per_s
        return (tau * (B - 1) * X + (B / g) * (1 - X)) / ((B - 1) * X + B * (1 - X))
