"""The hindsight IP as a file for any MIP solver, and a solver's solution read back as a checked schedule.

The reference implementation solved the IP with Gurobi. Here, no paper-size instance is proven optimal
within a minute (README), and Gurobi's pip licence refuses models above 2,000 variables. These functions let
someone with a commercial licence solve exactly our model (warm-started with MC-SF's schedule if they like)
and score the answer with our checker.

The file is the model of :func:`.hindsight.build_hindsight_arrays`, as :func:`.hindsight.hindsight_optimal`
solves it (horizon tightened by an upper bound, identical requests aggregated, separation rows: all valid, so
its optimum is the spec's). Names:

* column ``x_<c>_<k>``: how many requests of class ``c`` start at round ``k`` (integer). Classes are
  :func:`.model.identical_classes`, numbered by first member. With ``aggregate_identical=False`` class ``c``
  is request ``c`` and the column is binary.
* rows ``mem_<t>`` (memory at round ``t``, eq. (3)), ``sep<f>_<t>`` (separation family ``f``), ``one_<c>``
  (eq. (2): class ``c`` starts ``|c|`` times).
* objective: ``sum k x`` plus the constant ``sum_i (o_i - a_i)``, so its value is the total latency. MPS
  stores the constant as the objective row's right-hand side; a reader that drops it reports the total
  start time instead. :func:`schedule_from_solution` recomputes the total latency from the starts.
"""
from __future__ import annotations

import gzip
import math
import re
import shutil
from pathlib import Path
from typing import Mapping

from gpusched.errors import ConfigError, SolverError
from gpusched.solve import new_highs

from .hindsight import (HindsightArrays, build_hindsight_arrays, highs_model, mcsf_warm_start, request_rows,
                         starts_from_counts)
from .model import Instance, InfeasibleScheduleError, Schedule, check_schedule

__all__ = ["write_hindsight_model", "write_solution_file", "read_solution_file", "schedule_from_solution"]

FORMATS = (".mps", ".lp", ".mps.gz", ".lp.gz")  # gzip: paper-size models are 10-80 MB as text
_COLUMN = re.compile(r"x_(\d+)_(\d+)")


def write_hindsight_model(instance: Instance, path: str | Path, upper_bound: int | str | None = "mcsf",
                          aggregate_identical: bool = True, separation: bool = True) -> HindsightArrays:
    """Write the hindsight IP of ``instance`` to ``path`` and return its arrays (column ``j`` is
    ``x_<col_req[j]>_<col_start[j]>``). The format follows the name: ``.mps``, ``.lp`` (CPLEX LP format), or
    either gzipped (``.mps.gz``, which Gurobi, SCIP and HiGHS read directly).

    Args:
        upper_bound: total latency of a known schedule, to tighten the horizon; ``"mcsf"`` (default:
            MC-SF's with exact predictions, :func:`.hindsight.mcsf_warm_start`) or ``None`` (the spec's
            horizon ``T = max a + sum o``: a larger model).
        aggregate_identical, separation: as in :func:`.hindsight.hindsight_optimal`.
    """
    import highspy

    path = Path(path)
    if not path.name.endswith(FORMATS):
        raise ConfigError(f"cannot tell the format of {str(path)!r}: name it with one of {FORMATS}")
    if isinstance(upper_bound, str):
        if upper_bound != "mcsf":
            raise ConfigError(f"upper_bound must be an integer, 'mcsf' or None, got {upper_bound!r}")
        upper_bound = mcsf_warm_start(instance).total_latency  # feasible even under under-predictions
    arrays = build_hindsight_arrays(instance, upper_bound, aggregate=aggregate_identical,
                                    separation_rows=separation)
    lp = highs_model(arrays)
    lp.col_names_ = [f"x_{c}_{k}" for c, k in zip(arrays.col_req.tolist(), arrays.col_start.tolist())]
    lp.row_names_ = list(arrays.row_names) + [f"one_{c}" for c in range(arrays.count.size)]
    h = new_highs()
    h.passModel(lp)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = path.with_suffix("") if path.suffix == ".gz" else path  # HiGHS writes text only
    if h.writeModel(str(plain)) != highspy.HighsStatus.kOk:
        raise SolverError(f"HiGHS could not write the model to {str(plain)!r}")
    if plain != path:
        # level 6: 5x faster than 9 on these files, and as small within a few per cent
        with open(plain, "rb") as src, gzip.open(path, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        plain.unlink()
    return arrays


def write_solution_file(schedule: Schedule, path: str | Path, aggregate_identical: bool = True) -> None:
    """Write ``schedule`` as the columns of :func:`write_hindsight_model`'s file, one ``name value`` line per
    nonzero column: a MIP start that Gurobi (``InputFile=``) and SCIP (``read``) take, or a reference
    solution. ``aggregate_identical`` must match the model file's."""
    instance = schedule.instance
    counts: dict[str, int] = {}
    for c, k in zip(request_rows(instance, aggregate_identical).tolist(), schedule.start):
        name = f"x_{c}_{k}"
        counts[name] = counts.get(name, 0) + 1
    lines = [f"# {schedule.algorithm} schedule, total latency {schedule.total_latency}"]
    lines += [f"{name} {v}" for name, v in counts.items()]
    Path(path).write_text("\n".join(lines) + "\n")


def read_solution_file(path: str | Path) -> dict[str, float]:
    """The ``name value`` pairs of a MIP solution file: Gurobi's ``.sol``, SCIP's ``write solution`` or
    HiGHS's, and any other that puts one variable per line. Lines that do not start with a column name
    (comments, ``objective value: ...``, headers, row values) are skipped, and only a column's first value is
    kept (HiGHS lists column duals after the primal values)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) < 2 or not _COLUMN.fullmatch(parts[0]) or parts[0] in values:
            continue
        try:
            values[parts[0]] = float(parts[1])
        except ValueError:
            raise ConfigError(f"{str(path)!r}: column {parts[0]} has the value {parts[1]!r}, not a number") from None
    return values


def schedule_from_solution(instance: Instance, values: Mapping[str, float],
                           aggregate_identical: bool = True) -> Schedule:
    """The schedule encoded by a solution of the file of :func:`write_hindsight_model` (``values``: column
    name to value; names that are not columns are ignored, missing columns are 0).

    ``aggregate_identical`` must be what the file was written with. Raises
    :class:`~.model.InfeasibleScheduleError` if the values are not integers, start a class a wrong number of
    times, or break the model (memory, arrivals): the solver's answer is checked, not trusted.
    """
    rows = request_rows(instance, aggregate_identical)
    n_classes = int(rows.max()) + 1 if rows.size else 0
    columns = []  # (class, round, count)
    for name, value in values.items():
        m = _COLUMN.fullmatch(name)
        if m is None:
            continue
        c, k = int(m.group(1)), int(m.group(2))
        if not math.isfinite(value) or abs(value - round(value)) > 1e-6 or round(value) < 0:
            raise InfeasibleScheduleError(f"column {name} = {value!r} is not a count (an integer >= 0)")
        if c >= n_classes:
            raise InfeasibleScheduleError(f"column {name} names class {c}, but the instance has {n_classes}; was "
                                          f"the file written with aggregate_identical={not aggregate_identical}?")
        columns.append((c, k, round(value)))
    col_row, col_start, counts = zip(*columns) if columns else ((), (), ())
    start = starts_from_counts(instance, rows, col_row, col_start, counts, error=InfeasibleScheduleError)
    check_schedule(instance, start)
    return Schedule(instance, start, "hindsight")

