"""The steady-state fluid LPs (40) and (42) with the SLI rows of Sec. 5, on HiGHS (spec §2.2, §2.3, §2.6).

Per class ``i`` the variables are per-GPU long-run averages: ``x_i`` (fraction of GPU time prefilling class
``i``), ``y_m,i`` / ``y_s,i`` (class-``i`` decode streams next to a prefill / on a non-prefilling GPU),
``q_p,i`` / ``q_d,i`` (requests waiting for prefill / in the decode buffer). Eq. (40):

    max   sum_i w_i (mu_m,i y_m,i + mu_s,i y_s,i)                          (bundled, Eq. (40))
    s.t.  sum_i x_i <= 1                                                   prefill capacity
          sum_i y_m,i <= (B - 1) sum_i x_i                                 mixed decode capacity
          sum_i y_s,i <= B (1 - sum_i x_i)                                 solo decode capacity
          lambda_i - theta_i q_p,i = mu_p,i x_i                            prefill flow balance
          mu_p,i x_i - theta_i q_d,i = mu_m,i y_m,i + mu_s,i y_s,i         decode flow balance
          x, y_m, y_s, q_p, q_d >= 0

Eq. (42), separate charging, has the same rows and the objective
``c_p (C/tau) sum x + (c_d/tau) sum y_m + c_d gamma sum y_s`` (written here per class as
``c_p P_i mu_p,i x_i + c_d D_i (mu_m,i y_m,i + mu_s,i y_s,i)``, which is the same number).

Choices [R] (spec §7):

* ``theta_i = 0``: ``q_p,i`` and ``q_d,i`` are fixed at 0 (they have no row to live in), so a class that
  cannot all be served makes the LP infeasible; the error says so.
* Non-unique decode split (§7.3): any split of decode tokens between the pools that keeps the aggregates is
  optimal, so the solver's vertex is arbitrary. By default (``decode_split="proportional"``) the result
  carries the canonical proportional split of spec B5: every class sends the same share
  ``g = gamma Y_s / (gamma Y_s + Y_m / tau)`` of its decode tokens to the solo pool. This keeps every row
  and the objective (``mu_s,i / mu_m,i = gamma tau`` for every class). When a decode-fairness row or price
  reads the per-class split, the LP's own split is kept (the result says ``decode_split="solver"``).
* SLIs (§2.6): with any SLI set, ``q_d = 0`` is added (the paper's standing assumption of Sec. 5) unless
  ``q_d_zero=False``; (48) is solved by Kelley's tangent cuts on the convex ``TPOT(X)`` (needs
  ``tau >= 1/gamma``), adding the tangent at the last plan's ``X`` until the cut LP's bound is within
  ``tpot_rel_gap`` of the plan's true objective; the result's ``gap`` is that distance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gpusched.errors import ConfigError, InfeasibleError
from gpusched.solve import solve_highs_lp

from .model import FluidModel
from .sli import Sli

__all__ = ["FluidSolution", "solve_fluid", "CHARGING", "mixed_gpu_count"]

CHARGING = ("bundled", "separate")
DECODE_SPLITS = ("proportional", "solver")
_M_TOL = 1e-9  # n X* within this of an integer counts as that integer in ceil (float noise, e.g. 15 * 8/15)


def mixed_gpu_count(mixed_fraction: float, num_gpus: int) -> int:
    """Static planning's ``M = ceil(n sum_i x_i*)`` (spec §2.4), with ``n X*`` within 1e-9 of an integer
    taken as that integer (so that float noise does not add a GPU)."""
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, np.integer)) or num_gpus < 1:
        raise ConfigError(f"num_gpus = {num_gpus!r} must be an integer >= 1")
    if not (0.0 <= mixed_fraction <= 1.0 + _M_TOL):
        raise ConfigError(f"mixed_fraction = {mixed_fraction!r} must be in [0, 1]")
    return min(int(num_gpus), max(0, math.ceil(num_gpus * mixed_fraction - _M_TOL)))


@dataclass(frozen=True)
class FluidSolution:
    """An optimal (or, for the TPOT penalty, near-optimal) fluid plan.

    Arrays have shape ``(I,)`` and are per GPU: ``x`` (fraction of GPU time), ``y_mixed``, ``y_solo``
    (decode streams), ``q_prefill``, ``q_decode`` (requests).

    Attributes:
        objective: the maximised value: revenue minus the SLI penalties of Eq. (49), per GPU-second.
        revenue: revenue under ``charging`` at this plan, price units per GPU-second.
        penalty: the subtracted SLI penalties (0 without prices).
        status: ``"optimal"``, or ``"feasible"`` if the TPOT cuts stopped at ``max_cuts``.
        gap: relative distance between the LP bound and ``objective`` (0.0 when optimal).
        solve_time_s: wall seconds in the solver, over all cut rounds.
        cut_rounds: LP solves (1 unless the TPOT penalty is set).
        decode_split: ``"proportional"`` or ``"solver"`` (module docstring).
    """

    model: FluidModel = field(repr=False)
    charging: str
    sli: Sli | None
    objective: float
    revenue: float
    penalty: float
    x: np.ndarray
    y_mixed: np.ndarray
    y_solo: np.ndarray
    q_prefill: np.ndarray
    q_decode: np.ndarray
    status: str
    gap: float
    solve_time_s: float
    cut_rounds: int
    decode_split: str

    @property
    def mixed_fraction(self) -> float:
        """``X = sum_i x_i``: the fraction of GPUs that prefill (and so the share planned as mixed)."""
        return float(self.x.sum())

    @property
    def prefill_throughput(self) -> np.ndarray:
        """``r_i = mu_p,i x_i`` (I,), prefills per GPU-second."""
        return self.model.mu_prefill * self.x

    @property
    def decode_throughput(self) -> np.ndarray:
        """``mu_m,i y_m,i + mu_s,i y_s,i`` (I,), decode completions per GPU-second."""
        return self.model.mu_mixed * self.y_mixed + self.model.mu_solo * self.y_solo

    @property
    def tpot_s(self) -> float:
        """``TPOT(X)`` of Eq. (47) at this plan, seconds."""
        return self.model.tpot_s(min(1.0, self.mixed_fraction))

    @property
    def solo_token_share(self) -> float:
        """Share of decode tokens served on solo slots, ``gamma Y_s / (gamma Y_s + Y_m / tau)`` (0 if none)."""
        m = self.model
        solo = m.gamma_tokens_per_s * self.y_solo.sum()
        total = solo + self.y_mixed.sum() / m.tau_mix_s
        return float(solo / total) if total > 0 else 0.0

    @property
    def p_solo(self) -> np.ndarray:
        """The SLI-aware router's ``p_s,i = mu_s,i y_s,i / (mu_m,i y_m,i + mu_s,i y_s,i)`` (I,), 1 where the
        denominator is 0 (spec §2.7)."""
        m = self.model
        solo = m.mu_solo * self.y_solo
        total = solo + m.mu_mixed * self.y_mixed
        safe = np.where(total > 0, total, 1.0)
        return np.where(total > 0, solo / safe, 1.0)

    def mixed_gpus(self, num_gpus: int) -> int:
        """Static planning's ``M = ceil(n X*)`` for a cluster of ``num_gpus`` GPUs (spec §2.4)."""
        return mixed_gpu_count(self.mixed_fraction, num_gpus)

    def revenue_under(self, charging: str) -> float:
        """Revenue of this plan per GPU-second if billed under ``charging`` (``"bundled"``/``"separate"``)."""
        return _revenue(self.model, _check_charging(charging), self.x, self.y_mixed, self.y_solo)


