"""Replay a measured vLLM run in the simulator and compare latencies, statistic by statistic.

A measured run is a directory laid out like LLMServingSim 2.0's bench examples::

    BENCH_DIR/vllm/requests.jsonl   one record per request: lengths and engine timestamps
    BENCH_DIR/vllm/meta.json        engine settings: max_num_seqs, max_num_batched_tokens, KV blocks, ...

or with the two files directly in ``BENCH_DIR`` (LLMServingSim's ``bench/results`` layout).

The replay takes what the real engine had: its scheduler is the vLLM V1-like one with the run's knobs
(including ``scheduler_reserve_full_isl``), its arrivals are the engine's own queueing times, and its KV
capacity is the engine's GPU block count:

* recorded (``meta.json`` ``kv_cache.num_gpu_blocks``), when the engine logged it;
* else **estimated** from the hardware model as vLLM sizes its cache
  (:func:`gpusched.vllm_memory.estimate_vllm_kv_blocks`): device memory x ``gpu_memory_utilization``
  minus weights, the profiling pass's activation peak and non-torch memory. The device memory is the
  recorded one (``hardware.device_total_memory_bytes``), else that of the GPU named by the caller, by
  ``hardware.device_name`` or by the profile's ``meta.yaml`` (:attr:`Replay.kv_source` says which).

Steps are priced by the profile's step-time model (:class:`~gpusched.perf.ProfiledStepTime`), with the
decode-skew correction the profile measured when its ``meta.yaml`` enables one (LLMServingSim's RTX PRO 6000
profile does, its RTX 4090 profile does not); :attr:`Replay.step_model_source` says which. On the RTX PRO
6000 run the correction moves the mean error over the table from 5.33 % to 1.32 %.

Settings the meta does not record take vLLM 0.19's defaults, listed in :attr:`EngineSettings.assumed`:
``gpu_memory_utilization`` 0.9, block size 16, prefix caching and chunked prefill on,
``scheduler_reserve_full_isl`` on (the RTX 4090 run's resolved config shows it on without being asked).

With prefix caching on, every full block is content-hashed as vLLM does, so a preempted request resumes
from the blocks still cached instead of recomputing everything: on the RTX 4090 run this alone moves
the mean error over the table from 5.3 % to 1.7 %. Measured latencies follow the definitions of the data's
README: ``TTFT = first_token - queued``, ``TPOT = (last_token - first_token) / (output - 1)``,
``latency = last_token - queued``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, GpuschedError, ProfileError, TraceError
from gpusched.perf import ProfiledStepTime
from gpusched.vllm_memory import VllmMemoryEstimate, estimate_vllm_kv_blocks
from gpusched.workload import load_trace
from simulators.serving.run import InstanceConfig, simulate
from simulators.serving.schedulers import VllmV1Scheduler

STATS = ("mean", "p50", "p90", "p95", "p99")
METRICS = ("ttft", "tpot", "latency")
KNOBS = ("max_num_batched_tokens", "max_num_seqs", "enable_chunked_prefill", "enable_prefix_caching",
         "long_prefill_token_threshold", "reserve_full_prompt")
# vLLM 0.19's defaults for what a meta.json may leave out, and where each is read from
_DEFAULTS = {"gpu_memory_utilization": 0.9, "block_size": 16, "enable_prefix_caching": True,
             "enable_chunked_prefill": True, "long_prefill_token_threshold": 0, "reserve_full_prompt": True}


@dataclass(frozen=True)
class EngineSettings:
    """The measured engine's settings the replay copies (read by :func:`read_engine_settings`).

    ``num_gpu_blocks`` is None when the meta does not record it; ``assumed`` names every setting that
    took vLLM's default because the meta did not say; ``vllm_version`` and ``device_*`` as recorded.
    """

    model: str
    tp: int
    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    gpu_memory_utilization: float
    enable_prefix_caching: bool
    enable_chunked_prefill: bool
    long_prefill_token_threshold: int
    reserve_full_prompt: bool
    num_gpu_blocks: int | None = None
    vllm_version: str | None = None
    device_name: str | None = None
    device_total_memory_bytes: int | None = None
    assumed: tuple[str, ...] = field(default=())

    def scheduler_knobs(self) -> dict:
        return {k: getattr(self, k) for k in KNOBS}


@dataclass
class Replay:
    """What :func:`replay_run` returns.

    table : measured vs simulated statistics (columns ``metric, stat, measured, simulated, error_pct``;
        seconds). result : the simulation's :class:`~simulators.serving.results.SimResult`.
    settings : the engine settings used. num_gpu_blocks : the KV capacity simulated.
    kv_source : one sentence: recorded, given, or how it was estimated. estimate : the estimate's terms
        (None unless estimated). step_model_source : one sentence: the decode-skew correction applied, if any.
    """

    table: pd.DataFrame
    result: object
    settings: EngineSettings
    num_gpu_blocks: int
    kv_source: str
    estimate: VllmMemoryEstimate | None = None
    step_model_source: str = ""

    @property
    def mean_abs_error_pct(self) -> float:
        return float(self.table["error_pct"].abs().mean())


def read_engine_settings(bench_dir: str | Path) -> EngineSettings:
    """The knobs of the measured engine that the replay must copy, from ``vllm/meta.json``."""
    path = run_file(bench_dir, "meta.json")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TraceError(f"{path}: not valid JSON ({err}); a measured run's meta.json is a JSON object") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{path}: the top level is a {type(meta).__name__}, not a JSON object")
    engine = meta.get("engine_kwargs") or {}
    kv = meta.get("kv_cache") or {}
    resolved = meta.get("resolved_config") or {}
    cache = resolved.get("cache_config") or {}
    sched = resolved.get("scheduler_config") or {}
    hardware = meta.get("hardware") or {}
    assumed: list[str] = []

    def pick(name: str, *sources: tuple[dict, str], cast=lambda v: v):
        for source, key in sources:
            if source.get(key) is not None:
                try:
                    return cast(source[key])
                except (TypeError, ValueError):
                    raise TraceError(f"{path}: {key}={source[key]!r} is not a valid {name}") from None
        assumed.append(f"{name}={_DEFAULTS[name]}")
        return _DEFAULTS[name]

    def need(key: str, cast=int):
        value = engine.get(key, sched.get(key))
        if value is None:
            raise TraceError(f"{path}: engine_kwargs has no {key!r}; the replay needs the engine's {key}")
        try:
            return cast(value)
        except (TypeError, ValueError):
            raise TraceError(f"{path}: {key}={value!r} is not a valid {cast.__name__}") from None

    model = engine.get("model") or meta.get("model")
    if not model:
        raise TraceError(f"{path}: no model in engine_kwargs or at the top level")
    blocks = kv.get("num_gpu_blocks", cache.get("num_gpu_blocks"))
    total = hardware.get("device_total_memory_bytes")
    return EngineSettings(
        model=str(model), tp=int(engine.get("tensor_parallel_size", 1) or 1),
        max_num_seqs=need("max_num_seqs"), max_num_batched_tokens=need("max_num_batched_tokens"),
        block_size=pick("block_size", (kv, "block_size"), (cache, "block_size"), cast=int),
        gpu_memory_utilization=pick("gpu_memory_utilization", (kv, "gpu_memory_utilization"),
                                    (cache, "gpu_memory_utilization"), (engine, "gpu_memory_utilization"),
                                    cast=float),
        enable_prefix_caching=pick("enable_prefix_caching", (kv, "enable_prefix_caching"),
                                   (cache, "enable_prefix_caching"), (engine, "enable_prefix_caching"), cast=bool),
        enable_chunked_prefill=pick("enable_chunked_prefill", (sched, "enable_chunked_prefill"),
                                    (engine, "enable_chunked_prefill"), cast=bool),
        long_prefill_token_threshold=pick("long_prefill_token_threshold", (sched, "long_prefill_token_threshold"),
                                          cast=int),
        reserve_full_prompt=pick("reserve_full_prompt", (sched, "scheduler_reserve_full_isl"), cast=bool),
        num_gpu_blocks=None if blocks is None else int(blocks),
        vllm_version=meta.get("vllm_version"), device_name=hardware.get("device_name"),
        device_total_memory_bytes=None if total is None else int(total), assumed=tuple(assumed))


def run_file(bench_dir: str | Path, name: str) -> Path:
    """``BENCH_DIR/vllm/<name>`` or ``BENCH_DIR/<name>``, whichever exists."""
    for path in (Path(bench_dir) / "vllm" / name, Path(bench_dir) / name):
        if path.is_file():
            return path
    raise TraceError(f"{bench_dir}: no vllm/{name} (nor {name}); a measured run needs meta.json and "
                     f"requests.jsonl, in BENCH_DIR/vllm/ or BENCH_DIR/")


def estimate_gpu_blocks(settings: EngineSettings, profile_dir: str | Path | None = None,
                        gpu: str | None = None) -> tuple[VllmMemoryEstimate, str]:
    """The estimated block count of the measured engine and a sentence saying where the device memory
    came from: recorded bytes, else ``gpu`` (the caller's), the meta's device name, the profile's GPU."""
    from gpusched.hardware import get_gpu

    total, where = settings.device_total_memory_bytes, "recorded in meta.json"
    if total is None:
        names = [(gpu, "given"), (settings.device_name, "meta.json's device_name"),
                 (_profile_gpu(profile_dir), "the profile's meta.yaml")]
        name, origin = next(((n, o) for n, o in names if n), (None, None))
        if name is None:
            raise ConfigError("the measured run records neither its KV block count nor its GPU, and the profile "
                              "does not name one: pass the GPU it ran on (--gpu, e.g. --gpu RTX-4090) or the block "
                              "count (--kv-blocks)")
        spec = get_gpu(name)
        if spec.runtime_memory_bytes is not None:
            total, where = spec.runtime_memory_bytes, f"{spec.name} ({origin}), as the CUDA runtime reports it"
        else:
            total, where = spec.memory_bytes, (f"{spec.name} ({origin}), datasheet figure: the CUDA runtime reports "
                                               f"a little less, so the estimate is slightly high")
    estimate = estimate_vllm_kv_blocks(settings.model, total, settings.gpu_memory_utilization,
                                       settings.max_num_batched_tokens, settings.max_num_seqs, settings.block_size,
                                       settings.tp, vllm_version=settings.vllm_version)
    return estimate, f"device memory of {where}"


def _profile_gpu(profile_dir) -> str | None:
    """The ``gpu:`` line of an LLMServingSim profile's meta.yaml, if any."""
    if profile_dir is None:
        return None
    for meta in (Path(profile_dir) / "meta.yaml", Path(profile_dir).parent / "meta.yaml"):
        if meta.is_file():
            found = re.search(r"^gpu:\s*(.+?)\s*$", meta.read_text(errors="replace"), re.MULTILINE)
            if found:
                return found.group(1).strip("'\"")
    return None


def latency_stats(ttft_s, tpot_s, latency_s) -> dict[tuple[str, str], float]:
    """Mean and percentiles of each latency (seconds), keyed by (metric, stat)."""
    out = {}
    for metric, values in zip(METRICS, (ttft_s, tpot_s, latency_s)):
        v = np.asarray(values, dtype=float)
        v = v[~np.isnan(v)]
        if v.size == 0:
            raise TraceError(f"no finished request has a {metric}; nothing to compare")
        out[(metric, "mean")] = float(v.mean())
        for stat in STATS[1:]:
            out[(metric, stat)] = float(np.percentile(v, int(stat[1:])))
    return out


def replay_run(bench_dir: str | Path, profile_dir: str | Path, num_gpu_blocks: int | None = None,
               gpu: str | None = None, skew_correction: bool = True, **scheduler_overrides) -> Replay:
    """Replay the measured run in ``bench_dir`` with the step-time model of ``profile_dir``.

    ``num_gpu_blocks`` overrides the KV capacity; otherwise the recorded count is used, or an estimate
    (see the module docstring; ``gpu`` names the device when the run does not). ``skew_correction=False``
    prices decode attention at the mean context even when the profile measured a skew correction.
    ``scheduler_overrides`` replace knobs of the recorded scheduler.
    """
    settings = read_engine_settings(bench_dir)
    requests_path = run_file(bench_dir, "requests.jsonl")
    trace = load_trace(requests_path)
    df = trace.df
    for col in ("measured_first_token_s", "measured_last_token_s"):
        if col not in df:
            raise TraceError(f"{requests_path}: no {col!r}; is this a vLLM benchmark requests.jsonl?")
    try:
        step_model = ProfiledStepTime.from_profile_dir(profile_dir, model=settings.model, tp=settings.tp,
                                                       skew_correction=skew_correction)
    except GpuschedError as err:
        raise ProfileError(f"{err} (the measured run used {settings.model} at TP{settings.tp})") from None
    estimate = None
    if num_gpu_blocks is not None:
        if isinstance(num_gpu_blocks, bool) or not isinstance(num_gpu_blocks, int) or num_gpu_blocks < 1:
            raise ConfigError(f"num_gpu_blocks={num_gpu_blocks!r}: give a positive number of KV blocks")
        blocks, source = num_gpu_blocks, f"{num_gpu_blocks:,} KV blocks, as given"
    elif settings.num_gpu_blocks is not None:
        blocks, source = settings.num_gpu_blocks, f"{settings.num_gpu_blocks:,} KV blocks, recorded by the engine"
    else:
        estimate, where = estimate_gpu_blocks(settings, profile_dir, gpu)
        blocks = estimate.num_gpu_blocks
        source = f"not recorded by the engine; {estimate.describe()}; {where}"
    if settings.assumed:
        source += "; meta.json does not record, so vLLM's defaults were assumed: " + ", ".join(settings.assumed)
    knobs = {**settings.scheduler_knobs(), **scheduler_overrides}
    instance = InstanceConfig(step_model, blocks, settings.block_size, scheduler=VllmV1Scheduler(**knobs))
    result = simulate(trace, [instance])

    queued = df["arrival_time_s"].to_numpy()
    first, last = df["measured_first_token_s"].to_numpy(), df["measured_last_token_s"].to_numpy()
    out_tokens = df["output_tokens"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        measured_tpot = np.where(out_tokens > 1, (last - first) / (out_tokens - 1), np.nan)
    measured = latency_stats(first - queued, measured_tpot, last - queued)
    sim = result.requests
    simulated = latency_stats(sim["ttft_s"], sim["tpot_s"], sim["e2e_s"])
    table = pd.DataFrame(
        [(m, s, measured[(m, s)], simulated[(m, s)]) for m in METRICS for s in STATS],
        columns=["metric", "stat", "measured", "simulated"])
    table["error_pct"] = 100.0 * (table["simulated"] - table["measured"]) / table["measured"]
    return Replay(table, result, settings, blocks, source, estimate, _skew_source(step_model, skew_correction))


def _skew_source(step_model: ProfiledStepTime, asked: bool) -> str:
    """One sentence on the decode-skew correction of the replay's step model."""
    fit = step_model.skew
    if fit is not None:
        return (f"decode attention with the profile's measured skew correction ({len(fit.alphas):,} buckets from "
                f"{fit.source}; alpha {fit.alpha_default} outside them)")
    if not asked:
        return "decode attention at the mean context (skew correction switched off)"
    return "decode attention at the mean context (the profile enables no skew correction in its meta.yaml)"


def replay(bench_dir: str | Path, profile_dir: str | Path, **scheduler_overrides):
    """``(table, result)`` of :func:`replay_run` (kept for callers of the two-value form)."""
    run = replay_run(bench_dir, profile_dir, **scheduler_overrides)
    return run.table, run.result
