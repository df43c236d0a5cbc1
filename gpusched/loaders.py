"""Readers for trace files; each returns a :class:`gpusched.trace.Trace`.

Call them through :func:`gpusched.workload.load_trace`, which sniffs the format from the file's first line
(:func:`sniff_format`; ``format=`` skips that). Units are converted here (milliseconds, datetimes, engine
clocks -> seconds); nothing inside the library sees another unit.

=============  ==========================================================  =============================
format         columns read (time column first)                             file
=============  ==========================================================  =============================
native         arrival_time_s, prompt_tokens, output_tokens, request_id,    CSV (:meth:`Trace.to_csv`)
               and the optional schema columns (:mod:`gpusched.trace`)
azure          TIMESTAMP (ISO datetime), ContextTokens, GeneratedTokens     CSV (Azure LLM inference 2023)
mooncake       timestamp (ms), input_length, output_length, hash_ids        JSON lines (Mooncake FAST'25)
sageserve      arrival_timestamp (s), prompt_size, token_size, ...          CSV (SageServe's simulator)
vidur          arrived_at (s), num_prefill_tokens, num_decode_tokens        CSV (Vidur's request traces)
length_stats   num_prefill_tokens, num_decode_tokens (no time column)       CSV (Sarathi/Vidur length files)
servegen       per-client rate windows (:mod:`gpusched.servegen`)           chunk-<id>-trace.csv / folder
vllm           queued_ts (engine clock, s), input_toks, output_toks, ...    requests.jsonl of a vLLM bench
=============  ==========================================================  =============================

**Length-only traces.** A native, Azure, Mooncake, SageServe or Vidur file without its time column (and
every length-statistics file) has lengths but no timestamps: it loads only with ``rate_per_s=`` (seeded
Poisson arrivals by default, ``arrival="gamma"`` with ``cv=``, or ``"constant"``; row ``i`` of the file gets
the ``i``-th arrival) and raises :class:`TraceError` asking for a rate without it. Passing ``rate_per_s`` for a
file that has timestamps raises :class:`ConfigError` (use :meth:`Trace.scale_rate` to change its load).

**Request ids.** Where a file has no id column (Azure, Mooncake, and native, SageServe or Vidur files
without ``request_id``), ids are generated: the 0-based index of the data row in file order, counting rows
dropped with ``on_error="skip"``; ``trace.meta["request_id"]`` says so. A file's own ids must be present on
every row and unique.

**Errors.** Bad input raises :class:`TraceError` naming the file, the 1-based line (as a text editor numbers
it), the field, the value and the fix (:mod:`gpusched.rows`); the schema's rules (:func:`schema_problems`)
run with the file's line numbers too. With ``on_error="skip"`` bad rows are dropped instead, counted in
``trace.skipped_rows`` and reported with ``warnings.warn``; nothing is dropped silently. A file with a header
but no data rows, or with no valid row left, is an error, not an empty trace.
"""
from __future__ import annotations

import csv
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpusched.arrivals import ARRIVAL_PROCESSES, arrivals, check_rate, rng
from gpusched.errors import ConfigError, TraceError
from gpusched.lengths import DECODE, PREFILL, check_total, read_length_table, sample_lengths
from gpusched.rows import (RowChecker, first_text_line, parse_counts, parse_numbers, read_csv_text,
                           read_jsonl, require_columns)
from gpusched.servegen import SERVEGEN_COLUMNS, read_servegen
from gpusched.trace import (REQUIRED_COLUMNS, SECONDS_COLUMNS, Trace, as_int_ids, as_numbers, is_missing,
                            schema_problems)

__all__ = ["FORMATS", "MOONCAKE_BLOCK_TOKENS", "GENERATED_IDS", "sniff_format", "load_path", "read_native",
           "read_azure", "read_mooncake", "read_sageserve", "read_vidur", "read_length_stats",
           "read_length_table", "read_servegen", "read_vllm"]

FORMATS = ("native", "azure", "mooncake", "sageserve", "vidur", "servegen", "length_stats", "vllm")
MOONCAKE_BLOCK_TOKENS = 512
GENERATED_IDS = "generated: 0-based data-row index in file order"
# SageServe's model letters (see traces/README.md)
SAGESERVE_MODELS = {"A": "llama-2-70b", "B": "bloom-176b", "C": "llama-3.1-8b", "D": "llama-3.2-3b"}
SAGESERVE_TIERS = {"prod": "interactive", "dev": "batch"}
SAGESERVE_REGIONS = {"0": "westus", "1": "centralus", "2": "eastus"}
_INT64_MAX = 2**63 - 1


