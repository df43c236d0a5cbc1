"""Request lengths: length specs, length-statistics tables and seeded sampling of (prompt, output) pairs.

A length-statistics table is a CSV with ``num_prefill_tokens`` and ``num_decode_tokens`` (Sarathi-Serve and
Vidur ship them; ``num_total_tokens``, if present, must be their sum): one (prompt, output) pair per row, no
timestamps. :func:`sample_lengths` draws pairs from such a table (a bundled name, a path, a DataFrame or a
:class:`~gpusched.trace.Trace`) or from independent specs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import pandas as pd

from gpusched.arrivals import Seed, rng
from gpusched.bundled import BUNDLED, bundled_trace_path
from gpusched.errors import ConfigError
from gpusched.rows import RowChecker, parse_counts, read_csv_text, require_columns
from gpusched.trace import Trace, as_numbers, count_problems

# A length spec: an int (constant), a (low, high) tuple (uniform integers, inclusive) or a callable
# ``f(rng, n) -> array of ints``.
LengthSpec = Union[int, tuple, Callable[[np.random.Generator, int], np.ndarray]]
PREFILL, DECODE, TOTAL = "num_prefill_tokens", "num_decode_tokens", "num_total_tokens"


def lognormal_lengths(mean_tokens: float, cv: float = 1.0, max_tokens: int | None = None) -> Callable:
    """A length spec drawing log-normal integers >= 1 with the given mean and CV (optionally capped)."""
    if mean_tokens < 1 or cv <= 0:
        raise ConfigError(f"lognormal_lengths(mean_tokens={mean_tokens}, cv={cv}): need mean >= 1 and cv > 0")
    sigma2 = np.log1p(cv ** 2)
    mu = np.log(mean_tokens) - sigma2 / 2

    def draw(g: np.random.Generator, n: int) -> np.ndarray:
        v = np.maximum(1, np.rint(g.lognormal(mu, np.sqrt(sigma2), n))).astype(np.int64)
        return np.minimum(v, max_tokens) if max_tokens is not None else v

    return draw


def draw_lengths(spec: LengthSpec, g: np.random.Generator, n: int, what: str) -> np.ndarray:
    """``n`` integers >= 1 from ``spec`` (see :data:`LengthSpec`); ``what`` names it in errors."""
    if callable(spec):
        v = np.asarray(spec(g, n))
    elif isinstance(spec, tuple):
        lo, hi = spec
        if not 1 <= lo <= hi:
            raise ConfigError(f"{what}={spec!r}: need 1 <= low <= high")
        v = g.integers(lo, hi + 1, n)
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        v = np.full(n, int(spec))
    else:
        raise ConfigError(f"{what}={spec!r}: expected an int, a (low, high) tuple or a callable (rng, n)")
    if v.shape != (n,) or (n and (v.min() < 1 or np.any(v != np.floor(v)))):
        raise ConfigError(f"{what} spec produced values that are not {n} integers >= 1")
    return v.astype(np.int64)


def check_total(rows: RowChecker, df: pd.DataFrame, prompt: np.ndarray, output: np.ndarray) -> None:
    """Flag rows whose ``num_total_tokens`` (when the table has it) is not prefill + decode."""
    if TOTAL in df.columns:
        total, missing, nan = as_numbers(df[TOTAL])
        rows.flag(~missing & ~nan & (total != prompt + output), TOTAL, df[TOTAL],
                  f"is not {PREFILL} + {DECODE} of its row; fix one of the three")


def read_length_table(path: str | Path, on_error: str = "raise") -> pd.DataFrame:
    """A length-statistics CSV as ``prompt_tokens``/``output_tokens`` int64 columns, in file order.

    ``out.attrs["skipped_rows"]`` counts rows dropped with ``on_error="skip"``.
    """
    path = Path(path)
    text = read_csv_text(path, on_error)
    require_columns(path, text.df.columns, (PREFILL, DECODE), text.header_line)
    rows = text.checker(path, on_error)
    prompt = parse_counts(rows, text.df[PREFILL], PREFILL)
    output = parse_counts(rows, text.df[DECODE], DECODE)
    check_total(rows, text.df, prompt, output)
    keep, skipped = rows.finish()
    out = pd.DataFrame({"prompt_tokens": prompt[keep], "output_tokens": output[keep]})
    out.attrs["skipped_rows"] = skipped
    return out


def length_table(table: Any) -> pd.DataFrame:
    """``table`` as a ``prompt_tokens``/``output_tokens`` DataFrame: a Trace, a DataFrame (with those columns
    or Vidur's ``num_prefill_tokens``/``num_decode_tokens``), a bundled name or a length-statistics CSV path."""
    if isinstance(table, Trace):
        return table.df[["prompt_tokens", "output_tokens"]]
    if isinstance(table, (str, Path)):
        path = bundled_trace_path(table) if isinstance(table, str) and table in BUNDLED else table
        return read_length_table(path)
    if isinstance(table, pd.DataFrame):
        if {PREFILL, DECODE} <= set(table.columns) and not {"prompt_tokens", "output_tokens"} <= set(table.columns):
            table = table.rename(columns={PREFILL: "prompt_tokens", DECODE: "output_tokens"})
        if {"prompt_tokens", "output_tokens"} <= set(table.columns):
            table = table[["prompt_tokens", "output_tokens"]].reset_index(drop=True)
            for col in table.columns:
                for p in count_problems(as_numbers(table[col]), col):
                    if p.mask.any():
                        i = int(np.flatnonzero(p.mask)[0])
                        raise ConfigError(f"length table: row {i} (0-based): {col} = {table[col].iloc[i]!r} "
                                          f"{p.reason}")
            return table.astype(np.int64)
    raise ConfigError("length table must be a Trace, a DataFrame with prompt_tokens/output_tokens "
                      f"(or {PREFILL}/{DECODE}), a bundled name or a CSV path; got {type(table).__name__}")


def sample_lengths(n: int, seed: Seed = 0, table: Any = None, prompt_tokens: LengthSpec | None = None,
                   output_tokens: LengthSpec | None = None) -> pd.DataFrame:
    """``n`` (prompt_tokens, output_tokens) pairs.

    With ``table`` (see :func:`length_table`) whole rows are sampled with replacement, so prompt and output
    stay paired; otherwise each column is drawn from its spec independently.
    """
    g = rng(seed)
    if table is not None:
        if prompt_tokens is not None or output_tokens is not None:
            raise ConfigError("pass either a length table or prompt_tokens/output_tokens specs, not both")
        t = length_table(table)
        if len(t) == 0:
            raise ConfigError("length table is empty")
        idx = g.integers(0, len(t), n)
        return pd.DataFrame({"prompt_tokens": t["prompt_tokens"].to_numpy()[idx].astype(np.int64),
                             "output_tokens": t["output_tokens"].to_numpy()[idx].astype(np.int64)})
    if prompt_tokens is None or output_tokens is None:
        raise ConfigError("pass a length table or both prompt_tokens and output_tokens specs")
    return pd.DataFrame({"prompt_tokens": draw_lengths(prompt_tokens, g, n, "prompt_tokens"),
                         "output_tokens": draw_lengths(output_tokens, g, n, "output_tokens")})
