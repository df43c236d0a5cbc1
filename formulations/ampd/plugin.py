"""AMPD's policies by name for the session engine (entry point ``gpusched.policies``).

``placement`` ``ampd`` needs the knobs ``cost`` (a :class:`~formulations.ampd.perf.PerfModel` keyed like the
engine's workers) and ``slo`` (a :class:`~formulations.ampd.tasks.Slo`); ``scheduler`` ``ampd-reorder`` needs
``ttft_slo_s``. The baselines (``always-remote`` = Dynamo-like, ``always-local`` = co-located vLLM,
``session-inflight-first`` = vLLM-Continuum's queue) are the engine's own (``simulators.serving.session_policies``).
"""
from gpusched import registry

from .serving import AmpdPlacement, AmpdReorderScheduler

SOURCE = "He et al., arXiv 2602.14516 (shared/papers/ampd.md)"

registry.register("placement", "ampd", lambda context, **knobs: AmpdPlacement(**{"seed": context.seed, **knobs}),
                  "AMPD Algorithm 1: slack rules, then the cheaper of local (Eq. 1) and each prefill worker (Eq. 2)",
                  SOURCE)
registry.register("prefill-queue", "ampd-reorder", lambda context, **knobs: AmpdReorderScheduler(**knobs),
                  "AMPD Algorithm 2: TTFT-aware reordering of the first w queued prefills (w! orders, capped)",
                  SOURCE)
