"""Readers of measured op tables, turned into numpy interpolation grids (seconds).

Two on-disk formats are understood (:func:`detect_format`):

* ``"h100"`` -- our op tables (``ops_linear.csv``, ``ops_attn_prefill.csv``, ``ops_attn_decode.csv``,
  ``ops_attn_chunked.csv``), times in **ms**, several models (short names) and TP degrees per file.
* ``"llmservingsim"`` -- LLMServingSim 2.0's layerwise vLLM profiles (``dense.csv``, ``per_sequence.csv``,
  ``attention.csv`` under ``tp<N>/``, ``meta.yaml`` beside), times in **µs**, one model per directory; and,
  when the ``meta.yaml`` enables it, the decode-skew correction (``skew_fit`` block and ``tp<N>/skew_fit.csv``,
  read by :func:`read_lss_skew_fit` into a :class:`SkewFit`).

Everything leaves this module in SI units. The interpolation primitives (:class:`Grid1D`, :class:`Grid2D`)
are pure Python over tuples of floats because the simulator calls them millions of times with scalars,
where numpy's per-call overhead dominates.

Grid conventions: linear interpolation inside the grid; below the first point the first value is held
(those entries are launch-floor dominated); above the last point a 1-D table scales proportionally
(``y_last x / x_last``: large ops are throughput-bound) and 2-D/4-D tables extend their last segment
linearly with slopes clipped at >= 0 (a step never gets faster with more work).
"""
from __future__ import annotations

import math
import numbers
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from gpusched.errors import ProfileError

__all__ = ["Grid1D", "Grid2D", "Grid4D", "monotone_envelope", "detect_format", "H100Tables", "read_h100_tables",
           "LssTables", "read_lss_tables", "find_lss_tp_dir", "lss_profiled_model", "BucketAxis", "SkewFit",
           "read_lss_skew_fit"]

H100_FILES = ("ops_linear.csv", "ops_attn_prefill.csv", "ops_attn_decode.csv")
LINEAR_OPS = ("qkv", "o", "gate_up", "down")


def _seg(xs: tuple, v: float) -> tuple[int, float]:
    """Segment index i and fraction t so that v = xs[i] + t (xs[i+1]-xs[i]); t<0 clipped to 0, t>1 allowed."""
    n = len(xs)
    if n == 1:
        return 0, 0.0
    i = bisect_right(xs, v) - 1
    if i < 0:
        return 0, 0.0
    if i >= n - 1:
        i = n - 2
    return i, (v - xs[i]) / (xs[i + 1] - xs[i])


