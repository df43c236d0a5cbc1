"""Gate-and-Route (arXiv 2602.02987) reproduced on its own stochastic model (spec ``shared/papers/gate_and_route.md``).

Parts (spec §5):

* ``calibration`` (E1): Eq. (1)-(3) fitted on the workbench's step models against the paper's vLLM fit.
* ``convergence`` (E2-E5): per-GPU revenue / fluid optimum vs ``n`` on the paper's instance (B3) for
  Gate-and-Route (bundled), Prioritize-and-Route (separate) and the SLI-aware router, with occupancies
  against the fluid plan; the SLI-aware router also against HiGHS's vertex split of the decodes, a per-class
  target the class-blind greedy router cannot follow (E3 vs E4).
* ``policies`` (E6): the policies and the baselines of spec §2.8 on the calibrated instance at one ``n``.
* ``grid`` (E6, [R] grid, only with ``--grid``): the same on the spec's 3x3x3 (alpha, beta, gamma) grid x lambda in
  {0.25, 0.5} with Dolly-style class pairs; the overloaded instances (the LP sheds some load) also at a larger n.
* ``sli`` (E4, E7): the LP's SLI trade-off curves (TPOT cap, prefill and decode fairness) against spec B4, and
  the SLI-aware Gate-and-Route simulated under TPOT caps.

Every simulation row is written to ``runs.csv`` as it finishes; ``--resume`` keeps the rows of an earlier run that
simulated exactly a job of this one (same instance, policy, n, seed, horizon, warm-up) and runs the rest. Run: ``python -m experiments.gate_and_route [--quick] [--grid] [--workers K] [--resume]``; ``--parts serving real``
runs the serving-engine parts instead (:mod:`experiments.gate_and_route_serving`).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError
from formulations.gate_and_route import (PAPER_QWEN3_8B_A100, FluidModel, RequestClass, Sli, fit_iteration_time,
                                         make_policy, paper_classes, paper_instance, simulate_stochastic,
                                         solve_fluid)

# spec B6 / E2: our check of the paper's Fig. 4 (3 seeds, CTMC): gap of per-GPU revenue to R* = 297.70
SPEC_GAPS = {20: 0.041, 50: 0.031, 100: 0.028}
SPEC_REVENUE = {20: 285.6, 50: 288.5, 100: 289.5}
# spec B4 (LP, bundled, hard constraints): eta -> R*
SPEC_B4 = {"tpot_cap_s": {0.030: 297.703170, 0.025: 297.703170, 0.024: 278.131673, 0.023: 187.500494,
                          0.0225: 141.783988},
           "prefill_fairness": {1.0: 297.703170, 0.1: 231.459325, 0.05: 182.729663, 0.0: 134.0},
           "decode_fairness": {100.0: 297.703170, 1.0: 268.040143, 0.5: 262.719873, 0.0: 257.399602}}
DOLLY = {  # spec §4, EC Table 1: mean prompt and output tokens per Dolly-15k category
    "brainstorming": (61, 331), "classification": (123, 142), "closed_qa": (992, 182),
    "creative_writing": (89, 915), "general_qa": (69, 572), "information_extraction": (1139, 273),
    "open_qa": (45, 293), "summarization": (1177, 436)}
BASELINES = ("gate-and-route", "fg-sp", "gi-wsp", "gf-wsp", "fi-wsp")
PAPER_NAMES = {"gate-and-route": "GG-SP", "fg-sp": "FG-SP", "gi-wsp": "GI-WSP", "gf-wsp": "GF-WSP",
               "fi-wsp": "FI-WSP", "prioritize-and-route": "P&R (separate)", "sli-gate-and-route": "SLI G&R"}
TPOT_SIM_CAPS = (0.024, 0.023)  # TPOT caps simulated with the SLI-aware policy (besides the uncapped plan)

SCALES = {
    "full": dict(conv_n=(20, 50, 100, 200), conv_seeds=3, conv_T=3000.0, conv_warm=300.0,
                 pol_n=500, pol_seeds=2, pol_T=1500.0, pol_warm=300.0,
                 sli_n=200, sli_seeds=2, sli_T=2000.0, sli_warm=300.0,
                 grid_n=50, grid_seeds=1, grid_T=1000.0, grid_warm=200.0,
                 grid_large_n=200, grid_large_T=1000.0),
    "quick": dict(conv_n=(20, 50), conv_seeds=1, conv_T=800.0, conv_warm=200.0,
                  pol_n=50, pol_seeds=1, pol_T=800.0, pol_warm=200.0,
                  sli_n=50, sli_seeds=1, sli_T=800.0, sli_warm=200.0,
                  grid_n=20, grid_seeds=1, grid_T=600.0, grid_warm=150.0,
                  grid_large_n=40, grid_large_T=600.0),
}
# wall seconds per simulated GPU-second (about 6 events), measured on this 2-core machine while shared with other
# jobs (50-85 us for every policy), for the estimate printed up front
_COST_PER_GPU_S = 60e-6


@dataclass(frozen=True)
class Job:
    """One simulation: ``policy`` on instance ``instance`` (a key of the instance table) with ``n`` GPUs."""

    part: str
    instance: str
    policy: str
    n: int
    seed: int
    horizon_s: float
    warmup_s: float

    @property
    def key(self) -> tuple:
        return (self.part, self.instance, self.policy, self.n, self.seed)


# ------------------------------------------------------------------------------------------ instances
def grid_instances(seed: int = 0) -> dict[str, FluidModel]:
    """The spec's [R] baseline grid: (alpha, beta, gamma) in {0.02, 0.06, 0.15} x {1e-5, 1e-4, 1e-3} x {10, 25, 50},
    lambda in {0.25, 0.5} for both classes, a pair of distinct Dolly categories per instance (drawn with ``seed``),
    theta = 0.1, B = 16, C = 256, c_p = 0.1, c_d = 0.2."""
    rng = np.random.default_rng(seed)
    names = sorted(DOLLY)
    out = {}
    for alpha in (0.02, 0.06, 0.15):
        for beta in (1e-5, 1e-4, 1e-3):
            for gamma in (10.0, 25.0, 50.0):
                for lam in (0.25, 0.5):
                    a, b = rng.choice(len(names), size=2, replace=False)
                    classes = tuple(RequestClass(*DOLLY[names[k]], lam, 0.1) for k in (a, b))
                    key = f"a={alpha:g},b={beta:g},g={gamma:g},l={lam:g},{names[a]}+{names[b]}"
                    out[key] = FluidModel(classes, 16, 256, alpha + beta * 256, gamma, 0.1, 0.2)
    return out


def _plans(model: FluidModel, sli: Sli | None = None, decode_split: str = "proportional") -> dict:
    """The fluid plans a policy may need: bundled (or SLI-aware bundled) and separate."""
    return {"bundled": solve_fluid(model, sli=sli, decode_split=decode_split),
            "separate": solve_fluid(model, "separate", decode_split=decode_split)}


def _plan_for(policy: str, plans: dict):
    return plans["separate"] if policy == "prioritize-and-route" else plans["bundled"]


# ------------------------------------------------------------------------------------------ one run
def run_job(job: Job, model: FluidModel, plans: dict) -> dict:
    """Simulate one job; a flat row for ``runs.csv``."""
    plan = _plan_for(job.policy, plans)
    policy = make_policy(job.policy, plan, job.n, seed=job.seed)
    r = simulate_stochastic(model, policy, job.horizon_s, job.warmup_s, seed=job.seed)
    bundled, separate = plans["bundled"], plans["separate"]
    row = asdict(job) | {
        "mixed_gpus": policy.roles.count("mixed"), "R_star": bundled.revenue, "R_sep_star": separate.revenue,
        "revenue_bundled": r.revenue_bundled, "revenue_separate": r.revenue_separate,
        "ratio": r.revenue_bundled / bundled.revenue if bundled.revenue > 0 else np.nan,
        "ratio_separate": r.revenue_separate / separate.revenue if separate.revenue > 0 else np.nan,
        "buffered": float(r.buffered.sum()), "abandoned_decode": float(r.abandoned_decode.sum()),
        "mean_tpot_s": r.mean_tpot_s, "plan_tpot_s": bundled.tpot_s, "solo_pool_tokens_share": r.solo_pool_tokens_share,
        "plan_solo_token_share": plan.solo_token_share, "events": r.events, "wall_s": r.wall_s}
    for i in range(model.num_classes):
        row |= {f"x{i}": r.prefilling[i], f"x{i}_star": plan.x[i], f"q{i}": r.waiting[i],
                f"q{i}_star": plan.q_prefill[i], f"ym{i}": r.decoding_mixed[i], f"ym{i}_star": plan.y_mixed[i],
                f"ys{i}": r.decoding_solo[i], f"ys{i}_star": plan.y_solo[i]}
    return row


def _run_job_args(args):
    return run_job(*args)


# ------------------------------------------------------------------------------------------ plan of the run
def build_jobs(scale: str, grid: bool) -> tuple[list[Job], dict]:
    """All simulation jobs and the instance table ``key -> (model, plans)``."""
    s = SCALES[scale]
    paper = paper_instance()
    # "paper-vertex": the same LP with HiGHS's own vertex split of the decodes (spec §7.3), a per-class target
    # the class-blind greedy router cannot meet but the SLI-aware router can (E3 vs E4)
    instances = {"paper": (paper, _plans(paper)), "paper-vertex": (paper, _plans(paper, decode_split="solver"))}
    jobs = []
    for n in s["conv_n"]:
        for instance, policy in (("paper", "gate-and-route"), ("paper", "prioritize-and-route"),
                                 ("paper", "sli-gate-and-route"), ("paper-vertex", "sli-gate-and-route")):
            jobs += [Job("convergence", instance, policy, n, k, s["conv_T"], s["conv_warm"])
                     for k in range(s["conv_seeds"])]
    for policy in BASELINES + ("prioritize-and-route", "sli-gate-and-route"):
        jobs += [Job("policies", "paper", policy, s["pol_n"], k, s["pol_T"], s["pol_warm"])
                 for k in range(s["pol_seeds"])]
    for eta in TPOT_SIM_CAPS:
        key = f"tpot<={eta:g}"
        instances[key] = (paper, _plans(paper, Sli(tpot_cap_s=eta)))
        jobs += [Job("sli", key, "sli-gate-and-route", s["sli_n"], k, s["sli_T"], s["sli_warm"])
                 for k in range(s["sli_seeds"])]
    if grid:
        for key, model in grid_instances().items():
            plans = _plans(model)
            instances[key] = (model, plans)
            sizes = [(s["grid_n"], s["grid_T"])]
            if plans["bundled"].prefill_throughput.sum() < 0.99 * model.arrival_rates.sum():  # overloaded
                sizes.append((s["grid_large_n"], s["grid_large_T"]))
            for n, horizon in sizes:
                for policy in BASELINES:
                    jobs += [Job("grid", key, policy, n, k, horizon, s["grid_warm"]) for k in range(s["grid_seeds"])]
    return jobs, instances


def estimate_s(jobs: list[Job], workers: int) -> float:
    """Rough wall seconds from the measured cost per simulated GPU-second (``_COST_S``)."""
    return sum(j.n * j.horizon_s for j in jobs) * _COST_PER_GPU_S / max(1, workers)


# ------------------------------------------------------------------------------------------ LP parts
def calibration_table() -> pd.DataFrame:
    """E1: Eq. (1)-(3) on the workbench's step models (B = 16, context 1024) beside the paper's vLLM fit."""
    from gpusched.perf import ProfiledStepTime, RooflineStepTime

    rows = [dict(source="paper: Qwen-8B, A100-40GB, vLLM 0.11 (spec §3.1)", alpha_s=PAPER_QWEN3_8B_A100.alpha_s,
                 beta_s_per_token=PAPER_QWEN3_8B_A100.beta_s_per_token, r_squared=PAPER_QWEN3_8B_A100.r_squared,
                 gamma_tokens_per_s=PAPER_QWEN3_8B_A100.gamma_tokens_per_s, solo_spread=np.nan,
                 knee_tokens=PAPER_QWEN3_8B_A100.knee_tokens)]
    models = {"roofline: llama3-8b, A100-40GB": lambda: RooflineStepTime("llama3-8b", "A100-40GB"),
              "roofline: llama3-8b, H100-80GB": lambda: RooflineStepTime("llama3-8b", "H100-80GB"),
              "profiled: llama3-8b, H100 tables": lambda: ProfiledStepTime.from_profile_dir("h100", model="llama3-8b")}
    for name, make in models.items():
        f = fit_iteration_time(make(), 16, 1024)
        rows.append(dict(source=name, alpha_s=f.alpha_s, beta_s_per_token=f.beta_s_per_token, r_squared=f.r_squared,
                         gamma_tokens_per_s=f.gamma_tokens_per_s, solo_spread=f.solo_spread, knee_tokens=f.knee_tokens))
    df = pd.DataFrame(rows)
    df["tau_256_s"] = df.alpha_s + 256 * df.beta_s_per_token
    df["gamma_tau"] = df.tau_256_s * df.gamma_tokens_per_s
    df["R_star_paper_classes"] = [
        solve_fluid(FluidModel(paper_classes(), 16, 256, t, g, 0.1, 0.2)).revenue
        for t, g in zip(df.tau_256_s, df.gamma_tokens_per_s)]
    return df


def sli_sweeps(points: int = 41) -> pd.DataFrame:
    """E7: LP revenue under each SLI constraint over a range of eta (bundled, q_d = 0), plus the spec's B4 rows."""
    m = paper_instance()
    grids = {"tpot_cap_s": np.linspace(1 / m.gamma_tokens_per_s + 1e-6, 0.026, points),
             "prefill_fairness": np.linspace(0.0, 0.2, points), "decode_fairness": np.linspace(0.0, 9.0, points)}
    rows = []
    for sli_name, etas in grids.items():
        for eta in sorted(set(etas.tolist()) | set(SPEC_B4[sli_name])):
            sol = solve_fluid(m, sli=Sli(**{sli_name: float(eta)}))
            rows.append(dict(sli=sli_name, eta=float(eta), revenue=sol.revenue, X=sol.mixed_fraction,
                             tpot_s=sol.tpot_s, x0=sol.x[0], x1=sol.x[1], ys0=sol.y_solo[0], ys1=sol.y_solo[1],
                             spec_revenue=SPEC_B4[sli_name].get(float(eta), np.nan)))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ the run
