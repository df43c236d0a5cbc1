"""Requests and traces: the schema every engine and formulation reads.

A :class:`Trace` is a validated, arrival-sorted table of requests backed by a pandas DataFrame
(``trace.df``). Engines iterate over its columns as numpy arrays, e.g.
``trace.df["arrival_time_s"].to_numpy()``.

Columns (SI units, named in the identifier):

=====================  ========  ==========================================================================
column                 required  meaning
=====================  ========  ==========================================================================
request_id             yes       unique per trace (int or str)
arrival_time_s         yes       seconds from the trace origin, finite and >= 0
prompt_tokens          yes       int >= 1
output_tokens          yes       int >= 1 (tokens to generate, including the first one)
session_id             no        multi-round sessions (see :func:`gpusched.synthetic.agent_sessions`)
round                  no        0-based round within the session
think_time_s           no        for ``round > 0``: release the request this long after the previous round of
                                 the same session *finishes*; ``arrival_time_s`` of such rows is only a
                                 lower bound (the session's first arrival)
model, tier, region    no        names (str)
slo_ttft_s, slo_tpot_s no        per-request service-level objectives, seconds
slo_e2e_s              no        end-to-end deadline, seconds (SageServe's ``sla``)
prefix_block_hashes    no        tuple of ints, one per prefix block of ``trace.prefix_block_tokens`` tokens
client                 no        originating client (ServeGen)
measured_*_s           no        timestamps measured by a real engine (vLLM loader), for validation
=====================  ========  ==========================================================================

Loaders for real trace formats live in :mod:`gpusched.loaders`; synthetic generators in
:mod:`gpusched.synthetic`. :func:`load_trace` picks a loader by sniffing the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, TraceError, UnknownNameError
from gpusched.paths import TRACES_ENV_VAR, traces_dir

REQUIRED_COLUMNS: tuple[str, ...] = ("request_id", "arrival_time_s", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "session_id", "round", "think_time_s", "model", "tier", "region", "slo_ttft_s", "slo_tpot_s",
    "slo_e2e_s", "prefix_block_hashes", "client",
)
_COUNT_COLUMNS = ("prompt_tokens", "output_tokens")
PERCENTILES = (50, 90, 99)


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
        for name in _COUNT_COLUMNS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise TraceError(f"request {self.request_id!r}: {name}={v!r} must be an int >= 1")


def _fail(trace_name: str, df: pd.DataFrame, bad: np.ndarray, column: str, what: str) -> None:
    i = int(np.flatnonzero(bad)[0])
    raise TraceError(
        f"trace {trace_name!r}: {int(bad.sum())} row(s) with bad {column!r}; first at row {i} "
        f"(request_id={df['request_id'].iloc[i]!r}): {column}={df[column].iloc[i]!r} {what}"
    )


def _validated(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """Check the schema vectorised, coerce counts to int64 and sort stably by arrival."""
    if not isinstance(df, pd.DataFrame):
        raise TraceError(f"trace {name!r}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise TraceError(f"trace {name!r}: missing column(s) {missing}; have {list(df.columns)}")
    df = df.reset_index(drop=True).copy()
    t = pd.to_numeric(df["arrival_time_s"], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(t) | (t < 0)
    if bad.any():
        _fail(name, df, bad, "arrival_time_s", "must be a finite number of seconds >= 0")
    df["arrival_time_s"] = t
    for col in _COUNT_COLUMNS:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(v) | (v != np.floor(v)) | (v < 1)
        if bad.any():
            _fail(name, df, bad, col, "must be an integer >= 1")
        df[col] = v.astype(np.int64)
    dup = df["request_id"].duplicated().to_numpy()
    if dup.any():
        _fail(name, df, dup, "request_id", "is not unique")
    for col in ("think_time_s", "slo_ttft_s", "slo_tpot_s", "slo_e2e_s"):
        if col in df.columns:
            v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
            bad = ~(np.isnan(v) | (v >= 0))
            if bad.any():
                _fail(name, df, bad, col, "must be >= 0 seconds (or empty)")
            df[col] = v
    df = df[list(REQUIRED_COLUMNS) + [c for c in df.columns if c not in REQUIRED_COLUMNS]]
    return df.sort_values("arrival_time_s", kind="stable").reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class Trace:
    """A validated, arrival-sorted request table.

    Parameters
    ----------
    df : DataFrame with at least :data:`REQUIRED_COLUMNS`; copied, validated and stably sorted by arrival.
    name : short label (bundled name or file stem).
    source : where it came from (a path, ``"synthetic"``, ...).
    prefix_block_tokens : tokens per entry of ``prefix_block_hashes`` (512 for Mooncake), or None.
    skipped_rows : rows dropped by a loader called with ``on_error="skip"`` (0 otherwise).
    meta : free-form provenance (loader arguments, synthetic rate used, ...).
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
        """Write the native CSV (readable back with :func:`load_trace`); hashes as space-separated ints."""
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


