"""Gate-and-Route (Lin, Han, Ding, Zhang, arXiv 2602.02987): prefill-decode contention on ``n`` GPUs.

The fluid LPs (40) and (42) with the SLI rows and penalties of Sec. 5 (:mod:`.fluid`, :mod:`.sli`), their
closed forms as an independent oracle (:mod:`.oracle`), the iteration-time law of Eq. (1)-(3) fitted on any
step-time model (:mod:`.calibration`), the policies -- static planning, the prefill gate, the decode routers,
Prioritize-and-Route, the SLI-aware router and the baselines of Sec. 6.3 -- as engine-neutral decision objects
(:mod:`.protocol`, :mod:`.gates`, :mod:`.routers`, :mod:`.policies`), and the paper's stochastic model
simulated exactly (:mod:`.stochastic`). Conventions and [R] decisions: ``shared/papers/gate_and_route.md``.
"""
from .model import FluidModel, RequestClass
from .sli import Sli
from .fluid import CHARGING, FluidSolution, mixed_gpu_count, solve_fluid
from .oracle import KnapsackPlan, knapsack_optimum, separate_optimum
from .calibration import CHUNK_GRID, PAPER_QWEN3_8B_A100, IterationTimeFit, fit_iteration_time
from .instances import paper_classes, paper_instance
from .protocol import MIXED, ROLES, SHARED, SOLO, ClusterView, DecodeRouter, Gate, GateRoutePolicy
from .gates import FcfsGate, OccupancyGate, PriorityGate
from .routers import DECODE_BUFFER, GreedyRouter, ImmediateRouter, RandomizedRouter
from .policies import (POLICIES, fg_sp, fi_wsp, gate_and_route, gf_wsp, gi_wsp, make_policy, prioritize_and_route,
                       sli_gate_and_route, static_plan)
from .stochastic import PolicyViolationError, StochasticRun, simulate_stochastic
