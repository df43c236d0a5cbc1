"""AMPD's full deployment planner: P95 coefficients estimated by simulating one replica at the target rate.

:func:`plan_by_simulation` is the planner of issue 18 item 3 end to end: for every candidate (TP degree n,
replicas k) of each phase it simulates ONE replica of degree n in the session engine
(``simulators/serving/sessions.py``) under sessions arriving at ``rate_per_s / k`` (1/k of the load, spec §2.5
[R]), reads the P95 TTFT (prefill) or P95 ITL (decode), normalises by the SLO and hands the costs to
:func:`formulations.ampd.plan_deployment` via :func:`formulations.ampd.simulated_costs.plan_by_estimates` (which
memoises per (phase, n, k)). It lives in ``experiments/`` because formulations may not import engines.

**How one replica is isolated** [R] (the paper's simulator, App. A.1, is not described at this level):

* prefill (n, k): one prefill worker of degree n, one *reference* decode worker of the largest degree in
  ``reference_tp`` that fits (default TP8, the most KV) so that the decode side neither holds KV back nor
  slows rounds; every prefill goes to the replica (``always-remote``: the whole prefill load, an upper bound on
  what AMPD's router sends it), FCFS. Cost = P95 over all rounds of TTFT (queueing + history read + compute +
  increment return) / TTFT_thres;
* decode (n, k): one decode worker of degree n with its own KV capacity, one reference prefill worker (TP8),
  ``always-remote``. Cost = P95 over rounds with >= 2 output tokens of the round's mean inter-token gap /
  ITL_thres. Local prefills (which pause decoding) are not charged to the decode replica here;
* ``placement="ampd"`` (a variant for pitfall 8, "run the simulator with routing enabled"): Algorithm 1 routes
  each prefill between the replica/reference pair and Algorithm 2 orders both queues; the prefill replica then
  sees only what the router sends it, and the decode replica is charged for the local prefills that pause it.
  The reference worker's slack shapes that split, so this variant is a sensitivity check, not the default;
* ``inf`` if the model does not fit on n GPUs, a round needs more KV than the decode replica holds, or a round
  is left unfinished.

Every simulation uses the same trace seed, so the plan is deterministic. Costs of one (model, workload, rate)
need ``2 * Σ_n ⌊(N - 1)/n⌋`` simulations at most (22 at N = 8 with TP1 feasible, 8 for Llama-3.1-70B).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from experiments.ampd_serving import MODEL, Setup, model_spec
from formulations.ampd import PerfModel, Slo, agent_trace
from formulations.ampd.serving import AmpdPlacement, AmpdReorderScheduler
from formulations.ampd.planner import TP_DEGREES, DeploymentPlan
from formulations.ampd.simulated_costs import EstimatedCosts, plan_by_estimates
from formulations.ampd.testbed import NVLINK_H20
from gpusched.errors import ConfigError, DoesNotFitError
from simulators.serving.sessions import SessionWorker, simulate_sessions

__all__ = ["SimulatedLatency", "plan_by_simulation", "fits_on", "PLACEMENTS"]

PLACEMENTS = ("always-remote", "ampd")


def fits_on(setup: Setup, tp: int) -> bool:
    """Whether the model's weights (and one KV block) fit on ``tp`` GPUs (spec §3.2)."""
    try:
        return setup.kv_tokens(tp) > 0
    except DoesNotFitError:
        return False


