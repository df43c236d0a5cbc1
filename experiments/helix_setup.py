"""Glue between Helix's formulation and the pipelined engine: placed cluster -> :class:`PipelineCluster`.

Lives in ``experiments`` because it reads both sides: the artifact's cluster file, ``T_i(k)`` table (KV
capacity in token-layer slots and batch limits per GPU type and layer count) and per-layer latency CSVs,
all bundled under ``formulations/helix/data``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Hashable, Mapping

import pandas as pd

from formulations.helix import DATA_DIR, HELIX_MODELS, read_cluster_ini
from gpusched.errors import ConfigError, UnknownNameError
from simulators.pipeline.spec import LayerLatency, PipelineCluster, PipelineLink, PipelineNode, load_layer_latency

LATENCY_DIR = DATA_DIR / "latency"

#: the ``cluster_mix`` label of ``node_throughput_T_k.csv`` per bundled cluster file
CLUSTER_MIX = {"single24.ini": "24node_A100x4_L4x8_T4x12", "geo24.ini": "24node_A100x4_L4x8_T4x12",
               "cluster42.ini": "42node", "cluster10.ini": "10node_L4x4_T4x6"}


@lru_cache(maxsize=None)
def gpu_latency(model: str, gpu_type: str) -> LayerLatency:
    """Per-layer latency table of ``gpu_type`` for ``model`` (read once per process; the table is immutable)."""
    return load_layer_latency(LATENCY_DIR / model / gpu_type.lower())


def node_settings(model: str, cluster_mix: str, throughput_csv: Path = DATA_DIR / "node_throughput_T_k.csv"
                  ) -> dict[tuple[str, int], dict]:
    """``{(gpu_type, k): {kv_capacity_slots, prompt_max_requests, prompt_max_tokens, decode_max_tokens}}``."""
    df = pd.read_csv(throughput_csv)
    df = df[(df["model"] == model) & (df["cluster_mix"] == cluster_mix)]
    if df.empty:
        raise UnknownNameError(f"no T(k) rows for model {model!r} and cluster_mix {cluster_mix!r} in {throughput_csv}")
    return {(r.gpu_type, int(r.k_layers)): {
        "kv_capacity_slots": int(r.kv_capacity_token_layer_slots), "prompt_max_requests": int(r.prompt_max_requests),
        "prompt_max_tokens": int(r.prompt_max_tokens), "decode_max_tokens": int(r.decode_max_tokens)}
        for r in df.itertuples()}


def pipeline_cluster(cluster_ini: str | Path, model: str, placement: Mapping[Hashable, tuple[int, int]],
                     cluster_mix: str | None = None) -> PipelineCluster:
    """The engine's view of a placed artifact cluster (bandwidths as bytes/s, latencies in s)."""
    cluster_ini = Path(cluster_ini)
    if model not in HELIX_MODELS:
        raise UnknownNameError(f"unknown model {model!r}; known: {sorted(HELIX_MODELS)}")
    mix = cluster_mix or CLUSTER_MIX.get(cluster_ini.name)
    if mix is None:
        raise ConfigError(f"no cluster_mix known for {cluster_ini.name}; pass cluster_mix (see {sorted(CLUSTER_MIX)})")
    types, links = read_cluster_ini(cluster_ini)
    settings = node_settings(model, mix)
    nodes = {}
    for n, (s, e) in placement.items():
        if n not in types:
            raise UnknownNameError(f"placement names node {n!r}, not in {cluster_ini.name}")
        g = types[n]
        key = (g, e - s)
        if key not in settings:
            raise ConfigError(f"node {n} ({g}) holds {e - s} layers; the T(k) table has no KV/batch settings for it")
        nodes[n] = PipelineNode(s, e, gpu_latency(model, g), gpu_type=g, **settings[key])
    plinks = {(u, v): PipelineLink(bw, lat) for u, v, bw, lat in links}
    m = HELIX_MODELS[model]
    return PipelineCluster(m.num_layers, nodes, plinks, activation_bytes_per_token=m.activation_size_bytes)


def kv_capacities(cluster: PipelineCluster) -> dict:
    """``{node: KV_i}`` token-layer slots, for Helix's KV-expectation admission."""
    return {n: s.kv_capacity_slots for n, s in cluster.nodes.items()}


def prompt_limits(cluster: PipelineCluster) -> dict:
    return {n: s.prompt_max_tokens for n, s in cluster.nodes.items()}
