"""Benchmark: Helix placement on HiGHS vs the published (Gurobi, time-limited) placements.

Per instance (single 24-node, geo 24-node, 42-node with LLaMA-2-70B; 10-node with LLaMA-1-30B) it prints and
writes the published objective (max flow of the shipped placement), the Petals / Swarm / chain heuristics,
and an ablation of the MILP ideas, each run with the same time limit on ``--threads`` threads:

* ``milp_raw``: the paper's model (same size as Gurobi's), no warm start;
* ``milp_warm``: + the best heuristic as a full warm start;
* ``milp_strong``: + valid cut, tight big-M, symmetry breaking;
* ``arcflow``: the layer-hub reformulation (exact when no link binds, a relaxation otherwise);
* ``arcflow_cap``: the same with a flow cap 3% above the best value so far (its dual bound below the cap is
  a proof of optimality gap);
* ``cover_bound``: the combinatorial layer-cover bound (:mod:`formulations.helix.coverbound`, no solver);
* ``prove``: :func:`~formulations.helix.optimality.prove_optimal` on ``ours`` (cover bound, then the hub
  feasibility MILP at ``ours + 1e-3`` tokens/s with layer-cover cuts).

``--prove-ideas`` adds, per instance, the ways of proving the best placement optimal that were tried, each
with the same time limit (see :func:`prove_ideas`): the target-flow row on the paper's MILP (plain and
strengthened), the hub feasibility MILP without and with cover cuts, a bisection over the target flow.

``ours`` is the best placement over all of them (always re-evaluated with :func:`max_flow` on the unpruned
cluster) and the smallest valid upper bound. Usage::

    python -m experiments.bench_helix_placement [--time-limit 60] [--threads 1] [--instances single24 ...]
        [--prove-ideas] [--resume] [--solver-log]

It prints where it writes and an estimate (at most 6 time-limited solves per instance, 11 with
``--prove-ideas``), writes ``bench_helix_placement.csv`` after every instance (``--resume`` skips the instances
an interrupted run with the same settings finished) and, at the end, ``bench_helix_placement.md`` and
``bench_helix_placement.png`` (each method's max flow per instance, with the published value and the bounds).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from formulations.helix import (DATA_DIR, build_placement_model, heuristic_placement, heuristic_result,
                                hub_feasibility_model, layer_cover_bound, load_helix_placement,
                                load_helix_problem, max_flow, prove_optimal, solve_placement,
                                solve_placement_arcflow)
from formulations.helix._highs import run_feasibility, solve as highs_solve
from formulations.helix.flow import SOURCE, flow_value_or_zero
from gpusched.errors import InfeasibleError, SolverError

from ._ux import ResumableRows, add_solver_log_flag, announce, finish, progress, solver_output

EPS = 1e-3  # tokens/s: a proof shows that no placement reaches ours + EPS

INSTANCES = {
    "single24": ("single24.ini", "llama2_70b", "single24_70b_ilp.ini", "published incumbent (Gurobi, 600 s)"),
    "geo24": ("geo24.ini", "llama2_70b", "geo24_70b_ilp.ini", "published incumbent (Gurobi, 2,700 s, pruned)"),
    "cluster42": ("cluster42.ini", "llama2_70b", "cluster42_70b_ilp.ini", "published incumbent (Gurobi, 3,003 s)"),
    "cluster10": ("cluster10.ini", "llama1_30b", "cluster10_30b_ilp.ini", "published optimum (Gurobi, 3,803 s)"),
}
OUT = Path("results/bench_helix_placement")


def run_instance(name: str, time_limit_s: float, threads: int, prove_ideas_too: bool = False) -> list[dict]:
    cluster, model, sol, note = INSTANCES[name]
    pr = load_helix_problem(DATA_DIR / "clusters" / cluster, model)
    ub0 = pr.upper_bound_tokens_per_s()
    rows = []

    def add(method, value, ub=None, status="", t=0.0, size=None):
        rows.append({"instance": name, "method": method, "objective_tokens_per_s": value,
                     "upper_bound_tokens_per_s": ub, "gap": None if ub is None else (ub - value) / ub,
                     "status": status, "solve_time_s": t, "model_size": size})
        print(f"  {method:14s} {value:10.2f}  ub={'' if ub is None else f'{ub:.2f}':>9s} {status:22s} "
              f"{t:6.1f}s {'' if size is None else size}", flush=True)

    pub = max_flow(pr, load_helix_placement(DATA_DIR / "placements" / sol, pr)).value_tokens_per_s
    add("published", pub, status=note)
    best_val, best_pl, best_ub = -1.0, None, ub0
    for h in ("petals", "swarm", "chain", "regional"):
        try:
            r = heuristic_result(pr, h)
        except Exception as e:  # e.g. swarm needs >= P nodes
            print(f"  {h}: {e}")
            continue
        add(h, r.objective, status="heuristic" + (" (partial inf.)" if h == "petals" else ""), t=r.solve_time_s)
        plain = max_flow(pr, r.placement).value_tokens_per_s  # the MILP has no partial inference
        if plain > best_val:
            best_val, best_pl = plain, r.placement
    warm = heuristic_placement(pr, "best")
    runs = [("milp_raw", dict(warm_start=None)),
            ("milp_warm", dict(warm_start=warm)),
            ("milp_strong", dict(warm_start=warm, valid_cut=True, tight_big_m=True, symmetry_breaking=True))]
    for method, kw in runs:
        try:
            r = solve_placement(pr, time_limit_s, threads=threads, **kw)
        except SolverError as e:
            add(method, float("nan"), status=type(e).__name__, t=time_limit_s)
            continue
        add(method, r.objective, r.upper_bound, r.status, r.solve_time_s, r.model_size)
        best_ub = min(best_ub, r.upper_bound)
        if r.objective > best_val:
            best_val, best_pl = r.objective, r.placement
    r = solve_placement_arcflow(pr, time_limit_s, warm_start=best_pl, threads=threads)
    add("arcflow", r.objective, r.upper_bound, r.status, r.solve_time_s, r.model_size)
    best_ub = min(best_ub, r.upper_bound)
    if r.objective > best_val:
        best_val, best_pl = r.objective, r.placement
    cap = best_val * 1.03
    r = solve_placement_arcflow(pr, time_limit_s, flow_cap_tokens_per_s=cap, threads=threads)
    dual = r.extra["dual_bound"]
    ub_cap = dual if dual < cap - 1e-6 else None  # min(OPT, cap) <= dual < cap  =>  OPT <= dual
    add("arcflow_cap", r.objective, ub_cap, r.status + f" cap={cap:.1f}", r.solve_time_s, r.model_size)
    if ub_cap is not None:
        best_ub = min(best_ub, ub_cap)
    if r.objective > best_val:
        best_val, best_pl = r.objective, r.placement
    t = time.perf_counter()
    cb = layer_cover_bound(pr)
    add("cover_bound", float("nan"), cb.bound_tokens_per_s, f"level m={cb.level}", time.perf_counter() - t)
    best_ub = min(best_ub, cb.bound_tokens_per_s)
    proof = prove_optimal(pr, best_pl, time_limit_s, epsilon_tokens_per_s=EPS, threads=threads)
    if proof.status == "improved":
        best_val, best_pl = max_flow(pr, proof.better_placement).value_tokens_per_s, proof.better_placement
    elif proof.status == "optimal":
        best_ub = min(best_ub, proof.upper_bound_tokens_per_s)
    add("prove", proof.incumbent_tokens_per_s, proof.upper_bound_tokens_per_s,
        f"{proof.status} ({proof.method})", proof.solve_time_s)
    best_ub = max(best_ub, best_val)
    add("ours", best_val, best_ub, f"vs published {100 * (best_val / pub - 1):+.1f}%"
        + (f"; proven optimal (eps {EPS})" if proof.status == "optimal" else ""))
    rows[-1]["placement"] = str(best_pl)
    if prove_ideas_too:
        prove_ideas(pr, best_pl, time_limit_s, threads, add)
    return rows


def _run_feasibility(h, time_limit_s: float, threads: int) -> tuple[str, int, int]:
    """Run a feasibility model: ``("infeasible" | "feasible" | "time_limit", B&B nodes, LP iterations)``."""
    status = run_feasibility(h, time_limit_s=time_limit_s, threads=threads)
    info = h.getInfo()
    return status, int(info.mip_node_count), int(info.simplex_iteration_count)


def prove_ideas(pr, best_pl, time_limit_s: float, threads: int, add) -> None:
    """Rows (through ``add``) for the ways to prove ``best_pl`` optimal, i.e. that no placement reaches ``F0 = flow + EPS``; each prints
    its bound (``F0`` if proven), its status, wall time and HiGHS's B&B node / LP iteration counters (a
    load-independent measure of the work on this shared machine)."""
    inc = max_flow(pr, best_pl).value_tokens_per_s
    f0 = inc + EPS
    ub0 = pr.upper_bound_tokens_per_s()
    print(f"  -- proving {inc:.4f} optimal (target {f0:.4f})", flush=True)
    for label, kw in (("target_row_milp", {}),
                      ("target_row_strong", dict(valid_cut=True, tight_big_m=True, symmetry_breaking=True))):
        pm = build_placement_model(pr, **kw)
        pm.builder.row([(col, 1.0) for (u, _), col in pm.f.items() if u == SOURCE], lb=f0)
        h = pm.builder.load(maximize=True)
        t = time.perf_counter()
        try:
            highs_solve(h, time_limit_s=time_limit_s, threads=threads)
            status = "feasible?!"
        except InfeasibleError:
            status = "infeasible"
        except SolverError:
            status = "time_limit"
        info = h.getInfo()
        add(label, inc, f0 if status == "infeasible" else ub0,
            f"{status} nodes={info.mip_node_count} it={info.simplex_iteration_count}", time.perf_counter() - t)
    for label, levels in (("hub_target", ()), ("hub_target_cuts", (2, 3, 4))):
        t = time.perf_counter()
        status, nodes, its = _run_feasibility(hub_feasibility_model(pr, f0, levels).builder.load(True),
                                              time_limit_s, threads)
        add(label, inc, f0 if status == "infeasible" else ub0, f"{status} nodes={nodes} it={its}",
            time.perf_counter() - t)
    # bisection on the target flow, hub model without cuts, the time limit shared over at most 6 steps
    lo, hi, t, nodes = inc, ub0, time.perf_counter(), 0
    for _ in range(6):
        mid = 0.5 * (lo + hi) if hi - lo > EPS else f0
        left = time_limit_s - (time.perf_counter() - t)
        if left <= 0:
            break
        hm = hub_feasibility_model(pr, mid, ())
        h = hm.builder.load(True)
        status, n, _ = _run_feasibility(h, left / 2, threads)
        nodes += n
        if status == "infeasible":
            hi = mid
        elif status == "feasible":
            real = flow_value_or_zero(pr, hm.placement_from(list(h.getSolution().col_value)))
            if real < mid:  # the hub relaxation is not exact here: no conclusion
                break
            lo = real
        else:
            break
    add("hub_bisection", lo, hi, f"nodes={nodes}", time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per MILP run")
    ap.add_argument("--threads", type=int, default=1, help="HiGHS threads per run")
    ap.add_argument("--instances", nargs="*", default=list(INSTANCES), choices=list(INSTANCES))
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--prove-ideas", action="store_true", help="also compare ways of proving optimality")
    ap.add_argument("--resume", action="store_true", help="skip the instances an interrupted run with the same "
                    "settings finished in --out")
    add_solver_log_flag(ap)
    args = ap.parse_args(argv)
    solves = 11 if args.prove_ideas else 6
    started = announce("bench_helix_placement", args.out, len(args.instances) * solves * args.time_limit,
                       f"at most {len(args.instances)} instances x {solves} solves x {args.time_limit:g} s; proofs "
                       f"and small instances stop earlier")
    solver_output(args.solver_log)
    settings = {"time_limit_s": args.time_limit, "threads": args.threads, "prove_ideas": args.prove_ideas}
    table = ResumableRows(args.out, "bench_helix_placement", settings, ("instance", "method"), args.resume)
    for name in progress(args.instances, desc="helix placement"):
        if table.done(instance=name, method="ours"):
            print(f"== {name}: kept from the interrupted run", flush=True)
            continue
        print(f"== {name}", flush=True)
        for row in run_instance(name, args.time_limit, args.threads, args.prove_ideas):
            table.add(row)
    rows = table.frame().to_dict("records")
    md = ["# Helix placement on HiGHS vs published Gurobi incumbents", "",
          f"time limit {args.time_limit} s per run, {args.threads} thread(s); objective = max flow (tokens/s) "
          f"of the placement on the unpruned cluster.", "",
          "| instance | method | objective | upper bound | gap | status | time (s) |", "|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        ub = "" if pd.isna(r["upper_bound_tokens_per_s"]) else f"{r['upper_bound_tokens_per_s']:.2f}"
        gap = "" if pd.isna(r["gap"]) else f"{100 * r['gap']:.1f}%"
        md.append(f"| {r['instance']} | {r['method']} | {r['objective_tokens_per_s']:.2f} | {ub} | {gap} | "
                  f"{r['status']} | {r['solve_time_s']:.1f} |")
    (args.out / "bench_helix_placement.md").write_text("\n".join(md) + "\n")
    plot(table.frame(), args.out / "bench_helix_placement.png", args.time_limit, args.threads)
    finish("bench_helix_placement", args.out,
           ["bench_helix_placement.csv", "bench_helix_placement.md", "bench_helix_placement.png"], started)


def plot(df: pd.DataFrame, path: Path, time_limit_s: float, threads: int) -> None:
    """Max flow of every method per instance (bars), the published placement's (dashed) and the best upper
    bound (dotted), tokens/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(df["instance"]))
    fig, axes = plt.subplots(1, len(names), figsize=(max(6.5, 4.2 * len(names)), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        part = df[(df["instance"] == name) & df["objective_tokens_per_s"].notna()]
        part = part[~part["method"].isin(["published", "cover_bound"])]
        ax.bar(range(len(part)), part["objective_tokens_per_s"], color="tab:blue", label="max flow of the placement")
        ax.set_xticks(range(len(part)), part["method"], rotation=60, ha="right", fontsize=7)
        published = df[(df["instance"] == name) & (df["method"] == "published")]["objective_tokens_per_s"]
        if len(published):
            ax.axhline(float(published.iloc[0]), color="tab:red", ls="--", label="published (Gurobi)")
        ours = df[(df["instance"] == name) & (df["method"] == "ours")]["upper_bound_tokens_per_s"]
        if len(ours) and pd.notna(ours.iloc[0]):
            ax.axhline(float(ours.iloc[0]), color="black", ls=":", label="best upper bound")
        ax.set_title(name)
        ax.set_ylabel("max flow (tokens/s)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Helix placement: each method vs the published placement\n(HiGHS, {time_limit_s:g} s per run, "
                 f"{threads} thread(s))", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
