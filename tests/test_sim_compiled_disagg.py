"""The compiled engine on prefill/decode-disaggregated clusters, against the SimPy engine run step by step.

As in ``tests/test_sim_compiled.py``, the SimPy engine in ``mode="step"`` is the reference (its own
hand-off code, ``_ServingRun._transfer``, and SimPy's event queue): the compiled engine must give the same
per-request table (the ``instance`` column: where the request ended, its decode instance unless its only
token came out of the prefill), the same timeline and step count, to the bit.
"""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusched.hardware import LinkSpec
from gpusched.perf import ProfiledStepTime
from gpusched.workload import Trace, load_trace
from simulators.compiled.driver import unsupported_reason
from test_sim_compiled import _assert_pausing_changes_nothing, _assert_same_as_step_mode
from simulators.serving import InstanceConfig, simulate

KV_BYTES = 131072  # Llama-3-8B, bf16: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes


@pytest.fixture(scope="module")
def h100():
    return ProfiledStepTime.from_profile_dir("h100", model="llama3-8b")


def _pair(step, prefill=1, decode=1, scheduler="vllm-v1", knobs=None, prefill_blocks=2400, decode_blocks=2400,
          **kw):
    return ([InstanceConfig(step, prefill_blocks, 16, scheduler, dict(knobs or {}), role="prefill",
                            kv_bytes_per_token=KV_BYTES, **kw) for _ in range(prefill)]
            + [InstanceConfig(step, decode_blocks, 16, scheduler, dict(knobs or {}), role="decode",
                              kv_bytes_per_token=KV_BYTES, **kw) for _ in range(decode)])


def _same_as_step_mode(trace, instances, **kw):
    """The compiled engine runs it, gives step mode's results, and every request finishes."""
    fast = _assert_same_as_step_mode(trace, instances, **kw)
    assert fast.num_unfinished == 0
    return fast


def _azure(n=300, rate=2.0):
    return load_trace("azure-conv-2023").head(n).scale_rate(rate)


SCHEDULERS = {"vllm-v1": {}, "vllm-v0": {"max_num_batched_tokens": 8192}, "sarathi": {}}
ROUTERS = ["round-robin", "random", "least-outstanding-tokens", "kv-aware"]


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_one_prefill_one_decode_equals_step_mode(h100, scheduler):
    res = _same_as_step_mode(_azure(), _pair(h100, scheduler=scheduler, knobs=SCHEDULERS[scheduler]))
    r = res.requests
    assert (r.loc[r["output_tokens"] > 1, "instance"] == 1).all()  # every request decoded on the decode instance


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("decode_router", ROUTERS)
def test_two_plus_two_behind_every_decode_router_equals_step_mode(h100, scheduler, decode_router):
    """Tight decode KV: preemptions (recompute) on the decode instances; routers read them at hand-offs."""
    trace = _azure(250, 4.0)
    res = _same_as_step_mode(trace, _pair(h100, 2, 2, scheduler, SCHEDULERS[scheduler], decode_blocks=600),
                             router="least-outstanding-tokens" if decode_router == "random" else "round-robin",
                             decode_router=decode_router, seed=3)
    r = res.requests
    assert set(r.loc[r["output_tokens"] > 1, "instance"]) == {2, 3}
    assert r["num_preemptions"].sum() > 0


def test_preemption_on_the_decode_instance_with_swap_and_a_slow_link(h100):
    instances = _pair(h100, knobs={"preemption": "swap"}, decode_blocks=500, host_link_bytes_per_s=25e9)
    res = _same_as_step_mode(_azure(300, 3.0), instances, link=LinkSpec(5e9, 2e-3))
    assert res.requests["num_preemptions"].sum() > 0


def test_a_prefill_instance_full_of_kv_in_transfer_waits_for_the_releases(h100):
    """Small prefill KV and a slow link: the prefill instance runs out of KV held for hand-offs, idles
    with requests waiting, and is woken by a transfer's end (InstanceEngine.release)."""
    res = _same_as_step_mode(_azure(200, 4.0), _pair(h100, prefill_blocks=300), link=LinkSpec(2e9, 0.02))
    prefill = res.timeline[res.timeline["instance"] == 0]
    # after some step ends nothing runs there while requests wait: the KV is held for hand-offs
    assert ((prefill["running"] == 0) & (prefill["waiting"] > 0)).any()


