"""A paper's number against ours: the tolerance we hold it to and the verdict.

Three kinds of comparison (:attr:`Claim.kind`):

* ``"value"``: ours is *within* the tolerance of the paper's number, or *outside* it. The tolerance is
  ``abs_tol + rel_tol * |paper|`` (both >= 0): ``|ours - paper| <= tolerance`` is within.
* ``"direction"``: the setting differs from the paper's (another trace, model or machine), so only the
  direction can be compared: on which side of ``pivot`` the number lies (e.g. a ratio against 1, a
  reduction against 0). The verdict is ``direction only: agrees`` when ours lies strictly on the paper's side,
  ``direction only: disagrees`` otherwise (on the pivot itself included: no effect is not the paper's effect).
  The paper's side is that of ``paper`` or, when the paper gives no number, ``expect`` (``"above"``/``"below"``).
* A number we could not compute (NaN: the cells it needs are missing or failed) is ``not computed``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from gpusched.errors import ConfigError

WITHIN = "within"
OUTSIDE = "outside"
AGREES = "direction only: agrees"
DISAGREES = "direction only: disagrees"
NOT_COMPUTED = "not computed"
VERDICTS = (WITHIN, OUTSIDE, AGREES, DISAGREES, NOT_COMPUTED)


@dataclass(frozen=True)
class Claim:
    """One number a paper reports, and how to compute ours from an experiment's table.

    label : what is compared, as it reads in the report ("mean ratio, all arrivals at 0").
    paper : the paper's number (None for a direction-only claim whose paper states no number).
    ours : ``table -> float``: our number from the experiment's tidy table (NaN if it cannot be computed).
    kind : ``"value"`` or ``"direction"`` (see the module docstring).
    abs_tol, rel_tol : the tolerance of a value claim (>= 0).
    pivot, expect : a direction claim's pivot and, if ``paper`` is None, the side the paper claims.
    source : where the paper's number comes from (spec section, figure).
    note : why this tolerance, or what differs from the paper's setting.
    """

    label: str
    paper: float | None
    ours: Callable[[pd.DataFrame], float]
    kind: str = "value"
    abs_tol: float = 0.0
    rel_tol: float = 0.0
    pivot: float | None = None
    expect: str | None = None
    source: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("value", "direction"):
            raise ConfigError(f"claim {self.label!r}: kind={self.kind!r}; use 'value' or 'direction'")
        if not (self.abs_tol >= 0 and self.rel_tol >= 0):
            raise ConfigError(f"claim {self.label!r}: abs_tol={self.abs_tol!r} and rel_tol={self.rel_tol!r} "
                              f"must be >= 0")
        if self.kind == "value":
            if self.paper is None or not math.isfinite(self.paper):
                raise ConfigError(f"claim {self.label!r}: a value claim needs the paper's finite number")
            if self.pivot is not None or self.expect is not None:
                raise ConfigError(f"claim {self.label!r}: pivot/expect belong to direction claims")
        else:
            if self.pivot is None or not math.isfinite(self.pivot):
                raise ConfigError(f"claim {self.label!r}: a direction claim needs a finite pivot")
            if self.paper is None and self.expect not in ("above", "below"):
                raise ConfigError(f"claim {self.label!r}: without the paper's number, say expect='above' or "
                                  f"'below' the pivot")
            if self.paper is not None and self.paper == self.pivot:
                raise ConfigError(f"claim {self.label!r}: the paper's number {self.paper} is the pivot itself, "
                                  f"so it has no direction")

    @property
    def tolerance_text(self) -> str:
        """The tolerance as it reads in the report."""
        if self.kind == "direction":
            return f"side of {self.pivot:g}"
        parts = ([f"±{self.abs_tol:g}"] if self.abs_tol else []) + ([f"±{100 * self.rel_tol:g} %"] if self.rel_tol else [])
        return " + ".join(parts) or "exact"

    @property
    def paper_text(self) -> str:
        if self.paper is not None:
            return f"{self.paper:.6g}"
        return f"{'>' if self.expect == 'above' else '<'} {self.pivot:g}"

    def verdict(self, ours: float) -> str:
        """The verdict for our number ``ours`` (see the module docstring)."""
        return verdict(self, ours)


def verdict(claim: Claim, ours: float) -> str:
    """``within`` / ``outside`` for a value claim, ``direction only: agrees`` / ``disagrees`` for a direction
    claim, ``not computed`` when ``ours`` is NaN or None."""
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return NOT_COMPUTED
    ours = float(ours)
    if claim.kind == "value":
        tol = claim.abs_tol + claim.rel_tol * abs(claim.paper)
        return WITHIN if abs(ours - claim.paper) <= tol else OUTSIDE
    side = (1 if claim.paper > claim.pivot else -1) if claim.paper is not None else \
        (1 if claim.expect == "above" else -1)
    return AGREES if (ours - claim.pivot) * side > 0 else DISAGREES


@dataclass(frozen=True)
class Outcome:
    """A claim evaluated on a table: our number, the verdict, and why it was not computed (if so)."""

    claim: Claim
    ours: float
    verdict: str
    error: str = ""


def evaluate(claims, table: pd.DataFrame) -> list[Outcome]:
    """Every claim on ``table``. A claim whose ``ours`` raises a lookup or arithmetic error (a cell it needs is
    missing from a partial table) is ``not computed``, with the error kept in :attr:`Outcome.error`."""
    out = []
    for claim in claims:
        error = ""
        try:
            value = float(claim.ours(table)) if len(table) else math.nan
        except (KeyError, IndexError, ValueError, ZeroDivisionError) as e:
            value, error = math.nan, f"{type(e).__name__}: {e}"
        out.append(Outcome(claim, value, verdict(claim, value), error))
    return out
