"""Service-level indicators of the fluid plan: hard constraints and penalties (paper Sec. 5, spec §2.6).

Three SLIs, each either a constraint on the LP variables or a penalty subtracted from the objective
(Eq. (49)):

===================  ====================================================  ==========================================
SLI                  constraint                                            penalty
===================  ====================================================  ==========================================
prefill fairness     (43) ``max_{i,j} (x_i - x_j) <= eta_1``                (44) ``eta_1' max_{i,j} (x_i - x_j)``
decode fairness      (45) ``max_{i,j} (y_s,i - y_s,j) <= eta_2``            (46) ``eta_2' max_{i,j} (y_s,i - y_s,j)``
average TPOT         (47) ``TPOT(X) <= eta_3``                              (48) ``eta_3' TPOT(X)``
===================  ====================================================  ==========================================

with ``TPOT(X) = [tau (B-1) X + (B/gamma)(1-X)] / [(B-1) X + B (1-X)]`` and ``X = sum_i x_i``
(:meth:`FluidModel.tpot_s`). How each enters the LP [R] (spec §2.6): a max-difference constraint is the
pairwise rows ``x_i - x_j <= eta`` for all ``i != j``; its penalty is an auxiliary ``s >= x_i - x_j`` priced at
``eta'``; (47) is linear once multiplied by its positive denominator ``B - X``:
``tau (B-1) X + (B/gamma)(1-X) <= eta_3 (B - X)``; (48) is convex in ``X`` when ``tau > 1/gamma`` and is
handled by tangent cuts (:func:`~formulations.gate_and_route.solve_fluid`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .model import _number

__all__ = ["Sli"]


@dataclass(frozen=True)
class Sli:
    """The SLI rows and prices added to the fluid LP (spec §2.6); ``None`` / 0 leaves a row out.

    Attributes:
        prefill_fairness: ``eta_1 >= 0`` of (43), a bound on the spread of prefill occupancies ``x_i``
            (fraction of GPU time).
        decode_fairness: ``eta_2 >= 0`` of (45), a bound on the spread of solo decode occupancies ``y_s,i``
            (decode streams per GPU).
        tpot_cap_s: ``eta_3 > 0`` of (47), seconds: a cap on the average time per output token.
        prefill_fairness_price: ``eta_1' >= 0`` of (44), price units per GPU-second per unit of spread.
        decode_fairness_price: ``eta_2' >= 0`` of (46), same units.
        tpot_price: ``eta_3' >= 0`` of (48), price units per GPU-second per second of TPOT.
    """

    prefill_fairness: float | None = None
    decode_fairness: float | None = None
    tpot_cap_s: float | None = None
    prefill_fairness_price: float = 0.0
    decode_fairness_price: float = 0.0
    tpot_price: float = 0.0

    def __post_init__(self) -> None:
        for f in ("prefill_fairness", "decode_fairness"):
            if getattr(self, f) is not None:
                object.__setattr__(self, f, _number("Sli", f, getattr(self, f), positive=False))
        if self.tpot_cap_s is not None:
            object.__setattr__(self, "tpot_cap_s", _number("Sli", "tpot_cap_s", self.tpot_cap_s, positive=True))
        for f in ("prefill_fairness_price", "decode_fairness_price", "tpot_price"):
            object.__setattr__(self, f, _number("Sli", f, getattr(self, f), positive=False))

    @property
    def is_empty(self) -> bool:
        """True when no row and no price is set (the plain LP)."""
        return (self.prefill_fairness is None and self.decode_fairness is None and self.tpot_cap_s is None
                and not self.prefill_fairness_price and not self.decode_fairness_price and not self.tpot_price)

    @property
    def touches_decode_split(self) -> bool:
        """True when a row or price reads the per-class solo occupancies ``y_s,i`` ((45) or (46))."""
        return self.decode_fairness is not None or self.decode_fairness_price > 0
