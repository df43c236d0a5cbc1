"""The hindsight IP written to a file and a solver's solution read back (formulations.mcsf.export,
experiments.mcsf_export).

Optima come from the brute force of ``test_mcsf`` (no package code): a file read by a fresh HiGHS must have the
same optimum, and the solution file must decode to a schedule the brute force's own checker accepts.
"""
import highspy
import numpy as np
import pandas as pd
import pytest

from gpusched.errors import ConfigError
from experiments.mcsf_export import export, score
from formulations.mcsf import Instance, InfeasibleScheduleError, hindsight_optimal, mcsf
from formulations.mcsf.export import (read_solution_file, schedule_from_solution, write_hindsight_model,
                                      write_solution_file)

from test_mcsf import _feasible, _random_tiny, brute_force_optimum


def _solve_file(model_path, solution_path):
    """Read a model file into a fresh HiGHS, solve it, write its solution; the objective it reports."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.readModel(str(model_path))
    h.run()
    h.writeSolution(str(solution_path), 0)
    return h.getInfo().objective_function_value


@pytest.fixture(scope="module")
def tiny_cases():
    """Ten tiny instances and their brute-force optima; every other one with a duplicated request, where the
    aggregated file differs from the binary one."""
    rng = np.random.default_rng(5)
    cases = []
    for case in range(10):
        reqs, M = _random_tiny(rng)
        if case % 2:
            reqs = reqs + reqs[:1]
        cases.append((reqs, M, brute_force_optimum(reqs, M)[0]))
    return cases


@pytest.mark.parametrize("suffix", [".mps", ".lp", ".mps.gz"])
@pytest.mark.parametrize("aggregate", [True, False])
def test_file_round_trip_reaches_the_brute_force_optimum(tmp_path, tiny_cases, suffix, aggregate):
    for reqs, M, opt in tiny_cases:
        inst = Instance.from_requests(reqs, M)
        write_hindsight_model(inst, tmp_path / f"m{suffix}", aggregate_identical=aggregate)
        objective = _solve_file(tmp_path / f"m{suffix}", tmp_path / "m.sol")
        assert objective == pytest.approx(opt), (reqs, M)  # the constant sum(o - a) survives the file
        sched = schedule_from_solution(inst, read_solution_file(tmp_path / "m.sol"), aggregate_identical=aggregate)
        assert sched.total_latency == opt
        assert _feasible(reqs, M, sched.start)


def test_solution_files_of_other_solvers_are_parsed(tmp_path):
    # Case F of the spec: M = 10, (a, s, o) = (0,1,4), (0,1,8), (0,1,5); optimum 21 with starts 0, 4, 0 (hand-checked)
    inst = Instance.from_requests([(0, 1, 4), (0, 1, 8), (0, 1, 5)], 10)
    gurobi = "# Solution for model mcsf\n# Objective value = 21\nx_0_0 1\nx_1_4 1\nx_1_5 0\nx_2_0 1\n"
    scip = "objective value:                 21\nx_0_0    1 \t(obj:0)\nx_1_4    1 \t(obj:4)\nx_2_0   1 \t(obj:0)\n"
    for text in (gurobi, scip):
        (tmp_path / "s.sol").write_text(text)
        sched = schedule_from_solution(inst, read_solution_file(tmp_path / "s.sol"))
        assert sched.start == (0, 4, 0) and sched.total_latency == 21
    (tmp_path / "bad.sol").write_text("x_0_0 one\n")
    with pytest.raises(ConfigError, match="x_0_0"):
        read_solution_file(tmp_path / "bad.sol")


def test_start_file_round_trips(tmp_path, tiny_cases):
    # MC-SF's schedule written as a MIP start decodes to the same starts, aggregated or not
    for reqs, M, _ in tiny_cases:
        inst = Instance.from_requests(reqs, M)
        sf = mcsf(inst)
        for aggregate in (True, False):
            write_solution_file(sf, tmp_path / "start.sol", aggregate_identical=aggregate)
            back = schedule_from_solution(inst, read_solution_file(tmp_path / "start.sol"), aggregate)
            assert sorted(zip(reqs, back.start)) == sorted(zip(reqs, sf.start))  # identical requests may swap
            assert back.total_latency == sf.total_latency


def test_bad_solutions_are_refused():
    inst = Instance.from_requests([(0, 1, 4), (0, 1, 8), (0, 1, 5)], 10)
    with pytest.raises(InfeasibleScheduleError, match="class 1"):  # request 1 never started
        schedule_from_solution(inst, {"x_0_0": 1, "x_2_0": 1})
    with pytest.raises(InfeasibleScheduleError, match="not a count"):
        schedule_from_solution(inst, {"x_0_0": 1, "x_1_4": 0.5, "x_1_5": 0.5, "x_2_0": 1})
    with pytest.raises(InfeasibleScheduleError, match="not a count"):  # -1 must not cancel a start
        schedule_from_solution(inst, {"x_0_0": 1, "x_0_3": -1, "x_0_4": 1, "x_1_4": 1, "x_2_0": 1})
    with pytest.raises(InfeasibleScheduleError, match="class 3"):
        schedule_from_solution(inst, {"x_0_0": 1, "x_1_4": 1, "x_2_0": 1, "x_3_0": 1})
    with pytest.raises(InfeasibleScheduleError):  # all three at 0: 2 + 2 + 2 at round 1 ... 5 + 5 + 5 at round 4
        schedule_from_solution(inst, {"x_0_0": 1, "x_1_0": 1, "x_2_0": 1})
    with pytest.raises(ConfigError, match="format"):
        write_hindsight_model(inst, "model.txt")


def test_export_and_score(tmp_path):
    df = export(str(tmp_path), scale="quick", n_instances=2, seed=3)
    assert len(df) == 4 and (tmp_path / "index.csv").exists()
    optimum = {}
    for row in df.itertuples():
        _solve_file(tmp_path / f"{row.name}.mps.gz", tmp_path / f"{row.name}.sol")  # the default format
    from experiments.mcsf_synthetic import synthetic_instances
    for model, k, inst in synthetic_instances(3, 2, "quick"):  # a second path to the optimum: our own solve
        optimum[f"{model}_{k}"] = hindsight_optimal(inst, time_limit_s=10).objective
    (tmp_path / "poisson_1.sol").unlink()  # a missing solution is skipped, not an error
    scores = score(str(tmp_path))
    assert len(scores) == 3
    for row in scores.itertuples():
        assert row.solver_tel == optimum[row.name]
    assert "3 of 4 instances" in (tmp_path / "scores.md").read_text()
    assert pd.read_csv(tmp_path / "scores.csv").shape[0] == 3
    export(str(tmp_path), scale="quick", n_instances=2, seed=4)  # new models: the old solutions must go
    assert score(str(tmp_path)).empty
    with pytest.raises(ConfigError, match="no export"):
        score(str(tmp_path / "elsewhere"))
