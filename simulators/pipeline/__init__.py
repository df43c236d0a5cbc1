"""The pipelined serving engine: layer-partitioned heterogeneous clusters (Helix-style).

Each request travels a per-request chain of nodes, each computing a layer range, chosen by a
:class:`gpusched.policy.PipelineRouter` (where a placement/scheduling policy plugs in). The cluster
description is in :mod:`.spec`, the engine in :mod:`.engine`, results in :mod:`.results`, a fixed-chain
router in :mod:`.routers`.
"""
from simulators.pipeline.engine import PipelineEngine, simulate_pipeline
from simulators.pipeline.spec import LayerLatency, PipelineCluster, PipelineLink, PipelineNode, load_layer_latency

__all__ = ["LayerLatency", "PipelineCluster", "PipelineEngine", "PipelineLink", "PipelineNode",
           "load_layer_latency", "simulate_pipeline"]
