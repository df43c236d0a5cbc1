"""The `gpusched` command, driven as a user would: argv lists through `gpusched.cli.main`.

Every subcommand runs end to end on bundled data; every bad input exits 2 with one line that names the
value (no traceback).
"""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from gpusched import registry
from gpusched.cli import main

FAST = ["--limit", "60", "-q"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv) -> str:
    """Run a bad command line; it must exit 2 with a one-line error and no traceback. Returns the line."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    return lines[0]


# ------------------------------------------------------------------------------------- discovery
def test_version_names_the_package(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("gpusched 0.")


@pytest.mark.parametrize("command", ["traces", "perf", "simulate", "validate-vllm", "bench", "policies"])
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "usage: gpusched" in out


def test_simulate_help_lists_defaults_and_every_choice(capsys):
    _, out, _ = run(capsys, "simulate", "--help")
    text = " ".join(out.split())  # argparse wraps lines
    for name in registry.names("scheduler") + registry.names("router"):
        assert name in text, name
    for shown in ("(default: vllm-v1)", "(default: round-robin)", "(default: llama3-8b)", "(default: h100)",
                  "(default: 0)", "(default: 0.9)", "(default: results/simulate)", "A100-80GB", "RTX-PRO-6000",
                  "rtxpro6000", "azure-conv-2023", "--step-model", "--overwrite", "--timeline", "--rate"):
        assert shown in text, shown
    assert "a bare 'a100' is the A100-80GB" in text


def test_policies_lists_every_registered_policy_with_its_source(capsys):
    code, out, _ = run(capsys, "policies")
    assert code == 0
    for entry in registry.entries():
        assert entry.name in out and entry.summary in out
    assert "Jaillet et al." in out  # MC-SF's plugin, found through the entry points
    assert "max_num_seqs=256" in out  # vllm-v1's knobs with their defaults


def test_traces_lists_the_bundled_traces(capsys):
    code, out, _ = run(capsys, "traces")
    assert code == 0 and "azure-conv-2023" in out and "19366" in out


# ------------------------------------------------------------------------------------------- perf
def test_perf_names_the_step_model_and_prints_its_error(capsys):
    code, out, _ = run(capsys, "perf")
    assert code == 0
    assert "step model: profile h100 (measured on H100-80GB" in out
    assert "e2e_step_llama3-8b.csv" in out and "MAPE" in out


def test_perf_roofline_names_the_gpu_and_a100_is_the_80gb_part(capsys):
    code, out, _ = run(capsys, "perf", "--step-model", "roofline", "--gpu", "a100")
    assert code == 0 and "roofline (analytic) model of A100-80GB" in out


@pytest.mark.parametrize("argv", [
    ["perf", "--profile", "rtx4090", "--model", "mistral-7b"],
    ["perf", "--profile", "rtx4090", "--model", "llama2-70b"],
    ["simulate", "--profile", "rtx4090", "--model", "llama2-7b", "--out", "{tmp}/o", *FAST],
])
def test_a_profile_refuses_to_price_another_model(capsys, tmp_path, argv):
    line = refused(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    model = argv[argv.index("--model") + 1]
    assert f"{model} differs" in line and "covers only models of its shape (llama3-8b, llama3.1-8b)" in line


@pytest.mark.parametrize("argv, named", [
    (["perf", "--decode", "1024x-3"], "'1024x-3'"),
    (["perf", "--decode", "1024x"], "'1024x'"),
    (["perf", "--prefill", "0"], "'0'"),
    (["perf", "--prefill", "abc"], "'abc'"),
    (["perf", "--prefill", "512,512", "--cached", "16"], "--cached has 1 entries"),
    (["perf", "--prefill", "", "--decode", ""], "both empty"),
    (["perf", "--tp", "0"], "'0'"),
    (["bench", "--repeats", "0"], "'0'"),
    (["bench", "--repeats", ""], "--repeats is empty"),
])
def test_bad_numbers_are_refused_by_name(capsys, argv, named):
    assert named in refused(capsys, *argv)


# ------------------------------------------------------------------------------------ names, typos
@pytest.mark.parametrize("flag, value, suggestion", [
    ("--scheduler", "vlm-v1", "vllm-v1"),
    ("--router", "rund-robin", "round-robin"),
    ("--model", "lama3-8b", "llama3-8b"),
    ("--gpu", "h10", "h100"),
    ("--profile", "rtx409", "rtx4090"),
    ("--trace", "azure-conv-2032", "azure-conv-2023"),
    ("--mode", "fsat", "fast"),
    ("--step-model", "rooflin", "roofline"),
])
def test_an_unknown_name_gets_the_choices_and_a_suggestion(capsys, flag, value, suggestion):
    line = refused(capsys, "simulate", flag, value)
    assert f"{value!r}" in line and f"did you mean {suggestion!r}" in line and "Choices:" in line


def test_a_negative_seed_is_refused(capsys):
    assert "'-1'" in refused(capsys, "simulate", "--seed", "-1", "--router", "random")


def test_the_old_empty_profile_points_to_step_model(capsys, tmp_path):
    assert "--step-model roofline" in refused(capsys, "simulate", "--profile", "", "--out", str(tmp_path / "o"))


# --------------------------------------------------------------------------------------- --out
def test_an_out_that_cannot_hold_a_run_is_refused_before_work(capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert f"'{a_file}' is a file" in refused(capsys, "simulate", *FAST, "--out", str(a_file))
    assert f"is under '{a_file}'" in refused(capsys, "simulate", *FAST, "--out", str(a_file / "sub"))
    assert "'/proc/gpusched' is inside /proc" in refused(capsys, "simulate", *FAST, "--out", "/proc/gpusched")
    assert "is inside /sys" in refused(capsys, "validate-vllm", "vllm-rtx4090", "--profile", "rtx4090",
                                       "--out", "/sys/x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_out_is_refused(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert "cannot be written" in refused(capsys, "simulate", *FAST, "--out", str(locked / "run"))
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------------- simulate
def test_simulate_writes_a_run_folder_and_never_overwrites_it(capsys, tmp_path):
    out = tmp_path / "sim"
    code, stdout, _ = run(capsys, "simulate", *FAST, "--instances", "2", "--seed", "7", "--out", str(out))
    assert code == 0
    assert "2 x llama3-8b TP1 on H100-80GB; step model: profile h100" in stdout
    requests = pd.read_csv(out / "requests.csv")
    assert len(requests) == 60 and (requests["status"] == "finished").all()
    assert (out / "latency_cdf.png").exists() and (out / "summary.csv").exists()
    assert not (out / "timeline.csv").exists()  # large: only with --timeline
    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 7 and record["arguments"]["instances"] == 2
    assert record["command"].startswith("gpusched simulate --limit 60")
    assert record["trace"]["requests"] == 60 and record["trace"]["fingerprint"].startswith("sha256:")
    assert {"gpusched", "numpy", "pandas", "simpy"} <= set(record["versions"]) and "git_commit" in record
    assert record["wall_time_s"] > 0 and record["gpu"] == "H100-80GB" and record["engine"] in ("compiled", "simpy")
    line = refused(capsys, "simulate", *FAST, "--out", str(out))
    assert "already holds an earlier run" in line and "--overwrite" in line
    assert run(capsys, "simulate", *FAST, "--out", str(out), "--overwrite")[0] == 0


def test_the_same_requests_give_the_same_fingerprint(capsys, tmp_path):
    prints = []
    for name in ("a", "b"):
        assert run(capsys, "simulate", *FAST, "--out", str(tmp_path / name))[0] == 0
        prints.append(json.loads((tmp_path / name / "run.json").read_text())["trace"]["fingerprint"])
    assert prints[0] == prints[1]
    assert run(capsys, "simulate", "--limit", "61", "-q", "--out", str(tmp_path / "c"))[0] == 0
    assert json.loads((tmp_path / "c" / "run.json").read_text())["trace"]["fingerprint"] != prints[0]


def test_timeline_is_written_on_request(capsys, tmp_path):
    assert run(capsys, "simulate", *FAST, "--timeline", "--out", str(tmp_path / "t"))[0] == 0
    assert (tmp_path / "t" / "timeline.csv").exists() and (tmp_path / "t" / "timeline.png").exists()


def test_a_registered_policy_runs_with_typed_knobs(capsys, tmp_path):
    out = tmp_path / "mcsf"
    code, stdout, _ = run(capsys, "simulate", *FAST, "--scheduler", "mc-sf", "--scheduler-knob",
                          "max_num_batched_tokens=4096", "--scheduler-knob", "prediction=oracle", "--out", str(out))
    assert code == 0 and "scheduler mc-sf (max_num_batched_tokens=4096, prediction=oracle)" in stdout
    knobs = json.loads((out / "run.json").read_text())["arguments"]["scheduler_knob"]
    assert knobs == [["max_num_batched_tokens", 4096], ["prediction", "oracle"]]  # typed: an int stays an int


def test_knob_errors_name_the_knob(capsys, tmp_path):
    assert "'max_num_seqs'" in refused(capsys, "simulate", "--scheduler-knob", "max_num_seqs")
    line = refused(capsys, "simulate", *FAST, "--scheduler-knob", "bogus=1", "--out", str(tmp_path / "k"))
    assert "['bogus']" in line and "gpusched policies" in line


def test_rate_gives_arrivals_to_length_only_traces_only(capsys, tmp_path):
    code, out, _ = run(capsys, "simulate", "--trace", "sharegpt-lengths", "--rate", "2", "--limit", "40", "-q",
                       "--out", str(tmp_path / "r"))
    assert code == 0 and "40 requests over" in out
    line = refused(capsys, "simulate", "--rate", "2", *FAST, "--out", str(tmp_path / "r2"))
    assert "--rate 2" in line and "--rate-scale" in line
    assert "'0'" in refused(capsys, "simulate", "--rate", "0")


def test_a_header_only_trace_is_refused(capsys, tmp_path):
    trace = tmp_path / "empty.csv"
    trace.write_text("request_id,arrival_time_s,prompt_tokens,output_tokens\n")
    line = refused(capsys, "simulate", "--trace", str(trace), "-q", "--out", str(tmp_path / "o"))
    assert "empty.csv" in line


def test_vllm_v0_explains_the_budget_it_needs(capsys, tmp_path):
    line = refused(capsys, "simulate", "--scheduler", "vllm-v0", "--limit", "2000", "-q", "--out", str(tmp_path / "a"))
    assert "7979" in line and "--max-num-batched-tokens" in line  # the longest prompt + output of those requests
    code, _, _ = run(capsys, "simulate", "--scheduler", "vllm-v0", "--limit", "2000", "-q",
                     "--max-num-batched-tokens", "7979", "--out", str(tmp_path / "b"))
    assert code == 0


def test_an_overloaded_run_is_flagged(capsys, tmp_path):
    # 500 ShareGPT requests at 50/s on one H100: requests arrive for 10 s and wait up to ~45 s
    code, _, err = run(capsys, "simulate", "--trace", "sharegpt-lengths", "--rate", "50", "--limit", "500", "-q",
                       "--out", str(tmp_path / "hot"))
    assert code == 0 and "warning: the run is overloaded" in err and "were waiting when the last one arrived" in err
    assert json.loads((tmp_path / "hot" / "run.json").read_text())["overload"]["overloaded"] is True
    code, _, err = run(capsys, "simulate", *FAST, "--out", str(tmp_path / "cold"))
    assert code == 0 and "overloaded" not in err


# ---------------------------------------------------------------------------- validate-vllm, bench
def test_validate_vllm_writes_the_comparison(capsys, tmp_path):
    code, out, _ = run(capsys, "validate-vllm", "vllm-rtx4090", "--profile", "rtx4090", "--out", str(tmp_path))
    assert code == 0 and "2,588 KV blocks, recorded by the engine" in out
    table = pd.read_csv(tmp_path / "validation.csv")
    assert list(table.columns) == ["metric", "stat", "measured", "simulated", "error_pct"]
    assert json.loads((tmp_path / "run.json").read_text())["num_gpu_blocks"] == 2588


def test_validate_vllm_estimates_blocks_it_was_not_told(capsys, tmp_path):
    code, out, _ = run(capsys, "validate-vllm", "vllm-rtxpro6000", "--profile", "rtxpro6000", "--out", str(tmp_path))
    assert code == 0
    assert "not recorded by the engine" in out and "estimated as vLLM sizes its cache" in out
    assert "RTX-PRO-6000" in out and "defaults were assumed" in out


def test_validate_vllm_bad_names(capsys, tmp_path):
    assert "did you mean 'rtx4090'" in refused(capsys, "validate-vllm", "vllm-rtx4090", "--profile", "rtx409")
    assert "'nowhere'" in refused(capsys, "validate-vllm", "nowhere", "--profile", "rtx4090")
    line = refused(capsys, "validate-vllm", str(tmp_path), "--profile", "rtx4090", "--out", str(tmp_path / "o"))
    assert "meta.json" in line


def test_bench_prints_the_speed_and_the_engine(capsys):
    code, out, _ = run(capsys, "bench", "--repeats", "1", "--baseline", "none")
    assert code == 0
    assert "19,366 requests, 412,517 steps" in out and "requests per wall-second" in out
    assert "(compiled engine)" in out
