"""AMPD (He et al., "Efficient Multi-round LLM Inference over Disaggregated Serving", arXiv 2602.14516).

Multi-round agent sessions on prefill/decode-disaggregated serving: each round after a tool call needs an
*incremental* prefill over the session's cached history. AMPD decides per task whether it runs locally on the
session's decode worker or remotely on a prefill worker, reorders each prefill queue for TTFT, and plans the
TP/replica layout of both pools offline. Conventions and every [R] decision: ``shared/papers/ampd.md``.

* :mod:`.perf` -- the performance model of §2.1 (T_pre with a cached history, T_dec, T_kv), from any step model;
* :mod:`.routing` -- Algorithm 1 with Eq. (1)-(2): :func:`route_prefill`;
* :mod:`.reorder` -- Algorithm 2 with Eq. (3)-(4) and the anti-starvation cap: :func:`reorder_window`;
* :mod:`.planner` -- the usable reconstruction of Eq. (5) on HiGHS, enumeration, and the literal form;
* :mod:`.simulated_costs` -- the planner's costs from a P95 estimator at a target rate, memoised per (phase, n, k)
  (``experiments/ampd_planner_sim.py`` passes one that simulates a replica);
* :mod:`.workloads` -- seeded multi-round session traces standing in for ToolBench, GAIA, HotpotQA, DuReader;
* :mod:`.slo` -- per-session and per-round SLO attainment, hardware-scaled thresholds;
* :mod:`.stats` -- the 10-second windowed TTFT/ITL averages; :mod:`.tasks` -- the task and worker snapshots;
* :mod:`.queue_replay` -- one worker's dequeue loop replayed exactly (Algorithm 2 end to end);
* :mod:`.toy` -- the spec's hand-checkable toy models (T2, T3); :mod:`.testbed` -- H20 and Qwen3-32B.

The algorithms are pure functions over snapshots; they meet a serving engine through ``gpusched/policy.py``
(phase 2 of issue 18): :mod:`.serving` wraps them as a :class:`~gpusched.policy.PrefillPlacement` (Algorithm 1)
and a :class:`~gpusched.policy.BatchScheduler` for prefill queues (Algorithm 2), registered by :mod:`.plugin`
(``placement`` ``ampd``, ``scheduler`` ``ampd-reorder``) for the session engine
``simulators/serving/sessions.py``.
"""
from .tasks import DecodeWorkerView, PrefillTask, PrefillWorkerView, Slo
from .perf import AMPD_NETWORK_LINK, FitError, PerfModel, PiecewiseAlphaBeta, StepTimes, WorkerTimes, kv_transfer_time_s
from .routing import SLACK_DECODE, SLACK_PREFILL, CostModel, RouteDecision, local_cost_s, remote_cost_s, route_prefill
from .reorder import WINDOW, Reordering, reorder_window
from .planner import (TP_DEGREES, DeploymentPlan, Layout, LiteralPlan, enumerate_layouts, plan_deployment,
                      plan_literal)
from .workloads import (WORKLOADS, AgentWorkload, agent_trace, check_sessions, get_workload, load_sessions,
                        save_sessions, session_prefills)
from .slo import SessionAttainment, scaled_slo, session_attainment
from .stats import STATS_WINDOW_S, WindowedMean
from .queue_replay import replay_prefill_queue
from .toy import ToyPlannerCosts, ToyRoutingCosts
from .simulated_costs import EstimatedCosts, plan_by_estimates
