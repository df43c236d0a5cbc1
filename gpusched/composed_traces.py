"""A SageServe-style week composed from public data: several models and regions, interactive and batch tiers.

SageServe's production week (7.2 M O365 requests, 3 regions x 4 models) is not public, so this module composes
one in its schema (``shared/papers/sageserve_greencache.md``, "Trace schema"; the project's names):

=================  =======  ===================================================================================
column             type     meaning
=================  =======  ===================================================================================
request_id         int      ``window * 10**7 + rank of the arrival within its 600 s window`` (unique)
arrival_time_s     float    seconds from the trace start (UTC midnight of day 0)
prompt_tokens      int      from the model's length table (rows sampled whole, so prompt and output stay paired)
output_tokens      int      idem
model              str      logical model, SageServe's A-D names (``llama-2-70b``, ``bloom-176b``, ...)
tier               str      ``IW-F``, ``IW-N`` (interactive, fast / normal) or ``NIW`` (non-interactive batch)
slo_e2e_s          float    the tier's SLA in seconds (the spec's ``sla_s``; the loaders map SageServe's ``sla``
                            to this column): 1 / 60 / 86,400 by default
origin_region      int      0 westus, 1 centralus, 2 eastus
region             str      the origin region's name
region_priority    str      the origin first, then the other regions in random order (e.g. ``"120"``)
tenant             int      the ServeGen client whose rate the request was drawn from
batch_id           int      NIW batch the request belongs to (its members arrive together); -1 for IW
utility            float    priority weight, 1.0 (the spec's default)
=================  =======  ===================================================================================

How it is composed ([R]: our choices where the spec leaves room; each is a parameter of :class:`SageServeWeek`):

* **Rate shape.** Alibaba ServeGen's 162 m-large clients give a per-client mean rate in each 600 s window of 14
  days (``traces/servegen_m_large/chunk-<id>-trace.csv``). A seeded permutation deals the clients round-robin to
  the (model, region) endpoints, so each endpoint's rate is the sum of its clients' windows and the whole
  trace's rate is ServeGen's aggregate. ServeGen's window 0 is read as local midnight, and a region sees the
  source's hour at its own local hour: the trace starts at midnight UTC, so a region at UTC offset ``u`` hours
  has at time ``t`` the rate the source has at ``t + u`` (taken modulo the 14 days). All rates are multiplied by
  one factor so that the expected mean rate of the trace is ``mean_rate_per_s`` (default 11.9/s: SageServe's
  7.2 M requests per week).
* **Arrivals.** In each 600 s window, a client's interactive requests and NIW batches are Poisson in number
  (below) and uniform in time: Poisson processes with a piecewise-constant rate.
* **Tiers.** A request is IW-F, IW-N or NIW with probabilities ``tier_shares`` (36 / 36 / 28 %: SageServe's 72 %
  interactive split evenly between its two interactive tiers). NIW work arrives in batches: per client and
  window, a Poisson number of batches (mean: the client's NIW requests / ``niw_mean_batch_size``) of geometric
  size, whose members share a ``batch_id`` and arrive together (a batch job is submitted at once).
* **Lengths.** Model ``models[i]`` draws rows of the bundled length table ``model_lengths[i]`` (ShareGPT,
  arXiv-summarisation, or the Azure 2023 conversation trace's recorded lengths).

Seeding: window ``w`` draws from ``numpy.random.default_rng([seed, w])`` alone, so a window of the week is
generated identically whether the week or only that window is asked for (``trace(start_s, end_s)``).

Write it with :meth:`Trace.to_csv` and read it back with :func:`read_composed` (``load_trace`` plus the column
types above).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from gpusched.bundled import BUNDLED, bundled_trace_path
from gpusched.errors import ConfigError, TraceError
from gpusched.lengths import read_length_table
from gpusched.loaders import SAGESERVE_MODELS, SAGESERVE_REGIONS
from gpusched.servegen import SERVEGEN_COLUMNS
from gpusched.paths import traces_dir
from gpusched.workload import Trace, load_trace

WINDOW_S = 600.0  # ServeGen's rate window
DAY_S = 86_400.0
SOURCE_DAYS = 14
#: UTC offsets (hours) of SageServe's three regions, standard time
REGION_UTC_OFFSET_H = {0: -8.0, 1: -6.0, 2: -5.0}
#: SageServe's tiers and their SLAs in seconds (spec, "Trace schema": tier defaults 1 / 60 / 86,400)
TIER_SLA_S = {"IW-F": 1.0, "IW-N": 60.0, "NIW": 86_400.0}
TIERS = tuple(TIER_SLA_S)
#: SageServe's week: 7.2 M requests over 604,800 s
SAGESERVE_MEAN_RATE_PER_S = 7_200_000 / 604_800
_REGION_NAMES = np.asarray([SAGESERVE_REGIONS[str(r)] for r in sorted(REGION_UTC_OFFSET_H)], dtype=object)
_ID_STRIDE = 10 ** 7  # request_id = window * stride + rank in window
_BATCH_STRIDE = 10 ** 6  # batch_id = window * stride + batch rank in window

COLUMN_TYPES = {"request_id": "int64", "arrival_time_s": "float64", "prompt_tokens": "int64",
                "output_tokens": "int64", "model": "str", "tier": "str", "slo_e2e_s": "float64",
                "origin_region": "int64", "region": "str", "region_priority": "str", "tenant": "int64",
                "batch_id": "int64", "utility": "float64"}


@dataclass(frozen=True)
class SageServeWeek:
    """Parameters of a composed SageServe-style trace; :meth:`trace` generates it (see the module docstring).

    seed : the only source of randomness (client-to-endpoint deal and every window's draws).
    days : length of the trace in days, 0 < days <= 14 (ServeGen holds 14); default one week.
    mean_rate_per_s : expected mean arrival rate over the whole trace, requests/s.
    source_start_day : the ServeGen day (0-13) that the trace's day 0 is taken from; later days follow, wrapping
        around after day 13.
    models, model_lengths : endpoint models and the bundled length table each draws from (same length).
    regions : region ids (0 westus, 1 centralus, 2 eastus) with their UTC offsets in ``region_utc_offset_h``
        (hours; whole multiples of 10 minutes).
    tier_shares : probabilities of IW-F, IW-N, NIW (sum 1); tier_sla_s : their SLAs, seconds.
    niw_mean_batch_size : mean size of an NIW batch (geometric, >= 1).
    source_dir : folder of ServeGen ``chunk-<id>-trace.csv`` rate files (default the bundled m-large).
    """

    seed: int = 0
    days: float = 7.0
    mean_rate_per_s: float = SAGESERVE_MEAN_RATE_PER_S
    source_start_day: int = 0
    models: tuple[str, ...] = tuple(SAGESERVE_MODELS.values())
    model_lengths: tuple[str, ...] = ("sharegpt-lengths", "arxiv-lengths", "azure-conv-2023", "sharegpt-lengths")
    regions: tuple[int, ...] = (0, 1, 2)
    region_utc_offset_h: tuple[float, ...] = (REGION_UTC_OFFSET_H[0], REGION_UTC_OFFSET_H[1], REGION_UTC_OFFSET_H[2])
    tier_shares: tuple[float, float, float] = (0.36, 0.36, 0.28)
    tier_sla_s: tuple[float, float, float] = (TIER_SLA_S["IW-F"], TIER_SLA_S["IW-N"], TIER_SLA_S["NIW"])
    niw_mean_batch_size: float = 20.0
    source_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("days", "mean_rate_per_s", "niw_mean_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ConfigError(f"SageServeWeek {name}={value!r} must be a number")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"SageServeWeek seed={self.seed!r} must be an int >= 0")
        if not (np.isfinite(self.days) and 0 < self.days <= SOURCE_DAYS):
            raise ConfigError(f"SageServeWeek days={self.days!r} must be in (0, {SOURCE_DAYS}]: ServeGen holds "
                              f"{SOURCE_DAYS} days of rates")
        if not (np.isfinite(self.mean_rate_per_s) and self.mean_rate_per_s > 0):
            raise ConfigError(f"SageServeWeek mean_rate_per_s={self.mean_rate_per_s!r} must be a finite number > 0")
        if not (isinstance(self.source_start_day, (int, np.integer)) and 0 <= self.source_start_day < SOURCE_DAYS):
            raise ConfigError(f"SageServeWeek source_start_day={self.source_start_day!r} must be an int in "
                              f"[0, {SOURCE_DAYS - 1}]")
        if not self.models or len(set(self.models)) != len(self.models):
            raise ConfigError(f"SageServeWeek models={self.models!r} must be a non-empty tuple of distinct names")
        if len(self.model_lengths) != len(self.models):
            raise ConfigError(f"SageServeWeek: {len(self.models)} models but {len(self.model_lengths)} "
                              f"model_lengths; give one length table per model")
        bad = [r for r in self.regions if r not in REGION_UTC_OFFSET_H]
        if not self.regions or bad or len(set(self.regions)) != len(self.regions):
            raise ConfigError(f"SageServeWeek regions={self.regions!r}: distinct ids among "
                              f"{sorted(REGION_UTC_OFFSET_H)} ({SAGESERVE_REGIONS})")
        if len(self.region_utc_offset_h) != len(self.regions):
            raise ConfigError(f"SageServeWeek: {len(self.regions)} regions but {len(self.region_utc_offset_h)} "
                              f"region_utc_offset_h")
        steps = np.asarray(self.region_utc_offset_h, dtype=float) * 3600 / WINDOW_S
        if not np.all(np.isfinite(steps)) or np.any(np.abs(steps - np.round(steps)) > 1e-9):
            raise ConfigError(f"SageServeWeek region_utc_offset_h={self.region_utc_offset_h!r} must be whole "
                              f"multiples of {WINDOW_S / 60:g} minutes (ServeGen's window)")
        shares = np.asarray(self.tier_shares, dtype=float)
        if shares.shape != (3,) or not np.all(np.isfinite(shares)) or np.any(shares < 0) \
                or abs(shares.sum() - 1) > 1e-9:
            raise ConfigError(f"SageServeWeek tier_shares={self.tier_shares!r} must be 3 probabilities (IW-F, "
                              f"IW-N, NIW) summing to 1")
        sla = np.asarray(self.tier_sla_s, dtype=float)
        if sla.shape != (3,) or not np.all(np.isfinite(sla)) or np.any(sla <= 0):
            raise ConfigError(f"SageServeWeek tier_sla_s={self.tier_sla_s!r} must be 3 positive seconds")
        if not (np.isfinite(self.niw_mean_batch_size) and self.niw_mean_batch_size >= 1):
            raise ConfigError(f"SageServeWeek niw_mean_batch_size={self.niw_mean_batch_size!r} must be >= 1")

    # ---- what the trace is made of ------------------------------------------------------------------
    @property
    def duration_s(self) -> float:
        return float(self.days) * DAY_S

    @property
    def num_windows(self) -> int:
        return int(np.ceil(self.duration_s / WINDOW_S))

    def endpoints(self) -> list[tuple[str, int]]:
        """The (model, region) pairs, in the order clients are dealt to them."""
        return [(m, r) for m in self.models for r in self.regions]

    def client_endpoints(self) -> pd.DataFrame:
        """One row per ServeGen client: ``client``, ``model``, ``origin_region`` (the seeded deal)."""
        clients = servegen_rates(self._source()).index.to_numpy()
        order = np.random.default_rng([self.seed, 0x5E6]).permutation(len(clients))
        eps = self.endpoints()
        dealt = [eps[k % len(eps)] for k in range(len(clients))]
        return pd.DataFrame({"client": clients[order], "model": [m for m, _ in dealt],
                             "origin_region": [r for _, r in dealt]}).sort_values("client", ignore_index=True)

    def window_rates(self) -> pd.DataFrame:
        """Expected rate (requests/s) of every client in every window of the trace: clients x windows, scaled so
        that the mean over windows of the column sums is ``mean_rate_per_s`` (the last window weighted by the
        part of it inside the trace)."""
        src = servegen_rates(self._source())
        deal = self.client_endpoints().set_index("client")
        offset = dict(zip(self.regions, self.region_utc_offset_h))
        n_src = src.shape[1]
        first = int(round(self.source_start_day * DAY_S / WINDOW_S))
        w = np.arange(self.num_windows)
        out = np.empty((len(src), len(w)))
        for i, client in enumerate(src.index):
            shift_h = offset[int(deal.at[client, "origin_region"])]
            cols = (first + w + int(round(shift_h * 3600 / WINDOW_S))) % n_src
            out[i] = src.iloc[i].to_numpy()[cols]
        weight = self._window_widths() / WINDOW_S
        mean = float((out.sum(axis=0) * weight).sum() / weight.sum())
        if mean <= 0:
            raise TraceError(f"{self._source()}: the ServeGen rates are all zero over the chosen days")
        return pd.DataFrame(out * (self.mean_rate_per_s / mean), index=src.index, columns=w)

    def _window_widths(self) -> np.ndarray:
        starts = np.arange(self.num_windows) * WINDOW_S
        return np.minimum(starts + WINDOW_S, self.duration_s) - starts

    def _source(self) -> Path:
        return Path(self.source_dir) if self.source_dir is not None else traces_dir() / "servegen_m_large"

    # ---- the verb ------------------------------------------------------------------------------------
    def trace(self, start_s: float = 0.0, end_s: float | None = None) -> Trace:
        """The requests arriving in ``[start_s, end_s)`` (default the whole trace), times not re-based."""
        end_s = self.duration_s if end_s is None else float(end_s)
        if not (np.isfinite(start_s) and 0 <= start_s < end_s <= self.duration_s):
            raise ConfigError(f"trace window [{start_s!r}, {end_s!r}) must satisfy 0 <= start < end <= "
                              f"{self.duration_s:g} s ({self.days:g} days)")
        rates = self.window_rates()
        deal = self.client_endpoints().set_index("client").loc[rates.index]
        tables = {name: _length_table(name) for name in set(self.model_lengths)}
        lengths = [tables[name] for name in self.model_lengths]
        widths = self._window_widths()
        parts = []
        for w in range(int(start_s // WINDOW_S), int(np.ceil(end_s / WINDOW_S))):
            part = self._window(w, rates[w].to_numpy(), widths[w], deal, lengths)
            t = part["arrival_time_s"].to_numpy()
            parts.append(part[(t >= start_s) & (t < end_s)])
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(COLUMN_TYPES))
        name = f"sageserve-week-s{self.seed}"
        return Trace(_typed(df), name=name, source="composed",
                     meta={"generator": "gpusched.composed_traces.SageServeWeek", **self._meta(),
                           "start_s": float(start_s), "end_s": float(end_s)})

    def _window(self, w: int, rate_per_s: np.ndarray, width_s: float, deal: pd.DataFrame,
                lengths: list[pd.DataFrame]) -> pd.DataFrame:
        """Every request of window ``w``, drawn from ``default_rng([seed, w])`` alone.

        Per client: IW requests are Poisson with mean ``rate * width * (share IW-F + share IW-N)``, each IW-F or
        IW-N in proportion; NIW batches are Poisson with mean ``rate * width * share NIW / mean batch size``,
        of geometric size, all members arriving at the batch's (uniform) time. The expected request count is
        ``rate * width`` either way.
        """
        rng = np.random.default_rng([self.seed, w])
        f, n_, b = (float(x) for x in self.tier_shares)
        expected = rate_per_s * width_s
        n_iw = rng.poisson(expected * (f + n_))
        n_batches = rng.poisson(expected * b / self.niw_mean_batch_size)
        sizes = rng.geometric(1.0 / self.niw_mean_batch_size, size=int(n_batches.sum()))
        iw_t = rng.uniform(0.0, width_s, int(n_iw.sum()))
        iw_tier = np.where(rng.random(iw_t.size) * (f + n_) < f, 0, 1)
        batch_t = rng.uniform(0.0, width_s, sizes.size)
        if sizes.size >= _BATCH_STRIDE:
            raise ConfigError(f"window {w} has {sizes.size} NIW batches, more than batch ids allow; lower "
                              f"mean_rate_per_s or raise niw_mean_batch_size")
        rows = np.arange(len(deal))  # each request's client, as a row of ``deal``
        of = np.concatenate([np.repeat(rows, n_iw), np.repeat(np.repeat(rows, n_batches), sizes)])
        t = w * WINDOW_S + np.concatenate([iw_t, np.repeat(batch_t, sizes)])
        tier = np.concatenate([iw_tier, np.full(int(sizes.sum()), 2)])
        batch = np.concatenate([np.full(iw_t.size, -1, dtype=np.int64),
                                np.repeat(w * _BATCH_STRIDE + np.arange(sizes.size, dtype=np.int64), sizes)])
        n = of.size
        if n >= _ID_STRIDE:
            raise ConfigError(f"window {w} has {n} requests, more than request ids allow; lower mean_rate_per_s")
        client = deal.index.to_numpy()[of]
        model_idx = pd.Index(self.models).get_indexer(deal["model"])[of]
        origin = deal["origin_region"].to_numpy().astype(np.int64)[of]
        prompt = np.empty(n, dtype=np.int64)
        output = np.empty(n, dtype=np.int64)
        for m, table in enumerate(lengths):
            sel = np.flatnonzero(model_idx == m)
            picked = rng.integers(0, len(table), sel.size)
            prompt[sel] = table["prompt_tokens"].to_numpy()[picked]
            output[sel] = table["output_tokens"].to_numpy()[picked]
        priority = self._priorities(rng, origin)
        order = np.lexsort((np.arange(n), t))  # by arrival; a batch's members stay together in draw order
        sla = np.asarray(self.tier_sla_s, dtype=float)
        return pd.DataFrame({
            "request_id": w * _ID_STRIDE + np.arange(n, dtype=np.int64),
            "arrival_time_s": t[order], "prompt_tokens": prompt[order], "output_tokens": output[order],
            "model": np.asarray(self.models, dtype=object)[model_idx[order]],
            "tier": np.asarray(TIERS, dtype=object)[tier[order]], "slo_e2e_s": sla[tier[order]],
            "origin_region": origin[order], "region": _REGION_NAMES[origin[order]],
            "region_priority": priority[order], "tenant": client[order].astype(np.int64),
            "batch_id": batch[order], "utility": np.ones(n)})

    def _priorities(self, rng: np.random.Generator, origin: np.ndarray) -> np.ndarray:
        """Region-priority strings: the origin, then the other regions in a random order per request."""
        regions = np.asarray(self.regions)
        keys = rng.random((origin.size, regions.size))
        keys[origin[:, None] == regions[None, :]] = -1.0  # the origin sorts first
        ranked = regions[np.argsort(keys, axis=1)]
        code = ranked @ (10 ** np.arange(regions.size - 1, -1, -1))  # region ids are digits
        return np.char.zfill(code.astype(str), regions.size).astype(object)

    def _meta(self) -> dict:
        return {"seed": int(self.seed), "days": float(self.days), "mean_rate_per_s": float(self.mean_rate_per_s),
                "source_start_day": int(self.source_start_day), "models": list(self.models),
                "model_lengths": list(self.model_lengths), "regions": list(self.regions),
                "tier_shares": list(self.tier_shares), "tier_sla_s": list(self.tier_sla_s),
                "niw_mean_batch_size": float(self.niw_mean_batch_size), "source": str(self._source())}


def read_composed(path: str | os.PathLike) -> Trace:
    """A composed trace written with :meth:`Trace.to_csv`, read back with :func:`load_trace` and its columns
    given the types of :data:`COLUMN_TYPES` (the native CSV reader keeps unknown columns as text)."""
    trace = load_trace(path)
    missing = [c for c in COLUMN_TYPES if c not in trace.df.columns]
    if missing:
        raise TraceError(f"{path}: not a composed SageServe-style trace; missing column(s) {missing}")
    return Trace(_typed(trace.df, path), name=trace.name, source=trace.source, meta=trace.meta)


def _typed(df: pd.DataFrame, path: str | os.PathLike | None = None) -> pd.DataFrame:
    df = df.copy()
    for col, kind in COLUMN_TYPES.items():
        if kind == "str":
            df[col] = df[col].astype(str).astype(object)
            continue
        v = pd.to_numeric(df[col], errors="coerce")
        if v.isna().any():
            i = int(np.flatnonzero(v.isna().to_numpy())[0])
            raise TraceError(f"{path or 'composed trace'}: row {i}: field {col!r} = {df[col].iloc[i]!r} is not "
                             f"a number")
        df[col] = v.astype(kind)
    return df[list(COLUMN_TYPES)]


@lru_cache(maxsize=4)
def servegen_rates(folder: Path) -> pd.DataFrame:
    """ServeGen per-client mean rates (requests/s): one row per client id, one column per 600 s window.

    Raises :class:`TraceError` naming the file for a missing folder, a window grid other than 600 s steps from
    0, a rate that is not a finite number >= 0, or files of different lengths.
    """
    folder = Path(folder)
    files = sorted(folder.glob("chunk-*-trace.csv")) if folder.is_dir() else []
    if not files:
        raise TraceError(f"{folder}: no ServeGen chunk-<id>-trace.csv rate files; pass source_dir=<folder>")
    rows, n = {}, None
    for f in files:
        try:
            client = int(f.name.split("-")[1])
            df = pd.read_csv(f, header=None, names=SERVEGEN_COLUMNS, usecols=[0, 1])
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise TraceError(f"{f}: cannot read as a ServeGen rate file: {e}") from None
        start = pd.to_numeric(df["window_start_s"], errors="coerce").to_numpy(dtype=float)
        rate = pd.to_numeric(df["rate_rps"], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(start != np.arange(len(df)) * WINDOW_S)
        if bad.size:
            raise TraceError(f"{f}: line {bad[0] + 1}: field 'window_start_s' = {df['window_start_s'].iloc[bad[0]]!r}; "
                             f"expected {bad[0] * WINDOW_S:g} (600 s windows from 0)")
        bad = np.flatnonzero(~(np.isfinite(rate) & (rate >= 0)))
        if bad.size:
            raise TraceError(f"{f}: line {bad[0] + 1}: field 'rate_rps' = {df['rate_rps'].iloc[bad[0]]!r} is not "
                             f"a finite rate >= 0")
        if n is not None and len(rate) != n:
            raise TraceError(f"{f}: {len(rate)} windows, but {files[0].name} has {n}; the files must cover the "
                             f"same days")
        n = len(rate)
        rows[client] = rate
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


@lru_cache(maxsize=8)
def _length_table(name: str) -> pd.DataFrame:
    """Prompt/output pairs of a bundled trace or length table (read once per process)."""
    if name not in BUNDLED:
        raise ConfigError(f"model length table {name!r} is not a bundled trace; use one of "
                          f"sharegpt-lengths, arxiv-lengths, azure-conv-2023")
    if name.endswith("-lengths"):
        return read_length_table(bundled_trace_path(name))
    return load_trace(name).df[["prompt_tokens", "output_tokens"]].reset_index(drop=True)