def run(out_dir: str = "results/gate_and_route", quick: bool = False, grid: bool = False, workers: int = 1,
        resume: bool = False) -> dict[str, pd.DataFrame]:
    """Run every part; write CSV, PNG and ``summary.md`` under ``out_dir``; return the tables."""
    from tqdm import tqdm

    scale = "quick" if quick else "full"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"scale": scale, "grid": grid, **{k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in SCALES[scale].items()}}
    runs_csv = out / "runs.csv"
    jobs, instances = build_jobs(scale, grid)
    done = _earlier_rows(runs_csv, jobs) if resume else {}
    if not resume:
        runs_csv.unlink(missing_ok=True)
    (out / "settings.json").write_text(json.dumps(settings, indent=1))

    t0 = time.perf_counter()
    calib = calibration_table()
    calib.to_csv(out / "calibration.csv", index=False)
    sweeps = sli_sweeps()
    sweeps.to_csv(out / "sli_lp.csv", index=False)

    todo = [j for j in jobs if j.key not in done]
    print(f"gate_and_route: {len(jobs)} simulations ({len(jobs) - len(todo)} already done), about "
          f"{estimate_s(todo, workers) / 60:.1f} min on {workers} worker(s); writing to {out}/", flush=True)
    rows = dict(done)
    order = [j.key for j in jobs]

    def save():
        pd.DataFrame([rows[k] for k in order if k in rows]).to_csv(runs_csv, index=False)

    args = [(j, *instances[j.instance]) for j in todo]
    bar = tqdm(total=len(todo), desc="gate_and_route")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for job, row in zip(todo, pool.map(_run_job_args, args)):
                rows[job.key] = row
                save()
                bar.update()
    else:
        for a in args:
            rows[a[0].key] = run_job(*a)
            save()
            bar.update()
    bar.close()
    df = pd.DataFrame([rows[k] for k in order])
    wall = time.perf_counter() - t0

    _plot_convergence(df, out / "convergence.png")
    _plot_policies(df, out / "policies.png")
    _plot_sli(sweeps, df, out / "sli_tradeoff.png")
    if grid:
        _plot_grid(df, out / "grid.png")
    (out / "summary.md").write_text(_markdown(df, calib, sweeps, scale, grid, wall))
    print(f"gate_and_route: wrote runs.csv, calibration.csv, sli_lp.csv, *.png and summary.md to {out}/ "
          f"in {wall:.0f} s")
    return {"runs": df, "calibration": calib, "sli_lp": sweeps}


