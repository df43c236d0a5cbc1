"""Benchmark: wall time of the same cells on 1, 2, ... workers of a backend, and whether the tables agree.

    python -m experiments.reproduce.bench mcsf-synthetic --per-group model 4 --workers 1 2 --backend ray

runs the first 4 cells of each arrival model of the full (paper-size) plan, once per worker count, each into a
fresh folder (nothing reused), and prints the wall time of each run (Ray start-up included), the speed-up over
the first worker count, the cells' summed compute time, and how many rows of the deterministic table differ
from the first run's (a time-limited solver's incumbent can depend on the CPU it got, so paper-size MC-SF cells
may differ; cells that finish within their limit must not).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from experiments.reproduce.registry import get
from experiments.reproduce.run import reproduce


def subset(plan: list[dict], per_group: tuple[str, int] | None, first: int | None) -> list[dict]:
    """The first ``n`` cells of each value of ``column`` (``per_group = (column, n)``), or the first ``first``."""
    if per_group is not None:
        column, n = per_group
        taken: dict = {}
        out = []
        for cell in plan:
            key = cell.get(column)
            if taken.get(key, 0) < n:
                taken[key] = taken.get(key, 0) + 1
                out.append(cell)
        return out
    return plan[:first] if first else plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("--quick", action="store_true", help="take the cells from the quick plan")
    ap.add_argument("--per-group", nargs=2, metavar=("COLUMN", "N"), default=None)
    ap.add_argument("--first", type=int, default=None, help="the first N cells of the plan")
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--backend", default="ray", choices=["pool", "ray"])
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = ap.parse_args(argv)
    exp = get(args.experiment)
    per_group = (args.per_group[0], int(args.per_group[1])) if args.per_group else None
    cells = subset(exp.plan(args.quick), per_group, args.first)
    picked = dataclasses.replace(exp, cells=lambda quick: cells)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench-reproduce-"))
    print(f"{exp.name}: {len(cells)} cells ({'quick' if args.quick else 'full'} plan), backend {args.backend}, "
          f"workers {args.workers}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; runs in {root}",
          flush=True)
    results = []
    for w in args.workers:
        out = root / f"{args.backend}-{w}"
        t0 = time.perf_counter()
        summary = reproduce(out, quick=args.quick, backend=args.backend, workers=w, experiments=[picked],
                            progress=False)
        wall = time.perf_counter() - t0
        table = pd.read_csv(out / exp.name / "table.csv")
        compute = sum(json.loads(p.read_text())["wall_s"] for p in (out / exp.name / "cells").glob("*.json"))
        results.append((w, wall, compute, table, len(summary.failed)))
        print(f"  {w} worker(s): {wall:8.1f} s wall, {compute:8.1f} s of cell time, {len(summary.failed)} failed, "
              f"load average now {os.getloadavg()[0]:.2f}", flush=True)
    base_w, base_wall, _, base_table, _ = results[0]
    for w, wall, _, table, _ in results[1:]:
        if table.shape == base_table.shape and list(table.columns) == list(base_table.columns):
            same = ((table == base_table) | (table.isna() & base_table.isna())).all(axis=1)
            differ = int((~same).sum())
        else:
            differ = len(table)
        print(f"  speed-up {base_w} -> {w} worker(s): {base_wall / wall:.2f}x; rows differing from the "
              f"{base_w}-worker table: {differ} of {len(table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
