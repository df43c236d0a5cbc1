"""MC-SF as an online policy in the SimPy engine (formulations.mcsf.policy.McsfScheduler)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from formulations.mcsf import Instance, KvShortageError, McsfScheduler, mcsf
from gpusched.errors import ConfigError
from gpusched.workload import Trace
from simulators.serving import InstanceConfig, simulate


class ConstantStep:
    """Every step lasts ``step_s`` whatever it holds (copied from tests/test_simulator.py)."""

    def __init__(self, step_s: float = 1.0):
        self.step_s = step_s

    def step_time_s(self, prefill_lens=(), decode_contexts=(), prefill_cached=None, num_sampled=None):
        return self.step_s


def make_trace(rows) -> Trace:
    """rows: (arrival_s, prompt_tokens, output_tokens)."""
    df = pd.DataFrame(rows, columns=["arrival_time_s", "prompt_tokens", "output_tokens"])
    df.insert(0, "request_id", range(len(df)))
    return Trace(df, name="test")


class PeakRecorder(McsfScheduler):
    """Records the KV blocks in use right after each plan is made (the step's peak: finished sequences are
    freed only after the step)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.peaks: list[int] = []

    def schedule(self, waiting, running, kv, now_s):
        plan = super().schedule(waiting, running, kv, now_s)
        self.peaks.append(kv.num_used_blocks)
        return plan


def run(rows, blocks, block_size=16, step_s=1.0, **knobs):
    sched = PeakRecorder(**knobs)
    res = simulate(make_trace(rows), [InstanceConfig(ConstantStep(step_s), blocks, block_size, scheduler=sched)],
                   mode="step")
    return res, sched


def test_shortest_predicted_first_by_hand():
    # Spec case F, M = 10 tokens (10 blocks of 1 token): (a, s, o) = (0,1,4), (0,1,8), (0,1,5). Sorted by o: 4, 5, 8.
    # {o4, o5} passes (projected load at t'=4 is 5+5 = 10 <= 10); adding o8 gives 15 at t'=4, so the scan stops.
    # At t=4 (o4 done) o8 passes: at t'=5 o5 holds 1+5 = 6 and o8 holds 1+1 = 2 -> 8; at t'=12 o8 holds 9.
    # Every step lasts 1 s, so start rounds are scheduled times: 0, 4, 0; finishes p + o: 4, 12, 5.
    res, sched = run([(0, 1, 4), (0, 1, 8), (0, 1, 5)], blocks=10, block_size=1)
    r = res.requests
    assert r["scheduled_time_s"].tolist() == [0.0, 4.0, 0.0]
    assert r["finish_time_s"].tolist() == [4.0, 12.0, 5.0]
    assert (r["status"] == "finished").all()
    assert max(sched.peaks) <= 10


def test_ties_broken_by_arrival_index_and_fcfs_variant():
    # M = 8 tokens; four requests s=1, o=3 need 4 tokens each at peak: two fit at a time.
    rows = [(0, 1, 3), (0, 1, 3), (0, 1, 3), (0, 1, 3)]
    res, _ = run(rows, blocks=8, block_size=1)
    assert res.requests["scheduled_time_s"].tolist() == [0.0, 0.0, 3.0, 3.0]
    # FCFS (MC-Benchmark) vs SF on case F: FCFS starts o8 first and o5 waits until t=8 (spec TEL 25 vs 21).
    fcfs, _ = run([(0, 1, 4), (0, 1, 8), (0, 1, 5)], blocks=10, block_size=1, fcfs=True)
    assert fcfs.requests["scheduled_time_s"].tolist() == [0.0, 0.0, 8.0]


def _random_instance(rng):
    M = int(rng.integers(30, 51))
    s = int(rng.integers(1, 6))
    n = int(rng.integers(8, 16))
    o = rng.integers(1, M - s + 1, size=n)
    a = np.sort(rng.integers(0, 30, size=n))
    return Instance(tuple(int(x) for x in a), (s,) * n, tuple(int(x) for x in o), M)


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_offline_mcsf_start_rounds(seed):
    # Why they agree: with 1-token blocks the policy pads nothing, so its check is exactly the offline one
    # (theory tokens s + k after k rounds, M = num_blocks); every step lasts 1 s, so step k runs over [k, k+1)
    # and the step index is the round; a whole prompt is prefilled in the admission step, so a request started in
    # round p emits its o-th token at the end of step p + o - 1, i.e. leaves before round p + o, as in the model
    # (completion c = p + o); arrivals at integer seconds join the step starting then. Same order (õ, id), same
    # `break` -> same start rounds.
    inst = _random_instance(np.random.default_rng(seed))
    offline = mcsf(inst)
    rows = list(zip(inst.arrival, inst.prompt, inst.output))
    res, sched = run(rows, blocks=inst.memory, block_size=1)
    assert res.requests["scheduled_time_s"].astype(int).tolist() == list(offline.start)
    assert (res.requests["finish_time_s"] == np.array(offline.start) + np.array(inst.output)).all()
    assert max(sched.peaks) <= inst.memory
    assert (res.requests["num_preemptions"] == 0).all()


def test_memory_safe_non_preemptive_with_16_token_blocks():
    rng = np.random.default_rng(3)
    n = 60
    rows = [(float(t), int(s), int(o)) for t, s, o in zip(np.sort(rng.uniform(0, 5, n)), rng.integers(1, 200, n),
                                                          rng.integers(1, 300, n))]
    blocks = 60  # 960 tokens: heavily memory-bound
    res, sched = run(rows, blocks=blocks, step_s=0.01)
    r = res.requests
    assert (r["status"] == "finished").all()
    assert (r["num_preemptions"] == 0).all()
    assert max(sched.peaks) <= blocks
    assert sched.peaks and max(sched.peaks) > blocks // 2  # memory actually binds


def test_under_predictions_preempt_or_raise():
    # predictions of 1 token admit everything; two s=16, o=40 requests cannot both grow in 4 blocks
    rows = [(0, 16, 40), (0, 16, 40)]
    res, _ = run(rows, blocks=4, prediction=lambda seq: 1)
    assert (res.requests["status"] == "finished").all()
    assert res.requests["num_preemptions"].sum() > 0
    with pytest.raises(KvShortageError, match="below the truth"):
        run(rows, blocks=4, prediction=lambda seq: 1, on_kv_shortage="raise")


def test_bad_knobs():
    with pytest.raises(ConfigError):
        McsfScheduler(prediction="psychic")
    with pytest.raises(ConfigError):
        McsfScheduler(max_num_batched_tokens=0)
    with pytest.raises(ConfigError):
        McsfScheduler(on_kv_shortage="ignore")


def test_experiment_quick(tmp_path):
    from experiments.mcsf_simulator import run as run_experiment

    df = run_experiment(out_dir=tmp_path, quick=True)
    assert set(df["scheduler"]) == {"mc-sf", "mc-benchmark", "vllm-v1", "vllm-v1-8k"}
    assert set(df["regime"]) == {"h100-kv", "paper-M"}
    assert (df["finished"] == df["requests"]).all()
    assert (tmp_path / "mcsf_simulator.csv").exists() and (tmp_path / "mcsf_simulator.png").exists()
    assert (tmp_path / "mcsf_simulator.md").exists()