def _earlier_rows(runs_csv: Path, jobs: list[Job]) -> dict:
    """Rows of an earlier run that simulated exactly one of ``jobs`` (same part, instance, policy, n, seed,
    horizon and warm-up), by job key; other rows are dropped."""
    if not runs_csv.exists():
        return {}
    wanted = {j.key: j for j in jobs}
    kept = {}
    for r in pd.read_csv(runs_csv).to_dict("records"):
        key = (r["part"], r["instance"], r["policy"], int(r["n"]), int(r["seed"]))
        job = wanted.get(key)
        if job is not None and (r["horizon_s"], r["warmup_s"]) == (job.horizon_s, job.warmup_s):
            kept[key] = r
    return kept


# ------------------------------------------------------------------------------------------ summaries
def convergence_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per instance, policy and n: mean and std over seeds of the revenue ratio, occupancy errors against the
    policy's own plan (``x_err``, ``ys_err``) and against the vertex split (``ys_err_vertex``), buffer."""
    d = df[df.part == "convergence"].copy()
    vertex = solve_fluid(paper_instance(), decode_split="solver").y_solo
    d["x_err"] = np.maximum(abs(d.x0 - d.x0_star), abs(d.x1 - d.x1_star))
    d["ys_err"] = np.maximum(abs(d.ys0 - d.ys0_star), abs(d.ys1 - d.ys1_star))
    d["ys_err_vertex"] = np.maximum(abs(d.ys0 - vertex[0]), abs(d.ys1 - vertex[1]))
    d["own_ratio"] = np.where(d.policy == "prioritize-and-route", d.ratio_separate, d.ratio)
    d["label"] = [PAPER_NAMES[p] + (" (vertex split)" if i == "paper-vertex" else "")
                  for p, i in zip(d.policy, d.instance)]
    g = d.groupby(["label", "instance", "policy", "n"], sort=False)
    return g.agg(mixed_gpus=("mixed_gpus", "first"), seeds=("seed", "count"), revenue=("revenue_bundled", "mean"),
                 revenue_separate=("revenue_separate", "mean"), ratio=("own_ratio", "mean"),
                 ratio_std=("own_ratio", "std"), x_err=("x_err", "mean"), ys_err=("ys_err", "mean"),
                 ys_err_vertex=("ys_err_vertex", "mean"), buffered=("buffered", "mean"),
                 wall_s=("wall_s", "mean")).reset_index()


