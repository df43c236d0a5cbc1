"""Pipelined SimPy engine (issue 5 item 6): hand-checked latencies, invariants, offline/online modes, determinism.

The engine is driven by small routers defined here (a fixed path, a seeded random choice), so these tests
do not depend on Helix's formulation; the last test plugs Helix's IWRR router into a bundled real cluster.
"""
import math
import random

import pandas as pd
import pytest

from gpusched.errors import ConfigError, ProfileError
from gpusched.policy import PipelineStage
from gpusched.workload import Trace
from simulators.pipeline import simulate_pipeline
from simulators.pipeline.spec import LayerLatency, PipelineCluster, PipelineLink, PipelineNode

# P(x) = 1 ms per prompt token per layer, D(x) = 1 ms per decode token per layer (both linear)
LIN = LayerLatency((0, 100), (0.0, 0.1), (0, 10), (0.0, 0.01))


def _cluster(ranges, links, kv=10**6, L=None, **node_kw):
    nodes = {n: PipelineNode(s, e, LIN, kv, **node_kw) for n, (s, e) in ranges.items()}
    return PipelineCluster(L or max(e for _, e in ranges.values()), nodes,
                           {k: PipelineLink(*v) for k, v in links.items()},
                           activation_bytes_per_token=8, token_bytes=2, copy_bandwidths_bytes_per_s=())


def _trace(rows):
    return Trace(pd.DataFrame(rows, columns=["request_id", "arrival_time_s", "prompt_tokens", "output_tokens"]),
                 name="t")


class FixedRouter:
    """Always the same pipeline; counts calls."""

    name = "fixed"

    def __init__(self, stages):
        self.stages, self.routed, self.decodes, self.released = stages, 0, 0, 0

    def route(self, request, nodes, now_s):
        self.routed += 1
        return self.stages

    def on_decode(self, request, now_s):
        self.decodes += 1

    def release(self, request, now_s):
        self.released += 1


class RandomPathRouter:
    """Seeded random choice among fixed candidate pipelines (a stand-in for a baseline router)."""

    name = "random-path"

    def __init__(self, paths, seed=0):
        self.paths, self.rng = paths, random.Random(seed)

    def route(self, request, nodes, now_s):
        return self.paths[self.rng.randrange(len(self.paths))]

    def on_decode(self, request, now_s):
        pass

    def release(self, request, now_s):
        pass


def test_single_node_latency_by_hand():
    # links 1000 B/s, 10 ms; prompt 10 tokens, 3 output tokens, node A holds 2 layers.
    # S->A: 10*2 B / 1000 + 0.01 = 0.03; A: 2 layers * P(10) = 0.02 -> 0.05; A->T: 0.03 -> first token 0.08.
    # decode step: S->A 2 B -> 0.012; A 2 * D(1) = 0.002; A->T 0.012: 0.026 per step; two steps -> 0.132.
    cl = _cluster({"A": (0, 2)}, {("source", "A"): (1000, 0.01), ("A", "sink"): (1000, 0.01)})
    router = FixedRouter([PipelineStage("A", 0, 2)])
    res = simulate_pipeline(cl, router, _trace([[0, 0.0, 10, 3]]), duration_s=10)
    r = res.requests.iloc[0]
    assert r.status == "finished"
    assert r.first_token_time_s == pytest.approx(0.08)
    assert r.decode_latency_s == pytest.approx(0.026)
    assert r.finish_time_s == pytest.approx(0.132)
    assert (router.routed, router.decodes, router.released) == (1, 2, 1)
    assert res.summary["decode_tokens_in_window"] == 2


def test_two_node_latency_by_hand():
    # A[0,1) -> B[1,2); A-B link 1000 B/s, 5 ms, carries tokens * (tau + alpha) = 10 B/token.
    # prompt 10: S->A 0.03; A P(10) 0.01 -> 0.04; A->B 100 B: 0.1 + 0.005 -> 0.145; B 0.01 -> 0.155;
    # B->T 0.03 -> 0.185 (first token). decode: 0.012 + 0.001 + (0.01 + 0.005) + 0.001 + 0.012 = 0.041.
    cl = _cluster({"A": (0, 1), "B": (1, 2)}, {("source", "A"): (1000, 0.01), ("A", "B"): (1000, 0.005),
                                               ("B", "sink"): (1000, 0.01)})
    res = simulate_pipeline(cl, FixedRouter([PipelineStage("A", 0, 1), PipelineStage("B", 1, 2)]),
                            _trace([[0, 0.0, 10, 2]]), duration_s=10)
    r = res.requests.iloc[0]
    assert r.first_token_time_s == pytest.approx(0.185)
    assert r.finish_time_s == pytest.approx(0.185 + 0.041)
    assert r.prompt_latency_s == pytest.approx(0.185) and r.decode_latency_s == pytest.approx(0.041)


