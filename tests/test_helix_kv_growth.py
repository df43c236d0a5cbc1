"""Helix's KV behaviour in the pipelined engine (issue 5 item 6, spec §1.c-6/7): KV allocated for the prompt at
admission and grown by one token per decode step ("grow", the default, as Helix's ``KVCache``), versus the
full-footprint oracle ("reserve"); overflow stops the run; Helix's offline feeder launches one request per
finished prompt / request and reads the router's KV expectation. Expected values are hand-computed below.
"""
import pandas as pd
import pytest

from gpusched.errors import ConfigError, KVCacheOverflowError
from gpusched.policy import KVExpectingRouter, PipelineStage
from gpusched.workload import Trace
from simulators.pipeline import simulate_pipeline
from simulators.pipeline.spec import LayerLatency, PipelineCluster, PipelineLink, PipelineNode

LIN = LayerLatency((0, 100), (0.0, 0.1), (0, 10), (0.0, 0.01))  # 1 ms per token per layer


def _one_node(kv):
    node = PipelineNode(0, 2, LIN, kv)
    links = {("source", "A"): PipelineLink(1000, 0.01), ("A", "sink"): PipelineLink(1000, 0.01)}
    return PipelineCluster(2, {"A": node}, links, activation_bytes_per_token=8, token_bytes=2,
                           copy_bandwidths_bytes_per_s=())


def _trace(rows):
    return Trace(pd.DataFrame(rows, columns=["request_id", "arrival_time_s", "prompt_tokens", "output_tokens"]),
                 name="t")


class Fixed:
    name = "fixed"

    def __init__(self, expected=None):
        self.expected = expected

    def route(self, request, nodes, now_s):
        return [PipelineStage("A", 0, 2)]

    def on_decode(self, request, now_s):
        pass

    def release(self, request, now_s):
        pass


class Expecting(Fixed):
    """Reports a constant expected KV use, as Helix's scheduler would."""

    def expected_kv_used_slots(self):
        return {"A": self.expected}


def test_kv_grows_per_decode_token():
    # prompt 10 on 2 layers: 20 slots at admission; output 3 = prompt pass + 2 decode steps, each adding
    # 2 slots -> peak 24. The oracle reserves (10 + 3) * 2 = 26 at once. Timing is unchanged (0.132 s).
    grow = simulate_pipeline(_one_node(10**6), Fixed(), _trace([[0, 0.0, 10, 3]]), duration_s=10)
    res = simulate_pipeline(_one_node(10**6), Fixed(), _trace([[0, 0.0, 10, 3]]), duration_s=10, kv_mode="reserve")
    assert grow.nodes.kv_peak_slots[0] == 24 and res.nodes.kv_peak_slots[0] == 26
    assert grow.requests.finish_time_s[0] == pytest.approx(0.132) == res.requests.finish_time_s[0]


def test_admission_needs_only_the_prompt_and_overflow_stops_the_run():
    # capacity 23: reserve mode refuses the request forever (26 > 23, reported as rejected on an idle cluster);
    # grow mode admits it (20 <= 23), the 1st decode step takes it to 22, the 2nd would need 24 > 23 -> error.
    res = simulate_pipeline(_one_node(23), Fixed(), _trace([[0, 0.0, 10, 3]]), duration_s=10, kv_mode="reserve")
    assert res.requests.status[0].startswith("rejected")
    with pytest.raises(KVCacheOverflowError, match="node 'A'.*22 of 23"):
        simulate_pipeline(_one_node(23), Fixed(), _trace([[0, 0.0, 10, 3]]), duration_s=10)
    with pytest.raises(ConfigError, match="kv_mode"):
        simulate_pipeline(_one_node(25), Fixed(), _trace([[0, 0.0, 10, 3]]), kv_mode="lazy")
    with pytest.raises(ConfigError, match="offline_feeder"):
        simulate_pipeline(_one_node(25), Fixed(), _trace([[0, 0.0, 10, 3]]), offline_feeder="greedy")


def test_helix_feeder_launches_one_per_event_and_reads_the_expectation():
    rows = [[i, 0.0, 10, 3] for i in range(500)]
    kw = dict(mode="offline", duration_s=2.0, offline_in_flight=2, offline_kv_threshold=0.8)
    # expectation 0 % used: after the 2 initial requests, every finished prompt and every finished request
    # launches exactly one more, so launched = 2 + first tokens + finishes (all inside the horizon)
    res = simulate_pipeline(_one_node(10**6), Expecting(0), _trace(rows), **kw)
    req = res.requests
    assert len(req) == 2 + req.first_token_time_s.notna().sum() + (req.status == "finished").sum()
    # expectation 90 % used (> 0.8): the feeder launches nothing after the initial 2
    res = simulate_pipeline(_one_node(10**6), Expecting(9 * 10**5), _trace(rows), **kw)
    assert len(res.requests) == 2
    # without an expectation the engine's allocated KV is used: 1e6 slots are never 80 % full here
    res = simulate_pipeline(_one_node(10**6), Fixed(), _trace(rows), **kw)
    assert len(res.requests) > 2
    assert isinstance(Expecting(0), KVExpectingRouter) and not isinstance(Fixed(), KVExpectingRouter)
