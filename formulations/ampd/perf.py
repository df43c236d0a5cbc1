"""AMPD's performance model (spec section 2.1): T_pre, T_dec and T_kv, built from any step-time model.

The paper's offline profiler yields three cost functions [P]:

* ``T_pre(l_hist, l_incr; θ)`` -- seconds to prefill ``l_incr`` new tokens over ``l_hist`` cached ones on a
  worker with parallel configuration θ (``l_hist = 0`` for an initial prefill);
* ``T_dec(b; θ)`` -- seconds of one decode iteration of a batch of ``b`` sequences;
* ``T_kv(l; θ_src, θ_dst)`` -- seconds to send the KV of ``l`` tokens between two workers: the Hockney
  α-β model ``α_net + l · kv_bytes_per_token / bandwidth``.

The paper fits a "piecewise α-β model" to profiled times without giving its breakpoints or form. Two
backends are offered, both built from a :class:`gpusched.perf.StepTimeModel` (roofline or profiled):

* :class:`StepTimes` (the spec's recommended [R]): every call is the step model itself,
  ``T_pre(h, m) = step_time_s([m], [], prefill_cached=[h])`` and ``T_dec = step_time_s([], contexts)``,
  memoised. T_dec takes the batch's total context (a strict refinement of the paper's ``T_dec(b)``; both
  shared step models depend on the contexts only through their sum, so ``(b, Σ context)`` loses nothing).
* :class:`PiecewiseAlphaBeta` (the paper's profiler, form [R]): least-squares fits, per range of new
  tokens (prefill) or of batch size (decode), of

      T_pre(h, m) = α + β_new m + β_hist h + β_attn m (h + m/2)      (fixed cost, GEMMs per new token,
                                                                       KV read per cached token, causal
                                                                       attention work)
      T_dec(b, C) = α + β_seq b + β_ctx C                             (C = Σ context of the batch)

  with non-negative coefficients (so the fit never gets faster with more work), sampled from the step
  model on a grid, with breakpoints placed by bisection where the source bends.
  :meth:`PiecewiseAlphaBeta.fit_error` measures it against the step model off the grid (rooflines: under
  1 % everywhere; the H100 profile: 2-7 % mean, the profile's own tables being jagged).

:class:`PerfModel` holds one backend per worker (any hashable key: a worker name, a TP degree) and the
links between workers, and answers the three functions; it is the cost model that
:func:`~formulations.ampd.routing.route_prefill` reads. ``T_kv`` of zero tokens is 0 (spec §2.3 [R]: no
history read for an initial prefill).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Hashable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
from scipy.optimize import nnls

from gpusched.errors import ConfigError
from gpusched.hardware import LinkSpec
from gpusched.perf import StepTimeModel

__all__ = ["AMPD_NETWORK_LINK", "WorkerTimes", "StepTimes", "PiecewiseAlphaBeta", "FitError", "PerfModel",
           "kv_transfer_time_s"]

AMPD_NETWORK_LINK = LinkSpec(bandwidth_bytes_per_s=25e9, latency_s=1e-3)
"""The paper's inter-server link as the spec reads it (§3.1, §2.1 [R]): InfiniBand quoted "200 GB/s", taken
as 200 Gb/s per NIC = 25 GB/s, and α_net = 1 ms."""

_CACHE_ENTRIES = 1 << 16  # memoised (h, m) pairs per worker: a run sees a few thousand distinct lengths


def _tokens(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0 (tokens), got {value!r}")
    return int(value)


def kv_transfer_time_s(tokens: int, kv_bytes_per_token: float, link: LinkSpec) -> float:
    """Hockney α-β time (s) to move the KV of ``tokens`` tokens over ``link``; 0 for 0 tokens."""
    tokens = _tokens("tokens", tokens)
    return 0.0 if tokens == 0 else link.transfer_time_s(tokens * kv_bytes_per_token)


@runtime_checkable
class WorkerTimes(Protocol):
    """T_pre and T_dec of one worker configuration θ."""

    def prefill_time_s(self, hist_tokens: int, incr_tokens: int) -> float:
        """Seconds to prefill ``incr_tokens`` new tokens over ``hist_tokens`` cached ones."""
        ...

    def decode_time_s(self, batch_size: int, context_tokens: int) -> float:
        """Seconds of one decode iteration of ``batch_size`` sequences whose contexts sum to
        ``context_tokens``."""
        ...


class StepTimes:
    """T_pre and T_dec read straight from a step-time model (memoised; see the module docstring)."""

    def __init__(self, step_model: StepTimeModel):
        if not isinstance(step_model, StepTimeModel):
            raise ConfigError(f"StepTimes needs a gpusched.perf.StepTimeModel, got {type(step_model).__name__}")
        self.step_model = step_model
        self._prefill = lru_cache(maxsize=_CACHE_ENTRIES)(self._prefill_uncached)

    def _prefill_uncached(self, hist_tokens: int, incr_tokens: int) -> float:
        if incr_tokens == 0:
            return 0.0
        return float(self.step_model.step_time_s([incr_tokens], [], prefill_cached=[hist_tokens]))

    def prefill_time_s(self, hist_tokens: int, incr_tokens: int) -> float:
        return self._prefill(_tokens("hist_tokens", hist_tokens), _tokens("incr_tokens", incr_tokens))

    def decode_time_s(self, batch_size: int, context_tokens: int) -> float:
        b, c = _tokens("batch_size", batch_size), _tokens("context_tokens", context_tokens)
        if b == 0:
            return 0.0
        shortcut = getattr(self.step_model, "decode_step_time_s", None)
        if shortcut is not None:
            return float(shortcut(b, c))
        base, extra = divmod(c, b)  # contexts as equal as integers allow: same sum, same mean
        return float(self.step_model.step_time_s([], [base + 1] * extra + [base] * (b - extra)))


@dataclass(frozen=True)
class FitError:
    """Relative error (%) of a fitted model against its source on off-grid points.

    ``prefill_mean_pct``/``prefill_max_pct`` over random (h, m); ``decode_*`` over random (b, C);
    ``num_points`` per function.
    """

    prefill_mean_pct: float
    prefill_max_pct: float
    decode_mean_pct: float
    decode_max_pct: float
    num_points: int


def _segments(breakpoints: Sequence[int], what: str) -> tuple[int, ...]:
    bp = tuple(int(b) for b in breakpoints)
    if len(bp) < 2 or bp[0] < 1 or any(b <= a for a, b in zip(bp, bp[1:])):
        raise ConfigError(f"{what} breakpoints {breakpoints!r} must be >= 2 strictly increasing ints >= 1")
    return bp


def _segment_of(bp: tuple[int, ...], x: float) -> int:
    """Index of the segment [bp[i], bp[i+1]] holding x (the first/last one outside the range)."""
    return min(max(int(np.searchsorted(bp, x, side="right")) - 1, 0), len(bp) - 2)


def _span(lo: int, hi: int, n: int) -> np.ndarray:
    return np.unique(np.rint(np.geomspace(lo, hi, n)).astype(np.int64))


def _piecewise(fit_segment, value_range, breakpoints, tolerance_pct, max_segments, what):
    """(breakpoints, coefficient rows): fixed ``breakpoints``, or bisection of ``value_range`` (see
    :meth:`PiecewiseAlphaBeta.fit`). ``fit_segment(lo, hi) -> (coefficients, max miss %)``."""
    if breakpoints is not None:
        bp = _segments(breakpoints, what)
        return bp, tuple(fit_segment(lo, hi)[0] for lo, hi in zip(bp, bp[1:]))
    lo, hi = _segments(value_range, what + "_range")
    if len(value_range) != 2:
        raise ConfigError(f"{what}_range must be a (low, high) pair, got {value_range!r}")
    fits = {(lo, hi): fit_segment(lo, hi)}
    final = set()  # segments whose split did not help: the miss is along the other axis, or noise
    while len(fits) < max_segments:
        splittable = [(err, seg) for seg, (_, err) in fits.items()
                      if err > tolerance_pct and seg[1] - seg[0] >= 2 and seg not in final]
        if not splittable:
            break
        err, (a, b) = max(splittable)
        mid = min(max(int(round(math.sqrt(a * b))), a + 1), b - 1)
        left, right = fit_segment(a, mid), fit_segment(mid, b)
        if min(left[1], right[1]) > 0.9 * err:
            final.add((a, b))
            continue
        del fits[(a, b)]
        fits[(a, mid)], fits[(mid, b)] = left, right
    segments = sorted(fits)
    return (tuple(a for a, _ in segments) + (segments[-1][1],), tuple(fits[seg][0] for seg in segments))


@dataclass(frozen=True)
class PiecewiseAlphaBeta:
    """Fitted T_pre and T_dec (form in the module docstring). Build it with :meth:`fit`.

    ``incr_breakpoints`` (tokens) delimit the prefill segments, ``batch_breakpoints`` the decode segments;
    ``prefill_coef[i]`` = (α, β_new, β_hist, β_attn) of prefill segment i, ``decode_coef[i]`` = (α, β_seq,
    β_ctx) of decode segment i, all >= 0 (seconds, seconds per token, seconds per token^2).
    Lengths outside the breakpoints use the nearest segment (linear extrapolation).
    """

    incr_breakpoints: tuple[int, ...]
    prefill_coef: tuple[tuple[float, float, float, float], ...]
    batch_breakpoints: tuple[int, ...]
    decode_coef: tuple[tuple[float, float, float], ...]

    def __post_init__(self):
        if len(self.prefill_coef) != len(self.incr_breakpoints) - 1 or \
                len(self.decode_coef) != len(self.batch_breakpoints) - 1:
            raise ConfigError("PiecewiseAlphaBeta: one coefficient row per segment between breakpoints")

    @staticmethod
    def _prefill_features(h, m):
        h, m = np.asarray(h, float), np.asarray(m, float)
        return np.column_stack([np.ones_like(m), m, h, m * (h + m / 2)])

    @staticmethod
    def _decode_features(b, c):
        b, c = np.asarray(b, float), np.asarray(c, float)
        return np.column_stack([np.ones_like(b), b, c])

    @classmethod
    def fit(cls, source: WorkerTimes | StepTimeModel, incr_range: tuple[int, int] = (1, 16384),
            hist_points: Sequence[int] = (0, 1024, 4096, 16384, 32768), batch_range: tuple[int, int] = (1, 256),
            context_points: Sequence[int] = (256, 1024, 4096, 8192), tolerance_pct: float = 1.0,
            max_segments: int = 24, samples_per_segment: int = 8,
            incr_breakpoints: Sequence[int] | None = None,
            batch_breakpoints: Sequence[int] | None = None) -> "PiecewiseAlphaBeta":
        """Fit to ``source``. Per prefill segment [lo, hi] of new tokens the samples are ``samples_per_segment``
        counts (geometric) x ``hist_points``; per decode segment, batch sizes x per-sequence ``context_points``.

        Breakpoints [R]: unless given, found by bisection -- start from one segment over ``incr_range``
        (``batch_range``) and split, at its geometric midpoint, the segment whose samples the fit misses most,
        while that miss exceeds ``tolerance_pct`` and there are fewer than ``max_segments``. This puts
        breakpoints where the source bends (a GEMM turning compute-bound, a profile's grid) on any GPU. A split
        after which *both* halves still miss by 90 % of the whole is undone and the segment kept: the miss is
        not localised in new tokens (it lies along the history or context axis, or is a profile's noise).
        Defaults span the H100 profile's measured range (16k new tokens over up to 32k cached, decode
        batches up to 256 at contexts up to 8k).
        """
        times = source if isinstance(source, WorkerTimes) else StepTimes(source)
        hs = [_tokens("hist_points", h) for h in hist_points]
        cs = [_tokens("context_points", c) for c in context_points]
        if not hs or not cs or samples_per_segment < 2:
            raise ConfigError("fit needs hist_points, context_points and samples_per_segment >= 2")
        if not (isinstance(tolerance_pct, (int, float)) and tolerance_pct > 0) or max_segments < 1:
            raise ConfigError(f"fit needs tolerance_pct > 0 and max_segments >= 1, got {tolerance_pct!r}, "
                              f"{max_segments!r}")

        def prefill_segment(lo, hi):
            pts = [(h, int(m)) for m in _span(lo, hi, samples_per_segment) for h in hs]
            return cls._nnls(cls._prefill_features(*zip(*pts)), [times.prefill_time_s(h, m) for h, m in pts])

        def decode_segment(lo, hi):
            pts = [(int(b), int(b) * c) for b in _span(lo, hi, samples_per_segment) for c in cs]
            return cls._nnls(cls._decode_features(*zip(*pts)), [times.decode_time_s(b, c) for b, c in pts])

        ibp, pre = _piecewise(prefill_segment, incr_range, incr_breakpoints, tolerance_pct, max_segments, "incr")
        bbp, dec = _piecewise(decode_segment, batch_range, batch_breakpoints, tolerance_pct, max_segments, "batch")
        return cls(ibp, pre, bbp, dec)

    @staticmethod
    def _nnls(features: np.ndarray, targets: Sequence[float]) -> tuple[tuple[float, ...], float]:
        """Non-negative least squares on *relative* error (rows scaled by 1/target, so short and long steps
        weigh alike): (coefficients, largest relative miss on the samples in %)."""
        y = np.asarray(targets, float)
        if np.any(~np.isfinite(y)) or np.any(y <= 0):
            raise ConfigError("PiecewiseAlphaBeta.fit: the source returned a time that is not finite and > 0")
        scaled = features / y[:, None]
        coef, _ = nnls(scaled, np.ones_like(y))
        return tuple(float(c) for c in coef), float(100 * np.max(np.abs(scaled @ coef - 1)))

    def prefill_time_s(self, hist_tokens: int, incr_tokens: int) -> float:
        h, m = _tokens("hist_tokens", hist_tokens), _tokens("incr_tokens", incr_tokens)
        if m == 0:
            return 0.0
        a, b_new, b_hist, b_attn = self.prefill_coef[_segment_of(self.incr_breakpoints, m)]
        return a + b_new * m + b_hist * h + b_attn * m * (h + m / 2)

    def decode_time_s(self, batch_size: int, context_tokens: int) -> float:
        b, c = _tokens("batch_size", batch_size), _tokens("context_tokens", context_tokens)
        if b == 0:
            return 0.0
        a, b_seq, b_ctx = self.decode_coef[_segment_of(self.batch_breakpoints, b)]
        return a + b_seq * b + b_ctx * c

    def fit_error(self, source: WorkerTimes | StepTimeModel, num_points: int = 200, seed: int = 0,
                  max_incr_tokens: int | None = None, max_hist_tokens: int = 32768,
                  context_range: tuple[int, int] = (256, 8192)) -> FitError:
        """Relative error against ``source`` at ``num_points`` random points: new tokens log-uniform in
        [first breakpoint, ``max_incr_tokens`` (default: the last breakpoint)], history 0 (one point in
        five) or log-uniform up to ``max_hist_tokens``, batch sizes log-uniform over the decode breakpoints
        at per-sequence contexts log-uniform in ``context_range``."""
        times = source if isinstance(source, WorkerTimes) else StepTimes(source)
        rng = np.random.default_rng(seed)
        lo = self.incr_breakpoints[0]
        hi = max_incr_tokens if max_incr_tokens is not None else self.incr_breakpoints[-1]
        h_max, (c_min, c_max) = max_hist_tokens, context_range

        def log_uniform(a, b, n):
            return np.rint(np.exp(rng.uniform(np.log(a), np.log(b), n))).astype(int)

        ms = log_uniform(lo, hi, num_points)
        hs = np.where(rng.random(num_points) < 0.2, 0, log_uniform(1, h_max, num_points))
        pre = [100 * abs(self.prefill_time_s(int(h), int(m)) / times.prefill_time_s(int(h), int(m)) - 1)
               for h, m in zip(hs, ms)]
        bs = log_uniform(self.batch_breakpoints[0], self.batch_breakpoints[-1], num_points)
        cs = bs * log_uniform(c_min, c_max, num_points)
        dec = [100 * abs(self.decode_time_s(int(b), int(c)) / times.decode_time_s(int(b), int(c)) - 1)
               for b, c in zip(bs, cs)]
        return FitError(float(np.mean(pre)), float(np.max(pre)), float(np.mean(dec)), float(np.max(dec)),
                        num_points)


@dataclass(frozen=True)
class PerfModel:
    """AMPD's three cost functions over a set of workers.

    workers : worker key (name, index or TP degree) -> its :class:`WorkerTimes`.
    kv_bytes_per_token : KV bytes of one token over all layers of the model (``ModelSpec.kv_bytes_per_token``).
    link : the link between any two workers not named in ``links`` (default :data:`AMPD_NETWORK_LINK`).
    links : ``{(a, b): LinkSpec}``, symmetric, e.g. NVLink between workers of one server.
    """

    workers: Mapping[Hashable, WorkerTimes]
    kv_bytes_per_token: float
    link: LinkSpec = AMPD_NETWORK_LINK
    links: Mapping[tuple, LinkSpec] = field(default_factory=dict)

    def __post_init__(self):
        if not self.workers:
            raise ConfigError("PerfModel needs at least one worker")
        for key, w in self.workers.items():
            if not isinstance(w, WorkerTimes):
                raise ConfigError(f"PerfModel: worker {key!r} is a {type(w).__name__}, not WorkerTimes "
                                  f"(wrap a step model in StepTimes or PiecewiseAlphaBeta.fit)")
        if not (isinstance(self.kv_bytes_per_token, (int, float)) and math.isfinite(self.kv_bytes_per_token)
                and self.kv_bytes_per_token > 0):
            raise ConfigError(f"kv_bytes_per_token must be a finite number > 0, got {self.kv_bytes_per_token!r}")
        for key, link in self.links.items():
            if len(key) != 2 or not all(k in self.workers for k in key) or not isinstance(link, LinkSpec):
                raise ConfigError(f"PerfModel.links: {key!r} -> {link!r} must map a pair of known workers to a "
                                  f"LinkSpec; workers are {list(self.workers)}")

    @classmethod
    def from_step_models(cls, step_models: Mapping[Hashable, StepTimeModel], kv_bytes_per_token: float,
                         link: LinkSpec = AMPD_NETWORK_LINK, links: Mapping[tuple, LinkSpec] | None = None,
                         fit: bool = False, **fit_knobs) -> "PerfModel":
        """One worker per step model; ``fit=True`` fits :class:`PiecewiseAlphaBeta` (knobs as in its
        :meth:`~PiecewiseAlphaBeta.fit`) instead of reading the step model on every call. Workers that share
        one step model object share one backend (one cache, one fit)."""
        built: dict[int, WorkerTimes] = {}

        def backend(step):
            if id(step) not in built:
                built[id(step)] = PiecewiseAlphaBeta.fit(step, **fit_knobs) if fit else StepTimes(step)
            return built[id(step)]

        return cls({k: backend(s) for k, s in step_models.items()}, kv_bytes_per_token, link, dict(links or {}))

    @classmethod
    def from_cluster(cls, cluster, step_model: Callable[[object], StepTimeModel] | None = None,
                     fit: bool = False, **fit_knobs) -> "PerfModel":
        """Workers = the instances of a :class:`gpusched.cluster.Cluster` (keyed by name), links from the
        cluster (its ``links`` and ``default_link``), KV bytes per token from its model and dtype.

        ``step_model(instance)`` builds each instance's step model (default: a roofline of the cluster's
        model on the instance's GPU and TP degree); instances of one GPU kind and TP share one.
        """
        from gpusched.perf import RooflineStepTime

        make = step_model or (lambda inst: RooflineStepTime(cluster.model, inst.gpu, tp=inst.tp,
                                                            dtype=cluster.dtype))
        by_shape: dict[tuple, StepTimeModel] = {}
        steps = {}
        for inst in cluster.instances:
            shape = (inst.gpu.name, inst.tp, inst.pp)
            if shape not in by_shape:
                by_shape[shape] = make(inst)
            steps[inst.name] = by_shape[shape]
        links = {key: link for key, link in cluster.links.items()}
        return cls.from_step_models(steps, cluster.model.kv_bytes_per_token(cluster.dtype),
                                    link=cluster.default_link, links=links, fit=fit, **fit_knobs)

    def _worker(self, key) -> WorkerTimes:
        try:
            return self.workers[key]
        except (KeyError, TypeError):
            raise ConfigError(f"PerfModel: unknown worker {key!r}; workers are {list(self.workers)}") from None

    def prefill_time_s(self, hist_tokens: int, incr_tokens: int, worker: Hashable) -> float:
        """T_pre(l_hist, l_incr; θ_worker), seconds."""
        return self._worker(worker).prefill_time_s(hist_tokens, incr_tokens)

    def decode_time_s(self, batch_size: int, context_tokens: int, worker: Hashable) -> float:
        """T_dec of one iteration of ``batch_size`` sequences with ``context_tokens`` in total, seconds."""
        return self._worker(worker).decode_time_s(batch_size, context_tokens)

    def link_between(self, src: Hashable, dst: Hashable) -> LinkSpec:
        self._worker(src), self._worker(dst)
        return self.links.get((src, dst)) or self.links.get((dst, src)) or self.link

    def kv_time_s(self, tokens: int, src: Hashable, dst: Hashable) -> float:
        """T_kv(l; θ_src, θ_dst): Hockney time of ``tokens`` tokens' KV from ``src`` to ``dst``; 0 for 0
        tokens or ``src == dst`` (no transfer)."""
        if src == dst:
            self._worker(src)
            return 0.0
        return kv_transfer_time_s(tokens, self.kv_bytes_per_token, self.link_between(src, dst))
