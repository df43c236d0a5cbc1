"""Head to head: every registered batch scheduler on the same traces, the same H100, at 1x-16x load.

Every scheduler in :func:`gpusched.registry.names` ``("scheduler")`` (today vLLM V1 and V0, Sarathi-Serve,
static batching, MC-SF and MC-Benchmark; a paper's policy joins by registering itself) serves each trace on one
Llama-3-8B instance with the measured H100 profile (``simulators.serving.build_instances``, KV capacity from
the H100's memory), through :func:`simulators.serving.simulate`.

Traces (``TRACES``), each brought to the same **1x load: the offered prompt + output tokens per second of the
Azure 2023 conversation trace at its recorded rate** (about 7,550 tokens/s; at it vLLM V1 keeps up with a mean
end-to-end latency of about 2 s), by rescaling its arrival times; ``kx`` multiplies that rate by k:

* ``azure-conv-2023``: recorded arrivals and lengths (19,366 requests, 58 minutes), unchanged at 1x.
* ``azure-code-2023``: recorded arrivals and lengths (8,819 requests, 57 minutes; prompts average 2,048
  tokens, answers 28), its arrivals compressed by about 1.4 to reach 1x.
* ``mooncake-conversation``: Mooncake's conversation trace with 512-token prefix-block hashes (prefix caching
  finds shared blocks); its prompts average 12,000 tokens, so 1x stretches its hour to about 5.5 hours.
* ``servegen-hour``: the first hour of ServeGen m-large's clients that ship length data, thinned at random
  (seeded) to 20,000 requests (of about 464,000), so the hour's shape is kept.
* ``sageserve-composed``: the busiest hour of a composed SageServe-style week (:mod:`gpusched.composed_traces`,
  seed 0), every model and region served by the one Llama-3-8B; its tiers carry end-to-end deadlines (IW-F 1 s,
  IW-N 60 s, NIW 24 h), so it is the trace with SLO attainment.

Metrics per (trace, scheduler, load): mean and p99 end-to-end latency and TTFT, mean TPOT, output tokens/s,
preemptions, and, on the SageServe-style trace, the share of requests finishing within their tier's deadline
(all, and per tier). Schedulers that prefill whole sequences (vLLM V0) get ``max_num_batched_tokens`` = the
trace's longest prompt + output, as vLLM requires ``>= max_model_len`` without chunked prefill; a scheduler
that still cannot serve a configuration is recorded as skipped with the reason.

Run: ``python -m experiments.head_to_head [--quick] [--out results/head_to_head] [--backend pool --workers 2]``
(resumable; writes ``table.csv``, one PNG per trace, ``head_to_head.md``); it is also the ``head-to-head``
experiment of ``gpusched reproduce``.
"""
from __future__ import annotations

import argparse
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.reproduce.registry import Experiment
from gpusched import metrics, registry
from gpusched.composed_traces import TIERS, SageServeWeek
from gpusched.errors import ConfigError
from gpusched.workload import Trace, load_trace
from simulators.serving import simulate
from simulators.serving.build import build_instances

MODEL, PROFILE = "llama3-8b", "h100"
REFERENCE = "azure-conv-2023"  # 1x = its recorded offered tokens/s
LOADS = (1.0, 2.0, 4.0, 8.0, 16.0)
QUICK_LOADS = (1.0, 4.0, 16.0)
QUICK_REQUESTS = 300  # quick: the first requests of each 1x trace
SERVEGEN_REQUESTS = 20_000
COMPOSED = SageServeWeek(seed=0, mean_rate_per_s=4.0)
TRACES = {
    "azure-conv-2023": "Azure 2023 conversation, recorded",
    "azure-code-2023": "Azure 2023 code, recorded",
    "mooncake-conversation": "Mooncake conversation, prefix-block hashes",
    "servegen-hour": f"ServeGen m-large, first hour, thinned to {SERVEGEN_REQUESTS:,} requests",
    "sageserve-composed": "SageServe-style composed week, busiest hour, tier deadlines",
}
METRICS = [("e2e_mean_s", "mean end-to-end (s)"), ("e2e_p99_s", "p99 end-to-end (s)"),
           ("ttft_mean_s", "mean TTFT (s)"), ("ttft_p99_s", "p99 TTFT (s)"),
           ("output_tokens_per_s", "output tokens/s"), ("slo_attainment", "deadline attainment")]