def test_simultaneous_prompts_share_a_batch_and_the_link_serialises():
    # two prompts of 10 at t = 0 on one node holding 1 layer, instant node links except bandwidth:
    # S->A is FIFO: first arrives at 0.02, second at 0.04 (20 B each at 1000 B/s, no latency).
    # A runs the first alone (0.02 -> 0.03), then the second (0.04 -> 0.05); A->T 0.02 each.
    cl = _cluster({"A": (0, 1)}, {("source", "A"): (1000, 0.0), ("A", "sink"): (1000, 0.0)})
    res = simulate_pipeline(cl, FixedRouter([PipelineStage("A", 0, 1)]),
                            _trace([[0, 0.0, 10, 1], [1, 0.0, 10, 1]]), duration_s=10, record_batches=True)
    assert list(res.requests.first_token_time_s) == pytest.approx([0.05, 0.07])
    # a busy node batches what queued meanwhile: r0 (t = 0) runs P(10) = 0.01 alone; r1, r2 arrive at 1 and
    # 2 ms, queue, and run together as one batch of P(20) = 0.02 from 0.01 to 0.03 (links ~instant).
    cl = _cluster({"A": (0, 1)}, {("source", "A"): (1e12, 0.0), ("A", "sink"): (1e12, 0.0)})
    res = simulate_pipeline(cl, FixedRouter([PipelineStage("A", 0, 1)]),
                            _trace([[0, 0.0, 10, 1], [1, 0.001, 10, 1], [2, 0.002, 10, 1]]), duration_s=10,
                            record_batches=True)
    assert res.batches["items"].tolist() == [1, 2]
    assert list(res.requests.first_token_time_s) == pytest.approx([0.01, 0.03, 0.03])


def _diamond(kv=10**6):
    links = {("source", "A"): (1e6, 0.001), ("source", "B"): (1e6, 0.001), ("A", "C"): (1e6, 0.002),
             ("B", "C"): (1e6, 0.002), ("C", "sink"): (1e6, 0.001)}
    return _cluster({"A": (0, 2), "B": (0, 2), "C": (2, 3)}, links, kv=kv, decode_max_tokens=8,
                    prompt_max_tokens=300)


PATHS = [[PipelineStage("A", 0, 2), PipelineStage("C", 2, 3)], [PipelineStage("B", 0, 2), PipelineStage("C", 2, 3)]]


def _rows(n, seed=0):
    rng = random.Random(seed)
    return [[i, i * 0.05, rng.randint(5, 200), rng.randint(1, 30)] for i in range(n)]


def test_invariants_under_kv_pressure():
    # KV of C = 3000 slots: a request reserves (prompt + output) * 1 slot on C, so only a few fit at once
    rows = _rows(60) + [[60, 3.5, 5000, 5]]  # the last never fits: reported, not dropped
    res = simulate_pipeline(_diamond(kv=3000), RandomPathRouter(PATHS, seed=2), _trace(rows), duration_s=500,
                            kv_mode="reserve")
    req = res.requests
    assert len(req) == 61
    assert (req.status == "finished").sum() == 60
    assert req.set_index("request_id").status[60].startswith("rejected")
    fin = req[req.status == "finished"]
    assert (fin.generated_tokens == fin.output_tokens).all()
    assert (res.nodes.kv_peak_slots <= res.nodes.kv_capacity_slots).all()
    assert res.nodes.set_index("node").kv_peak_slots["C"] > 2000  # the pressure was real
    # tokens conserved per node: each finished request passes C with its prompt and output - 1 decode steps
    assert res.nodes.set_index("node").tokens["C"] == (fin.prompt_tokens + fin.output_tokens - 1).sum()
    a_b = res.nodes.set_index("node").tokens[["A", "B"]].sum()
    assert a_b == (fin.prompt_tokens + fin.output_tokens - 1).sum()
    assert (fin.first_token_time_s >= fin.arrival_time_s).all() and (fin.finish_time_s >= fin.first_token_time_s).all()


def test_unfinished_requests_have_a_reason():
    res = simulate_pipeline(_diamond(kv=3000), RandomPathRouter(PATHS), _trace(_rows(60)), duration_s=2.0,
                            kv_mode="reserve")
    st = res.requests.status
    assert st.isin(["finished"]).any() and (~st.isin(["finished"])).any()
    assert st[st != "finished"].str.startswith("unfinished:").all()
    assert res.summary["finished"] + res.summary["unfinished"] + res.summary["rejected"] == len(st)


def test_deterministic_with_seed():
    runs = [simulate_pipeline(_diamond(3000), RandomPathRouter(PATHS, seed=5), _trace(_rows(40)), duration_s=50,
                              kv_mode="reserve") for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0].requests, runs[1].requests)
    pd.testing.assert_frame_equal(runs[0].nodes, runs[1].nodes)