# ---- shared steps ---------------------------------------------------------------------------------------

class _Arrivals:
    """Synthetic arrivals for a length-only file: ``rate_per_s`` with a seeded process."""

    def __init__(self, rate_per_s: float, seed: Any, arrival: str, cv: float):
        check_rate(rate_per_s)
        if arrival not in ARRIVAL_PROCESSES:
            raise ConfigError(f"arrival={arrival!r}: use one of {', '.join(ARRIVAL_PROCESSES)}")
        self.rate_per_s, self.seed, self.arrival, self.cv = rate_per_s, seed, arrival, cv

    def draw(self, n: int, seed: Any = None) -> np.ndarray:
        return arrivals(self.arrival, self.rate_per_s, n=n, cv=self.cv, seed=self.seed if seed is None else seed)

    @property
    def meta(self) -> dict:
        return {"rate_per_s": self.rate_per_s, "arrival": self.arrival, "cv": self.cv, "seed": self.seed,
                "arrivals": "synthetic: the file has no timestamps; row i (file order) gets the i-th arrival"}


def _timing(path: Path, columns: Any, time_col: str | None, header_line: int, rate_per_s: float | None,
            seed: Any, arrival: str, cv: float) -> _Arrivals | None:
    """None if the file has its time column; the synthetic arrivals if it has none and a rate was given."""
    if time_col is not None and time_col in columns:
        if rate_per_s is not None:
            raise ConfigError(f"{path}: has timestamps (column {time_col!r}); rate_per_s={rate_per_s!r} applies "
                              f"only to length-only traces; to change its load use trace.scale_rate(factor)")
        return None
    if rate_per_s is None:
        what = f"no {time_col!r} column" if time_col else "no time column"
        raise TraceError(f"{path}: line {header_line}: {what}, so the trace has lengths but no timestamps; pass "
                         f"rate_per_s=<requests per second> for seeded Poisson arrivals (seed=, arrival=, cv=; "
                         f"the command line's --rate)")
    return _Arrivals(rate_per_s, seed, arrival, cv)


def _own_ids(values: pd.Series) -> pd.Series:
    """A file's id column: int64 if every id is an integer, else the stripped text (None where empty)."""
    ints = as_int_ids(values)
    if ints is not None:
        return ints
    text = values.astype(str).str.strip()
    return text.where(~is_missing(values), None)


def _ids(rows: RowChecker, df: pd.DataFrame, column: str | None, meta: dict) -> pd.Series | np.ndarray:
    """The file's ids from ``column`` (each present), or (no such column) generated ones, noted in ``meta``."""
    if column is not None and column in df.columns:
        rows.flag(is_missing(df[column]), column, df[column], "is empty; give every request an id (or leave the "
                                                             "column out to have ids generated)")
        return _own_ids(df[column])
    meta["request_id"] = GENERATED_IDS
    return np.arange(len(df), dtype=np.int64)


@dataclass
class _File:
    """A trace file opened for reading: its records (``df``), their row checker, the synthetic arrivals it
    needs if it has no time column (else None) and the provenance gathered so far."""

    path: Path
    df: pd.DataFrame
    rows: RowChecker
    timing: _Arrivals | None
    meta: dict


def _open(path: Any, on_error: str, need: tuple[str, ...], time_col: str | None, rate_per_s: float | None,
          seed: Any, arrival: str, cv: float, jsonl: bool = False) -> _File:
    """Read ``path`` (CSV, or JSON lines), check its ``need`` columns and decide where arrivals come from."""
    path = Path(path)
    text = read_jsonl(path, on_error) if jsonl else read_csv_text(path, on_error)
    line = (int(text.lines[0]) if len(text.lines) else 1) if jsonl else text.header_line
    require_columns(path, text.df.columns, need, line)
    timing = _timing(path, text.df.columns, time_col, line, rate_per_s, seed, arrival, cv) if time_col else None
    return _File(path, text.df, text.checker(path, on_error), timing, {})


