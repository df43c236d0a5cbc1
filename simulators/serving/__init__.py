"""The SimPy serving engine: a trace served by instances running continuous batching on paged KV.

``simulate(trace, [InstanceConfig(...), ...], router=...)`` (:mod:`.run`) is the entry point; one
:class:`~simulators.serving.instance.InstanceEngine` per instance runs the iteration loop
(:mod:`.instance`), the batch schedulers are in :mod:`.schedulers`, routers in :mod:`.routers`, results
in :mod:`.results`, prefix-cache block hashes of traces and sessions in :mod:`.prefix`, and
:mod:`.build` assembles instances from the core catalogues (model, GPU or profile, TP).

A policy plugs in as an object implementing a :mod:`gpusched.policy` protocol: a
:class:`~gpusched.policy.BatchScheduler` as ``InstanceConfig(scheduler=...)``, a
:class:`~gpusched.policy.Router` as ``simulate(router=...)``.
"""
from simulators.serving.run import InstanceConfig, simulate
from simulators.serving.results import SimResult
from simulators.serving.build import build_instances

__all__ = ["InstanceConfig", "SimResult", "build_instances", "simulate"]
