"""Per-request latencies, SLO attainment, goodput, throughput and summaries. All times in seconds.

Input: a per-request results DataFrame with columns ``request_id, arrival_time_s, first_token_time_s,
finish_time_s, prompt_tokens, output_tokens`` and optionally ``scheduled_time_s`` (first time the engine
scheduled the request), ``slo_ttft_s``, ``slo_tpot_s`` (per-request SLOs, override the global ones).

Definitions:

* ``ttft_s = first_token_time_s - arrival_time_s`` (time to first token);
* ``tpot_s = (finish_time_s - first_token_time_s) / (output_tokens - 1)`` (time per output token after
  the first; NaN when ``output_tokens == 1``);
* ``e2e_s = finish_time_s - arrival_time_s``; ``queueing_s = scheduled_time_s - arrival_time_s``.

Unfinished requests (NaN ``finish_time_s``) are never dropped: they count as missing SLO, they are in
every denominator of an attainment, and summaries report how many there were.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError

__all__ = [
    "REQUIRED_COLUMNS",
    "request_latencies",
    "time_between_tokens",
    "meets_slo",
    "SloAttainment",
    "slo_attainment",
    "goodput_per_s",
    "Throughput",
    "throughput",
    "summary",
]

REQUIRED_COLUMNS = ("request_id", "arrival_time_s", "first_token_time_s", "finish_time_s",
                    "prompt_tokens", "output_tokens")


def _check(df: pd.DataFrame) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"metrics: expected a pandas DataFrame of per-request results, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"metrics: results table lacks column(s) {missing}; has {list(df.columns)}")
    if df["arrival_time_s"].isna().any():
        ids = df.loc[df["arrival_time_s"].isna(), "request_id"].tolist()[:5]
        raise ConfigError(f"metrics: arrival_time_s is missing for request(s) {ids}")
    bad = df["output_tokens"] < 1
    if bad.any():
        raise ConfigError(f"metrics: output_tokens must be >= 1; request(s) {df.loc[bad, 'request_id'].tolist()[:5]}")
    for earlier, later in (("arrival_time_s", "first_token_time_s"), ("first_token_time_s", "finish_time_s")):
        bad = df[later] < df[earlier]  # NaN compares False: unfinished rows pass
        if bad.any():
            raise ConfigError(
                f"metrics: {later} < {earlier} for request(s) {df.loc[bad, 'request_id'].tolist()[:5]}; "
                f"timestamps must be ordered arrival <= first token <= finish")
    finished_no_first = df["finish_time_s"].notna() & df["first_token_time_s"].isna()
    if finished_no_first.any():
        raise ConfigError(f"metrics: request(s) {df.loc[finished_no_first, 'request_id'].tolist()[:5]} "
                          f"have finish_time_s but no first_token_time_s")


def request_latencies(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``df`` with ``finished`` (bool), ``ttft_s``, ``tpot_s``, ``e2e_s`` and, if
    ``scheduled_time_s`` is present, ``queueing_s`` added. Columns already present are recomputed."""
    _check(df)
    out = df.copy()
    arrival = out["arrival_time_s"].astype(float)
    first = out["first_token_time_s"].astype(float)
    finish = out["finish_time_s"].astype(float)
    decode_tokens = out["output_tokens"].astype(float) - 1.0
    out["finished"] = finish.notna()
    out["ttft_s"] = first - arrival
    out["tpot_s"] = ((finish - first) / decode_tokens.where(decode_tokens > 0)).astype(float)
    out["e2e_s"] = finish - arrival
    if "scheduled_time_s" in out.columns:
        out["queueing_s"] = out["scheduled_time_s"].astype(float) - arrival
    return out


def time_between_tokens(token_times) -> np.ndarray:
    """Gaps between consecutive token timestamps, seconds.

    ``token_times`` is one request's (k,) timestamps (returns k-1 gaps), or a sequence of such arrays,
    one per request (returns all requests' gaps concatenated; never a gap across two requests).
    """
    try:
        t = np.asarray(token_times, dtype=float)
    except ValueError:  # ragged: one array per request
        t = None
    if t is None or t.ndim == 2:
        parts = [time_between_tokens(np.asarray(r, dtype=float)) for r in token_times]
        return np.concatenate(parts) if parts else np.zeros(0)
    if t.ndim != 1:
        raise ConfigError(f"time_between_tokens: expected 1-D timestamps, got shape {t.shape}")
    gaps = np.diff(t)
    if (gaps < 0).any():
        raise ConfigError(f"time_between_tokens: timestamps decrease at index {int(np.argmax(gaps < 0)) + 1}")
    return gaps


def _slo_column(df: pd.DataFrame, col: str, default: float | None) -> pd.Series | None:
    glob = pd.Series(np.nan if default is None else float(default), index=df.index)
    if col in df.columns:
        glob = df[col].astype(float).where(df[col].notna(), glob)
    return None if glob.isna().all() else glob


def meets_slo(df: pd.DataFrame, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None) -> pd.Series:
    """Per-request bool: finished, and TTFT <= its TTFT SLO, and TPOT <= its TPOT SLO (joint).

    Per-request ``slo_ttft_s`` / ``slo_tpot_s`` columns override the global values where not NaN; a
    request with no SLO for a metric is unconstrained on it; a single-output-token request has no TPOT
    and meets any TPOT SLO.
    """
    lat = request_latencies(df)
    ttft = _slo_column(lat, "slo_ttft_s", ttft_slo_s)
    tpot = _slo_column(lat, "slo_tpot_s", tpot_slo_s)
    if ttft is None and tpot is None:
        raise ConfigError("metrics: no SLO given; pass ttft_slo_s and/or tpot_slo_s, or add slo_* columns")
    ok = lat["finished"].copy()
    if ttft is not None:
        ok &= ttft.isna() | (lat["ttft_s"] <= ttft)
    if tpot is not None:
        ok &= tpot.isna() | lat["tpot_s"].isna() | (lat["tpot_s"] <= tpot)
    return ok.astype(bool)