def _check_charging(charging: str) -> str:
    if charging not in CHARGING:
        raise ConfigError(f"charging = {charging!r}; choose one of {CHARGING}")
    return charging


def _revenue(model: FluidModel, charging: str, x, y_m, y_s) -> float:
    """Eq. (40)'s or (42)'s objective at a plan."""
    m = model
    decode_rate = m.mu_mixed * y_m + m.mu_solo * y_s
    if charging == "bundled":
        return float(m.weights @ decode_rate)
    return float(m.price_prefill * (m.prompt_tokens * m.mu_prefill) @ x
                 + m.price_decode * m.decode_tokens @ decode_rate)


class _Columns:
    """Column layout of the LP: five blocks of ``I`` plus the optional auxiliaries."""

    def __init__(self, I: int, fair_x: bool, fair_y: bool, tpot: bool):
        self.x, self.ym, self.ys, self.qp, self.qd = (np.arange(k * I, (k + 1) * I) for k in range(5))
        n = 5 * I
        self.s_x = n if fair_x else None
        n += fair_x
        self.s_y = n if fair_y else None
        n += fair_y
        self.t = n if tpot else None
        self.n = n + tpot


def _build(model: FluidModel, charging: str, sli: Sli, q_d_zero: bool, cuts: list[float]):
    """(c, A_ub, b_ub, A_eq, b_eq, bounds, columns) of the maximisation, with tangent cuts at ``cuts``."""
    m, I, B = model, model.num_classes, model.max_decodes
    col = _Columns(I, sli.prefill_fairness_price > 0, sli.decode_fairness_price > 0, sli.tpot_price > 0)
    c = np.zeros(col.n)
    if charging == "bundled":
        c[col.ym] = m.weights * m.mu_mixed
        c[col.ys] = m.weights * m.mu_solo
    else:
        c[col.x] = m.price_prefill * m.prompt_tokens * m.mu_prefill
        c[col.ym] = m.price_decode * m.decode_tokens * m.mu_mixed
        c[col.ys] = m.price_decode * m.decode_tokens * m.mu_solo
    rows, rhs = [], []

    def row(entries, b):
        r = np.zeros(col.n)
        for idx, v in entries:
            r[idx] += v
        rows.append(r)
        rhs.append(b)

    row([(col.x, 1.0)], 1.0)                                     # prefill capacity
    row([(col.ym, 1.0), (col.x, -(B - 1.0))], 0.0)               # mixed decode capacity
    row([(col.ys, 1.0), (col.x, float(B))], float(B))            # solo decode capacity
    pairs = [(i, j) for i in range(I) for j in range(I) if i != j]
    if sli.prefill_fairness is not None:                         # (43)
        for i, j in pairs:
            row([(col.x[i], 1.0), (col.x[j], -1.0)], sli.prefill_fairness)
    if col.s_x is not None:                                      # (44): s_x >= x_i - x_j
        c[col.s_x] = -sli.prefill_fairness_price
        for i, j in pairs:
            row([(col.x[i], 1.0), (col.x[j], -1.0), (col.s_x, -1.0)], 0.0)
    if sli.decode_fairness is not None:                          # (45)
        for i, j in pairs:
            row([(col.ys[i], 1.0), (col.ys[j], -1.0)], sli.decode_fairness)
    if col.s_y is not None:                                      # (46)
        c[col.s_y] = -sli.decode_fairness_price
        for i, j in pairs:
            row([(col.ys[i], 1.0), (col.ys[j], -1.0), (col.s_y, -1.0)], 0.0)
    if sli.tpot_cap_s is not None:                               # (47), times its denominator B - X > 0
        eta, tau, inv_g = sli.tpot_cap_s, m.tau_mix_s, 1.0 / m.gamma_tokens_per_s
        row([(col.x, tau * (B - 1) - B * inv_g + eta)], eta * B - B * inv_g)
    if col.t is not None:                                        # (48): t >= tangent of TPOT at each cut
        c[col.t] = -sli.tpot_price
        for X0 in cuts:
            slope = _tpot_slope(m, X0)
            row([(col.x, slope), (col.t, -1.0)], slope * X0 - m.tpot_s(X0))
    A_ub, b_ub = np.array(rows), np.array(rhs)

    A_eq = np.zeros((2 * I, col.n))
    b_eq = np.zeros(2 * I)
    for i in range(I):
        A_eq[i, col.x[i]] = m.mu_prefill[i]                      # prefill flow balance
        A_eq[i, col.qp[i]] = m.abandon_rates[i]
        b_eq[i] = m.arrival_rates[i]
        k = I + i                                                # decode flow balance
        A_eq[k, col.x[i]] = m.mu_prefill[i]
        A_eq[k, col.qd[i]] = -m.abandon_rates[i]
        A_eq[k, col.ym[i]] = -m.mu_mixed[i]
        A_eq[k, col.ys[i]] = -m.mu_solo[i]
    upper = np.full(col.n, np.inf)
    no_abandon = m.abandon_rates == 0
    upper[col.qp[no_abandon]] = 0.0
    upper[col.qd[no_abandon]] = 0.0
    if q_d_zero:
        upper[col.qd] = 0.0
    return c, A_ub, b_ub, A_eq, b_eq, (np.zeros(col.n), upper), col