def test_a_link_with_latency_delays_the_decode_by_the_transfer(h100):
    """A first decode step cannot start before the hand-off's transfer ends: prompt x KV bytes / bandwidth
    + latency after the first token (LinkSpec.transfer_time_s, checked here by hand on every request)."""
    link = LinkSpec(1e9, 0.05)
    res = _same_as_step_mode(_azure(120), _pair(h100), link=link)
    r = res.requests[res.requests["output_tokens"] > 2]
    timeline = res.timeline[res.timeline["instance"] == 1]
    transfer_s = 0.05 + r["prompt_tokens"] * KV_BYTES / 1e9
    # the second token comes from a decode step that started no earlier than the transfer's end
    first_decode_end = [timeline.loc[timeline["time_s"] > t + s, "time_s"].min()
                        for t, s in zip(r["first_token_time_s"], transfer_s)]
    assert (r["finish_time_s"].to_numpy() >= pd.Series(first_decode_end).to_numpy()).all()


def test_instant_transfers_and_lockstep_prefill_instances_tie_as_on_simpy(h100):
    """Ties at equal times follow SimPy's scheduling order: every request comes twice (two prefill
    instances run in lockstep, their hand-offs end at the same time), and an instant link (no latency,
    huge bandwidth) ends each transfer at the very step end that started it."""
    df = _azure(150, 2.0).df
    twice = pd.concat([df, df]).sort_values("arrival_time_s", kind="stable").reset_index(drop=True)
    twice["request_id"] = range(len(twice))
    trace = Trace(twice, name="twice")
    for link in (LinkSpec(1e30, 0.0), LinkSpec(50e9, 1e-5)):
        for decode_router in ("least-outstanding-tokens", "kv-aware"):
            _same_as_step_mode(trace, _pair(h100, 2, 2, decode_blocks=900), link=link, decode_router=decode_router)
        # one decode instance: two transfers end together, and the first wakes it; the second still
        # comes before that wake-up (it was scheduled earlier), so the decode's first step has both
        _same_as_step_mode(trace, _pair(h100, 2, 1, decode_blocks=1500), link=link)


def test_one_token_outputs_finish_on_the_prefill_instance(h100):
    trace = _azure(200)
    df = trace.df.assign(output_tokens=trace.df["output_tokens"].where(trace.df.index % 3 != 0, 1))
    res = _same_as_step_mode(Trace(df, name="one-token"), _pair(h100, 2, 2), router="kv-aware")
    r = res.requests
    one = r["output_tokens"] == 1
    assert one.sum() > 50 and r.loc[one, "instance"].isin([0, 1]).all()
    assert (r.loc[one, "finish_time_s"] == r.loc[one, "first_token_time_s"]).all()
    assert r.loc[~one, "instance"].isin([2, 3]).all()


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_the_one_token_regression_rows_equal_step_mode(h100, scheduler):
    """tests/test_sim_defects.py's one-token rows (there on the SimPy engine) on the compiled engine."""
    rows = [(0.0, 100, 1), (0.0, 40, 5), (0.002, 30, 1), (0.004, 60, 1), (0.01, 20, 7)]
    df = pd.DataFrame(rows, columns=["arrival_time_s", "prompt_tokens", "output_tokens"])
    df.insert(0, "request_id", range(len(df)))
    r = _same_as_step_mode(Trace(df, name="one-token"), _pair(h100, scheduler=scheduler, prefill_blocks=64,
                                                              decode_blocks=64)).requests
    one = r["output_tokens"] == 1
    assert (r.loc[one, "instance"] == 0).all() and (r.loc[~one, "instance"] == 1).all()
    assert (r.loc[one, "finish_time_s"] == r.loc[one, "first_token_time_s"]).all()


@pytest.mark.parametrize("knobs, decode_blocks", [({}, 3000), ({}, 1000), ({"enable_prefix_caching": False}, 2000)])
def test_shared_prefix_ids_equal_step_mode(h100, knobs, decode_blocks):
    """Mooncake's prefix ids: requests share the blocks their ids name, on each side of the hand-off."""
    trace = load_trace("mooncake-conversation").head(100)
    trace = Trace(trace.df.assign(prompt_tokens=trace.df["prompt_tokens"].clip(upper=12000)), name="mooncake",
                  prefix_block_tokens=trace.prefix_block_tokens)
    res = _same_as_step_mode(trace, _pair(h100, 2, 2, knobs=knobs, prefill_blocks=3000,
                                          decode_blocks=decode_blocks))
    if knobs.get("enable_prefix_caching", True):
        assert res.requests["cached_tokens"].sum() > 0
    if decode_blocks == 1000:
        assert res.requests["num_preemptions"].sum() > 0


