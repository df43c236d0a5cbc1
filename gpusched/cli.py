"""The ``gpusched`` command line (also ``python -m gpusched``).

Subcommands (``gpusched <command> --help`` documents every option with its default and its choices):

==============  ======================================================================================
traces          the bundled real traces: rows, rate, length percentiles
perf            one step's predicted time, and the step-time model's error against measured steps
simulate        serve a trace on simulated instances; results in a run folder with ``run.json``
validate-vllm   replay a measured vLLM run and compare TTFT/TPOT/latency statistics
bench           simulator speed on the Azure trace (requests per wall-second)
policies        every scheduler, router and gate a run can use, with its summary and source
==============  ======================================================================================

Bad input never prints a traceback: the command prints one line, ``gpusched <command>: error: ...``,
naming the value and the fix, and exits with status 2.

This is the only core module allowed to reach into ``simulators`` (and, through
:mod:`gpusched.registry`'s plugins, ``formulations``): it is where a policy is plugged into an engine
for the user. Engines and plugins are imported when a parser that lists their names is built or a
command runs.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import os
import re
import sys
import time
from pathlib import Path

from gpusched.errors import ConfigError, GpuschedError, TraceError

DEFAULT_ROOFLINE_GPU = "H100-80GB"
KNOB_FLAGS = {"max_num_batched_tokens": "--max-num-batched-tokens", "max_num_seqs": "--max-num-seqs"}


# ------------------------------------------------------------------------------------------ parsing
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``gpusched simulate: error: <what>; see 'gpusched simulate --help'``."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; option help wrapped without splitting names at hyphens (vllm-v1)."""

    def _split_lines(self, text, width):
        import textwrap
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _fail(text: str, value: str, fix: str):
    raise argparse.ArgumentTypeError(f"{value!r} {text}; {fix}")


def _int_at_least(minimum: int, what: str):
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            _fail("is not a whole number", text, f"give {what} as an integer >= {minimum}")
        if value < minimum:
            _fail(f"is below {minimum}", text, f"give {what} as an integer >= {minimum}")
        return value
    parse.__name__ = what
    return parse


