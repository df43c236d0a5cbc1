"""Abandonment: how impatient a waiting request is, for every engine that lets requests give up waiting."""
from __future__ import annotations

import math
from typing import Callable

from gpusched.errors import ConfigError
from gpusched.policy import SeqState

AbandonRate = float | Callable[[SeqState], float]  # per second: one number, or one per request


def abandon_rate_of(rate: AbandonRate, seq: SeqState) -> float:
    """The abandonment rate (per second) of ``seq``: ``rate`` itself or ``rate(seq)``, refused unless a finite
    number >= 0 (0: ``seq`` never abandons). A patience is then ``Exp(rate)``: a standard exponential / rate."""
    r = float(rate(seq)) if callable(rate) else float(rate)
    if not (math.isfinite(r) and r >= 0):
        raise ConfigError(f"abandon rate {r!r} for request {seq.request_id!r} must be a finite number >= 0 "
                          f"(0: never abandons)")
    return r
