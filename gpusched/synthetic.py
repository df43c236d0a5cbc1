"""Seeded synthetic workloads: traces with synthetic arrivals and lengths, and multi-round agent sessions.

Every function takes a ``seed`` (int or ``numpy.random.Generator``); the same arguments and seed give the
same output. The building blocks live in :mod:`gpusched.arrivals` (arrival processes) and
:mod:`gpusched.lengths` (length specs and tables); their public names are importable from here too.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gpusched.arrivals import Seed, arrivals, gamma_arrivals, poisson_arrivals, rng as generator
from gpusched.errors import ConfigError
from gpusched.lengths import LengthSpec, draw_lengths, lognormal_lengths, sample_lengths
from gpusched.trace import Trace

__all__ = ["synthetic_trace", "agent_sessions", "arrivals", "poisson_arrivals", "gamma_arrivals",
           "lognormal_lengths", "sample_lengths", "Seed", "LengthSpec"]


def synthetic_trace(rate_per_s: float, n: int | None = None, duration_s: float | None = None,
                    arrival: str = "poisson", cv: float = 1.0, table: Any = None,
                    prompt_tokens: LengthSpec | None = None, output_tokens: LengthSpec | None = None,
                    seed: Seed = 0, name: str = "synthetic", **columns: Any) -> Trace:
    """A trace with seeded arrivals (see :func:`arrivals`) and lengths (see :func:`sample_lengths`).

    Extra keyword arguments become constant columns (e.g. ``model="llama-3-8b"``, ``slo_ttft_s=1.0``).
    """
    rng = generator(seed)
    t = arrivals(arrival, rate_per_s, n=n, duration_s=duration_s, cv=cv, seed=rng)
    df = sample_lengths(len(t), seed=rng, table=table, prompt_tokens=prompt_tokens, output_tokens=output_tokens)
    df.insert(0, "arrival_time_s", t)
    df.insert(0, "request_id", np.arange(len(t), dtype=np.int64))
    for k, v in columns.items():
        df[k] = v
    meta = {"rate_per_s": rate_per_s, "arrival": arrival, "cv": cv,
            "seed": seed if not isinstance(seed, np.random.Generator) else "generator"}
    return Trace(df, name=name, source="synthetic", meta=meta)


def agent_sessions(num_sessions: int, rounds: int | tuple[int, int], think_time_s: float,
                   new_tokens_per_round: LengthSpec, output_tokens: LengthSpec, seed: Seed = 0,
                   session_rate_per_s: float = 1.0, first_prompt_tokens: LengthSpec | None = None,
                   think_time: str = "exponential", name: str = "agent-sessions") -> Trace:
    """Multi-round agent/chat sessions whose prompts carry the whole history.

    Sessions start as a Poisson process at ``session_rate_per_s``. Session s has ``rounds`` rounds (an int, or
    a (low, high) inclusive range drawn per session). Round 0's prompt is ``first_prompt_tokens`` (default:
    ``new_tokens_per_round``); round r > 0's prompt is ``prompt[r-1] + output[r-1] + new[r]``.

    **Release contract.** Only round 0 has a real arrival time. Rows with ``round > 0`` carry
    ``arrival_time_s`` = the session's first arrival (a lower bound, which keeps the trace sorted with
    rounds in order) and ``think_time_s`` = the delay after round r-1 of the same ``session_id`` *finishes*
    (last token) before round r is released. Round 0 rows have ``think_time_s = 0``. An engine must hold
    round r until round r-1 completes plus its think time. Think times are exponential with mean
    ``think_time_s`` (``think_time="exponential"``) or exactly ``think_time_s`` (``"constant"``).
    """
    if num_sessions < 0:
        raise ConfigError(f"num_sessions={num_sessions} must be >= 0")
    if think_time_s < 0:
        raise ConfigError(f"think_time_s={think_time_s} must be >= 0")
    if think_time not in ("exponential", "constant"):
        raise ConfigError(f"think_time={think_time!r}: use 'exponential' or 'constant'")
    rng = generator(seed)
    starts = poisson_arrivals(session_rate_per_s, n=num_sessions, seed=rng)
    if isinstance(rounds, tuple):
        lo, hi = rounds
        if not 1 <= lo <= hi:
            raise ConfigError(f"rounds={rounds!r}: need 1 <= low <= high")
        n_rounds = rng.integers(lo, hi + 1, num_sessions)
    else:
        if rounds < 1:
            raise ConfigError(f"rounds={rounds} must be >= 1")
        n_rounds = np.full(num_sessions, int(rounds))
    total = int(n_rounds.sum())
    session = np.repeat(np.arange(num_sessions, dtype=np.int64), n_rounds)
    first_row = np.concatenate([[0], np.cumsum(n_rounds)[:-1]]) if num_sessions else np.zeros(0, np.int64)
    rnd = np.arange(total, dtype=np.int64) - np.repeat(first_row, n_rounds)
    new = draw_lengths(new_tokens_per_round, rng, total, "new_tokens_per_round")
    first = draw_lengths(first_prompt_tokens, rng, total, "first_prompt_tokens") if first_prompt_tokens is not None \
        else new
    out = draw_lengths(output_tokens, rng, total, "output_tokens")
    # prompt[r] = prompt[r-1] + out[r-1] + new[r]  =>  first[0] + cumulative sums within the session
    increment = np.where(rnd == 0, first, new)
    prev_out = np.where(rnd == 0, 0, np.roll(out, 1))
    step = increment + prev_out
    csum = np.cumsum(step)
    base = np.repeat(csum[first_row] - step[first_row], n_rounds) if total else csum
    prompt = csum - base
    if think_time == "exponential":
        think = rng.exponential(think_time_s, total) if think_time_s > 0 else np.zeros(total)
    else:
        think = np.full(total, float(think_time_s))
    think = np.where(rnd == 0, 0.0, think)
    df = pd.DataFrame({"request_id": np.arange(total, dtype=np.int64),
                       "arrival_time_s": np.repeat(starts, n_rounds), "prompt_tokens": prompt,
                       "output_tokens": out, "session_id": session, "round": rnd, "think_time_s": think})
    meta = {"session_rate_per_s": session_rate_per_s, "think_time_s": think_time_s, "think_time": think_time,
            "release": "round r>0 released think_time_s after round r-1 of the session finishes"}
    return Trace(df, name=name, source="synthetic", meta=meta)
