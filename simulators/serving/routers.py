"""Baseline routers: which instance serves an arriving request.

- ``round-robin`` — instances in turn.
- ``random`` — uniformly at random (seeded).
- ``least-outstanding-tokens`` — the instance with the fewest prompt + output tokens still to process.
- ``kv-aware`` — the instance with the lowest KV utilisation, ties broken by fewer waiting requests.

Only instances that take new requests are candidates: colocated and prefill ones. A decode instance
receives work by hand-off from a prefill instance; the simulator then asks a router to choose among
the decode instances alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gpusched import registry
from gpusched.errors import ConfigError
from gpusched.policy import InstanceView, SeqState


def _candidates(instances: Sequence[InstanceView]) -> list[InstanceView]:
    """Entry instances among ``instances``; if all are decode instances (a hand-off), all of them."""
    if not instances:
        raise ConfigError("no instance to route to")
    return [v for v in instances if v.role != "decode"] or list(instances)


@dataclass
class RoundRobinRouter:
    name: str = "round-robin"
    _next: int = 0

    def route(self, request: SeqState, instances: Sequence[InstanceView], now_s: float) -> int:
        entry = _candidates(instances)
        choice = entry[self._next % len(entry)]
        self._next += 1
        return choice.index


@dataclass
class RandomRouter:
    seed: int = 0
    name: str = "random"
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)

    def route(self, request: SeqState, instances: Sequence[InstanceView], now_s: float) -> int:
        entry = _candidates(instances)
        return entry[int(self._rng.integers(len(entry)))].index


@dataclass
class LeastOutstandingTokensRouter:
    name: str = "least-outstanding-tokens"

    def route(self, request: SeqState, instances: Sequence[InstanceView], now_s: float) -> int:
        return min(_candidates(instances), key=lambda v: (v.outstanding_tokens, v.index)).index


@dataclass
class KvAwareRouter:
    name: str = "kv-aware"

    def route(self, request: SeqState, instances: Sequence[InstanceView], now_s: float) -> int:
        return min(_candidates(instances), key=lambda v: (v.kv_utilization, v.num_waiting, v.index)).index


ROUTERS = {
    "round-robin": RoundRobinRouter,
    "random": RandomRouter,
    "least-outstanding-tokens": LeastOutstandingTokensRouter,
    "kv-aware": KvAwareRouter,
}
_SUMMARIES = {
    "round-robin": "entry instances in turn",
    "random": "an entry instance uniformly at random (seeded by the run's seed)",
    "least-outstanding-tokens": "the instance with the fewest prompt + output tokens still to process",
    "kv-aware": "the instance with the lowest KV utilisation, then the fewest waiting",
}
for _name, _cls in ROUTERS.items():
    registry.register("router", _name,
                      (lambda context, **knobs: RandomRouter(seed=context.seed, **knobs)) if _cls is RandomRouter
                      else (lambda context, _cls=_cls, **knobs: _cls(**knobs)),
                      _SUMMARIES[_name], "simulators.serving.routers")


def make_router(name: str, seed: int = 0, context: registry.BuildContext | None = None, **knobs):
    """Build a registered router by name (the baselines above or a paper's); ``seed`` feeds random ones."""
    return registry.build("router", name, context or registry.BuildContext(seed=seed), **knobs)