def policies_table(df: pd.DataFrame, part: str = "policies") -> pd.DataFrame:
    d = df[df.part == part]
    g = d.groupby("policy", sort=False)
    return g.agg(seeds=("seed", "count"), ratio=("ratio", "mean"), ratio_std=("ratio", "std"),
                 ratio_separate=("ratio_separate", "mean"), revenue=("revenue_bundled", "mean"),
                 revenue_separate=("revenue_separate", "mean"), buffered=("buffered", "mean"),
                 mean_tpot_s=("mean_tpot_s", "mean"), wall_s=("wall_s", "mean")).reset_index()


def _markdown(df, calib, sweeps, scale, grid, wall) -> str:
    s = SCALES[scale]
    R = df.R_star.iloc[0]
    L = [f"# Gate-and-Route on its stochastic model ({scale} run)", "",
         f"{len(df)} simulations, {df.wall_s.sum() / 60:.1f} min of simulation in all (one process each); this "
         f"session {wall / 60:.1f} min.", ""]
    L += ["## E1: iteration-time law fitted on the workbench's step models", "",
          "B = 16 decodes at context 1024, chunks C in {128, ..., 2048}; gamma = 1 / (decode-only step of 16). "
          "R* = the bundled LP on the paper's two classes with that calibration.", "",
          "| source | alpha (s) | beta (s/token) | R^2 | gamma (tok/s) | knee (tokens) | gamma tau(256) | R* |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in calib.itertuples():
        L.append(f"| {r.source} | {r.alpha_s:.4f} | {r.beta_s_per_token:.2e} | {r.r_squared:.4f} | "
                 f"{r.gamma_tokens_per_s:.2f} | {r.knee_tokens:.0f} | {r.gamma_tau:.3f} | {r.R_star_paper_classes:.2f} |")
    conv = convergence_table(df)
    vertex = solve_fluid(paper_instance(), decode_split="solver").y_solo
    L += ["", f"## E2-E5: convergence to the fluid optimum (paper's instance, {s['conv_seeds']} seeds, "
          f"horizon {s['conv_T']:g} s, warm-up {s['conv_warm']:g} s)", "",
          f"Bundled R* = {R:.5f} (spec 297.70317), separate R~* = {df.R_sep_star.iloc[0]:.5f} (spec 298.58656). "
          "Ratio = simulated revenue / the policy's own fluid optimum (bundled R*; R~* for Prioritize-and-Route, "
          "billed separately). x err = max_i |X_i/n - x_i*|, ys err = max_i |Y_s,i/n - y_s,i*| against the policy's "
          "own plan (the proportional split of spec B5, or HiGHS's vertex split for the 'vertex split' rows); "
          f"ys err vs vertex = the same against the vertex split y_s* = ({vertex[0]:.3f}, {vertex[1]:.3f}).", "",
          "| policy | n | M | revenue / GPU-s | ratio (± std) | gap | spec gap | x err | ys err | ys err vs vertex | buffer / GPU |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in conv.itertuples():
        spec = f"{SPEC_GAPS[r.n]:.1%}" if r.policy == "gate-and-route" and r.n in SPEC_GAPS else ""
        rev = r.revenue_separate if r.policy == "prioritize-and-route" else r.revenue
        std = f" ± {r.ratio_std:.4f}" if r.seeds > 1 else ""
        L.append(f"| {r.label} | {r.n} | {r.mixed_gpus} | {rev:.2f} | {r.ratio:.4f}{std} | {1 - r.ratio:.1%} | {spec} | "
                 f"{r.x_err:.4f} | {r.ys_err:.3f} | {r.ys_err_vertex:.3f} | {r.buffered:.3f} |")
    pol = policies_table(df)
    L += ["", f"## E6: policies on the calibrated instance (n = {s['pol_n']}, {s['pol_seeds']} seeds, horizon "
          f"{s['pol_T']:g} s)", "",
          "Normalised revenue = bundled revenue / R* (spec §7.11). The paper shows this comparison only as a figure "
          "over many instances (no numbers); its ordering is GG-SP > GI-WSP > FI-WSP, and a secondary summary "
          "(unverified) reads FI-WSP as about 30 % below the optimum.", "",
          "| policy | paper name | revenue / R* (± std) | separate revenue / R~* | decode buffer / GPU | mean TPOT (ms) |",
          "|---|---|---:|---:|---:|---:|"]
    for r in pol.sort_values("ratio", ascending=False).itertuples():
        std = f" ± {r.ratio_std:.4f}" if r.seeds > 1 else ""
        L.append(f"| {r.policy} | {PAPER_NAMES[r.policy]} | {r.ratio:.4f}{std} | {r.ratio_separate:.4f} | "
                 f"{r.buffered:.3f} | {1e3 * r.mean_tpot_s:.2f} |")
    if grid:
        L += ["", "## E6 on the spec's [R] grid", "",
              "Per instance, revenue / R*; 'best' counts the instances where the policy earned most. Underloaded "
              "instances (the LP serves everything) can exceed 1 by sampling noise.", "",
              "| instances | n | horizon (s) | policy | paper name | mean revenue / R* | std | min | best on |",
              "|---|---:|---:|---|---|---:|---:|---:|---:|"]
        for n, d in df[df.part == "grid"].groupby("n"):
            which = "all" if d.instance.nunique() == 54 else "overloaded"
            best = d.loc[d.groupby(["instance", "seed"]).ratio.idxmax()].policy.value_counts()
            for policy, v in d.groupby("policy", sort=False).ratio:
                L.append(f"| {which} ({d.instance.nunique()}) | {n} | {d.horizon_s.iloc[0]:g} | {policy} | "
                         f"{PAPER_NAMES[policy]} | {v.mean():.4f} | {v.std():.4f} | {v.min():.4f} | "
                         f"{int(best.get(policy, 0))} |")
    L += ["", "## E7: SLI trade-offs (LP, bundled, q_d = 0) against spec B4", "",
          "| SLI | eta | R* ours | R* spec | X | TPOT (ms) |", "|---|---:|---:|---:|---:|---:|"]
    for r in sweeps[sweeps.spec_revenue.notna()].itertuples():
        L.append(f"| {r.sli} | {r.eta:g} | {r.revenue:.6f} | {r.spec_revenue:.6f} | {r.X:.6f} | {1e3 * r.tpot_s:.3f} |")
    sli = df[df.part == "sli"].groupby("instance", sort=False).agg(
        n=("n", "first"), ratio=("ratio", "mean"), revenue=("revenue_bundled", "mean"), R_star=("R_star", "first"),
        tpot=("mean_tpot_s", "mean"), plan_tpot=("plan_tpot_s", "first"), solo=("solo_pool_tokens_share", "mean"),
        plan_solo=("plan_solo_token_share", "first")).reset_index()
    uncapped = conv[(conv.policy == "sli-gate-and-route") & (conv.instance == "paper")].tail(1)
    L += ["", "SLI-aware Gate-and-Route (randomised router) simulated under TPOT caps:", "",
          "| plan | n | LP R* | simulated revenue | ratio | plan TPOT (ms) | simulated TPOT (ms) | plan solo token share | simulated |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sli.itertuples():
        L.append(f"| {r.instance} | {r.n} | {r.R_star:.2f} | {r.revenue:.2f} | {r.ratio:.4f} | {1e3 * r.plan_tpot:.3f} | "
                 f"{1e3 * r.tpot:.3f} | {r.plan_solo:.4f} | {r.solo:.4f} |")
    if len(uncapped):
        u = uncapped.iloc[0]
        L.append(f"| uncapped (convergence part) | {u.n} | {R:.2f} | {u.revenue:.2f} | {u.ratio:.4f} | "
                 f"{1e3 * df.plan_tpot_s.iloc[0]:.3f} | | | |")
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)


def _plot_convergence(df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    conv = convergence_table(df)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for label, d in conv.groupby("label", sort=False):
        axes[0].errorbar(d.n, 1 - d.ratio, yerr=d.ratio_std.fillna(0), marker="o", capsize=3, label=label)
        axes[1].plot(d.n, d.x_err, marker="o", label=label)
        axes[2].plot(d.n, d.ys_err, marker="o", label=f"{label} vs own plan")
        if d.instance.iloc[0] == "paper" and d.policy.iloc[0] == "gate-and-route":
            axes[2].plot(d.n, d.ys_err_vertex, marker="x", ls=":", label=f"{label} vs vertex split")
    axes[0].plot(list(SPEC_GAPS), list(SPEC_GAPS.values()), "k*", ms=10, label="spec B6 check (G&R)")
    axes[0].set(ylabel="1 - revenue / fluid optimum", title="Revenue gap (paper's instance)")
    axes[1].set(ylabel="max_i |X_i/n - x_i*| (GPU fraction)", title="Prefill occupancy vs plan (E3)")
    axes[2].set(ylabel="max_i |Y_s,i/n - y_s,i*| (streams per GPU)", title="Solo decode occupancy vs plan (E3/E4)")
    for ax in axes:
        ax.set(xscale="log", xlabel="GPUs n")
        ax.legend(fontsize=8)
    _save(fig, path)


def _plot_policies(df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    t = policies_table(df).sort_values("ratio", ascending=False)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([PAPER_NAMES[p] for p in t.policy], t.ratio, yerr=t.ratio_std.fillna(0), capsize=4, color="tab:blue")
    lo = max(0.0, float(t.ratio.min()) - 0.05)
    ax.set(ylim=(lo, 1.0), ylabel="bundled revenue / R*", xlabel="policy",
           title=f"Policies on the calibrated instance (n = {int(df[df.part == 'policies'].n.iloc[0])})")
    ax.axhline(1.0, color="k", lw=0.8, label="fluid optimum R*")
    ax.legend()
    _save(fig, path)


def _plot_sli(sweeps: pd.DataFrame, df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = {"tpot_cap_s": ("TPOT cap eta_3 (ms)", 1e3, "Average TPOT cap (47)", 0.026),
              "prefill_fairness": ("max_ij (x_i - x_j) <= eta_1", 1.0, "Prefill fairness (43)", 0.2),
              "decode_fairness": ("max_ij (y_s,i - y_s,j) <= eta_2 (streams/GPU)", 1.0, "Decode fairness (45)", 9.0)}
    for ax, (sli, (xlabel, scale, title, top)) in zip(axes, labels.items()):
        d = sweeps[(sweeps.sli == sli) & (sweeps.eta <= top + 1e-12)].sort_values("eta")
        ax.plot(d.eta * scale, d.revenue, label="LP (ours)")
        spec = d[d.spec_revenue.notna()]
        ax.plot(spec.eta * scale, spec.spec_revenue, "k*", ms=9, label="spec B4")
        if sli == "tpot_cap_s":
            sim = df[df.part == "sli"].groupby("instance").agg(eta=("instance", "first"), rev=("revenue_bundled", "mean"))
            etas = [float(k.split("<=")[1]) for k in sim.index]
            ax.plot(np.array(etas) * 1e3, sim.rev, "rs", label="simulated SLI G&R")
        ax.set(xlabel=xlabel, ylabel="LP revenue per GPU-second", title=title)
        ax.legend(fontsize=8)
    _save(fig, path)


def _plot_grid(df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    groups = list(df[df.part == "grid"].groupby("n"))
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4), squeeze=False)
    for ax, (n, d) in zip(axes[0], groups):
        ax.boxplot([d[d.policy == p].ratio.values for p in BASELINES])
        ax.set_xticks(range(1, len(BASELINES) + 1), [PAPER_NAMES[p] for p in BASELINES])
        ax.set(ylabel="bundled revenue / R*", xlabel="policy",
               title=f"[R] grid: {d.instance.nunique()} instances, n = {n}")
    _save(fig, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small n and short horizons (about a minute)")
    ap.add_argument("--grid", action="store_true", help="also run the spec's [R] baseline grid (E6)")
    ap.add_argument("--workers", type=int, default=1, help="simulations in parallel processes")
    ap.add_argument("--out", default="results/gate_and_route")
    ap.add_argument("--resume", action="store_true", help="keep the runs an interrupted run with the same settings "
                    "already wrote to --out")
    ap.add_argument("--parts", nargs="+", default=["model"], choices=["model", "serving", "real"],
                    help="model: the stochastic-model parts above (default); serving, real: the serving engine and "
                         "the Azure trace (experiments.gate_and_route_serving)")
    a = ap.parse_args(argv)
    engine_parts = [p for p in a.parts if p != "model"]
    if engine_parts:
        from experiments import gate_and_route_serving
        print(gate_and_route_serving.run(a.out, engine_parts, a.quick)["markdown"])
        if "model" not in a.parts:
            return
    if a.workers < 1 or a.workers > (os.cpu_count() or 1) * 4:
        raise ConfigError(f"--workers {a.workers} must be between 1 and {(os.cpu_count() or 1) * 4}")
    run(a.out, quick=a.quick, grid=a.grid, workers=a.workers, resume=a.resume)
    print((Path(a.out) / "summary.md").read_text())


if __name__ == "__main__":
    main()
