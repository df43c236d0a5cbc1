"""The request schema and the :class:`Trace` container every engine and formulation reads.

A :class:`Trace` is a validated, arrival-sorted table of requests backed by a pandas DataFrame
(``trace.df``). Engines iterate over its columns as numpy arrays, e.g.
``trace.df["arrival_time_s"].to_numpy()``.

Columns (SI units, named in the identifier):

=====================  ========  ==========================================================================
column                 required  meaning
=====================  ========  ==========================================================================
request_id             yes       unique per trace, never empty (int or str)
arrival_time_s         yes       seconds from the trace origin, finite and >= 0
prompt_tokens          yes       int, 1 .. :data:`MAX_TOKENS`
output_tokens          yes       int, 1 .. :data:`MAX_TOKENS` (tokens to generate, including the first one)
session_id             no        multi-round sessions (see :func:`gpusched.synthetic.agent_sessions`); empty =
                                 the row belongs to no session
round                  no        0-based round within the session: a session's rows carry rounds 0, 1, ..,
                                 k-1, once each (a gap would leave the later rounds never released)
think_time_s           no        for ``round > 0``: release the request this long after the previous round of
                                 the same session *finishes*; ``arrival_time_s`` of such rows is only a
                                 lower bound (the session's first arrival)
model, tier, region    no        names (str)
slo_ttft_s, slo_tpot_s no        per-request service-level objectives, seconds (empty = none)
slo_e2e_s              no        end-to-end deadline, seconds (SageServe's ``sla``)
prefix_block_hashes    no        tuple of ints, one per prefix block of ``trace.prefix_block_tokens`` tokens
client                 no        originating client (ServeGen)
measured_*_s           no        timestamps measured by a real engine (vLLM loader), for validation
=====================  ========  ==========================================================================

:func:`schema_problems` states these rules once; :class:`Trace` enforces them on any DataFrame, and the
file loaders (:mod:`gpusched.loaders`) run the same rules with the file's line numbers in the message.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, TraceError

REQUIRED_COLUMNS: tuple[str, ...] = ("request_id", "arrival_time_s", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "session_id", "round", "think_time_s", "model", "tier", "region", "slo_ttft_s", "slo_tpot_s",
    "slo_e2e_s", "prefix_block_hashes", "client",
)
COUNT_COLUMNS: tuple[str, ...] = ("prompt_tokens", "output_tokens")
#: optional per-request durations: empty (NaN) or a finite number of seconds >= 0
SECONDS_COLUMNS: tuple[str, ...] = ("think_time_s", "slo_ttft_s", "slo_tpot_s", "slo_e2e_s")
#: The most tokens one request may have in its prompt or its output. No model's context comes near it (the
#: largest are ~1e7), and it keeps token sums over ten million requests far inside int64, so a count read
#: from a file is range-checked against it before it is cast to an integer.
MAX_TOKENS = 10**9
PERCENTILES = (50, 90, 99)


# ---- reading values ---------------------------------------------------------------------------------

_MISSING_TEXT = ["", "nan", "NaN", "NAN", "Nan"]  # what a blank cell looks like as text


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or pd.api.types.is_string_dtype(values)


def is_missing(values: pd.Series, stripped: pd.Series | None = None) -> np.ndarray:
    """Where ``values`` holds nothing: None, NaN, or a blank or ``"nan"`` string (``stripped``: the text
    already stripped, to save a pass)."""
    missing = np.array(values.isna(), dtype=bool)  # a copy: pandas may hand out read-only arrays
    if _is_text(values):
        text = values.astype(str).str.strip() if stripped is None else stripped
        missing |= np.array(text.isin(_MISSING_TEXT), dtype=bool)
    return missing


class Numbers(NamedTuple):
    """A column read as numbers: ``values`` (float, NaN where missing or not numeric) and two masks."""

    values: np.ndarray
    missing: np.ndarray
    not_a_number: np.ndarray


def as_numbers(values: pd.Series) -> Numbers:
    """``values`` as :class:`Numbers`. Text is stripped and parsed (``" 12 "`` is 12); booleans, lists and
    other objects are not numbers. A huge integer (``99999999999999999999``) becomes a huge float, never a
    wrapped int64: range checks come after this, casts after those.
    """
    if pd.api.types.is_bool_dtype(values):
        missing = is_missing(values)
        return Numbers(np.full(len(values), np.nan), missing, ~missing)
    if pd.api.types.is_numeric_dtype(values):
        return Numbers(np.array(values, dtype=float), is_missing(values), np.zeros(len(values), dtype=bool))
    stripped = values.astype(str).str.strip()
    missing = is_missing(values, stripped)
    num = np.array(pd.to_numeric(stripped, errors="coerce"), dtype=float)
    if values.dtype == object:  # values parsed from JSON: a bool or a list is not a number
        odd = values.map(type).isin([bool, np.bool_, list, dict, tuple]).to_numpy()
        num[odd] = np.nan
    num[missing] = np.nan
    return Numbers(num, missing, np.isnan(num) & ~missing)


def as_int_ids(values: pd.Series) -> pd.Series | None:
    """``values`` as int64 if every one is an integer that float64 holds exactly (|v| < 2**53), else None."""
    v, missing, nan = as_numbers(values)
    ok = ~missing & ~nan & np.isfinite(v)
    if len(v) and ok.all() and (v == np.floor(v)).all() and (np.abs(v) < 2.0**53).all():
        return pd.Series(v.astype(np.int64), index=values.index)
    return None


# ---- the rules ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """Rows of a table that break one rule: ``mask`` (bool, one per row), the column, what is wrong."""

    mask: np.ndarray
    column: str
    reason: str


def count_problems(numbers: Numbers, col: str) -> Iterator[Problem]:
    """The rules of a token count (:data:`COUNT_COLUMNS`) on a column read with :func:`as_numbers`, named
    ``col`` (a file may name it otherwise)."""
    v, missing, nan = numbers
    ok = ~missing & ~nan
    yield Problem(missing, col, "is missing")
    yield Problem(nan, col, "is not a number")
    finite = ok & np.isfinite(v)
    yield Problem(ok & ~np.isfinite(v), col, "is not finite (token counts are integers)")
    yield Problem(finite & (v > MAX_TOKENS), col,
                  f"is above {MAX_TOKENS:,} tokens, the most one request may have (gpusched.trace.MAX_TOKENS)")
    yield Problem(finite & (v <= MAX_TOKENS) & (v != np.floor(v)), col, "is not an integer")
    yield Problem(finite & (v < 0), col, "is negative (token counts are integers >= 1)")
    yield Problem(finite & (v >= 0) & (v < 1), col, "must be >= 1 token")


def _session_problems(df: pd.DataFrame) -> Iterator[Problem]:
    in_session = ~is_missing(df["session_id"])
    if not in_session.any():
        return
    if "round" not in df.columns:
        yield Problem(in_session, "session_id", "is given but the table has no 'round' column; add each row's "
                                                "0-based round within its session")
        return
    r, r_missing, r_nan = as_numbers(df["round"])
    yield Problem(in_session & r_missing, "round", "is missing for a row of a session; give its 0-based round")
    valid = in_session & ~r_missing & ~r_nan & np.isfinite(r) & (r >= 0) & (r == np.floor(r))
    if not valid.any():
        return
    rounds = pd.DataFrame({"sid": df["session_id"].to_numpy()[valid], "r": r[valid]})
    stats = rounds.groupby("sid", sort=False)["r"].agg(["min", "max", "nunique", "size"])
    broken = stats.index[(stats["min"] != 0) | (stats["max"] != stats["size"] - 1)
                         | (stats["nunique"] != stats["size"])]
    if len(broken):
        yield Problem(valid & df["session_id"].isin(list(broken)).to_numpy(), "session_id",
                      "has rounds that are not exactly 0, 1, ..., k-1 once each (a round after a gap or a "
                      "repeated round would never be released); number each session's rounds from 0")


def schema_problems(df: pd.DataFrame) -> Iterator[Problem]:
    """Every rule of the schema above, as :class:`Problem` masks (those that match no row included).

    The table must have :data:`REQUIRED_COLUMNS` (checked by the caller); values may be text.
    """
    rid = df["request_id"]
    rid_missing = is_missing(rid)
    yield Problem(rid_missing, "request_id", "is empty; give every request an id (or leave the column out "
                                             "to have ids generated)")
    yield Problem(rid.duplicated(keep="first").to_numpy() & ~rid_missing, "request_id",
                  "is not unique (an earlier row has the same id)")
    t, missing, nan = as_numbers(df["arrival_time_s"])
    yield Problem(missing, "arrival_time_s", "is missing")
    yield Problem(nan, "arrival_time_s", "is not a number")
    yield Problem(~missing & ~nan & ~(np.isfinite(t) & (t >= 0)), "arrival_time_s",
                  "must be a finite number of seconds >= 0")
    for col in COUNT_COLUMNS:
        yield from count_problems(as_numbers(df[col]), col)
    for col in SECONDS_COLUMNS:
        if col in df.columns:
            v, missing, nan = as_numbers(df[col])
            yield Problem(nan, col, "is not a number of seconds (leave the cell empty for none)")
            yield Problem(~missing & ~nan & ~(np.isfinite(v) & (v >= 0)), col,
                          "must be a finite number of seconds >= 0 (or empty)")
    if "round" in df.columns:
        v, missing, nan = as_numbers(df["round"])
        yield Problem(nan, "round", "is not a number (a round is an integer >= 0)")
        yield Problem(~missing & ~nan & ~(np.isfinite(v) & (v >= 0) & (v == np.floor(v))), "round",
                      "must be an integer >= 0")
    if "session_id" in df.columns:
        yield from _session_problems(df)


def _validated(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check the schema vectorised, coerce numbers (counts to int64 after the range check), sort stably."""
    if not isinstance(df, pd.DataFrame):
        raise TraceError(f"trace {name!r}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(f"trace {name!r}: missing column(s) {missing}; have {list(df.columns)}")
    df = df.reset_index(drop=True).copy()
    for p in schema_problems(df):
        if p.mask.any():
            i = int(np.flatnonzero(p.mask)[0])
            raise TraceError(
                f"trace {name!r}: {int(p.mask.sum())} row(s) with bad {p.column!r}; first at row {i} (0-based "
                f"position in the table, request_id={_plain(df['request_id'].iloc[i])!r}): {p.column}="
                f"{_plain(df[p.column].iloc[i])!r} {p.reason}")
    df["arrival_time_s"] = as_numbers(df["arrival_time_s"])[0]
    for col in COUNT_COLUMNS:
        df[col] = as_numbers(df[col])[0].astype(np.int64)  # range-checked above
    for col in SECONDS_COLUMNS:
        if col in df.columns:
            df[col] = as_numbers(df[col])[0]
    if "round" in df.columns and not pd.api.types.is_numeric_dtype(df["round"]):
        r, missing, _ = as_numbers(df["round"])
        df["round"] = r if missing.any() else r.astype(np.int64)
    df = df[list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]]
    return df.sort_values("arrival_time_s", kind="stable").reset_index(drop=True)