def test_offline_closed_loop_keeps_in_flight():
    res = simulate_pipeline(_diamond(), RandomPathRouter(PATHS), _trace(_rows(400)), mode="offline",
                            duration_s=5.0, warmup_s=1.0, offline_in_flight=7)
    req = res.requests
    assert (req.status.str.startswith("unfinished")).sum() == 7  # the loop is always full
    assert (req.status == "finished").sum() == len(req) - 7
    # launches happen at finishes: at every launch time (after 0) exactly one request finished
    later = req.arrival_time_s[req.arrival_time_s > 0]
    assert set(later.round(12)) <= set(req.finish_time_s.dropna().round(12))
    assert res.decode_throughput_tokens_per_s == res.summary["decode_tokens_in_window"] / 4.0
    # Helix's KV-usage feeder: launch while the bottleneck layer's KV use <= threshold
    res = simulate_pipeline(_diamond(kv=3000), RandomPathRouter(PATHS), _trace(_rows(400)), mode="offline",
                            duration_s=5.0, offline_kv_threshold=0.5, kv_mode="reserve", offline_feeder="fill")
    assert (res.nodes.kv_peak_slots <= res.nodes.kv_capacity_slots).all() and res.summary["finished"] > 0


def test_bad_inputs():
    cl = _cluster({"A": (0, 2)}, {("source", "A"): (1000, 0.01), ("A", "sink"): (1000, 0.01)})
    with pytest.raises(ConfigError, match="does not continue"):
        simulate_pipeline(cl, FixedRouter([PipelineStage("A", 1, 2)]), _trace([[0, 0.0, 10, 3]]), duration_s=1)
    with pytest.raises(ConfigError, match="ends at layer"):
        simulate_pipeline(cl, FixedRouter([PipelineStage("A", 0, 1)]), _trace([[0, 0.0, 10, 3]]), duration_s=1)
    with pytest.raises(ConfigError, match="no link"):
        c2 = _cluster({"A": (0, 2)}, {("source", "A"): (1000, 0.01)})
        simulate_pipeline(c2, FixedRouter([PipelineStage("A", 0, 2)]), _trace([[0, 0.0, 10, 3]]), duration_s=1)
    with pytest.raises(ConfigError, match="unknown node"):
        _cluster({"A": (0, 2)}, {("source", "Z"): (1000, 0.01)})
    with pytest.raises(ConfigError, match="mode"):
        simulate_pipeline(cl, FixedRouter([]), _trace([[0, 0.0, 10, 3]]), mode="batch")
    with pytest.raises(ProfileError, match="strictly increasing"):
        LayerLatency((0, 10, 10), (0, 1, 2), (0, 1), (0, 1))


def test_latency_interpolation_and_extrapolation():
    lat = LayerLatency((0, 100, 200), (0.0, 0.1, 0.3), (0, 10), (0.0, 0.01))
    assert lat.prompt_s(0) == 0 and lat.prompt_s(150) == pytest.approx(0.2)
    assert lat.prompt_s(300) == pytest.approx(0.5)  # last segment (slope 0.002 s/token) extended
    assert lat.layer_s(50, 5) == pytest.approx(0.05 + 0.005)


def test_helix_router_on_bundled_cluster():
    # formulation + engine wired by the experiment glue on the real single 24-node cluster, briefly
    from experiments.helix_setup import kv_capacities, pipeline_cluster, prompt_limits
    from formulations.helix import DATA_DIR, HelixRouter, load_helix_placement, load_helix_problem

    pr = load_helix_problem(DATA_DIR / "clusters" / "single24.ini", "llama2_70b")
    pl = load_helix_placement(DATA_DIR / "placements" / "single24_70b_ilp.ini", pr)
    cl = pipeline_cluster(DATA_DIR / "clusters" / "single24.ini", "llama2_70b", pl)
    router = HelixRouter(pr, pl, kv_capacities(cl), mode="online", prompt_max_tokens=prompt_limits(cl))
    rows = [[i, 0.5 * i, 700, 20] for i in range(20)]
    res = simulate_pipeline(cl, router, _trace(rows), duration_s=30)
    assert (res.requests.status == "finished").all()
    assert (res.nodes.kv_peak_slots <= res.nodes.kv_capacity_slots).all()
    # every pipeline covers layers 0..80 over chaining nodes, as the max-flow graph allows
    assert (res.requests.num_stages >= 1).all()


def test_a_malformed_latency_table_is_a_located_profile_error(tmp_path):
    """Helix latency tables (ms per layer): a negative time, a NaN and a non-UTF-8 byte each name the file and line."""
    from gpusched.errors import ProfileError
    from simulators.pipeline.spec import load_layer_latency

    good = "1,0.5\n100,1.0\n"
    for bad, where in (("1,0.5\n100,-1.0\n", "line 2"), ("1,0.5\nnan,1.0\n", "line 2"),
                       (b"1,0.5\n100,1.0\n200,\xff\n", "line 3")):
        folder = tmp_path / str(abs(hash(bad)))
        folder.mkdir()
        (folder / "decode_bs2time.csv").write_text(good)
        path = folder / "prompt_bs2time.csv"
        path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
        with pytest.raises(ProfileError, match=f"prompt_bs2time.csv.*{where}"):
            load_layer_latency(folder)
