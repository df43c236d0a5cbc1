"""Recompute one cell of a registered experiment and print its rows as JSON.

    python -m experiments.reproduce.cell EXPERIMENT --params '{"key": value, ...}' [--out DIR]

The parameters are those of one row of the experiment's ``table.csv`` (the report prints the command for its
first cell). With ``--out`` the cell is also stored there as ``gpusched reproduce`` would (replacing a stored
result of the same cell).
"""
from __future__ import annotations

import argparse
import json
import sys

from experiments.reproduce.executor import run_cell
from experiments.reproduce.registry import get
from experiments.reproduce.run import version
from experiments.reproduce.store import CellStore, json_scalar
from gpusched.errors import ConfigError, GpuschedError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", help="registered experiment name, e.g. mcsf-synthetic")
    ap.add_argument("--params", required=True, help="the cell's parameters as a JSON object")
    ap.add_argument("--out", default=None, help="also store the cell in this reproduce output folder")
    args = ap.parse_args(argv)
    try:
        exp = get(args.experiment)
        try:
            params = json.loads(args.params)
        except ValueError as e:
            raise ConfigError(f"--params {args.params!r} is not JSON: {e}") from None
        if not isinstance(params, dict):
            raise ConfigError(f"--params must be a JSON object of the cell's parameters, got {params!r}")
        outcome = run_cell(exp.compute, params)
    except GpuschedError as e:
        print(f"reproduce cell: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if outcome.log:
        print(outcome.log, end="" if outcome.log.endswith("\n") else "\n", file=sys.stderr)
    if outcome.error is not None:
        print(outcome.error, file=sys.stderr)
        return 1
    if args.out:
        from pathlib import Path

        CellStore(Path(args.out) / exp.name).save(params, outcome.rows, outcome.wall_s, "cell", outcome.worker,
                                                  version(), outcome.log)
    rows = [{k: json_scalar(v) for k, v in r.items()} for r in outcome.rows]
    print(json.dumps({"experiment": exp.name, "params": params, "rows": rows, "wall_s": outcome.wall_s,
                      "version": version()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
