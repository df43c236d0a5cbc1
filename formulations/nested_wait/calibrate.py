"""Calibrating WAIT and Nested WAIT for a trace and an instance: types or segments from the trace's lengths,
``(d0, d1)`` from the instance's step-time model, thresholds from eqs. (11)-(14) within its KV capacity.

The paper fits ``tau = d0 + d1 x tokens`` once, on GPU batches of one shape (spec §5a; its published constants
contradict its own results, erratum §8.1, and are not used). Here the fit is made on the batches the policy will
run: the fluid pipeline of the workload (per-stage occupancy proportional to ``lambda_j``, spread over the stages
when below one prompt per stage), scaled so that its KV ranges over ``(0, C]``, and priced by the instance's own
:class:`gpusched.perf.StepTimeModel`. The fit's MAPE and R^2 are reported with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import nnls

from gpusched.errors import ConfigError

from .fluid import FluidInstabilityError, PromptType, _count, _types, fluid_equilibrium
from .policy import NestedWaitScheduler, OutputLengthBins, WaitScheduler, _exact_type
from .segments import SegmentDesign, choose_nested_thresholds, continuation_ratios, equal_width_ends
from .thresholds import NoAdmissibleThresholdsError, choose_wait_thresholds

__all__ = ["IterationTimeFit", "pipeline_batch", "fit_iteration_time", "types_from_lengths", "segment_ends_for",
           "in_flight_cap", "calibrated_wait", "calibrated_nested_wait"]


@dataclass(frozen=True)
class IterationTimeFit:
    """Least-squares ``tau = d0 + d1 x tokens`` over ``tokens`` (KV tokens per batch) and ``times_s``."""

    d0_s: float
    d1_s_per_token: float
    mape: float
    r2: float
    tokens: tuple[int, ...]
    times_s: tuple[float, ...]


def pipeline_batch(types: Sequence[PromptType], occupancy: Sequence[float],
                   rng: np.random.Generator | None = None) -> tuple[list[int], list[int], int]:
    """One batch of the workload's pipelines: about ``occupancy[j]`` type-j prompts at every stage. An integer
    occupancy is exact; a fractional part is drawn per stage (Bernoulli, from ``rng``; rounded down without one),
    as a pipeline running below one prompt per stage holds a stage only part of the time. Returns (prefill lengths,
    decode contexts before the step, KV tokens ``sum (l + s)``)."""
    prefill, decode, tokens = [], [], 0
    for t, x in zip(_types(types), occupancy):
        if not x >= 0:
            raise ConfigError(f"occupancy {x!r} must be >= 0")
        whole, frac = int(x), x - int(x)
        extra = rng.random(t.stages) < frac if rng is not None and frac else np.zeros(t.stages, bool)
        for s in range(t.stages):
            k = whole + int(extra[s])
            if not k:
                continue
            tokens += k * (t.prefill_tokens + s)
            if s == 0:
                prefill += [t.prefill_tokens] * k
            else:
                decode += [t.prefill_tokens + s - 1] * k
    return prefill, decode, tokens


def fit_iteration_time(step_model, types: Sequence[PromptType], capacity_tokens: float, levels: int = 16,
                       samples: int = 8, seed: int = 0) -> IterationTimeFit:
    """Fit ``(d0, d1) >= 0`` (non-negative least squares) to ``step_model`` on pipeline batches of the workload:
    ``levels`` occupancies proportional to the rates whose mean KV spans ``(0, capacity_tokens]``, ``samples``
    batches each (:func:`pipeline_batch`, seeded). A compute-bound workload (prefill-heavy batches) has ``d0``
    near 0: the fixed weight read is hidden under the GEMMs."""
    types = _types(types)
    levels = _count("levels", levels, 2)
    samples = _count("samples", samples, 1)
    rng = np.random.default_rng(seed)
    total = sum(t.rate_per_s for t in types)
    share = [t.rate_per_s / total for t in types]
    per_unit = sum(s * t.kv_token_iterations for s, t in zip(share, types))  # mean KV tokens at occupancy 1
    xs, ys = [], []
    for i in range(1, levels + 1):
        scale = capacity_tokens * i / levels / per_unit
        for _ in range(samples):
            prefill, decode, tokens = pipeline_batch(types, [scale * s for s in share], rng)
            if tokens:
                xs.append(tokens)
                ys.append(float(step_model.step_time_s(prefill_lens=prefill, decode_contexts=decode)))
    if len(set(xs)) < 2:
        raise ConfigError(f"capacity {capacity_tokens} tokens leaves fewer than two distinct batch sizes to fit")
    x, y = np.array(xs, float), np.array(ys)
    (d0, d1), _ = nnls(np.stack([np.ones_like(x), x], axis=1), y)
    pred = d0 + d1 * x
    r2 = 1 - float(np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))
    return IterationTimeFit(float(d0), float(d1), float(np.mean(np.abs(pred - y) / y)), r2, tuple(xs), tuple(ys))


def types_from_lengths(prompt_tokens: Sequence[int], output_tokens: Sequence[int], rate_per_s: float,
                       max_types: int = 8):
    """Prompt types for WAIT from a length table: one per distinct (prompt, output) pair when there are at most
    ``max_types``, else ``max_types`` output-length bins (quantiles; a bin's type has the mean prompt, rounded up,
    and the bin's longest output, so its stages cover every member). Returns ``(types, type_of)``; ``type_of(seq)``
    maps an engine request to its type by its (known) lengths."""
    p, o = np.asarray(prompt_tokens, dtype=np.int64), np.asarray(output_tokens, dtype=np.int64)
    if p.size == 0 or p.size != o.size:
        raise ConfigError(f"need equally long, non-empty prompt/output arrays (got {p.size}, {o.size})")
    k = _count("max_types", max_types, 1)
    pairs, counts = np.unique(np.stack([p, o], axis=1), axis=0, return_counts=True)
    if len(pairs) <= k:
        types = [PromptType(int(a), int(b) - 1, rate_per_s * c / p.size, f"p{a}d{b - 1}")
                 for (a, b), c in zip(pairs, counts)]
        return types, _exact_type({(int(a), int(b)): j for j, (a, b) in enumerate(pairs)})
    edges = sorted(set(np.quantile(o, np.linspace(0, 1, k + 1))[1:-1].astype(np.int64).tolist()))
    upper = edges + [int(o.max())]
    bins = np.searchsorted(edges, o, side="left")
    types = []
    for b, top in enumerate(upper):
        mask = bins == b
        if not mask.any():
            continue
        types.append((b, PromptType(int(math.ceil(p[mask].mean())), int(top) - 1, rate_per_s * mask.sum() / p.size,
                                    f"out<={top}")))
    slot = {b: j for j, (b, _) in enumerate(types)}
    return [t for _, t in types], OutputLengthBins(edges, slot)


def segment_ends_for(output_tokens: Sequence[int], num_segments: int, cuts: str = "quantile") -> tuple[int, ...]:
    """Segment ends (decode stages) for a length table: ``"quantile"`` cuts at output-length quantiles,
    ``"equal"`` equal widths (the paper's real-data design); the last end covers the longest output."""
    o = np.asarray(output_tokens, dtype=np.int64) - 1
    L = _count("num_segments", num_segments, 1)
    top = int(o.max())
    if cuts == "equal":
        return equal_width_ends(max(top, 1), L)
    if cuts != "quantile":
        raise ConfigError(f"cuts = {cuts!r}; use 'quantile' or 'equal'")
    inner = np.quantile(o, np.linspace(0, 1, L + 1)[1:-1]).astype(np.int64).tolist() if L > 1 else []
    return tuple(sorted({int(x) for x in inner if x < top} | {top}))


def in_flight_cap(types: Sequence[PromptType], capacity_tokens: float, memory_pad_tokens: int = 0,
                  rule: str = "mean") -> int:
    """Prompts in flight whose KV fits ``C``: ``"mean"`` uses the fluid's average KV per resident prompt
    (``sum lambda w / sum lambda (l'+1)``), ``"peak"`` the largest final KV ``l + l'`` (never overflows)."""
    types = _types(types)
    if rule == "mean":
        per = sum(t.rate_per_s * t.kv_token_iterations for t in types) / sum(t.rate_per_s * t.stages for t in types)
    elif rule == "peak":
        per = max(t.peak_tokens for t in types)
    else:
        raise ConfigError(f"rule = {rule!r}; use 'mean' or 'peak'")
    return max(int(capacity_tokens // (per + memory_pad_tokens)), 1)


def _int_list(name: str, value) -> tuple[int, ...] | None:
    """A knob that is a list of integers, as Python gives it or as the command line does (``"3,2"``, ``3``)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),)
    if isinstance(value, str):
        parts = [p for p in value.replace(",", " ").split() if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"{name} = {value!r}; give whole numbers separated by commas, e.g. {name}=3,2") from None
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"{name} = {value!r}; give a list of whole numbers (on the command line: {name}=3,2)") from None


def _max_wait(value, fallback: bool, cohort_s: float) -> float | None:
    """The ``max_wait_s`` knob: ``"auto"`` = none when eq. (11)/(12) has a solution (the paper's regime), else the
    expected time to collect a cohort at the calibrated rates (``cohort_s``); a number; or None/"none"."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "off")):
        return None
    if isinstance(value, str):
        if value.lower() != "auto":
            raise ConfigError(f"max_wait_s = {value!r}; use 'auto', 'none' or a number of seconds >= 0")
        return cohort_s if fallback else None
    return float(value)


def _instance(context) -> tuple[object, float, int]:
    if context is None or context.trace is None or context.step_model is None or not context.num_kv_blocks:
        raise ConfigError("calibrating WAIT/Nested WAIT needs the run's trace, step model and KV capacity (a "
                          "BuildContext from simulate); otherwise build WaitScheduler/NestedWaitScheduler with "
                          "explicit thresholds")
    df = context.trace.df
    if len(df) == 0:
        raise ConfigError("the trace is empty: nothing to calibrate on")
    return df, float(context.num_kv_blocks * context.block_size_tokens), context.block_size_tokens


def _rate(df, rate_per_s) -> float:
    if rate_per_s is not None:
        return float(rate_per_s)
    span = float(df["arrival_time_s"].max() - df["arrival_time_s"].min())
    return len(df) / span if span > 0 else float(len(df))


def calibrated_wait(context, thresholds: Sequence[int] | None = None, max_types: int = 8, mode: str = "paper",
                    max_in_flight: int | None = None, strict: bool = True, min_slack_s: float = 0.0,
                    rate_per_s: float | None = None, name: str = "wait", max_wait_s: float | str | None = "auto",
                    drain: bool = True) -> WaitScheduler:
    """WAIT for the run in ``context`` (:class:`gpusched.registry.BuildContext`): types from the trace's lengths
    (known output lengths: the oracle), rates from its arrival rate (or ``rate_per_s``), ``(d0, d1)`` fitted to the
    instance's step model, and the least thresholds of eq. (11) with the block padding (``strict`` slack). When
    none is admissible (one prompt per stage already exceeds ``C``: long outputs) it falls back to the paper's
    experimental form: per-stage caps ``ceil(n*_j)`` with an in-flight cap filling ``C`` on average; the choice
    and the reason are in ``scheduler.calibration``. ``max_wait_s``: see :mod:`.policy` (``"auto"``: only in the
    fallback, the longest expected cohort time ``max_j n_j / lambda_j``). ``drain``: the thresholds are dropped
    once the last request arrived (False: the paper's rule to the end; held requests are reported unfinished).
    ``name``: the scheduler's reported name."""
    thresholds = _int_list("thresholds", thresholds)
    df, cap, bs = _instance(context)
    rate = _rate(df, rate_per_s)
    types, type_of = types_from_lengths(df["prompt_tokens"], df["output_tokens"], rate, max_types)
    fit = fit_iteration_time(context.step_model, types, cap)
    info = {"types": types, "d0_s": fit.d0_s, "d1_s_per_token": fit.d1_s_per_token, "fit_mape": fit.mape,
            "capacity_tokens": cap, "rate_per_s": rate}
    if thresholds is None:
        try:
            check = choose_wait_thresholds(types, fit.d0_s, fit.d1_s_per_token, cap, strict, min_slack_s, bs - 1)
            thresholds, info["rule"] = check.thresholds, f"eq. (11), least integers ({check.regime})"
        except NoAdmissibleThresholdsError as err:
            thresholds = _fluid_caps(types, fit)
            if max_in_flight is None:
                max_in_flight = in_flight_cap(types, cap, bs - 1)
            info["rule"], info["reason"] = "fallback: ceil(n*) per stage + in-flight cap", str(err)
    fallback = "reason" in info
    wait_s = _max_wait(max_wait_s, fallback, max(nj / t.rate_per_s for nj, t in zip(thresholds, types)))
    last = float(df["arrival_time_s"].max()) if drain else None
    sched = WaitScheduler(types, thresholds, type_of, mode, max_in_flight, last, name, wait_s)
    sched.calibration = {**info, "thresholds": sched.thresholds, "max_in_flight": sched.max_in_flight,
                         "max_wait_s": sched.max_wait_s}
    return sched


def _fluid_caps(types, fit) -> list[int]:
    try:
        eq = fluid_equilibrium(types, fit.d0_s, fit.d1_s_per_token)
        return [max(1, math.ceil(x)) for x in eq.per_stage]
    except FluidInstabilityError:
        return [1] * len(types)


def calibrated_nested_wait(context, thresholds: Sequence[int] | None = None,
                           segment_ends: Sequence[int] | None = None, num_segments: int = 4, cuts: str = "quantile",
                           prefill: str | float = "mean", mode: str = "paper", max_in_flight: int | None = None,
                           horizon_s: float | None = None, delta: float | None = None, eta: float = 0.05,
                           rate_per_s: float | None = None, name: str = "nested-wait",
                           max_wait_s: float | str | None = "auto", drain: bool = True) -> NestedWaitScheduler:
    """Nested WAIT for the run in ``context``: segments cut from the trace's output lengths (``cuts``,
    ``num_segments``, or ``segment_ends``), the segment-wise prefill statistic ``prefill`` (the appendix's
    ``"max"`` bound, or ``"mean"``), ``(d0, d1)`` fitted to the step model on the known-length pipeline of the same
    lengths, the least thresholds of (12) and, with ``horizon_s`` and ``delta``, the buffer of (14). When none fits
    ``C``: the experiments' form, ``n_1 = ceil(Lambda_1 DeltaT*)``, ``n_k = ceil(q_k n_(k-1))`` with
    ``q_k = min(p_k + eta, 0.99)``, and an in-flight cap filling ``C`` on average (``scheduler.calibration``).
    ``max_wait_s`` (``"auto"``: only in that fallback, ``n_1 / Lambda_1``) and ``drain``: as :func:`calibrated_wait`."""
    thresholds = _int_list("thresholds", thresholds)
    segment_ends = _int_list("segment_ends", segment_ends)
    if (horizon_s is None) != (delta is None):
        raise ConfigError(f"horizon_s = {horizon_s!r}, delta = {delta!r}: give both (zeta T in seconds and the "
                          f"overflow probability) to size the safety buffer of eq. (14), or neither")
    df, cap, bs = _instance(context)
    rate = _rate(df, rate_per_s)
    ends = tuple(segment_ends) if segment_ends is not None else segment_ends_for(df["output_tokens"], num_segments,
                                                                                 cuts)
    design = SegmentDesign.from_lengths(df["prompt_tokens"], df["output_tokens"], rate, ends, prefill)
    types, _ = types_from_lengths(df["prompt_tokens"], df["output_tokens"], rate, max_types=16)
    fit = fit_iteration_time(context.step_model, types, cap)
    info = {"design": design, "d0_s": fit.d0_s, "d1_s_per_token": fit.d1_s_per_token, "fit_mape": fit.mape,
            "capacity_tokens": cap, "rate_per_s": rate}
    if thresholds is None:
        try:
            check = choose_nested_thresholds(design, fit.d0_s, fit.d1_s_per_token, cap, horizon_s, delta)
            thresholds, info["rule"] = check.thresholds, "eqs. (12)-(14), least integers"
        except NoAdmissibleThresholdsError as err:
            try:
                dt = fluid_equilibrium(types, fit.d0_s, fit.d1_s_per_token).iteration_s
            except FluidInstabilityError:
                dt = fit.d0_s
            n = [max(1, math.ceil(design.reach_rates_per_s[0] * dt))]
            for q in continuation_ratios(design, eta):
                n.append(max(1, math.ceil(q * n[-1])))
            thresholds = n
            if max_in_flight is None:
                max_in_flight = in_flight_cap(types, cap, bs - 1)
            info["rule"], info["reason"] = "fallback: experiments' ratio rule + in-flight cap", str(err)
    fallback = "reason" in info
    wait_s = _max_wait(max_wait_s, fallback, _int_list("thresholds", thresholds)[0] / design.reach_rates_per_s[0])
    last = float(df["arrival_time_s"].max()) if drain else None
    sched = NestedWaitScheduler(design, thresholds, mode, max_in_flight, last, name, wait_s)
    sched.calibration = {**info, "thresholds": sched.thresholds, "max_in_flight": sched.max_in_flight,
                         "max_wait_s": sched.max_wait_s}
    return sched
