"""Nested WAIT (Ao, Luo, Simchi-Levi, Wang; arXiv 2504.11320) in ``gpusched reproduce``: spec
``shared/papers/nested_wait.md`` §6 rows 1, 3, 6 and the toy cases T1, T2 and the running example (§3, §10).

* ``nested-wait-toy``: the fluid equilibrium of T1 and T2 (closed forms, eqs. 7-10), and the eviction cascade in the
  paper's own discrete model (:mod:`formulations.nested_wait.discrete`: linear iteration time, token-level memory,
  LIFO eviction with restart): memory-greedy FCFS against WAIT on the running example (C = 12, 4 arrivals per
  iteration, from 6 waiting + 3 at stage 1) and on T2 at C = M* = 9 with Poisson arrivals. Seconds in all.
* ``nested-wait-stable-rate``: the largest stable arrival rate of WAIT, Sarathi and vLLM on p512d20 (paper 23 / 22
  / 19 req/s) and of Nested WAIT, Sarathi and vLLM on the 0.7/0.3 d20/d50 mix (22 / 21 / 18), plus WAIT's and
  Sarathi's restarts on p512d1000 at 4 req/s (paper 0 % vs 2.88 %). Llama-2-7B on one A100-80GB with the
  **roofline** step-time model and the paper's C = 1.37e5 KV tokens; thresholds from (d0, d1) fitted to that model
  (:mod:`formulations.nested_wait.calibrate`); the rest as :mod:`experiments.nested_wait`. One cell = one policy
  on one seeded trace. Quick: 4 (3) rates, 2 seeds, 600 requests per run, 100 on p512d1000. Full: the paper's
  grid, 10 seeds, 3,000 requests (400 on p512d1000).

Tolerances are ours [R]: a stable rate within ±2 req/s (the quick grid is 3-6 req/s coarse: quick verdicts on it
are rough); restarts within 0.5 points. Our stability test (:func:`experiments.nested_wait_common.is_stable`) is
not the paper's (its exact criterion is not given). Note: the paper's p512d20 ordering is WAIT 23 > **Sarathi** 22
> vLLM 19; Nested WAIT's 22 is on the mix.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from experiments.nested_wait import make_trace
from experiments.nested_wait_cascade import RUNNING, T2, T2_D1
from experiments.nested_wait_common import SARATHI, VLLM, a100_instance, largest_stable_rate, run_metrics, \
    with_scheduler
from experiments.reproduce.registry import Experiment, register
from experiments.reproduce.verdict import Claim
from formulations.nested_wait import (PromptType, ToyFcfs, ToyInstance, ToyWait, calibrated_nested_wait,
                                      calibrated_wait, fluid_equilibrium, poisson_type_arrivals, simulate_toy)
from gpusched.registry import BuildContext

PAPER = "nested-wait"
TITLE = "Nested WAIT (Ao et al., arXiv 2504.11320)"
SOURCE = "spec nested_wait.md"


# ---- toy cases in the paper's discrete model ---------------------------------------------------------------

def toy_cell(case: str, policy: str, seed: int, horizon: int) -> dict:
    """One toy case: ``T1``/``T2`` fluid (policy "fluid"), the running example or T2 at C = 9 (policy fcfs/wait)."""
    if case == "T1":  # d0 + 12 d1 = 1
        eq = fluid_equilibrium([PromptType(1, 1, 4.0)], 0.5, 1 / 24)
        return {"memory_tokens": eq.memory_tokens, "iteration_s": eq.iteration_s, "per_stage": eq.per_stage[0],
                "evictions": 0, "completions_per_iteration": math.nan, "throughput_ratio": 1.0}
    if case == "T2":
        eq = fluid_equilibrium(T2, 1 - 9 * T2_D1, T2_D1)
        return {"memory_tokens": eq.memory_tokens, "iteration_s": eq.iteration_s, "per_stage": eq.per_stage[0],
                "evictions": 0, "completions_per_iteration": math.nan, "throughput_ratio": 1.0}
    if case == "running-example":
        inst = ToyInstance(RUNNING, 0.5, 1 / 24, 12)
        arrivals = [(float(k), 0) for k in range(1, horizon) for _ in range(4)]
        pol = ToyFcfs() if policy == "fcfs" else ToyWait([4])
        run = simulate_toy(inst, pol, arrivals, initial=[(0, 0, 6), (0, 1, 3)])
        steady = run.iterations.iloc[10:-10]
        return {"memory_tokens": math.nan, "iteration_s": math.nan, "per_stage": math.nan,
                "evictions": run.evictions, "completions_per_iteration": float(steady["completed"].mean()),
                "throughput_ratio": run.throughput_tokens_per_s(RUNNING, horizon - 1.0) / 4.0}
    if case == "T2-cascade":  # C = M* = 9, Poisson arrivals
        d0 = 1 - 9 * T2_D1
        fluid = fluid_equilibrium(T2, d0, T2_D1)
        pol = ToyFcfs() if policy == "fcfs" else ToyWait([1, 1])
        run = simulate_toy(ToyInstance(T2, d0, T2_D1, 9), pol, poisson_type_arrivals(T2, float(horizon), seed))
        return {"memory_tokens": math.nan, "iteration_s": math.nan, "per_stage": math.nan,
                "evictions": run.evictions, "completions_per_iteration": math.nan,
                "throughput_ratio": run.throughput_tokens_per_s(T2, float(horizon)) /
                fluid.throughput_tokens_per_s}
    raise ValueError(f"unknown toy case {case!r}")


def toy_cells(quick: bool) -> list[dict]:
    horizon, seeds = (200, 2) if quick else (2000, 10)
    cells = [{"case": c, "policy": "fluid", "seed": 0, "horizon": 0} for c in ("T1", "T2")]
    cells += [{"case": "running-example", "policy": p, "seed": 0, "horizon": horizon} for p in ("fcfs", "wait")]
    cells += [{"case": "T2-cascade", "policy": p, "seed": s, "horizon": horizon} for p in ("fcfs", "wait")
              for s in range(seeds)]
    return cells


def _toy(case: str, policy: str, col: str, how=np.mean):
    def f(t: pd.DataFrame) -> float:
        d = t[(t["case"] == case) & (t["policy"] == policy)][col]
        return float(how(d)) if len(d) else math.nan
    return f


def toy_claims(quick: bool) -> list[Claim]:
    exact = "closed form of eqs. (8)-(9); any error is a bug"
    return [
        Claim("T1 running example: fluid memory M* (tokens)", 12.0, _toy("T1", "fluid", "memory_tokens"),
              abs_tol=1e-9, source=f"{SOURCE} §10 T1", note=exact),
        Claim("T1: prompts per stage n*", 4.0, _toy("T1", "fluid", "per_stage"), abs_tol=1e-9,
              source=f"{SOURCE} §10 T1", note=exact),
        Claim("T1: iteration time Delta T* (s)", 1.0, _toy("T1", "fluid", "iteration_s"), abs_tol=1e-9,
              source=f"{SOURCE} §10 T1", note=exact),
        Claim("T2 FCFS instance: fluid memory M* (tokens)", 9.0, _toy("T2", "fluid", "memory_tokens"), abs_tol=1e-9,
              source=f"{SOURCE} §10 T2", note=exact),
        Claim("running example, FCFS completions per iteration", 3.25,
              _toy("running-example", "fcfs", "completions_per_iteration"), abs_tol=0.25,
              source=f"{SOURCE} §3 ('settles at about 3-3.5')", note="the paper's number is narrative (erratum 8.8)"),
        Claim("running example, WAIT (n = 4) completions per iteration", 4.0,
              _toy("running-example", "wait", "completions_per_iteration"), abs_tol=0.01,
              source=f"{SOURCE} §3 (the fluid's 4)"),
        Claim("T2 at C = M*: FCFS throughput / fluid", None, _toy("T2-cascade", "fcfs", "throughput_ratio"),
              kind="direction", pivot=0.97, expect="below", source=f"{SOURCE} §3 'FCFS fails' (an Omega(1) gap)",
              note="pivot 0.97 [R]: a gap clearly beyond the finite-horizon edge effect"),
        Claim("T2 at C = M*: WAIT n = (1, 1) evictions", 0.0, _toy("T2-cascade", "wait", "evictions", np.max),
              abs_tol=0.0, source=f"{SOURCE} §10 P6"),
    ]


register(Experiment(
    name="nested-wait-toy", paper=PAPER, title=f"{TITLE}: fluid toy cases and eviction cascades (discrete model)",
    cells=toy_cells, compute=toy_cell, claims=toy_claims, seconds_per_cell=(0.05, 0.5),
    about=("The paper's own discrete model, exactly (the spec's T1, T2 and running example): closed-form fluid "
           "values, then FCFS (memory-greedy, LIFO eviction with restart) against WAIT. T2 uses d1 = 0.02, "
           "d0 = 1 - 9 d1.")))


# ---- largest stable rate on the shared simulator ---------------------------------------------------------

RATES = {  # workload -> (full rates, quick rates)
    "p512d20": ([12, 14, 16, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30], [16, 22, 25, 28]),
    "mix": ([10, 12, 14, 16, 18, 19, 20, 21, 22, 23, 24, 26], [14, 20, 23, 26]),
    "p512d1000": ([4.0], [4.0]),
}
POLICIES = {"p512d20": ("wait", "sarathi", "vllm"), "mix": ("nested-wait", "sarathi", "vllm"),
            "p512d1000": ("wait", "sarathi")}
PAPER_STABLE = {("p512d20", "wait"): 23, ("p512d20", "sarathi"): 22, ("p512d20", "vllm"): 19,
                ("mix", "nested-wait"): 22, ("mix", "sarathi"): 21, ("mix", "vllm"): 18}


def rate_cell(workload: str, policy: str, rate_per_s: float, seed: int, requests: int) -> dict:
    """One policy on one seeded trace (:func:`experiments.nested_wait.make_trace`): the run's metrics."""
    trace = make_trace(workload, rate_per_s, requests, seed)
    cfg = a100_instance()
    if policy in ("vllm", "sarathi"):
        sched, knobs = VLLM if policy == "vllm" else SARATHI
    else:
        ctx = BuildContext(trace=trace, step_model=cfg.step_model, num_kv_blocks=cfg.num_kv_blocks,
                           block_size_tokens=cfg.block_size_tokens)
        sched = (calibrated_wait(ctx, rate_per_s=rate_per_s) if policy == "wait" else
                 calibrated_nested_wait(ctx, segment_ends=(20, 50), rate_per_s=rate_per_s))
        knobs = {}
    m = run_metrics(trace, with_scheduler(cfg, sched, knobs))
    cal = getattr(sched, "calibration", None) or {}
    return {**m, "thresholds": str(cal.get("thresholds", "")), "max_in_flight": cal.get("max_in_flight")}


