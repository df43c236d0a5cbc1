"""The paper's real-data simulation: one worker, batch times from the paper's iteration-time formula.

Conventions of the authors' real-data code (spec §1(c) "Real-data variant", §1(d), §1(g).1):

* a request needs ``o + 1`` iterations (the prompt iteration plus ``o`` decode iterations); after ``k`` of
  them it holds ``s + k`` tokens, so its peak is ``s + o + 1``;
* every batch holds all running requests plus the admitted prompts; it takes
  ``tau = ((0.0027 * mean_context + 0.52) * B + 44.6 + 0.378 * P) / 1000`` seconds (Llama-2-70B on two linked
  A100s, fitted from Vidur by the authors), ``B`` jobs, ``P`` prompt tokens, context = tokens processed so far
  (0 for a prompt);
* ``M = 16492`` tokens.

MC-SF's projection ``now + remaining * avg_batch_time`` in the authors' code counts future time in units of
one average batch, so checking at projected completion times is the same as checking at completion
*iterations*: the check used here is exactly the discrete one in iteration units, and needs no estimate of
the average batch time. Predictions default to the true lengths (the authors' code sorts by the true output).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, DoesNotFitError

from .engine import POLICIES, run_batches

__all__ = ["PAPER_MEMORY_TOKENS", "llama2_70b_2xa100_batch_time_s", "RealRun", "simulate_real"]

PAPER_MEMORY_TOKENS = 16492


def llama2_70b_2xa100_batch_time_s(jobs: int, mean_context_tokens: float, prompt_tokens: int) -> float:
    """Seconds for one batch of ``jobs`` jobs (prompts + decodes) with the given mean context and prompt tokens."""
    return ((0.0027 * mean_context_tokens + 0.52) * jobs + 44.6 + 0.378 * prompt_tokens) / 1000.0


@dataclass
class RealRun:
    """Per-request outcome (``df``: request_id, arrival_time_s, start_time_s, finish_time_s, latency_s) and
    run totals of :func:`simulate_real`."""

    policy: str
    df: pd.DataFrame
    average_latency_s: float
    resets: int
    restarts: int
    peak_memory_tokens: int
    n_batches: int
    makespan_s: float


def simulate_real(arrival_time_s, prompt_tokens, output_tokens, policy: str = "mcsf", *,
                  memory_tokens: int = PAPER_MEMORY_TOKENS, predicted_output_tokens=None, alpha: float = 0.25,
                  beta: float = 0.1, batch_cap: int | None = None, seed: int = 0,
                  batch_time=llama2_70b_2xa100_batch_time_s, max_batches: int | None = None) -> RealRun:
    """Run ``policy`` (one of :data:`~formulations.mcsf.engine.POLICIES`) on a request stream.

    Args:
        arrival_time_s, prompt_tokens, output_tokens: (n,) arrays.
        predicted_output_tokens: (n,) predictions for the MC policies; ``None``: oracle (true lengths).
        memory_tokens: ``M``.  alpha, beta, batch_cap, seed: threshold-rule parameters.
        batch_time: ``f(jobs, mean_context_tokens, prompt_tokens) -> s``.

    Raises :class:`~gpusched.errors.DoesNotFitError` if a request's peak ``s + o + 1`` exceeds ``M``, and
    :class:`~gpusched.errors.InfeasibleError` if an alpha rule cannot finish (livelock).
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    a = np.asarray(arrival_time_s, dtype=float)
    s = np.asarray(prompt_tokens, dtype=np.int64)
    o = np.asarray(output_tokens, dtype=np.int64)
    pred = o if predicted_output_tokens is None else np.asarray(predicted_output_tokens, dtype=np.int64)
    peak = s + np.maximum(o, pred) + 1
    if len(peak) and peak.max() > memory_tokens:
        i = int(np.argmax(peak))
        raise DoesNotFitError(f"request {i} (s={int(s[i])}, o={int(o[i])}, predicted={int(pred[i])}) peaks at "
                              f"{int(peak[i])} tokens > M = {memory_tokens}; drop it or raise memory_tokens")
    r = run_batches(a, s, o + 1, pred + 1, memory_tokens, policy, batch_time=batch_time, alpha=alpha, beta=beta,
                    batch_cap=batch_cap, seed=seed, max_batches=max_batches)
    df = pd.DataFrame({"request_id": np.arange(len(a)), "arrival_time_s": a, "start_time_s": r.start_time,
                       "finish_time_s": r.finish_time})
    df["latency_s"] = df["finish_time_s"] - df["arrival_time_s"]
    return RealRun(policy, df, float(df["latency_s"].mean()) if len(df) else 0.0, r.resets, r.restarts,
                   r.peak_memory, r.n_batches, float(np.nanmax(r.finish_time)) if len(df) else 0.0)