def _penalty(model: FluidModel, sli: Sli, x: np.ndarray, y_s: np.ndarray) -> float:
    """The SLI penalties of Eq. (44), (46), (48) at a plan (0 without prices)."""
    penalty = 0.0
    if sli.prefill_fairness_price > 0:
        penalty += sli.prefill_fairness_price * float(x.max() - x.min())
    if sli.decode_fairness_price > 0:
        penalty += sli.decode_fairness_price * float(y_s.max() - y_s.min())
    if sli.tpot_price > 0:
        penalty += sli.tpot_price * model.tpot_s(min(1.0, float(x.sum())))
    return penalty


def _tpot_slope(model: FluidModel, X: float) -> float:
    """d TPOT / dX = B (B-1) (tau - 1/gamma) / (B - X)^2 (spec §2.6)."""
    B = model.max_decodes
    return B * (B - 1) * (model.tau_mix_s - 1.0 / model.gamma_tokens_per_s) / (B - X) ** 2


def _proportional_split(model: FluidModel, y_m: np.ndarray, y_s: np.ndarray):
    """The canonical split (spec B5): every class sends the share ``g`` of its decode tokens to solo slots."""
    m = model
    decode_rate = m.mu_mixed * y_m + m.mu_solo * y_s
    solo_tokens = m.gamma_tokens_per_s * y_s.sum()
    total_tokens = solo_tokens + y_m.sum() / m.tau_mix_s
    if total_tokens <= 0:
        return y_m, y_s
    g = solo_tokens / total_tokens
    return (1.0 - g) * decode_rate / m.mu_mixed, g * decode_rate / m.mu_solo


