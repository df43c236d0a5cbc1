"""``reproduce``: run the cells of every registered experiment that are not finished, then write the report.

Cells of all selected experiments go to one executor together (so a pool or a Ray cluster stays busy across
experiments), behind one progress bar; each finished cell is stored at once (:mod:`.store`) and its
experiment's table rewritten, so an interrupted run loses only the cells in flight and the next run with the
same ``--out`` computes only what is missing.
"""
from __future__ import annotations

import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from experiments.reproduce import report as report_mod
from experiments.reproduce.executor import Task, make_executor
from experiments.reproduce.registry import Experiment, experiments as registered
from experiments.reproduce.store import CellStore
from experiments.reproduce.verdict import evaluate
from gpusched.errors import ConfigError


@dataclass
class RunSummary:
    """What a :func:`reproduce` call did."""

    out_dir: Path
    report_md: Path
    report_html: Path
    computed: int
    reused: int
    failed: list[tuple[str, dict, str]] = field(default_factory=list)  # (experiment, params, error)
    wall_s: float = 0.0


@lru_cache(maxsize=1)
def version() -> str:
    """``gpusched <version>, git <commit>[+dirty]`` of the code that runs (git part omitted outside a clone)."""
    import gpusched

    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=normal"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        git = f", git {sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        git = ""
    return f"gpusched {gpusched.__version__}{git}"


def reproduce(out_dir: str | Path, quick: bool = False, only: list[str] | None = None, backend: str = "inprocess",
              workers: int | None = None, address: str | None = None, progress: bool = True,
              experiments: list[Experiment] | None = None, command: str | None = None,
              report_only: bool = False) -> RunSummary:
    """Run every registered experiment (or ``experiments``, or those of the papers/experiments in ``only``) into
    ``out_dir``, reusing finished cells; write ``report.md`` and ``report.html`` there.

    ``backend``/``workers``/``address``: see :mod:`experiments.reproduce.executor`. Cells that fail are listed
    in the summary and the report (and tried again by the next run); the other cells are kept.
    ``report_only``: compute nothing, report the cells already finished (a run still going on elsewhere, or
    one stopped part-way); each section says how many of its cells are missing.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exps = list(experiments) if experiments is not None else registered(only)
    by_name = {e.name: e for e in exps}
    plans = {e.name: e.plan(quick) for e in exps}
    stores = {e.name: CellStore(out / e.name) for e in exps}
    pending = [Task(e.name, e.compute, p) for e in exps for p in plans[e.name] if not stores[e.name].has(p)]
    unfinished = len(pending)
    if report_only:
        print(f"report only: {unfinished} unfinished cell(s) left out, nothing computed", flush=True)
        pending = []
        backend, workers, address = "inprocess", None, None  # no executor work: do not start a pool or Ray
    executor = make_executor(backend, workers, address)
    if not report_only:
        _print_estimate(exps, plans, pending, quick, executor.workers, out)
    ver = version()
    progress_log = _Progress(exps, len(pending) if progress else 0)
    finished = False
    try:
        for task, outcome in executor.run(pending):
            error = outcome.error
            if error is None:
                try:
                    stores[task.experiment].save(task.params, outcome.rows, outcome.wall_s, executor.name,
                                                 outcome.worker, ver, outcome.log)
                except ConfigError as e:  # rows that cannot be tabled: the cell failed
                    error = f"ConfigError: {e}"
            if error is None:
                stores[task.experiment].write_tables(plans[task.experiment], by_name[task.experiment].measurements)
            progress_log.cell_done(task, outcome.wall_s, error)
        finished = True
    finally:
        progress_log.close()
        executor.close(wait=finished)  # interrupted: do not wait for the cells in flight
    rep = report_mod.Report(out, quick, executor.name, executor.workers,
                            command or _command(out, quick, only, backend, workers, address, report_only), ver,
                            math.nan, report_only=report_only)
    for e in exps:
        rep.sections.append(_section(e, plans[e.name], stores[e.name], quick, progress_log.failed[e.name],
                                     progress_log.computed[e.name], progress_log.span_s(e.name), ver))
    rep.wall_s = time.perf_counter() - t0
    md, html_path = report_mod.write(rep)
    failed = [(name, p, err) for name, errs in progress_log.failed.items() for p, err in errs]
    total = sum(len(p) for p in plans.values())
    return RunSummary(out, md, html_path, sum(progress_log.computed.values()), total - unfinished, failed,
                      rep.wall_s)


class _Progress:
    """Counts finished and failed cells per experiment, their wall-time span, and draws the progress bar
    (``total`` cells; none when 0)."""

    def __init__(self, exps: list[Experiment], total: int):
        self.computed = {e.name: 0 for e in exps}
        self.failed: dict[str, list[tuple[dict, str]]] = {e.name: [] for e in exps}
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._bar = None
        if total:
            from tqdm import tqdm
            self._bar = tqdm(total=total, unit="cell", desc="reproduce", dynamic_ncols=True)

    def cell_done(self, task: Task, wall_s: float, error: str | None) -> None:
        if error is None:
            self.computed[task.experiment] += 1
        else:
            self.failed[task.experiment].append((task.params, error))
            message = f"cell failed: {task.experiment} {task.params}: {error.strip().splitlines()[-1]}"
            if self._bar is None:
                print(message, file=sys.stderr)
            else:
                self._bar.write(message, file=sys.stderr)
        now = time.perf_counter()  # the span runs from the first cell's start (exact in-process) to the last end
        self._first.setdefault(task.experiment, now - (wall_s if math.isfinite(wall_s) else 0.0))
        self._last[task.experiment] = now
        if self._bar is not None:
            self._bar.set_postfix_str(task.experiment, refresh=False)
            self._bar.update()

    def span_s(self, name: str) -> float:
        return self._last.get(name, math.nan) - self._first.get(name, math.nan)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _section(e: Experiment, plan: list[dict], store: CellStore, quick: bool, failed: list, computed_now: int,
             elapsed_s: float, ver: str) -> report_mod.Section:
    table = store.write_tables(plan, e.measurements)
    records = store.records(plan)
    compute_s = float(sum(rec["wall_s"] for rec in records))
    outcomes = evaluate(e.claims(quick), table)
    plots, findings = [], ""
    if len(table):
        for old in store.folder.glob("*.png"):
            old.unlink()
        # a broken plot or paragraph must not cost the report: say so in the section instead
        try:
            plots = list(e.plots(table, store.folder)) if e.plots is not None else []
        except Exception as err:  # noqa: BLE001
            findings += f"*Plots failed: {type(err).__name__}: {err}*\n\n"
        try:
            findings += e.findings(table, quick) if e.findings is not None else ""
        except Exception as err:  # noqa: BLE001
            findings += f"*Findings failed: {type(err).__name__}: {err}*"
    finished = sum(store.has(p) for p in plan)
    return report_mod.Section(e.name, e.paper, e.title, e.about, outcomes, findings, [Path(p) for p in plots],
                              len(plan), finished, failed, compute_s, computed_now, elapsed_s,
                              store.folder / "table.csv", plan[0] if plan else None,
                              cell_versions(records) if records else ver)


def cell_versions(records: list[dict]) -> str:
    """The versions that computed these cells, most cells first, with counts when there are several (a
    report built from cells of earlier runs names the code that made its numbers, not the code that tabled
    them)."""
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec["version"]] = counts.get(rec["version"], 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "; ".join(f"{v} ({n} cell{'s' if n != 1 else ''})" for v, n in ranked)


def _print_estimate(exps, plans, pending, quick: bool, workers: int, out: Path) -> None:
    cost = {e.name: e.seconds_per_cell[0 if quick else 1] for e in exps}
    todo: dict[str, int] = {}
    for t in pending:
        todo[t.experiment] = todo.get(t.experiment, 0) + 1
    seconds = sum(cost[name] * n for name, n in todo.items()) / max(workers, 1)
    parts = ", ".join(f"{e.name} {todo.get(e.name, 0)}/{len(plans[e.name])}" for e in exps)
    print(f"reproduce{' (quick)' if quick else ''} into {out}: {len(pending)} cell(s) to compute ({parts}); "
          f"estimated {seconds / 60:.1f} min on {workers} worker(s)", flush=True)


def _command(out: Path, quick: bool, only, backend: str, workers, address, report_only: bool = False) -> str:
    parts = ["gpusched", "reproduce"] + (["--quick"] if quick else []) + (["--only", *only] if only else [])
    parts += ["--out", str(out)] + (["--report-only"] if report_only else [])
    if backend != "inprocess":
        parts += ["--backend", backend]
    if workers is not None:
        parts += ["--workers", str(workers)]
    if address is not None:
        parts += ["--address", address]
    return " ".join(shlex.quote(p) for p in parts)


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.reproduce``: the same as ``gpusched reproduce``."""
    from gpusched.cli import main as cli_main

    return cli_main(["reproduce", *(sys.argv[1:] if argv is None else argv)])