def _finish(path: Path, rows: RowChecker, out: pd.DataFrame, timing: _Arrivals | None, meta: dict,
            raw: pd.DataFrame | None = None, **trace_kw: Any) -> Trace:
    """Run the schema's rules with the file's lines (messages show ``raw``, the file's text, where it has the
    column), drop or raise, add synthetic arrivals, build the Trace."""
    if timing is not None:
        out["arrival_time_s"] = 0.0  # placeholder for the checks; drawn below for the rows kept
    rows.flag_problems(out, schema_problems(out), raw)
    if rows.on_error == "skip" and "session_id" in out.columns:  # a round left alone would never be released
        sid = out["session_id"]
        in_session = ~is_missing(sid)
        broken = sid[rows.bad & in_session].unique()
        rows.flag(in_session & sid.isin(list(broken)).to_numpy(), "session_id", sid,
                  "belongs to a session with a bad row (a session is skipped whole)")
    keep, skipped = rows.finish()
    out = out[keep].reset_index(drop=True)
    if out.empty:
        raise TraceError(f"{path}: no valid row left ({skipped} bad row(s) skipped); nothing to load")
    if timing is not None:
        out["arrival_time_s"] = timing.draw(len(out))
        meta = {**meta, **timing.meta}
    return Trace(out, name=path.stem, source=str(path), skipped_rows=skipped, meta=meta, **trace_kw)


def _numeric_or_text(values: pd.Series) -> pd.Series:
    """An extra column: int64 if every value is an integer written plainly (``"021"`` stays text: its zero
    may matter), float if every value is a plain number, else the text as read."""
    v, missing, nan = as_numbers(values)
    text = values.astype(str).str.strip()
    if nan.any() or missing.all() or text.str.match(r"^[+-]?0\d").any():
        return values
    if not missing.any() and np.all(np.abs(v) < 2.0**53) and np.all(v == np.floor(v)) \
            and (text == pd.Series(v.astype(np.int64), index=values.index).astype(str)).all():
        return pd.Series(v.astype(np.int64), index=values.index)
    return pd.Series(v, index=values.index)


# ---- sniffing -------------------------------------------------------------------------------------------