def solve_fluid(model: FluidModel, charging: str = "bundled", sli: Sli | None = None,
                q_d_zero: bool | None = None, decode_split: str = "proportional",
                time_limit_s: float = 10.0, tpot_rel_gap: float = 1e-7, max_cuts: int = 200) -> FluidSolution:
    """Solve the fluid LP (40) (``charging="bundled"``) or (42) (``"separate"``), with the SLIs of ``sli``.

    Args:
        model: the fluid model.
        charging: ``"bundled"`` (Eq. (40)) or ``"separate"`` (Eq. (42)).
        sli: SLI rows and prices (Eq. (43)-(49)); ``None`` for none.
        q_d_zero: add ``q_d,i = 0`` for every class; default: True when an SLI is set (Sec. 5's standing
            assumption), else False (the LP as printed; with Prop. 3.2's condition it has ``q_d* = 0`` anyway
            under bundled charging).
        decode_split: ``"proportional"`` (default) or ``"solver"`` (module docstring).
        time_limit_s: HiGHS time limit per LP solve, seconds.
        tpot_rel_gap: stop the TPOT-penalty cuts when the LP bound exceeds the plan's true objective by at
            most this, relative to ``max(1, |objective|)``; HiGHS's feasibility tolerance (1e-7) limits how far
            below 1e-7 it can get.
        max_cuts: at most this many cut rounds (the result is ``"feasible"`` with its gap if reached).

    Raises:
        ConfigError: bad arguments, or the TPOT penalty with ``tau < 1/gamma`` (then TPOT(X) is concave and
            the penalised problem is not a concave maximisation).
        InfeasibleError: no plan meets the rows (e.g. ``theta_i = 0`` with more class-``i`` load than can be
            served, or a TPOT cap below ``min(1/gamma, tau)``).
    """
    if not isinstance(model, FluidModel):
        raise ConfigError(f"model must be a FluidModel, got {type(model).__name__}")
    _check_charging(charging)
    if decode_split not in DECODE_SPLITS:
        raise ConfigError(f"decode_split = {decode_split!r}; choose one of {DECODE_SPLITS}")
    if sli is not None and not isinstance(sli, Sli):
        raise ConfigError(f"sli must be an Sli or None, got {type(sli).__name__}")
    sli_used = sli if sli is not None and not sli.is_empty else None
    sli = sli_used or Sli()
    if q_d_zero is None:
        q_d_zero = sli_used is not None
    if not (isinstance(tpot_rel_gap, (int, float)) and 0 < tpot_rel_gap < 1):
        raise ConfigError(f"tpot_rel_gap = {tpot_rel_gap!r} must be a number in (0, 1)")
    if isinstance(max_cuts, bool) or not isinstance(max_cuts, int) or max_cuts < 1:
        raise ConfigError(f"max_cuts = {max_cuts!r} must be an integer >= 1")
    tau, inv_gamma = model.tau_mix_s, 1.0 / model.gamma_tokens_per_s
    if sli.tpot_price > 0 and tau < inv_gamma:
        raise ConfigError(f"the TPOT penalty (48) needs tau_mix_s >= 1/gamma (TPOT(X) convex); got tau = {tau} s "
                          f"< 1/gamma = {inv_gamma} s. Use a TPOT cap (tpot_cap_s) instead")
    if sli.tpot_cap_s is not None and sli.tpot_cap_s < min(tau, inv_gamma):
        raise InfeasibleError(f"tpot_cap_s = {sli.tpot_cap_s} s is below the smallest average TPOT any plan "
                              f"reaches, min(tau, 1/gamma) = {min(tau, inv_gamma)} s; raise the cap")

    cuts = [0.0, 1.0] if sli.tpot_price > 0 else []
    total_time, rounds = 0.0, 0
    while True:
        c, A_ub, b_ub, A_eq, b_eq, bounds, col = _build(model, charging, sli, q_d_zero, cuts)
        try:
            res = solve_highs_lp(c, A_ub, b_ub, A_eq, b_eq, bounds=bounds, maximize=True,
                                 time_limit_s=time_limit_s)
        except InfeasibleError as err:
            starved = [i for i, cl in enumerate(model.classes) if cl.abandon_rate == 0]
            hint = (f" Classes {starved} have abandon_rate 0, so all their load must be served; give them "
                    f"abandon_rate > 0 or lower their arrival_rate." if starved else "")
            raise InfeasibleError(f"the fluid LP ({charging}) has no feasible plan: {err}.{hint}") from None
        total_time += res.solve_time_s
        rounds += 1
        v = res.x
        x, y_m, y_s = v[col.x].copy(), v[col.ym].copy(), v[col.ys].copy()
        X = min(1.0, float(x.sum()))
        revenue = _revenue(model, charging, x, y_m, y_s)
        penalty = _penalty(model, sli, x, y_s)
        objective = revenue - penalty
        # the LP with cuts is a relaxation of (48): its optimum bounds the true one from above
        gap = max(0.0, res.objective - objective) / max(abs(objective), 1.0) if col.t is not None else 0.0
        if col.t is None or gap <= tpot_rel_gap or rounds >= max_cuts:
            break
        cuts.append(X)
    status = "optimal" if gap <= tpot_rel_gap else "feasible"
    q_p, q_d = v[col.qp].copy(), v[col.qd].copy()
    split = "solver" if decode_split == "solver" or sli.touches_decode_split else "proportional"
    if split == "proportional":
        y_m, y_s = _proportional_split(model, y_m, y_s)
    return FluidSolution(model, charging, sli_used, objective, revenue, penalty, x, y_m, y_s, q_p, q_d, status,
                         gap, total_time, rounds, split)