# ---- containers ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    """One request. ``prefix_block_hashes`` holds one id per prefix block (equal ids = shareable KV)."""

    request_id: Any
    arrival_time_s: float
    prompt_tokens: int
    output_tokens: int
    session_id: Any = None
    round: int | None = None
    think_time_s: float | None = None
    model: str | None = None
    tier: str | None = None
    region: str | None = None
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    prefix_block_hashes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.arrival_time_s) or self.arrival_time_s < 0:
            raise TraceError(f"request {self.request_id!r}: arrival_time_s={self.arrival_time_s!r} must be finite and >= 0")
        for name in COUNT_COLUMNS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_TOKENS:
                raise TraceError(f"request {self.request_id!r}: {name}={v!r} must be an int in 1..{MAX_TOKENS:,}")


@dataclass(frozen=True, eq=False)
class Trace:
    """A validated, arrival-sorted request table.

    Parameters
    ----------
    df : DataFrame with at least :data:`REQUIRED_COLUMNS`; copied, validated (:func:`schema_problems`) and
        stably sorted by arrival.
    name : short label (bundled name or file stem).
    source : where it came from (a path, ``"synthetic"``, ...).
    prefix_block_tokens : tokens per entry of ``prefix_block_hashes`` (512 for Mooncake), or None.
    skipped_rows : rows dropped by a loader called with ``on_error="skip"`` (0 otherwise).
    meta : free-form provenance (loader arguments, synthetic rate used, how ids were generated, ...).
    """

    df: pd.DataFrame
    name: str = "trace"
    source: str | None = None
    prefix_block_tokens: int | None = None
    skipped_rows: int = 0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "df", _validated(self.df, self.name))
        if self.prefix_block_tokens is not None and self.prefix_block_tokens < 1:
            raise TraceError(f"trace {self.name!r}: prefix_block_tokens={self.prefix_block_tokens} must be >= 1")

    # ---- size and rate ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return (f"Trace(name={self.name!r}, rows={len(self)}, duration_s={self.duration_s:.1f}, "
                f"rate_per_s={self.rate_per_s:.3f})")

    @property
    def duration_s(self) -> float:
        """Last arrival minus first arrival (0 for fewer than 2 rows)."""
        if len(self.df) < 2:
            return 0.0
        t = self.df["arrival_time_s"].to_numpy()
        return float(t[-1] - t[0])

    @property
    def rate_per_s(self) -> float:
        """Rows per second of ``duration_s`` (NaN if the duration is 0)."""
        d = self.duration_s
        return len(self) / d if d > 0 else float("nan")

    def describe(self) -> dict:
        """One-row summary: rows, duration, rate, mean and p50/p90/p99 of prompt and output tokens."""
        out: dict[str, Any] = {"name": self.name, "rows": len(self), "duration_s": self.duration_s,
                               "rate_per_s": self.rate_per_s}
        for col, short in (("prompt_tokens", "prompt"), ("output_tokens", "output")):
            v = self.df[col].to_numpy()
            out[f"{short}_mean"] = float(v.mean()) if len(v) else float("nan")
            for p in PERCENTILES:
                out[f"{short}_p{p}"] = float(np.percentile(v, p)) if len(v) else float("nan")
        return out

    # ---- transformations (each returns a new Trace) ------------------------------------------------
    def _derive(self, df: pd.DataFrame, suffix: str, **meta: Any) -> "Trace":
        return Trace(df, name=f"{self.name}{suffix}", source=self.source,
                     prefix_block_tokens=self.prefix_block_tokens, skipped_rows=self.skipped_rows,
                     meta={**self.meta, **meta})

    def scale_rate(self, factor: float) -> "Trace":
        """Multiply the arrival rate by ``factor`` (> 1 compresses time): ``t -> t / factor``.

        ``think_time_s`` (a client-side delay) and the SLO columns are left unchanged.
        """
        if not np.isfinite(factor) or factor <= 0:
            raise ConfigError(f"scale_rate factor={factor!r} must be a finite number > 0")
        df = self.df.copy()
        df["arrival_time_s"] = df["arrival_time_s"].to_numpy() / factor
        return self._derive(df, f"x{factor:g}", rate_factor=factor)

    def window(self, start_s: float, end_s: float, rebase: bool = True) -> "Trace":
        """Rows with ``start_s <= arrival_time_s < end_s``; ``rebase`` shifts times so ``start_s`` becomes 0."""
        if not end_s > start_s:
            raise ConfigError(f"window end_s={end_s!r} must be > start_s={start_s!r}")
        t = self.df["arrival_time_s"].to_numpy()
        df = self.df[(t >= start_s) & (t < end_s)].copy()
        if rebase:
            df["arrival_time_s"] = df["arrival_time_s"].to_numpy() - start_s
        return self._derive(df, f"[{start_s:g},{end_s:g})", window_s=(start_s, end_s), rebased=rebase)

    def head(self, n: int) -> "Trace":
        """The first ``n`` arrivals."""
        if n < 0:
            raise ConfigError(f"head n={n} must be >= 0")
        return self._derive(self.df.head(n), f"[:{n}]")

    def repeat(self, times: int) -> "Trace":
        """``times`` copies back to back; copy k is shifted by k*(span + mean gap) and its ids made unique.

        Integer ids become ``id + k * (max_id + 1)``; other ids become ``f"{id}#{k}"`` (copy 0 unchanged).
        Session ids, if any, are made unique the same way so sessions do not merge across copies.
        """
        if times < 1:
            raise ConfigError(f"repeat times={times} must be >= 1")
        n = len(self.df)
        span = self.duration_s
        gap = span / (n - 1) if n > 1 else 0.0
        period = span + gap
        parts = []
        for k in range(times):
            part = self.df.copy()
            part["arrival_time_s"] = part["arrival_time_s"].to_numpy() + k * period
            for col in ("request_id", "session_id"):
                if col in part.columns and k > 0:
                    part[col] = _unique_ids(self.df[col], k)
            parts.append(part)
        return self._derive(pd.concat(parts, ignore_index=True), f"x{times}copies", repeated=times)

    # ---- io ---------------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the native CSV (readable back with :func:`gpusched.workload.load_trace`); hashes as
        space-separated ints."""
        df = self.df.copy()
        if "prefix_block_hashes" in df.columns:
            df["prefix_block_hashes"] = [" ".join(map(str, h)) if isinstance(h, (tuple, list)) else ""
                                         for h in df["prefix_block_hashes"]]
        path = Path(path)
        with open(path, "w", newline="") as f:
            if self.prefix_block_tokens is not None:
                # A comment line would break other readers; store the block size in a column instead.
                df["prefix_block_tokens"] = self.prefix_block_tokens
            df.to_csv(f, index=False)
        return path

    def requests(self) -> Iterator[Request]:
        """Iterate as :class:`Request` objects (slow path; engines should use the columns)."""
        names = [f for f in Request.__dataclass_fields__ if f in self.df.columns]
        for row in self.df[names].itertuples(index=False):
            kw = {k: (None if _isna(v) else v) for k, v in zip(names, row)}
            kw["prompt_tokens"] = int(kw["prompt_tokens"])
            kw["output_tokens"] = int(kw["output_tokens"])
            yield Request(**kw)

    @classmethod
    def from_requests(cls, requests: list[Request], name: str = "trace", **kwargs: Any) -> "Trace":
        rows = [{k: getattr(r, k) for k in Request.__dataclass_fields__} for r in requests]
        df = pd.DataFrame(rows, columns=list(Request.__dataclass_fields__))
        df = df.dropna(axis=1, how="all")
        return cls(df, name=name, **kwargs)


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python value it holds (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def _isna(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _unique_ids(ids: pd.Series, k: int) -> pd.Series:
    """Copy ``k``'s ids; an empty id (a row outside every session) stays empty."""
    if pd.api.types.is_integer_dtype(ids):
        return ids + k * (int(ids.max()) + 1)
    return (ids.astype(str) + f"#{k}").where(~is_missing(ids), ids)
