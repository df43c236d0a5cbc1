"""The compiled engine (simulators.compiled) against the SimPy engine run step by step.

The SimPy engine in ``mode="step"`` is the reference: an independent implementation (objects, the
block manager's own classes, the routers' own code, SimPy's event queue). The compiled engine must
give the same per-request table and the same per-step timeline, to the bit, on every configuration it
accepts.
"""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusched.cluster import DEFAULT_LINK
from gpusched.errors import ConfigError
from gpusched.perf import ProfiledStepTime, RooflineStepTime
from gpusched.workload import Trace, load_trace
from gpusched.synthetic import agent_sessions
from simulators.compiled.driver import arrival_event_times, simulate_compiled, unsupported_reason
from simulators.serving import InstanceConfig, simulate


def _h100(model="llama3-8b", tp=1):
    return ProfiledStepTime.from_profile_dir("h100", model=model, tp=tp)


def _assert_same_as_step_mode(trace, instances, **kw):
    """The compiled engine runs it (``simulate``'s keywords ``kw``), and gives step mode's results."""
    assert unsupported_reason(trace, instances, kw.get("router", "round-robin"), kw.get("hash_own_blocks"),
                              decode_router=kw.get("decode_router", "least-outstanding-tokens"),
                              link=kw.get("link", DEFAULT_LINK)) is None
    fast = simulate(trace, instances, mode="fast", **kw)
    assert fast.engine == "compiled"
    step = simulate(trace, instances, mode="step", **kw)
    pd.testing.assert_frame_equal(fast.requests, step.requests)
    pd.testing.assert_frame_equal(fast.timeline, step.timeline)
    assert fast.num_steps == step.num_steps and fast.kv_blocks == step.kv_blocks
    return fast


CASES = {  # name: (KV blocks, scheduler knobs, simulate keywords, model, TP[, scheduler])
    "default knobs": (2400, {}, {}, "llama3-8b", 1),
    "tight KV, swap preemption": (700, {"preemption": "swap"}, {}, "llama3-8b", 1),
    "vllm-v0, tight KV, prefix caching": (900, {"max_num_batched_tokens": 4800, "enable_prefix_caching": True}, {},
                                          "llama3-8b", 1, "vllm-v0"),
    "vllm-v0, few seqs": (2400, {"max_num_batched_tokens": 4800, "max_num_seqs": 8}, {}, "llama3-8b", 1, "vllm-v0"),
    "sarathi, tight KV": (700, {}, {}, "llama3-8b", 1, "sarathi"),
    "sarathi, budget 2048, prefix caching": (900, {"token_budget": 2048, "enable_prefix_caching": True}, {},
                                             "llama3-8b", 1, "sarathi"),
    "tight KV: preemptions, prefix hits on resume": (700, {}, {}, "llama3-8b", 1),
    "tight KV, prefix caching off": (700, {"enable_prefix_caching": False}, {}, "llama3-8b", 1),
    "own hashes kept, probe off": (700, {"enable_prefix_caching": False}, {"hash_own_blocks": True},
                                   "llama3-8b", 1),
    "no chunking (budget above the longest request), few seqs": (1500, {"enable_chunked_prefill": False, "max_num_batched_tokens": 4200,
                                                   "max_num_seqs": 8}, {}, "llama3-8b", 1),
    "long-prefill threshold, full-prompt reservation": (900, {"long_prefill_token_threshold": 256,
                                                              "reserve_full_prompt": True}, {}, "llama3-8b", 1),
    "budget of one block": (1200, {"max_num_batched_tokens": 16}, {}, "llama3-8b", 1),
    "TP 2 (all-reduce terms)": (1200, {"max_num_batched_tokens": 512}, {}, "llama3-8b", 2),
    "invariant checks off": (700, {}, {"check_invariants": False}, "llama3-8b", 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compiled_engine_equals_step_mode_on_the_azure_trace(case):
    blocks, knobs, kw, model, tp, *scheduler = CASES[case]
    trace = load_trace("azure-conv-2023").head(400).scale_rate(2.0)
    cfg = InstanceConfig(_h100(model, tp), blocks, 16, (scheduler or ["vllm-v1"])[0], knobs,
                         kv_bytes_per_token=131072, host_link_bytes_per_s=25e9)
    res = _assert_same_as_step_mode(trace, [cfg], **kw)
    assert res.num_unfinished == 0
    if "tight KV" in case:  # the case exercises what it is named for
        assert res.requests["num_preemptions"].sum() > 0
        if "off" not in case and "swap" not in case and "sarathi" not in case:
            assert res.requests["cached_tokens"].sum() > 0


@pytest.mark.parametrize("router", ["round-robin", "random", "least-outstanding-tokens", "kv-aware"])
def test_compiled_engine_equals_step_mode_behind_every_router(router):
    """Three instances of different KV capacities: routing reads their state as of each arrival."""
    trace = load_trace("azure-conv-2023").head(600).scale_rate(6.0)
    step = _h100()
    instances = [InstanceConfig(step, blocks, 16, "vllm-v1") for blocks in (500, 900, 1400)]
    res = _assert_same_as_step_mode(trace, instances, router=router, seed=7)
    assert sorted(res.requests["instance"].unique()) == [0, 1, 2]
    assert res.requests["num_preemptions"].sum() > 0


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 300), st.integers(1, 80)), min_size=1, max_size=25),
       blocks=st.integers(24, 80), budget=st.sampled_from([16, 48, 256, 2048]), max_seqs=st.integers(1, 8),
       chunked=st.booleans(), caching=st.booleans(), threshold=st.sampled_from([0, 32]),
       reserve=st.booleans(), count=st.integers(1, 3),
       router=st.sampled_from(["round-robin", "random", "least-outstanding-tokens", "kv-aware"]),
       scheduler=st.sampled_from(["vllm-v1", "vllm-v1 swap", "vllm-v0", "sarathi"]))