def rate_cells(quick: bool) -> list[dict]:
    seeds = 2 if quick else 10
    cells = []
    for w, (full, short) in RATES.items():
        n = (100 if quick else 400) if w == "p512d1000" else (600 if quick else 3000)
        for rate in (short if quick else full):
            for p in POLICIES[w]:
                cells += [{"workload": w, "policy": p, "rate_per_s": float(rate), "seed": s, "requests": n}
                          for s in range(1 if quick and w == "p512d1000" else seeds)]
    return cells


def _stable(workload: str, policy: str):
    return lambda t: largest_stable_rate(t[t["workload"] == workload], policy)


def _restarts_pct(policy: str):
    def f(t: pd.DataFrame) -> float:
        d = t[(t["workload"] == "p512d1000") & (t["policy"] == policy)]["restarts"]
        return 100 * float(d.mean()) if len(d) else math.nan
    return f


def rate_claims(quick: bool) -> list[Claim]:
    grid = "quick grid 16/22/25/28 (mix 14/20/23/26): a stable rate is one of those" if quick else "rates as the paper's"
    out = [Claim(f"{w}: largest stable rate of {p} (req/s)", v, _stable(w, p), abs_tol=2.0,
                 source=f"{SOURCE} §6 row {1 if w == 'p512d20' else 3}", note=grid)
           for (w, p), v in PAPER_STABLE.items()]
    out.append(Claim("p512d20: WAIT's stable rate minus vLLM's (req/s)", 4.0,
                     lambda t: _stable("p512d20", "wait")(t) - _stable("p512d20", "vllm")(t), kind="direction",
                     pivot=0.0, source=f"{SOURCE} §6 row 1 (23 - 19)", note="the ordering, whatever the levels"))
    out.append(Claim("p512d1000 at 4 req/s: WAIT restarts (% of requests)", 0.0, _restarts_pct("wait"), abs_tol=0.5,
                     source=f"{SOURCE} §6 row 6",
                     note="WAIT here is the calibration's fallback (eq. 11 has no solution): per-stage cap 1 and an "
                          "in-flight cap from the mean KV per prompt, which can overflow"))
    out.append(Claim("p512d1000 at 4 req/s: Sarathi restarts (% of requests)", 2.88, _restarts_pct("sarathi"),
                     abs_tol=0.5, source=f"{SOURCE} §6 row 6"))
    return out


