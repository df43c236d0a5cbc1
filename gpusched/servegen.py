"""Alibaba ServeGen per-client rate windows (``chunk-<id>-trace.csv``) sampled into a request trace.

A rate file has no header and one line per window: ``window_start_s, rate_rps, cv, arrival_dist, shape,
scale`` (windows of 600 s, in increasing order; ``arrival_dist`` is ``Gamma``, ``Weibull`` or empty for a
window without a fit). Next to it, ``chunk-<id>-dataset.json`` may hold per-window length PMFs:
``{"<window_start_s>": {"input_tokens": "<python dict token -> probability>", "output_tokens": "..."}}``.
Every bad line, window or PMF raises :class:`~gpusched.errors.TraceError` naming the file, the line and the
value. A sample that would exceed ``max_requests`` is refused before anything is drawn.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpusched.arrivals import MAX_ARRIVALS
from gpusched.errors import ConfigError, TraceError
from gpusched.lengths import sample_lengths
from gpusched.rows import parse_numbers, read_csv_text, utf8_error
from gpusched.trace import MAX_TOKENS, Trace

SERVEGEN_COLUMNS = ["window_start_s", "rate_rps", "cv", "arrival_dist", "shape", "scale"]
DISTRIBUTIONS = ("Gamma", "Weibull", "")
DEFAULT_WINDOW_S = 600.0  # width of the last window when a file has only one


def read_servegen(paths: Any, clients: Any = None, start_s: float = 0.0, end_s: float = 3600.0,
                  seed: int = 0, lengths: Any = None, match_rate: bool = True, on_error: str = "raise",
                  max_requests: int = MAX_ARRIVALS) -> Trace:
    """Sample a request trace from ServeGen per-client rate windows (``chunk-<id>-trace.csv``).

    ``paths``: a rate file, a list of them, or a folder (all clients, or only ``clients`` = ids). Arrivals are
    sampled in ``[start_s, end_s)`` (default the first hour: the full 14 days is tens of millions of
    requests), seconds from the trace start (not re-based). In each window with ``rate_rps > 0`` the
    client's inter-arrival times are drawn from the fitted distribution (numpy ``gamma(shape, scale)`` or
    ``scale * weibull(shape)``), a renewal process restarted at the window start.

    What ``scale`` means (checked on all 162 m-large files): for **Gamma**, numpy's scale convention fits:
    ``shape*scale`` equals ``1/rate_rps`` (median ratio 0.998) and ``cv == 1/sqrt(shape)`` exactly. For
    **Weibull** the implied mean ``scale*Gamma(1+1/shape)`` is *not* ``1/rate_rps`` (median ratio 1.17,
    spread 0.002-8.9), nor does the implied CV match ``cv``. So by default (``match_rate=True``) each
    window's draws are rescaled to mean ``1/rate_rps``: the fitted shape sets burstiness, the measured rate
    sets the count. ``match_rate=False`` uses the raw fitted scale. A window without a fit draws Gamma gaps
    with the measured CV (exponential if the CV is unknown), always at the measured rate.

    Size: a window's process runs from its start up to its end or ``end_s``, whichever comes first (what
    falls before ``start_s`` is drawn, then dropped). The expected number of draws (``rate x time`` over
    those spans, at the raw fitted mean with ``match_rate=False``) must not exceed ``max_requests``
    (default :data:`gpusched.arrivals.MAX_ARRIVALS`, ten million); above it the load is refused, naming
    the window that contributes most, before anything is allocated.

    Lengths: from ``chunk-<id>-dataset.json`` next to the rate file when present (the PMF of the latest
    window starting at or before the arrival, the first window's before it; input and output are drawn
    independently, as ServeGen gives marginals), or from ``lengths`` (a length table / Trace / bundled name,
    rows sampled so prompt/output stay paired), which takes precedence. A client with neither raises
    TraceError. With a folder and no ``clients``, only clients that have a dataset file are loaded unless
    ``lengths`` is given.

    ``request_id`` is generated: the 0-based position in arrival order (ties by client id), stated in
    ``trace.meta["request_id"]``. Seeding: client c uses ``numpy.random.default_rng([seed, c])``, so adding
    clients does not change others.
    """
    if not (np.isfinite(start_s) and np.isfinite(end_s) and end_s > start_s):
        raise ConfigError(f"end_s={end_s!r} must be > start_s={start_s!r}, both finite seconds")
    if isinstance(max_requests, bool) or not isinstance(max_requests, (int, np.integer)) or max_requests < 1:
        raise ConfigError(f"max_requests={max_requests!r} must be an int >= 1")
    files = _servegen_files(paths, clients)
    if clients is None and lengths is None:
        files = [(c, f) for c, f in files if _dataset_path(f).exists()] or files
    if not files:
        raise TraceError(f"{paths}: no ServeGen chunk-<id>-trace.csv files")
    plans, skipped_total = [], 0
    for client, f in files:
        win, skipped = _windows(f, on_error)
        skipped_total += skipped
        plans.append((client, f, win, _sampled_windows(win, start_s, end_s, match_rate)))
    _check_size(plans, start_s, end_s, max_requests)
    parts = []
    for client, f, win, todo in plans:
        rng = np.random.default_rng([seed, client])
        times = [_window_arrivals(rng, f, win.loc[i], horizon, match_rate, start_s) for i, horizon, _ in todo]
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
    if df.empty:
        raise TraceError(f"{paths}: no request arrives in [{start_s:g}, {end_s:g}) s: every window of client(s) "
                         f"{[c for c, _ in files]} there has rate 0; pick another interval or other clients")
    df.insert(0, "request_id", np.arange(len(df), dtype=np.int64))
    src = Path(files[0][1]).parent if len(files) > 1 else files[0][1]
    if skipped_total:
        warnings.warn(f"{src}: skipped {skipped_total} bad ServeGen window row(s)", stacklevel=3)
    return Trace(df, name="servegen", source=str(src), skipped_rows=skipped_total,
                 meta={"clients": [c for c, _ in files], "start_s": start_s, "end_s": end_s, "seed": seed,
                       "match_rate": match_rate,
                       "request_id": "generated: 0-based position in arrival order (ties by client id)"})


# ---- rate files -------------------------------------------------------------------------------------------

def _servegen_files(paths: Any, clients: Any) -> list[tuple[int, Path]]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[tuple[int, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = [(_client_id(f), f) for f in p.glob("chunk-*-trace.csv")]
            if not found:
                raise TraceError(f"{p}: folder holds no ServeGen chunk-<id>-trace.csv files")
            files += found
        elif p.exists():
            files.append((_client_id(p), p))
        else:
            raise TraceError(f"{p}: no such ServeGen file or folder")
    files.sort()
    if clients is not None:
        try:
            wanted = [int(c) for c in ([clients] if isinstance(clients, (int, str)) else clients)]
        except (TypeError, ValueError):
            raise ConfigError(f"clients={clients!r}: give client ids (ints), e.g. clients=[61, 34]") from None
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


def _windows(path: Path, on_error: str) -> tuple[pd.DataFrame, int]:
    """The windows of one rate file, checked: numbers, distribution names, fits, increasing starts."""
    text = read_csv_text(path, on_error, names=SERVEGEN_COLUMNS)
    df, rows = text.df, text.checker(path, on_error)
    out = pd.DataFrame({"window_start_s": parse_numbers(rows, df["window_start_s"], "window_start_s"),
                        "rate_rps": parse_numbers(rows, df["rate_rps"], "rate_rps")})
    for c in ("cv", "shape", "scale"):
        out[c] = parse_numbers(rows, df[c], c, allow_missing=True)
    dist = df["arrival_dist"].str.strip()
    rows.flag(~dist.isin(DISTRIBUTIONS).to_numpy(), "arrival_dist", df["arrival_dist"],
              "is not Gamma, Weibull or empty")
    out["arrival_dist"] = dist
    fitted = (out["rate_rps"] > 0).to_numpy() & (dist != "").to_numpy()
    shape, scale = out["shape"].to_numpy(), out["scale"].to_numpy()
    rows.flag(fitted & ~(shape > 0), "shape", df["shape"], "must be > 0 for a fitted window")
    rows.flag(fitted & ~(scale > 0), "scale", df["scale"], "must be > 0 for a fitted window")
    mean = _fit_mean_s(dist.to_numpy(), shape, scale)
    rows.flag(fitted & (shape > 0) & (scale > 0) & ~((mean > 0) & np.isfinite(mean)), "shape", df["shape"],
              "and scale give a mean inter-arrival time of 0 or beyond float range; check the fit")
    out["fit_mean_s"] = mean
    ws = out["window_start_s"].to_numpy()
    previous = pd.Series(ws).ffill().shift().to_numpy()  # the last window start that parsed
    rows.flag(np.isfinite(ws) & (ws <= previous), "window_start_s", df["window_start_s"],
              "is not after the previous line's window start; windows must be in increasing time order")
    out["line"] = text.lines
    keep, skipped = rows.finish()
    return out[keep].reset_index(drop=True), skipped


def _fit_mean_s(dist: np.ndarray, shape: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Mean of each window's fitted inter-arrival distribution, seconds (0 where there is no fit):
    ``shape * scale`` (Gamma) or ``scale * Gamma(1 + 1/shape)`` (Weibull; inf where it overflows)."""
    mean = np.zeros(len(dist))
    for i in np.flatnonzero((dist != "") & (shape > 0) & (scale > 0)):
        try:
            mean[i] = shape[i] * scale[i] if dist[i] == "Gamma" else scale[i] * math.gamma(1 + 1 / shape[i])
        except OverflowError:
            mean[i] = math.inf
    return mean