def _float_in(low: float, high: float, what: str, low_open: bool = True):
    """An argparse type: a finite number in ``(low, high]`` (``[low, high]`` with ``low_open=False``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        bracket = "(" if low_open else "["
        ok = (value > low if low_open else value >= low) and value <= high
        if not ok:
            _fail(f"is not a number in {bracket}{low:g}, {high:g}]", text, f"give {what} in that range")
        return value
    parse.__name__ = what
    return parse


def _tokens(minimum: int, what: str):
    """An argparse type: token counts as ``512,256`` or ``1024x32`` (32 copies of 1024); '' or ``none``: no
    entries. Every count must be >= ``minimum`` and every copy count >= 1."""
    def parse(text: str) -> list[int]:
        if text.strip().lower() in ("", "none"):
            return []
        out: list[int] = []
        for part in text.split(","):
            value, sep, copies = part.strip().partition("x")
            try:
                count, times = int(value), (int(copies) if sep else 1)
            except ValueError:
                _fail(f"is not a list of {what}", part, "write e.g. 512,512 or 1024x32 (32 entries of 1024)")
            if count < minimum:
                _fail(f"has {what} {count} < {minimum}", part,
                      f"each of the {what} must be >= {minimum} (pass '' or none for no entries)")
            if times < 1:
                _fail(f"asks for {times} copies", part, "write NxK with K >= 1 copies, e.g. 1024x32")
            if times > 1_000_000:
                _fail(f"asks for {times:,} copies", part, "use at most 1,000,000 entries")
            out.extend([count] * times)
        return out
    parse.__name__ = what
    return parse


def _did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value).lower(), [str(c).lower() for c in choices], n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _named(kind: str, names, resolve=None, paths: str | None = None, suggest=()):
    """An argparse type: one of ``names`` (case-insensitive), or what ``resolve`` accepts (aliases), or
    with ``paths`` an existing path (``"dir"`` or ``"any"``). Unknown values get the choices and the
    closest match among ``names`` and ``suggest`` (aliases)."""
    def parse(text: str) -> str:
        if text.lower() in {n.lower() for n in names}:
            return text.lower()
        if resolve is not None:
            try:
                resolve(text)
                return text
            except GpuschedError:
                pass
        if paths and Path(text).exists() and (paths == "any" or Path(text).is_dir()):
            return text
        extra = " or an existing folder" if paths == "dir" else (" or an existing file" if paths else "")
        raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}{_did_you_mean(text, [*names, *suggest])} Choices: "
                                         f"{', '.join(names)}{extra}")
    parse.__name__ = kind
    return parse


def _knob(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE typed: true/false -> bool, whole numbers -> int, numbers -> float, else text."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
        _fail("is not KEY=VALUE", text, "write e.g. --scheduler-knob max_num_seqs=128 (a Python identifier, '=', "
              "a value)")
    raw = raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false", "yes", "no", "on", "off"):
        return key.strip(), lowered in ("true", "yes", "on")
    for cast in (int, float):
        try:
            return key.strip(), cast(raw)
        except ValueError:
            pass
    return key.strip(), raw


def _policy_names(kind: str) -> list[str]:
    from gpusched import registry

    try:
        return registry.names(kind)
    except GpuschedError:  # a broken plugin: the command that needs it reports the error
        return []


def _help(text: str, default=None, show_default: bool = True) -> str:
    if not show_default:
        return text
    shown = "none" if default is None or default == [] else (",".join(map(str, default)) if isinstance(default, list)
                                                              else default)
    return f"{text} (default: {shown})"


def _add(p: argparse.ArgumentParser, *flags: str, help: str, default=None, show_default: bool = True, **kw):
    """``add_argument`` whose help ends with the default."""
    if kw.get("action") in ("store_true", "store_false"):
        p.add_argument(*flags, help=help, **kw)
    else:
        p.add_argument(*flags, help=_help(help, default, show_default), default=default, **kw)


def _models():
    from gpusched.llm import get_model, list_models
    return list_models(), get_model


def _gpus():
    from gpusched.hardware import get_gpu, list_gpus
    return list_gpus(), get_gpu


def _gpu_type():
    from gpusched.hardware import _ALIASES

    gpus, get_gpu = _gpus()
    return _named("GPU", gpus, get_gpu, suggest=sorted(_ALIASES))


def _profiles() -> list[str]:
    from gpusched.paths import BUNDLED_PROFILES
    return sorted(BUNDLED_PROFILES)


def _benches() -> list[str]:
    from gpusched.paths import BUNDLED_BENCHES
    return sorted(BUNDLED_BENCHES)


def _traces() -> list[str]:
    from gpusched.workload import list_bundled_traces
    return list_bundled_traces()


def _add_step_model_args(p: argparse.ArgumentParser) -> None:
    models, get_model = _models()
    gpus, _ = _gpus()
    _add(p, "--model", default="llama3-8b", type=_named("model", models, get_model),
         help=f"model shape: {', '.join(models)} (or their Hugging Face ids)")
    _add(p, "--step-model", default="profile", type=_named("step model", ["profile", "roofline"]),
         help="how a step is timed: 'profile' interpolates the measured tables of --profile; 'roofline' is the "
              "analytic model of --gpu (any GPU/model pair)")
    _add(p, "--profile", default="h100", type=_named("profile", _profiles(), paths="dir"),
         help=f"measured tables for --step-model profile: {', '.join(_profiles())} or a folder (h100 covers "
              f"llama2-7b/13b/70b, llama-30b, llama3-8b; rtx4090 and rtxpro6000 cover Llama-3(.1)-8B)")
    _add(p, "--gpu", default=None, type=_gpu_type(), show_default=False,
         help=f"GPU kind: {', '.join(gpus)} (a bare 'a100' is the A100-80GB, as in Vidur). With --step-model "
              f"roofline it sets the peaks (default: {DEFAULT_ROOFLINE_GPU}); with a profile it sets only the KV "
              f"capacity (default: the profile's own GPU: H100-80GB, RTX-4090 or RTX-PRO-6000)")
    _add(p, "--tp", default=1, type=_int_at_least(1, "tensor-parallel degree"), help="tensor-parallel degree")


# ------------------------------------------------------------------------------------------ commands
def cmd_traces(args: argparse.Namespace) -> int:
    """List the bundled real traces with row count, rate and length percentiles."""
    import pandas as pd

    from gpusched.workload import bundled_trace_summary

    table = bundled_trace_summary()
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    return 0


def _step_model(args):
    """The step-time model the arguments ask for, and one line naming it and its GPU."""
    from gpusched.perf import ProfiledStepTime, RooflineStepTime

    if args.step_model == "roofline":
        gpu = args.gpu or DEFAULT_ROOFLINE_GPU
        model = RooflineStepTime(args.model, gpu, tp=args.tp)
        return model, f"roofline (analytic) model of {model.gpu.name}", model.gpu.name
    from gpusched.paths import resolve_profile
    from simulators.serving.build import PROFILE_GPU

    model = ProfiledStepTime.from_profile_dir(resolve_profile(args.profile), model=args.model, tp=args.tp)
    gpu = PROFILE_GPU.get(str(args.profile).lower(), "the GPU it was measured on")
    return model, f"profile {args.profile} (measured on {gpu}, {model.fmt} tables)", gpu


def cmd_perf(args: argparse.Namespace) -> int:
    """Predict one step time, then print the model's error against every measured whole-step table."""
    from gpusched.perf import compare_to_steps, mape

    if args.cached and len(args.cached) != len(args.prefill):
        raise ConfigError(f"--cached has {len(args.cached)} entries but --prefill has {len(args.prefill)}; give one "
                          f"cached length per prefill chunk (or omit --cached)")
    if not args.prefill and not args.decode:
        raise ConfigError("--prefill and --decode are both empty: a step needs at least one prefill chunk or decode")
    model, named, _ = _step_model(args)
    step_s = model.step_time_s(prefill_lens=args.prefill, decode_contexts=args.decode,
                               prefill_cached=args.cached or None)
    print(f"{args.model} TP{args.tp}, step model: {named}")
    print(f"prefill {len(args.prefill)} chunk(s) ({sum(args.prefill):,} tokens), {len(args.decode):,} decode(s) "
          f"-> step {step_s * 1e3:.3f} ms")
    if args.step_model == "roofline":
        print("(the roofline model has no measured steps to check against)")
        return 0
    from gpusched.paths import resolve_profile

    profile_dir = Path(resolve_profile(args.profile))
    checks = sorted(profile_dir.glob(f"e2e_*{model.model.name}*.csv"))
    if not checks:
        print(f"(no whole-step table for {model.model.name} in profile {args.profile}: nothing to check against)")
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


