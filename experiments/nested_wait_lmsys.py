"""Nested WAIT on an LMSYS-like real-length workload [P §6.2] (Llama-2-7B / A100-80GB, roofline, C = 1.37e5).

LMSYS-Chat-1M is not available here. The stand-in is the bundled **ShareGPT length table** (``sharegpt-lengths``,
Llama-2 tokenizer, real conversations) filtered as the paper filters LMSYS: prompt and output both < 500 tokens
(4,345 of 30,731 rows). Its means differ from the paper's LMSYS sample (prompt 177 vs 58.6, output 230 vs 147.3
tokens), so the rates are set from *our* fluid crossing (the rate where M* = C), not the paper's 74.1 req/s.

Requests are sampled with replacement from the filtered table, Poisson arrivals. Policies: Nested WAIT with L
equal-width segments over decode stages 0-499 (the paper's real-data design; L = 5 by default), thresholds from
eqs. (12)-(14) when admissible, else the calibration's fallback (the experiments' ratio rule with eta = 0.05 and an
in-flight cap filling C on average); its no-wait ablation; a tuned no-wait variant (best L in {1, 3, 5, 10} per
rate, as the paper tunes L); vLLM; Sarathi. Also the M*(lambda) table of the fluid, as the paper tabulates it.

Writes ``results/nested_wait_lmsys/{runs.csv, summary.csv, fluid.csv, lmsys.md, lmsys.png}``; ``--resume``.
Run: ``python -m experiments.nested_wait_lmsys [--quick] [--jobs 2]``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from formulations.nested_wait import (PromptType, calibrated_nested_wait, fit_iteration_time, fluid_equilibrium,
                                      max_stable_scale, types_from_lengths)
from gpusched.registry import BuildContext
from gpusched.loaders import read_length_table
from gpusched.synthetic import synthetic_trace
from gpusched.workload import bundled_trace_path

from .nested_wait_common import (SARATHI, VLLM, ResultLog, a100_instance, largest_stable_rate, markdown_table,
                                 plot_policies, run_metrics, run_tasks, sweep_arguments, with_scheduler)

OUT = Path("results/nested_wait_lmsys")
FRACTIONS = (0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1, 1.25)  # of our fluid crossing
QUICK_FRACTIONS = (0.4, 0.9, 1.1)
TUNED_L = (1, 3, 5, 10)
PAPER_TABLE = {50: 34_377, 60: 55_758, 70: 100_327, 80: 250_509}


def lengths() -> pd.DataFrame:
    t = read_length_table(bundled_trace_path("sharegpt-lengths"))
    return t[(t["prompt_tokens"] < 500) & (t["output_tokens"] < 500)].reset_index(drop=True)


def exact_types(table: pd.DataFrame, rate: float) -> list[PromptType]:
    """One fluid type per distinct (prompt, output) pair of the table, at its share of ``rate``."""
    pairs = table.groupby(["prompt_tokens", "output_tokens"]).size()
    return [PromptType(int(p), int(o) - 1, rate * c / len(table)) for (p, o), c in pairs.items()]


def fluid(table: pd.DataFrame) -> tuple[pd.DataFrame, float, object]:
    """Our M*(lambda) table, the crossing rate, and the (d0, d1) fit."""
    cfg = a100_instance()
    cap = cfg.num_kv_blocks * cfg.block_size_tokens
    binned, _ = types_from_lengths(table["prompt_tokens"], table["output_tokens"], 1.0, max_types=16)
    fit = fit_iteration_time(cfg.step_model, binned, cap)
    types = exact_types(table, 1.0)
    crossing = max_stable_scale(types, fit.d0_s, fit.d1_s_per_token, cap)
    rows = []
    for frac in (0.5, 0.7, 0.9, 0.95, 1.0):
        lam = frac * crossing
        m = fluid_equilibrium([t.scaled(lam) for t in types], fit.d0_s, fit.d1_s_per_token).memory_tokens
        rows.append({"rate_per_s": lam, "M_star_tokens": m, "M_star_over_C": m / cap})
    return pd.DataFrame(rows), crossing, fit


def _trace(table, rate, n, seed):
    return synthetic_trace(rate, n=n, table=table, seed=seed, name=f"sharegpt<500-{rate:g}")


def _point(task) -> list[dict]:
    rate, seed, n = task
    trace = _trace(lengths(), rate, n, seed)
    cfg = a100_instance()
    ctx = BuildContext(trace=trace, step_model=cfg.step_model, num_kv_blocks=cfg.num_kv_blocks,
                       block_size_tokens=cfg.block_size_tokens)
    pols = {"vllm": VLLM, "sarathi": SARATHI,
            "nested-wait": (calibrated_nested_wait(ctx, num_segments=5, cuts="equal", rate_per_s=rate), {}),
            "nested-wait-no-wait": (calibrated_nested_wait(ctx, num_segments=5, cuts="equal", rate_per_s=rate,
                                                           mode="no-wait", name="nested-wait-no-wait"), {})}
    for L in TUNED_L:
        pols[f"nested-L{L}"] = (calibrated_nested_wait(ctx, num_segments=L, cuts="equal", rate_per_s=rate,
                                                       mode="no-wait", name=f"nested-L{L}"), {})
    rows = []
    for name, (sched, knobs) in pols.items():
        t0 = time.perf_counter()
        m = run_metrics(trace, with_scheduler(cfg, sched, knobs))
        cal = getattr(sched, "calibration", None) or {}
        rows.append({"rate_per_s": rate, "seed": seed, "policy": name, **m,
                     "thresholds": str(cal.get("thresholds", "")), "max_in_flight": cal.get("max_in_flight"),
                     "rule": cal.get("rule", ""), "wall_s": time.perf_counter() - t0})
    return rows


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    s = runs.groupby(["policy", "rate_per_s"], sort=False).agg(
        seeds=("seed", "nunique"), e2e_mean_s=("e2e_mean_s", "mean"), e2e_sd_s=("e2e_mean_s", "std"),
        ttft_mean_s=("ttft_mean_s", "mean"), throughput_tokens_per_s=("throughput_tokens_per_s", "mean"),
        restarts=("restarts", "mean"), growth=("growth", "mean"), service_ratio=("service_ratio", "mean"),
        thresholds=("thresholds", "first"),
        max_in_flight=("max_in_flight", "first")).reset_index()
    grid = s[s["policy"].str.match(r"nested-L\d")]
    tuned = grid.loc[grid.groupby("rate_per_s")["e2e_mean_s"].idxmin()].copy()
    tuned["thresholds"] = tuned["policy"] + " " + tuned["thresholds"]
    tuned["policy"] = "nested-wait-tuned"
    return pd.concat([s, tuned], ignore_index=True)


def _plot(summary: pd.DataFrame, crossing: float, path: Path) -> None:
    plot_policies(summary[~summary["policy"].str.match(r"nested-L\d")], "rate_per_s",
                  [("e2e_mean_s", "mean end-to-end latency (s), central window"),
                   ("throughput_tokens_per_s", "output tokens/s (finished)")],
                  "ShareGPT lengths < 500 (LMSYS stand-in), Llama-2-7B on A100-80GB (roofline), C = 1.37e5 tokens",
                  path, "arrival rate (req/s)", vline=(crossing, f"fluid crossing {crossing:.1f} req/s"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 3 rates, 400 requests per run")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None, help="requests per run (default 2000, quick 400)")
    sweep_arguments(ap, OUT)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = lengths()
    fl, crossing, fit = fluid(table)
    fl.to_csv(out / "fluid.csv", index=False)
    seeds = args.seeds or (2 if args.quick else 10)
    n = args.requests or (400 if args.quick else 2000)
    rates = [round(f * crossing, 1) for f in (QUICK_FRACTIONS if args.quick else FRACTIONS)]
    log = ResultLog(out / "runs.csv", ("rate_per_s", "seed"), args.resume)
    tasks = [(r, s, n) for r in rates for s in range(seeds) if not log.done((r, s))]
    print(f"fluid crossing {crossing:.2f} req/s (d0 = {1e3 * fit.d0_s:.2f} ms, d1 = {1e6 * fit.d1_s_per_token:.3f} "
          f"us/token); {len(tasks)} points of {n} requests, about {len(tasks) * 25 * n / 2000 / 60 / args.jobs:.0f} "
          f"min; rows go to {out / 'runs.csv'}")
    t0 = time.perf_counter()
    run_tasks(tasks, _point, log, args.jobs, "nested_wait_lmsys")
    summary = summarize(log.df)
    summary.to_csv(out / "summary.csv", index=False)
    _plot(summary, crossing, out / "lmsys.png")
    lines = ["# Nested WAIT on an LMSYS-like workload (ShareGPT lengths < 500): ours vs the paper", "",
             f"{'QUICK run.' if args.quick else 'Full run.'} {seeds} seeds x {n} requests per rate; "
             f"{(time.perf_counter() - t0) / 60:.1f} min. Stand-in lengths: ShareGPT, both < 500 tokens, "
             f"{len(table)} rows, prompt mean {table['prompt_tokens'].mean():.1f} / median "
             f"{table['prompt_tokens'].median():.0f}, output mean {table['output_tokens'].mean():.1f} / median "
             f"{table['output_tokens'].median():.0f} (paper's LMSYS: 58.6 / 21 and 147.3 / 116).", "",
             "## Fluid memory M*(lambda) and the crossing M* = C", "",
             f"Ours: d0 = {1e3 * fit.d0_s:.3f} ms, d1 = {1e6 * fit.d1_s_per_token:.4f} us/token (fit MAPE "
             f"{100 * fit.mape:.1f} %), crossing **{crossing:.2f} req/s**. Paper (its LMSYS sample and fitted "
             f"service): M* = 34,377 / 55,758 / 100,327 / 250,509 tokens at 50 / 60 / 70 / 80 req/s, crossing 74.1.",
             "", *markdown_table(fl, fl.columns, "{:.4g}"), "",
             "## Latency by rate (mean over seeds; central window)", "",
             "The paper gives no numbers here: Nested WAIT has the lower latency, with a larger gap near overload.", ""]
    cols = ["policy", "rate_per_s", "seeds", "e2e_mean_s", "e2e_sd_s", "ttft_mean_s", "throughput_tokens_per_s",
            "restarts", "growth", "service_ratio", "thresholds", "max_in_flight"]
    lines += markdown_table(summary[~summary["policy"].str.match(r"nested-L\d")].sort_values(["rate_per_s", "policy"]),
                            cols)
    lines += ["", "Largest stable rate (at every rate up to it: late/mid latency ratio <= 1.5 and second-half completions >= 97 % "
              "of second-half arrivals): " + ", ".join(
        f"{p} {largest_stable_rate(summary, p):g}" for p in dict.fromkeys(summary["policy"])
        if not p.startswith("nested-L")) + " req/s."]
    (out / "lmsys.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'runs.csv'}, {out / 'summary.csv'}, {out / 'fluid.csv'}, {out / 'lmsys.md'}, "
          f"{out / 'lmsys.png'}")


if __name__ == "__main__":
    main()