def _sampled_windows(win: pd.DataFrame, start_s: float, end_s: float,
                     match_rate: bool) -> list[tuple[int, float, float]]:
    """``(row, horizon_s, expected draws)`` of every active window that overlaps ``[start_s, end_s)``: its
    renewal process runs from the window start for ``horizon_s = min(width, end_s - start)`` seconds."""
    ws = win["window_start_s"].to_numpy()
    if not len(ws):
        return []
    last = ws[-1] - ws[-2] if len(ws) > 1 else DEFAULT_WINDOW_S
    width = np.diff(ws, append=ws[-1] + last)
    out = []
    for i in np.flatnonzero((win["rate_rps"].to_numpy() > 0) & (ws < end_s) & (ws + width > start_s)):
        horizon = float(min(width[i], end_s - ws[i]))
        out.append((int(i), horizon, _expected(win.loc[i], horizon, match_rate)))
    return out


def _expected(w: pd.Series, width_s: float, match_rate: bool) -> float:
    """Expected number of draws in ``width_s`` seconds of a window: at its rate, or at its fit's raw mean."""
    if match_rate or w["arrival_dist"] == "":
        return w["rate_rps"] * width_s
    return width_s / w["fit_mean_s"]


def _check_size(plans: list, start_s: float, end_s: float, max_requests: int) -> None:
    total = sum(e for *_, todo in plans for _, _, e in todo)
    if total <= max_requests:
        return
    e, f, line, rate = max((e, f, int(win.at[i, "line"]), float(win.at[i, "rate_rps"]))
                           for _, f, win, todo in plans for i, _, e in todo)
    raise TraceError(f"{f}: line {line}: field 'rate_rps' = {rate!r}: sampling [{start_s:g}, {end_s:g}) s "
                     f"would draw ~{total:.3g} arrivals in all (this window ~{e:.3g}, from its start), more "
                     f"than max_requests={max_requests:,}; end earlier (end_s), load fewer clients, or raise "
                     f"max_requests if you have the memory (~100 bytes per request)")


