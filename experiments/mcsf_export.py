"""The synthetic hindsight instances as model files for another MIP solver, and that solver's answers scored.

``experiments.mcsf_synthetic`` proves no paper-size instance optimal within a minute on HiGHS and CP-SAT (the
reference used Gurobi). This writes the same instances (same generator, seed and order) as the IP that
``hindsight_optimal`` solves, one model file each, with MC-SF's schedule as a MIP start
(``<name>.start.sol``), ``index.csv`` (MC-SF's total latency and the combinatorial lower bound per instance)
and ``settings.json``. Solve them elsewhere and put each solution next to its model as ``<name>.sol`` (one
``name value`` per line, as Gurobi, SCIP and HiGHS write it). ``--score`` reads every solution back, checks it
against the model, and writes ``scores.csv`` and ``scores.md`` with MC-SF's ratio to it.

Run: ``python -m experiments.mcsf_export [--scale paper] [--instances 20] [--seed 0] [--format mps.gz]
[--out results/mcsf_export]`` (about 1.5 minutes and 150 MB for the default 40 paper-size models), then for
example ``gurobi_cl TimeLimit=600 InputFile=all-at-0_0.start.sol ResultFile=all-at-0_0.sol all-at-0_0.mps.gz`` or
``scip -c "read all-at-0_0.mps.gz read all-at-0_0.start.sol optimize write solution all-at-0_0.sol quit"``
in that folder, and ``python -m experiments.mcsf_export --score results/mcsf_export``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from gpusched.errors import ConfigError
from formulations.mcsf import latency_lower_bound, mcsf
from formulations.mcsf.export import (FORMATS, read_solution_file, schedule_from_solution, write_hindsight_model,
                                      write_solution_file)

from ._ux import add_solver_log_flag, announce, finish, solver_output
from .mcsf_synthetic import SCALES, same_instance, synthetic_instances

SECONDS_PER_MODEL = {"paper": 2.2, "mid": 0.3, "quick": 0.05}  # measured: 40 paper-size models in ~1.5 min


def export(out_dir: str = "results/mcsf_export", scale: str = "paper", n_instances: int = 20, seed: int = 0,
           fmt: str = ".mps.gz") -> pd.DataFrame:
    """Write ``n_instances`` instances per arrival model as ``<model>_<k><fmt>``, each with MC-SF's schedule as
    a MIP start ``<model>_<k>.start.sol``, and ``index.csv`` and ``settings.json``; solutions left in
    ``out_dir`` by an earlier export are removed."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    from ._ux import progress

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, k, inst in progress(synthetic_instances(seed, n_instances, scale), total=2 * n_instances,
                                   desc="export"):
        name = f"{model}_{k}"
        sf = mcsf(inst)
        arrays = write_hindsight_model(inst, out / f"{name}{fmt}", upper_bound=sf.total_latency)
        write_solution_file(sf, out / f"{name}.start.sol")
        (out / f"{name}.sol").unlink(missing_ok=True)  # a solution of an earlier export's model is not this one's
        rows.append({"name": name, "model": model, "instance": k, "n": inst.n, "M": inst.memory,
                     "s": inst.prompt[0], "mcsf_tel": sf.total_latency, "lower_bound": latency_lower_bound(inst),
                     "columns": arrays.col_req.size, "rows": arrays.row_upper.size + arrays.count.size})
    df = pd.DataFrame(rows)
    df.to_csv(out / "index.csv", index=False)
    (out / "settings.json").write_text(json.dumps({"scale": scale, "seed": seed, "instances": n_instances,
                                                   "format": fmt}, indent=1))
    return df


def score(model_dir: str) -> pd.DataFrame:
    """Read every ``<name>.sol`` in ``model_dir`` (written by :func:`export`), check it and compare MC-SF to it;
    writes ``scores.csv`` and ``scores.md`` there. Instances without a solution file are listed as missing."""
    folder = Path(model_dir)
    try:
        settings = json.loads((folder / "settings.json").read_text())
        index = pd.read_csv(folder / "index.csv").set_index("name")
    except FileNotFoundError as e:
        raise ConfigError(f"{str(folder)!r} holds no export ({e.filename} is missing); run "
                          f"python -m experiments.mcsf_export --out {model_dir} first") from None
    rows = []
    for model, k, inst in synthetic_instances(settings["seed"], settings["instances"], settings["scale"]):
        name = f"{model}_{k}"
        sol = folder / f"{name}.sol"
        if not sol.exists():
            continue
        expected = index.loc[name]
        same_instance(expected, inst, "index.csv", "re-export")
        tel = schedule_from_solution(inst, read_solution_file(sol)).total_latency
        rows.append({"name": name, "model": model, "n": inst.n, "M": inst.memory, "mcsf_tel": expected.mcsf_tel,
                     "solver_tel": tel, "ratio": expected.mcsf_tel / tel})
    df = pd.DataFrame(rows, columns=["name", "model", "n", "M", "mcsf_tel", "solver_tel", "ratio"])
    df.to_csv(folder / "scores.csv", index=False)
    lines = [f"# MC-SF against solutions from another solver ({len(df)} of {len(index)} instances have a .sol)", "",
             "Each solution is checked against the model; the ratio is MC-SF's total latency over the solution's.",
             "", "| arrivals | solved | mean ratio | worst | MC-SF = solution |", "|---|---:|---:|---:|---:|"]
    for model, d in df.groupby("model", sort=False):
        lines.append(f"| {model} | {len(d)} | {d.ratio.mean():.3f} | {d.ratio.max():.3f} | "
                     f"{int((d.mcsf_tel == d.solver_tel).sum())}/{len(d)} |")
    (folder / "scores.md").write_text("\n".join(lines) + "\n")
    return df


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="paper")
    ap.add_argument("--instances", type=int, default=20, help="instances per arrival model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=[f[1:] for f in FORMATS], default="mps.gz")
    ap.add_argument("--out", default="results/mcsf_export")
    ap.add_argument("--score", metavar="DIR", help="score the .sol files in an export folder instead of exporting")
    add_solver_log_flag(ap)
    a = ap.parse_args(argv)
    solver_output(a.solver_log)
    if a.score:
        started = announce("mcsf_export --score", a.score, None)
        score(a.score)
        print((Path(a.score) / "scores.md").read_text())
        finish("mcsf_export --score", a.score, ["scores.csv", "scores.md"], started)
    else:
        started = announce("mcsf_export", a.out, 2 * a.instances * SECONDS_PER_MODEL.get(a.scale, 2.2),
                           f"{2 * a.instances} models x ~{SECONDS_PER_MODEL.get(a.scale, 2.2):g} s at scale {a.scale}")
        df = export(a.out, a.scale, a.instances, a.seed, "." + a.format)
        print(f"{len(df)} models, up to {df['columns'].max():,} columns and {df['rows'].max():,} rows")
        finish("mcsf_export", a.out, [f"{len(df)} x <name>.{a.format} and .start.sol", "index.csv", "settings.json"],
               started)


if __name__ == "__main__":
    main()