def _load_trace(args):
    """The trace of ``--trace`` with ``--rate``, ``--rate-scale`` and ``--limit`` applied; refuses an empty one."""
    from gpusched.workload import load_trace

    if args.rate is not None:
        try:
            trace = load_trace(args.trace, rate_per_s=args.rate)
        except ConfigError as err:  # the loader refuses a rate for a trace with timestamps: say it in flags
            if "rate_per_s" not in str(err):
                raise
            raise ConfigError(f"--rate {args.rate:g}: trace {args.trace!r} has its own arrival times; --rate gives "
                              f"arrivals to length-only traces (e.g. sharegpt-lengths). To speed this one up or "
                              f"slow it down use --rate-scale") from None
    else:
        trace = load_trace(args.trace)
    if args.rate_scale != 1.0:
        trace = trace.scale_rate(args.rate_scale)
    if args.limit:
        trace = trace.head(args.limit)
    if len(trace) == 0:
        raise TraceError(f"trace {args.trace!r} holds no requests (a header without rows?); nothing to simulate")
    return trace


def _flag_hint(message: str) -> str:
    """Name the command-line flag of an engine knob an error message mentions."""
    for knob, flag in KNOB_FLAGS.items():
        if knob in message and flag not in message:
            message += f" (set {knob} with {flag})"
    if "does not take the knobs" in message:
        message += "; `gpusched policies` lists each scheduler's knobs"
    return message