class Grid1D:
    """y(x) by linear interpolation on a sorted grid (see the module docstring for out-of-grid rules)."""

    __slots__ = ("x", "y")

    def __init__(self, x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if x.ndim != 1 or x.shape != y.shape or len(x) == 0 or np.any(np.diff(x) <= 0) or not np.all(np.isfinite(y)):
            raise ProfileError(f"Grid1D needs a strictly increasing x grid and finite y of the same length, got x={x}")
        self.x, self.y = tuple(x.tolist()), tuple(y.tolist())

    def __call__(self, v: float) -> float:
        x, y = self.x, self.y
        if len(x) == 1:
            return y[0]
        i, t = _seg(x, v)
        if t > 1.0:  # beyond the grid: work (and time) proportional to the size -- one noisy last segment
            return y[-1] * v / x[-1] if x[-1] > 0 else y[-1]  # would otherwise set the slope
        return y[i] + (y[i + 1] - y[i]) * t


class Grid2D:
    """z(a, b) by bilinear interpolation on a full rectilinear grid ``z[i, j]`` at ``(a[i], b[j])``.

    Bilinear interpolation is exact for ``z = c0 + c1 a + c2 b + c3 a b`` -- e.g. decode attention time as
    launch + (batch x context) KV bytes -- so it is the natural choice for these tables. Out-of-grid rules
    as :class:`Grid1D` (per axis; extrapolation slopes clipped at >= 0).
    """

    __slots__ = ("a", "b", "z", "_rows")

    def __init__(self, a, b, z):
        a, b, z = np.asarray(a, float), np.asarray(b, float), np.asarray(z, float)
        if z.shape != (len(a), len(b)) or np.any(np.diff(a) <= 0) or np.any(np.diff(b) <= 0):
            raise ProfileError(f"Grid2D needs increasing axes and z of shape ({len(a)}, {len(b)}), got {z.shape}")
        if not np.all(np.isfinite(z)):
            raise ProfileError("Grid2D table has missing (NaN) entries; fill them before building the grid")
        self.a, self.b = tuple(a.tolist()), tuple(b.tolist())
        self.z = tuple(tuple(r) for r in z.tolist())
        self._rows: dict = {}  # u -> _rows_at(u), for along_b (called with a few batch sizes only)

    def __call__(self, u: float, v: float) -> float:
        a, b, z = self.a, self.b, self.z
        i, s = _seg(a, u)
        j, t = _seg(b, v)
        i1 = min(i + 1, len(a) - 1)
        j1 = min(j + 1, len(b) - 1)
        z00, z01, z10, z11 = z[i][j], z[i][j1], z[i1][j], z[i1][j1]
        if s > 1.0 or t > 1.0:  # extrapolation: keep the slopes non-negative
            z10 = max(z10, z00); z11 = max(z11, z01); z01 = max(z01, z00); z11 = max(z11, z10)
        return (z00 * (1 - s) * (1 - t) + z10 * s * (1 - t) + z01 * (1 - s) * t + z11 * s * t)

    def along_b(self, u: float, vs) -> list[float]:
        """``[self(u, v) for v in vs]``, bit for bit, with the ``a``-axis work done once.

        Why: a decode run prices tens of steps at one batch size (``u``) and growing context (``v``).
        Each value goes through the same float operations as :meth:`__call__` in the same order (the
        products ``z * (1 - s)`` and ``z * s`` that do not depend on ``v`` are formed once per ``u`` and
        kept: the expression is evaluated left to right, so they are the same intermediate values); the
        segment of ``b`` is looked up only when ``v`` leaves the previous one, and a ``v`` outside the
        grid goes through :meth:`__call__` itself.
        """
        rows = self._rows.get(u)
        if rows is None:
            rows = self._rows[u] = self._rows_at(u)
        if not rows:  # extrapolating along a: every value takes the clipped path
            return [self(u, v) for v in vs]
        lo, hi = rows
        b = self.b
        last = len(b) - 1
        out = []
        b0 = b1 = 0.0  # the segment [b0, b1) of b that held the previous v (none yet)
        for v in vs:
            if not b0 <= v < b1:  # contexts grow slowly: the segment rarely changes
                j = bisect_right(b, v) - 1
                if not 0 <= j < last:  # outside the grid (held below, extrapolated above)
                    out.append(self(u, v))
                    continue
                b0, b1 = b[j], b[j + 1]
                width = b1 - b0
                lo0, hi0, lo1, hi1 = lo[j], hi[j], lo[j + 1], hi[j + 1]
            t = (v - b0) / width
            r = 1 - t
            out.append(lo0 * r + hi0 * r + lo1 * t + hi1 * t)
        return out

    def _rows_at(self, u: float) -> tuple:
        """``(z[i][:] * (1 - s), z[i + 1][:] * s)`` for ``u`` in segment ``i`` of ``a`` at fraction ``s``;
        ``()`` when ``u`` is beyond the last ``a``."""
        a, z = self.a, self.z
        i, s = _seg(a, u)
        if s > 1.0:
            return ()
        r = 1 - s
        return [x * r for x in z[i]], [x * s for x in z[min(i + 1, len(a) - 1)]]


def monotone_envelope(z: np.ndarray) -> np.ndarray:
    """Largest array <= ``z`` that is non-decreasing along every axis: ``min`` over all dominating entries.

    Why: a kernel never gets faster with more work, and launch jitter in per-launch CUDA-event timing is
    one-sided (it only adds time). So an entry above a larger-work entry carries jitter, and the lower
    value is the better estimate. Works for 1-D and 2-D arrays.
    """
    out = np.array(z, dtype=float)
    for ax in range(out.ndim):
        out = np.flip(np.minimum.accumulate(np.flip(out, ax), axis=ax), ax)
    return out


# ----------------------------------------------------------------------------------------------- format
def detect_format(path: Path) -> tuple[str, Path]:
    """``("h100", dir)`` or ``("llmservingsim", tp-parent dir)`` from the files present under ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise ProfileError(f"profile directory {str(path)!r} does not exist")
    if all((path / f).is_file() for f in H100_FILES):
        return "h100", path
    if (path / "dense.csv").is_file() and (path / "attention.csv").is_file():
        return "llmservingsim", path.parent  # the tp<N> folder itself
    if any(p.is_dir() and (p / "dense.csv").is_file() for p in path.glob("tp*")):
        return "llmservingsim", path
    found = sorted(path.rglob("dense.csv"))
    if found:
        return "llmservingsim", found[0].parent.parent
    raise ProfileError(
        f"{str(path)!r} holds neither the H100 op tables ({', '.join(H100_FILES)}) nor LLMServingSim "
        f"layerwise tables (tp<N>/dense.csv, attention.csv); point at one of those directories")


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise ProfileError(f"profile table {str(path)!r} is missing")
    df = pd.read_csv(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ProfileError(f"{str(path)!r} lacks columns {missing}; has {list(df.columns)}")
    return df


# ------------------------------------------------------------------------------------------------- H100
class H100Tables:
    """One (model, TP) slice of the H100 op tables, in seconds, as numpy arrays (raw, not smoothed).

    Attributes: ``tokens`` and ``linear_s[op]`` (op in qkv/o/gate_up/down); ``prefill_len``, ``prefill_s``;
    ``dec_batch``, ``dec_context``, ``dec_s[batch, context]`` (missing corners filled by linear
    extrapolation along context); ``chunk``, ``cached``, ``chunked_s[chunk, cached]`` or None when the file
    has no rows for this model; ``launch_floor_s`` (smallest GEMM entry of the whole file, any model/TP);
    ``dec_bandwidth_bytes_per_s`` (slope of decode attention time vs KV bytes over the memory-bound
    entries, KV >= 0.25 GB, of this model/TP).
    """


def _fill_rows(z: np.ndarray) -> np.ndarray:
    """Fill NaNs at the end of each row by linear extrapolation from the two previous entries."""
    z = z.copy()
    for r in z:
        for j in range(len(r)):
            if np.isnan(r[j]):
                if j < 2 or np.isnan(r[j - 1]) or np.isnan(r[j - 2]):
                    raise ProfileError("decode/chunked attention table has a gap that cannot be filled")
                r[j] = r[j - 1] + max(r[j - 1] - r[j - 2], 0.0)
    return z


def _pivot(df: pd.DataFrame, rows: str, cols: str, val: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = df.pivot_table(index=rows, columns=cols, values=val, aggfunc="median").sort_index().sort_index(axis=1)
    return p.index.to_numpy(float), p.columns.to_numpy(float), _fill_rows(p.to_numpy(float) * 1e-3)


def read_h100_tables(path: Path, model: str, tp: int) -> H100Tables:
    """Read the H100 op tables of ``model`` (short name) at TP ``tp``; ProfileError names what exists."""
    path = Path(path)
    lin = _read_csv(path / "ops_linear.csv", ("model", "tp", "tokens") + tuple(f"{o}_ms" for o in LINEAR_OPS))
    pre = _read_csv(path / "ops_attn_prefill.csv", ("model", "tp", "seq_len", "attn_ms"))
    dec = _read_csv(path / "ops_attn_decode.csv", ("model", "tp", "batch", "context", "kv_gb", "attn_ms"))
    chk = path / "ops_attn_chunked.csv"
    chunked = _read_csv(chk, ("model", "tp", "chunk", "cached", "attn_ms")) if chk.is_file() else None

    def pick(df: pd.DataFrame, what: str) -> pd.DataFrame:
        sel = df[(df["model"] == model) & (df["tp"] == tp)]
        if sel.empty:
            avail = sorted({f"{m}@tp{t}" for m, t in zip(df["model"], df["tp"])})
            raise ProfileError(f"{what} in {str(path)!r} has no rows for model {model!r} at tp={tp}; "
                               f"available: {', '.join(avail)}")
        return sel

    t = H100Tables()
    g = pick(lin, "ops_linear.csv").sort_values("tokens")
    t.tokens = g["tokens"].to_numpy(float)
    t.linear_s = {o: g[f"{o}_ms"].to_numpy(float) * 1e-3 for o in LINEAR_OPS}
    p = pick(pre, "ops_attn_prefill.csv").sort_values("seq_len")
    t.prefill_len, t.prefill_s = p["seq_len"].to_numpy(float), p["attn_ms"].to_numpy(float) * 1e-3
    d = pick(dec, "ops_attn_decode.csv")
    t.dec_batch, t.dec_context, t.dec_s = _pivot(d, "batch", "context", "attn_ms")
    big = d[d["kv_gb"] >= 0.25]
    if len(big) >= 3:
        slope = np.polyfit(big["kv_gb"].to_numpy() * 1e9, big["attn_ms"].to_numpy() * 1e-3, 1)[0]
        t.dec_bandwidth_bytes_per_s = 1.0 / slope
    else:
        t.dec_bandwidth_bytes_per_s = None
    t.chunk = t.cached = t.chunked_s = None
    if chunked is not None:
        c = chunked[(chunked["model"] == model) & (chunked["tp"] == tp)]
        if not c.empty:
            t.chunk, t.cached, t.chunked_s = _pivot(c, "chunk", "cached", "attn_ms")
    t.launch_floor_s = float(lin[[f"{o}_ms" for o in LINEAR_OPS]].to_numpy().min()) * 1e-3
    return t


# ------------------------------------------------------------------------------------------ LLMServingSim
class LssTables:
    """LLMServingSim layerwise tables at one TP, in seconds.

    ``dense[layer] -> Grid1D over tokens``; ``per_sequence[layer] -> Grid1D over sequences``; attention as
    axes ``pc, kp, nd, kd`` and a dense 4-D array ``att_s`` (NaN where the profiler did not measure);
    ``meta`` is the raw text of ``meta.yaml`` (or "").
    """


def lss_profiled_model(root: Path) -> str | None:
    """The model an LLMServingSim profile measured: ``model:`` of its ``meta.yaml`` (top level), else the
    ``<org>/<model>`` folders above the ``<variant>`` folder (``.../meta-llama/Llama-3.1-8B/bf16``)."""
    import re

    root = Path(root)
    meta = root / "meta.yaml"
    if meta.is_file():
        found = re.search(r"^model:\s*['\"]?([^'\"\s]+)", meta.read_text(errors="replace"), re.MULTILINE)
        if found:
            return found.group(1)
    if len(root.parts) >= 3 and root.parent.parent.name:
        return f"{root.parent.parent.name}/{root.parent.name}"
    return None


def find_lss_tp_dir(root: Path, tp: int) -> Path:
    d = Path(root) / f"tp{tp}"
    if not (d / "dense.csv").is_file():
        avail = sorted(p.name for p in Path(root).glob("tp*") if (p / "dense.csv").is_file())
        raise ProfileError(f"LLMServingSim profile {str(root)!r} has no tp{tp} tables; available: {avail}")
    return d


def read_lss_tables(root: Path, tp: int) -> LssTables:
    d = find_lss_tp_dir(root, tp)
    dense = _read_csv(d / "dense.csv", ("layer", "tokens", "time_us"))
    perseq = _read_csv(d / "per_sequence.csv", ("layer", "sequences", "time_us"))
    att = _read_csv(d / "attention.csv", ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us"))
    t = LssTables()
    dense, perseq = dense.sort_values("tokens"), perseq.sort_values("sequences")
    t.dense = {str(k): Grid1D(g["tokens"], g["time_us"] * 1e-6) for k, g in dense.groupby("layer")}
    t.per_sequence = {str(k): Grid1D(g["sequences"], g["time_us"] * 1e-6) for k, g in perseq.groupby("layer")}
    axes = [np.array(sorted(att[c].unique()), float) for c in ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode")]
    arr = np.full(tuple(len(a) for a in axes), np.nan)
    idx = [np.searchsorted(a, att[c].to_numpy(float)) for a, c in
           zip(axes, ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode"))]
    arr[tuple(idx)] = att["time_us"].to_numpy(float) * 1e-6
    t.pc, t.kp, t.nd, t.kd = axes
    t.att_s = _fill_attention(arr, axes)
    meta = Path(root) / "meta.yaml"
    t.meta = meta.read_text() if meta.is_file() else ""
    return t


def _fill_attention(arr: np.ndarray, axes) -> np.ndarray:
    """Complete LLMServingSim's 4-D attention grid so that multilinear interpolation never meets a hole.

    Axes: ``(prefill_chunk, kv_prefill, n_decode, kv_decode)``; ``arr`` holds seconds, NaN where the
    profiler measured nothing. Holes come from two sources:

    * the profiler skips meaningless corners: no ``kv_decode`` without decodes, no ``kv_prefill``
      without a prefill chunk, nothing for an empty batch, and (at 2048 batched tokens) no prefill
      chunk beside 256 decodes;
    * a profile may be the union of several grids (the RTX PRO 6000 one adds a x1.5 grid, chunks 24,
      36, 54, ..., to the x2 grid): the product of the merged axes has points neither grid measured.

    They are filled in this order, each step using only measured or already-filled values:

    1. structural rules, exact by construction: an axis that does not matter copies its 0 entry
       (``kv_decode`` when ``n_decode = 0``, ``kv_prefill`` when ``prefill_chunk = 0``); the empty
       batch costs 0; decodes at context 0 cost what the smallest measured context costs;
    2. bracketed interpolation: a hole with known values on both sides along some axis (same other
       three coordinates) takes the linear interpolation between the nearest two, along the axis
       whose bracket is narrowest relative to its upper end (``(hi - lo) / hi``; ties: the earlier
       axis). This is the value the grid's multilinear interpolation gives there when the hole's axis
       value is absent, so a merged grid adds information where it was measured and changes nothing
       elsewhere. Every hole of a pass is computed from the array as it stood at the pass's start
       (the result does not depend on visiting order); passes repeat until nothing changes;
    3. decode additivity, for holes outside every bracket (a prefill chunk beside more decodes than
       were measured with one): the largest measured decode count of the same slice plus the
       pure-decode difference between the two counts (prefill and decode work add up in one kernel).

    Steps 2 and 3 repeat until the grid is full; a hole none of them reaches raises
    :class:`ProfileError` naming it.
    """
    if arr.shape[0] == 0 or axes[0][0] != 0 or axes[2][0] != 0:
        raise ProfileError("attention.csv must include prefill_chunk = 0 and n_decode = 0 rows")
    a = arr.copy()
    kd0 = int(np.searchsorted(axes[3], 0)) if axes[3][0] == 0 else None
    kp0 = 0 if axes[1][0] == 0 else None
    if kd0 is not None:  # no decodes: kv_decode irrelevant
        a[:, :, 0, :] = np.where(np.isnan(a[:, :, 0, :]), a[:, :, 0, kd0:kd0 + 1], a[:, :, 0, :])
    if kp0 is not None:  # no prefill: kv_prefill irrelevant
        a[0, :, :, :] = np.where(np.isnan(a[0, :, :, :]), a[0, kp0:kp0 + 1, :, :], a[0, :, :, :])
    a[0, :, 0, :] = np.nan_to_num(a[0, :, 0, :], nan=0.0)
    if kd0 is not None and a.shape[3] > 1:  # decodes with an empty context cost what the smallest one does
        a[:, :, 1:, kd0] = np.where(np.isnan(a[:, :, 1:, kd0]), a[:, :, 1:, kd0 + 1], a[:, :, 1:, kd0])
    while np.isnan(a).any():
        before = int(np.isnan(a).sum())
        while _fill_bracketed(a, axes):
            pass
        _fill_decode_additive(a)
        if int(np.isnan(a).sum()) == before:
            i, k, l, m = (int(x[0]) for x in np.nonzero(np.isnan(a)))
            point = tuple(float(x[j]) for x, j in zip(axes, (i, k, l, m)))
            raise ProfileError(
                f"attention.csv: cannot fill the unmeasured point (prefill_chunk, kv_prefill, n_decode, "
                f"kv_decode) = {point} ({before} such points): no measured neighbours bracket it on any axis "
                f"and no pure-decode row extends it; measure it or a grid around it")
    return a


def _fill_bracketed(a: np.ndarray, axes) -> bool:
    """One pass of step 2 of :func:`_fill_attention`, in place; True if it filled anything."""
    holes = np.isnan(a)
    if not holes.any():
        return False
    best_width = np.full(a.shape, np.inf)
    best_value = np.full(a.shape, np.nan)
    for axis, coords in enumerate(axes):
        x = np.asarray(coords, float)
        n = len(x)
        if n < 3:
            continue
        moved = np.moveaxis(a, axis, -1)
        known = ~np.isnan(moved)
        idx = np.arange(n)
        lo = np.maximum.accumulate(np.where(known, idx, -1), axis=-1)  # nearest known at or below
        hi = np.flip(np.minimum.accumulate(np.flip(np.where(known, idx, n), -1), axis=-1), -1)
        inside = np.moveaxis(holes, axis, -1) & (lo >= 0) & (hi < n)
        if not inside.any():
            continue
        lo_c, hi_c = np.clip(lo, 0, n - 1), np.clip(hi, 0, n - 1)
        x_lo, x_hi, x_at = x[lo_c], x[hi_c], np.broadcast_to(x, moved.shape)
        y_lo = np.take_along_axis(moved, lo_c, -1)
        y_hi = np.take_along_axis(moved, hi_c, -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (x_at - x_lo) / (x_hi - x_lo)
            value = y_lo + (y_hi - y_lo) * t
            width = (x_hi - x_lo) / x_hi
        width = np.where(inside, width, np.inf)
        width, value = np.moveaxis(width, -1, axis), np.moveaxis(value, -1, axis)
        better = width < best_width
        best_width = np.where(better, width, best_width)
        best_value = np.where(better, value, best_value)
    filled = holes & np.isfinite(best_width)
    a[filled] = best_value[filled]
    return bool(filled.any())


def _fill_decode_additive(a: np.ndarray) -> None:
    """Step 3 of :func:`_fill_attention`, in place: holes with a measured lower decode count in their slice."""
    dec = a[0, 0]  # (nd, kd): pure decode
    for i, k, l, m in zip(*np.nonzero(np.isnan(a))):
        lower = [l2 for l2 in range(l) if np.isfinite(a[i, k, l2, m]) and np.isfinite(dec[l2, m])]
        if lower and np.isfinite(dec[l, m]):
            l2 = lower[-1]
            a[i, k, l, m] = a[i, k, l2, m] + max(dec[l, m] - dec[l2, m], 0.0)


class Grid4D:
    """Multilinear interpolation on a full 4-D grid (clamped to the grid's box on every axis, except
    linear extrapolation with non-negative slope beyond the last point, as :class:`Grid1D`)."""

    __slots__ = ("axes", "z")

    def __init__(self, axes, z):
        self.axes = tuple(tuple(float(v) for v in a) for a in axes)
        if np.any(np.isnan(z)):
            raise ProfileError("Grid4D table has NaN entries")
        self.z = np.asarray(z, float)

    def __call__(self, *p: float) -> float:
        segs = [_seg(a, v) for a, v in zip(self.axes, p)]
        z = self.z
        total = 0.0
        for corner in range(16):
            w = 1.0
            idx = []
            for d, (i, t) in enumerate(segs):
                hi = (corner >> d) & 1
                n = len(self.axes[d])
                idx.append(min(i + hi, n - 1))
                w *= t if hi else (1.0 - t)
            if w != 0.0:
                total += w * z[tuple(idx)]
        return max(total, 0.0)


# ------------------------------------------------------------------------------------------- decode skew
class BucketAxis:
    """One axis of LLMServingSim's skew-fit buckets: label ``i`` covers ``(bins[i], bins[i + 1]]`` (right edge
    included, so ``n<=8`` holds 8); a value at or below ``bins[0]`` takes the first label, one above the last
    edge the last label."""

    __slots__ = ("name", "bins", "labels")

    def __init__(self, name: str, bins, labels, where: str):
        ok = (isinstance(bins, (list, tuple)) and isinstance(labels, (list, tuple)) and len(labels) >= 1
              and len(bins) == len(labels) + 1
              and all(_is_number(b) and math.isfinite(b) for b in bins)
              and all(b < c for b, c in zip(bins, bins[1:]))
              and all(isinstance(x, str) for x in labels) and len(set(labels)) == len(labels))
        if not ok:
            raise ProfileError(f"{where}: skew_fit bucket axis {name!r} needs strictly increasing finite bins and "
                               f"one distinct label per bin (len(bins) = len(labels) + 1); got bins {bins!r}, "
                               f"labels {labels!r}")
        self.name, self.bins, self.labels = name, tuple(float(b) for b in bins), tuple(labels)

    def label(self, value: float) -> str:
        i = bisect_left(self.bins, value, 1) - 1  # the first i with value <= bins[i + 1]
        return self.labels[min(i, len(self.labels) - 1)]


# LLMServingSim's fixed skew-rate buckets, and the axes its simulator assumes when a meta.yaml predates
# ``skew_fit.bucket_axes`` (trace_generator.py, _DEFAULT_SKEW_AXES)
_SKEW_AXES_DEFAULT = {
    "n": ((0, 2, 4, 8, 16, 32, 64, 128, 1_000_000),
          ("n<=2", "n<=4", "n<=8", "n<=16", "n<=32", "n<=64", "n<=128", "n>128")),
    "skew_rate": ((-0.01, 0.05, 0.15, 0.40, 0.70, 1.01), ("sr<=5%", "sr<=15%", "sr<=40%", "sr<=70%", "sr>70%")),
    "kv_big": ((0, 1024, 4096, 16384, 1_000_000_000), ("kvB<=1k", "kvB<=4k", "kvB<=16k", "kvB>16k")),
    "kp": ((-1, 0, 2048, 1_000_000_000), ("kp=0", "kp<=2k", "kp>2k")),
}
_SKEW_CSV_COLUMNS = ("pc", "n_label", "skew_rate_label", "kv_big_label", "kp_label", "alpha")


@dataclass(frozen=True)
class SkewFit:
    """LLMServingSim's measured decode-skew correction at one TP degree (read by :func:`read_lss_skew_fit`).

    The attention grid was measured with every decode of a step at one context length. A real batch mixes
    lengths, and FlashAttention's varlen kernel then pays tile padding and SM imbalance that a uniform batch at
    the same mean does not. LLMServingSim's profiler measured, for many skewed batches (``nb`` decodes at
    ``kv_big``, the rest at ``kvs``), the times ``t_mean`` (all at the mean), ``t_max`` (all at the maximum) and
    ``t_skew`` (the batch itself), and fitted per bucket the weighted least-squares
    ``alpha = sum(dtm dts) / sum(dtm^2)`` with ``dtm = t_max - t_mean``, ``dts = t_skew - t_mean``; a step's
    attention is then ``t_mean + alpha (t_max - t_mean)``. A bucket is the 5-tuple

    * ``pc``: the step's prefill tokens (the sum of its chunks), matched exactly against the profiled values;
    * ``n``: the number of decodes, by :attr:`axes` ``["n"]``;
    * ``skew_rate`` = ``(mean - min) / (max - min)`` of the decode contexts, clipped to [0, 1] (``nb / n`` for
      the profiler's two-level batches), with LLMServingSim's integer mean ``sum // n``;
    * ``kv_big``: the longest decode context;
    * ``kp``: the prefill chunks' cached tokens (their sum).

    A bucket missing from the table takes :attr:`alpha_default` (the pooled fit). Attributes: ``alphas``
    ``{(pc, n_label, skew_rate_label, kv_big_label, kp_label): alpha}``, ``alpha_default``, ``axes`` (one
    :class:`BucketAxis` per name ``n``, ``skew_rate``, ``kv_big``, ``kp``), ``source`` (where it was read).
    """

    alphas: dict
    alpha_default: float
    axes: dict
    source: str

    def key(self, pc: int, n: int, skew_rate: float, kv_big: int, kp: int) -> tuple:
        """The bucket of a step (see the class docstring for the arguments)."""
        axes = self.axes
        return (int(pc), axes["n"].label(int(n)), axes["skew_rate"].label(min(max(float(skew_rate), 0.0), 1.0)),
                axes["kv_big"].label(int(kv_big)), axes["kp"].label(int(kp)))

    def alpha(self, pc: int, n: int, skew_rate: float, kv_big: int, kp: int) -> float:
        """The fitted alpha of the step's bucket, or :attr:`alpha_default` if the profile has none for it."""
        return self.alphas.get(self.key(pc, n, skew_rate, kv_big, kp), self.alpha_default)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _finite(value, what: str, where: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise ProfileError(f"{where}: {what} = {value!r} is not a finite number")
    return float(value)


def read_lss_skew_fit(root: Path, tp: int) -> SkewFit | None:
    """The decode-skew correction an LLMServingSim profile measured at TP ``tp``, or None when it has none.

    As LLMServingSim's simulator reads it: ``meta.yaml`` ``skew_fit`` must be ``enabled`` (a profile whose meta
    says ``enabled: false`` gets no correction even if a ``skew_fit.csv`` lies beside its tables: the RTX 4090
    bundle is such a case); ``skew_fit.per_tp[tp]`` gives ``alpha_default`` and the bucket table, inline
    (``alpha_by_bucket``) or as a CSV (``bucket_table``, relative to ``root``); the bucket axes come from the
    TP's entry, else the block's ``bucket_axes``, else LLMServingSim's defaults. With ``enabled: true`` but no
    entry for this TP, the block's ``alpha_default`` applies to every bucket (None if it has none).
    A malformed block or table raises :class:`ProfileError` naming the file, row and field.
    """
    root = Path(root)
    meta_path = root / "meta.yaml"
    if not meta_path.is_file():
        return None
    try:
        meta = yaml.safe_load(meta_path.read_text(errors="replace"))
    except yaml.YAMLError as err:
        raise ProfileError(f"{meta_path}: not valid YAML ({err}); fix or remove the file") from None
    block = meta.get("skew_fit") if isinstance(meta, dict) else None
    if not isinstance(block, dict) or not block.get("enabled"):
        return None
    where = f"{meta_path} skew_fit"
    per_tp = block.get("per_tp") or {}
    if not isinstance(per_tp, dict):
        raise ProfileError(f"{where}: per_tp is a {type(per_tp).__name__}, expected a mapping of TP degree to fit")
    entry = per_tp.get(tp, per_tp.get(str(tp)))
    axes_spec = (entry or {}).get("bucket_axes") or block.get("bucket_axes") or {}
    if not isinstance(axes_spec, dict):
        raise ProfileError(f"{where}: bucket_axes is a {type(axes_spec).__name__}, expected a mapping")
    axes = {}
    for name, (bins, labels) in _SKEW_AXES_DEFAULT.items():
        if f"{name}_bins" in axes_spec or f"{name}_labels" in axes_spec:
            bins, labels = axes_spec.get(f"{name}_bins"), axes_spec.get(f"{name}_labels")
        axes[name] = BucketAxis(name, bins, labels, where)
    if entry is None:
        if block.get("alpha_default") is None:
            return None
        return SkewFit({}, _finite(block["alpha_default"], "alpha_default", where), axes,
                       f"{where}.alpha_default (no per_tp entry for tp{tp})")
    if not isinstance(entry, dict):
        raise ProfileError(f"{where}: per_tp[{tp}] is a {type(entry).__name__}, expected a mapping")
    where = f"{where}.per_tp[{tp}]"
    alpha_default = _finite(entry.get("alpha_default", 0.0), "alpha_default", where)
    if entry.get("alpha_by_bucket"):
        alphas, source = _inline_skew_table(entry["alpha_by_bucket"], axes, where), f"{where}.alpha_by_bucket"
    elif entry.get("bucket_table"):
        path = root / str(entry["bucket_table"])
        alphas, source = _read_skew_csv(path, axes), str(path)
    else:
        raise ProfileError(f"{where}: neither alpha_by_bucket nor bucket_table; the fit has no buckets")
    return SkewFit(alphas, alpha_default, axes, source)


def _check_labels(labels: tuple, axes: dict, where: str) -> None:
    for name, label in zip(("n", "skew_rate", "kv_big", "kp"), labels):
        if label not in axes[name].labels:
            raise ProfileError(f"{where}: {name} label {label!r} is not one of the bucket axis's labels "
                               f"{list(axes[name].labels)}")


def _inline_skew_table(table, axes: dict, where: str) -> dict:
    """``alpha_by_bucket`` of an older meta.yaml: ``"pc=0|n<=8|sr<=5%|kvB<=1k|kp=0": alpha``."""
    if not isinstance(table, dict):
        raise ProfileError(f"{where}: alpha_by_bucket is a {type(table).__name__}, expected a mapping")
    alphas = {}
    for text, alpha in table.items():
        parts = str(text).split("|")
        if len(parts) != 5 or not parts[0].startswith("pc=") or not parts[0][3:].isdigit():
            raise ProfileError(f"{where}: bucket {text!r} is not 'pc=<int>|<n>|<skew rate>|<kv_big>|<kp>'")
        _check_labels(tuple(parts[1:]), axes, f"{where} bucket {text!r}")
        alphas[(int(parts[0][3:]), *parts[1:])] = _finite(alpha, f"alpha of bucket {text!r}", where)
    return alphas


def _read_skew_csv(path: Path, axes: dict) -> dict:
    """``tp<N>/skew_fit.csv`` (``pc, n_label, skew_rate_label, kv_big_label, kp_label, alpha[, n_samples]``)."""
    if not path.is_file():
        raise ProfileError(f"{path}: the skew fit's bucket table named by meta.yaml is missing; restore it, or set "
                           f"skew_fit.enabled to false in meta.yaml to price steps without the correction")
    df = _read_csv(path, _SKEW_CSV_COLUMNS)
    for column in ("pc", "alpha"):  # a non-number anywhere would make the whole column text: name its row
        numbers_ = pd.to_numeric(df[column], errors="coerce")
        bad = ~np.isfinite(numbers_.to_numpy(float))
        if bad.any():
            i = int(np.argmax(bad))
            value = df[column].iloc[i]
            shown = repr(value) if isinstance(value, str) else str(value)
            raise ProfileError(f"{path} row {i + 2}: {column} = {shown} is not a finite number")
        df[column] = numbers_
    alphas, first_row = {}, {}
    for i, row in enumerate(df[list(_SKEW_CSV_COLUMNS)].itertuples(index=False, name=None)):
        line = f"{path} row {i + 2}"
        pc, *labels, alpha = row
        if pc < 0 or pc != int(pc):
            raise ProfileError(f"{line}: pc = {pc!r} is not a token count (an integer >= 0)")
        labels = tuple(str(x) for x in labels)
        _check_labels(labels, axes, line)
        key = (int(pc), *labels)
        if key in alphas:
            raise ProfileError(f"{line}: bucket {key} already given on row {first_row[key]}; keep one row per bucket")
        alphas[key] = _finite(alpha, "alpha", line)
        first_row[key] = i + 2
    return alphas