def tokens_per_s(trace: Trace) -> float:
    """Offered prompt + output tokens per second over the trace's span."""
    df = trace.df
    return float((df["prompt_tokens"] + df["output_tokens"]).sum() / trace.duration_s)


@lru_cache(maxsize=8)
def base_trace(name: str, requests: int = 0) -> Trace:
    """Trace ``name`` at 1x load (see the module docstring); ``requests > 0`` keeps only its first requests."""
    if name in ("azure-conv-2023", "azure-code-2023", "mooncake-conversation"):
        raw = load_trace(name)
    elif name == "servegen-hour":
        hour = load_trace("servegen-m-large")
        rng = np.random.default_rng(0)
        keep = np.sort(rng.choice(len(hour), size=min(SERVEGEN_REQUESTS, len(hour)), replace=False))
        raw = Trace(hour.df.iloc[keep], name="servegen-hour", source=hour.source, meta=hour.meta)
    elif name == "sageserve-composed":
        start = busiest_hour_s(COMPOSED)
        raw = COMPOSED.trace(start, start + 3600.0).window(start, start + 3600.0)
    else:
        raise ConfigError(f"unknown head-to-head trace {name!r}; use one of {', '.join(TRACES)}")
    reference = tokens_per_s(load_trace(REFERENCE))
    one_x = raw.scale_rate(reference / tokens_per_s(raw))
    return one_x.head(requests) if requests else one_x


def busiest_hour_s(week: SageServeWeek) -> float:
    """Start (s) of the whole hour with the highest expected request count (from the rates, not a sample)."""
    per_window = week.window_rates().sum(axis=0).to_numpy()
    per_hour = per_window[: len(per_window) // 6 * 6].reshape(-1, 6).sum(axis=1)
    return float(np.argmax(per_hour) * 3600.0)


def scheduler_knobs(name: str, trace: Trace) -> dict:
    """Knobs that let a whole-sequence scheduler serve ``trace``: its token budget raised to the longest
    prompt + output (vLLM's rule without chunked prefill). Other schedulers keep their defaults."""
    (inst,) = build_instances(MODEL, profile=PROFILE, scheduler=name)
    sched = inst.build_scheduler(trace)
    budget = getattr(sched, "whole_sequence_budget", None)
    longest = int((trace.df["prompt_tokens"] + trace.df["output_tokens"]).max())
    return {"max_num_batched_tokens": longest} if budget is not None and budget < longest else {}


def cell(trace: str, scheduler: str, load: float, first_requests: int, seed: int) -> dict:
    """One (trace, scheduler, load) run on the trace's first ``first_requests`` requests (0: all): the metrics
    row (no metrics and a reason when skipped)."""
    base = base_trace(trace, first_requests)
    tr = base.scale_rate(load)
    row = {"rate_per_s": tr.rate_per_s, "offered_tokens_per_s": tokens_per_s(tr), "knobs": "", "skipped": ""}
    t0 = time.perf_counter()
    try:
        knobs = scheduler_knobs(scheduler, base)
        row["knobs"] = " ".join(f"{k}={v}" for k, v in knobs.items())
        instances = build_instances(MODEL, profile=PROFILE, scheduler=scheduler, scheduler_knobs=knobs)
        result = simulate(tr, instances, seed=seed, record_timeline=False)
    except ConfigError as e:
        row["skipped"] = f"{type(e).__name__}: {e}"
        return {**row, "wall_s": time.perf_counter() - t0}
    row.update(_metrics(result.requests, tr), engine=result.engine, wall_s=time.perf_counter() - t0)
    return row


def _metrics(requests: pd.DataFrame, trace: Trace) -> dict:
    fin = requests[requests["status"] == "finished"]
    th = metrics.throughput(requests)
    out = {"num_requests": len(requests), "finished": len(fin), "preemptions": int(requests["num_preemptions"].sum()),
           "e2e_mean_s": fin["e2e_s"].mean(), "e2e_p99_s": fin["e2e_s"].quantile(0.99),
           "ttft_mean_s": fin["ttft_s"].mean(), "ttft_p99_s": fin["ttft_s"].quantile(0.99),
           "tpot_mean_s": fin["tpot_s"].mean(), "output_tokens_per_s": th.output_tokens_per_s,
           "slo_attainment": np.nan}
    if "slo_e2e_s" in trace.df:
        slo = trace.df.set_index("request_id")[["slo_e2e_s", "tier"]].loc[requests["request_id"]]
        met = (requests["status"].to_numpy() == "finished") & (requests["e2e_s"].to_numpy() <= slo["slo_e2e_s"].to_numpy())
        out["slo_attainment"] = float(met.mean())
        for tier in TIERS:
            sel = slo["tier"].to_numpy() == tier
            out[f"slo_attainment_{tier}"] = float(met[sel].mean()) if sel.any() else np.nan
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}


