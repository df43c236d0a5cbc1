"""MC-SF's policies by name for the engines and the command line (entry point ``gpusched.policies``)."""
from gpusched import registry

from .policy import McsfScheduler

SOURCE = "Jaillet et al., arXiv 2502.07115 (shared/papers/mcsf.md)"

registry.register("scheduler", "mc-sf", lambda context, **knobs: McsfScheduler(**knobs),
                  "MC-SF: memory-constrained shortest-first with the future-feasibility check", SOURCE)
registry.register("scheduler", "mc-benchmark",
                  lambda context, **knobs: McsfScheduler(**{"fcfs": True, "name": "mc-benchmark", **knobs}),
                  "MC-Benchmark: MC-SF's feasibility check on a first-come-first-served queue", SOURCE)