def sniff_format(path: str | Path) -> str:
    """Guess the format of a trace file or folder from its content (first line), not its extension."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("chunk-*-trace.csv")):
            return "servegen"
        raise TraceError(f"{path}: folder holds no ServeGen chunk-<id>-trace.csv files; unknown trace format")
    if not path.exists():
        raise TraceError(f"{path}: no such file")
    line, first = first_text_line(path)
    if first.startswith("{"):
        try:
            keys = set(json.loads(first))
        except ValueError as e:
            raise TraceError(f"{path}: line {line}: malformed JSON record: {e}") from None
        if {"input_toks", "output_toks"} <= keys or "queued_ts" in keys:
            return "vllm"
        if {"input_length", "output_length"} <= keys or "hash_ids" in keys:
            return "mooncake"
        raise TraceError(f"{path}: line {line}: unknown JSON-lines trace format with fields {sorted(keys)}")
    cols = [c.strip() for c in next(csv.reader([first]), [])]
    lower = {c.lower() for c in cols}
    if "TIMESTAMP" in cols or {"contexttokens", "generatedtokens"} & lower:
        return "azure"
    if {PREFILL, DECODE} & lower:
        return "vidur" if "arrived_at" in lower else "length_stats"
    if "arrival_timestamp" in lower or {"prompt_size", "token_size", "model_type"} <= lower:
        if {"hardware", "prompt_time"} <= lower:
            raise TraceError(f"{path}: line {line}: this is SageServe's performance-model table (profiling "
                             f"data), not a request trace")
        return "sageserve"
    if {"hardware", "prompt_time", "token_time"} <= lower:
        raise TraceError(f"{path}: line {line}: this is SageServe's performance-model table (profiling data), "
                         f"not a request trace")
    if "arrival_time_s" in lower or {"prompt_tokens", "output_tokens"} <= lower:
        return "native"
    if len(cols) == len(SERVEGEN_COLUMNS) and cols[3] in ("Gamma", "Weibull", "") and _is_number(cols[0]):
        return "servegen"
    raise TraceError(f"{path}: line {line}: unknown trace format (first line {first[:120]!r}); known formats: "
                     f"{', '.join(FORMATS)} (see gpusched.loaders), or pass format=")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_path(path: Any, format: str | None = None, **kwargs: Any) -> Trace:
    """Read a trace file/folder (or a list of ServeGen files) with the reader its content calls for.

    Keyword arguments go to the reader; one it does not take raises :class:`ConfigError` listing those it does.
    """
    if isinstance(path, (list, tuple)):
        fmt, path = format or "servegen", list(path)
    else:
        path = Path(path)
        fmt = format or sniff_format(path)
    if fmt not in READERS:
        raise ConfigError(f"unknown trace format {fmt!r}; use one of {', '.join(FORMATS)}")
    reader = READERS[fmt]
    accepted = list(inspect.signature(reader).parameters)[1:]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"{path}: the {fmt} reader takes no argument(s) {unknown}; it accepts {accepted}")
    return reader(path, **kwargs)


# ---- formats --------------------------------------------------------------------------------------------

def read_native(path: Path, on_error: str = "raise", rate_per_s: float | None = None, seed: int = 0,
                arrival: str = "poisson", cv: float = 1.0) -> Trace:
    """The CSV written by :meth:`Trace.to_csv`: the schema's columns by name (:mod:`gpusched.trace`).

    ``request_id`` may be left out (ids generated); without ``arrival_time_s`` the file is length-only and
    needs ``rate_per_s``. ``prefix_block_hashes`` is space-separated integers; ``prefix_block_tokens`` one
    integer >= 1 repeated on every row. Other columns are kept: numbers if every value is one, else text.
    """
    f = _open(path, on_error, ("prompt_tokens", "output_tokens"), "arrival_time_s", rate_per_s, seed, arrival, cv)
    path, df, rows, timing, meta = f.path, f.df, f.rows, f.timing, f.meta
    out = pd.DataFrame({"request_id": _ids(rows, df, "request_id", meta)})
    if timing is None:
        out["arrival_time_s"] = parse_numbers(rows, df["arrival_time_s"], "arrival_time_s", unit="seconds")
    for c in ("prompt_tokens", "output_tokens"):
        out[c] = parse_counts(rows, df[c], c)
    block = None
    for c in df.columns:
        if c in REQUIRED_COLUMNS:
            continue
        if c in SECONDS_COLUMNS or c == "round" or c.startswith("measured_"):
            out[c] = parse_numbers(rows, df[c], c, allow_missing=True, allow_negative=c.startswith("measured_"),
                                   unit="" if c == "round" else "seconds")
        elif c == "session_id":
            out[c] = _own_ids(df[c])
        elif c == "prefix_block_hashes":
            out[c] = _block_hashes(rows, df[c])
        elif c == "prefix_block_tokens":
            block = _block_tokens(rows, df[c])
        elif c in ("model", "tier", "region"):
            out[c] = df[c]
        else:
            out[c] = _numeric_or_text(df[c])
    return _finish(path, rows, out, timing, meta, df, prefix_block_tokens=block)


def _block_hashes(rows: RowChecker, values: pd.Series) -> list[tuple[int, ...]]:
    ok = values.str.fullmatch(r"\s*(-?\d{1,19}(\s+-?\d{1,19})*)?\s*").to_numpy()
    hashes = [tuple(int(x) for x in s.split()) if good else () for s, good in zip(values, ok)]
    in_range = np.fromiter((all(-_INT64_MAX - 1 <= h <= _INT64_MAX for h in hs) for hs in hashes), bool,
                           count=len(hashes))
    rows.flag(~(ok & in_range), "prefix_block_hashes", values,
              "is not a space-separated list of 64-bit integers (one per prefix block; empty for none)")
    return hashes


def _block_tokens(rows: RowChecker, values: pd.Series) -> int | None:
    v, missing, nan = as_numbers(values)
    bad = nan | (~missing & ~(np.isfinite(v) & (v >= 1) & (v == np.floor(v)) & (v <= 2**31)))
    rows.flag(bad, "prefix_block_tokens", values, "is not an integer >= 1 (tokens per prefix block)")
    distinct = np.unique(v[~missing & ~bad])
    if len(distinct) > 1:
        rows.flag(~missing & ~bad & (v != distinct[0]), "prefix_block_tokens", values,
                  f"differs from the first row's {int(distinct[0])}; a trace has one block size")
    return int(distinct[0]) if len(distinct) else None


def read_azure(path: Path, on_error: str = "raise", rate_per_s: float | None = None, seed: int = 0,
               arrival: str = "poisson", cv: float = 1.0) -> Trace:
    """Azure LLM inference trace 2023: ``TIMESTAMP`` (ISO datetime), ``ContextTokens``, ``GeneratedTokens``.

    Arrival = seconds since the earliest valid timestamp (``trace.meta["origin"]``). Timestamps are either all
    without a UTC offset (read as given) or all with one (possibly different offsets, converted to UTC, so the
    gaps are real); a file that mixes the two is refused, since the gap between them would be a guess.
    ``request_id`` is generated (data-row index).
    """
    f = _open(path, on_error, ("ContextTokens", "GeneratedTokens"), "TIMESTAMP", rate_per_s, seed, arrival, cv)
    path, df, rows, timing, meta = f.path, f.df, f.rows, f.timing, f.meta
    out = pd.DataFrame({"request_id": _ids(rows, df, None, meta),
                        "prompt_tokens": parse_counts(rows, df["ContextTokens"], "ContextTokens"),
                        "output_tokens": parse_counts(rows, df["GeneratedTokens"], "GeneratedTokens")})
    if timing is None:
        out["arrival_time_s"], origin = _azure_seconds(rows, df["TIMESTAMP"])
        meta["origin"] = origin
    return _finish(path, rows, out, timing, meta)


_UTC_OFFSET = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d*)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$")


def _azure_seconds(rows: RowChecker, values: pd.Series) -> tuple[np.ndarray, str]:
    raw = values.str.strip()
    present = (raw != "").to_numpy()
    rows.flag(~present, "TIMESTAMP", values, "is missing")
    try:  # one offset or none throughout: pandas reads it as is
        ts = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    except ValueError:  # offsets differ, or some rows have one and some not
        aware = raw.str.contains(_UTC_OFFSET).to_numpy()
        first = int(np.flatnonzero(present)[0])
        kind = "has a UTC offset" if aware[first] else "has no UTC offset"
        rows.flag(present & (aware != aware[first]), "TIMESTAMP", values,
                  f"mixes with line {rows.lines[first]}'s timestamp, which {kind}; give every TIMESTAMP a UTC "
                  f"offset or none, so the gaps between arrivals are unambiguous")
        ts = pd.to_datetime(raw, format="ISO8601", errors="coerce", utc=bool(aware[first]))
    rows.flag(ts.isna().to_numpy() & present, "TIMESTAMP", values,
              "is not a parsable datetime (ISO 8601, e.g. 2023-11-16 18:15:46.68)")
    valid = ts.notna().to_numpy() & ~rows.bad
    t0 = ts[valid].min() if valid.any() else ts.min()
    return (ts - t0).dt.total_seconds().to_numpy(dtype=float), str(t0)


def read_mooncake(path: Path, on_error: str = "raise", block_tokens: int = MOONCAKE_BLOCK_TOKENS,
                  rate_per_s: float | None = None, seed: int = 0, arrival: str = "poisson",
                  cv: float = 1.0) -> Trace:
    """Mooncake FAST'25 JSONL: ``timestamp`` (ms from trace start), ``input_length``, ``output_length``,
    ``hash_ids`` (one 64-bit integer id per ``block_tokens``-token prefix block -> ``prefix_block_hashes``).
    ``trace.prefix_block_tokens`` records the block size (512). ``request_id`` is generated."""
    f = _open(path, on_error, ("input_length", "output_length"), "timestamp", rate_per_s, seed, arrival, cv,
              jsonl=True)
    path, df, rows, timing, meta = f.path, f.df, f.rows, f.timing, f.meta
    out = pd.DataFrame({"request_id": _ids(rows, df, None, meta),
                        "prompt_tokens": parse_counts(rows, df["input_length"], "input_length"),
                        "output_tokens": parse_counts(rows, df["output_length"], "output_length")})
    if timing is None:
        out["arrival_time_s"] = parse_numbers(rows, df["timestamp"], "timestamp", unit="milliseconds") / 1000.0
    if "hash_ids" in df.columns:
        h = df["hash_ids"]
        ok = np.fromiter((isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                                      and -_INT64_MAX - 1 <= i <= _INT64_MAX for i in x)
                          for x in h), dtype=bool, count=len(h))
        rows.flag(~ok, "hash_ids", h, "is not a list of 64-bit integers (one id per prefix block)")
        out["prefix_block_hashes"] = [tuple(x) if good else () for x, good in zip(h, ok)]
    return _finish(path, rows, out, timing, meta, prefix_block_tokens=block_tokens)


def read_sageserve(path: Path, on_error: str = "raise", rate_per_s: float | None = None, seed: int = 0,
                   arrival: str = "poisson", cv: float = 1.0) -> Trace:
    """SageServe-style CSV (columns in traces/README.md).

    ``regions`` is read as text (leading zeros matter); ``region`` = the first (origin) region's name and
    ``region_priority`` keeps the full string. ``model_type`` A/B/C/D -> ``model``, ``workload_type``
    prod/dev -> ``tier`` interactive/batch, ``sla`` (s) -> ``slo_e2e_s``; ``batch_id`` and
    ``client_tenant`` are kept when present. Without ``request_id`` ids are generated.
    """
    f = _open(path, on_error, ("prompt_size", "token_size"), "arrival_timestamp", rate_per_s, seed, arrival, cv)
    path, df, rows, timing, meta = f.path, f.df, f.rows, f.timing, f.meta
    out = pd.DataFrame({"request_id": _ids(rows, df, "request_id", meta),
                        "prompt_tokens": parse_counts(rows, df["prompt_size"], "prompt_size"),
                        "output_tokens": parse_counts(rows, df["token_size"], "token_size")})
    if timing is None:
        out["arrival_time_s"] = parse_numbers(rows, df["arrival_timestamp"], "arrival_timestamp",
                                              unit="seconds")
    for col, dst, names in (("model_type", "model", SAGESERVE_MODELS),
                            ("workload_type", "tier", SAGESERVE_TIERS)):
        if col in df.columns:
            v = df[col].str.strip()
            rows.flag(~v.isin(list(names)).to_numpy(), col, df[col], f"is not one of {sorted(names)}")
            out[dst] = v.map(names)
    if "regions" in df.columns:
        r = df["regions"].str.strip()
        ok = r.str.fullmatch(r"[0-9]+").fillna(False).to_numpy() & r.str[0].isin(list(SAGESERVE_REGIONS)).to_numpy()
        rows.flag(~ok, "regions", df["regions"], "is not a region-priority string of digits 0-2 (read as text)")
        out["region"] = r.str[0].map(SAGESERVE_REGIONS)
        out["region_priority"] = r
    if "sla" in df.columns:
        out["slo_e2e_s"] = parse_numbers(rows, df["sla"], "sla", unit="seconds")
    for c in ("batch_id", "client_tenant"):
        if c in df.columns:
            out[c] = parse_numbers(rows, df[c], c, allow_missing=True, allow_negative=True)
    return _finish(path, rows, out, timing, meta)


def read_vidur(path: Path, on_error: str = "raise", rate_per_s: float | None = None, seed: int = 0,
               arrival: str = "poisson", cv: float = 1.0) -> Trace:
    """A request trace in Vidur's column names: ``arrived_at`` (s), ``num_prefill_tokens`` (prompt tokens),
    ``num_decode_tokens`` (output tokens, the first one included, as Vidur counts them).

    ``request_id`` is kept when present, else generated. ``num_total_tokens``, if present, must equal the sum
    of the two counts and is not kept (nor ``pd_ratio``, their ratio); other columns are kept. Without
    ``arrived_at`` the file is a length table and needs ``rate_per_s``.
    """
    f = _open(path, on_error, (PREFILL, DECODE), "arrived_at", rate_per_s, seed, arrival, cv)
    path, df, rows, timing, meta = f.path, f.df, f.rows, f.timing, f.meta
    out = pd.DataFrame({"request_id": _ids(rows, df, "request_id", meta),
                        "prompt_tokens": parse_counts(rows, df[PREFILL], PREFILL),
                        "output_tokens": parse_counts(rows, df[DECODE], DECODE)})
    check_total(rows, df, out["prompt_tokens"].to_numpy(), out["output_tokens"].to_numpy())
    if timing is None:
        out["arrival_time_s"] = parse_numbers(rows, df["arrived_at"], "arrived_at", unit="seconds")
    for c in df.columns:
        if c not in ("request_id", "arrived_at", PREFILL, DECODE, "num_total_tokens", "pd_ratio"):
            out[c] = _numeric_or_text(df[c])
    return _finish(path, rows, out, timing, meta)


def read_length_stats(path: Path, rate_per_s: float | None = None, seed: int = 0, arrival: str = "poisson",
                      cv: float = 1.0, n: int | None = None, on_error: str = "raise") -> Trace:
    """Length table (``num_prefill_tokens``, ``num_decode_tokens``) + synthetic arrivals at ``rate_per_s``
    (``arrival`` = poisson, gamma (with cv), constant).

    With ``n=None`` every row is one request, in file order (as :func:`read_vidur` reads a file without
    ``arrived_at``); with ``n`` rows are sampled with replacement.
    """
    path = Path(path)
    if n is None:
        return read_vidur(path, on_error=on_error, rate_per_s=rate_per_s, seed=seed, arrival=arrival, cv=cv)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n={n!r} must be an int >= 1 (requests to sample) or None (every row once)")
    timing = _timing(path, (), None, 1, rate_per_s, seed, arrival, cv)
    table = read_length_table(path, on_error)
    g = rng(seed)
    lengths = sample_lengths(n, seed=g, table=table)
    out = pd.DataFrame({"request_id": np.arange(n, dtype=np.int64), "arrival_time_s": timing.draw(n, seed=g),
                        "prompt_tokens": lengths["prompt_tokens"].to_numpy(),
                        "output_tokens": lengths["output_tokens"].to_numpy()})
    return Trace(out, name=path.stem, source=str(path), skipped_rows=table.attrs.get("skipped_rows", 0),
                 meta={**timing.meta, "n": n, "request_id": "generated: 0-based index of the sampled request",
                       "arrivals": "synthetic; rows sampled with replacement"})


_VLLM_CLOCK = ("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")


def read_vllm(path: Path, on_error: str = "raise") -> Trace:
    """vLLM benchmark ``requests.jsonl`` (LLMServingSim 2.0 layout).

    Arrival = ``queued_ts - min(queued_ts)``: the engine's view of arrivals (its monotonic clock), which
    excludes client-side and HTTP delays. The engine timestamps are kept re-based the same way as
    ``measured_scheduled_s``, ``measured_first_token_s``, ``measured_last_token_s``; they must not go back
    in time (``queued_ts <= scheduled_ts <= first_token_ts <= last_token_ts``). The client's epoch
    ``arrival_time`` is kept as ``measured_client_arrival_s`` re-based to its own minimum (another clock).
    Every record needs its ``request_id`` (it pairs the record with the engine's measurements).
    """
    f = _open(path, on_error, ("request_id", "input_toks", "output_toks", "queued_ts"), None, None, 0, "", 1.0,
              jsonl=True)
    path, df, rows = f.path, f.df, f.rows
    rid = df["request_id"]
    rows.flag(is_missing(rid), "request_id", rid, "is missing; every vLLM record needs the request_id that pairs "
                                                  "it with the engine's measurements")
    out = pd.DataFrame({"request_id": rid.astype(str).str.strip().where(~is_missing(rid), None),
                        "prompt_tokens": parse_counts(rows, df["input_toks"], "input_toks"),
                        "output_tokens": parse_counts(rows, df["output_toks"], "output_toks")})
    clock = {c: parse_numbers(rows, df[c], c, allow_negative=True) for c in _VLLM_CLOCK if c in df.columns}
    present = [c for c in _VLLM_CLOCK if c in clock]
    for i, later in enumerate(present[1:], start=1):
        for earlier in present[:i]:
            rows.flag(clock[later] < clock[earlier], later, df[later],
                      f"is before {earlier} of the same record: an engine's timestamps never go back; the record "
                      f"is corrupt or mixes clocks")
    good = ~rows.bad & np.isfinite(clock["queued_ts"])
    origin = float(clock["queued_ts"][good].min()) if good.any() else 0.0
    out["arrival_time_s"] = clock["queued_ts"] - origin
    for src, dst in (("scheduled_ts", "measured_scheduled_s"), ("first_token_ts", "measured_first_token_s"),
                     ("last_token_ts", "measured_last_token_s")):
        if src in clock:
            out[dst] = clock[src] - origin
    if "arrival_time" in df.columns:
        a = parse_numbers(rows, df["arrival_time"], "arrival_time", unit="seconds (client epoch)")
        ok = ~rows.bad & np.isfinite(a)
        out["measured_client_arrival_s"] = a - float(a[ok].min() if ok.any() else 0.0)
    return _finish(path, rows, out, None, {"engine_clock_origin_s": origin})


READERS = {"native": read_native, "azure": read_azure, "mooncake": read_mooncake, "sageserve": read_sageserve,
           "vidur": read_vidur, "servegen": read_servegen, "length_stats": read_length_stats, "vllm": read_vllm}