# ---- the experiment: cells, plots, findings --------------------------------------------------------

def cells(quick: bool) -> list[dict]:
    loads = QUICK_LOADS if quick else LOADS
    first = QUICK_REQUESTS if quick else 0
    return [{"trace": t, "scheduler": s, "load": f, "first_requests": first, "seed": 0}
            for t in TRACES for s in registry.names("scheduler") for f in loads]


def plots(table: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for trace, d in table.groupby("trace", sort=False):
        shown = [(m, label) for m, label in METRICS if m in d and d[m].notna().any()]
        fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
        for ax, (m, label) in zip(axes.flat, shown):
            for sched, g in d.groupby("scheduler"):
                g = g.sort_values("load")
                ax.plot(g["load"], g[m], marker="o", ms=4, label=sched)
            ax.set_xscale("log", base=2)
            loads = sorted(d["load"].unique())
            ax.set_xticks(loads, [f"{f:g}x" for f in loads])
            ax.minorticks_off()
            ax.set_xlabel("load (1x = Azure conversation's offered tokens/s)")
            ax.set_ylabel(label)
            if m.endswith("_s"):
                ax.set_yscale("log")
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        n = int(d["num_requests"].dropna().max()) if d["num_requests"].notna().any() else 0
        fig.suptitle(f"{trace} ({TRACES.get(trace, '')}; {n:,} requests): Llama-3-8B on one H100, every scheduler")
        fig.tight_layout()
        path = out / f"head_to_head_{trace}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def findings(table: pd.DataFrame, quick: bool) -> str:
    """What the table shows, in words computed from it: the best scheduler per metric at the lightest and the
    heaviest load of each trace, and the skipped runs."""
    lines = ["**What this shows.** One instance, one model, one GPU: the schedulers differ only in how they batch, "
             "admit and preempt. MC-SF and MC-Benchmark use the true output lengths (oracle predictions), which "
             "no deployed scheduler has; the others do not need them. Nothing here prices requests, so revenue "
             "(Gate-and-Route) is not compared, and policies for several instances or disaggregated prefill (AMPD, "
             "Gate-and-Route's routing) are outside this single-instance comparison.", ""]
    skipped_text = table["skipped"].where(table["skipped"].notna(), "").astype(str)
    ok = table[skipped_text == ""]
    for trace, d in ok.groupby("trace", sort=False):
        heaviest = d["load"].max()
        for load in sorted({d["load"].min(), heaviest}):
            g = d[d["load"] == load].set_index("scheduler")
            best = []
            for m, label, pick in (("e2e_mean_s", "mean e2e (s)", "min"), ("e2e_p99_s", "p99 e2e (s)", "min"),
                                   ("ttft_mean_s", "mean TTFT (s)", "min"),
                                   ("output_tokens_per_s", "output tokens/s", "max"),
                                   ("slo_attainment", "deadline attainment", "max")):
                v = g[m].dropna() if m in g else pd.Series(dtype=float)
                if m == "output_tokens_per_s" and load != heaviest:
                    continue  # below saturation every scheduler delivers what is offered
                if len(v):
                    who = v.idxmin() if pick == "min" else v.idxmax()
                    spread = f", worst {v.max() if pick == 'min' else v.min():.3g}"
                    best.append(f"{label} best **{who}** {v[who]:.3g}{spread}")
            lines.append(f"- {trace}, {load:g}x: " + "; ".join(best))
        tiers = [c for c in (f"slo_attainment_{t}" for t in TIERS) if c in d and d[c].notna().any()]
        if tiers:
            g = d[d["load"] == heaviest]
            lines.append(f"  Deadline attainment per tier at {heaviest:g}x, over schedulers: " + "; ".join(
                f"{c.removeprefix('slo_attainment_')} {g[c].min():.2f}-{g[c].max():.2f}" for c in tiers)
                + " (IW-F's 1 s end-to-end deadline is shorter than most requests' decode alone)")
    skipped = table[skipped_text != ""]
    if len(skipped):
        lines += ["", "Skipped (the scheduler cannot serve the configuration):", ""]
        for (trace, sched), g in skipped.groupby(["trace", "scheduler"], sort=False):
            lines.append(f"- {sched} on {trace} ({', '.join(f'{x:g}x' for x in g['load'])}): "
                         f"{g['skipped'].iloc[0][:300]}")
    return "\n".join(lines)


def _table_markdown(table: pd.DataFrame) -> str:
    cols = ["trace", "scheduler", "load", "e2e_mean_s", "e2e_p99_s", "ttft_mean_s", "ttft_p99_s",
            "output_tokens_per_s", "slo_attainment", "preemptions", "skipped"]
    cols = [c for c in cols if c in table]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table[cols].itertuples(index=False):
        lines.append("| " + " | ".join("" if (isinstance(x, float) and x != x) else
                                       (f"{x:.4g}" if isinstance(x, float) else str(x)[:60]) for x in r) + " |")
    return "\n".join(lines)


EXPERIMENT = Experiment(
    name="head-to-head", paper="head-to-head",
    title="Head to head: every batch scheduler, same traces, Llama-3-8B on one H100, 1x-16x load",
    cells=cells, compute=cell, plots=plots, findings=findings, measurements=("wall_s",),
    seconds_per_cell=(1.0, 60.0),
    about=("No paper publishes this comparison, so there is no paper's number to check: the table and the "
           "figures are the result. 1x load = the Azure 2023 conversation trace's offered tokens/s at its recorded "
           "rate, for every trace (arrival times rescaled); see `experiments/head_to_head.py` for each trace."))


def main(argv=None) -> int:
    from experiments.reproduce import reproduce

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"the first {QUICK_REQUESTS} requests, loads {QUICK_LOADS}")
    ap.add_argument("--out", default="results/head_to_head")
    ap.add_argument("--backend", default="inprocess", choices=["inprocess", "pool", "ray"])
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    summary = reproduce(args.out, quick=args.quick, backend=args.backend, workers=args.workers,
                        experiments=[EXPERIMENT])
    table = pd.read_csv(Path(args.out) / EXPERIMENT.name / "table.csv", keep_default_na=True)
    text = "\n\n".join([f"# {EXPERIMENT.title}", EXPERIMENT.about, findings(table, args.quick),
                        _table_markdown(table)]) + "\n"
    (Path(args.out) / "head_to_head.md").write_text(text)
    print(text)
    print(f"wrote {args.out}/head_to_head.md, {args.out}/{EXPERIMENT.name}/table.csv and PNGs; "
          f"report {summary.report_md}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
