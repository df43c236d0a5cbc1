"""WAIT's threshold conditions (eq. 11) and their chooser (spec ``shared/papers/nested_wait.md`` §3).

WAIT keeps one threshold ``n_j`` per type: at most ``n_j`` type-j prompts at each stage, and type j runs only when
``n_j`` of its prompts wait for prefill. With ``M^pi = sum_j n_j w_j`` (the memory of full pipelines) and
``DeltaT(n) = d0 + d1 M^pi``, eq. (11) asks

    DeltaT(n) <= n_j / lambda_j  for all j      (balance: each type's pipeline drains its arrivals)
    M* <= M^pi <= C                             (memory; M* <= M^pi follows from the balance, spec [V])

With strict slack in every balance row the paper proves O(1) latency; at equality O(sqrt(T)) (Theorem WAIT).

Paged KV: a resident prompt holding ``T`` tokens occupies ``ceil(T / bs)`` blocks, at most ``T + bs - 1`` tokens
of capacity. ``memory_pad_tokens = bs - 1`` adds that to every resident prompt of the memory row, so that the
token condition implies the block condition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from gpusched.errors import ConfigError

from .fluid import FluidInstabilityError, PromptType, _count, _finite, _time_model, _types, fluid_equilibrium

__all__ = ["NoAdmissibleThresholdsError", "WaitThresholdCheck", "check_wait_thresholds", "choose_wait_thresholds",
           "REL_TOL"]

REL_TOL = 1e-9  # relative tolerance under which a balance row counts as an equality


class NoAdmissibleThresholdsError(ConfigError):
    """No integer thresholds satisfy the paper's conditions within the KV capacity."""


@dataclass(frozen=True)
class WaitThresholdCheck:
    """Eq. (11) evaluated for integer thresholds ``n`` (one per type).

    memory_tokens : ``M^pi = sum_j n_j w_j``; memory_bound_tokens : the same plus ``memory_pad_tokens`` per resident
    prompt (what is compared with ``C``); iteration_s : ``DeltaT(n)``; slack_s : ``n_j / lambda_j - DeltaT(n)``
    per type; fluid_memory_tokens : ``M*`` (None when the fluid has no equilibrium).
    """

    thresholds: tuple[int, ...]
    memory_tokens: float
    memory_bound_tokens: float
    iteration_s: float
    slack_s: tuple[float, ...]
    capacity_tokens: float
    fluid_memory_tokens: float | None

    def _tol(self) -> float:
        return REL_TOL * max(self.iteration_s, 1e-300)

    @property
    def balance(self) -> bool:
        """``DeltaT(n) <= n_j / lambda_j`` for every type (equality allowed, up to :data:`REL_TOL`)."""
        return all(s >= -self._tol() for s in self.slack_s)

    @property
    def strict(self) -> bool:
        """Strict slack in every balance row (the O(1)-delay regime)."""
        return all(s > self._tol() for s in self.slack_s)

    @property
    def memory_ok(self) -> bool:
        return self.memory_bound_tokens <= self.capacity_tokens * (1 + REL_TOL)

    @property
    def admissible(self) -> bool:
        """Eq. (11) holds (``M* <= M^pi`` is implied by the balance)."""
        return self.balance and self.memory_ok

    @property
    def regime(self) -> str:
        if not self.admissible:
            return "inadmissible"
        return "strict slack: O(1) delays" if self.strict else "balance at equality: O(sqrt(T)) delays"

    @property
    def failures(self) -> tuple[str, ...]:
        """What fails, in words (empty when admissible)."""
        out = [f"type {j}: DeltaT(n) = {self.iteration_s:.6g} s > n_j/lambda_j by {-s:.3g} s"
               for j, s in enumerate(self.slack_s) if s < -self._tol()]
        if not self.memory_ok:
            out.append(f"memory: M^pi = {self.memory_bound_tokens:.6g} tokens > C = {self.capacity_tokens:.6g}")
        return tuple(out)


def _thresholds(values: Sequence[int], m: int, what: str = "thresholds") -> tuple[int, ...]:
    values = tuple(values)
    if len(values) != m:
        raise ConfigError(f"{len(values)} {what} for {m} prompt types/segments; give one per type/segment")
    return tuple(_count(f"{what}[{j}]", v, 1) for j, v in enumerate(values))