def _isna(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def _unique_ids(ids: pd.Series, k: int) -> pd.Series:
    if pd.api.types.is_integer_dtype(ids):
        return ids + k * (int(ids.max()) + 1)
    return ids.astype(str) + f"#{k}"


# ---- bundled traces -------------------------------------------------------------------------------


# name -> (relative path, fixed loader kwargs, description)
_BUNDLED: dict[str, tuple[str, dict, str]] = {
    "azure-conv-2023": ("azure_llm_2023/AzureLLMInferenceTrace_conv.csv", {},
                        "Azure LLM inference 2023, conversation (~58 min)"),
    "mooncake-conversation": ("mooncake_fast25/conversation_trace.jsonl", {},
                              "Mooncake FAST'25 conversation trace with 512-token prefix-block hashes"),
    "sharegpt-lengths": ("length_stats/sharegpt_8k_filtered_stats_llama2_tokenizer.csv", {},
                         "ShareGPT length table, synthetic arrivals"),
    "arxiv-lengths": ("length_stats/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", {},
                      "arXiv-summarisation length table, synthetic arrivals"),
    "servegen-m-large": ("servegen_m_large", {},
                         "Alibaba ServeGen m-large per-client rate windows, sampled arrivals"),
}
# Defaults used for bundled names when the caller does not pass them (documented in the summary).
_BUNDLED_DEFAULTS: dict[str, dict] = {
    "sharegpt-lengths": {"rate_per_s": 5.0, "seed": 0},
    "arxiv-lengths": {"rate_per_s": 5.0, "seed": 0},
    "servegen-m-large": {"seed": 0, "start_s": 0.0, "end_s": 3600.0},
}


def list_bundled_traces() -> list[str]:
    """Names accepted by :func:`load_trace` besides paths."""
    return sorted(_BUNDLED)


def bundled_trace_path(name: str) -> Path:
    if name not in _BUNDLED:
        raise UnknownNameError(f"unknown bundled trace {name!r}; known: {', '.join(list_bundled_traces())} "
                               f"(or pass a file path)")
    path = traces_dir() / _BUNDLED[name][0]
    if not path.exists():
        raise TraceError(f"bundled trace {name!r} not found at {path}; set ${TRACES_ENV_VAR} to the traces folder")
    return path


def load_trace(name_or_path: str | os.PathLike | list, **kwargs: Any) -> Trace:
    """Load a bundled trace by name, or a trace file/folder by path (format sniffed from its content).

    Recognised formats (see :mod:`gpusched.loaders`): native CSV (written by :meth:`Trace.to_csv`), Azure LLM
    inference 2023 CSV, Mooncake JSONL, SageServe-style CSV, ServeGen per-client rate windows (a
    ``chunk-<id>-trace.csv``, a list of them or a folder), length-statistics CSVs (need ``rate_per_s``) and
    vLLM benchmark ``requests.jsonl``. Pass ``format=`` to skip sniffing and ``on_error="skip"`` to drop bad
    rows (counted in ``trace.skipped_rows``, with a warning) instead of raising :class:`TraceError`.
    """
    from gpusched import loaders  # late import: loaders builds Trace objects

    if isinstance(name_or_path, str) and name_or_path in _BUNDLED:
        name = name_or_path
        kw = {**_BUNDLED_DEFAULTS.get(name, {}), **_BUNDLED[name][1], **kwargs}
        trace = loaders.load_path(bundled_trace_path(name), **kw)
        return Trace(trace.df, name=name, source=trace.source, prefix_block_tokens=trace.prefix_block_tokens,
                     skipped_rows=trace.skipped_rows, meta={**trace.meta, "bundled": name})
    if isinstance(name_or_path, str) and not Path(name_or_path).exists() and os.sep not in name_or_path \
            and not Path(name_or_path).suffix:
        raise UnknownNameError(f"unknown trace {name_or_path!r}: not a bundled name "
                               f"({', '.join(list_bundled_traces())}) and not an existing path")
    return loaders.load_path(name_or_path, **kwargs)


def bundled_trace_summary() -> pd.DataFrame:
    """One row per bundled trace, loaded with its defaults (``note`` says the rate/window used)."""
    rows = []
    for name in list_bundled_traces():
        tr = load_trace(name)
        row = tr.describe()
        d = _BUNDLED_DEFAULTS.get(name, {})
        if "rate_per_s" in d:
            note = f"synthetic Poisson arrivals at {d['rate_per_s']:g} req/s (seed {d['seed']})"
        elif "end_s" in d:
            note = (f"arrivals sampled in [{d['start_s']:g}, {d['end_s']:g}) s for clients "
                    f"{tr.meta.get('clients')} (seed {d['seed']})")
        else:
            note = "recorded arrivals"
        row["note"] = note
        rows.append(row)
    return pd.DataFrame(rows)