def _window_arrivals(rng: np.random.Generator, path: Path, w: pd.Series, horizon_s: float, match_rate: bool,
                     start_s: float) -> np.ndarray:
    """Arrivals of one window: a renewal process from the window start, run for ``horizon_s`` seconds (the
    window's width, or less where ``end_s`` cuts it) and kept from ``start_s`` on."""
    dist, shape, scale, cv, rate = w["arrival_dist"], w["shape"], w["scale"], w["cv"], w["rate_rps"]
    expected = _expected(w, horizon_s, match_rate)
    t, t_end, drawn = [], 0.0, 0
    while t_end < horizon_s:
        k = int(expected * 1.2 + 6 * np.sqrt(expected) + 16)
        if dist == "Gamma":
            g, mean = rng.gamma(shape, scale, k), w["fit_mean_s"]
        elif dist == "Weibull":
            g, mean = scale * rng.weibull(shape, k), w["fit_mean_s"]
        else:  # active window without a fit: Gamma with the measured CV (exponential if CV unknown)
            s = 1 / cv ** 2 if np.isfinite(cv) and cv > 0 else 1.0
            g, mean = rng.gamma(s, 1.0, k), s
        if match_rate or dist == "":
            g = g * (1.0 / (rate * mean))
        c = t_end + np.cumsum(g)
        t.append(c)
        t_end = float(c[-1])
        drawn += k
        if drawn > 4 * expected + 10_000:  # the draws' mean is far below the one the fit implies
            raise TraceError(f"{path}: line {w['line']}: the fitted {dist or 'Gamma'} (shape={shape!r}, "
                             f"scale={scale!r}) draws inter-arrival times far shorter than its own mean "
                             f"({horizon_s / drawn:.3g} s vs {1 / rate if match_rate else mean:.3g} s); check the fit")
    c = np.concatenate(t)
    c = w["window_start_s"] + c[c < horizon_s]
    return c[c >= start_s]


