"""Engine-side pipeline routers that need no formulation.

* :class:`FixedPipelineRouter` — every request takes the same stages. On a single chain of nodes (Helix's
  "separate pipelines" baseline, SP / SP+) this is what any router does, Helix's ``Naive`` (random)
  scheduler included, because the chain is the only source-to-sink path.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

from gpusched.errors import ConfigError
from gpusched.policy import PipelineNodeView, PipelineStage, SeqState


class FixedPipelineRouter:
    """Routes every request along ``stages`` (validated by the engine against the cluster)."""

    def __init__(self, stages: Sequence[PipelineStage], name: str = "fixed-pipeline") -> None:
        if not stages:
            raise ConfigError("FixedPipelineRouter needs at least one stage")
        self.stages = list(stages)
        self.name = name

    def route(self, request: SeqState, nodes: Mapping[Hashable, PipelineNodeView],
              now_s: float) -> list[PipelineStage]:
        return self.stages

    def on_decode(self, request: SeqState, now_s: float) -> None:
        pass

    def release(self, request: SeqState, now_s: float) -> None:
        pass
