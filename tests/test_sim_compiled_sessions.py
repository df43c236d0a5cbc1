"""Multi-round sessions on the compiled engine (simulators.compiled) against the SimPy engine in step mode.

The SimPy engine in ``mode="step"`` is the reference (``_ServingRun._release_round``: round r+1 is released
a think time after round r finishes and not before its own trace arrival time, through the router; its
prompt, the session's history, finds the blocks round r left cached on that instance). The compiled
engine must give the same per-request table (with the release times written into ``arrival_time_s``) and
the same per-step timeline, to the bit.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusched.perf import ProfiledStepTime
from gpusched.synthetic import agent_sessions
from gpusched.workload import Trace, load_trace
from simulators.compiled.driver import unsupported_reason
from simulators.serving import InstanceConfig
from simulators.serving.bench import sessions_like
from test_sim_compiled import _assert_pausing_changes_nothing
from test_sim_compiled import _assert_same_as_step_mode as same_as_step_mode

KV_BYTES = 131072  # Llama-3-8B, bytes of KV per token
HOST_LINK = 25e9

_MODEL = []


def _h100():
    if not _MODEL:
        _MODEL.append(ProfiledStepTime.from_profile_dir("h100", model="llama3-8b", tp=1))
    return _MODEL[0]


def _cfg(blocks, scheduler="vllm-v1", knobs=None, role="colocated"):
    return InstanceConfig(_h100(), blocks, 16, scheduler, knobs or {}, role=role, kv_bytes_per_token=KV_BYTES,
                          host_link_bytes_per_s=HOST_LINK)


def _assert_same_as_step_mode(trace, instances, **kw):
    """The compiled engine runs it, gives step mode's results, and every request finishes."""
    fast = same_as_step_mode(trace, instances, **kw)
    assert fast.num_unfinished == 0
    return fast


def _agents(n=30, think_s=2.0, seed=1, rate=3.0, new=200, output=120, rounds=(1, 5)):
    return agent_sessions(n, rounds, think_s, new, output, seed=seed, session_rate_per_s=rate)


