"""Separate-pipeline baselines (SP / SP+, spec §1.d "Baselines"): chain clusters built from the artifact's
hand-split layouts. Expected values are transcribed from the artifact (layer splits of
``layout_llama70b/separate/*solution_file.ini``, ``kv_cache_capacity`` of the matching simulator files) and
from the bundled T(k) table's rows (T4 at k = 4: decode_max_tokens 300), not computed by the code under test.
"""
import pandas as pd

from experiments.helix_separate import chain_cluster, separate_chains
from gpusched.policy import PipelineRouter, PipelineStage
from gpusched.workload import Trace
from simulators.pipeline import simulate_pipeline
from simulators.pipeline.routers import FixedPipelineRouter


def test_single24_sp_layouts_follow_the_artifact():
    a100, l4, t4 = separate_chains("single24", "sp")
    cl = chain_cluster(t4, "llama2_70b", "single24")
    # 12 T4: 4 x 6 layers then 8 x 7 -> [0,6) [6,12) [12,18) [18,24) [24,31) ... [73,80)
    ranges = [(n.start_layer, n.end_layer) for n in cl.nodes.values()]
    assert ranges[:5] == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 31)] and ranges[-1] == (73, 80)
    assert [n.kv_capacity_slots for n in cl.nodes.values()] == [216960] * 4 + [44800] * 8
    assert all(n.decode_max_tokens == 300 for n in cl.nodes.values())  # T4 row k = 4 (K_T4 = 4 < 6, 7)
    assert cl.link(0, 1).bandwidth_bytes_per_s == 1e9 and cl.link("source", 0).latency_s == 1e-3
    assert [len(c.layers) for c in (a100, l4)] == [4, 8] and (a100.offline_in_flight, l4.offline_in_flight) == (18, 40)
    plus = separate_chains("cluster42", "sp+")
    assert [c.name for c in plus] == ["A100", "L4", "L4x2", "T4x4", "V100+T4"]
    mixed = chain_cluster(plus[-1], "llama2_70b", "cluster42")
    assert [n.gpu_type for n in mixed.nodes.values()] == ["V100"] * 6 + ["T4"] * 10 and mixed.num_layers == 80


def test_fixed_router_serves_a_chain():
    _, l4, _ = separate_chains("single24", "sp")
    cl = chain_cluster(l4, "llama2_70b", "single24")
    router = FixedPipelineRouter([PipelineStage(n, s.start_layer, s.end_layer) for n, s in cl.nodes.items()])
    assert isinstance(router, PipelineRouter)
    rows = pd.DataFrame([[i, 0.2 * i, 300, 5] for i in range(5)],
                        columns=["request_id", "arrival_time_s", "prompt_tokens", "output_tokens"])
    res = simulate_pipeline(cl, router, Trace(rows, name="t"), duration_s=60)
    assert (res.requests.status == "finished").all() and (res.requests.num_stages == 8).all()
