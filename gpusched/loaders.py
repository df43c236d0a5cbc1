"""Readers for real trace formats; each returns a :class:`gpusched.workload.Trace`.

Call them through :func:`gpusched.workload.load_trace`, which sniffs the format from the file's first line.
Units are converted here (milliseconds, datetimes, engine clocks -> seconds); nothing inside the library
sees another unit.

Bad input raises :class:`TraceError` naming the file, the 1-based line number and the field. With
``on_error="skip"`` bad rows are dropped instead, counted in ``trace.skipped_rows`` and reported with
``warnings.warn``; nothing is dropped silently. Validation is vectorised (pandas), and only the first
offending line is looked up for the message.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, TraceError
from gpusched.workload import REQUIRED_COLUMNS, Trace

FORMATS = ("native", "azure", "mooncake", "sageserve", "servegen", "length_stats", "vllm")
MOONCAKE_BLOCK_TOKENS = 512
# SageServe's model letters (see traces/README.md)
SAGESERVE_MODELS = {"A": "llama-2-70b", "B": "bloom-176b", "C": "llama-3.1-8b", "D": "llama-3.2-3b"}
SAGESERVE_TIERS = {"prod": "interactive", "dev": "batch"}
SAGESERVE_REGIONS = {"0": "westus", "1": "centralus", "2": "eastus"}
SERVEGEN_COLUMNS = ["window_start_s", "rate_rps", "cv", "arrival_dist", "shape", "scale"]


# ---- row checking ---------------------------------------------------------------------------------

class _Rows:
    """Collects bad-row masks (vectorised) and remembers the earliest offending line for the message."""

    def __init__(self, path: Path, lines: np.ndarray, on_error: str, pre_skipped: int = 0):
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error={on_error!r}: use 'raise' or 'skip'")
        self.path, self.lines, self.on_error = path, np.asarray(lines), on_error
        self.bad = np.zeros(len(self.lines), dtype=bool)
        self.first: tuple | None = None
        self.pre_skipped = pre_skipped

    def flag(self, mask: Any, field: str, values: Any, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        i = int(np.flatnonzero(mask)[0])
        v = values.iloc[i] if isinstance(values, pd.Series) else np.asarray(values, dtype=object)[i]
        cand = (int(self.lines[i]), field, v, reason)
        if self.first is None or cand[0] < self.first[0]:
            self.first = cand
        self.bad |= mask
        if self.on_error == "raise":
            self.finish()  # fail fast on the first class of error found

    def finish(self) -> tuple[np.ndarray, int]:
        """Raise (on_error='raise') or return (keep mask, number of skipped rows) with a warning."""
        if self.first is not None and self.on_error == "raise":
            line, field, value, reason = self.first
            raise TraceError(f"{self.path}: line {line}: field {field!r} = {value!r} {reason} "
                             f"({int(self.bad.sum())} bad row(s); pass on_error='skip' to drop them)")
        skipped = int(self.bad.sum()) + self.pre_skipped
        if skipped:
            where = f"; first at line {self.first[0]} ({self.first[1]!r}: {self.first[3]})" if self.first else ""
            warnings.warn(f"{self.path}: skipped {skipped} bad row(s){where}", stacklevel=4)
        return ~self.bad, skipped


def _ints(rows: _Rows, s: pd.Series, field: str, minimum: int = 1) -> np.ndarray:
    """Parse a text column of token counts; flag missing, non-numeric, non-integer and too-small values."""
    txt = s.astype(str).str.strip()
    missing = s.isna().to_numpy() | (txt == "").to_numpy() | (txt.str.lower() == "nan").to_numpy()
    rows.flag(missing, field, s, "is missing")
    v = pd.to_numeric(txt.where(~missing, "0"), errors="coerce").to_numpy(dtype=float)
    rows.flag(np.isnan(v) & ~missing, field, s, "is not a number")
    ok = ~np.isnan(v)
    rows.flag(ok & ~missing & ((v != np.floor(v)) | ~np.isfinite(v)), field, s, "is not an integer")
    rows.flag(ok & ~missing & (v < 0), field, s, "is negative (token counts are integers >= 0)")
    rows.flag(ok & ~missing & (v >= 0) & (v < minimum), field, s, f"must be >= {minimum}")
    v = np.where(np.isfinite(v), v, 0.0)
    return v


def _floats(rows: _Rows, s: pd.Series, field: str, allow_negative: bool = False) -> np.ndarray:
    txt = s.astype(str).str.strip()
    missing = s.isna().to_numpy() | (txt == "").to_numpy() | (txt.str.lower() == "nan").to_numpy()
    rows.flag(missing, field, s, "is missing")
    v = np.array(pd.to_numeric(txt.where(~missing, "0"), errors="coerce"), dtype=float)
    rows.flag(~np.isfinite(v) & ~missing, field, s, "is not a finite number")
    if not allow_negative:
        rows.flag(np.isfinite(v) & (v < 0), field, s, "is negative")
    return v


def _require_columns(path: Path, have: Iterable[str], need: Iterable[str], line: int = 1) -> None:
    have = list(have)
    for c in need:
        if c not in have:
            raise TraceError(f"{path}: line {line}: missing column {c!r} (have {have})")


def _read_csv(path: Path, on_error: str, **kw: Any) -> tuple[pd.DataFrame, int]:
    """Read every field as text; malformed rows (too many fields) raise or are counted."""
    skipped = [0]
    if on_error == "skip":
        def bad_line(_fields: list) -> None:
            skipped[0] += 1
            return None
        kw.update(engine="python", on_bad_lines=bad_line)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=True, **kw)
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        where = f"line {m.group(1)}" if m else "a row"
        raise TraceError(f"{path}: {where}: malformed row (wrong number of fields): {e}") from None
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TraceError(f"{path}: cannot read as CSV: {e}") from None
    return df, skipped[0]


def _read_jsonl(path: Path, on_error: str) -> tuple[pd.DataFrame, np.ndarray, int]:
    records, lines, skipped = [], [], 0
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if on_error == "raise":
                    raise TraceError(f"{path}: line {no}: malformed JSON record: {e}") from None
                skipped += 1
                continue
            records.append(rec)
            lines.append(no)
    return pd.DataFrame.from_records(records), np.asarray(lines, dtype=np.int64), skipped


def _finish(path: Path, rows: _Rows, df: pd.DataFrame, name: str, **kw: Any) -> Trace:
    keep, skipped = rows.finish()
    df = df[keep]
    return Trace(df, name=name, source=str(path), skipped_rows=skipped, **kw)


# ---- sniffing -------------------------------------------------------------------------------------

def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return line.strip()
    except UnicodeDecodeError:
        raise TraceError(f"{path}: line 1: not a text file; unknown trace format") from None
    raise TraceError(f"{path}: the file is empty; no trace to read")


def sniff_format(path: str | os.PathLike) -> str:
    """Guess the format of a trace file or folder from its content (first line), not its extension."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("chunk-*-trace.csv")):
            return "servegen"
        raise TraceError(f"{path}: folder holds no ServeGen chunk-<id>-trace.csv files; unknown trace format")
    if not path.exists():
        raise TraceError(f"{path}: no such file")
    first = _first_line(path)
    if first.startswith("{"):
        try:
            keys = set(json.loads(first))
        except ValueError as e:
            raise TraceError(f"{path}: line 1: malformed JSON record: {e}") from None
        if {"input_toks", "output_toks"} <= keys or "queued_ts" in keys:
            return "vllm"
        if {"timestamp", "input_length"} <= keys or "hash_ids" in keys:
            return "mooncake"
        raise TraceError(f"{path}: line 1: unknown JSON-lines trace format with fields {sorted(keys)}")
    cols = [c.strip().strip('"') for c in first.split(",")]
    lower = {c.lower() for c in cols}
    if "TIMESTAMP" in cols or {"contexttokens", "generatedtokens"} & lower:
        return "azure"
    if {"num_prefill_tokens", "num_decode_tokens"} & lower:
        return "length_stats"
    if "arrival_timestamp" in lower or {"prompt_size", "token_size", "model_type"} <= lower:
        if {"hardware", "prompt_time"} <= lower:
            raise TraceError(f"{path}: line 1: this is SageServe's performance-model table (profiling data), "
                             f"not a request trace")
        return "sageserve"
    if {"hardware", "prompt_time", "token_time"} <= lower:
        raise TraceError(f"{path}: line 1: this is SageServe's performance-model table (profiling data), "
                         f"not a request trace")
    if "arrival_time_s" in lower:
        return "native"
    if len(cols) == 6 and cols[3] in ("Gamma", "Weibull", "") and _is_number(cols[0]):
        return "servegen"
    raise TraceError(f"{path}: line 1: unknown trace format (first line {first[:120]!r}); known formats: "
                     f"{', '.join(FORMATS)}")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_path(path: Any, format: str | None = None, **kwargs: Any) -> Trace:
    """Read a trace file/folder (or a list of ServeGen files) with the loader its content calls for."""
    if isinstance(path, (list, tuple)):
        return read_servegen(path, **kwargs)
    path = Path(path)
    fmt = format or sniff_format(path)
    readers = {"native": read_native, "azure": read_azure, "mooncake": read_mooncake,
               "sageserve": read_sageserve, "servegen": read_servegen, "length_stats": read_length_stats,
               "vllm": read_vllm}
    if fmt not in readers:
        raise ConfigError(f"unknown trace format {fmt!r}; use one of {', '.join(FORMATS)}")
    return readers[fmt](path, **kwargs)