def _release_lower_bounds(trace: Trace, res) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per later round: ``max(trace arrival, previous round's finish + think)`` computed here from the
    result's finish times (an independent statement of the release rule), the arrival time the result
    reports, and the trace's arrival time."""
    df = trace.df.reset_index(drop=True)
    finish = res.requests["finish_time_s"].to_numpy()
    expected, reported, listed = [], [], []
    for _, rows in df.sort_values(["session_id", "round"], kind="stable").groupby("session_id", sort=False):
        idx = rows.index.to_numpy()
        for a, b in zip(idx[:-1], idx[1:]):
            listed.append(float(df["arrival_time_s"][b]))
            expected.append(max(listed[-1], finish[a] + float(df["think_time_s"][b])))
            reported.append(res.requests["arrival_time_s"].iloc[b])
    return np.array(expected), np.array(reported), np.array(listed)


def test_agent_sessions_on_one_instance_report_the_release_times():
    trace = _agents()
    res = _assert_same_as_step_mode(trace, [_cfg(2000)])
    expected, reported, _ = _release_lower_bounds(trace, res)
    assert len(expected) > 20 and (reported == expected).all()
    assert res.requests["cached_tokens"].sum() > 0  # later rounds find their history cached


def test_tight_kv_preempts_and_evicts_a_sessions_cached_blocks():
    trace = _agents(n=40, rate=6.0, new=300, output=200)
    res = _assert_same_as_step_mode(trace, [_cfg(260)])
    assert res.requests["num_preemptions"].sum() > 0
    # a later round that finds less than its predecessor's prompt + output cached: evicted meanwhile
    df = trace.df
    later = (df["round"] > 0).to_numpy()
    history = (df["prompt_tokens"].shift(1) + df["output_tokens"].shift(1)).to_numpy()[later] // 16 * 16
    assert (res.requests["cached_tokens"].to_numpy()[later] < history).any()


def test_think_time_zero_releases_at_the_finish_instant():
    """A round released at its predecessor's finish time: routed in the same instant, before any step
    starting then (ties in the event order), on several instances."""
    trace = _agents(n=30, think_s=0.0, rate=4.0)
    res = _assert_same_as_step_mode(trace, [_cfg(900), _cfg(1400)], router="least-outstanding-tokens")
    expected, reported, _ = _release_lower_bounds(trace, res)
    finish = res.requests["finish_time_s"]
    assert (reported == expected).all()
    later = trace.df["round"].to_numpy() > 0
    # every later round is released exactly when its predecessor finished (an exact float tie)
    assert set(res.requests["arrival_time_s"][later]) <= set(finish)


def test_a_trace_arrival_later_than_finish_plus_think_binds():
    """Later rounds whose trace arrival time is after the previous round's finish + think: the trace's
    time is the release time (a lower bound that binds), waited for from far back (two events)."""
    base = _agents(n=20, think_s=0.5, rate=2.0, output=40)
    df = base.df.copy()
    late = (df["round"] > 0) & (df["session_id"] % 2 == 1)  # odd sessions' later rounds: 30 s apart
    df.loc[late, "arrival_time_s"] = df.loc[late, "arrival_time_s"] + 30.0 * df.loc[late, "round"]
    trace = Trace(df, name="late rounds")
    res = _assert_same_as_step_mode(trace, [_cfg(2000), _cfg(2000)], router="kv-aware")
    expected, reported, listed = _release_lower_bounds(trace, res)
    assert (reported == expected).all()
    assert (reported == listed).any() and (reported > listed).any()  # the lower bound binds, and not always


@pytest.mark.parametrize("router", ["round-robin", "random", "least-outstanding-tokens", "kv-aware"])
def test_several_instances_behind_every_router(router):
    """A session's rounds may run on different instances: each instance caches the blocks of the rounds
    it served (and a round finds only what its own instance holds)."""
    trace = _agents(n=40, rate=6.0)
    res = _assert_same_as_step_mode(trace, [_cfg(b) for b in (400, 700, 1100)], router=router, seed=3)
    assert res.requests["instance"].nunique() == 3


def test_unequal_instances_offer_a_long_round_only_to_those_that_hold_it():
    trace = _agents(n=20, rate=3.0, new=1500, output=100, rounds=(2, 4))
    longest = int((trace.df["prompt_tokens"] + trace.df["output_tokens"]).max())
    small = 200  # blocks: 3,200 tokens
    assert longest > small * 16
    for router in ("least-outstanding-tokens", "kv-aware"):
        _assert_same_as_step_mode(trace, [_cfg(small), _cfg(-(-longest // 16) + 100)], router=router)


@pytest.mark.parametrize("scheduler, knobs, blocks", [
    ("vllm-v1", {"preemption": "swap"}, 300),
    ("vllm-v1", {"enable_prefix_caching": False}, 300),
    ("vllm-v1", {"long_prefill_token_threshold": 128, "reserve_full_prompt": True, "max_num_batched_tokens": 512}, 500),
    ("vllm-v0", {"max_num_batched_tokens": 4096, "enable_prefix_caching": True}, 350),
    ("vllm-v0", {"max_num_batched_tokens": 4096}, 350),
    ("sarathi", {"token_budget": 512, "enable_prefix_caching": True}, 350),
    ("sarathi", {}, 350),
    ("static", {"max_batch_size": 8}, 600),
])
def test_every_scheduler(scheduler, knobs, blocks):
    trace = _agents(n=30, rate=5.0)
    res = _assert_same_as_step_mode(trace, [_cfg(blocks, scheduler, knobs)])
    if knobs.get("enable_prefix_caching", scheduler == "vllm-v1"):
        assert res.requests["cached_tokens"].sum() > 0


@pytest.mark.parametrize("hash_own_blocks", [None, True, False])
def test_sessions_beside_independent_requests(hash_own_blocks):
    """Rows outside sessions (their own block hashes, or none) among session rounds."""
    sessions = _agents(n=20, rate=4.0).df
    single = load_trace("azure-conv-2023").head(60).df[["request_id", "arrival_time_s", "prompt_tokens",
                                                           "output_tokens"]]
    single = single.assign(arrival_time_s=single["arrival_time_s"] - single["arrival_time_s"].min())
    df = pd.concat([sessions, single.assign(request_id=single["request_id"].astype(str) + "-single")])
    df = df.assign(request_id=df["request_id"].astype(str)).sort_values("arrival_time_s", kind="stable")
    trace = Trace(df.reset_index(drop=True), name="mixed")
    _assert_same_as_step_mode(trace, [_cfg(500), _cfg(500)], router="least-outstanding-tokens",
                              hash_own_blocks=hash_own_blocks)


@pytest.mark.parametrize("roles, decode_router", [
    (("prefill", "decode"), "least-outstanding-tokens"),
    (("prefill", "prefill", "decode", "decode"), "kv-aware"),
    (("colocated", "prefill", "decode"), "round-robin"),
])
def test_disaggregated(roles, decode_router):
    """A round's prefill on a prefill instance, its decode on a decode instance; the next round finds its
    history on the prefill instance that served the previous one (if the entry router sends it there)."""
    trace = _agents(n=30, rate=5.0, output=60)
    instances = [_cfg(500, role=role) for role in roles]
    res = _assert_same_as_step_mode(trace, instances, router="least-outstanding-tokens", decode_router=decode_router)
    assert res.requests["cached_tokens"].sum() > 0


def test_sessions_like_the_bench_builds_them():
    trace = sessions_like(load_trace("azure-conv-2023").head(300))
    _assert_same_as_step_mode(trace, [_cfg(1200)])
    _assert_same_as_step_mode(trace.scale_rate(8.0), [_cfg(1200), _cfg(1200)], router="least-outstanding-tokens")


def test_a_run_paused_for_progress_updates_gives_the_same_results(monkeypatch):
    # the loop returns every 3 first rounds, with later rounds pending release
    _assert_pausing_changes_nothing(monkeypatch, _agents(n=40, rate=6.0), [_cfg(400), _cfg(600)], every=3,
                                    router="kv-aware")


@st.composite
def _session_traces(draw):
    """A few sessions of up to four rounds: first prompts and outputs of a few blocks, think times 0 or
    small (ties), later rounds' trace times sometimes after their predecessor can finish, arrival ties."""
    rows = []
    for session in range(draw(st.integers(1, 5))):
        t = draw(st.sampled_from([0.0, 0.1, 0.25])) + draw(st.integers(0, 3)) * 0.5
        prompt = draw(st.integers(1, 200))
        output = draw(st.integers(1, 60))
        for rnd in range(draw(st.integers(1, 4))):
            if rnd:
                prompt += output + draw(st.integers(1, 80))
                output = draw(st.integers(1, 60))
                t += draw(st.sampled_from([0.0, 0.0, 0.3, 2.0]))
            think = 0.0 if rnd == 0 else draw(st.sampled_from([0.0, 0.05, 0.4]))
            rows.append((session, rnd, t, prompt, output, think))
    df = pd.DataFrame(rows, columns=["session_id", "round", "arrival_time_s", "prompt_tokens", "output_tokens",
                                     "think_time_s"]).sort_values("arrival_time_s", kind="stable")
    df.insert(0, "request_id", range(len(df)))
    return Trace(df.reset_index(drop=True), name="random-sessions")


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(trace=_session_traces(), scheduler=st.sampled_from(["vllm-v1", "vllm-v0", "sarathi", "static"]),
       router=st.sampled_from(["round-robin", "random", "least-outstanding-tokens", "kv-aware"]),
       roles=st.sampled_from([("colocated",), ("colocated", "colocated"), ("prefill", "decode")]),
       spare=st.integers(0, 40), hash_own_blocks=st.sampled_from([None, True, False]))
def test_random_session_traces(trace, scheduler, router, roles, spare, hash_own_blocks):
    need = int((trace.df["prompt_tokens"] + trace.df["output_tokens"]).max())
    knobs = {"max_num_batched_tokens": max(need, 256)} if scheduler == "vllm-v0" else {}
    blocks = -(-need // 16) + spare  # every instance holds every round (round-robin and random run compiled)
    instances = [_cfg(blocks, scheduler, knobs, role) for role in roles]
    _assert_same_as_step_mode(trace, instances, router=router, hash_own_blocks=hash_own_blocks)


@pytest.mark.parametrize("router", ["round-robin", "least-outstanding-tokens"])
def test_releases_and_an_arrival_at_the_same_instant_keep_simpys_order(router):
    """Two sessions' second rounds whose trace time (3 s) binds, and a third session's first round, all at
    3 s: three URGENT events at one time, routed in SimPy's scheduling order (each waited from far back, in
    two events), which decides which instance each gets."""
    rows = [(0, 0, 0.0, 300, 20, 0.0), (1, 0, 0.1, 200, 10, 0.0), (0, 1, 3.0, 400, 20, 0.2), (1, 1, 3.0, 260, 30, 0.0),
            (2, 0, 3.0, 500, 40, 0.0), (2, 1, 3.0, 600, 10, 0.0)]
    df = pd.DataFrame(rows, columns=["session_id", "round", "arrival_time_s", "prompt_tokens", "output_tokens",
                                     "think_time_s"])
    df.insert(0, "request_id", range(len(df)))
    trace = Trace(df, name="ties")
    res = _assert_same_as_step_mode(trace, [_cfg(400) for _ in range(3)], router=router)
    assert (res.requests["arrival_time_s"].iloc[[2, 3, 4]] == 3.0).all()
    assert res.requests["instance"].iloc[[2, 3, 4]].nunique() == 3


def test_session_rounds_ignore_prefix_ids_that_other_requests_share():
    """Rows outside sessions share trace prefix ids (Mooncake-like); session rows (string session ids)
    carry ids too, which the SimPy engine replaces by the session's own block hashes."""
    rows = []
    for i in range(12):  # independent requests: ids (1, 2, ...) shared by their first blocks
        rows.append((f"r{i}", 0.05 * i, 1100 + 10 * i, 30, [1, 2, 100 + i], None, None, 0.0))
    for s in range(4):
        prompt = 600
        for rnd in range(3):
            rows.append((f"s{s}-{rnd}", 0.1 + 0.2 * s, prompt, 40, [1, 2], f"chat-{s}", rnd, 0.3 * (rnd > 0)))
            prompt += 40 + 100
    df = pd.DataFrame(rows, columns=["request_id", "arrival_time_s", "prompt_tokens", "output_tokens",
                                     "prefix_block_hashes", "session_id", "round", "think_time_s"])
    trace = Trace(df.sort_values("arrival_time_s", kind="stable").reset_index(drop=True), name="ids and sessions",
                  prefix_block_tokens=512)
    res = _assert_same_as_step_mode(trace, [_cfg(600), _cfg(600)], router="least-outstanding-tokens")
    assert res.requests["cached_tokens"].sum() > 0


def test_too_many_session_slots_run_on_the_simpy_engine(monkeypatch):
    import simulators.compiled.driver as compiled

    trace = _agents(n=5)
    blocks = (trace.df["prompt_tokens"] + trace.df["output_tokens"]) // 16
    slots = int(blocks.groupby(trace.df["session_id"]).max().sum())  # one slot set per session
    monkeypatch.setattr(compiled, "MAX_SESSION_SLOTS", 2 * slots)
    assert unsupported_reason(trace, [_cfg(2000)] * 2, "round-robin", None) is None
    assert "session block slots" in unsupported_reason(trace, [_cfg(2000)] * 3, "round-robin", None)
