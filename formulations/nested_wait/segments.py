"""Nested WAIT's segments, threshold conditions (eqs. 12-14) and chooser (spec ``shared/papers/nested_wait.md`` §4).

Output lengths are unknown at arrival. The decode stages are cut into segments at ``r_1 < r_2 < ... < r_L``:
segment 1 covers stages ``0 .. r_1``, segment ``k >= 2`` the interior stages ``r_{k-1}+1 .. r_k``. A prompt whose
output ends inside segment k completes there; a survivor of segment ``k-1`` waits, KV resident, in the boundary
queue of segment k (in the engine: at stage ``r_{k-1} + 1``, the segment's first stage). One integer threshold
``n_k`` per segment is both the per-stage cap inside segment k and the boundary count that starts it.

With ``Lambda_k`` the rate of prompts that reach segment k and ``p_k = Lambda_k / Lambda_{k-1}`` (k >= 2):

    (12)  d0 + d1 M^pi < n_1 / Lambda_1,     p_k < n_k / n_{k-1} < 1   (k >= 2)
    (13)  M^pi = sum_k n_k (l_k + sbar_k) delta_k,   delta_1 = r_1 + 1, sbar_1 = r_1 / 2,
                                                      delta_k = r_k - r_{k-1}, sbar_k = (r_{k-1} + 1 + r_k) / 2
    (14)  C >= M_req = M^pi + sum_{k>=2} (l_k + r_{k-1}) (n_k + ln(m (1 + zeta T / d0) / delta) / theta_k)

``theta_k > 0`` is the root of ``-theta n_k + n_{k-1} ln(1 - p_k + p_k e^theta) = 0`` (:func:`boundary_theta`).
In the main text every type has the same prefill ``l``; the appendix's segment design (the "Extensions") allows
many output lengths grouped into L segments and a segment-wise prefill upper bound ``lbar_k`` in place of ``l``
(:class:`SegmentDesign`, with the statistic a parameter: the appendix's "max", or our "mean").

The experiments' in-flight cap rules (spec §5a, tests T4 and T8) are :func:`split_in_flight_cap` and
:func:`continuation_ratios`.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import brentq

from gpusched.errors import ConfigError

from .fluid import PromptType, _count, _finite, _time_model, _types
from .thresholds import REL_TOL, NoAdmissibleThresholdsError, _thresholds

__all__ = ["SegmentDesign", "equal_width_ends", "nested_memory", "boundary_theta", "hoeffding_theta",
           "safety_buffer_prompts", "NestedThresholdCheck", "check_nested_thresholds", "choose_nested_thresholds",
           "split_in_flight_cap", "continuation_ratios"]


@dataclass(frozen=True)
class SegmentDesign:
    """Segments of the decode stages and the traffic that reaches them.

    ends : ``r_k``, last stage of segment k, strictly increasing, ``r_1 >= 0``.
    rates_per_s : ``lambda'_k`` (>= 0): rate of prompts whose output ends in segment k, i.e. whose ``l'`` lies in
        ``(r_{k-1}, r_k]`` (``[0, r_1]`` for k = 1). The last must be > 0 (else drop the segment).
    prefill_tokens : ``l_k`` charged to the prompts present in segment k (the main text's common ``l``, or the
        appendix's segment-wise bound ``lbar_k``); one int for all segments or one per segment.
    """

    ends: tuple[int, ...]
    rates_per_s: tuple[float, ...]
    prefill_tokens: tuple[int, ...]

    def __post_init__(self):
        ends = tuple(_count(f"ends[{k}]", r, 0) for k, r in enumerate(self.ends))
        if not ends:
            raise ConfigError("a segment design needs at least one segment end")
        if any(b <= a for a, b in zip(ends, ends[1:])):
            raise ConfigError(f"segment ends {ends} must be strictly increasing")
        rates = tuple(_finite(f"rates_per_s[{k}]", x) for k, x in enumerate(self.rates_per_s))
        if len(rates) != len(ends):
            raise ConfigError(f"{len(rates)} rates for {len(ends)} segments; give one rate per segment")
        if rates[-1] <= 0:
            raise ConfigError(f"the last segment's rate is {rates[-1]}: no prompt reaches it; drop the segment")
        pre = self.prefill_tokens
        pre = (pre,) * len(ends) if isinstance(pre, (int, np.integer)) else tuple(pre)
        if len(pre) != len(ends):
            raise ConfigError(f"{len(pre)} prefill lengths for {len(ends)} segments; give one or one per segment")
        pre = tuple(_count(f"prefill_tokens[{k}]", x, 1) for k, x in enumerate(pre))
        object.__setattr__(self, "ends", ends)
        object.__setattr__(self, "rates_per_s", rates)
        object.__setattr__(self, "prefill_tokens", pre)

    # -------------------------------------------------------------- construction
    @classmethod
    def from_types(cls, types: Sequence[PromptType], ends: Sequence[int] | None = None,
                   prefill: str = "max") -> "SegmentDesign":
        """Group prompt types by output length: one segment per distinct ``l'`` by default, or the segments
        ending at ``ends`` (every ``l'`` must be <= the last end). ``prefill``: statistic of the prefill lengths of
        the types present in a segment (``"max"``: the appendix's upper bound; ``"mean"``: rate-weighted)."""
        types = _types(types)
        dec = np.array([t.decode_tokens for t in types])
        pre = np.array([t.prefill_tokens for t in types])
        rates = np.array([t.rate_per_s for t in types])
        return cls._build(dec, pre, rates, sorted(set(dec.tolist())) if ends is None else ends, prefill)

    @classmethod
    def from_lengths(cls, prompt_tokens: Sequence[int], output_tokens: Sequence[int], rate_per_s: float,
                     ends: Sequence[int], prefill: str | float = "max") -> "SegmentDesign":
        """From a length table (a trace): request i has ``l'_i = output_tokens[i] - 1`` decode stages after its
        prefill (the engine's prefill step samples the first token). ``rate_per_s``: total arrival rate.
        ``prefill``: ``"max"``, ``"mean"`` or a quantile in (0, 1) of the prompts present in each segment."""
        out = np.asarray(output_tokens)
        if out.size == 0:
            raise ConfigError("an empty length table has no segments")
        if out.min() < 1:
            raise ConfigError(f"output_tokens has a value {out.min()} < 1")
        total = _finite("rate_per_s", rate_per_s, strict=True)
        return cls._build(out - 1, np.asarray(prompt_tokens), np.full(out.size, total / out.size), ends, prefill)

    @classmethod
    def _build(cls, dec, pre, rates, ends, prefill) -> "SegmentDesign":
        ends = tuple(int(r) for r in ends)
        if dec.max() > ends[-1]:
            raise ConfigError(f"an output length of {int(dec.max())} decode stages exceeds the last segment end "
                              f"{ends[-1]}; extend the last segment")
        lo = (-1,) + ends[:-1]
        seg_rates, seg_pre = [], []
        for a, b in zip(lo, ends):
            seg_rates.append(float(rates[(dec > a) & (dec <= b)].sum()))
            present = dec > a
            if not present.any():
                seg_pre.append(1)
                continue
            p, w = pre[present], rates[present]
            if prefill == "max":
                seg_pre.append(int(p.max()))
            elif prefill == "mean":
                seg_pre.append(int(math.ceil(np.average(p, weights=w))))
            elif isinstance(prefill, float) and 0 < prefill < 1:
                seg_pre.append(int(math.ceil(np.quantile(p, prefill))))
            else:
                raise ConfigError(f"prefill = {prefill!r}; use 'max', 'mean' or a quantile in (0, 1)")
        return cls(ends, tuple(seg_rates), tuple(seg_pre))

    # -------------------------------------------------------------- derived quantities
    @property
    def num_segments(self) -> int:
        return len(self.ends)

    @property
    def reach_rates_per_s(self) -> tuple[float, ...]:
        """``Lambda_k``: rate of prompts reaching segment k (``Lambda_1`` = total rate)."""
        return tuple(float(x) for x in np.cumsum(self.rates_per_s[::-1])[::-1])

    @property
    def continuation(self) -> tuple[float, ...]:
        """``p_k = Lambda_k / Lambda_{k-1}`` for k = 2..L (L - 1 values)."""
        lam = self.reach_rates_per_s
        return tuple(b / a for a, b in zip(lam, lam[1:]))

    @property
    def stage_counts(self) -> tuple[int, ...]:
        """``delta_k``: stages of segment k (``r_1 + 1`` for the first)."""
        return (self.ends[0] + 1,) + tuple(b - a for a, b in zip(self.ends, self.ends[1:]))

    @property
    def first_stages(self) -> tuple[int, ...]:
        """First stage of each segment: 0, then ``r_{k-1} + 1`` (where segment k's boundary queue sits)."""
        return (0,) + tuple(r + 1 for r in self.ends[:-1])

    @property
    def mean_stages(self) -> tuple[float, ...]:
        """``sbar_k`` of eq. (13): the mean stage of segment k."""
        return tuple((a + b) / 2 for a, b in zip(self.first_stages, self.ends))

    def segment_of_stage(self, stage: int) -> int:
        """0-based segment index of ``stage``; stages past the last end belong to the last segment."""
        return min(bisect.bisect_left(self.ends, stage), len(self.ends) - 1)


def equal_width_ends(max_decode_tokens: int, num_segments: int) -> tuple[int, ...]:
    """``L`` equal-width segments over decode stages ``0 .. max_decode_tokens`` (the real-data design, spec §5a)."""
    top = _count("max_decode_tokens", max_decode_tokens, 1)
    L = _count("num_segments", num_segments, 1)
    if L > top + 1:
        raise ConfigError(f"{L} segments over {top + 1} stages: each segment needs at least one stage")
    ends = sorted({int(round(top * (k + 1) / L)) for k in range(L)})
    return tuple(ends)


def nested_memory(design: SegmentDesign, thresholds: Sequence[int]) -> float:
    """``M^pi`` of eq. (13): ``sum_k n_k (l_k + sbar_k) delta_k`` KV tokens."""
    n = _thresholds(thresholds, design.num_segments)
    return float(sum(nk * (lk + s) * d for nk, lk, s, d in
                     zip(n, design.prefill_tokens, design.mean_stages, design.stage_counts)))


def boundary_theta(n_prev: int, n_k: int, p: float) -> float:
    """``theta_k``: the positive root of ``-theta n_k + n_prev ln(1 - p + p e^theta) = 0`` (eq. 14).

    It is the exponent of the boundary queue's tail: each of ``n_prev`` prompts of the upstream cohort survives
    with probability ``p`` and ``n_k`` leave per batch. A positive root exists iff ``p n_prev < n_k < n_prev`` and
    ``0 < p``; for ``p = 0`` (nothing survives) or ``n_k >= n_prev`` (the queue cannot grow) the queue carries no
    residual and ``inf`` is returned; ``n_k <= p n_prev`` (no negative drift) raises :class:`ConfigError`.
    """
    n_prev = _count("n_prev", n_prev, 1)
    n_k = _count("n_k", n_k, 1)
    p = _finite("p", p)
    if p > 1:
        raise ConfigError(f"p = {p} is a probability; it must be in [0, 1]")
    if p == 0 or n_k >= n_prev:
        return math.inf
    if n_k <= p * n_prev * (1 + REL_TOL):
        raise ConfigError(f"n_k = {n_k} <= p n_prev = {p * n_prev:.6g}: the boundary queue has no negative drift "
                          f"(eq. 12 needs p < n_k/n_prev), so theta_k does not exist")

    def f(theta: float) -> float:
        return -theta * n_k + n_prev * math.log1p(p * math.expm1(theta))

    lo = hoeffding_theta(n_prev, n_k, p)  # f < 0 on (0, lo]: Hoeffding's lemma
    hi = max(2 * lo, 1.0)
    while f(hi) <= 0:
        hi *= 2
    return float(brentq(f, lo, hi, xtol=1e-14, rtol=1e-14))


def hoeffding_theta(n_prev: int, n_k: int, p: float) -> float:
    """``8 (n_k - p n_prev) / n_prev``: Hoeffding's lower bound on :func:`boundary_theta` (spec §4)."""
    return 8 * (n_k - p * n_prev) / n_prev


def safety_buffer_prompts(theta: float, num_segments: int, horizon_s: float, d0_s: float, delta: float) -> float:
    """``ln(m (1 + zeta T / d0) / delta) / theta``: the carried-over survivors one boundary must hold (eq. 14).

    ``1 + zeta T / d0`` bounds the batches in the horizon, ``m`` is the union bound over boundaries, ``delta`` the
    overflow probability allowed over the whole horizon.
    """
    m = _count("num_segments", num_segments, 1)
    T = _finite("horizon_s", horizon_s, strict=True)
    d0 = _finite("d0_s", d0_s, strict=True)
    delta = _finite("delta", delta, strict=True)
    if delta >= 1:
        raise ConfigError(f"delta = {delta} is a probability of overflow; it must be in (0, 1)")
    theta = float(theta)
    if not theta > 0:
        raise ConfigError(f"theta = {theta!r} must be > 0")
    return math.log(m * (1 + T / d0) / delta) / theta


@dataclass(frozen=True)
class NestedThresholdCheck:
    """Eqs. (12)-(14) evaluated for integer thresholds ``n`` (one per segment).

    memory_tokens : ``M^pi`` (13); iteration_s : ``d0 + d1 M^pi``; entry_slack_s : ``n_1/Lambda_1 - DeltaT``;
    ratios : ``n_k / n_{k-1}`` and continuation : ``p_k`` (k >= 2); theta : ``theta_k`` (inf when no residual);
    buffer_tokens : the sum in (14) (None without a horizon and delta); required_memory_tokens : ``M_req``
    (``M^pi`` when the buffer is not sized); capacity_tokens : ``C`` or None.
    """

    thresholds: tuple[int, ...]
    memory_tokens: float
    iteration_s: float
    entry_slack_s: float
    ratios: tuple[float, ...]
    continuation: tuple[float, ...]
    theta: tuple[float | None, ...]
    buffer_tokens: float | None
    required_memory_tokens: float
    capacity_tokens: float | None

    @property
    def entry_ok(self) -> bool:
        """First inequality of (12), strict."""
        return self.entry_slack_s > REL_TOL * self.iteration_s

    @property
    def drift_ok(self) -> tuple[bool, ...]:
        """Second inequality of (12) per boundary, ``p_k < n_k/n_{k-1} < 1``, strict."""
        return tuple(p * (1 + REL_TOL) < r < 1 for r, p in zip(self.ratios, self.continuation))

    @property
    def memory_ok(self) -> bool | None:
        """(14) (or ``M^pi <= C`` when the buffer is not sized); None without a capacity."""
        if self.capacity_tokens is None:
            return None
        return self.required_memory_tokens <= self.capacity_tokens * (1 + REL_TOL)

    @property
    def admissible(self) -> bool:
        return self.entry_ok and all(self.drift_ok) and self.memory_ok is not False

    @property
    def failures(self) -> tuple[str, ...]:
        out = []
        if not self.entry_ok:
            out.append(f"entry: DeltaT = {self.iteration_s:.6g} s is not < n_1/Lambda_1 "
                       f"(slack {self.entry_slack_s:.3g} s)")
        for k, (ok, r, p) in enumerate(zip(self.drift_ok, self.ratios, self.continuation), start=2):
            if not ok:
                out.append(f"boundary {k}: n_k/n_(k-1) = {r:.4g} is not strictly between p_k = {p:.4g} and 1")
        if self.memory_ok is False:
            out.append(f"memory: M_req = {self.required_memory_tokens:.6g} tokens > C = {self.capacity_tokens:.6g}")
        return tuple(out)


def check_nested_thresholds(design: SegmentDesign, thresholds: Sequence[int], d0_s: float, d1_s_per_token: float,
                            capacity_tokens: float | None = None, horizon_s: float | None = None,
                            delta: float | None = None) -> NestedThresholdCheck:
    """Evaluate (12), (13) and, when ``horizon_s`` (zeta T) and ``delta`` are given, the buffer of (14).

    A boundary whose theta does not exist (drift fails) gets ``theta = None`` and makes the check fail; a
    boundary without residual (``theta = inf``) adds only ``(l_k + r_{k-1}) n_k``.
    """
    n = _thresholds(thresholds, design.num_segments)
    d0, d1 = _time_model(d0_s, d1_s_per_token)
    cap = None if capacity_tokens is None else _finite("capacity_tokens", capacity_tokens, strict=True)
    memory = nested_memory(design, n)
    dt = d0 + d1 * memory
    p = design.continuation
    thetas: list[float | None] = []
    for k in range(1, design.num_segments):
        try:
            thetas.append(boundary_theta(n[k - 1], n[k], p[k - 1]))
        except ConfigError:
            thetas.append(None)
    buffer = None
    if (horizon_s is None) != (delta is None):
        raise ConfigError("give both horizon_s (zeta T) and delta to size the safety buffer of eq. (14), or neither")
    if horizon_s is not None:
        buffer = 0.0
        for k, th in enumerate(thetas, start=1):
            carry = design.prefill_tokens[k] + design.ends[k - 1]  # (l + l'_{k-1}) tokens per survivor
            log_term = 0.0 if th is None or math.isinf(th) else safety_buffer_prompts(
                th, design.num_segments, horizon_s, d0, delta)
            buffer += carry * (n[k] + log_term)
    required = memory + (buffer or 0.0)
    return NestedThresholdCheck(n, memory, dt, n[0] / design.reach_rates_per_s[0] - dt,
                                tuple(b / a for a, b in zip(n, n[1:])), p, tuple(thetas), buffer, required, cap)


def choose_nested_thresholds(design: SegmentDesign, d0_s: float, d1_s_per_token: float, capacity_tokens: float,
                             horizon_s: float | None = None, delta: float | None = None,
                             ratio_margin: float = 0.0) -> NestedThresholdCheck:
    """The componentwise-smallest integer thresholds satisfying (12), hence those of least ``M^pi`` (13); then (14).

    Each condition of (12) reads ``n_i >= f(n)`` with ``f`` non-decreasing: ``n_1 >= floor(Lambda_1 DeltaT(n)) + 1``,
    ``n_k >= floor((p_k + ratio_margin) n_{k-1}) + 1`` and ``n_{k-1} >= n_k + 1``; iterating from ``n = 1`` climbs
    to the least fixed point, and every admissible vector lies above each iterate, so an iterate whose ``M^pi``
    exceeds ``C`` proves that none exists. ``ratio_margin``: the experiments' ``eta`` (spec §5a), extra room
    above ``p_k``. The safety buffer of (14) is then sized for that vector (with ``horizon_s`` and ``delta``); a
    larger vector can only raise ``M^pi`` by more than any theta-buffer it saves in the cases we met, but that is
    not guaranteed, so a failing (14) raises rather than searching further.
    """
    d0, d1 = _time_model(d0_s, d1_s_per_token)
    cap = _finite("capacity_tokens", capacity_tokens, strict=True)
    eta = _finite("ratio_margin", ratio_margin)
    p = design.continuation
    lam1 = design.reach_rates_per_s[0]
    n = [1] * design.num_segments
    while True:
        memory = nested_memory(design, n)
        if memory > cap * (1 + REL_TOL):
            raise NoAdmissibleThresholdsError(
                f"no admissible Nested WAIT thresholds: (12) already needs n >= {tuple(n)} with M^pi = "
                f"{memory:.6g} tokens > C = {cap:.6g} (eq. 13; {design.num_segments} segments need "
                f"n_1 > n_2 > ... >= 1)")
        new = list(n)
        new[0] = max(new[0], math.floor(lam1 * (d0 + d1 * memory) * (1 + REL_TOL)) + 1)
        for k in range(1, len(n)):
            new[k] = max(new[k], math.floor((p[k - 1] + eta) * new[k - 1] * (1 + REL_TOL)) + 1)
        for k in range(len(n) - 1, 0, -1):
            new[k - 1] = max(new[k - 1], new[k] + 1)
        if new == n:
            break
        n = new
    check = check_nested_thresholds(design, n, d0, d1, cap, horizon_s, delta)
    if not check.admissible:
        raise NoAdmissibleThresholdsError(f"the least thresholds {tuple(n)} satisfying (12) fail: "
                                          f"{'; '.join(check.failures)}")
    return check


def split_in_flight_cap(total: float, stage_counts: Sequence[int], ratios: Sequence[float]) -> tuple[tuple[float, ...],
                                                                                                    tuple[int, ...]]:
    """The experiments' split of a system-wide in-flight cap ``tl`` over segments (spec §5a; tests T4, T8).

    Per-stage levels ``n_k = n_1 prod_{r<k} q_r`` with the given ratios ``q``, scaled so that
    ``sum_k delta_k n_k = tl``. Returns (the per-stage levels ``n_k``, the segment caps ``B_k = delta_k n_k`` rounded
    to integers by largest remainder, so that they add up to ``tl`` when ``tl`` is an integer).
    """
    tl = _finite("total", total, strict=True)
    counts = tuple(_count(f"stage_counts[{k}]", d, 1) for k, d in enumerate(stage_counts))
    q = tuple(_finite(f"ratios[{k}]", r, strict=True) for k, r in enumerate(ratios))
    if len(q) != len(counts) - 1:
        raise ConfigError(f"{len(q)} ratios for {len(counts)} segments; give one ratio per boundary")
    levels = np.cumprod((1.0,) + q)
    n1 = tl / float(np.dot(counts, levels))
    n = tuple(float(n1 * x) for x in levels)
    caps = np.array([d * x for d, x in zip(counts, n)])
    rounded = np.floor(caps).astype(int)
    short = int(round(tl)) - int(rounded.sum()) if float(tl).is_integer() else 0
    for k in np.argsort(-(caps - rounded), kind="stable")[:max(short, 0)]:
        rounded[k] += 1
    return n, tuple(int(x) for x in rounded)


def continuation_ratios(design: SegmentDesign, eta: float = 0.05, cap: float = 0.99) -> tuple[float, ...]:
    """The real-data rule's ratios ``q_k = min(p_k + eta, cap)`` (spec §5a), one per boundary."""
    eta = _finite("eta", eta)
    cap = _finite("cap", cap, strict=True)
    return tuple(min(p + eta, cap) for p in design.continuation)