def rate_findings(table: pd.DataFrame, quick: bool) -> str:
    rows = ["| workload | policy | ours (req/s) | paper |", "|---|---|---:|---:|"]
    for w, pols in POLICIES.items():
        if w == "p512d1000":
            continue
        for p in pols:
            rows.append(f"| {w} | {p} | {largest_stable_rate(table[table['workload'] == w], p):g} | "
                        f"{PAPER_STABLE.get((w, p), '')} |")
    return ("Largest stable rate (every tested rate up to it stable, means over seeds).\n\n" + "\n".join(rows) +
            "\n\nWhy the levels differ: on the roofline A100 a p512d20 request costs about 512 prefill tokens of "
            "compute, so the fitted d1 is ~3.4 us per KV token and d0 ~1.5 ms (a pipeline batch is compute-bound); "
            "the fluid limit 1/(d1 w) is ~26.6 req/s while the KV (M* of a few thousand tokens against 137k) never "
            "binds. Every work-conserving policy then saturates near the same compute ceiling; the paper's Vidur "
            "timings (its implied d0/d1 ~ 26k tokens, erratum 8.1) are a different machine.")


register(Experiment(
    name="nested-wait-stable-rate", paper=PAPER,
    title=f"{TITLE}: largest stable rate and restarts, Llama-2-7B on A100 (roofline)",
    cells=rate_cells, compute=rate_cell, claims=rate_claims, findings=rate_findings,
    seconds_per_cell=(0.3, 4.0),
    about=("Poisson arrivals, prompt 512; d20 = 21 output tokens in the engine (its prefill samples the first). "
           "vLLM = vllm-v1 with whole-prompt prefill (4,096-token steps), Sarathi = 512-token chunks; WAIT and "
           "Nested WAIT calibrated on the run (least thresholds of eqs. 11-12 for the offered rate; segments end at "
           "20 and 50). Stability: the late/mid latency ratio <= 1.5 and >= 97 % of second-half arrivals served.")))
