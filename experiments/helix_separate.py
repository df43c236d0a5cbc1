"""Helix's "separate pipelines" baselines (SP, SP+; spec §1.d "Baselines") as engine clusters.

SP: each GPU type forms its own homogeneous chain with layers split evenly by hand; every chain is its own
cluster with its own coordinator, and the system's decode throughput is the sum over chains. The layouts
ignore the per-node layer limit ``K_i`` (the artifact's ``allow_force_set``), so

* **KV capacity** per node comes from the artifact's SP simulator files (``layout_llama70b/separate/
  *simulator_cluster.ini``, ``kv_cache_capacity``), not from the ``T_i(k)`` table (which stops at ``K_i``);
  the 42-node A100 and L4 chains reuse the single-cluster files' values (same GPU, same layer count);
* **batch limits** (prompt requests/tokens, decode tokens) are those of the largest profiled ``k <= K_i``
  (our choice: the artifact's forced settings are not written out anywhere);
* **links**: a chain with 1 "gbps" (1 GB/s) and 1 ms per hop, source and sink included, as in those files.

Per chain: the offline in-flight count (Helix's ``initial_feed_num``; its ``Naive`` scheduler cannot refuse
work, so the feeder keeps that many requests in flight one-for-one) and the online offered rate
(``avg_throughput``, tokens/s), both from the artifact's ``step3_simulation.py``. The 42-node SP leaves
the V100, T4 and 2xT4 machines idle (they cannot form a chain); SP+ adds one mixed V100+T4 chain of
16 x 5 layers.
"""
from __future__ import annotations

from dataclasses import dataclass

from experiments.helix_setup import gpu_latency, node_settings
from gpusched.errors import UnknownNameError
from simulators.pipeline.spec import PipelineCluster, PipelineLink, PipelineNode

LINK = PipelineLink(1e9, 1e-3)


@dataclass(frozen=True)
class SeparateChain:
    """One homogeneous (or SP+ mixed) chain: ``layers[i]`` layers on node i of ``gpu_types[i]``."""

    name: str
    gpu_types: tuple[str, ...]
    layers: tuple[int, ...]
    kv_capacity_slots: tuple[int, ...]
    offline_in_flight: int
    online_tokens_per_s: float


def _chain(name, gpu, layers, kv, feed, rate, gpus=None):
    return SeparateChain(name, tuple(gpus or [gpu] * len(layers)), tuple(layers),
                         tuple(kv if isinstance(kv, list) else [kv] * len(layers)), feed, rate)


A100_SP = _chain("A100", "A100", [20] * 4, 491900, 18, 240.0)
L4_SP = _chain("L4", "L4", [10] * 8, 593600, 40, 120.0)
SEPARATE = {
    # single 24-node, LLaMA-2-70B: 4 A100 x 20, 8 L4 x 10, 12 T4 x 6-7 (4 x 6 then 8 x 7)
    ("single24", "sp"): (A100_SP, L4_SP,
                         _chain("T4", "T4", [6] * 4 + [7] * 8, [216960] * 4 + [44800] * 8, 3, 10.0)),
    # 42-node: A100, L4, 2xL4 and 4xT4 chains; SP+ adds V100 + T4 (6 + 10 nodes x 5 layers)
    ("cluster42", "sp"): (
        _chain("A100", "A100", [20] * 4, 491900, 1, 1.0), _chain("L4", "L4", [10] * 8, 593600, 60, 140.0),
        _chain("L4x2", "L4x2", [20] * 4, 853088, 35, 160.0), _chain("T4x4", "T4x4", [20] * 4, 2948608, 110, 350.0)),
}
SEPARATE[("cluster42", "sp+")] = SEPARATE[("cluster42", "sp")] + (
    _chain("V100+T4", None, [5] * 16, 670784, 90, 200.0, gpus=["V100"] * 6 + ["T4"] * 10),)

#: the ``cluster_mix`` whose T(k) rows give the batch limits
MIX = {"single24": "24node_A100x4_L4x8_T4x12", "cluster42": "42node"}


def separate_chains(cluster: str, system: str) -> tuple[SeparateChain, ...]:
    try:
        return SEPARATE[(cluster, system)]
    except KeyError:
        raise UnknownNameError(f"no separate-pipeline layout {system!r} for cluster {cluster!r}; "
                               f"known: {sorted(SEPARATE)}") from None


def chain_cluster(chain: SeparateChain, model: str, cluster: str) -> PipelineCluster:
    """A :class:`PipelineCluster` of one chain: nodes ``0..n-1`` linked source -> 0 -> ... -> n-1 -> sink."""
    settings = node_settings(model, MIX[cluster])
    nodes, start = {}, 0
    for i, (g, k, kv) in enumerate(zip(chain.gpu_types, chain.layers, chain.kv_capacity_slots)):
        top = max(kk for gg, kk in settings if gg == g)  # largest profiled layer count (k may exceed K_i)
        s = settings[(g, min(k, top))]
        nodes[i] = PipelineNode(start, start + k, gpu_latency(model, g),
                                kv_capacity_slots=kv, prompt_max_requests=s["prompt_max_requests"],
                                prompt_max_tokens=s["prompt_max_tokens"], decode_max_tokens=s["decode_max_tokens"],
                                gpu_type=g)
        start += k
    n = len(nodes)
    links = {("source", 0): LINK, (n - 1, "sink"): LINK, **{(i, i + 1): LINK for i in range(n - 1)}}
    return PipelineCluster(start, nodes, links)