def check_wait_thresholds(types: Sequence[PromptType], thresholds: Sequence[int], d0_s: float,
                          d1_s_per_token: float, capacity_tokens: float,
                          memory_pad_tokens: int = 0) -> WaitThresholdCheck:
    """Evaluate eq. (11) for ``thresholds`` (one integer >= 1 per type)."""
    types = _types(types)
    n = _thresholds(thresholds, len(types))
    d0, d1 = _time_model(d0_s, d1_s_per_token)
    cap = _finite("capacity_tokens", capacity_tokens, strict=True)
    pad = _count("memory_pad_tokens", memory_pad_tokens, 0)
    memory = float(sum(nj * t.kv_token_iterations for nj, t in zip(n, types)))
    bound = memory + pad * sum(nj * t.stages for nj, t in zip(n, types))
    dt = d0 + d1 * memory
    try:
        fluid = fluid_equilibrium(types, d0, d1).memory_tokens
    except FluidInstabilityError:
        fluid = None
    return WaitThresholdCheck(n, memory, bound, dt, tuple(nj / t.rate_per_s - dt for nj, t in zip(n, types)), cap,
                              fluid)


def choose_wait_thresholds(types: Sequence[PromptType], d0_s: float, d1_s_per_token: float, capacity_tokens: float,
                           strict: bool = True, min_slack_s: float = 0.0,
                           memory_pad_tokens: int = 0) -> WaitThresholdCheck:
    """The componentwise-smallest integer thresholds satisfying eq. (11); hence also the ones of least ``M^pi``.

    Every condition has the form ``n_j >= f_j(n)`` with ``f_j`` non-decreasing in ``n``
    (``f_j(n) = lambda_j (DeltaT(n) + min_slack_s)``, strictly above it when ``strict``), so iterating
    ``n <- max(n, ceil f(n))`` from ``n = 1`` climbs to the least fixed point; any admissible vector lies above
    every iterate, so if an iterate's memory exceeds ``C`` nothing is admissible (Knaster-Tarski on the integer
    box). ``strict=True`` asks strict slack (O(1) delays, Theorem WAIT); ``False`` accepts equality.

    Raises :class:`NoAdmissibleThresholdsError` saying why (outside the stability region, or one prompt per stage
    already exceeds ``C``).
    """
    types = _types(types)
    d0, d1 = _time_model(d0_s, d1_s_per_token)
    cap = _finite("capacity_tokens", capacity_tokens, strict=True)
    min_slack = _finite("min_slack_s", min_slack_s)
    pad = _count("memory_pad_tokens", memory_pad_tokens, 0)
    n = [1] * len(types)
    while True:
        check = check_wait_thresholds(types, n, d0, d1, cap, pad)
        if not check.memory_ok:
            raise NoAdmissibleThresholdsError(_why_none(types, d0, d1, cap, check))
        need = []
        for t in types:
            x = t.rate_per_s * (check.iteration_s + min_slack)
            if strict:
                k = math.floor(x * (1 + REL_TOL)) + 1  # smallest integer strictly above x
            else:
                k = math.ceil(x * (1 - REL_TOL))  # equality within tolerance is accepted
            need.append(max(k, 1))
        if all(nj >= k for nj, k in zip(n, need)):
            return check
        n = [max(nj, k) for nj, k in zip(n, need)]


def _why_none(types, d0, d1, cap, check: WaitThresholdCheck) -> str:
    try:
        fluid = fluid_equilibrium(types, d0, d1)
    except FluidInstabilityError as err:
        return f"no admissible WAIT thresholds: {err}"
    if fluid.memory_tokens > cap:
        return (f"no admissible WAIT thresholds: the rates are outside the stability region (M* = "
                f"{fluid.memory_tokens:.6g} > C = {cap:.6g})")
    if all(n == 1 for n in check.thresholds):
        return (f"no admissible WAIT thresholds: one prompt per stage already needs M^pi = "
                f"{check.memory_bound_tokens:.6g} tokens > C = {cap:.6g} (the fluid holds only "
                f"{min(fluid.per_stage):.3g}-{max(fluid.per_stage):.3g} prompts per stage); cap the prompts in "
                f"flight instead (max_in_flight, the paper's experimental 'tl')")
    return (f"no admissible WAIT thresholds: integer rounding of the fluid n*_j = "
            f"{', '.join(f'{x:.3g}' for x in fluid.per_stage)} pushes M^pi past C (at n = {check.thresholds}, "
            f"M^pi = {check.memory_bound_tokens:.6g} > {cap:.6g})")
