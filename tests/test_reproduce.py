"""gpusched reproduce: the experiment registry, the cell store, resume, a killed run, the report, the CLI."""
import base64
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from experiments.reproduce import Experiment, experiments, get, register, reproduce
from experiments.reproduce.example import EXPERIMENT as MM1, mm1_cell
from experiments.reproduce.store import CellStore, cell_key, json_scalar, tables
from gpusched.cli import main as cli_main
from gpusched.errors import ConfigError, UnknownNameError

REPO = Path(__file__).resolve().parents[1]
SMALL_MM1 = dataclasses.replace(MM1, cells=lambda quick: [{"rho": r, "seed": s, "customers": 2000}
                                                          for r in (0.5, 0.8) for s in range(2)])


def square(i: int) -> dict:
    return {"value": i * i, "wall_s": 0.25}


def fails_on_two(i: int) -> dict:
    if i == 2:
        raise RuntimeError("cell two breaks")
    return {"value": i * i}


def _toy(name="toy", compute=square, n=4, **kw):
    return Experiment(name=name, paper="toy", title="toy", cells=lambda quick: [{"i": i} for i in range(n)],
                      compute=compute, measurements=("wall_s",), **kw)


# ---- registry -----------------------------------------------------------------------------------

def test_registered_papers_are_found_and_selected():
    names = {e.name for e in experiments()}
    assert {"mcsf-synthetic", "mcsf-real", "helix-placement", "helix-throughput", "head-to-head"} <= names
    assert {e.name for e in experiments(["mcsf"])} == {"mcsf-synthetic", "mcsf-real"}  # by paper
    assert [e.name for e in experiments(["helix-throughput"])] == ["helix-throughput"]  # by experiment
    with pytest.raises(UnknownNameError, match="registered papers: .*mcsf"):
        experiments(["no-such-paper"])
    with pytest.raises(UnknownNameError):
        get("no-such-experiment")


def test_registration_rules():
    toy = _toy("toy-registration")
    assert register(toy) is toy and register(toy) is toy  # the same object again is a no-op
    with pytest.raises(ConfigError, match="already registered"):
        register(_toy("toy-registration", compute=fails_on_two))
    with pytest.raises(ConfigError, match="module-level"):
        _toy("toy-lambda", compute=lambda i: {"value": i})  # cannot reach worker processes
    with pytest.raises(ConfigError, match="lower case"):
        _toy("Toy Name")
    twice = dataclasses.replace(_toy("toy-twice"), cells=lambda quick: [{"i": 1}, {"i": 1}])
    with pytest.raises(ConfigError, match="appears twice"):
        twice.plan(True)
    listed = dataclasses.replace(_toy("toy-list"), cells=lambda quick: [{"i": [1, 2]}])
    with pytest.raises(ConfigError, match="JSON scalar"):
        listed.plan(True)


def test_every_registered_experiment_plans_quick_cells():
    for exp in experiments():
        cells = exp.plan(True)
        assert cells, exp.name
        assert len(cells) <= len(exp.plan(False)), exp.name  # quick is a slice, never more


# ---- store ----------------------------------------------------------------------------------------

def test_cell_store_atomic_files_and_tables(tmp_path):
    assert cell_key({"a": 1, "b": "x"}) == cell_key({"b": "x", "a": 1})  # order-free
    assert cell_key({"a": 1}) != cell_key({"a": 2})
    store = CellStore(tmp_path / "exp")
    (store.cells_dir / ".deadbeef.json.tmp-99").write_text('{"par')  # a write killed half-way
    store = CellStore(tmp_path / "exp")
    assert not list(store.cells_dir.glob(".*tmp*"))  # removed on open
    store.save({"i": 1}, [{"value": 1, "wall_s": 0.5}], 0.5, "inprocess", "w", "v")
    assert store.has({"i": 1}) and not store.has({"i": 2})
    assert store.load({"i": 1})["rows"] == [{"value": 1, "wall_s": 0.5}]
    full = store.write_tables([{"i": 1}, {"i": 2}], measurements=("wall_s",))
    assert full.to_dict("records") == [{"i": 1, "value": 1, "wall_s": 0.5}]  # for plots and findings
    table = pd.read_csv(store.folder / "table.csv")
    assert table.to_dict("records") == [{"i": 1, "value": 1}]  # keyed by the parameters, no timing
    timings = pd.read_csv(store.folder / "timings.csv")
    assert timings.loc[0, "wall_s"] == 0.5 and timings.loc[0, "backend"] == "inprocess"
    store.path({"i": 3}).write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        store.load({"i": 3})
    store.path({"i": 4}).write_text(json.dumps({"params": {"i": 5}, "rows": []}))
    with pytest.raises(ConfigError, match="not \\{'i': 4\\}"):
        store.load({"i": 4})