@dataclass
class SimulatedLatency:
    """``estimate(phase, tp, rate_per_s)`` -> P95 seconds of one replica, by one session-engine run (module
    docstring). ``num_sessions`` sessions of ``workload`` per run, trace ``seed``; ``reference_tp``: degrees
    tried, largest first, for the other phase's reference worker; ``placement``: ``"always-remote"`` or
    ``"ampd"`` (module docstring), ``slo`` its thresholds (default ``setup.slo(workload)``). ``runs`` counts
    simulations."""

    setup: Setup
    workload: str
    num_sessions: int = 200
    seed: int = 0
    reference_tp: Sequence[int] = (8, 4, 2, 1)
    placement: str = "always-remote"
    slo: Slo | None = None
    runs: int = 0
    _steps: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if isinstance(self.num_sessions, bool) or not isinstance(self.num_sessions, int) or self.num_sessions < 20:
            raise ConfigError(f"SimulatedLatency: num_sessions must be an int >= 20 (a P95 of fewer is noise), "
                              f"got {self.num_sessions!r}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"SimulatedLatency: placement must be one of {PLACEMENTS}, got {self.placement!r}")
        ref = [n for n in self.reference_tp if fits_on(self.setup, n)]
        if not ref:
            raise ConfigError(f"SimulatedLatency: {self.setup.model_name} fits on none of reference_tp "
                              f"{tuple(self.reference_tp)}; give larger degrees")
        self.ref_tp = max(ref)

    def _step(self, tp: int):
        if tp not in self._steps:
            self._steps[tp] = self.setup.step(tp)
        return self._steps[tp]

    def __call__(self, phase: str, tp: int, rate_per_s: float) -> float:
        if phase not in ("prefill", "decode"):
            raise ConfigError(f"SimulatedLatency: phase must be 'prefill' or 'decode', got {phase!r}")
        if not fits_on(self.setup, tp):
            return math.inf
        p_tp, d_tp = (tp, self.ref_tp) if phase == "prefill" else (self.ref_tp, tp)
        trace = agent_trace(self.workload, rate_per_s, self.num_sessions, seed=self.seed)
        kv = self.setup.kv_tokens(d_tp)
        if int((trace.df["prompt_tokens"] + trace.df["output_tokens"]).max()) > kv:
            return math.inf          # a round does not fit the decode replica's KV at all
        workers = [SessionWorker("p0", "prefill"), SessionWorker("d0", "decode", kv)]
        perf = PerfModel.from_step_models({"p0": self._step(p_tp), "d0": self._step(d_tp)},
                                          model_spec(self.setup.model_name).kv_bytes_per_token(), link=NVLINK_H20)
        placement = "always-remote"
        if self.placement == "ampd":   # pitfall 8: Algorithms 1 and 2 on, against the reference worker
            slo = self.slo if self.slo is not None else self.setup.slo(self.workload)
            placement = AmpdPlacement(perf, slo, seed=self.seed)
            for w in workers:
                w.scheduler = AmpdReorderScheduler(slo.ttft_s)
        res = simulate_sessions(trace, workers, perf, placement=placement, binder="most-free-kv", seed=self.seed)
        self.runs += 1
        r = res.rounds
        if r["finish_time_s"].isna().any():
            return math.inf
        if phase == "prefill":
            return float(np.percentile(r["first_token_time_s"] - r["arrival_time_s"], 95))
        gaps = r["output_tokens"] - 1
        ok = gaps > 0
        if not ok.any():
            return 0.0
        itl = (r.loc[ok, "finish_time_s"] - r.loc[ok, "first_token_time_s"]) / gaps[ok]
        return float(np.percentile(itl, 95))


def plan_by_simulation(model: str = MODEL, workload: str = "toolbench", rate_per_s: float = 0.75,
                       num_gpus: int = 8, slo: Slo | None = None, tp_degrees: Sequence[int] = TP_DEGREES,
                       seed: int = 0, num_sessions: int = 200, top_k: int = 3, method: str = "milp",
                       costs: EstimatedCosts | None = None, placement: str = "always-remote") -> DeploymentPlan:
    """AMPD's planner for ``model`` serving ``workload`` sessions at ``rate_per_s`` on ``num_gpus`` H20s: the
    plan (``.prefill``, ``.decode`` = (tp, replicas); ``.objective`` = Z; ``.alternatives`` = the ``top_k``
    ranked layouts). ``placement``: how the replica simulations place prefills (:class:`SimulatedLatency`).
    ``slo``: default the serving experiment's (``Setup.slo``). ``costs``: an
    :class:`EstimatedCosts` to reuse (its simulations are memoised). ``plan.extra["plan_wall_s"]``: wall time
    of the whole planning (simulations + solves); ``extra["simulations"]``: engine runs made for this plan."""
    setup = Setup(model)
    slo = slo if slo is not None else setup.slo(workload)
    if costs is None:
        est = SimulatedLatency(setup, workload, num_sessions, seed, placement=placement, slo=slo)
        costs = EstimatedCosts(est, rate_per_s, slo, fits=lambda n: fits_on(setup, n))
    runs0 = getattr(costs.estimate, "runs", 0)
    t0 = time.perf_counter()
    plan = plan_by_estimates(costs, rate_per_s, num_gpus, slo, tp_degrees, top_k=top_k, method=method)
    plan.extra.update(plan_wall_s=time.perf_counter() - t0, simulations=getattr(costs.estimate, "runs", 0) - runs0,
                      slo=slo, rate_per_s=rate_per_s, model=model, workload=workload)
    return plan
