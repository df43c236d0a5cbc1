"""The engine-neutral interface between gate-and-route policies and whatever runs them.

A policy here only decides; an engine (the exact stochastic model of :mod:`.stochastic`, or a serving
simulator with real step times and KV) owns time, queues and slots, and asks at three moments:

=====================================  =========================================  ==================================
engine moment                          call                                       answer
=====================================  =========================================  ==================================
a GPU may start a prefill              ``policy.admit(view, gpu)``                a class index (its oldest waiting
                                                                                  request prefills on ``gpu``) or
                                                                                  ``None`` (the slot stays idle)
a request finished prefill on ``gpu``  ``policy.route_decode(view, cls, gpu)``    a GPU index with a free decode
                                                                                  slot, or a buffer name (str)
a decode slot freed on ``gpu``         ``policy.pull_decode(view, gpu)``          a buffer name whose oldest
                                                                                  request takes the slot, or ``None``
=====================================  =========================================  ==================================

**GPU roles** are fixed for a run by the policy's plan (:attr:`GateRoutePolicy.roles`, one per GPU):

* ``"mixed"``: one slot reserved for a prefill, plus ``B - 1`` decode slots;
* ``"solo"``: ``B`` decode slots, never prefills;
* ``"shared"``: ``B`` generic slots, at most one of which runs a prefill (the WSP baselines of spec §2.8).

A GPU is in *mixed mode* while it runs a prefill; its decodes then run at the mixed rate, otherwise at the
solo rate (the mode switches of spec §2.4 [R]). "May start a prefill" means: a ``mixed`` GPU whose prefill
slot is idle, or a ``shared`` GPU that runs no prefill and has a free slot. "Free decode slot" means fewer
decodes than ``B - 1`` (mixed), ``B`` (solo), ``B`` minus the running prefill (shared).

**Engine obligations** (what makes runs comparable across engines):

* FCFS within a class: ``admit`` names a class, the engine takes that class's oldest waiting request;
  buffers are FCFS across classes.
* At an arrival, the engine offers every GPU that may start a prefill, lowest index first, until ``admit``
  answers ``None`` (spec §2.4 [R]).
* After a prefill completes on ``gpu``: if :attr:`GateRoutePolicy.prefill_first`, first offer ``gpu`` a new
  prefill, then route the finished request; otherwise route it first. Then fill ``gpu`` (below).
* Filling ``gpu`` after any slot frees: ask ``pull_decode`` while ``gpu`` has a free decode slot and the named
  buffer is not empty, and offer ``gpu`` a prefill; ``prefill_first`` says which comes first.
* A request waiting for prefill or in a decode buffer abandons at its class's rate; in service it never does.
* A GPU index returned by ``route_decode`` must have a free decode slot (the engine checks); an ``"immediate"``
  router returns the prefill's own GPU, whose just-released slot the request keeps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from gpusched.errors import ConfigError

__all__ = ["MIXED", "SOLO", "SHARED", "ROLES", "ClusterView", "Gate", "DecodeRouter", "GateRoutePolicy"]

MIXED, SOLO, SHARED = "mixed", "solo", "shared"
ROLES = (MIXED, SOLO, SHARED)


@runtime_checkable
class ClusterView(Protocol):
    """What a policy reads of the cluster when it decides (the engine keeps it current; read-only).

    Per-class sequences have one entry per class ``i``: ``waiting`` (requests waiting for prefill, ``Q_p,i``),
    ``prefilling`` (requests in prefill, ``X_i``), ``oldest_waiting_s`` (arrival time of the class's oldest
    waiting request, seconds; ``inf`` when none waits). ``roles`` has one role per GPU.
    """

    num_gpus: int
    roles: Sequence[str]
    waiting: Sequence[int]
    prefilling: Sequence[int]
    oldest_waiting_s: Sequence[float]

    def free_decode_gpus(self, role: str) -> Sequence[int]:
        """GPUs of ``role`` with a free decode slot, in the engine's (deterministic) order."""
        ...


@runtime_checkable
class Gate(Protocol):
    """Chooses the class whose oldest waiting request prefills next, or ``None`` (leave the slot idle)."""

    def choose(self, view: ClusterView) -> int | None: ...


@runtime_checkable
class DecodeRouter(Protocol):
    """Places a request that finished prefill, and refills freed decode slots from its buffers."""

    def route(self, view: ClusterView, cls: int, from_gpu: int) -> int | str: ...

    def pull(self, view: ClusterView, gpu: int) -> str | None: ...


@dataclass(frozen=True)
class GateRoutePolicy:
    """A complete policy: the GPU roles of its plan, a gate, a decode router, and the slot priority.

    Attributes:
        name: the policy's name (e.g. ``"gate-and-route"``, ``"fi-wsp"``).
        roles: one role per GPU (``"mixed"``, ``"solo"`` or ``"shared"``); ``len(roles)`` is the cluster size.
        gate: the prefill gate (:class:`Gate`).
        router: the decode router (:class:`DecodeRouter`).
        prefill_first: when a slot frees on a shared GPU, starting a prefill beats serving a buffered decode
            (GF-WSP); otherwise decodes first.
    """

    name: str
    roles: tuple[str, ...]
    gate: Gate
    router: DecodeRouter
    prefill_first: bool = False

    def __post_init__(self) -> None:
        roles = tuple(self.roles)
        if not roles:
            raise ConfigError(f"policy {self.name!r} has no GPUs; give at least one role")
        bad = sorted({r for r in roles if r not in ROLES})
        if bad:
            raise ConfigError(f"policy {self.name!r}: unknown GPU roles {bad}; use {ROLES}")
        object.__setattr__(self, "roles", roles)

    @property
    def num_gpus(self) -> int:
        return len(self.roles)

    def admit(self, view: ClusterView, gpu: int) -> int | None:
        """Class to prefill on ``gpu`` (which may start one), or ``None``."""
        return self.gate.choose(view)

    def route_decode(self, view: ClusterView, cls: int, from_gpu: int) -> int | str:
        """Where a class-``cls`` request that finished prefill on ``from_gpu`` decodes: a GPU or a buffer."""
        return self.router.route(view, cls, from_gpu)

    def pull_decode(self, view: ClusterView, gpu: int) -> str | None:
        """Buffer whose oldest request takes the freed decode slot on ``gpu``, or ``None``."""
        return self.router.pull(view, gpu)
