"""Static batching (``StaticBatchScheduler``) on the compiled engine, against the SimPy engine step by step.

The SimPy engine in ``mode="step"`` is the reference (an independent implementation: objects, the block
manager's own classes, the routers' own code); the compiled engine must give the same per-request table
and per-step timeline, to the bit. A static batch's prefill has no token budget, so its step price is
computed in the kernel beyond the tabulated counts: :func:`test_token_terms_beyond_the_tables_are_the_models`
checks that piece against the step-time model itself, the runs check it in context.
"""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_sim_compiled import _assert_same_as_step_mode, _h100, _with_prefix_ids

from gpusched.workload import Trace, load_trace
from simulators.compiled.driver import _tabulate, unsupported_reason
from simulators.serving import InstanceConfig, simulate


def _azure(n: int, rate: float) -> Trace:
    return load_trace("azure-conv-2023").head(n).scale_rate(rate)


def _formations(res) -> pd.DataFrame:
    """The timeline rows of the steps that formed a batch: those whose batch computed more tokens than it
    has members (the members' prompts; every later step of a batch decodes a token per member)."""
    tl = res.timeline
    return tl[tl["batch_tokens"] > tl["batch_seqs"]]


def test_a_batch_forms_only_when_the_instance_is_idle():
    """Hand-derived: r0 and r1 arrive at 0 and form a batch; r2 arrives 1 ms later, while that batch runs,
    so it waits until the batch's longest member (r0, 10 output tokens) finishes: the batch runs 10 steps
    (r1 leaves after 3), then r2 runs alone for its 5 steps: 15 steps, r2 scheduled at r0's finish."""
    df = pd.DataFrame({"request_id": [0, 1, 2], "arrival_time_s": [0.0, 0.0, 0.001],
                       "prompt_tokens": [100, 50, 20], "output_tokens": [10, 3, 5]})
    cfg = InstanceConfig(_h100(), 100, 16, "static")
    res = _assert_same_as_step_mode(Trace(df, name="hand"), [cfg])
    req = res.requests.set_index("request_id")
    assert res.num_steps == 15
    assert req.loc[0, "scheduled_time_s"] == req.loc[1, "scheduled_time_s"] == 0.0
    assert req.loc[2, "scheduled_time_s"] == req.loc[0, "finish_time_s"] > req.loc[1, "finish_time_s"]
    assert res.timeline["batch_seqs"].tolist() == [2, 2, 2] + [1] * 12
    assert res.timeline["batch_tokens"].tolist()[:4] == [150, 2, 2, 1]


@pytest.mark.parametrize("blocks, knobs", [
    (2400, {}),  # the default batch of 32
    (20000, {"max_batch_size": 256}),  # large batches
])
def test_static_on_one_instance_equals_step_mode(blocks, knobs):
    res = _assert_same_as_step_mode(_azure(300, 2.0), [InstanceConfig(_h100(), blocks, 16, "static", knobs)])
    assert res.num_unfinished == 0
    assert res.requests["num_preemptions"].sum() == 0 and res.requests["cached_tokens"].sum() == 0
    size = knobs.get("max_batch_size", 32)
    assert res.timeline["batch_seqs"].max() <= size
    # batch prefills of thousands of tokens: far beyond the counts tabulated for a static scheduler (its
    # batch size), priced by the kernel's own transcription of the token terms
    assert _formations(res)["batch_tokens"].max() > 10 * size


def test_static_with_a_batch_of_one_equals_step_mode():
    res = _assert_same_as_step_mode(_azure(120, 1.0), [InstanceConfig(_h100(), 2400, 16, "static",
                                                                      {"max_batch_size": 1})])
    assert res.timeline["batch_seqs"].max() == 1
    # one request at a time, FCFS: each is scheduled when the previous one finishes (or when it arrives)
    req = res.requests
    assert (req["scheduled_time_s"].iloc[1:].to_numpy() >= req["finish_time_s"].iloc[:-1].to_numpy()).all()


def test_small_kv_limits_the_batch_and_equals_step_mode():
    """KV for prompt + output of each member is reserved at formation: with 700 blocks (11,200 tokens)
    batches stay far below 32 members although the queue grows past that."""
    res = _assert_same_as_step_mode(_azure(300, 4.0), [InstanceConfig(_h100(), 700, 16, "static")])
    assert res.timeline["batch_seqs"].max() < 32 <= res.timeline["waiting"].max()
    assert res.timeline["kv_used_blocks"].max() <= 700


@pytest.mark.parametrize("router", ["round-robin", "random", "least-outstanding-tokens", "kv-aware"])
def test_static_behind_every_router_equals_step_mode(router):
    """Three instances of different KV capacities: routing reads their state as of each arrival."""
    step = _h100()
    instances = [InstanceConfig(step, blocks, 16, "static", {"max_batch_size": 8}) for blocks in (500, 900, 1400)]
    res = _assert_same_as_step_mode(_azure(300, 6.0), instances, router=router, seed=7)
    assert sorted(res.requests["instance"].unique()) == [0, 1, 2]