def cmd_simulate(args: argparse.Namespace) -> int:
    """Serve a trace on a set of simulated instances; write a run folder and print a summary."""
    from gpusched.runinfo import prepare_out_dir, write_run_json
    from simulators.serving import simulate
    from simulators.serving.build import build_instances, gpu_for

    if args.profile == "":
        raise ConfigError("--profile '' no longer selects the roofline model; pass --step-model roofline (and --gpu)")
    started = time.time()
    out = prepare_out_dir(args.out, args.overwrite)
    trace = _load_trace(args)
    knobs = dict(args.scheduler_knob)
    for knob in KNOB_FLAGS:
        if getattr(args, knob) is not None:
            knobs[knob] = getattr(args, knob)
    step, named, gpu = _step_model(args)
    if args.step_model == "profile":
        gpu = gpu_for(args.profile, args.gpu)
    try:
        instances = build_instances(args.model, args.instances, args.tp,
                                    None if args.step_model == "roofline" else args.profile,
                                    gpu if args.step_model == "roofline" else args.gpu, args.scheduler, knobs,
                                    memory_utilization=args.memory_utilization, kv_blocks=args.kv_blocks,
                                    step_model=step)
    except ConfigError as err:
        raise ConfigError(_flag_hint(str(err))) from None
    blocks = instances[0].num_kv_blocks
    kv_note = "given" if args.kv_blocks else f"{gpu} memory x {args.memory_utilization:g} minus weights and activations"
    knob_text = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "defaults"
    print(f"{trace.name}: {len(trace):,} requests over {trace.duration_s:,.0f} s")
    print(f"{args.instances} x {args.model} TP{args.tp} on {gpu}; step model: {named}; {blocks:,} KV blocks per "
          f"instance ({kv_note}); scheduler {args.scheduler} ({knob_text}); router {args.router}; seed {args.seed}")
    clock = time.perf_counter()
    try:
        result = simulate(trace, instances, router=args.router, seed=args.seed, progress=not args.quiet,
                          mode=args.mode, record_timeline=args.timeline)
    except ConfigError as err:
        raise ConfigError(_flag_hint(str(err))) from None
    wall_s = time.perf_counter() - clock
    result.save(out, timeline=args.timeline)
    print(result.summary().to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"{result.num_unfinished} unfinished; {result.num_steps:,} steps; {wall_s:.1f} s wall on the "
          f"{result.engine} engine ({len(trace) / max(wall_s, 1e-9):,.0f} requests per wall-second)")
    overload = result.overload()
    if overload.overloaded:
        print(f"warning: {overload.message()}", file=sys.stderr)
    run_file = write_run_json(out, _arguments(args), started, time.time() - started, trace=trace,
                              command=["gpusched", *args.argv], engine=result.engine, kv_blocks_per_instance=blocks,
                              gpu=gpu, step_model=named, summary=result.summary().to_dict(orient="index"),
                              overload={"overloaded": overload.overloaded, "reasons": list(overload.reasons)})
    print(f"results in {out} (run record: {run_file.name}{'' if args.timeline else '; per-step timeline: --timeline'})")
    return 0


def cmd_validate_vllm(args: argparse.Namespace) -> int:
    """Replay a measured vLLM run and print measured vs simulated latency statistics."""
    from gpusched.paths import resolve_bench, resolve_profile
    from gpusched.runinfo import prepare_out_dir, write_run_json
    from simulators.serving.vllm_replay import replay_run

    started = time.time()
    out = prepare_out_dir(args.out, args.overwrite)
    run = replay_run(resolve_bench(args.bench_dir), resolve_profile(args.profile), num_gpu_blocks=args.kv_blocks,
                     gpu=args.gpu)
    s = run.settings
    print(f"{args.bench_dir}: {len(run.result.requests):,} requests, {s.model} TP{s.tp}, vLLM {s.vllm_version or '?'}, "
          f"max_num_seqs {s.max_num_seqs}, max_num_batched_tokens {s.max_num_batched_tokens}; step model: profile "
          f"{args.profile}")
    print(f"KV capacity: {run.kv_source}")
    print(f"Attention: {run.step_model_source}")
    run.table.to_csv(out / "validation.csv", index=False)
    run.result.save(out / "simulation", timeline=False)
    print(run.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"mean absolute error over the table: {run.mean_abs_error_pct:.2f} % (written to {out / 'validation.csv'})")
    write_run_json(out, _arguments(args), started, time.time() - started, trace=None,
                   command=["gpusched", *args.argv], num_gpu_blocks=run.num_gpu_blocks, kv_source=run.kv_source,
                   mean_abs_error_pct=run.mean_abs_error_pct)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Simulator speed on the bundled Azure conversation trace: requests per wall-second."""
    from simulators.serving.bench import run_bench

    run_bench(repeats=args.repeats, mode=args.mode, baseline=None if args.baseline == "none" else args.baseline,
              trace_name=args.trace, scheduler=args.scheduler, preemption=args.preemption,
              disaggregated=args.disaggregated, sessions=args.sessions, rate=args.rate)
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run every registered paper's experiments (resuming finished cells); write DIR/report.md and .html."""
    from experiments.reproduce import reproduce
    from gpusched.runinfo import prepare_out_dir

    prepare_out_dir(args.out, overwrite=True)  # an existing folder is resumed, never wiped
    # the report quotes --out as typed, so the commands it prints work from a clone at another path
    s = reproduce(Path(args.out).expanduser(), quick=args.quick, only=args.only, backend=args.backend,
                  workers=args.workers, address=args.address, progress=not args.quiet, report_only=args.report_only)
    print(f"{s.computed} cell(s) computed, {s.reused} reused, {len(s.failed)} failed in {s.wall_s:.1f} s; "
          f"report: {s.report_md} and {s.report_html}")
    return 1 if s.failed else 0