def test_compiled_engine_equals_step_mode_on_random_small_runs(rows, blocks, budget, max_seqs, chunked, caching,
                                                               threshold, reserve, count, router, scheduler):
    rows = sorted(rows)
    df = pd.DataFrame(rows, columns=["arrival_time_s", "prompt_tokens", "output_tokens"])
    df.insert(0, "request_id", range(len(df)))
    if not chunked:  # without chunking a prompt (or a recompute) must fit one step's budget
        budget = max(budget, int((df["prompt_tokens"] + df["output_tokens"]).max()))
    blocks = max(blocks, int(-(-(df["prompt_tokens"] + df["output_tokens"]).max() // 16)))
    knobs = dict(max_num_batched_tokens=budget, max_num_seqs=max_seqs, enable_chunked_prefill=chunked,
                 enable_prefix_caching=caching, long_prefill_token_threshold=threshold, reserve_full_prompt=reserve,
                 preemption="swap" if scheduler.endswith("swap") else "recompute")
    if scheduler == "vllm-v0":  # whole prompts (and recomputes) within the budget
        longest = int((df["prompt_tokens"] + df["output_tokens"]).max())
        knobs = dict(max_num_batched_tokens=max(budget, longest), max_num_seqs=max_seqs, enable_prefix_caching=caching)
    elif scheduler == "sarathi":
        knobs = dict(token_budget=budget, max_num_seqs=max_seqs, enable_prefix_caching=caching)
    step = _h100()
    instances = [InstanceConfig(step, blocks + 7 * k, 16, scheduler.split()[0], knobs, kv_bytes_per_token=131072,
                                host_link_bytes_per_s=25e9) for k in range(count)]
    _assert_same_as_step_mode(Trace(df, name="random"), instances, router=router)


def _with_prefix_ids(ids, trace_block_tokens: int, prompt_tokens: int = 1200) -> Trace:
    df = pd.DataFrame({"request_id": range(len(ids)), "arrival_time_s": [0.01 * i for i in range(len(ids))],
                       "prompt_tokens": prompt_tokens, "output_tokens": 30, "prefix_block_hashes": ids})
    return Trace(df, name="prefix-ids", prefix_block_tokens=trace_block_tokens)


@pytest.mark.parametrize("blocks, knobs, routers", [
    (12000, {}, ("round-robin",)),
    (1000, {}, ("least-outstanding-tokens", "kv-aware")),  # tight: evictions, preemptions
    (1500, {"enable_prefix_caching": False}, ("random",)),  # ids still name (and share) the blocks
    (1500, {"reserve_full_prompt": True, "max_num_batched_tokens": 512}, ("round-robin",)),
])
def test_compiled_engine_equals_step_mode_with_shared_prefix_ids(blocks, knobs, routers):
    """Mooncake's prefix ids: requests share the blocks their ids name, on one or two instances."""
    trace = load_trace("mooncake-conversation").head(100)
    trace = Trace(trace.df.assign(prompt_tokens=trace.df["prompt_tokens"].clip(upper=12000)), name="mooncake",
                  prefix_block_tokens=trace.prefix_block_tokens)
    for router in routers:
        count = 1 if router == "round-robin" and blocks > 2000 else 2
        res = _assert_same_as_step_mode(trace, [InstanceConfig(_h100(), blocks, 16, "vllm-v1", knobs)] * count,
                                        router=router)
        assert res.num_unfinished == 0
        if knobs.get("enable_prefix_caching", True):
            assert res.requests["cached_tokens"].sum() > 0
        if blocks == 1000:  # the tight case exercises what it is there for
            assert res.requests["num_preemptions"].sum() > 0


def test_compiled_engine_equals_step_mode_with_prefix_caching_and_no_own_hashes():
    trace = load_trace("azure-conv-2023").head(300).scale_rate(2.0)
    _assert_same_as_step_mode(trace, [InstanceConfig(_h100(), 700, 16, "vllm-v1")], hash_own_blocks=False)


def test_configurations_it_does_not_cover_run_on_the_simpy_engine():
    trace = load_trace("azure-conv-2023").head(50)
    one = [InstanceConfig(_h100(), 2000, 16, "vllm-v1")]
    assert unsupported_reason(trace, one, "round-robin", None) is None
    assert unsupported_reason(trace, one * 3, "kv-aware", None) is None
    step = one[0].step_model  # disaggregated (tests/test_sim_compiled_disagg.py checks its results)
    pair = [InstanceConfig(step, 2000, 16, "vllm-v1", role="prefill", kv_bytes_per_token=1),
            InstanceConfig(step, 2000, 16, "vllm-v1", role="decode")]
    assert unsupported_reason(trace, pair, "round-robin", None) is None
    assert unsupported_reason(trace, [InstanceConfig(_h100(), 2000, 16, "static")], "round-robin", None) is None
    # multi-round sessions (tests/test_sim_compiled_sessions.py checks their results)
    sessions = agent_sessions(num_sessions=3, rounds=2, think_time_s=1.0, new_tokens_per_round=50, output_tokens=20)
    assert unsupported_reason(sessions, one, "round-robin", None) is None
    assert unsupported_reason(sessions, pair, "random", None) is None
    long_sessions = agent_sessions(num_sessions=3, rounds=2, think_time_s=1.0, new_tokens_per_round=3000,
                                   output_tokens=20)  # a second round of about 6,000 tokens: only 500 blocks hold it
    unequal = [InstanceConfig(one[0].step_model, blocks, 16, "vllm-v1") for blocks in (300, 500)]
    assert unsupported_reason(long_sessions, unequal, "least-outstanding-tokens", None) is None
    other = {
        "disaggregated, a decode router object": (trace, pair, "round-robin", None, None, object()),
        "disaggregated, different step models": (trace, [InstanceConfig(_h100(), 2000, 16, "vllm-v1", role="prefill",
                                                                         kv_bytes_per_token=1),
                                                          InstanceConfig(_h100(), 2000, 16, "vllm-v1", role="decode")],
                                                 "round-robin", None),
        "different step models": (trace, one + [InstanceConfig(_h100(), 2000, 16, "vllm-v1")], "round-robin", None),
        "different knobs": (trace, one + [InstanceConfig(one[0].step_model, 2000, 16, "vllm-v1",
                                                         {"max_num_seqs": 8})], "round-robin", None),
        "different static batch sizes": (trace, [InstanceConfig(one[0].step_model, 2000, 16, "static"),
                                                 InstanceConfig(one[0].step_model, 2000, 16, "static",
                                                                {"max_batch_size": 8})], "round-robin", None),
        "swap without a host link": (trace, [InstanceConfig(_h100(), 2000, 16, "vllm-v1", {"preemption": "swap"})],
                                     "round-robin", None),
        "roofline": (trace, [InstanceConfig(RooflineStepTime("llama3-8b", "H100-80GB"), 2000, 16)], "round-robin", None),
        "router object": (trace, one, object(), None),
        "sessions, round-robin, a round only some instances hold": (long_sessions, unequal, "round-robin", None),
        "a prefix id twice in a request": (_with_prefix_ids([(1, 2, 1)], 512), one, "round-robin", None),
    }
    for name, args in other.items():
        assert unsupported_reason(*args) is not None, name
    # such a configuration still runs in fast mode (on the SimPy engine), with the step-mode results
    two = one + [InstanceConfig(_h100(), 2000, 16, "vllm-v1")]
    fast = simulate(trace, two, mode="fast")
    step = simulate(trace, two, mode="step")
    assert fast.engine == "simpy"
    pd.testing.assert_frame_equal(fast.requests, step.requests)


def test_bad_input_is_refused_as_on_the_simpy_engine():
    trace = load_trace("azure-conv-2023").head(5)
    with pytest.raises(ConfigError, match="smaller than one KV block"):
        simulate(trace, [InstanceConfig(_h100(), 2000, 16, "vllm-v1", {"max_num_batched_tokens": 8})])
    with pytest.raises(ConfigError, match="unknown router"):
        simulate(trace, [InstanceConfig(_h100(), 2000, 16, "vllm-v1")], router="nearest")
    with pytest.raises(ConfigError, match="prefills whole sequences"):  # would block the queue forever
        simulate(trace, [InstanceConfig(_h100(), 2000, 16, "vllm-v1", {"enable_chunked_prefill": False,
                                                                      "max_num_batched_tokens": 64})])
    with pytest.raises(ConfigError, match="largest instance that takes new requests holds"):
        simulate(trace, [InstanceConfig(_h100(), 2, 16, "vllm-v1")])


def test_arrival_event_times_follow_the_simpy_clock():
    # the SimPy engine waits until an arrival time exactly (0.2 + (0.9 - 0.2) would be 0.8999999999999999 in
    # IEEE doubles), and a request listed out of order arrives at the clock's current time
    assert 0.2 + (0.9 - 0.2) == 0.8999999999999999
    assert arrival_event_times([0.2, 0.9, 0.5, 1.0]).tolist() == [0.2, 0.9, 0.9, 1.0]


def test_the_simpy_clock_reads_every_engine_time_exactly():
    """wait_until lands on the time itself, also from far back (where now + (t - now) can miss it)."""
    import simpy

    from simulators.serving.instance import wait_until

    env = simpy.Environment()
    seen = []

    def waits(times):
        for t, urgent in times:
            yield from wait_until(env, t, urgent)
            seen.append(env.now)

    times = [(1e-9, False), (0.2, True), (0.9, False), (0.9, False), (12.345678901234567, True), (1e6 / 3, False)]
    env.process(waits(times))
    env.run()
    assert seen == [t for t, _ in times]
    assert 0.2 + (0.9 - 0.2) != 0.9  # what a single wait from 0.2 would have read


def test_an_empty_trace_gives_an_empty_result():
    trace = load_trace("azure-conv-2023").head(0)
    res = simulate_compiled(trace, [InstanceConfig(_h100(), 2000, 16, "vllm-v1")])
    assert len(res.requests) == 0 and res.num_steps == 0


def _assert_pausing_changes_nothing(monkeypatch, trace, instances, every=7, **kw):
    """A compiled run that returns every ``every`` arrivals (to update a progress bar) and resumes gives the
    results of one run through (``simulate``'s keywords ``kw``)."""
    import simulators.compiled.driver as compiled

    whole = simulate(trace, instances, **kw)
    monkeypatch.setattr(compiled, "PROGRESS_EVERY", every)
    paused = simulate(trace, instances, progress=True, **kw)
    assert paused.engine == whole.engine == "compiled"
    pd.testing.assert_frame_equal(paused.requests, whole.requests)
    pd.testing.assert_frame_equal(paused.timeline, whole.timeline)


def test_a_run_paused_for_progress_updates_gives_the_same_results(monkeypatch):
    trace = load_trace("azure-conv-2023").head(300).scale_rate(3.0)
    instances = [InstanceConfig(_h100(), 600, 16, "vllm-v1")] * 2
    _assert_pausing_changes_nothing(monkeypatch, trace, instances, router="least-outstanding-tokens")
