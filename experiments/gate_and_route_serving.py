"""Gate-and-Route (arXiv 2602.02987) on the serving engine: real step times, KV, a real trace (issue 17, phase 2).

Parts:

* ``serving``: revenue per GPU-second / fluid optimum ``R*`` vs ``n`` for Gate-and-Route on the spec's calibrated
  instance (B3: Qwen-8B/A100 fit, ``B = 16``, ``C = 256``, two classes), served by the dispatch engine
  (:func:`simulators.serving.dispatch.simulate_dispatch`) with Eq. (1) as the step model, prompts of ``P_i``
  tokens and geometric outputs of mean ``D_i``, next to the paper's exact CTMC (:mod:`formulations.gate_and_route
  .stochastic`) at the same ``n``; and every policy of spec §2.8 at one ``n`` on both.
* ``real``: the Azure LLM 2023 conversation trace, time-compressed to load 8 H100s serving Llama-3-8B (the shared
  profiled step model), two classes by prompt length (split at the median; classes and rates from the trace,
  Eq. (1)-(3) fitted on the step model), patience ``Exp(theta)``: the paper's policies on the dispatch engine
  against vLLM-style colocated serving (``vllm-v1`` behind ``least-outstanding-tokens``; with ``max_num_seqs = B``
  and with vLLM's default 256) and a plain prefill/decode split (``M = ceil(n X*)`` prefill instances, the rest
  decode, ``vllm-v1`` with ``max_num_seqs = B``), with the same patience model (``simulate(...,
  abandon_rate_per_s=theta)``: a request not scheduled within its ``Exp(theta)`` patience leaves).

Run: ``python -m experiments.gate_and_route --parts serving real [--quick]`` (or this module directly).
Writes ``serving.csv``, ``real.csv``, ``serving.png``, ``real.png`` and ``serving.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from formulations.gate_and_route import (PAPER_QWEN3_8B_A100, make_policy, paper_instance, simulate_stochastic,
                                         solve_fluid)
from formulations.gate_and_route.dispatcher import GateRouteDispatcher, fluid_model_from_trace
from formulations.gate_and_route.workload import IterationLawStepTime, class_trace, engine_timed_policy
from gpusched.errors import ConfigError
from gpusched.trace import Trace
from simulators.serving.dispatch import revenue_rate, simulate_dispatch
from simulators.serving.run import InstanceConfig, simulate

PARTS = ("serving", "real")
ENGINE_TIMED = "gate-and-route-engine-timed"  # [R] M and gate targets from the engine's prefill times (workload.py)
POLICIES = ("gate-and-route", "prioritize-and-route", "sli-gate-and-route", "fg-sp", "gi-wsp", "gf-wsp", "fi-wsp")
SCALES = {
    "full": dict(ns=(10, 20, 50), T=600.0, pol_n=20, pol_T=600.0, real_fraction=1.0),
    "quick": dict(ns=(5, 10), T=150.0, pol_n=10, pol_T=150.0, real_fraction=0.12),
}
QWEN3_8B_KV_BYTES = 147_456  # spec §3.3
REAL = dict(num_gpus=8, max_decodes=16, chunk_tokens=512, time_compression=16.0, theta=0.1, warmup_fraction=0.2)


# ------------------------------------------------------------------ part "serving": the calibrated instance
def _paper_gpu() -> InstanceConfig:
    return InstanceConfig(IterationLawStepTime(PAPER_QWEN3_8B_A100), num_kv_blocks=200_000,
                          kv_bytes_per_token=QWEN3_8B_KV_BYTES)


def engine_vs_ctmc(policy: str, n: int, T: float, seed: int = 0) -> dict:
    """One policy at ``n`` GPUs over ``T`` s (warm-up ``T/5``) on the engine and on the CTMC."""
    model = paper_instance()
    sol = solve_fluid(model, "separate" if policy == "prioritize-and-route" else "bundled")
    bundled = solve_fluid(model)
    if policy == ENGINE_TIMED:
        pol = engine_timed_policy(bundled, _paper_gpu().step_model, n, seed=seed)
    else:
        pol = make_policy(policy, sol, n, seed=seed)
    d = GateRouteDispatcher(pol, model)
    trace = class_trace(model, n, T, seed=seed + 1)
    t0 = time.perf_counter()
    r = simulate_dispatch(trace, _paper_gpu(), n, d, abandon_rate_per_s=d.abandon_rate_per_s, seed=seed, until_s=T)
    wall = time.perf_counter() - t0
    warm = T / 5
    rev = revenue_rate(r.requests, n, model.price_prefill, model.price_decode, warm, T)
    ctmc = simulate_stochastic(model, make_policy("gate-and-route" if policy == ENGINE_TIMED else policy, sol, n,
                                                  seed=seed), T, warm, seed=seed)
    st = r.requests.status
    inwin = r.requests.arrival_time_s >= warm
    return {"policy": policy, "n": n, "T_s": T, "seed": seed, "mixed_gpus": r.modes.count("mixed"),
            "R_star": bundled.revenue, "engine_revenue": rev, "engine_ratio": rev / bundled.revenue,
            "ctmc_revenue": ctmc.revenue_bundled, "ctmc_ratio": ctmc.revenue_bundled / bundled.revenue,
            "abandoned_share": float(st[inwin].str.startswith("abandoned").mean()),
            "ttft_mean_s": float(r.requests.ttft_s[inwin].mean()), "tpot_mean_s": float(r.requests.tpot_s[inwin].mean()),
            "steps": r.num_steps, "wall_s": wall}


def serving_part(scale: dict) -> pd.DataFrame:
    rows = [engine_vs_ctmc(p, n, scale["T"]) | {"sweep": "n"} for p in ("gate-and-route", ENGINE_TIMED)
            for n in scale["ns"]]
    rows += [engine_vs_ctmc(p, scale["pol_n"], scale["pol_T"]) | {"sweep": "policies"} for p in POLICIES]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ part "real": Azure conversation, 8 H100s
def azure_setup(fraction: float):
    """The time-compressed Azure conversation trace (first ``fraction`` of it), the H100 GPU, the fluid model."""
    from gpusched.kvcache import kv_capacity
    from gpusched.llm import get_model
    from gpusched.perf import ProfiledStepTime
    from gpusched.workload import load_trace

    df = load_trace("azure-conv-2023").df.copy()
    df["arrival_time_s"] = df["arrival_time_s"] / REAL["time_compression"]
    df = df[df["arrival_time_s"] <= fraction * df["arrival_time_s"].max()].reset_index(drop=True)
    trace = Trace(df, name="azure-conv-2023-compressed", source="azure-conv-2023",
                  meta={"time_compression": REAL["time_compression"], "fraction": fraction})
    step = ProfiledStepTime.from_profile_dir("h100", model="llama3-8b", tp=1)
    cap = kv_capacity("llama3-8b", "h100")
    gpu = InstanceConfig(step, num_kv_blocks=cap.blocks, kv_bytes_per_token=get_model("llama3-8b").kv_bytes_per_token())
    model, classify = fluid_model_from_trace(trace, step, REAL["num_gpus"], REAL["max_decodes"], REAL["chunk_tokens"],
                                             REAL["theta"])
    return trace, gpu, model, classify


def _metrics(req: pd.DataFrame, n: int, model, warm: float, T: float) -> dict:
    """Revenue (bundled, per GPU-s over [warm, T)), throughput, latencies and abandonment of one run."""
    inwin = (req.arrival_time_s >= warm) & (req.arrival_time_s < T)
    fin = req.status == "finished"
    window_fin = fin & (req.finish_time_s >= warm) & (req.finish_time_s < T)
    span = T - warm
    ok = inwin & fin
    return {"revenue_per_gpu_s": revenue_rate(req, n, model.price_prefill, model.price_decode, warm, T),
            "throughput_req_per_s": float(window_fin.sum()) / span,
            "output_tokens_per_s": float(req.output_tokens[window_fin].sum()) / span,
            "ttft_mean_s": float(req.ttft_s[ok].mean()), "ttft_p90_s": float(req.ttft_s[ok].quantile(0.9)),
            "tpot_mean_s": float(req.tpot_s[ok].mean()),
            "abandoned_share": float(req.status[inwin].str.startswith("abandoned").mean()),
            # abandoned after their prefill was done: prefill work spent for nothing
            "abandoned_after_prefill_share": float((req.status[inwin] == "abandoned in decode buffer").mean()),
            "finished_share": float(fin[inwin].mean())}


_SETUPS: dict = {}


def _setup(fraction: float):
    if fraction not in _SETUPS:  # the step model and the trace load once per process
        _SETUPS[fraction] = azure_setup(fraction)
    return _SETUPS[fraction]


def real_cell(system: str, fraction: float, seed: int = 0) -> dict:
    """One system of the real-trace comparison (a policy of :data:`POLICIES`, ``vllm-16``, ``vllm-256`` or
    ``disaggregated``) on the first ``fraction`` of the compressed Azure trace: one row of :func:`_metrics`."""
    trace, gpu, model, classify = _setup(fraction)
    n, B = REAL["num_gpus"], REAL["max_decodes"]
    T = float(trace.df.arrival_time_s.max())
    warm = REAL["warmup_fraction"] * T
    bundled = solve_fluid(model)
    if system in POLICIES:
        sol = solve_fluid(model, "separate" if system == "prioritize-and-route" else "bundled")
        d = GateRouteDispatcher(make_policy(system, sol, n, seed=seed), model, classify, sol)
        r = simulate_dispatch(trace, gpu, n, d, abandon_rate_per_s=d.abandon_rate_per_s, seed=seed)
        row = _metrics(r.requests, n, model, warm, T)
    else:
        M = max(1, math.ceil(n * bundled.mixed_fraction - 1e-9))
        knobs = {} if system == "vllm-256" else {"max_num_seqs": B}
        if system == "disaggregated":
            instances = ([InstanceConfig(gpu.step_model, gpu.num_kv_blocks, scheduler="vllm-v1", scheduler_knobs=knobs,
                                         role="prefill", kv_bytes_per_token=gpu.kv_bytes_per_token)] * M
                         + [InstanceConfig(gpu.step_model, gpu.num_kv_blocks, scheduler="vllm-v1", scheduler_knobs=knobs,
                                           role="decode")] * (n - M))
        elif system in ("vllm-16", "vllm-256"):
            instances = [InstanceConfig(gpu.step_model, gpu.num_kv_blocks, scheduler="vllm-v1",
                                        scheduler_knobs=knobs)] * n
        else:
            raise ConfigError(f"unknown system {system!r}; choose a policy of {POLICIES}, vllm-16, vllm-256 or "
                              f"disaggregated")
        r = simulate(trace, instances, router="least-outstanding-tokens", seed=seed, record_timeline=False,
                     abandon_rate_per_s=REAL["theta"])
        row = _metrics(r.requests, n, model, warm, T)
    return {**row, "R_star": bundled.revenue, "revenue_over_R_star": row["revenue_per_gpu_s"] / bundled.revenue}


SYSTEMS = POLICIES + ("vllm-16", "vllm-256", "disaggregated")


def real_part(scale: dict, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    trace, gpu, model, classify = _setup(scale["real_fraction"])
    n, B = REAL["num_gpus"], REAL["max_decodes"]
    bundled = solve_fluid(model)
    M = max(1, math.ceil(n * bundled.mixed_fraction - 1e-9))
    info = {"requests": len(trace), "T_s": float(trace.df.arrival_time_s.max()), "R_star": bundled.revenue,
            "mixed_fraction": bundled.mixed_fraction,
            "classes": [(round(c.prompt_tokens), round(c.decode_tokens), round(c.arrival_rate, 3)) for c in model.classes],
            "tau_s": model.tau_mix_s, "gamma": model.gamma_tokens_per_s,
            "served_share_lp": (bundled.x * model.mu_prefill / model.arrival_rates).round(3).tolist(),
            "boundary_tokens": classify.boundaries}
    labels = {"vllm-16": f"vllm-v1 colocated (max_num_seqs={B})", "vllm-256": "vllm-v1 colocated (max_num_seqs=256)",
              "disaggregated": f"disaggregated {M}P+{n - M}D (max_num_seqs={B})"}
    rows = []
    for system in SYSTEMS:
        t0 = time.perf_counter()
        row = real_cell(system, scale["real_fraction"], seed)
        rows.append({"system": labels.get(system, system),
                     "engine": "dispatch" if system in POLICIES else "serving (run.simulate)",
                     "mixed_or_prefill_gpus": M if system in POLICIES[:4] or system == "disaggregated" else 0,
                     **row, "wall_s": time.perf_counter() - t0})
    return pd.DataFrame(rows).drop(columns=["R_star"]), info


# ------------------------------------------------------------------ output
def _plot(serving: pd.DataFrame | None, real: pd.DataFrame | None, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if serving is not None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        s = serving[(serving.sweep == "n") & (serving.policy == "gate-and-route")]
        e = serving[(serving.sweep == "n") & (serving.policy == ENGINE_TIMED)]
        axes[0].plot(s.n, s.engine_ratio, "o-", label="serving engine (Eq. (1) steps, KV)")
        axes[0].plot(e.n, e.engine_ratio, "^-", label="engine, plan timed on the engine [R]")
        axes[0].plot(s.n, s.ctmc_ratio, "s--", label="exact CTMC")
        axes[0].axhline(1.0, color="grey", lw=0.8)
        axes[0].set_xlabel("GPUs n")
        axes[0].set_ylabel("revenue / R*")
        axes[0].set_title("Gate-and-Route, paper instance (B3)")
        axes[0].legend(fontsize=8)
        p = serving[serving.sweep == "policies"]
        x = np.arange(len(p))
        axes[1].bar(x - 0.2, p.engine_ratio, 0.4, label="engine")
        axes[1].bar(x + 0.2, p.ctmc_ratio, 0.4, label="CTMC")
        axes[1].set_xticks(x, p.policy, rotation=30, ha="right", fontsize=8)
        axes[1].set_ylim(0.5, 1.05)
        axes[1].set_title(f"policies at n = {int(p.n.iloc[0])}")
        axes[1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "serving.png", dpi=120)
        plt.close(fig)
    if real is not None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        x = np.arange(len(real))
        axes[0].bar(x, real.revenue_per_gpu_s)
        axes[0].set_xticks(x, real.system, rotation=35, ha="right", fontsize=7)
        axes[0].set_ylabel("revenue per GPU-second")
        axes[0].set_title("Azure conversation (x16), 8 H100, Llama-3-8B")
        axes[1].bar(x, real.ttft_mean_s)
        axes[1].set_xticks(x, real.system, rotation=35, ha="right", fontsize=7)
        axes[1].set_ylabel("mean TTFT of finished (s)")
        fig.tight_layout()
        fig.savefig(out / "real.png", dpi=120)
        plt.close(fig)


def _md(df: pd.DataFrame) -> str:
    """A markdown table, numbers to 4 significant digits."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _markdown(serving, real, info, scale_name, wall) -> str:
    lines = [f"# Gate-and-Route on the serving engine ({scale_name}, {wall:.0f} s)", ""]
    if serving is not None:
        s = serving[serving.sweep == "n"]
        lines += ["## Revenue / fluid optimum vs n (paper instance B3, R* = 297.703)", "",
                  f"`{ENGINE_TIMED}` [R]: the same policy with M and the gate's targets from the prefill times the "
                  "engine spends (chunks round up: 0.056 s for a 300-token prompt against the fluid 0.039 s); the "
                  "CTMC column of its rows is plain Gate-and-Route.", "",
                  "Engine: Eq. (1) step times, prompts of P_i tokens in C = 256 chunks, geometric outputs of mean D_i, "
                  "KV accounted, patience Exp(0.1). CTMC: the paper's exact model at the same n and horizon.", "",
                  _md(s[["policy", "n", "mixed_gpus", "T_s", "engine_revenue", "engine_ratio", "ctmc_revenue", "ctmc_ratio",
                     "abandoned_share", "ttft_mean_s", "tpot_mean_s", "wall_s"]]), ""]
        p = serving[serving.sweep == "policies"]
        lines += [f"## Policies at n = {int(p.n.iloc[0])} (engine vs CTMC, revenue / bundled R*)", "",
                  _md(p[["policy", "mixed_gpus", "engine_ratio", "ctmc_ratio", "abandoned_share", "ttft_mean_s",
                     "tpot_mean_s"]]), ""]
    if real is not None:
        lines += ["## Azure LLM 2023 conversation, 8 H100 x Llama-3-8B", "",
                  f"Trace time-compressed x{REAL['time_compression']:g} ({info['requests']} requests over "
                  f"{info['T_s']:.0f} s); classes split at prompt {info['boundary_tokens']} tokens: (P, D, lambda per "
                  f"GPU) = {info['classes']}; fitted tau = {info['tau_s']:.4f} s, gamma = {info['gamma']:.1f} tok/s; "
                  f"B = {REAL['max_decodes']}, C = {REAL['chunk_tokens']}, theta = {REAL['theta']}/s; fluid R* = "
                  f"{info['R_star']:.1f} per GPU-s, X* = {info['mixed_fraction']:.3f}, LP serves "
                  f"{info['served_share_lp']} of each class. Revenue over the window after a "
                  f"{REAL['warmup_fraction']:.0%} warm-up; latencies of finished requests that arrived in it. "
                  "vLLM/disaggregated rows: the per-instance engine with the same Exp(theta) patience until a "
                  "request's first schedule (there is no decode buffer to abandon from).", "",
                  _md(real.drop(columns=["wall_s"])), ""]
    return "\n".join(lines)


def run(out_dir: str = "results/gate_and_route", parts=PARTS, quick: bool = False) -> dict:
    """Run ``parts`` (of :data:`PARTS`); write CSV, PNG and ``serving.md`` under ``out_dir``; return the tables."""
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ConfigError(f"unknown parts {bad}; choose from {PARTS}")
    scale_name = "quick" if quick else "full"
    scale = SCALES[scale_name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    serving = real = None
    info: dict = {}
    if "serving" in parts:
        serving = serving_part(scale)
        serving.to_csv(out / "serving.csv", index=False)
    if "real" in parts:
        real, info = real_part(scale)
        real.to_csv(out / "real.csv", index=False)
    _plot(serving, real, out)
    text = _markdown(serving, real, info, scale_name, time.perf_counter() - t0)
    (out / "serving.md").write_text(text)
    return {"serving": serving, "real": real, "info": info, "markdown": text}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="results/gate_and_route")
    a = ap.parse_args(argv)
    print(run(a.out, a.parts, a.quick)["markdown"])


if __name__ == "__main__":
    main()
