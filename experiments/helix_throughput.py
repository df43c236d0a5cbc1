"""Helix (ASPLOS'25) §6.3-6.7 on the pipelined engine: systems, placement-only and scheduling-only ablations.

For each cluster (``--clusters single24 cluster42 geo24``; LLaMA-2-70B) it simulates

* systems: ``helix/helix`` (published Gurobi layout + IWRR over max-flow arc flows with KV expectation),
  ``swarm/swarm`` (published Swarm layout + Swarm-style router), ``sp/fixed`` and ``sp+/fixed`` (separate
  homogeneous chains, :mod:`experiments.helix_separate`; SP+ on 42 nodes only), ``ours/helix`` (our best
  heuristic placement, ``heuristic_placement(problem, "best")``: the chain on one-region clusters, the
  regional plan on the geo cluster; far higher max flow, + IWRR);
* ablations: placement only (IWRR on the Swarm and Petals layouts; Petals with partial inference as in the
  paper) and scheduling only (Helix layout with the Swarm, random and shortest-queue routers);
* modes: ``offline`` (closed loop) and ``online`` (Azure-conversation arrivals rescaled so that the prompt +
  decode tokens offered over the run average ``--online-tokens-per-s``, by default the paper's Helix rate:
  700 single, 2,150 42-node, 320 geo; all mixed-cluster systems get that same rate, SP chains get the
  paper's per-chain rates).

Offline feeding follows Helix's ``OfflineRequestFeeder`` (see :func:`offline_feeding`); ``--legacy-engine``
reruns the previous setup of this experiment for comparison.

**Findings on the router and Petals gaps** (single 24-node cluster, offline; "legacy" = the previous setup,
measured over 60 s + 240 s; "now" = the full 60 s + 600 s run of this module):

1. The engine is *latency*-bound, not compute-bound: mean node utilisation is 0.27 for the Helix layout with
   IWRR, and decode throughput follows Little's law, in-flight requests / decode-step time (364 / 1.46 s =
   249 vs 281 measured, legacy window). A router matters through how many requests it lets KV admit and
   through its paths' latency far more than through balancing compute.
2. "IWRR no better than random" came from the *feeder*. Legacy: every router was fed by the KV-usage rule
   measured on the engine's full-footprint reservations, so random routing held 315 requests in flight and
   beat IWRR (329.8 vs 295.0 tok/s). Helix feeds its baseline schedulers a fixed hand-picked count instead
   (they cannot refuse work; 180 on 24 nodes) and only IWRR by its KV expectation. Now: IWRR 259.3,
   random 170.2, shortest-queue 165.7, Swarm router 164.4 -> IWRR / random = 1.52 (paper: 1.26 prototype,
   1.14 geo sim). The paper's scheduling gain is therefore largely a *load-control* gain (admission by KV
   expectation vs a fixed concurrency), which the paper's setup builds in.
3. "Petals beats Helix" was an artefact of ``--quick``'s 30 s + 60 s window: 16-stage pipelines ramp up
   slower than Petals' 11.5 stages. Over longer windows the Helix layout wins: legacy 295.0 vs 252.0, now
   259.3 vs 221.6 -> Helix / Petals = 1.17 (paper prototype 1.19).
4. KV accounting (full footprint at admission vs Helix's prompt at admission + growth per token) moves
   Helix/IWRR by only ~5 % (295.0 -> 280.9, legacy window): with ρ = 1.0, h = 0.85 the expectation already
   reserves about the mean output. Growth matters for routers without KV admission: on our trace several
   of the artifact's fixed SP feed counts (42-node L4 / 2xL4 chains) and Swarm online at the Helix rate
   (700 tok/s; the paper gave Swarm 350) overflow KV, which stops Helix's simulator on an assertion. Those
   runs are redone with the full-footprint reservation (requests wait instead) and listed in the md.
5. Higher max flow still does not mean higher decode throughput: our chain placement (flow 2046 vs 1290)
   gives 178.8 vs 259.3 tok/s, because every request crosses all 24 nodes (decode step 2.62 vs 1.47 s).

Requests: the bundled ``azure-conv-2023`` trace, keeping prompts of at most 2,048 tokens (Helix's max input;
the dropped share is printed and written). Writes ``runs.csv``, ``helix_throughput.png`` and
``helix_throughput.md`` (ours vs the paper's ratios) into ``results/helix_throughput/``.

Usage::

    python -m experiments.helix_throughput --quick                      # short windows, single 24-node
    python -m experiments.helix_throughput                              # 60 s + 600 s offline, 1,800 s online
    python -m experiments.helix_throughput --clusters cluster42 --systems-only --out results/helix_throughput/full42
    python -m experiments.helix_throughput --legacy-engine --modes offline  # the previous engine setup
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
from formulations.helix import (DATA_DIR, ROUTERS, HelixRouter, heuristic_placement, load_helix_placement,  # noqa: E402
                                load_helix_problem, max_flow)
from experiments.helix_separate import SEPARATE, chain_cluster, separate_chains  # noqa: E402
from gpusched.errors import ConfigError, KVCacheOverflowError  # noqa: E402
from gpusched.policy import PipelineStage  # noqa: E402
from gpusched.workload import Trace, load_trace  # noqa: E402
from simulators.pipeline import simulate_pipeline  # noqa: E402
from simulators.pipeline.routers import FixedPipelineRouter  # noqa: E402

from experiments._ux import ResumableRows, announce, finish, progress, quick_note  # noqa: E402

OUT = Path("results/helix_throughput")
CLUSTERS = {  # cluster file, published layouts, paper's online Helix rate (tokens/s)
    "single24": ("single24.ini", {"helix": "single24_70b_ilp.ini", "swarm": "single24_70b_swarm.ini",
                                  "petals": "single24_70b_petals.ini"}, 700.0),
    "cluster42": ("cluster42.ini", {"helix": "cluster42_70b_ilp.ini", "swarm": "cluster42_70b_swarm.ini"}, 2150.0),
    "geo24": ("geo24.ini", {"helix": "geo24_70b_ilp.ini", "swarm": "geo24_70b_swarm.ini",
                            "petals": "geo24_70b_petals.ini"}, 320.0),
}
#: Helix's fixed offline in-flight count for its baseline schedulers (``initial_feed_num`` of the artifact's
#: step3 scripts: Swarm 180 on the single and geo 24-node clusters, 500 on 42 nodes; random and
#: shortest-queue also 180 on geo)
BASELINE_IN_FLIGHT = {"single24": 180, "geo24": 180, "cluster42": 500}
MODEL = "llama2_70b"
MAX_PROMPT_TOKENS = 2048
SR = "shortest-queue"
# Paper numbers (spec §1.e, [AE] decode throughput, tokens/s): (cluster, mode, placement, router) -> value
PAPER = {
    ("single24", "offline", "helix", "helix"): 252.1, ("single24", "offline", "swarm", "swarm"): 124.7,
    ("single24", "online", "helix", "helix"): 141.6, ("single24", "online", "swarm", "swarm"): 69.8,
    ("single24", "offline", "sp", "fixed"): 124.3, ("single24", "online", "sp", "fixed"): 84.0,
    ("cluster42", "offline", "helix", "helix"): 645.6, ("cluster42", "offline", "swarm", "swarm"): 473.2,
    ("cluster42", "online", "helix", "helix"): 459.8, ("cluster42", "online", "swarm", "swarm"): 309.6,
    ("cluster42", "offline", "sp", "fixed"): 219.3, ("cluster42", "online", "sp", "fixed"): 140.2,
    ("cluster42", "offline", "sp+", "fixed"): 285.1, ("cluster42", "online", "sp+", "fixed"): 181.3,
    ("geo24", "offline", "helix", "helix"): 98.0, ("geo24", "offline", "swarm", "swarm"): 51.9,
    ("geo24", "online", "helix", "helix"): 59.3, ("geo24", "online", "swarm", "swarm"): 31.0,
    # geo ablations (sim offline): placement only (IWRR on each layout), scheduling only (Helix layout)
    ("geo24", "offline", "swarm", "helix"): 41.6, ("geo24", "offline", "petals", "helix"): 66.6,
    ("geo24", "offline", "helix", "swarm"): 81.7, ("geo24", "offline", "helix", "random"): 87.4,
    ("geo24", "offline", "helix", SR): 83.6,
}
# Full-run ratios (README): Helix's decode throughput over each baseline's, per (cluster, mode, baseline)
FULL_RUN_RATIOS = {
    ("single24", "offline", "swarm", "swarm"): 1.95, ("single24", "online", "swarm", "swarm"): 1.35,
    ("single24", "offline", "sp", "fixed"): 1.58, ("single24", "online", "sp", "fixed"): 1.54,
    ("cluster42", "offline", "swarm", "swarm"): 1.33, ("cluster42", "online", "swarm", "swarm"): 1.01,
    ("cluster42", "offline", "sp", "fixed"): 2.61, ("cluster42", "online", "sp", "fixed"): 2.63,
    ("geo24", "offline", "swarm", "swarm"): 2.09, ("geo24", "online", "swarm", "swarm"): 1.32,
    ("single24", "offline", "petals", "helix"): 1.17, ("geo24", "offline", "petals", "helix"): 1.28,
}
# ratios the paper reports: (label, numerator, denominator as (placement, router), {(cluster, mode): paper})
RATIOS = [
    ("Helix / Swarm system", ("helix", "helix"), ("swarm", "swarm"),
     {("single24", "offline"): 252.1 / 124.7, ("single24", "online"): 141.6 / 69.8,
      ("cluster42", "offline"): 645.6 / 473.2, ("cluster42", "online"): 459.8 / 309.6,
      ("geo24", "offline"): 98.0 / 51.9, ("geo24", "online"): 59.3 / 31.0}),
    ("Helix / SP system", ("helix", "helix"), ("sp", "fixed"),
     {("single24", "offline"): 252.1 / 124.3, ("single24", "online"): 141.6 / 84.0,
      ("cluster42", "offline"): 645.6 / 219.3, ("cluster42", "online"): 459.8 / 140.2}),
    ("Helix / SP+ system", ("helix", "helix"), ("sp+", "fixed"),
     {("cluster42", "offline"): 645.6 / 285.1, ("cluster42", "online"): 459.8 / 181.3}),
    ("placement only: Helix / Swarm layout, IWRR", ("helix", "helix"), ("swarm", "helix"),
     {("single24", "offline"): 230.8 / 109.4, ("geo24", "offline"): 98.0 / 41.6}),
    ("placement only: Helix / Petals layout, IWRR", ("helix", "helix"), ("petals", "helix"),
     {("single24", "offline"): 230.8 / 194.5, ("geo24", "offline"): 98.0 / 66.6}),
    ("scheduling only: IWRR / Swarm router, Helix layout", ("helix", "helix"), ("helix", "swarm"),
     {("single24", "offline"): 214.1 / 169.4, ("geo24", "offline"): 99.8 / 81.7}),
    ("scheduling only: IWRR / random router, Helix layout", ("helix", "helix"), ("helix", "random"),
     {("single24", "offline"): 214.1 / 169.5, ("geo24", "offline"): 99.8 / 87.4}),
    ("scheduling only: IWRR / shortest-queue, Helix layout", ("helix", "helix"), ("helix", SR),
     {("geo24", "offline"): 99.8 / 83.6}),
    ("ours (best heuristic, higher max flow) / published Helix layout, IWRR", ("ours", "helix"), ("helix", "helix"), {}),
]
#: the systems of Fig 5/7/8 and the two ablations (Fig 9a, 10a)
SYSTEMS = [("helix", "helix"), ("swarm", "swarm"), ("sp", "fixed"), ("sp+", "fixed"), ("ours", "helix")]
ABLATIONS = [("swarm", "helix"), ("petals", "helix"), ("helix", "swarm"), ("helix", "random"), ("helix", SR)]


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


def offline_feeding(cname: str, router: str, legacy: bool, kv_threshold: float = 0.8) -> dict:
    """How the offline closed loop is fed (spec §1.c-6 and Helix's ``OfflineRequestFeeder``).

    Helix's IWRR router: 20 initial requests, then one launch per finished prompt / request while the
    bottleneck *expected* KV usage is <= 0.8, KV grown per token. Baseline routers cannot refuse work, so
    Helix feeds them a fixed, hand-picked in-flight count one-for-one (``BASELINE_IN_FLIGHT``). ``legacy``:
    the previous setup of this experiment (full-footprint KV reservation at admission, and every router fed
    by the KV-usage rule measured on those reservations, launching while below the threshold).
    """
    if legacy:
        return dict(kv_mode="reserve", offline_feeder="fill", offline_in_flight=20, offline_kv_threshold=kv_threshold)
    if router == "helix":
        return dict(kv_mode="grow", offline_feeder="helix", offline_in_flight=20, offline_kv_threshold=kv_threshold)
    return dict(kv_mode="grow", offline_in_flight=BASELINE_IN_FLIGHT[cname], offline_kv_threshold=None)


def _simulate(cl, router, trace, mode, offline_window, online_s, rate, feed) -> tuple[dict, pd.DataFrame]:
    if mode == "offline":
        warm, dur = offline_window
        res = simulate_pipeline(cl, router, trace, mode="offline", duration_s=warm + dur, warmup_s=warm, **feed)
    else:
        res = simulate_pipeline(cl, router, online_trace(trace, rate, online_s), mode="online", duration_s=online_s,
                                warmup_s=online_s / 3, kv_mode=feed["kv_mode"])  # ramp-up excluded
    return res.summary, res.requests


def _pooled(summaries: list[dict], requests: list[pd.DataFrame]) -> dict:
    """One row for several independent chains (SP): throughputs and counts add, latencies pool."""
    req = pd.concat(requests, ignore_index=True)
    out = {k: sum(s[k] for s in summaries) for k in ("decode_throughput_tokens_per_s", "launched", "finished",
                                                      "unfinished", "rejected", "wall_time_s")}
    for col, name in (("prompt_latency_s", "prompt_latency"), ("decode_latency_s", "decode_latency")):
        v = req[col].dropna()
        out[f"{name}_p50_s"] = float(v.quantile(0.5)) if len(v) else float("nan")
        out[f"{name}_p95_s"] = float(v.quantile(0.95)) if len(v) else float("nan")
    out["mean_stages"] = float(req.loc[req["num_stages"] > 0, "num_stages"].mean())
    out.update(duration_s=summaries[0]["duration_s"], warmup_s=summaries[0]["warmup_s"])
    return out


def run_separate(cname, system, mode, trace, offline_window, online_s, legacy) -> tuple[dict, float, str]:
    """SP / SP+: each chain simulated on its own (own coordinator, own feed count / rate); summed.

    The artifact's feed counts were tuned on its own length sampler; on our trace a chain can overflow its KV
    under per-token growth (the 42-node L4 chain with 60 in flight does). Such a chain is rerun with the
    full-footprint reservation (requests then wait at the coordinator instead of overflowing) and the
    returned note says so.
    """
    summaries, requests, rate, notes = [], [], 0.0, []
    for ch in separate_chains(cname, system):
        cl = chain_cluster(ch, MODEL, cname)
        stages = [PipelineStage(n, s.start_layer, s.end_layer) for n, s in cl.nodes.items()]
        feed = dict(kv_mode="reserve" if legacy else "grow", offline_in_flight=ch.offline_in_flight,
                    offline_kv_threshold=None)
        try:
            s, r = _simulate(cl, FixedPipelineRouter(stages), trace, mode, offline_window, online_s,
                             ch.online_tokens_per_s, feed)
        except KVCacheOverflowError as e:
            notes.append(f"{ch.name} chain overflowed its KV under growth ({e}); rerun with kv_mode='reserve'")
            s, r = _simulate(cl, FixedPipelineRouter(stages), trace, mode, offline_window, online_s,
                             ch.online_tokens_per_s, {**feed, "kv_mode": "reserve"})
        summaries.append(s)
        requests.append(r)
        rate += ch.online_tokens_per_s
    return _pooled(summaries, requests), rate, "; ".join(notes)


def run(clusters, combos, modes, offline_window, online_s, online_rate=None, kv_threshold=0.8,
        legacy=False, table: ResumableRows | None = None) -> pd.DataFrame:
    """One row per (cluster, placement, router, mode). With ``table`` every row is written as it finishes and
    the rows ``table`` already holds (a resumed run) are skipped."""
    trace, dropped = azure_requests()
    print(f"requests: {trace.name}, {len(trace)} rows ({dropped:.1%} of the trace has longer prompts)")
    rows = [] if table is None else table.rows
    jobs = [(c, p, r, m) for c in clusters for p, r in combos for m in modes]
    bar = progress(jobs, desc="helix throughput")
    for cname in clusters:
        cfile, layouts, rate = CLUSTERS[cname]
        pr = load_helix_problem(DATA_DIR / "clusters" / cfile, MODEL)
        placements = {k: load_helix_placement(DATA_DIR / "placements" / v, pr) for k, v in layouts.items()}
        placements["ours"] = heuristic_placement(pr, "best")
        rate = online_rate or rate
        built: dict = {}  # placement name -> (engine cluster, max flow), shared by its routers and modes
        for pname, rname in combos:
            separate = pname in ("sp", "sp+")
            if (separate and (cname, pname) not in SEPARATE) or (not separate and pname not in placements):
                continue
            for mode in modes:
                bar.update(1)
                if table is not None and table.done(cluster=cname, placement=pname, router=rname, mode=mode):
                    continue
                row = {"cluster": cname, "placement": pname, "router": rname, "mode": mode, "error": ""}
                try:
                    if separate:
                        s, offered, row["error"] = run_separate(cname, pname, mode, trace, offline_window,
                                                                online_s, legacy)
                        flow = float("nan")
                    else:
                        pl, partial = placements[pname], pname == "petals"
                        if pname not in built:
                            built[pname] = (pipeline_cluster(DATA_DIR / "clusters" / cfile, MODEL, pl),
                                            max_flow(pr, pl, allow_partial_inference=partial).value_tokens_per_s)
                        cl, flow = built[pname]
                        router = make_router(rname, pr, pl, cl, mode, partial)
                        feed = offline_feeding(cname, rname, legacy, kv_threshold)
                        try:
                            s, _ = _simulate(cl, router, trace, mode, offline_window, online_s, rate, feed)
                        except KVCacheOverflowError as e:
                            # a router without KV admission (online, at a rate above its capacity) overflows;
                            # rerun with the full-footprint reservation, so requests wait instead, and say so
                            row["error"] = f"KV overflow under growth ({e}); rerun with kv_mode='reserve'"
                            router = make_router(rname, pr, pl, cl, mode, partial)
                            s, _ = _simulate(cl, router, trace, mode, offline_window, online_s, rate,
                                             {**feed, "kv_mode": "reserve"})
                        offered = rate
                except KVCacheOverflowError as e:  # Helix's simulator would stop on its assertion too
                    row["error"] = str(e)
                    _keep(row, rows, table)
                    print(f"{cname:9s} {pname:7s} {rname:14s} {mode:7s} KV overflow: {e}", flush=True)
                    continue
                row.update({"max_flow_tokens_per_s": flow,
                            "decode_throughput_tokens_per_s": s["decode_throughput_tokens_per_s"],
                            "paper_decode_throughput_tokens_per_s": PAPER.get((cname, mode, pname, rname)),
                            "online_offered_tokens_per_s": offered if mode == "online" else None,
                            **{k: s[k] for k in ("prompt_latency_p50_s", "prompt_latency_p95_s", "decode_latency_p50_s",
                                                 "decode_latency_p95_s", "mean_stages", "launched", "finished",
                                                 "unfinished", "rejected", "duration_s", "warmup_s", "wall_time_s")}})
                _keep(row, rows, table)
                print(f"{cname:9s} {pname:7s} {rname:14s} {mode:7s} flow {flow:8.1f}  decode "
                      f"{row['decode_throughput_tokens_per_s']:7.1f} tok/s  prompt p50 {row['prompt_latency_p50_s']:6.2f} s "
                      f"decode p50 {row['decode_latency_p50_s']:5.2f} s  ({s['wall_time_s']:.1f} s wall)", flush=True)
    return pd.DataFrame(rows)


def _keep(row: dict, rows: list, table: ResumableRows | None) -> None:
    """Add ``row`` to the results (and to the CSV at once when there is a table)."""
    if table is None:
        rows.append(row)
    else:
        table.add(row)


def estimate_s(clusters, combos, modes, offline_window, online_s) -> float:
    """Wall seconds of a run: simulated seconds x 0.025 s per simulated second of a 24-node cluster (measured on
    the quick single 24-node run), scaled by the cluster's node count."""
    nodes = {"single24": 24, "geo24": 24, "cluster42": 42}
    per_run = {"offline": sum(offline_window), "online": online_s}
    return sum(0.025 * nodes[c] / 24 * per_run[m] for c in clusters for _ in combos for m in modes)


def ratio_table(df: pd.DataFrame) -> list[str]:
    md = ["| cluster | mode | ratio | ours | paper |", "|---|---|---|---:|---:|"]
    ok = df[df["decode_throughput_tokens_per_s"].notna()] if "decode_throughput_tokens_per_s" in df else df
    idx = ok.set_index(["cluster", "mode", "placement", "router"])["decode_throughput_tokens_per_s"]
    for cname in df["cluster"].unique():
        for mode in df["mode"].unique():
            for label, num, den, paper in RATIOS:
                a, b = (cname, mode, *num), (cname, mode, *den)
                if a not in idx.index or b not in idx.index or not idx[b] > 0:
                    continue
                ref = paper.get((cname, mode))
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
    if "error" in df and (df["error"].fillna("") != "").any():
        md += ["", "KV overflows (Helix's simulator asserts there; these runs were redone with kv_mode='reserve'):", ""]
        md += [f"- {r.cluster} {r.mode} {r.placement}/{r.router}: {r.error}" for r in df.itertuples() if r.error]
    md += ["", "## Ratios, ours vs the paper", ""] + ratio_table(df)
    md += ["", "## Does a higher max flow become higher decode throughput?", ""] + flow_vs_throughput(df)
    findings = __doc__[__doc__.index("**Findings"):__doc__.index("Requests: the bundled")].strip()
    md += ["", "## Findings on the router and Petals gaps (from the module docstring)", "", findings]
    (out / "helix_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows (~1-2 min per cluster)")
    ap.add_argument("--clusters", nargs="+", default=["single24"], choices=sorted(CLUSTERS))
    ap.add_argument("--modes", nargs="+", default=["offline", "online"], choices=["offline", "online"])
    ap.add_argument("--online-tokens-per-s", type=float, default=None,
                    help="offered prompt+decode tokens/s online (default: the paper's Helix rate per cluster)")
    ap.add_argument("--systems-only", action="store_true", help="only the systems (no ablations)")
    ap.add_argument("--combos", nargs="+", default=None, metavar="PLACEMENT/ROUTER",
                    help="run only these, e.g. swarm/swarm sp/fixed helix/random")
    ap.add_argument("--legacy-engine", action="store_true",
                    help="the previous setup: full-footprint KV reservation and the KV-usage feeder for all routers")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--resume", action="store_true", help="keep the runs an interrupted run with the same settings "
                    "left in --out (runs.csv is written after every run)")
    args = ap.parse_args(argv)
    combos = SYSTEMS if args.systems_only else SYSTEMS + ABLATIONS
    if args.combos:
        combos = [tuple(c.split("/", 1)) for c in args.combos]
    if args.quick:
        offline_window, online_s = (30.0, 90.0), 300.0
        note = ("Quick mode: offline 30 s warm-up + 90 s measured, online 300 s (first 100 s warm-up). Online, a "
                "request lives ~230 decode steps of ~1 s, so 300 s barely reaches steady state: online numbers are "
                "ramp-limited. Run without --quick for 60 s + 600 s offline and 1,800 s online.")
    else:
        offline_window, online_s = (60.0, 600.0), 1800.0
        note = ("Full mode: offline 60 s warm-up + 600 s measured; online 1,800 s (the paper's length), the first "
                "600 s excluded as ramp-up.")
    started = announce("helix_throughput", args.out, estimate_s(args.clusters, combos, args.modes, offline_window,
                                                                 online_s),
                       f"{len(args.clusters) * len(combos) * len(args.modes)} runs x simulated seconds x ~0.025 s")
    settings = {"quick": args.quick, "clusters": args.clusters, "modes": args.modes, "combos": combos,
                "online_tokens_per_s": args.online_tokens_per_s, "legacy": args.legacy_engine}
    table = ResumableRows(args.out, "runs", settings, ("cluster", "placement", "router", "mode"), args.resume)
    df = run(args.clusters, combos, args.modes, offline_window, online_s, args.online_tokens_per_s,
             legacy=args.legacy_engine, table=table)
    engine = (LEGACY_NOTE if args.legacy_engine else ENGINE_NOTE)
    write(df, args.out, note + " " + engine)
    if args.quick:
        for line in _quick_notes(df):
            print(line)
    finish("helix_throughput", args.out, ["runs.csv", "helix_throughput.png", "helix_throughput.md"], started)
    return 0


