"""Seeded synthetic workloads: arrival processes, request lengths, traces and multi-round agent sessions.

Every function takes a ``seed`` (int or ``numpy.random.Generator``); the same arguments and seed give the
same output. Arrival times are in seconds from 0; the first arrival is one inter-arrival after 0.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError
from gpusched.workload import Trace

Seed = Union[int, np.random.Generator, None]
# A length spec: an int (constant), a (low, high) tuple (uniform integers, inclusive) or a callable
# ``f(rng, n) -> array of ints``.
LengthSpec = Union[int, tuple, Callable[[np.random.Generator, int], np.ndarray]]


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_rate(rate_per_s: float) -> None:
    if not (np.isfinite(rate_per_s) and rate_per_s > 0):
        raise ConfigError(f"rate_per_s={rate_per_s!r} must be a finite number > 0")


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
    _check_rate(rate_per_s)
    rng = _rng(seed)
    return _renewal(lambda k: rng.exponential(1.0 / rate_per_s, k), 1.0 / rate_per_s, n, duration_s)


def gamma_arrivals(rate_per_s: float, cv: float, n: int | None = None, duration_s: float | None = None,
                   seed: Seed = 0) -> np.ndarray:
    """Arrival times of a Gamma renewal process with mean rate ``rate_per_s`` and inter-arrival CV ``cv``.

    shape = 1/cv**2, scale = 1/(rate * shape); cv = 1 is Poisson, cv > 1 is bursty.
    """
    _check_rate(rate_per_s)
    if not (np.isfinite(cv) and cv > 0):
        raise ConfigError(f"cv={cv!r} must be a finite number > 0")
    shape = 1.0 / cv ** 2
    scale = 1.0 / (rate_per_s * shape)
    rng = _rng(seed)
    return _renewal(lambda k: rng.gamma(shape, scale, k), 1.0 / rate_per_s, n, duration_s)


def lognormal_lengths(mean_tokens: float, cv: float = 1.0, max_tokens: int | None = None) -> Callable:
    """A length spec drawing log-normal integers >= 1 with the given mean and CV (optionally capped)."""
    if mean_tokens < 1 or cv <= 0:
        raise ConfigError(f"lognormal_lengths(mean_tokens={mean_tokens}, cv={cv}): need mean >= 1 and cv > 0")
    sigma2 = np.log1p(cv ** 2)
    mu = np.log(mean_tokens) - sigma2 / 2

    def draw(rng: np.random.Generator, n: int) -> np.ndarray:
        v = np.maximum(1, np.rint(rng.lognormal(mu, np.sqrt(sigma2), n))).astype(np.int64)
        return np.minimum(v, max_tokens) if max_tokens is not None else v

    return draw


def _draw_spec(spec: LengthSpec, rng: np.random.Generator, n: int, what: str) -> np.ndarray:
    if callable(spec):
        v = np.asarray(spec(rng, n))
    elif isinstance(spec, tuple):
        lo, hi = spec
        if not 1 <= lo <= hi:
            raise ConfigError(f"{what}={spec!r}: need 1 <= low <= high")
        v = rng.integers(lo, hi + 1, n)
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        v = np.full(n, int(spec))
    else:
        raise ConfigError(f"{what}={spec!r}: expected an int, a (low, high) tuple or a callable (rng, n)")
    if v.shape != (n,) or (n and (v.min() < 1 or np.any(v != np.floor(v)))):
        raise ConfigError(f"{what} spec produced values that are not {n} integers >= 1")
    return v.astype(np.int64)


def _length_table(table: Any) -> pd.DataFrame:
    if isinstance(table, Trace):
        return table.df[["prompt_tokens", "output_tokens"]]
    if isinstance(table, str):
        from gpusched.loaders import read_length_table
        from gpusched.workload import _BUNDLED, bundled_trace_path
        path = bundled_trace_path(table) if table in _BUNDLED else table
        return read_length_table(path)
    if isinstance(table, pd.DataFrame):
        if {"prompt_tokens", "output_tokens"} <= set(table.columns):
            return table[["prompt_tokens", "output_tokens"]]
        if {"num_prefill_tokens", "num_decode_tokens"} <= set(table.columns):
            return table.rename(columns={"num_prefill_tokens": "prompt_tokens",
                                         "num_decode_tokens": "output_tokens"})[["prompt_tokens", "output_tokens"]]
    raise ConfigError("length table must be a Trace, a DataFrame with prompt_tokens/output_tokens "
                      "(or num_prefill_tokens/num_decode_tokens), a bundled name or a CSV path")


def sample_lengths(n: int, seed: Seed = 0, table: Any = None, prompt_tokens: LengthSpec | None = None,
                   output_tokens: LengthSpec | None = None) -> pd.DataFrame:
    """``n`` (prompt_tokens, output_tokens) pairs.

    With ``table`` (a length table, Trace, bundled name or path) whole rows are sampled with replacement, so
    prompt and output stay paired; otherwise each column is drawn from its spec independently.
    """
    rng = _rng(seed)
    if table is not None:
        if prompt_tokens is not None or output_tokens is not None:
            raise ConfigError("pass either a length table or prompt_tokens/output_tokens specs, not both")
        t = _length_table(table)
        if len(t) == 0:
            raise ConfigError("length table is empty")
        idx = rng.integers(0, len(t), n)
        return pd.DataFrame({"prompt_tokens": t["prompt_tokens"].to_numpy()[idx].astype(np.int64),
                             "output_tokens": t["output_tokens"].to_numpy()[idx].astype(np.int64)})
    if prompt_tokens is None or output_tokens is None:
        raise ConfigError("pass a length table or both prompt_tokens and output_tokens specs")
    return pd.DataFrame({"prompt_tokens": _draw_spec(prompt_tokens, rng, n, "prompt_tokens"),
                         "output_tokens": _draw_spec(output_tokens, rng, n, "output_tokens")})


def arrivals(process: str, rate_per_s: float, n: int | None = None, duration_s: float | None = None,
             cv: float = 1.0, seed: Seed = 0) -> np.ndarray:
    """Dispatch on ``process``: ``"poisson"``, ``"gamma"`` (with ``cv``) or ``"constant"`` (evenly spaced)."""
    if process == "poisson":
        return poisson_arrivals(rate_per_s, n=n, duration_s=duration_s, seed=seed)
    if process == "gamma":
        return gamma_arrivals(rate_per_s, cv, n=n, duration_s=duration_s, seed=seed)
    if process == "constant":
        _check_rate(rate_per_s)
        if (n is None) == (duration_s is None):
            raise ConfigError("pass exactly one of n or duration_s")
        k = n if n is not None else int(np.ceil(duration_s * rate_per_s))
        t = np.arange(k) / rate_per_s
        return t if duration_s is None else t[t < duration_s]
    raise ConfigError(f"unknown arrival process {process!r}; use 'poisson', 'gamma' or 'constant'")


def synthetic_trace(rate_per_s: float, n: int | None = None, duration_s: float | None = None,
                    arrival: str = "poisson", cv: float = 1.0, table: Any = None,
                    prompt_tokens: LengthSpec | None = None, output_tokens: LengthSpec | None = None,
                    seed: Seed = 0, name: str = "synthetic", **columns: Any) -> Trace:
    """A trace with seeded arrivals (see :func:`arrivals`) and lengths (see :func:`sample_lengths`).

    Extra keyword arguments become constant columns (e.g. ``model="llama-3-8b"``, ``slo_ttft_s=1.0``).
    """
    rng = _rng(seed)
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
    rng = _rng(seed)
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
    new = _draw_spec(new_tokens_per_round, rng, total, "new_tokens_per_round")
    first = _draw_spec(first_prompt_tokens, rng, total, "first_prompt_tokens") if first_prompt_tokens is not None \
        else new
    out = _draw_spec(output_tokens, rng, total, "output_tokens")
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