# ---- length PMFs --------------------------------------------------------------------------------------------

def _dataset_path(trace_path: Path) -> Path:
    return trace_path.with_name(trace_path.name.replace("-trace.csv", "-dataset.json"))


def _line_of(text: str, key: str) -> int:
    """1-based line where the JSON key ``key`` first appears (1 if it cannot be found)."""
    at = text.find(json.dumps(key))
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def _dataset(ds: Path) -> tuple[str, dict]:
    """The dataset file's text and its JSON object, checked to be ``{window_start_s: {...}}``."""
    raw = ds.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise utf8_error(ds) from None
    if not text.strip():
        raise TraceError(f"{ds}: the file is empty; expected a JSON object {{window_start_s: {{input_tokens, "
                         f"output_tokens}}}}")
    try:
        data = json.loads(text)
    except ValueError as e:
        line = getattr(e, "lineno", 1)
        raise TraceError(f"{ds}: line {line}: not valid JSON ({getattr(e, 'msg', e)}); fix the file or pass "
                         f"lengths= instead") from None
    if not isinstance(data, dict) or not data:
        what = f"a JSON {type(data).__name__}" if not isinstance(data, dict) else "an empty object"
        raise TraceError(f"{ds}: line 1: the top level is {what}; a ServeGen dataset file is an object "
                         f"{{window_start_s: {{'input_tokens': pmf, 'output_tokens': pmf}}}}")
    for key, value in data.items():
        try:
            start = float(key)
        except ValueError:
            start = math.nan
        if not math.isfinite(start):
            raise TraceError(f"{ds}: line {_line_of(text, key)}: window key {key!r} is not a number of seconds")
        if not isinstance(value, dict):
            raise TraceError(f"{ds}: line {_line_of(text, key)}: window {key!r} holds a JSON "
                             f"{type(value).__name__} ({str(value)[:40]!r}), expected an object with "
                             f"'input_tokens' and 'output_tokens' PMFs")
    return text, data


def _parse_pmf(ds: Path, line: int, key: str, field: str, value: Any) -> tuple[np.ndarray, np.ndarray]:
    where = f"{ds}: line {line}: window {key!r}: field {field!r}"
    try:
        pmf = ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise TraceError(f"{where} is not a dict token -> probability: {e}") from None
    if not isinstance(pmf, dict) or not pmf:
        raise TraceError(f"{where} is {str(pmf)[:40]!r}, not a non-empty dict token -> probability")
    tokens, probs = list(pmf), list(pmf.values())
    for tok in tokens:
        if isinstance(tok, bool) or not isinstance(tok, (int, float)) or not (1 <= tok <= MAX_TOKENS) \
                or tok != int(tok):
            raise TraceError(f"{where}: token count {tok!r} is not an integer in 1..{MAX_TOKENS:,}")
    for p in probs:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and p >= 0):
            raise TraceError(f"{where}: probability {p!r} is not a finite number >= 0")
    p = np.asarray(probs, dtype=float)
    if p.sum() <= 0 or not np.isfinite(p.sum()):
        raise TraceError(f"{where}: probabilities sum to {p.sum()!r}; need a positive finite total")
    return np.asarray([int(x) for x in tokens], dtype=np.int64), p / p.sum()


def _servegen_lengths(ds: Path, t: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    text, data = _dataset(ds)
    keys = sorted(data, key=float)
    starts = np.array([float(k) for k in keys])
    prompt = np.zeros(len(t), dtype=np.int64)
    output = np.zeros(len(t), dtype=np.int64)
    idx = np.maximum(np.searchsorted(starts, t, side="right") - 1, 0)
    for j in np.unique(idx):
        sel = idx == j
        key = keys[j]
        for field, dst in (("input_tokens", prompt), ("output_tokens", output)):
            if field not in data[key]:
                raise TraceError(f"{ds}: line {_line_of(text, key)}: window {key!r}: missing field {field!r}")
            tok, p = _parse_pmf(ds, _line_of(text, key), key, field, data[key][field])
            dst[sel] = rng.choice(tok, size=int(sel.sum()), p=p)
    return pd.DataFrame({"prompt_tokens": prompt, "output_tokens": output})