def cmd_policies(args: argparse.Namespace) -> int:
    """Every registered scheduler, router and gate with its summary, source and knobs."""
    from gpusched import registry

    for kind in registry.KINDS:
        entries = registry.entries(kind)
        print(f"{kind}s ({len(entries)}):" if entries else f"{kind}s: none registered")
        for entry in entries:
            print(f"  {entry.name:<26} {entry.summary}")
            print(f"  {'':<26} source: {entry.source or '?'}; knobs: {_knobs_of(entry)}")
    print("\nUse one with `gpusched simulate --scheduler NAME [--scheduler-knob KEY=VALUE ...] --router NAME`; a "
          "package adds its own under the entry point group 'gpusched.policies' (see gpusched/registry.py).")
    return 0


def _knobs_of(entry) -> str:
    """``name=default`` of the knobs a policy's default object exposes (dataclass fields), if it is one."""
    import dataclasses

    try:
        obj = entry.build()
    except Exception:  # noqa: BLE001 - a policy that needs its run to be built: its factory's keywords
        return _factory_knobs(entry)
    if not dataclasses.is_dataclass(obj):
        return _factory_knobs(entry)
    return ", ".join(f"{f.name}={getattr(obj, f.name)!r}" for f in dataclasses.fields(obj)
                     if f.init and f.name != "name" and not f.name.startswith("_")) or "none"


def _factory_knobs(entry) -> str:
    """``name=default`` of the keyword arguments of a factory ``factory(context, **knobs)`` (a policy that
    calibrates itself on its run, so that no default object can be built to read them from)."""
    try:
        params = list(inspect.signature(entry.factory).parameters.values())[1:]
    except (TypeError, ValueError):
        return "see its docstring"
    knobs = [f"{p.name}={p.default!r}" for p in params if p.default is not inspect.Parameter.empty
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "name"]
    return ", ".join(knobs) or "see its docstring"


def _arguments(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in ("func", "argv")}


# ------------------------------------------------------------------------------------------ parser
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from gpusched.runinfo import git_commit

    try:
        number = version("gpusched")
    except PackageNotFoundError:
        number = "unknown (not installed)"
    commit = git_commit()
    return f"gpusched {number}" + (f" (git {commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''})"
                                   if commit else "")