def _quick_notes(df: pd.DataFrame) -> list[str]:
    """Quick-mode ratios (Helix over a baseline) on the other side of 1 from the full run's
    (:data:`FULL_RUN_RATIOS`)."""
    notes = []
    idx = df.dropna(subset=["decode_throughput_tokens_per_s"]).set_index(
        ["cluster", "mode", "placement", "router"])["decode_throughput_tokens_per_s"]
    for (cname, mode, pname, rname), full in FULL_RUN_RATIOS.items():
        helix, other = idx.get((cname, mode, "helix", "helix")), idx.get((cname, mode, pname, rname))
        if helix is None or other is None or not other > 0:
            continue
        note = quick_note(f"Helix / {pname} with {rname} ({cname}, {mode}) decode throughput, log ratio",
                          float(np.log(helix / other)), float(np.log(full)), f"README, ratio {full:.2f}")
        if note:
            notes.append(note)
    return notes


ENGINE_NOTE = (
    "Engine as Helix's simulator: KV allocated for the prompt at admission and grown per decode token. Offline, "
    "Helix's IWRR router is fed by Helix's rule (20 initial requests, then one launch per finished prompt or "
    "request while the bottleneck *expected* KV usage <= 0.8); baseline routers and SP chains cannot refuse "
    "work and get Helix's fixed in-flight counts (Swarm / random / shortest-queue: 180 on 24 nodes, 500 on 42; "
    "SP per chain: the artifact's initial_feed_num). Online: every mixed-cluster system gets the paper's Helix "
    "rate; SP chains get the paper's per-chain rates. Prompts <= 2,048 tokens.")
LEGACY_NOTE = (
    "Legacy engine setup: the request's full KV footprint (prompt + output) reserved at admission, and every "
    "router fed offline by the KV-usage rule measured on those reservations (launch while <= 0.8). Prompts <= "
    "2,048 tokens.")


if __name__ == "__main__":
    raise SystemExit(main())
