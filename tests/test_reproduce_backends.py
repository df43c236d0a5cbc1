"""The same cells give the same table in-process, on a process pool and on Ray (timings apart)."""
import dataclasses
import importlib.util

import pytest

from experiments.reproduce import get, reproduce
from experiments.reproduce.example import EXPERIMENT as MM1

HAVE_RAY = importlib.util.find_spec("ray") is not None


def _experiments():
    """A small slice of a real experiment (MC-SF vs the hindsight optimum: quick instances, each proven optimal
    well within its time limit, so the result does not depend on the CPU it gets) and the M/M/1 example."""
    synthetic = get("mcsf-synthetic")
    cells = synthetic.plan(True)
    picked = cells[:2] + cells[-2:]  # two instances of each arrival model
    return [dataclasses.replace(synthetic, cells=lambda quick: picked, plots=None, findings=None),
            dataclasses.replace(MM1, cells=lambda quick: [{"rho": r, "seed": s, "customers": 5000}
                                                          for r in (0.5, 0.8) for s in range(3)])]


def _tables(out):
    return {name: (out / name / "table.csv").read_bytes() for name in ("mcsf-synthetic", "example-mm1")}


@pytest.fixture(scope="module")
def inprocess(tmp_path_factory):
    out = tmp_path_factory.mktemp("inprocess")
    summary = reproduce(out, quick=True, experiments=_experiments(), progress=False)
    assert summary.failed == [] and summary.computed == 10
    return _tables(out)


def test_pool_gives_the_inprocess_tables(tmp_path, inprocess):
    summary = reproduce(tmp_path, quick=True, experiments=_experiments(), backend="pool", workers=2, progress=False)
    assert summary.failed == []
    assert _tables(tmp_path) == inprocess  # byte for byte
    assert b"ip_status" in inprocess["mcsf-synthetic"] and b"ip_solve_time_s" not in inprocess["mcsf-synthetic"]


@pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'gpusched[ray]')")
def test_ray_gives_the_inprocess_tables(tmp_path, inprocess):
    summary = reproduce(tmp_path, quick=True, experiments=_experiments(), backend="ray", workers=2, progress=False)
    assert summary.failed == []
    assert _tables(tmp_path) == inprocess
    timings = (tmp_path / "example-mm1" / "timings.csv").read_text()
    assert ",ray," in timings