class _Version(argparse.Action):
    """``--version``, computed only when asked (it runs git)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    formatter = _Formatter
    parser = _Parser(prog="gpusched", description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                     formatter_class=formatter)
    parser.add_argument("--version", action=_Version, help="print the version (and git commit) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("traces", formatter_class=formatter,
                       help="list bundled real traces: rows, rate, length percentiles",
                       description="List the bundled real traces: rows, rate, length percentiles.")
    p.set_defaults(func=cmd_traces)

    p = sub.add_parser("perf", formatter_class=formatter,
                       help="predict one step's time and check the step model against measured steps",
                       description="Predict the time of one engine step and, for a profile with whole-step "
                                   "measurements (h100), print the model's error against them.")
    _add_step_model_args(p)
    _add(p, "--prefill", default=[512], type=_tokens(1, "prefill chunk lengths"),
         help="new tokens of each prefill chunk, e.g. 512,256 or 512x4; '' or none for a decode-only step")
    _add(p, "--cached", default=[], type=_tokens(0, "cached lengths"),
         help="tokens already cached before each prefill chunk, one per chunk")
    _add(p, "--decode", default=[1024] * 32, type=_tokens(0, "decode contexts"), show_default=False,
         help="context length of each decoding sequence, e.g. 1024x32 (32 sequences at 1024 tokens; the "
              "default); '' or none for no decodes")
    p.add_argument("-v", "--verbose", action="store_true", help="print every measured step")
    p.set_defaults(func=cmd_perf)

    schedulers, routers = _policy_names("scheduler"), _policy_names("router")
    p = sub.add_parser("simulate", formatter_class=formatter, help="serve a trace on simulated instances",
                       description="Serve a trace on simulated instances and write a run folder: requests.csv, "
                                   "summary.csv, latency_cdf.png, run.json (and with --timeline timeline.csv and "
                                   "timeline.png).",
                       epilog="Schedulers and routers come from gpusched.registry; `gpusched policies` lists each "
                              "with its summary, source and knobs.\nExample:\n  gpusched simulate --trace "
                              "azure-conv-2023 --instances 2 --router least-outstanding-tokens --out results/sim1")
    _add(p, "--trace", default="azure-conv-2023", type=_named("trace", _traces(), paths="any"),
         help=f"bundled trace ({', '.join(_traces())}) or a trace file or folder")
    _add(p, "--rate", default=None, type=_float_in(0, 1e6, "the arrival rate (requests/s)"),
         help="arrival rate in requests/s for a length-only trace (e.g. sharegpt-lengths, whose bundled rate is "
              "5/s); Poisson arrivals seeded by the trace's seed")
    _add(p, "--rate-scale", default=1.0, type=_float_in(0, 1e6, "the rate factor"),
         help="multiply the trace's arrival rate (2 = arrivals twice as dense)")
    _add(p, "--limit", default=0, type=_int_at_least(0, "the request count"),
         help="simulate only the first N requests (0: all)")
    _add_step_model_args(p)
    _add(p, "--instances", default=1, type=_int_at_least(1, "the instance count"), help="identical instances")
    _add(p, "--scheduler", default="vllm-v1", type=_named("scheduler", schedulers),
         help=f"batch scheduler of every instance: {', '.join(schedulers)}")
    _add(p, "--scheduler-knob", default=[], type=_knob, action="append", metavar="KEY=VALUE", show_default=False,
         help="a scheduler setting, repeatable, typed (true/false, integers, numbers, else text), e.g. "
              "--scheduler-knob preemption=swap; `gpusched policies` lists each scheduler's knobs")
    _add(p, "--max-num-batched-tokens", default=None, type=_int_at_least(1, "the token budget"), show_default=False,
         help="token budget of one step (the scheduler's own default otherwise: 2048 for vllm-v1)")
    _add(p, "--max-num-seqs", default=None, type=_int_at_least(1, "the sequence cap"), show_default=False,
         help="cap on running sequences (the scheduler's own default otherwise: 256 for vllm-v1)")
    _add(p, "--kv-blocks", default=None, type=_int_at_least(1, "the KV block count"), show_default=False,
         help="KV blocks per instance (default: from the GPU's memory, see --memory-utilization)")
    _add(p, "--memory-utilization", default=0.9, type=_float_in(0, 1, "the memory fraction"),
         help="fraction of GPU memory for weights + activations + KV, as vLLM's gpu_memory_utilization")
    _add(p, "--router", default="round-robin", type=_named("router", routers),
         help=f"picks the instance of each arriving request: {', '.join(routers)}")
    _add(p, "--seed", default=0, type=_int_at_least(0, "the seed"), help="seed of randomised routers and policies")
    _add(p, "--out", default="results/simulate", help="run folder; refused if it already holds a run")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    p.add_argument("--timeline", action="store_true",
                   help="also write the per-step timeline (timeline.csv, one row per step: large) and its plot")
    _add(p, "--mode", default="fast", type=_named("mode", ["fast", "simpy", "step"]),
         help="engine: fast = the compiled engine where it applies, else simpy (identical results); step = SimPy "
              "one event per step (the reference)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("validate-vllm", formatter_class=formatter,
                       help="replay a measured vLLM run; compare latency statistics",
                       description="Replay a measured vLLM run with its engine settings and compare TTFT, TPOT and "
                                   "latency (mean, p50, p90, p95, p99). When the run did not record its KV block "
                                   "count, it is estimated from the GPU's memory as vLLM sizes its cache, and the "
                                   "output says how.")
    p.add_argument("bench_dir", type=_named("measured run", _benches(), paths="dir"),
                   help=f"a measured run ({', '.join(_benches())}) or a folder with meta.json and requests.jsonl "
                        f"(directly or under vllm/)")
    p.add_argument("--profile", required=True, type=_named("profile", _profiles(), paths="dir"),
                   help=f"step-time tables of the same GPU and model: {', '.join(_profiles())} or a folder")
    _add(p, "--gpu", default=None, type=_gpu_type(), show_default=False,
         help="the GPU the run used, for the block estimate when the run records neither its blocks nor its "
              "device (default: the run's device_name, else the profile's GPU)")
    _add(p, "--kv-blocks", default=None, type=_int_at_least(1, "the KV block count"), show_default=False,
         help="replay with this many KV blocks instead of the recorded or estimated count")
    _add(p, "--out", default="results/validate-vllm", help="run folder; refused if it already holds a run")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    p.set_defaults(func=cmd_validate_vllm)

    p = sub.add_parser("bench", formatter_class=formatter,
                       help="simulator speed: requests per wall-second on a trace",
                       description="Time the simulator on a trace (default: the bundled Azure conversation trace, "
                                   "19,366 requests) in a chosen configuration, and a baseline in the same process.")
    _add(p, "--repeats", default=[1, 10], type=_tokens(1, "repetition counts"),
         help="trace repetitions to time, e.g. 1,10 (each >= 1)")
    _add(p, "--mode", default="fast", type=_named("mode", ["fast", "simpy", "step"]),
         help="engine mode to time: fast, simpy or step")
    _add(p, "--baseline", default="auto", type=_named("baseline", ["auto", "fast", "simpy", "step", "none"]),
         help="also time vllm-v1 on one instance in this mode, once, in the same process, and print the ratio "
              "(auto: the compiled engine, or simpy when the configuration itself ran compiled)")
    _add(p, "--trace", default="azure-conv-2023", type=_named("trace", _traces(), paths="any"),
         help="bundled trace or a trace file")
    _add(p, "--scheduler", "--policy", default="vllm-v1", type=_named("scheduler", _policy_names("scheduler")),
         help="any registered scheduler")
    _add(p, "--preemption", default=None, type=_named("preemption", ["recompute", "swap"]), show_default=False,
         help="recompute or swap (the scheduler's own default otherwise)")
    p.add_argument("--disaggregated", action="store_true", help="1 prefill + 1 decode instance")
    p.add_argument("--sessions", action="store_true", help="multi-round sessions built from the trace's lengths")
    _add(p, "--rate", default=1.0, type=_float_in(0, 1e6, "the rate factor"),
         help="arrival-rate factor, e.g. 8 for an overload")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("policies", formatter_class=formatter,
                       help="list every scheduler, router and gate, with summary and source",
                       description="List every registered policy (gpusched.registry) with its summary, source and "
                                   "knobs.")
    p.set_defaults(func=cmd_policies)

    p = sub.add_parser("reproduce", formatter_class=formatter,
                       help="reproduce every registered paper into one report (resumable)",
                       description="Run every registered experiment's cells (experiments.reproduce), reusing the "
                                   "cells an earlier run into the same folder finished, and write report.md and a "
                                   "static report.html: ours vs each paper's numbers with a verdict, the plots, and "
                                   "the command to re-run one cell.")
    _add(p, "--out", default="results/reproduce", help="output folder: cells, tables, plots, report.md, report.html")
    p.add_argument("--quick", action="store_true",
                   help="small cells, minutes in all (their numbers are not the headline ones)")
    _add(p, "--only", nargs="+", default=None, metavar="PAPER", show_default=False,
         help="papers or experiments to run (default: all)")
    _add(p, "--backend", default="inprocess", choices=["inprocess", "pool", "ray"],
         help="where cells run: this process, a local process pool, or Ray")
    _add(p, "--workers", type=_int_at_least(1, "the number of workers"), default=None, show_default=False,
         help="pool or Ray workers (default: the machine's CPUs)")
    _add(p, "--address", default=None, help="an existing Ray cluster's address (with --backend ray)")
    p.add_argument("--report-only", action="store_true",
                   help="compute nothing: report the cells already finished in --out (a run stopped part-way, "
                        "or one still going on elsewhere)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse's own exits: --help, --version (0) and usage errors (2)
        return int(stop.code or 0)
    args.argv = argv
    try:
        if args.command == "bench" and not args.repeats:
            raise ConfigError("--repeats is empty; give at least one repetition count, e.g. --repeats 1")
        return args.func(args)
    except GpuschedError as err:
        print(f"gpusched {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")
        return 141
    except OSError as err:
        where = f" {err.filename!r}" if getattr(err, "filename", None) else ""
        print(f"gpusched {args.command}: error: cannot use{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpusched {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