def test_long_prompts_beyond_every_grid_equal_step_mode():
    """Prompts of 6,000-9,000 tokens, 8 to a batch: batch prefills of up to 72,000 tokens, beyond the
    profile's token grids (16,384) too, so the linear ops extrapolate (Grid1D's rule past the last point),
    on TP 2 (the all-reduce terms)."""
    df = pd.DataFrame({"request_id": range(24), "arrival_time_s": [0.05 * (i // 8) for i in range(24)],
                       "prompt_tokens": [6000 + 125 * i for i in range(24)], "output_tokens": 20})
    cfg = InstanceConfig(_h100(tp=2), 20000, 16, "static", {"max_batch_size": 8})
    res = _assert_same_as_step_mode(Trace(df, name="long"), [cfg])
    assert res.timeline["batch_tokens"].max() > 16384


def test_token_terms_beyond_the_tables_are_the_models():
    """The kernel's transcription of ProfiledStepTime._token_terms_s, against the model, bit for bit, at
    counts inside and beyond the profile's grids, with and without TP all-reduces."""
    from simulators.compiled import kernel as K

    for tp in (1, 2):
        model = _h100(tp=tp)
        ip, fp, tables = _tabulate(model, 4, 4)  # tables up to 4 tokens: every count below is computed
        tok_lin, tok_elem, tok_comm = tables[:3]
        op_x, op_y, op_len, elem_bytes = tables[-4:]
        # ~2,000 counts (a reordered float operation changes the last bit of some 10 % of them)
        for n in [5, 17, 100, 1000, 4097, 16384, 16385, 333_333, *range(23, 400_000, 199)]:
            want = model._token_terms_s(n)
            got = K._token_terms(ip, fp, tok_lin, tok_elem, tok_comm, op_x, op_y, op_len, elem_bytes, n)
            assert got == (want[0], want[1], want[2] if tp > 1 else 0.0), (tp, n)


def test_static_with_prefix_ids_equals_step_mode():
    """Mooncake's prefix ids: static batching allocates without hashes and never probes the cache (no
    prefix hits), but a finished request's blocks stay cached under its ids and count as evictable."""
    trace = load_trace("mooncake-conversation").head(80)
    trace = Trace(trace.df.assign(prompt_tokens=trace.df["prompt_tokens"].clip(upper=12000)), name="mooncake",
                  prefix_block_tokens=trace.prefix_block_tokens)
    res = _assert_same_as_step_mode(trace, [InstanceConfig(_h100(), 3000, 16, "static", {"max_batch_size": 8})] * 2,
                                    router="kv-aware")
    assert res.num_unfinished == 0 and res.requests["cached_tokens"].sum() == 0
    shared = _with_prefix_ids([(1, 2, 3), (1, 2, 4), (1, 5)], 512)
    _assert_same_as_step_mode(shared, [InstanceConfig(_h100(), 400, 16, "static", {"max_batch_size": 2})],
                              hash_own_blocks=True)


def test_static_on_prefill_decode_pairs_equals_step_mode():
    """Handed-off requests arrive on the decode instance with their prompt computed: its first step is a decode."""
    trace = _azure(200, 4.0)
    step = _h100()
    pair = [InstanceConfig(step, 2000, 16, "static", {"max_batch_size": 8}, role="prefill", kv_bytes_per_token=131072),
            InstanceConfig(step, 400, 16, "static", {"max_batch_size": 8}, role="decode")]
    res = _assert_same_as_step_mode(trace, pair)
    assert res.num_unfinished == 0 and set(res.requests["instance"]) == {1}  # finished on the decode side


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 300), st.integers(1, 80)), min_size=1, max_size=25),
       blocks=st.integers(24, 80), size=st.integers(1, 6), count=st.integers(1, 3), hashed=st.booleans(),
       router=st.sampled_from(["round-robin", "random", "least-outstanding-tokens", "kv-aware"]))
def test_static_on_random_small_runs_equals_step_mode(rows, blocks, size, count, hashed, router):
    df = pd.DataFrame(sorted(rows), columns=["arrival_time_s", "prompt_tokens", "output_tokens"])
    df.insert(0, "request_id", range(len(df)))
    blocks = max(blocks, int(-(-(df["prompt_tokens"] + df["output_tokens"]).max() // 16)))
    step = _h100()
    instances = [InstanceConfig(step, blocks + 7 * k, 16, "static", {"max_batch_size": size}) for k in range(count)]
    _assert_same_as_step_mode(Trace(df, name="random"), instances, router=router, hash_own_blocks=hashed)
