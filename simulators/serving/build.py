"""Assemble simulated instances from the core catalogues: model + GPU/profile + TP -> InstanceConfig."""
from __future__ import annotations

from pathlib import Path

from gpusched.errors import ConfigError
from gpusched.hardware import get_gpu
from gpusched.kvcache import kv_capacity
from gpusched.llm import get_model
from gpusched.paths import BUNDLED_PROFILES
from gpusched.perf import ProfiledStepTime, RooflineStepTime
from simulators.serving.run import InstanceConfig

# The GPU each bundled profile was measured on (its KV capacity comes from this GPU's memory).
PROFILE_GPU = {"h100": "H100-80GB", "rtx4090": "RTX-4090", "rtxpro6000": "RTX-PRO-6000"}


def step_model_for(model: str, tp: int = 1, profile: str | Path | None = None, gpu: str | None = None):
    """A profiled step-time model if ``profile`` is given, else the roofline model of ``gpu``."""
    if profile is not None:
        return ProfiledStepTime.from_profile_dir(profile, model=model, tp=tp)
    if gpu is None:
        raise ConfigError("give a measured profile (--profile) or a GPU kind for the roofline model (--gpu)")
    return RooflineStepTime(model, gpu, tp=tp)


def gpu_for(profile: str | Path | None, gpu: str | None) -> str:
    """The GPU kind whose memory sets KV capacity: the explicit one, else the bundled profile's."""
    if gpu is not None:
        return get_gpu(gpu).name
    key = str(profile).lower() if profile is not None else None
    if key in PROFILE_GPU:
        return PROFILE_GPU[key]
    raise ConfigError(
        f"cannot tell which GPU profile {str(profile)!r} was measured on; pass --gpu "
        f"(bundled profiles: {', '.join(sorted(BUNDLED_PROFILES))})")


def build_instances(model: str, count: int = 1, tp: int = 1, profile=None, gpu=None,
                    scheduler: str = "vllm-v1", scheduler_knobs: dict | None = None, role: str = "colocated",
                    memory_utilization: float = 0.9, kv_blocks: int | None = None,
                    block_size_tokens: int = 16, step_model=None) -> list[InstanceConfig]:
    """``count`` identical instances of ``model`` at TP ``tp``.

    KV capacity is ``kv_blocks`` if given (e.g. an engine's measured block count), else
    :func:`gpusched.kvcache.kv_capacity` of the GPU at ``memory_utilization``. ``step_model``: a step-time
    model already built for this model, GPU/profile and TP (else built by :func:`step_model_for`).
    """
    if count < 1:
        raise ConfigError(f"instance count {count} must be >= 1")
    step = step_model if step_model is not None else step_model_for(model, tp, profile, gpu)
    gpu_spec = get_gpu(gpu_for(profile, gpu)) if (gpu is not None or kv_blocks is None) else None
    if kv_blocks is None:
        kv_blocks = kv_capacity(model, gpu_spec, tp=tp, memory_utilization=memory_utilization,
                                block_size_tokens=block_size_tokens).blocks
    host_link = tp * gpu_spec.pcie_bandwidth_bytes_per_s if gpu_spec is not None else 0.0  # one link per GPU
    return [InstanceConfig(step, kv_blocks, block_size_tokens, scheduler, dict(scheduler_knobs or {}), role,
                           kv_bytes_per_token=get_model(model).kv_bytes_per_token(),
                           host_link_bytes_per_s=host_link)
            for _ in range(count)]
