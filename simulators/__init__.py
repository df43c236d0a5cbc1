"""Serving engines and baseline policies (imports only :mod:`gpusched`).

Three engines, one sub-package each:

- :mod:`simulators.serving` — the SimPy serving engine: instances that run continuous batching on paged
  KV (colocated, or prefill/decode disaggregated with KV hand-off), routers, multi-round sessions,
  prefix caching, the baseline batch schedulers (vLLM V1/V0, Sarathi-Serve, static) and the vLLM
  replay. Policies from ``formulations/`` plug in through :mod:`gpusched.policy`.
- :mod:`simulators.compiled` — a compiled (numba) twin of the serving engine's step mode for the
  configurations it covers; :func:`simulators.serving.simulate` picks it by itself in ``fast`` mode.
- :mod:`simulators.pipeline` — the layer-partitioned (pipelined) engine of heterogeneous clusters
  (Helix): per-request pipelines chosen by a :class:`gpusched.policy.PipelineRouter`.
"""
