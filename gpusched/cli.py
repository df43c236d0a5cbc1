"""The ``gpusched`` command line (also ``python -m gpusched``).

Subcommands import what they need when they run, so ``gpusched --help`` stays instant. This is the
only core module allowed to reach into ``formulations``, ``simulators`` and ``experiments``: it is
where a policy is plugged into an engine for the user.
"""
from __future__ import annotations

import argparse
import sys

from gpusched.errors import GpuschedError


def _int_list(text: str) -> list[int]:
    """Parse ``"512,512"`` or ``"1024x32"`` (32 copies of 1024) into a list of ints."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        value, _, copies = part.partition("x")
        try:
            out.extend([int(value)] * (int(copies) if copies else 1))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a token count; write e.g. 512,512 or 1024x32 (32 sequences of 1024)"
            ) from None
    return out


def cmd_traces(args: argparse.Namespace) -> int:
    """List the bundled real traces with row count, rate and length percentiles."""
    import pandas as pd

    from gpusched.workload import bundled_trace_summary

    table = bundled_trace_summary()
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    """Predict one step time, then print the model's error against every measured whole-step table."""
    from pathlib import Path

    from gpusched.paths import resolve_profile
    from gpusched.perf import ProfiledStepTime, compare_to_steps, mape

    profile_dir = resolve_profile(args.profile)
    model = ProfiledStepTime.from_profile_dir(profile_dir, model=args.model, tp=args.tp)
    step_s = model.step_time_s(
        prefill_lens=args.prefill, decode_contexts=args.decode, prefill_cached=args.cached or None
    )
    print(
        f"{args.model} TP{args.tp} on profile {args.profile}: prefill {len(args.prefill)} chunk(s) "
        f"({sum(args.prefill)} tokens), {len(args.decode)} decode(s) -> step {step_s * 1e3:.3f} ms"
    )
    checks = sorted(Path(profile_dir).glob(f"e2e_*{args.model}*.csv"))
    if not checks:
        print(f"(no whole-step table for {args.model} in {profile_dir}: nothing to check against)")
        return 0
    for csv_path in checks:
        table = compare_to_steps(model, csv_path)
        print(f"\nMeasured vs predicted whole steps: {csv_path.name} ({len(table)} steps)")
        by_kind = table.groupby("kind")["error_pct"].apply(lambda e: e.abs().mean())
        for kind, err in by_kind.items():
            print(f"  {kind:<10} MAPE {err:5.2f} %")
        print(f"  {'all':<10} MAPE {mape(table):5.2f} %")
        if args.verbose:
            print(table.to_string(index=False))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve a trace on a set of simulated instances; write CSVs, PNGs and print a summary."""
    import time

    from gpusched.workload import load_trace
    from simulators.serving.build import build_instances

    args.profile = args.profile or None
    from simulators.serving import simulate

    trace = load_trace(args.trace)
    if args.rate_scale != 1.0:
        trace = trace.scale_rate(args.rate_scale)
    if args.limit:
        trace = trace.head(args.limit)
    knobs = {k: v for k, v in (("max_num_batched_tokens", args.max_num_batched_tokens),
                               ("max_num_seqs", args.max_num_seqs)) if v is not None}
    instances = build_instances(args.model, args.instances, args.tp, args.profile, args.gpu, args.scheduler,
                                knobs, memory_utilization=args.memory_utilization, kv_blocks=args.kv_blocks)
    print(f"{trace.name}: {len(trace)} requests over {trace.duration_s:,.0f} s on {args.instances} x "
          f"{args.model} TP{args.tp} ({instances[0].num_kv_blocks} KV blocks each), scheduler {args.scheduler}, "
          f"router {args.router}")
    start = time.perf_counter()
    result = simulate(trace, instances, router=args.router, seed=args.seed, progress=not args.quiet, mode=args.mode)
    wall_s = time.perf_counter() - start
    out = result.save(args.out)
    print(result.summary().to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"{result.num_unfinished} unfinished; {result.num_steps} steps; {wall_s:.1f} s wall on the {result.engine} engine "
          f"({len(trace) / wall_s:,.0f} requests per wall-second); results in {out}")
    return 0


def cmd_validate_vllm(args: argparse.Namespace) -> int:
    """Replay a measured vLLM run and print measured vs simulated latency statistics."""
    from pathlib import Path

    from gpusched.paths import resolve_bench, resolve_profile
    from simulators.serving.vllm_replay import replay

    table, result = replay(resolve_bench(args.bench_dir), resolve_profile(args.profile))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "validation.csv", index=False)
    result.save(out / "simulation")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"mean absolute error over the table: {table['error_pct'].abs().mean():.2f} % "
          f"(written to {out / 'validation.csv'})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Simulator speed on the bundled Azure conversation trace: requests per wall-second."""
    from simulators.serving.bench import run_bench

    run_bench(repeats=args.repeats, mode=args.mode, baseline=None if args.baseline == "none" else args.baseline,
              trace_name=args.trace, scheduler=args.scheduler, preemption=args.preemption,
              disaggregated=args.disaggregated, sessions=args.sessions, rate=args.rate)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpusched", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("traces", help="list bundled real traces: rows, rate, length percentiles")
    p.set_defaults(func=cmd_traces)

    p = sub.add_parser("perf", help="predict a step time and check the model against measured steps")
    p.add_argument("--profile", default="h100", help="bundled profile (h100, rtx4090, rtxpro6000) or a directory")
    p.add_argument("--model", default="llama3-8b", help="model name, e.g. llama3-8b or meta-llama/Llama-3.1-8B")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    p.add_argument("--prefill", type=_int_list, default=[512], help="prefill chunk lengths, e.g. 512,256")
    p.add_argument("--cached", type=_int_list, default=[], help="tokens already cached per prefill chunk")
    p.add_argument("--decode", type=_int_list, default=_int_list("1024x32"), help="decode contexts, e.g. 1024x32")
    p.add_argument("-v", "--verbose", action="store_true", help="print every measured step")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("simulate", help="serve a trace on simulated instances")
    p.add_argument("--trace", default="azure-conv-2023", help="bundled trace name or a trace file")
    p.add_argument("--model", default="llama3-8b")
    p.add_argument("--profile", default="h100", help="bundled profile or directory ('' for the roofline model)")
    p.add_argument("--gpu", default=None, help="GPU kind (KV capacity; roofline model without --profile)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--scheduler", default="vllm-v1", help="vllm-v1, vllm-v0, sarathi or static")
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--kv-blocks", type=int, default=None, help="KV blocks per instance (default: from memory)")
    p.add_argument("--memory-utilization", type=float, default=0.9)
    p.add_argument("--router", default="round-robin")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the arrival rate")
    p.add_argument("--limit", type=int, default=0, help="simulate only the first N requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/simulate")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--mode", default="fast", choices=["fast", "simpy", "step"],
                   help="fast: the compiled engine where it applies, else simpy (identical results)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("validate-vllm", help="replay a measured vLLM run; compare latency statistics")
    p.add_argument("bench_dir", help="a measured-run directory (vllm/requests.jsonl, vllm/meta.json) or vllm-rtx4090")
    p.add_argument("--profile", required=True, help="profile directory of the same GPU and model, or rtx4090")
    p.add_argument("--out", default="results/validate-vllm")
    p.set_defaults(func=cmd_validate_vllm)

    p = sub.add_parser("bench", help="simulator speed: requests per wall-second on the Azure trace")
    p.add_argument("--repeats", type=_int_list, default=[1, 10], help="trace repetitions to time, e.g. 1,10")
    p.add_argument("--mode", default="fast", choices=["fast", "simpy", "step"])
    p.add_argument("--baseline", default="auto", choices=["auto", "fast", "simpy", "step", "none"],
                   help="also time vllm-v1 on one instance in this mode, once, in the same process (auto: the "
                        "compiled engine, or simpy when the configuration itself ran compiled)")
    p.add_argument("--trace", default="azure-conv-2023", help="bundled trace name or a trace file")
    p.add_argument("--scheduler", "--policy", default="vllm-v1", help="any registered scheduler name")
    p.add_argument("--preemption", default=None, choices=["recompute", "swap"])
    p.add_argument("--disaggregated", action="store_true", help="1 prefill + 1 decode instance")
    p.add_argument("--sessions", action="store_true", help="multi-round sessions built from the trace's lengths")
    p.add_argument("--rate", type=float, default=1.0, help="arrival-rate factor, e.g. 8 for an overload")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GpuschedError as err:
        print(f"gpusched {args.command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