# ---- formats --------------------------------------------------------------------------------------

def read_native(path: Path, on_error: str = "raise") -> Trace:
    """The CSV written by :meth:`Trace.to_csv`."""
    path = Path(path)
    df, pre = _read_csv(path, on_error)
    _require_columns(path, df.columns, REQUIRED_COLUMNS)
    rows = _Rows(path, np.arange(len(df)) + 2, on_error, pre)
    out = df.copy()
    out["arrival_time_s"] = _floats(rows, df["arrival_time_s"], "arrival_time_s")
    for c in ("prompt_tokens", "output_tokens"):
        out[c] = _ints(rows, df[c], c)
    ids = pd.to_numeric(df["request_id"], errors="coerce")
    out["request_id"] = ids.astype(np.int64) if ids.notna().all() and (ids == ids.round()).all() else df["request_id"]
    rows.flag(out["request_id"].duplicated().to_numpy(), "request_id", df["request_id"], "is a duplicate")
    for c in ("think_time_s", "slo_ttft_s", "slo_tpot_s", "slo_e2e_s", "round", "session_id"):
        if c in out.columns:
            out[c] = pd.to_numeric(df[c].replace("", np.nan), errors="coerce")
    block = None
    if "prefix_block_tokens" in out.columns:
        vals = pd.to_numeric(out.pop("prefix_block_tokens"), errors="coerce").dropna().unique()
        block = int(vals[0]) if len(vals) else None
    if "prefix_block_hashes" in out.columns:
        out["prefix_block_hashes"] = [tuple(int(x) for x in s.split()) for s in df["prefix_block_hashes"]]
    return _finish(path, rows, out, path.stem, prefix_block_tokens=block)


