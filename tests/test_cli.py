"""The `gpusched` command: each subcommand runs end to end on bundled data; bad input exits 2."""
from __future__ import annotations

import pandas as pd

from gpusched.cli import main


def test_traces_lists_the_bundled_traces(capsys):
    assert main(["traces"]) == 0
    out = capsys.readouterr().out
    assert "azure-conv-2023" in out and "19366" in out


def test_perf_prints_the_error_against_measured_steps(capsys):
    assert main(["perf"]) == 0
    out = capsys.readouterr().out
    assert "e2e_step_llama3-8b.csv" in out and "MAPE" in out


def test_simulate_writes_results(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--limit", "60", "--instances", "2", "--out", str(out), "-q"]) == 0
    requests = pd.read_csv(out / "requests.csv")
    assert len(requests) == 60 and (requests["status"] == "finished").all()
    assert (out / "latency_cdf.png").exists() and (out / "timeline.png").exists()
    assert "ttft_s" in capsys.readouterr().out


def test_validate_vllm_writes_the_comparison(tmp_path):
    assert main(["validate-vllm", "vllm-rtx4090", "--profile", "rtx4090", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "validation.csv")
    assert list(table.columns) == ["metric", "stat", "measured", "simulated", "error_pct"]


def test_bad_input_exits_2_with_the_reason(tmp_path, capsys):
    assert main(["simulate", "--limit", "5", "--scheduler", "magic", "--out", str(tmp_path), "-q"]) == 2
    assert "unknown scheduler 'magic'" in capsys.readouterr().err
    assert main(["perf", "--profile", "no-such-profile"]) == 2


def test_bench_prints_the_speed_and_the_engine(capsys):
    assert main(["bench", "--repeats", "1", "--baseline", "none"]) == 0
    out = capsys.readouterr().out
    assert "19,366 requests, 412,517 steps" in out and "requests per wall-second" in out
    assert "(compiled engine)" in out
