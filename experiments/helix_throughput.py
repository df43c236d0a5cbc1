"""Helix (ASPLOS'25) §6.3/§6.6/§6.7 on the pipelined engine: placements x routers, offline and online.

For each cluster (single 24-node LLaMA-2-70B by default; ``--clusters single24 cluster42``) it simulates

* placements: ``helix`` (the published Gurobi incumbent), ``ours`` (the chain heuristic of
  :func:`formulations.helix.chain_placement`, whose max flow is far higher), ``swarm`` and ``petals`` (the
  published baseline layouts; Petals routed with partial inference, as in the paper);
* routers: ``helix`` (IWRR over max-flow arc flows + KV expectation), ``swarm``, ``random``,
  ``shortest-queue``;
* modes: ``offline`` (closed loop, refilled by Helix's KV-usage feeder, threshold 0.8, for every system so that
  they are loaded alike) and ``online`` (Azure-conversation arrivals, rescaled so that the offered prompt +
  decode token rate over the run is ``--online-tokens-per-s``, the paper's Helix rate: 700 for single 70B, 2,150 for 42
  nodes; the paper gave each system its own rate, we give all the same).

Requests: the bundled ``azure-conv-2023`` trace, keeping prompts of at most 2,048 tokens (Helix's max input;
the dropped share is printed and written). Writes ``runs.csv``, ``helix_throughput.png`` and
``helix_throughput.md`` (ours vs the paper's ratios) into ``results/helix_throughput/``.

Usage::

    python -m experiments.helix_throughput --quick        # < 1 min: shorter windows, fewer combinations
    python -m experiments.helix_throughput                # 60 s warm-up + 600 s (offline), 1,800 s online
    python -m experiments.helix_throughput --systems-only --out results/helix_throughput/full
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.helix_setup import kv_capacities, pipeline_cluster, prompt_limits  # noqa: E402
from formulations.helix import (DATA_DIR, ROUTERS, HelixRouter, chain_placement, load_helix_placement,  # noqa: E402
                                load_helix_problem, max_flow)
from gpusched.errors import ConfigError  # noqa: E402
from gpusched.workload import Trace, load_trace  # noqa: E402
from simulators.pipeline import simulate_pipeline  # noqa: E402

OUT = Path("results/helix_throughput")
CLUSTERS = {  # cluster file, published layouts, paper's online Helix rate (tokens/s)
    "single24": ("single24.ini", {"helix": "single24_70b_ilp.ini", "swarm": "single24_70b_swarm.ini",
                                  "petals": "single24_70b_petals.ini"}, 700.0),
    "cluster42": ("cluster42.ini", {"helix": "cluster42_70b_ilp.ini", "swarm": "cluster42_70b_swarm.ini"}, 2150.0),
}
MODEL = "llama2_70b"
MAX_PROMPT_TOKENS = 2048
# Paper numbers (spec §1.e, [AE] decode throughput, tokens/s): (cluster, mode, placement, router) -> value
PAPER = {
    ("single24", "offline", "helix", "helix"): 252.1, ("single24", "offline", "swarm", "swarm"): 124.7,
    ("single24", "online", "helix", "helix"): 141.6, ("single24", "online", "swarm", "swarm"): 69.8,
    ("cluster42", "offline", "helix", "helix"): 645.6, ("cluster42", "offline", "swarm", "swarm"): 473.2,
    ("cluster42", "online", "helix", "helix"): 459.8, ("cluster42", "online", "swarm", "swarm"): 309.6,
}
# ratios the paper reports; (numerator, denominator) as (placement, router); source in the label
RATIOS = [
    ("Helix / Swarm system (sim)", ("helix", "helix"), ("swarm", "swarm"), {"single24": 2.02, "cluster42": 1.36}),
    ("placement only: Helix / Swarm layout, IWRR (single 70B prototype)", ("helix", "helix"), ("swarm", "helix"),
     {"single24": 230.8 / 109.4}),
    ("placement only: Helix / Petals layout, IWRR (single 70B prototype)", ("helix", "helix"), ("petals", "helix"),
     {"single24": 230.8 / 194.5}),
    ("scheduling only: IWRR / Swarm router on Helix layout (single 70B prototype)", ("helix", "helix"),
     ("helix", "swarm"), {"single24": 214.1 / 169.4}),
    ("scheduling only: IWRR / random router on Helix layout (single 70B prototype)", ("helix", "helix"),
     ("helix", "random"), {"single24": 214.1 / 169.5}),
    ("scheduling only: IWRR / shortest-queue on Helix layout (geo 70B sim)", ("helix", "helix"),
     ("helix", "shortest-queue"), {}),
    ("ours (chain, higher max flow) / published Helix layout, IWRR", ("ours", "helix"), ("helix", "helix"), {}),
]


def azure_requests() -> tuple[Trace, float]:
    """The Azure conversation trace with prompts <= 2,048 tokens, and the share of rows left out."""
    tr = load_trace("azure-conv-2023")
    keep = tr.df["prompt_tokens"] <= MAX_PROMPT_TOKENS
    df = tr.df[keep].reset_index(drop=True)
    return Trace(df, name=f"azure-conv-2023 (prompt <= {MAX_PROMPT_TOKENS})"), 1 - keep.mean()


def online_trace(trace: Trace, tokens_per_s: float, horizon_s: float) -> Trace:
    """Rescale arrival times so that the prompt + decode tokens arriving in ``[0, horizon_s]`` offer
    ``tokens_per_s`` on average over the run (the trace's early minutes are sparser than its mean, so a
    whole-trace rescaling would under-load a short run). The scale factor is found by bisection."""
    df = trace.df.sort_values("arrival_time_s")
    t = df["arrival_time_s"].to_numpy()
    cum = (df["prompt_tokens"] + df["output_tokens"]).cumsum().to_numpy()
    target = tokens_per_s * horizon_s

    def tokens_by(original_s: float) -> float:
        k = int(np.searchsorted(t, original_s, side="right"))
        return float(cum[k - 1]) if k else 0.0

    if tokens_by(t[-1]) < target:
        raise ConfigError(f"the trace offers only {tokens_by(t[-1]):.0f} tokens, fewer than {target:.0f} "
                          f"({tokens_per_s} tokens/s x {horizon_s} s); shorten the run or lower the rate")
    lo, hi = 1e-6, 1e6  # factor: scaled time = original / factor
    for _ in range(200):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if tokens_by(horizon_s * mid) < target else (lo, mid)
    return trace.scale_rate(hi)


def make_router(name: str, problem, placement, cluster, mode: str, partial: bool):
    if name == "helix":
        return HelixRouter(problem, placement, kv_capacities(cluster), mode=mode,
                           prompt_max_tokens=prompt_limits(cluster), allow_partial_inference=partial)
    return ROUTERS[name](problem, placement, seed=0, allow_partial_inference=partial)


def run(clusters, combos, modes, offline_window, online_s, online_rate=None, kv_threshold=0.8) -> pd.DataFrame:
    trace, dropped = azure_requests()
    print(f"requests: {trace.name}, {len(trace)} rows ({dropped:.1%} of the trace has longer prompts)")
    rows = []
    for cname in clusters:
        cfile, layouts, rate = CLUSTERS[cname]
        pr = load_helix_problem(DATA_DIR / "clusters" / cfile, MODEL)
        placements = {k: load_helix_placement(DATA_DIR / "placements" / v, pr) for k, v in layouts.items()}
        placements["ours"] = chain_placement(pr)
        rate = online_rate or rate
        for pname, rname in combos:
            if pname not in placements:
                continue
            pl, partial = placements[pname], pname == "petals"
            cl = pipeline_cluster(DATA_DIR / "clusters" / cfile, MODEL, pl)
            flow = max_flow(pr, pl, allow_partial_inference=partial).value_tokens_per_s
            for mode in modes:
                router = make_router(rname, pr, pl, cl, mode, partial)
                if mode == "offline":
                    warm, dur = offline_window
                    res = simulate_pipeline(cl, router, trace, mode="offline", duration_s=warm + dur, warmup_s=warm,
                                            offline_in_flight=20, offline_kv_threshold=kv_threshold)
                else:
                    res = simulate_pipeline(cl, router, online_trace(trace, rate, online_s), mode="online",
                                            duration_s=online_s, warmup_s=online_s / 3)  # ramp-up excluded
                s = res.summary
                row = {"cluster": cname, "placement": pname, "router": rname, "mode": mode,
                       "max_flow_tokens_per_s": flow, "decode_throughput_tokens_per_s": s["decode_throughput_tokens_per_s"],
                       "paper_decode_throughput_tokens_per_s": PAPER.get((cname, mode, pname, rname)),
                       "online_offered_tokens_per_s": rate if mode == "online" else None,
                       **{k: s[k] for k in ("prompt_latency_p50_s", "prompt_latency_p95_s", "decode_latency_p50_s",
                                            "decode_latency_p95_s", "mean_stages", "launched", "finished",
                                            "unfinished", "rejected", "duration_s", "warmup_s", "wall_time_s")}}
                rows.append(row)
                print(f"{cname:9s} {pname:7s} {rname:14s} {mode:7s} flow {flow:8.1f}  decode "
                      f"{row['decode_throughput_tokens_per_s']:7.1f} tok/s  prompt p50 {row['prompt_latency_p50_s']:6.2f} s "
                      f"decode p50 {row['decode_latency_p50_s']:5.2f} s  ({s['wall_time_s']:.1f} s wall)", flush=True)
    return pd.DataFrame(rows)


def ratio_table(df: pd.DataFrame) -> list[str]:
    md = ["| cluster | mode | ratio | ours | paper |", "|---|---|---|---:|---:|"]
    idx = df.set_index(["cluster", "mode", "placement", "router"])["decode_throughput_tokens_per_s"]
    for cname in df["cluster"].unique():
        for mode in df["mode"].unique():
            for label, num, den, paper in RATIOS:
                a, b = (cname, mode, *num), (cname, mode, *den)
                if a not in idx.index or b not in idx.index or not idx[b] > 0:
                    continue
                ref = paper.get(cname)
                if "system" in label and cname == "single24":
                    ref = {"offline": 252.1 / 124.7, "online": 141.6 / 69.8}[mode]
                if "system" in label and cname == "cluster42":
                    ref = {"offline": 645.6 / 473.2, "online": 459.8 / 309.6}[mode]
                md.append(f"| {cname} | {mode} | {label} | {idx[a] / idx[b]:.2f} | "
                          f"{'' if ref is None else f'{ref:.2f}'} |")
    return md


def flow_vs_throughput(df: pd.DataFrame) -> list[str]:
    """Does the higher max flow of our placement become higher decode throughput (IWRR router)?"""
    out = []
    for (cname, mode), g in df[df["router"] == "helix"].groupby(["cluster", "mode"]):
        g = g.set_index("placement")
        if {"ours", "helix"} <= set(g.index):
            o, h = g.loc["ours"], g.loc["helix"]
            verdict = "yes" if o.decode_throughput_tokens_per_s > h.decode_throughput_tokens_per_s else "no"
            out.append(f"- {cname}, {mode}: max flow {o.max_flow_tokens_per_s:.0f} vs {h.max_flow_tokens_per_s:.0f} "
                       f"tokens/s ({o.max_flow_tokens_per_s / h.max_flow_tokens_per_s:.2f}x); decode throughput "
                       f"{o.decode_throughput_tokens_per_s:.1f} vs {h.decode_throughput_tokens_per_s:.1f} tokens/s -> "
                       f"**{verdict}** (mean pipeline {o.mean_stages:.1f} vs {h.mean_stages:.1f} nodes; "
                       f"decode step p50 {o.decode_latency_p50_s:.2f} vs {h.decode_latency_p50_s:.2f} s)")
    return out


def write(df: pd.DataFrame, out: Path, note: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)
    modes = list(df["mode"].unique())
    fig, axes = plt.subplots(len(df["cluster"].unique()), len(modes), figsize=(6 * len(modes), 3.8), squeeze=False)
    for i, cname in enumerate(df["cluster"].unique()):
        for j, mode in enumerate(modes):
            g = df[(df["cluster"] == cname) & (df["mode"] == mode)]
            labels = [f"{p}\n{r}" for p, r in zip(g["placement"], g["router"])]
            ax = axes[i][j]
            ax.bar(range(len(g)), g["decode_throughput_tokens_per_s"], color="tab:blue", label="ours (sim)")
            paper = g["paper_decode_throughput_tokens_per_s"].astype(float)
            ax.scatter(range(len(g)), paper, color="tab:red", marker="D", zorder=3, label="paper (AE sim)")
            ax.set_xticks(range(len(g)), labels, fontsize=7)
            ax.set_ylabel("decode tokens/s")
            ax.set_title(f"{cname} LLaMA-2-70B, {mode} (placement / router)", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "helix_throughput.png", dpi=120)
    plt.close(fig)
    cols = ["cluster", "mode", "placement", "router", "max_flow_tokens_per_s", "decode_throughput_tokens_per_s",
            "paper_decode_throughput_tokens_per_s", "prompt_latency_p50_s", "decode_latency_p50_s", "mean_stages"]
    md = ["# Helix throughput on the pipelined engine (placements x routers)", "", note, "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df[cols].itertuples(index=False):
        md.append("| " + " | ".join(f"{x:.2f}" if isinstance(x, float) and x == x else ("" if x != x else str(x))
                                     for x in r) + " |")
    md += ["", "## Ratios, ours vs the paper", ""] + ratio_table(df)
    md += ["", "## Does a higher max flow become higher decode throughput?", ""] + flow_vs_throughput(df)
    (out / "helix_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows and a reduced grid (< 1 min)")
    ap.add_argument("--clusters", nargs="+", default=["single24"], choices=sorted(CLUSTERS))
    ap.add_argument("--online-tokens-per-s", type=float, default=None,
                    help="offered prompt+decode tokens/s online (default: the paper's Helix rate per cluster)")
    ap.add_argument("--systems-only", action="store_true",
                    help="only Helix (published layout + IWRR), ours (chain + IWRR) and Swarm (layout + router)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    placements = ["helix", "ours", "swarm", "petals"]
    routers = ["helix", "swarm", "random", "shortest-queue"]
    if args.quick:
        # the system comparison, the placement-only and the scheduling-only ablations
        combos = [(p, "helix") for p in placements] + [("swarm", "swarm")] + [("helix", r) for r in routers[1:]]
        offline_window, online_s = (30.0, 60.0), 150.0
        note = ("Quick mode: offline 30 s warm-up + 60 s measured, online 150 s (first 50 s warm-up). Online, a "
                "request lives ~230 decode steps of ~1 s, so 150 s never reaches steady state: online numbers "
                "are ramp-limited. Run without --quick for 60 s + 600 s offline and 1,800 s online.")
    else:
        combos = [(p, r) for p in placements for r in routers]
        offline_window, online_s = (60.0, 600.0), 1800.0
        note = ("Full mode: offline 60 s warm-up + 600 s measured; online 1,800 s (the paper's length), the first "
                "600 s excluded as ramp-up.")
    if args.systems_only:
        combos = [("helix", "helix"), ("ours", "helix"), ("swarm", "swarm")]
    t0 = time.perf_counter()
    df = run(args.clusters, combos, ["offline", "online"], offline_window, online_s, args.online_tokens_per_s)
    write(df, args.out, note + " Same offered load online and the same KV-usage feeder offline for every system "
          "(the paper used per-system rates). Prompts <= 2,048 tokens.")
    print(f"done in {time.perf_counter() - t0:.1f} s; wrote {args.out}/runs.csv, helix_throughput.png, helix_throughput.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
