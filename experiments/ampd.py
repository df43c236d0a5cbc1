"""AMPD (arXiv 2602.14516), phase 1: the parts that need no serving engine.

Parts (``--parts``, default all):

* ``perf`` -- the §2.1 performance model on the paper's testbed (H20, roofline: Llama-3.1-70B at TP 2/4/8,
  Qwen3-32B at TP 1/2/4/8) and on the measured H100 profile (Llama-3-8B, TP 1/2/4/8): sample values of T_pre
  with and without history, T_dec, T_kv, and the error of the fitted piecewise α-β model against its source.
* ``workloads`` -- the four session stand-ins (seeded) against the paper's Table 1; how many sessions outgrow
  each model's context window; the traces saved in the project's CSV format for phase 2.
* ``planner`` -- the spec's T3 toy: the planner's top-3 at 8/16/32 GPUs against the spec's hand values, and the
  planning time against the GPU budget up to 256 (paper: about a minute at 256 GPUs, most of it simulating the
  coefficients, which phase 2 adds).
* ``reorder`` -- Algorithm 2 alone on one H20 prefill worker (Llama-3.1-70B TP4) serving DuReader prefills at
  several loads, for windows w = 1..5 (w = 1 is FCFS). One worker in isolation, not the paper's Fig. 6 (phase 2).
* ``serving`` (phase 2, not in the default set) -- the four systems and the ablation served end to end in the
  session engine: :mod:`experiments.ampd_serving` (``--quick`` about a minute).

Writes ``ampd_<part>.csv``, ``.png`` and one ``ampd.md`` under ``--out`` (default ``results/ampd``).
Run: ``python -m experiments.ampd [--quick] [--parts perf,planner]`` (about 20 s; ``--quick`` about 10 s).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from formulations.ampd import (WORKLOADS, PerfModel, PiecewiseAlphaBeta, PrefillTask, StepTimes,  # noqa: E402
                               ToyPlannerCosts, agent_trace, enumerate_layouts, plan_deployment,
                               replay_prefill_queue, save_sessions, scaled_slo, session_prefills)
from formulations.ampd.testbed import H20, NVLINK_H20, QWEN3_32B  # noqa: E402
from gpusched.llm import get_model  # noqa: E402
from gpusched.perf import ProfiledStepTime, RooflineStepTime  # noqa: E402

PARTS = ("perf", "workloads", "planner", "reorder", "serving")
DEFAULT_PARTS = PARTS[:4]  # serving (phase 2, minutes) on request: --parts serving


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- perf
def perf_part(out: Path, quick: bool) -> tuple[pd.DataFrame, str]:
    llama = get_model("llama3.1-70b")
    sources = [(f"{m.name} H20 TP{tp} roofline", RooflineStepTime(m, H20, tp=tp), m.kv_bytes_per_token())
               for m, tps in ((llama, (2, 4, 8)), (QWEN3_32B, (1, 2, 4, 8))) for tp in tps]
    sources += [(f"llama3-8b H100 TP{tp} profiled", ProfiledStepTime.from_profile_dir("h100", model="llama3-8b", tp=tp),
                 get_model("llama3-8b").kv_bytes_per_token()) for tp in ((1, 4) if quick else (1, 2, 4, 8))]
    rows = []
    for name, step, kv in tqdm(sources, desc="perf", unit="model"):
        exact = StepTimes(step)
        fit = PiecewiseAlphaBeta.fit(step)
        err = fit.fit_error(step, num_points=200 if quick else 1000, max_incr_tokens=4096)
        err_all = fit.fit_error(step, num_points=200 if quick else 1000)
        over_ib = PerfModel({"x": exact, "y": exact}, kv)                        # AMPD_NETWORK_LINK
        over_nvlink = PerfModel({"x": exact, "y": exact}, kv, link=NVLINK_H20)
        rows.append(dict(source=name, t_pre_0_1570_s=exact.prefill_time_s(0, 1570),
                         t_pre_6000_500_s=exact.prefill_time_s(6000, 500), t_pre_0_500_s=exact.prefill_time_s(0, 500),
                         t_dec_b32_ctx4k_s=exact.decode_time_s(32, 32 * 4000),
                         t_kv_6000_ib_s=over_ib.kv_time_s(6000, "x", "y"),
                         t_kv_6000_nvlink_s=over_nvlink.kv_time_s(6000, "x", "y"),
                         fit_prefill_mean_pct=err.prefill_mean_pct, fit_prefill_max_pct=err.prefill_max_pct,
                         fit_prefill_max_pct_to16k=err_all.prefill_max_pct,
                         fit_decode_mean_pct=err.decode_mean_pct, fit_decode_max_pct=err.decode_max_pct))
    df = pd.DataFrame(rows)
    df.to_csv(out / "ampd_perf.csv", index=False)
    # T_pre against history for three increments, exact and fitted, on the paper's Llama-3.1-70B TP4 H20
    step = RooflineStepTime(llama, H20, tp=4)
    exact, fit = StepTimes(step), PiecewiseAlphaBeta.fit(step)
    hist = np.linspace(0, 32000, 33).astype(int)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m, colour in ((256, "C0"), (1024, "C1"), (4096, "C2")):
        ax.plot(hist, [exact.prefill_time_s(int(h), m) * 1e3 for h in hist], colour, label=f"{m} new tokens (step model)")
        ax.plot(hist, [fit.prefill_time_s(int(h), m) * 1e3 for h in hist], colour + "--", label=f"{m} new tokens (α-β fit)")
    ax.set(title="AMPD T_pre(l_hist, l_incr): Llama-3.1-70B, H20 TP4 (roofline)", xlabel="cached history l_hist (tokens)",
           ylabel="prefill time (ms)")
    ax.legend(fontsize=7)
    _save(fig, out / "ampd_perf.png")
    md = ["## Performance model (§2.1)", "",
          "T_pre/T_dec from the step model; T_kv = 1 ms + bytes / bandwidth (IB 25 GB/s, NVLink 450 GB/s one way). "
          "Fit = piecewise α-β (per range of new tokens: α + β_new m + β_hist h + β_attn m(h + m/2); per range of "
          "batch: α + β_seq b + β_ctx ΣC), error vs its source on random off-grid points (chunks ≤ 4096; "
          "'max to 16k' lets chunks grow to 16k, where the H100 profile extrapolates its chunked-attention table). "
          "The paper gives no profiled numbers to compare with.", "",
          "| source | T_pre(0,1570) ms | T_pre(6000,500) ms | T_pre(0,500) ms | T_dec(32 × 4k) ms | T_kv(6000) IB / NVLink ms "
          "| fit prefill mean / max % | max to 16k % | fit decode mean / max % |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['source']} | {r['t_pre_0_1570_s']*1e3:.1f} | {r['t_pre_6000_500_s']*1e3:.1f} | "
                  f"{r['t_pre_0_500_s']*1e3:.1f} | {r['t_dec_b32_ctx4k_s']*1e3:.1f} | "
                  f"{r['t_kv_6000_ib_s']*1e3:.1f} / {r['t_kv_6000_nvlink_s']*1e3:.1f} | "
                  f"{r['fit_prefill_mean_pct']:.2f} / {r['fit_prefill_max_pct']:.2f} | {r['fit_prefill_max_pct_to16k']:.1f} | "
                  f"{r['fit_decode_mean_pct']:.2f} / {r['fit_decode_max_pct']:.2f} |")
    return df, "\n".join(md)


# -------------------------------------------------------------------------------------- workloads
def workloads_part(out: Path, quick: bool) -> tuple[pd.DataFrame, str]:
    n = 500 if quick else 3000
    rows = []
    for name, w in tqdm(WORKLOADS.items(), desc="workloads", unit="trace"):
        trace = agent_trace(name, rate_per_s=1.0, num_sessions=n, seed=0)
        save_sessions(trace, out / f"ampd_trace_{name}.csv")
        pre = session_prefills(trace)
        last = trace.df.sort_values("round").groupby("session_id").last()
        context = last["prompt_tokens"] + last["output_tokens"]
        rows.append(dict(workload=name, sessions=n, rounds_mean=len(pre) / n, rounds_paper=w.mean_rounds,
                         incr_mean=pre["incr_tokens"].mean(), incr_paper=w.mean_incr_tokens,
                         output_mean=pre["output_tokens"].mean(), output_paper=w.mean_output_tokens,
                         interaction_median_s=pre.loc[pre["round"] > 0, "think_time_s"].median(),
                         context_p50=context.median(), context_p99=context.quantile(0.99),
                         over_qwen3_40k_pct=100 * (context > QWEN3_32B.max_context_tokens).mean(),
                         over_llama_128k_pct=100 * (context > get_model("llama3.1-70b").max_context_tokens).mean()))
    df = pd.DataFrame(rows)
    df.to_csv(out / "ampd_workloads.csv", index=False)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    x = np.arange(len(df))
    for ax, (ours, paper, label) in zip(axes, (("incr_mean", "incr_paper", "new input tokens per round"),
                                               ("output_mean", "output_paper", "output tokens per round"))):
        ax.bar(x - 0.2, df[ours], 0.4, label="stand-in (ours)")
        ax.bar(x + 0.2, df[paper], 0.4, label="paper Table 1")
        ax.set(xticks=x, xticklabels=df["workload"], ylabel="tokens", title=label, yscale="log")
        ax.legend(fontsize=7)
    fig.suptitle(f"AMPD session stand-ins, {n} sessions each (seed 0)")
    _save(fig, out / "ampd_workloads.png")
    md = ["## Workloads (§4): stand-ins vs the paper's Table 1", "",
          "Rounds 1 + Geometric (ToolBench, GAIA) or 3 (HotpotQA, DuReader); lengths log-normal, CV 1; interaction "
          "log-normal median 1 s σ 1 (tools) or 0.2 s (retrieval) -- spec §4 [R]. Context = the session's last "
          "prompt + output.", "",
          "| workload | rounds ours / paper | new tokens ours / paper | output ours / paper | interaction p50 s "
          "| context p50 / p99 | > 40,960 (Qwen3-32B) | > 131,072 (Llama-3.1-70B) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['workload']} | {r['rounds_mean']:.2f} / {r['rounds_paper']:.2f} | {r['incr_mean']:.0f} / "
                  f"{r['incr_paper']:.0f} | {r['output_mean']:.1f} / {r['output_paper']:.1f} | "
                  f"{r['interaction_median_s']:.2f} | {r['context_p50']:.0f} / {r['context_p99']:.0f} | "
                  f"{r['over_qwen3_40k_pct']:.1f} % | {r['over_llama_128k_pct']:.1f} % |")
    return df, "\n".join(md)


# ---------------------------------------------------------------------------------------- planner
SPEC_T3 = {  # spec §6 T3/T3b/T3c: (GPUs, degrees) -> [(prefill, decode, Z)] in rank order, hand-computed
    (8, (1, 2, 4, 8)): [((4, 1), (4, 1), math.log(20) / 4), ((4, 1), (2, 2), 0.853333)],
    (16, (1, 2, 4)): [((4, 2), (4, 2), math.log(20) / 5), ((4, 2), (2, 4), 0.693333), (None, None, 0.704)],
    (16, (1, 2, 4, 8)): [((8, 1), (8, 1), 0.44), ((8, 1), (4, 2), 0.512)],
}


def _fmt(layout) -> str:
    p, d = layout
    return "-" if p is None else f"P<{p[0]},{p[1]}> D<{d[0]},{d[1]}>"


def planner_part(out: Path, quick: bool) -> tuple[pd.DataFrame, str]:
    toy = ToyPlannerCosts()
    md = ["## Planner (§2.5): the spec's toy (T3), top-3, MILP on HiGHS = enumeration", "",
          "| GPUs | 𝒯 | rank | ours (MILP) | Z | enumeration agrees | spec |", "|---:|---|---:|---|---:|---|---|"]
    for (n, degrees), spec in SPEC_T3.items():
        plan = plan_deployment(toy.prefill, toy.decode, n, degrees, top_k=3)
        enum = enumerate_layouts(toy.prefill, toy.decode, n, degrees)[:3]
        for rank, (a, e) in enumerate(zip(plan.alternatives, enum), start=1):
            s = spec[rank - 1] if rank <= len(spec) else None
            spec_txt = "" if s is None else f"{_fmt(s[:2])} Z={s[2]:.6f}"
            md.append(f"| {n} | {{{', '.join(map(str, degrees))}}} | {rank} | {_fmt((a.prefill, a.decode))} | {a.objective:.6f} | "
                      f"{'yes' if a == e else 'NO'} | {spec_txt} |")
    md += ["", "At 16 GPUs with 𝒯 = {1, 2, 4}, Z = 0.704 is shared by P<4,3> D<4,1> and P<4,2> D<4,1> (decode binds "
           "both); the spec names the second, our ranking puts the cheaper prefill first.", ""]
    budgets = (8, 16, 32, 64, 128, 256)
    rows = []
    for n in tqdm(budgets, desc="planner time", unit="budget"):
        scaled = ToyPlannerCosts(prefill_rate_per_s=2.0 * n / 8, decode_sessions=120.0 * n / 8)  # load grows with N
        for method in ("milp", "enumeration"):
            reps = 1 if quick else 3
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                plan = plan_deployment(scaled.prefill, scaled.decode, n, top_k=3, method=method)
                times.append(time.perf_counter() - t0)
            rows.append(dict(num_gpus=n, method=method, wall_s=min(times), solve_s=plan.solve_time_s,
                             candidates_prefill=plan.num_candidates[0], candidates_decode=plan.num_candidates[1],
                             cost_evaluations=plan.cost_evaluations, solves=plan.num_solves,
                             best=_fmt((plan.prefill, plan.decode)), objective=plan.objective))
    df = pd.DataFrame(rows)
    df.to_csv(out / "ampd_planner.csv", index=False)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, g in df.groupby("method"):
        ax.plot(g["num_gpus"], g["wall_s"], "o-", label=f"{method} (top-3)")
    ax.axhline(60, color="grey", ls=":", label="paper: about 1 min at 256 GPUs (incl. simulation)")
    ax.set(xscale="log", yscale="log", xlabel="GPU budget N", ylabel="planning time (s)",
           title="AMPD planner time, analytic toy costs (phase 1)")
    ax.legend(fontsize=7)
    _save(fig, out / "ampd_planner.png")
    md += ["Planning time, toy costs with the load scaled to the budget (rate 2N/8 /s, N/8 x 120 sessions), top-3, "
           "best of 3 runs. Cost evaluations = candidates the estimator must price: in phase 2 each is a simulation, "
           "which is where the paper's minute goes.", "",
           "| GPUs | method | wall s | candidates P / D | cost evaluations | HiGHS solves | best | Z |",
           "|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        md.append(f"| {r['num_gpus']} | {r['method']} | {r['wall_s']:.3f} | {r['candidates_prefill']} / "
                  f"{r['candidates_decode']} | {r['cost_evaluations']} | {r['solves']} | {r['best']} | {r['objective']:.4f} |")
    return df, "\n".join(md)


# ---------------------------------------------------------------------------------------- reorder
def reorder_part(out: Path, quick: bool, seed: int) -> tuple[pd.DataFrame, str]:
    step = RooflineStepTime(get_model("llama3.1-70b"), H20, tp=4)
    worker = StepTimes(step)
    pre = session_prefills(agent_trace("dureader", 1.0, 300 if quick else 2000, seed=seed))
    slo = scaled_slo(worker, WORKLOADS["dureader"].mean_incr_tokens)
    t_pre = np.array([worker.prefill_time_s(h, m) for h, m in zip(pre["hist_tokens"], pre["incr_tokens"])])
    rows = []
    loads = (0.8, 0.95) if quick else (0.7, 0.8, 0.9, 0.95, 1.0)
    grid = [(load, w) for load in loads for w in (1, 2, 3, 4, 5)]
    for load, w in tqdm(grid, desc="reorder", unit="run"):
        rng = np.random.default_rng([seed, int(load * 100)])
        enq = np.cumsum(rng.exponential(t_pre.mean() / load, len(pre)))   # Poisson at `load` x capacity
        tasks = [PrefillTask(i, int(h), int(m), float(t))
                 for i, (h, m, t) in enumerate(zip(pre["hist_tokens"], pre["incr_tokens"], enq))]
        served = replay_prefill_queue(tasks, lambda t: worker.prefill_time_s(t.hist_tokens, t.incr_tokens),
                                      slo.ttft_s, window=w)
        rows.append(dict(load=load, window=w, ttft_attainment=served["meets_ttft"].mean(),
                         ttft_mean_s=served["ttft_s"].mean(), ttft_p99_s=served["ttft_s"].quantile(0.99),
                         max_postponed=int(served["postponed"].max()), tasks=len(served)))
    df = pd.DataFrame(rows)
    df.to_csv(out / "ampd_reorder.csv", index=False)
    fig, ax = plt.subplots(figsize=(6, 4))
    for load, g in df.groupby("load"):
        ax.plot(g["window"], 100 * g["ttft_attainment"], "o-", label=f"load {load:g}")
    ax.set(xlabel="reorder window w (1 = FCFS)", ylabel="prefills meeting TTFT (%)",
           title=f"Algorithm 2 alone: one H20 TP4 worker, DuReader prefills, TTFT {slo.ttft_s:.2f} s")
    ax.legend(fontsize=7)
    _save(fig, out / "ampd_reorder.png")
    md = ["## Algorithm 2 alone (one prefill worker; not the paper's experiment)", "",
          f"Llama-3.1-70B on H20 TP4 (roofline), DuReader stand-in prefills (initial and incremental) arriving "
          f"Poisson at `load` x the worker's mean service rate; TTFT_thres = 5 x T_pre of the mean increment = "
          f"{slo.ttft_s:.3f} s. The paper's window sweep (w = 2..5 within 3 %) is on the full system (phase 2).", "",
          "| load | w | TTFT attainment | mean TTFT s | p99 TTFT s | max postponed |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['load']:g} | {r['window']} | {100 * r['ttft_attainment']:.1f} % | {r['ttft_mean_s']:.3f} | "
                  f"{r['ttft_p99_s']:.3f} | {r['max_postponed']} |")
    return df, "\n".join(md)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer points and sessions (about 10 s)")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated subset of {PARTS} (default: the first four)")
    ap.add_argument("--out", default="results/ampd")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"AMPD phase 1: parts {parts}, estimated {'~10' if a.quick else '~20-40'} s; writing to {out}/")
    sections = ["# AMPD (arXiv 2602.14516), phase 1", "",
                f"`python -m experiments.ampd{' --quick' if a.quick else ''} --parts {','.join(parts)}`", ""]
    for part in parts:
        t0 = time.perf_counter()
        if part == "reorder":
            _, md = reorder_part(out, a.quick, a.seed)
        elif part == "serving":                    # phase 2: experiments/ampd_serving.py
            from experiments.ampd_serving import run_serving
            md = run_serving(out, a.quick, a.seed)
        else:
            _, md = {"perf": perf_part, "workloads": workloads_part, "planner": planner_part}[part](out, a.quick)
        sections += [md, ""]
        (out / "ampd.md").write_text("\n".join(sections))   # partial results as they come
        print(f"  {part}: {time.perf_counter() - t0:.1f} s -> {out}/ampd_{part}.csv, .png")
    print(f"wrote {out}/ampd.md")


if __name__ == "__main__":
    main()
