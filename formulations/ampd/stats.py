"""Windowed averages: the ``TTFT_hat`` of a prefill worker and the ``ITL_hat`` of a decode worker (spec §1).

Each worker keeps the average of the values observed in the last ``window_s`` seconds (10 s in the paper
[P]). A TTFT is observed when a prefill *completes* (spec §2.3 [R]); an ITL sample when a decode step ends,
weighted by the sequences it advanced. With nothing in the window the average is 0: an idle worker looks
eligible to Algorithm 1 ([R]).
"""
from __future__ import annotations

import math
from collections import deque

from gpusched.errors import ConfigError

__all__ = ["WindowedMean", "STATS_WINDOW_S"]

STATS_WINDOW_S = 10.0  # [P]


class WindowedMean:
    """Weighted mean of the samples of the last ``window_s`` seconds: a sample at time t counts at ``now`` iff
    ``now - window_s < t <= now``. Samples must arrive, and questions be asked, in time order; each sample is
    added and expired once (amortised O(1))."""

    __slots__ = ("window_s", "_samples", "_sum", "_weight", "_last_s", "_asked_s")

    def __init__(self, window_s: float = STATS_WINDOW_S):
        if not isinstance(window_s, (int, float)) or not math.isfinite(window_s) or window_s <= 0:
            raise ConfigError(f"WindowedMean: window_s must be a finite number > 0, got {window_s!r}")
        self.window_s = float(window_s)
        self._samples: deque[tuple[float, float, float]] = deque()
        self._sum = 0.0
        self._weight = 0.0
        self._last_s = -math.inf
        self._asked_s = -math.inf  # expiry is destructive: a later question may not look further back

    def add(self, time_s: float, value: float, weight: float = 1.0) -> None:
        """Record ``value`` observed at ``time_s`` with ``weight`` (e.g. the sequences a decode step advanced)."""
        if not math.isfinite(time_s) or time_s < self._last_s:
            raise ConfigError(f"WindowedMean.add: time_s={time_s!r} is not finite or earlier than the last "
                              f"sample ({self._last_s}); add samples in time order")
        if not math.isfinite(value) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"WindowedMean.add: value={value!r} must be finite and weight={weight!r} > 0")
        self._last_s = time_s
        self._samples.append((time_s, value * weight, weight))
        self._sum += value * weight
        self._weight += weight

    def mean(self, now_s: float) -> float:
        """The weighted mean over ``(now_s - window_s, now_s]``; 0 with no sample there."""
        if not math.isfinite(now_s) or now_s < self._asked_s:
            raise ConfigError(f"WindowedMean.mean: now_s={now_s!r} is not finite or earlier than the last "
                              f"question ({self._asked_s}); ask in time order")
        self._asked_s = now_s
        samples = self._samples
        horizon = now_s - self.window_s
        while samples and samples[0][0] <= horizon:
            _, vw, w = samples.popleft()
            self._sum -= vw
            self._weight -= w
        if not samples:
            self._sum = self._weight = 0.0  # no drift from repeated subtraction
            return 0.0
        if samples[-1][0] > now_s:
            raise ConfigError(f"WindowedMean.mean: now_s={now_s!r} is before the last sample "
                              f"({samples[-1][0]}); ask in time order")
        return self._sum / self._weight

    def __len__(self) -> int:
        return len(self._samples)