@dataclass(frozen=True)
class SloAttainment:
    """SLO attainment over all requests (unfinished ones count as missing).

    Attributes:
        num_requests, num_attained, num_unfinished: counts.
        attainment: num_attained / num_requests (joint TTFT and TPOT), in [0, 1].
        ttft_attainment, tpot_attainment: fraction meeting each SLO alone (finished requests only count
            as meeting it); NaN when that SLO is not set.
    """

    num_requests: int
    num_attained: int
    num_unfinished: int
    attainment: float
    ttft_attainment: float
    tpot_attainment: float


def slo_attainment(df: pd.DataFrame, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None) -> SloAttainment:
    """Joint SLO attainment: a request attains iff it finished and meets both SLOs (see :func:`meets_slo`)."""
    ok = meets_slo(df, ttft_slo_s, tpot_slo_s)
    n = len(df)
    if n == 0:
        raise ConfigError("metrics: slo_attainment of an empty results table")
    lat = request_latencies(df)
    fin = lat["finished"]
    ttft = _slo_column(lat, "slo_ttft_s", ttft_slo_s)
    tpot = _slo_column(lat, "slo_tpot_s", tpot_slo_s)
    ttft_frac = np.nan if ttft is None else float((fin & (ttft.isna() | (lat["ttft_s"] <= ttft))).mean())
    tpot_frac = np.nan if tpot is None else float(
        (fin & (tpot.isna() | lat["tpot_s"].isna() | (lat["tpot_s"] <= tpot))).mean())
    return SloAttainment(n, int(ok.sum()), int((~fin).sum()), float(ok.mean()), ttft_frac, tpot_frac)


def _makespan_s(df: pd.DataFrame) -> float:
    """Last finish minus first arrival, seconds (over finished requests' finishes, all arrivals)."""
    last = df["finish_time_s"].max()
    if pd.isna(last):
        return 0.0
    return float(last - df["arrival_time_s"].min())


def goodput_per_s(df: pd.DataFrame, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None,
                  duration_s: float | None = None) -> float:
    """Requests meeting their SLO per second of makespan (first arrival to last finish), req/s.

    ``duration_s`` overrides the makespan (e.g. the trace's own duration). Returns 0.0 when no request
    finished.
    """
    ok = meets_slo(df, ttft_slo_s, tpot_slo_s)
    span = _makespan_s(df) if duration_s is None else float(duration_s)
    if ok.sum() == 0:
        return 0.0
    if span <= 0:
        raise ConfigError(f"metrics: makespan is {span} s; cannot compute a rate (pass duration_s)")
    return float(ok.sum()) / span


@dataclass(frozen=True)
class Throughput:
    """Completed work per second of makespan.

    Attributes:
        requests_per_s: finished requests / makespan_s.
        output_tokens_per_s: output tokens of finished requests / makespan_s.
        total_tokens_per_s: (prompt + output) tokens of finished requests / makespan_s.
        makespan_s: first arrival to last finish, seconds.
        num_finished, num_unfinished: request counts (unfinished requests contribute no tokens).
    """

    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    makespan_s: float
    num_finished: int
    num_unfinished: int


def throughput(df: pd.DataFrame, duration_s: float | None = None) -> Throughput:
    """Throughput of finished requests; ``duration_s`` overrides the makespan."""
    _check(df)
    fin = df["finish_time_s"].notna()
    span = _makespan_s(df) if duration_s is None else float(duration_s)
    nf = int(fin.sum())
    out_tok = float(df.loc[fin, "output_tokens"].sum())
    all_tok = out_tok + float(df.loc[fin, "prompt_tokens"].sum())
    if span <= 0:
        if nf:
            raise ConfigError(f"metrics: makespan is {span} s; cannot compute a rate (pass duration_s)")
        return Throughput(0.0, 0.0, 0.0, span, 0, int((~fin).sum()))
    return Throughput(nf / span, out_tok / span, all_tok / span, span, nf, int((~fin).sum()))


def summary(df: pd.DataFrame, percentiles=(50, 90, 95, 99)) -> pd.DataFrame:
    """Latency summary, seconds: one row per metric (``ttft_s``, ``tpot_s``, ``e2e_s`` and ``queueing_s``
    when scheduled times are known), columns ``count`` (requests with a value), ``missing`` (without:
    unfinished, or single-token for TPOT), ``mean`` and ``p<NN>`` (numpy linear-interpolation percentiles).

    ``result.attrs`` holds ``num_requests`` and ``num_unfinished``.
    """
    lat = request_latencies(df)
    metrics = ["ttft_s", "tpot_s", "e2e_s"] + (["queueing_s"] if "queueing_s" in lat.columns else [])
    rows = {}
    for m in metrics:
        v = lat[m].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        row = {"count": int(v.size), "missing": int(len(lat) - v.size),
               "mean": float(v.mean()) if v.size else np.nan}
        for p in percentiles:
            row[f"p{p:g}"] = float(np.percentile(v, p)) if v.size else np.nan
        rows[m] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "metric"
    out.attrs["num_requests"] = int(len(lat))
    out.attrs["num_unfinished"] = int((~lat["finished"]).sum())
    return out
