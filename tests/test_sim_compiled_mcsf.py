"""MC-SF on the compiled engine (``kernel.SCHED_MCSF``) against the SimPy engine run step by step.

The reference is :class:`formulations.mcsf.McsfScheduler` itself, on the SimPy engine in ``mode="step"``:
the compiled transcription must give the same per-request table and per-step timeline, to the bit, in
every branch of the rule (admission by the sum shortcut and by bisection over prefixes, the token
budget and the oversized prompt, the cheap memory bound, FCFS order, capped predictions) and of the engine (routers, several instances, decode
bases computed in the kernel).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from formulations.mcsf import McsfScheduler
from gpusched.synthetic import agent_sessions
from gpusched.workload import Trace, load_trace
from simulators.compiled import driver
from simulators.compiled.driver import unsupported_reason
from simulators.serving import InstanceConfig, simulate
from test_sim_compiled import _assert_same_as_step_mode, _h100  # (_h100: a new model, its own price tables)


def _azure(n=400, rate=2.0):
    return load_trace("azure-conv-2023").head(n).scale_rate(rate)


@pytest.mark.parametrize("blocks, knobs, rate", [
    (3000, {}, 2.0),  # light: the sum shortcut admits whole prefixes
    (700, {}, 4.0),  # tight KV: the bisection over prefixes decides
    (700, {"max_num_batched_tokens": 512}, 4.0),  # the budget binds; prompts above it go alone
    (700, {"fcfs": True}, 4.0),  # MC-Benchmark: arrival order
])
def test_mcsf_on_the_compiled_engine_equals_step_mode(blocks, knobs, rate):
    res = _assert_same_as_step_mode(_azure(rate=rate), [InstanceConfig(_h100(), blocks, 16, "mc-sf", knobs)])
    assert res.num_unfinished == 0


@pytest.mark.parametrize("router", ["round-robin", "random", "least-outstanding-tokens", "kv-aware"])
def test_mcsf_on_several_instances_behind_each_router(router):
    model = _h100()
    instances = [InstanceConfig(model, blocks, 16, "mc-sf") for blocks in (600, 900, 600)]
    _assert_same_as_step_mode(_azure(300, 6.0), instances, router=router)


def _capped_trace() -> Trace:
    """Requests whose padded peak exceeds the KV (their predictions are capped: they project the whole memory
    at their capped end and run past it), among short ones."""
    rng = np.random.default_rng(3)
    n = 60
    prompt = rng.integers(20, 200, n)
    output = rng.integers(5, 120, n)
    prompt[::7], output[::7] = 900, 100  # 1000 tokens + 15 of padding > 1008 slots of 63 blocks
    df = pd.DataFrame({"request_id": range(n), "arrival_time_s": np.sort(rng.uniform(0, 2.0, n)),
                       "prompt_tokens": prompt, "output_tokens": output})
    return Trace(df, name="capped")


def test_capped_predictions_never_run_short_and_agree():
    """The compiled rule does not transcribe the Python one's preemption on a KV shortage: under the oracle
    it cannot happen (spec P1, and the kernel's comment); capped predictions are the closest it gets."""
    res = _assert_same_as_step_mode(_capped_trace(), [InstanceConfig(_h100(), 63, 16, "mc-sf")])
    assert res.requests["num_preemptions"].sum() == 0 and res.num_unfinished == 0


def test_decode_bases_computed_in_the_kernel_equal_the_models(monkeypatch):
    """Batches beyond the tabulated decode bases price through the kernel's own computation."""
    monkeypatch.setattr(driver, "EAGER_DECODE_BASES", 3)
    res = _assert_same_as_step_mode(_azure(300, 4.0), [InstanceConfig(_h100(), 3000, 16, "mc-sf")])
    assert res.timeline["batch_seqs"].max() > 3


def test_mcsf_settings_the_transcription_does_not_cover_run_on_the_simpy_engine():
    trace = _azure(50)
    model = _h100()
    covered = [InstanceConfig(model, 900, 16, McsfScheduler())]
    assert unsupported_reason(trace, covered, "round-robin", None) is None
    others = {
        "prediction callable": McsfScheduler(prediction=lambda seq: seq.output_tokens),
        "raise on a KV shortage": McsfScheduler(on_kv_shortage="raise"),
        "a subclass": type("Mine", (McsfScheduler,), {})(),
    }
    for name, scheduler in others.items():
        assert unsupported_reason(trace, [InstanceConfig(model, 900, 16, scheduler)], "round-robin", None), name
    ids = Trace(pd.DataFrame({"request_id": [0], "arrival_time_s": [0.0], "prompt_tokens": [600],
                              "output_tokens": [5], "prefix_block_hashes": [(1,)]}), prefix_block_tokens=512)
    assert unsupported_reason(ids, covered, "round-robin", None)
    assert unsupported_reason(trace, covered, "round-robin", True)  # own block hashes
    sessions = agent_sessions(num_sessions=3, rounds=2, think_time_s=1.0, new_tokens_per_round=50, output_tokens=20)
    assert "sessions" in unsupported_reason(sessions, covered, "round-robin", None)
    pair = [InstanceConfig(model, 900, 16, "mc-sf", role="prefill", kv_bytes_per_token=1),
            InstanceConfig(model, 900, 16, "mc-sf", role="decode")]
    assert "colocated" in unsupported_reason(trace, pair, "round-robin", None)  # its check ignores KV in transfer
    fast = simulate(trace, [InstanceConfig(model, 900, 16, others["prediction callable"])], mode="fast")
    assert fast.engine == "simpy"
