"""Shared by the hand-timed engine tests: a step model whose every step lasts ``STEP_S``, and tiny traces.

With a constant step, every event time of a run is a multiple of ``STEP_S`` that a test can count by hand.
"""
from __future__ import annotations

import pandas as pd

from gpusched.workload import Trace

STEP_S = 0.01  # s, the duration of every engine step


class ConstantStep:
    """A step-time model (``gpusched.perf.StepTimeModel``) in which every step takes ``STEP_S``."""

    def step_time_s(self, prefill_lens=(), decode_contexts=(), prefill_cached=None, num_sampled=None):
        return STEP_S


def tiny_trace(rows, name: str) -> Trace:
    """A trace from ``(arrival_time_s, prompt_tokens, output_tokens)`` rows, ids 0, 1, ... in row order."""
    df = pd.DataFrame(rows, columns=["arrival_time_s", "prompt_tokens", "output_tokens"])
    df.insert(0, "request_id", range(len(df)))
    return Trace(df, name=name)
