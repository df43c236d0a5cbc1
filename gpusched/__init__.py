"""gpusched: operations-research formulations of LLM serving on one shared hardware model.

The core package holds the vocabulary every formulation and engine speaks: GPUs and links
(:mod:`gpusched.hardware`), model shapes (:mod:`gpusched.llm`), step-time models (:mod:`gpusched.perf`),
KV-cache accounting (:mod:`gpusched.kvcache`), clusters (:mod:`gpusched.cluster`), requests and traces
(:mod:`gpusched.workload`), metrics (:mod:`gpusched.metrics`) and one way to solve LP/MILP
(:mod:`gpusched.solve`). Import the submodules directly; this package imports nothing heavy on purpose.
"""
__version__ = "0.1.0"
