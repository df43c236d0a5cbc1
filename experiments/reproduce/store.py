"""Where finished cells live: one file per cell, written atomically, and the tidy table built from them.

Layout under an experiment's folder::

    cells/<key>.json     one finished cell: its parameters, result rows, timings, version (written atomically)
    cells/<key>.log      what the cell printed, if anything
    table.csv            one row per result row: the cell's parameters, then the results (deterministic columns)
    table.parquet        the same table, when pyarrow is installed
    timings.csv          per cell: wall time, the backend and worker that ran it, the measurement columns

A cell's key is a hash of its parameters (sorted JSON), so a cell is found again whatever order or process
computes it. A cell file appears only once complete (written to a temporary name, flushed, then renamed:
``os.replace`` is atomic), so a run killed mid-cell leaves no trace of that cell, and the next run computes it
again; the files of finished cells are kept. Temporary files of a killed write are removed on the next open.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError


def cell_key(params: dict) -> str:
    """A stable name for a cell: the first 16 hex digits of the SHA-256 of its sorted-key JSON."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def json_scalar(value: Any) -> Any:
    """``value`` as a JSON scalar: numpy scalars to Python, anything else that is not a scalar refused."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"result value {value!r} ({type(value).__name__}) is not a JSON scalar; return numbers, "
                      f"strings, booleans or None")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CellStore:
    """The finished cells of one experiment under ``folder`` (created if missing)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.cells_dir = self.folder / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.cells_dir.glob(".*.tmp-*"):  # left by a write that was killed
            tmp.unlink(missing_ok=True)

    def path(self, params: dict) -> Path:
        return self.cells_dir / f"{cell_key(params)}.json"

    def has(self, params: dict) -> bool:
        return self.path(params).exists()

    def load(self, params: dict) -> dict:
        """The record of a finished cell (``params``, ``rows``, ``wall_s``, ``backend``, ``worker``, ``version``).

        A record whose parameters differ from ``params`` (a hash collision, or a file copied by hand) raises
        :class:`ConfigError`; so does a file that is not a record."""
        path = self.path(params)
        try:
            record = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{path}: not a cell record ({e}); delete it to recompute the cell") from None
        if record.get("params") != params:
            raise ConfigError(f"{path}: holds the cell {record.get('params')}, not {params}; delete it to recompute")
        return record

    def save(self, params: dict, rows: list[dict], wall_s: float, backend: str, worker: str, version: str,
             log: str = "") -> None:
        """Persist one finished cell atomically (its log first, so a record never lacks its log).

        Rows that are not JSON scalars, or that contradict a parameter, raise :class:`ConfigError` and nothing
        is written: the cell counts as failed."""
        rows = [{k: json_scalar(v) for k, v in row.items()} for row in rows]
        _check_rows(params, rows)
        if log:
            atomic_write_text(self.path(params).with_suffix(".log"), log)
        record = {"params": params, "rows": rows,
                  "wall_s": wall_s, "backend": backend, "worker": worker, "version": version}
        atomic_write_text(self.path(params), json.dumps(record, allow_nan=True, indent=1))

    def records(self, plan: list[dict]) -> list[dict]:
        """Records of the finished cells of ``plan``, in plan order (cells not finished are left out)."""
        return [self.load(p) for p in plan if self.has(p)]

    def write_tables(self, plan: list[dict], measurements: tuple[str, ...] = ()) -> pd.DataFrame:
        """Rebuild ``table.csv`` (and ``table.parquet`` with pyarrow) and ``timings.csv`` from the finished
        cells of ``plan`` (written atomically, so an interrupted rewrite keeps the old files). Returns the table
        with the measurement columns too, for plots and findings."""
        table, timings = tables(self.records(plan), measurements)
        atomic_write_text(self.folder / "table.csv", table.to_csv(index=False))
        atomic_write_text(self.folder / "timings.csv", timings.to_csv(index=False))
        if importlib.util.find_spec("pyarrow") is not None:
            tmp = self.folder / f".table.parquet.tmp-{os.getpid()}"
            table.to_parquet(tmp, index=False)
            os.replace(tmp, self.folder / "table.parquet")
        if not len(table):
            return table
        extra = [c for c in measurements if c in timings]
        return pd.concat([table, timings.loc[timings["row"] >= 0, extra].reset_index(drop=True)], axis=1)


def tables(records: list[dict], measurements: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy table (parameters + deterministic results, one row per result row) and the timings table
    (parameters + ``cell_wall_s``, ``backend``, ``worker`` + the measurement columns) of ``records``.

    A result column that repeats a parameter must agree with it (it is then dropped); a disagreement raises
    :class:`ConfigError`, since the row would not be keyed by its cell.
    """
    rows, timing_rows = [], []
    for rec in records:
        params = rec["params"]
        _check_rows(params, rec["rows"])
        for i, row in enumerate(rec["rows"]):
            result = {k: v for k, v in row.items() if k not in params and k not in measurements}
            rows.append({**params, **result})
            timing_rows.append({**params, "row": i, **{k: row[k] for k in measurements if k in row},
                                "cell_wall_s": rec["wall_s"], "backend": rec["backend"], "worker": rec["worker"]})
        if not rec["rows"]:
            timing_rows.append({**params, "row": -1, "cell_wall_s": rec["wall_s"], "backend": rec["backend"],
                                "worker": rec["worker"]})
    return pd.DataFrame(rows), pd.DataFrame(timing_rows)


def _check_rows(params: dict, rows: list[dict]) -> None:
    for row in rows:
        for k in sorted(set(row) & set(params)):
            if not _same(row[k], params[k]):
                raise ConfigError(f"cell {params}: result column {k!r}={row[k]!r} contradicts the parameter "
                                  f"{k}={params[k]!r}; rename the parameter or the column")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