def read_azure(path: Path, on_error: str = "raise") -> Trace:
    """Azure LLM inference trace 2023: ``TIMESTAMP`` (datetime), ``ContextTokens``, ``GeneratedTokens``.

    Arrival = seconds since the first valid timestamp; ``request_id`` = 0-based data-row index.
    """
    path = Path(path)
    df, pre = _read_csv(path, on_error)
    _require_columns(path, df.columns, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    rows = _Rows(path, np.arange(len(df)) + 2, on_error, pre)
    raw = df["TIMESTAMP"].str.strip()
    rows.flag((raw == "").to_numpy(), "TIMESTAMP", df["TIMESTAMP"], "is missing")
    ts = pd.to_datetime(raw, format="ISO8601", errors="coerce")
    rows.flag(ts.isna().to_numpy() & (raw != "").to_numpy(), "TIMESTAMP", df["TIMESTAMP"],
              "is not a parsable datetime")
    prompt = _ints(rows, df["ContextTokens"], "ContextTokens")
    output = _ints(rows, df["GeneratedTokens"], "GeneratedTokens")
    valid = ts.notna().to_numpy() & ~rows.bad
    t0 = ts[valid].min() if valid.any() else pd.Timestamp(0)
    t = ((ts - t0).dt.total_seconds()).to_numpy(dtype=float)
    out = pd.DataFrame({"request_id": np.arange(len(df), dtype=np.int64), "arrival_time_s": t,
                        "prompt_tokens": prompt, "output_tokens": output})
    return _finish(path, rows, out, path.stem, meta={"origin": str(t0)})


def read_mooncake(path: Path, on_error: str = "raise", block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> Trace:
    """Mooncake FAST'25 JSONL: ``timestamp`` (ms from trace start), ``input_length``, ``output_length``,
    ``hash_ids`` (one id per ``block_tokens``-token prefix block -> ``prefix_block_hashes``).
    ``trace.prefix_block_tokens`` records the block size (512)."""
    path = Path(path)
    df, lines, pre = _read_jsonl(path, on_error)
    _require_columns(path, df.columns, ("timestamp", "input_length", "output_length"), line=int(lines[0]) if len(lines) else 1)
    rows = _Rows(path, lines, on_error, pre)
    t_ms = _floats(rows, df["timestamp"], "timestamp")
    prompt = _ints(rows, df["input_length"], "input_length")
    output = _ints(rows, df["output_length"], "output_length")
    out = pd.DataFrame({"request_id": np.arange(len(df), dtype=np.int64), "arrival_time_s": t_ms / 1000.0,
                        "prompt_tokens": prompt, "output_tokens": output})
    if "hash_ids" in df.columns:
        h = df["hash_ids"]
        ok = np.fromiter((isinstance(x, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in x)
                          for x in h), dtype=bool, count=len(h))
        rows.flag(~ok, "hash_ids", h, "is not a list of integers")
        out["prefix_block_hashes"] = [tuple(x) if isinstance(x, list) else () for x in h]
    return _finish(path, rows, out, path.stem, prefix_block_tokens=block_tokens)


def read_sageserve(path: Path, on_error: str = "raise") -> Trace:
    """SageServe-style CSV (columns in traces/README.md).

    ``regions`` is read as text (leading zeros matter); ``region`` = the first (origin) region's name and
    ``region_priority`` keeps the full string. ``model_type`` A/B/C/D -> ``model``, ``workload_type``
    prod/dev -> ``tier`` interactive/batch, ``sla`` (s) -> ``slo_e2e_s``; ``batch_id`` and
    ``client_tenant`` are kept when present.
    """
    path = Path(path)
    df, pre = _read_csv(path, on_error)
    _require_columns(path, df.columns, ("arrival_timestamp", "prompt_size", "token_size"))
    rows = _Rows(path, np.arange(len(df)) + 2, on_error, pre)
    out = pd.DataFrame({"arrival_time_s": _floats(rows, df["arrival_timestamp"], "arrival_timestamp"),
                        "prompt_tokens": _ints(rows, df["prompt_size"], "prompt_size"),
                        "output_tokens": _ints(rows, df["token_size"], "token_size")})
    if "request_id" in df.columns:
        rid = pd.to_numeric(df["request_id"], errors="coerce")
        out["request_id"] = rid.astype("Int64").astype(object).where(rid.notna(), df["request_id"]) \
            if rid.isna().any() else rid.astype(np.int64)
        rows.flag(df["request_id"].duplicated().to_numpy(), "request_id", df["request_id"], "is a duplicate")
    else:
        out["request_id"] = np.arange(len(df), dtype=np.int64)
    if "model_type" in df.columns:
        m = df["model_type"].str.strip()
        rows.flag(~m.isin(list(SAGESERVE_MODELS)).to_numpy(), "model_type", df["model_type"],
                  f"is not one of {sorted(SAGESERVE_MODELS)}")
        out["model"] = m.map(SAGESERVE_MODELS)
    if "workload_type" in df.columns:
        w = df["workload_type"].str.strip()
        rows.flag(~w.isin(list(SAGESERVE_TIERS)).to_numpy(), "workload_type", df["workload_type"],
                  f"is not one of {sorted(SAGESERVE_TIERS)}")
        out["tier"] = w.map(SAGESERVE_TIERS)
    if "regions" in df.columns:
        r = df["regions"].str.strip()
        ok = r.str.fullmatch(r"[0-9]+").fillna(False).to_numpy() & r.str[0].isin(list(SAGESERVE_REGIONS)).to_numpy()
        rows.flag(~ok, "regions", df["regions"], "is not a region-priority string of digits 0-2 (read as text)")
        out["region"] = r.str[0].map(SAGESERVE_REGIONS)
        out["region_priority"] = r
    if "sla" in df.columns:
        out["slo_e2e_s"] = _floats(rows, df["sla"], "sla")
    for c in ("batch_id", "client_tenant"):
        if c in df.columns:
            out[c] = pd.to_numeric(df[c], errors="coerce")
    return _finish(path, rows, out, path.stem)


def read_length_table(path: Path, on_error: str = "raise") -> pd.DataFrame:
    """A length-statistics CSV (``num_prefill_tokens``, ``num_decode_tokens``, ...) as prompt/output columns."""
    path = Path(path)
    df, pre = _read_csv(path, on_error)
    _require_columns(path, df.columns, ("num_prefill_tokens", "num_decode_tokens"))
    rows = _Rows(path, np.arange(len(df)) + 2, on_error, pre)
    out = pd.DataFrame({"prompt_tokens": _ints(rows, df["num_prefill_tokens"], "num_prefill_tokens"),
                        "output_tokens": _ints(rows, df["num_decode_tokens"], "num_decode_tokens")})
    keep, skipped = rows.finish()
    out = out[keep].astype(np.int64).reset_index(drop=True)
    out.attrs["skipped_rows"] = skipped
    return out


def read_length_stats(path: Path, rate_per_s: float | None = None, seed: int = 0, arrival: str = "poisson",
                      cv: float = 1.0, n: int | None = None, on_error: str = "raise") -> Trace:
    """Length table + synthetic arrivals at ``rate_per_s`` (``arrival`` = poisson, gamma (with cv), constant).

    With ``n=None`` every row is one request, in file order; with ``n`` rows are sampled with replacement.
    """
    from gpusched.synthetic import arrivals, sample_lengths

    path = Path(path)
    if rate_per_s is None:
        raise TraceError(f"{path}: a length-statistics table has no timestamps; pass rate_per_s=... "
                         f"(and optionally seed=, arrival='poisson'|'gamma'|'constant', n=)")
    table = read_length_table(path, on_error)
    rng = np.random.default_rng(seed)
    if n is None:
        lengths = table
    else:
        lengths = sample_lengths(n, seed=rng, table=table)
    t = arrivals(arrival, rate_per_s, n=len(lengths), cv=cv, seed=rng)
    out = pd.DataFrame({"request_id": np.arange(len(lengths), dtype=np.int64), "arrival_time_s": t,
                        "prompt_tokens": lengths["prompt_tokens"].to_numpy(),
                        "output_tokens": lengths["output_tokens"].to_numpy()})
    return Trace(out, name=path.stem, source=str(path), skipped_rows=table.attrs.get("skipped_rows", 0),
                 meta={"rate_per_s": rate_per_s, "arrival": arrival, "cv": cv, "seed": seed})


def read_vllm(path: Path, on_error: str = "raise") -> Trace:
    """vLLM benchmark ``requests.jsonl`` (LLMServingSim 2.0 layout).

    Arrival = ``queued_ts - min(queued_ts)``: the engine's view of arrivals (its monotonic clock), which
    excludes client-side and HTTP delays. The engine timestamps are kept re-based the same way as
    ``measured_scheduled_s``, ``measured_first_token_s``, ``measured_last_token_s``; the client's epoch
    ``arrival_time`` is kept as ``measured_client_arrival_s`` re-based to its own minimum (another clock).
    """
    path = Path(path)
    df, lines, pre = _read_jsonl(path, on_error)
    _require_columns(path, df.columns, ("request_id", "input_toks", "output_toks", "queued_ts"),
                     line=int(lines[0]) if len(lines) else 1)
    rows = _Rows(path, lines, on_error, pre)
    q = _floats(rows, df["queued_ts"], "queued_ts")
    out = pd.DataFrame({"request_id": df["request_id"].astype(str),
                        "prompt_tokens": _ints(rows, df["input_toks"], "input_toks"),
                        "output_tokens": _ints(rows, df["output_toks"], "output_toks")})
    rows.flag(out["request_id"].duplicated().to_numpy(), "request_id", df["request_id"], "is a duplicate")
    good = ~rows.bad
    origin = float(q[good].min()) if good.any() else 0.0
    out["arrival_time_s"] = q - origin
    for src, dst in (("scheduled_ts", "measured_scheduled_s"), ("first_token_ts", "measured_first_token_s"),
                     ("last_token_ts", "measured_last_token_s")):
        if src in df.columns:
            out[dst] = _floats(rows, df[src], src) - origin
    if "arrival_time" in df.columns:
        a = _floats(rows, df["arrival_time"], "arrival_time")
        out["measured_client_arrival_s"] = a - float(a[~rows.bad].min() if (~rows.bad).any() else 0.0)
    return _finish(path, rows, out, path.stem, meta={"engine_clock_origin_s": origin})


# ---- ServeGen -------------------------------------------------------------------------------------

def _servegen_files(paths: Any, clients: Any) -> list[tuple[int, Path]]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[tuple[int, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += [(_client_id(f), f) for f in p.glob("chunk-*-trace.csv")]
        elif p.exists():
            files.append((_client_id(p), p))
        else:
            raise TraceError(f"{p}: no such ServeGen file or folder")
    files.sort()
    if clients is not None:
        wanted = [int(c) for c in ([clients] if isinstance(clients, (int, str)) else clients)]
        have = {c for c, _ in files}
        missing = [c for c in wanted if c not in have]
        if missing:
            raise TraceError(f"ServeGen client(s) {missing} not found among {len(have)} chunk files")
        files = [(c, f) for c, f in files if c in wanted]
    return files


def _client_id(path: Path) -> int:
    m = re.fullmatch(r"chunk-(\d+)-trace\.csv", path.name)
    if not m:
        raise TraceError(f"{path}: ServeGen rate files must be named chunk-<id>-trace.csv")
    return int(m.group(1))


def _servegen_windows(path: Path, on_error: str) -> tuple[pd.DataFrame, int]:
    df, pre = _read_csv(path, on_error, header=None, names=SERVEGEN_COLUMNS)
    rows = _Rows(path, np.arange(len(df)) + 1, on_error, pre)
    out = pd.DataFrame({"window_start_s": _floats(rows, df["window_start_s"], "window_start_s"),
                        "rate_rps": _floats(rows, df["rate_rps"], "rate_rps")})
    dist = df["arrival_dist"].str.strip()
    rows.flag(~dist.isin(["Gamma", "Weibull", ""]).to_numpy(), "arrival_dist", df["arrival_dist"],
              "is not Gamma, Weibull or empty")
    out["arrival_dist"] = dist
    for c in ("cv", "shape", "scale"):
        out[c] = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
    active = (out["rate_rps"] > 0).to_numpy()
    fitted = active & (dist != "").to_numpy()
    rows.flag(fitted & ~(out["shape"] > 0).to_numpy(), "shape", df["shape"], "must be > 0 for a fitted window")
    rows.flag(fitted & ~(out["scale"] > 0).to_numpy(), "scale", df["scale"], "must be > 0 for a fitted window")
    keep, skipped = rows.finish()
    return out[keep].reset_index(drop=True), skipped


def _servegen_gaps(rng: np.random.Generator, dist: str, shape: float, scale: float, cv: float, rate: float,
                   k: int, match_rate: bool) -> np.ndarray:
    if dist == "Gamma":
        g, mean = rng.gamma(shape, scale, k), shape * scale
    elif dist == "Weibull":
        g, mean = scale * rng.weibull(shape, k), scale * math.gamma(1 + 1 / shape)
    else:  # active window without a fit: Gamma with the measured CV (exponential if CV unknown)
        s = 1 / cv ** 2 if np.isfinite(cv) and cv > 0 else 1.0
        g, mean = rng.gamma(s, 1.0, k), s
    return g * (1.0 / (rate * mean)) if match_rate else g


def read_servegen(paths: Any, clients: Any = None, start_s: float = 0.0, end_s: float = 3600.0,
                  seed: int = 0, lengths: Any = None, match_rate: bool = True,
                  on_error: str = "raise") -> Trace:
    """Sample a request trace from ServeGen per-client rate windows (``chunk-<id>-trace.csv``).

    ``paths``: a rate file, a list of them, or a folder (all clients, or only ``clients`` = ids). Arrivals are
    sampled in ``[start_s, end_s)`` (default the first hour: the full 14 days is tens of millions of
    requests), seconds from the trace start (not re-based). In each 600 s window with ``rate_rps > 0`` the
    client's inter-arrival times are drawn from the fitted distribution (numpy ``gamma(shape, scale)`` or
    ``scale * weibull(shape)``), a renewal process restarted at the window start.

    What ``scale`` means (checked on all 162 m-large files): for **Gamma**, numpy's scale convention fits:
    ``shape*scale`` equals ``1/rate_rps`` (median ratio 0.998) and ``cv == 1/sqrt(shape)`` exactly. For
    **Weibull** the implied mean ``scale*Gamma(1+1/shape)`` is *not* ``1/rate_rps`` (median ratio 1.17,
    spread 0.002-8.9), nor does the implied CV match ``cv``. So by default (``match_rate=True``) each
    window's draws are rescaled to mean ``1/rate_rps``: the fitted shape sets burstiness, the measured rate
    sets the count. ``match_rate=False`` uses the raw fitted scale.

    Lengths: from ``chunk-<id>-dataset.json`` next to the rate file when present (per-21,600-s-window PMFs
    of input and output tokens, stored as python-dict strings; the PMF of the latest window starting at or
    before the arrival is used; input and output are drawn independently, as ServeGen gives marginals), or
    from ``lengths`` (a length table / Trace / bundled name, rows sampled so prompt/output stay paired),
    which takes precedence. A client with neither raises TraceError. With a folder and no ``clients``, only
    clients that have a dataset file are loaded unless ``lengths`` is given.

    Seeding: client c uses ``numpy.random.default_rng([seed, c])``, so adding clients does not change others.
    """
    from gpusched.synthetic import sample_lengths

    if not end_s > start_s:
        raise ConfigError(f"end_s={end_s!r} must be > start_s={start_s!r}")
    files = _servegen_files(paths, clients)
    if clients is None and lengths is None:
        files = [(c, f) for c, f in files if _dataset_path(f).exists()] or files
    if not files:
        raise TraceError(f"{paths}: no ServeGen chunk-<id>-trace.csv files")
    parts, skipped_total = [], 0
    for client, f in files:
        win, skipped = _servegen_windows(f, on_error)
        skipped_total += skipped
        rng = np.random.default_rng([seed, client])
        ws = win["window_start_s"].to_numpy()
        width = np.diff(ws, append=ws[-1] + (ws[-1] - ws[-2] if len(ws) > 1 else 600.0)) if len(ws) else ws
        times = []
        for i in np.flatnonzero((win["rate_rps"].to_numpy() > 0) & (ws < end_s) & (ws + width > start_s)):
            dist, shape, scale, cv, rate = (win.at[i, "arrival_dist"], win.at[i, "shape"], win.at[i, "scale"],
                                            win.at[i, "cv"], win.at[i, "rate_rps"])
            expected = rate * width[i]
            t, t_end = [], 0.0
            while t_end < width[i]:
                k = int(expected * 1.2 + 6 * np.sqrt(expected) + 16)
                c = t_end + np.cumsum(_servegen_gaps(rng, dist, shape, scale, cv, rate, k, match_rate))
                t.append(c)
                t_end = float(c[-1])
            c = ws[i] + np.concatenate(t)
            times.append(c[(c < ws[i] + width[i]) & (c >= start_s) & (c < end_s)])
        t = np.concatenate(times) if times else np.zeros(0)
        if lengths is not None:
            lens = sample_lengths(len(t), seed=rng, table=lengths)
        else:
            ds = _dataset_path(f)
            if not ds.exists():
                raise TraceError(f"{f}: no length data: {ds.name} is missing; pass lengths=<length table or "
                                 f"bundled name such as 'sharegpt-lengths'>")
            lens = _servegen_lengths(ds, t, rng)
        parts.append(pd.DataFrame({"arrival_time_s": t, "prompt_tokens": lens["prompt_tokens"].to_numpy(),
                                   "output_tokens": lens["output_tokens"].to_numpy(), "client": client}))
    df = pd.concat(parts, ignore_index=True).sort_values(["arrival_time_s", "client"], kind="stable")
    df.insert(0, "request_id", np.arange(len(df), dtype=np.int64))
    src = Path(files[0][1]).parent if len(files) > 1 else files[0][1]
    if skipped_total:
        warnings.warn(f"{src}: skipped {skipped_total} bad ServeGen window row(s)", stacklevel=3)
    return Trace(df, name="servegen", source=str(src), skipped_rows=skipped_total,
                 meta={"clients": [c for c, _ in files], "start_s": start_s, "end_s": end_s, "seed": seed,
                       "match_rate": match_rate})


def _dataset_path(trace_path: Path) -> Path:
    return trace_path.with_name(trace_path.name.replace("-trace.csv", "-dataset.json"))


def _parse_pmf(ds: Path, key: str, field: str, text: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        pmf = ast.literal_eval(text) if isinstance(text, str) else text
        tokens = np.fromiter((int(k) for k in pmf), dtype=np.int64, count=len(pmf))
        p = np.fromiter(pmf.values(), dtype=float, count=len(pmf))
    except (ValueError, SyntaxError, TypeError, AttributeError) as e:
        raise TraceError(f"{ds}: window {key!r}: field {field!r} is not a dict token->probability: {e}") from None
    if len(p) == 0 or np.any(p < 0) or np.any(tokens < 1) or p.sum() <= 0:
        raise TraceError(f"{ds}: window {key!r}: field {field!r} is not a PMF over token counts >= 1")
    return tokens, p / p.sum()


def _servegen_lengths(ds: Path, t: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    try:
        data = json.loads(ds.read_text())
        keys = np.array(sorted(float(k) for k in data))
        by_key = {float(k): k for k in data}
    except (ValueError, TypeError) as e:
        raise TraceError(f"{ds}: not a ServeGen dataset JSON (window -> PMFs): {e}") from None
    prompt = np.zeros(len(t), dtype=np.int64)
    output = np.zeros(len(t), dtype=np.int64)
    idx = np.searchsorted(keys, t, side="right") - 1
    idx = np.maximum(idx, 0)
    for j in np.unique(idx):
        sel = idx == j
        key = by_key[keys[j]]
        for field, dst in (("input_tokens", prompt), ("output_tokens", output)):
            if field not in data[key]:
                raise TraceError(f"{ds}: window {key!r}: missing field {field!r}")
            tok, p = _parse_pmf(ds, key, field, data[key][field])
            dst[sel] = rng.choice(tok, size=int(sel.sum()), p=p)
    return pd.DataFrame({"prompt_tokens": prompt, "output_tokens": output})