def test_colocated_instances_beside_a_prefill_decode_pair(h100):
    instances = [InstanceConfig(h100, 1200, 16, "vllm-v1", kv_bytes_per_token=KV_BYTES)] + _pair(h100)
    res = _same_as_step_mode(_azure(300, 3.0), instances, router="least-outstanding-tokens")
    assert set(res.requests["instance"]) == {0, 2}  # colocated ones finish there, the others on the decode one


def test_a_paused_run_with_transfers_in_flight_gives_the_same_results(h100, monkeypatch):
    _assert_pausing_changes_nothing(monkeypatch, _azure(300, 3.0), _pair(h100, 2, 2, decode_blocks=800),
                                    decode_router="kv-aware")


def test_what_it_does_not_cover_in_a_disaggregated_cluster(h100):
    trace = _azure(50)
    pair = _pair(h100)
    assert unsupported_reason(trace, pair, "round-robin", None) is None
    from simulators.serving.routers import KvAwareRouter

    assert unsupported_reason(trace, pair, "round-robin", None, decode_router=KvAwareRouter()) is not None
    # a round-robin decode router offered only the decode instances that hold a request: refused
    unequal = _pair(h100, decode=2, decode_blocks=2400)
    unequal[-1] = InstanceConfig(h100, 40, 16, "vllm-v1", role="decode", kv_bytes_per_token=KV_BYTES)
    big = int((trace.df["prompt_tokens"] + trace.df["output_tokens"]).max())
    assert big > 40 * 16
    assert unsupported_reason(trace, unequal, "round-robin", None, decode_router="round-robin") is not None
    assert unsupported_reason(trace, unequal, "round-robin", None, decode_router="kv-aware") is None
    # it still runs in fast mode, on the SimPy engine
    fast = simulate(trace, unequal, mode="fast", decode_router="round-robin")
    assert fast.engine == "simpy"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 300), st.integers(1, 40)), min_size=1, max_size=25),
       blocks=st.integers(24, 80), budget=st.sampled_from([16, 48, 256, 2048]), max_seqs=st.integers(1, 8),
       caching=st.booleans(), prefill=st.integers(1, 2), decode=st.integers(1, 2),
       latency_s=st.sampled_from([0.0, 1e-5, 0.01]), bandwidth=st.sampled_from([1e9, 50e9, 1e30]),
       decode_router=st.sampled_from(ROUTERS), scheduler=st.sampled_from(["vllm-v1", "vllm-v1 swap", "vllm-v0",
                                                                          "sarathi"]))
def test_random_small_disaggregated_runs_equal_step_mode(h100, rows, blocks, budget, max_seqs, caching, prefill,
                                                         decode, latency_s, bandwidth, decode_router, scheduler):
    df = pd.DataFrame(sorted(rows), columns=["arrival_time_s", "prompt_tokens", "output_tokens"])
    df.insert(0, "request_id", range(len(df)))
    longest = int((df["prompt_tokens"] + df["output_tokens"]).max())
    blocks = max(blocks, -(-longest // 16))
    knobs = {"vllm-v1": dict(max_num_batched_tokens=budget, max_num_seqs=max_seqs, enable_prefix_caching=caching,
                             preemption="swap" if scheduler.endswith("swap") else "recompute"),
             "vllm-v0": dict(max_num_batched_tokens=max(budget, longest), max_num_seqs=max_seqs,
                             enable_prefix_caching=caching),
             "sarathi": dict(token_budget=budget, max_num_seqs=max_seqs, enable_prefix_caching=caching)}
    instances = _pair(h100, prefill, decode, scheduler.split()[0], knobs[scheduler.split()[0]], prefill_blocks=blocks,
                      decode_blocks=blocks, host_link_bytes_per_s=25e9)
    _same_as_step_mode(Trace(df, name="random"), instances, decode_router=decode_router,
                       link=LinkSpec(bandwidth, latency_s))