def test_tables_refuse_contradicting_rows_and_non_scalars():
    with pytest.raises(ConfigError, match="contradicts"):
        tables([{"params": {"i": 1}, "rows": [{"i": 2}], "wall_s": 0, "backend": "b", "worker": "w"}])
    same = tables([{"params": {"i": 1}, "rows": [{"i": 1, "v": 3}], "wall_s": 0, "backend": "b", "worker": "w"}])
    assert same[0].to_dict("records") == [{"i": 1, "v": 3}]
    with pytest.raises(ConfigError, match="JSON scalar"):
        json_scalar([1, 2])


# ---- runs: resume, failures, a killed run ----------------------------------------------------------

def test_resume_recomputes_nothing_and_failed_cells_are_retried(tmp_path):
    first = reproduce(tmp_path, experiments=[_toy("toy-fail", fails_on_two)], progress=False)
    assert (first.computed, first.reused) == (3, 0)
    assert [(name, params) for name, params, _ in first.failed] == [("toy-fail", {"i": 2})]
    assert "cell two breaks" in first.failed[0][2]
    assert "1 failed" in first.report_md.read_text()
    fixed = reproduce(tmp_path, experiments=[_toy("toy-fail", square)], progress=False)
    assert (fixed.computed, fixed.reused, fixed.failed) == (1, 3, [])  # only the failed cell
    again = reproduce(tmp_path, experiments=[_toy("toy-fail", square)], progress=False)
    assert (again.computed, again.reused) == (0, 4)
    table = pd.read_csv(tmp_path / "toy-fail" / "table.csv")
    assert table["i"].tolist() == [0, 1, 2, 3] and table["value"].tolist() == [0, 1, 4, 9]


KILLED = """
import pathlib, time
from experiments.reproduce import Experiment

MARKS = pathlib.Path({marks!r})

def compute(i):
    (MARKS / f"started-{{i}}").touch()
    if i == 3 and not (MARKS / "release").exists():
        time.sleep(600)  # killed here
    return {{"value": i * i}}

EXPERIMENT = Experiment(name="killed", paper="test", title="killed", compute=compute,
                        cells=lambda quick: [{{"i": i}} for i in range(6)])
"""


