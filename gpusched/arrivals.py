"""Seeded arrival processes: Poisson, Gamma renewal and evenly spaced arrival times, in seconds from 0.

Every function takes a ``seed`` (int or ``numpy.random.Generator``); the same arguments and seed give the
same output. The first arrival is one inter-arrival after 0.
"""
from __future__ import annotations

from typing import Callable, Union

import numpy as np

from gpusched.errors import ConfigError

Seed = Union[int, np.random.Generator, None]
ARRIVAL_PROCESSES = ("poisson", "gamma", "constant")
#: The most arrivals one call draws over a ``duration_s`` (80 MB of float64 times): a rate x duration above it
#: is refused before anything is allocated.
MAX_ARRIVALS = 10_000_000


def rng(seed: Seed) -> np.random.Generator:
    """``seed`` as a generator (a generator is used as is, so a caller can chain draws)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def check_rate(rate_per_s: float) -> None:
    if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, (int, float, np.number)) \
            or not (np.isfinite(rate_per_s) and rate_per_s > 0):
        raise ConfigError(f"rate_per_s={rate_per_s!r} must be a finite number > 0 (requests per second)")


def _renewal(draw: Callable[[int], np.ndarray], mean_gap_s: float, n: int | None,
             duration_s: float | None) -> np.ndarray:
    if (n is None) == (duration_s is None):
        raise ConfigError("pass exactly one of n (number of arrivals) or duration_s")
    if n is not None:
        if n < 0:
            raise ConfigError(f"n={n} must be >= 0")
        return np.cumsum(draw(int(n)))
    if not (np.isfinite(duration_s) and duration_s >= 0):
        raise ConfigError(f"duration_s={duration_s!r} must be finite and >= 0")
    expected = duration_s / mean_gap_s
    if expected > MAX_ARRIVALS:
        raise ConfigError(f"{duration_s:g} s at {1 / mean_gap_s:g} requests/s is ~{expected:.3g} arrivals, more "
                          f"than gpusched.arrivals.MAX_ARRIVALS = {MAX_ARRIVALS:,}; shorten the duration or pass n=")
    chunks, t_end = [], 0.0
    while True:  # draw in chunks until past the horizon; the draw order is fixed, so results are seeded
        k = int(expected * 1.1 + 6 * np.sqrt(expected) + 16)
        t = t_end + np.cumsum(draw(k))
        chunks.append(t)
        t_end = float(t[-1])
        if t_end >= duration_s:
            break
    t = np.concatenate(chunks)
    return t[t < duration_s]


def poisson_arrivals(rate_per_s: float, n: int | None = None, duration_s: float | None = None,
                     seed: Seed = 0) -> np.ndarray:
    """Arrival times (s) of a Poisson process: ``n`` arrivals, or all arrivals in ``[0, duration_s)``."""
    check_rate(rate_per_s)
    g = rng(seed)
    return _renewal(lambda k: g.exponential(1.0 / rate_per_s, k), 1.0 / rate_per_s, n, duration_s)


def gamma_arrivals(rate_per_s: float, cv: float, n: int | None = None, duration_s: float | None = None,
                   seed: Seed = 0) -> np.ndarray:
    """Arrival times of a Gamma renewal process with mean rate ``rate_per_s`` and inter-arrival CV ``cv``.

    shape = 1/cv**2, scale = 1/(rate * shape); cv = 1 is Poisson, cv > 1 is bursty.
    """
    check_rate(rate_per_s)
    if not (np.isfinite(cv) and cv > 0):
        raise ConfigError(f"cv={cv!r} must be a finite number > 0")
    shape = 1.0 / cv ** 2
    scale = 1.0 / (rate_per_s * shape)
    g = rng(seed)
    return _renewal(lambda k: g.gamma(shape, scale, k), 1.0 / rate_per_s, n, duration_s)


def arrivals(process: str, rate_per_s: float, n: int | None = None, duration_s: float | None = None,
             cv: float = 1.0, seed: Seed = 0) -> np.ndarray:
    """Dispatch on ``process``: ``"poisson"``, ``"gamma"`` (with ``cv``) or ``"constant"`` (evenly spaced)."""
    if process == "poisson":
        return poisson_arrivals(rate_per_s, n=n, duration_s=duration_s, seed=seed)
    if process == "gamma":
        return gamma_arrivals(rate_per_s, cv, n=n, duration_s=duration_s, seed=seed)
    if process == "constant":
        check_rate(rate_per_s)
        if (n is None) == (duration_s is None):
            raise ConfigError("pass exactly one of n or duration_s")
        if duration_s is not None and duration_s * rate_per_s > MAX_ARRIVALS:
            raise ConfigError(f"{duration_s:g} s at {rate_per_s:g} requests/s is more than "
                              f"gpusched.arrivals.MAX_ARRIVALS = {MAX_ARRIVALS:,} arrivals; shorten the duration")
        k = n if n is not None else int(np.ceil(duration_s * rate_per_s))
        t = np.arange(k) / rate_per_s
        return t if duration_s is None else t[t < duration_s]
    raise ConfigError(f"unknown arrival process {process!r}; use one of {', '.join(ARRIVAL_PROCESSES)}")