def test_a_run_killed_mid_cell_keeps_finished_cells_and_recomputes_the_rest(tmp_path):
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    (tmp_path / "killed_exp.py").write_text(KILLED.format(marks=str(marks)))
    script = ("import sys; sys.path.insert(0, %r); import killed_exp; from experiments.reproduce import reproduce; "
              "reproduce(%r, experiments=[killed_exp.EXPERIMENT], progress=False)" % (str(tmp_path), str(out)))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (marks / "started-3").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "the run never reached cell 3"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # as an OOM killer or a lost node would
    proc.wait()
    store = CellStore(out / "killed")
    assert [store.has({"i": i}) for i in range(6)] == [True] * 3 + [False] * 3
    assert pd.read_csv(out / "killed" / "table.csv")["value"].tolist() == [0, 1, 4]  # rewritten as cells finished
    for m in marks.glob("started-*"):
        m.unlink()
    (marks / "release").touch()
    sys.path.insert(0, str(tmp_path))
    try:
        import killed_exp
        summary = reproduce(out, experiments=[killed_exp.EXPERIMENT], progress=False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("killed_exp", None)
    assert (summary.computed, summary.reused) == (3, 3)
    assert sorted(m.name for m in marks.glob("started-*")) == ["started-3", "started-4", "started-5"]
    assert pd.read_csv(out / "killed" / "table.csv")["value"].tolist() == [0, 1, 4, 9, 16, 25]


# ---- report ---------------------------------------------------------------------------------------

def test_report_of_a_small_experiment(tmp_path):
    summary = reproduce(tmp_path, quick=True, experiments=[SMALL_MM1], progress=False)
    md = summary.report_md.read_text()
    assert "NOT the headline numbers" in md
    table = pd.read_csv(tmp_path / "example-mm1" / "table.csv")
    # the report's number is the mean of the table's cells at that load, and its verdict follows from it
    mean05 = table.loc[table["rho"] == 0.5, "mean_sojourn_s"].mean()
    row = next(line for line in md.splitlines() if line.startswith("| mean time in system, rho = 0.5 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:5] == ["2", f"{mean05:.6g}", "±5 %", "within" if abs(mean05 - 2) <= 0.1 else "outside"]
    assert "direction only: agrees" in md  # 0.8 is slower than 0.5 on any seed
    assert "python -m experiments.reproduce.cell example-mm1 --params" in md
    assert re.search(r"Version: gpusched \d", md) and "wall time" in md
    html = summary.report_html.read_text()
    assert "<script" not in html
    png = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'class="within"' in html or 'class="outside"' in html


def test_the_report_names_the_versions_that_computed_its_cells(tmp_path):
    reproduce(tmp_path, experiments=[_toy()], progress=False)
    store = CellStore(tmp_path / "toy")
    path = store.path({"i": 1})
    record = json.loads(path.read_text())
    now = record["version"]
    record["version"] = "gpusched 0.0.1, git deadbee"  # as if an older commit had computed this cell
    path.write_text(json.dumps(record))
    md = reproduce(tmp_path, experiments=[_toy()], progress=False).report_md.read_text()
    assert f"Cells computed by: {now} (3 cells); gpusched 0.0.1, git deadbee (1 cell)." in md


def _must_not_run(i):
    raise AssertionError("report_only computed a cell")


def test_report_only_computes_nothing_and_says_what_is_missing(tmp_path):
    reproduce(tmp_path, experiments=[_toy()], progress=False)
    CellStore(tmp_path / "toy").path({"i": 2}).unlink()  # as if the run had stopped before this cell
    summary = reproduce(tmp_path, experiments=[_toy(compute=_must_not_run)], progress=False, report_only=True,
                        command="gpusched reproduce --report-only")
    assert (summary.computed, summary.reused, summary.failed) == (0, 3, [])
    assert not CellStore(tmp_path / "toy").has({"i": 2})
    md = summary.report_md.read_text()
    assert "Cells: 3 of 4 finished" in md and "Built from the cells already finished; nothing computed" in md
    assert "**Partial: 3 of 4 cells finished.**" in md and "Partial: 3 of 4" in summary.report_html.read_text()
    assert len(pd.read_csv(tmp_path / "toy" / "table.csv")) == 3


def test_the_reported_cell_command_recomputes_the_cell(tmp_path):
    exp = get("mcsf-synthetic")
    one = dataclasses.replace(exp, cells=lambda quick: exp.plan(True)[:1], plots=None, findings=None)
    summary = reproduce(tmp_path, quick=True, experiments=[one], progress=False)
    command = re.search(r"`(python -m experiments\.reproduce\.cell [^`]+)`", summary.report_md.read_text()).group(1)
    out = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rows"]
    table = pd.read_csv(tmp_path / "mcsf-synthetic" / "table.csv")
    assert rows[0]["mcsf_tel"] == table.loc[0, "mcsf_tel"] and rows[0]["ip_tel"] == table.loc[0, "ip_tel"]


def test_cli_reproduce_arguments(tmp_path, capsys):
    assert cli_main(["reproduce", "--out", str(tmp_path), "--only", "no-such-paper"]) == 2
    assert "no such paper" in capsys.readouterr().err
    assert cli_main(["reproduce", "--out", str(tmp_path), "--workers", "2", "--quiet", "--only", "mcsf-real"]) == 2
    assert cli_main(["reproduce", "--backend", "threads", "--out", str(tmp_path)]) == 2  # one line, no traceback
    assert "'threads'" in capsys.readouterr().err


def test_the_report_quotes_out_as_typed(tmp_path, monkeypatch):
    # a committed report's commands must work from a clone elsewhere: a relative --out stays relative
    monkeypatch.chdir(tmp_path)
    assert cli_main(["reproduce", "--quick", "--quiet", "--only", "nested-wait-toy", "--out", "runs/r"]) == 0
    md = (tmp_path / "runs" / "r" / "report.md").read_text()
    assert "Command: `gpusched reproduce --quick --only nested-wait-toy --out runs/r`" in md
    assert "--out runs/r` (finished cells are kept" in md and str(tmp_path) not in md
    assert cli_main(["reproduce", "--quiet", "--only", "nested-wait-toy", "--out", "runs/r", "--report-only"]) == 0
    md = (tmp_path / "runs" / "r" / "report.md").read_text()  # the full plan: the quick cells it shares, no more
    assert "Command: `gpusched reproduce --only nested-wait-toy --out runs/r --report-only`" in md
    assert "of 24 finished; none computed in this run" in md


def test_backend_arguments_are_checked():
    from experiments.reproduce.executor import make_executor

    with pytest.raises(ConfigError, match="one cell at a time"):
        make_executor("inprocess", workers=2)
    with pytest.raises(ConfigError, match="for --backend ray"):
        make_executor("pool", address="auto")
    with pytest.raises(ConfigError, match="positive"):
        make_executor("pool", workers=0)
    with pytest.raises(ConfigError, match="unknown backend"):
        make_executor("threads")


def test_mm1_cell_is_seeded():
    assert mm1_cell(0.5, 0, 1000) == mm1_cell(0.5, 0, 1000)
    assert mm1_cell(0.5, 0, 1000) != mm1_cell(0.5, 1, 1000)
    # one customer never waits: the time in system is its service time
    assert mm1_cell(0.5, 0, 1)["mean_wait_s"] == 0.0

