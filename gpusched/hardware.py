"""GPU and link catalogue: what one accelerator offers a serving engine.

Every :class:`GpuSpec` carries

* ``memory_bytes`` -- on-board memory as the vendor datasheet states it, with the datasheet's "GB" read as
  10**9 bytes (SI). Real devices report slightly different totals (an "80 GB" HBM3 H100 shows
  81,559 MiB = 85.5e9 B in ``nvidia-smi``; GDDR parts lose a little to ECC), so the figure here is a
  conservative, reproducible capacity; :mod:`gpusched.kvcache` applies its own utilisation fraction on top.
* ``hbm_bandwidth_bytes_per_s`` -- peak device-memory bandwidth (HBM or GDDR), bytes/s, datasheet value.
* ``dense_bf16_flops_per_s`` -- peak *dense* tensor-core bf16 FLOP/s (no 2:4 structured sparsity; NVIDIA
  datasheets often print the sparse figure, which is twice this). Parts without bf16 (V100, T4) carry their
  fp16 tensor-core figure instead, and say so in ``source``. GeForce/RTX parts carry the rate with fp32
  accumulation (what bf16 always uses), which on GeForce is half the fp16-accumulate rate.
* ``nvlink_bandwidth_bytes_per_s`` -- the vendor's per-GPU *total* NVLink bandwidth (both directions
  summed, as NVIDIA quotes it: 600 GB/s on A100, 900 GB/s on H100); ``None`` where the part has no NVLink.
* ``pcie_bandwidth_bytes_per_s`` -- host link, *one direction*: half the bidirectional figure NVIDIA
  prints (PCIe Gen3 x16 16e9, Gen4 x16 32e9, Gen5 x16 64e9 B/s).
* ``source`` -- the datasheet or whitepaper the numbers come from.
* ``runtime_memory_bytes`` -- the total the CUDA runtime reports (``cudaMemGetInfo``, what
  ``torch.cuda.mem_get_info`` and vLLM's ``gpu_memory_utilization`` start from), where a public record
  exists, else ``None``. It is below the datasheet figure (driver and ECC reservations): an RTX 4090
  reports 25,250,627,584 B. :mod:`gpusched.vllm_memory` uses it to estimate a vLLM engine's KV blocks.

Lookup is by canonical name (:func:`list_gpus`) or by an alias, case- and punctuation-insensitive:
``get_gpu("h100")``, ``get_gpu("NVIDIA H100 80GB HBM3")``, ``get_gpu("a100-80g")``, ``get_gpu("RTX4090")``.
A bare ``a100`` means the **80 GB** part (``A100-80GB``), as in Vidur and most serving papers; the
40 GB part is ``a100-40gb`` (the Helix (ASPLOS'25) profiles' ``A100`` machine type is the 40 GB part;
Helix's code reads its own per-machine tables and does not look GPUs up here). ``V100`` (16 GB), ``L4``
and ``T4`` resolve to single GPUs. Helix's ``L4x2``/``T4x2``/``T4x4`` are *multi-GPU nodes*, not GPU
kinds, and are deliberately not aliases: build them as clusters in :mod:`gpusched.cluster`.

:class:`LinkSpec` describes a network link between instances (bandwidth in bytes/s, latency in s).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gpusched.errors import ConfigError, UnknownNameError

__all__ = ["GpuSpec", "LinkSpec", "GPUS", "get_gpu", "list_gpus"]

# PCIe x16, one direction, bytes/s (datasheets print the bidirectional total, twice these).
_PCIE_GEN3 = 16e9
_PCIE_GEN4 = 32e9
_PCIE_GEN5 = 64e9


def _check_positive(owner: str, field: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{owner}: {field} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU kind (a single device, not a node).

    Attributes:
        name: canonical short name, e.g. ``"H100-80GB"``.
        memory_bytes: device memory, bytes (datasheet GB x 10**9).
        hbm_bandwidth_bytes_per_s: peak device-memory bandwidth, bytes/s.
        dense_bf16_flops_per_s: peak dense tensor-core bf16 FLOP/s (fp16 where the part has no bf16).
        nvlink_bandwidth_bytes_per_s: per-GPU total NVLink bandwidth, bytes/s (both directions), or None.
        pcie_bandwidth_bytes_per_s: host PCIe bandwidth in one direction, bytes/s.
        source: the vendor datasheet/whitepaper the numbers come from.
        runtime_memory_bytes: device memory as the CUDA runtime reports it, bytes, or None when no
            public record is known (see the module docstring).
    """

    name: str
    memory_bytes: int
    hbm_bandwidth_bytes_per_s: float
    dense_bf16_flops_per_s: float
    nvlink_bandwidth_bytes_per_s: float | None
    pcie_bandwidth_bytes_per_s: float
    source: str
    runtime_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"GpuSpec: name must be a non-empty string, got {self.name!r}")
        owner = f"GpuSpec {self.name!r}"
        if isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, int) or self.memory_bytes <= 0:
            raise ConfigError(f"{owner}: memory_bytes must be an int > 0, got {self.memory_bytes!r}")
        _check_positive(owner, "hbm_bandwidth_bytes_per_s", self.hbm_bandwidth_bytes_per_s)
        _check_positive(owner, "dense_bf16_flops_per_s", self.dense_bf16_flops_per_s)
        if self.nvlink_bandwidth_bytes_per_s is not None:
            _check_positive(owner, "nvlink_bandwidth_bytes_per_s", self.nvlink_bandwidth_bytes_per_s)
        _check_positive(owner, "pcie_bandwidth_bytes_per_s", self.pcie_bandwidth_bytes_per_s)
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(f"{owner}: source must name the datasheet the numbers come from")
        rt = self.runtime_memory_bytes
        if rt is not None and (isinstance(rt, bool) or not isinstance(rt, int)
                               or not 0 < rt <= 1.1 * self.memory_bytes):
            raise ConfigError(f"{owner}: runtime_memory_bytes must be None or an int in (0, 1.1 x memory_bytes], "
                              f"got {rt!r}")

    @property
    def ridge_flops_per_byte(self) -> float:
        """Roofline ridge point, FLOP per byte of memory traffic: dense bf16 FLOP/s / memory bytes/s."""
        return self.dense_bf16_flops_per_s / self.hbm_bandwidth_bytes_per_s


@dataclass(frozen=True)
class LinkSpec:
    """A network link: ``bandwidth_bytes_per_s`` (> 0) and one-way ``latency_s`` (>= 0)."""

    bandwidth_bytes_per_s: float
    latency_s: float

    def __post_init__(self) -> None:
        _check_positive("LinkSpec", "bandwidth_bytes_per_s", self.bandwidth_bytes_per_s)
        lat = self.latency_s
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not math.isfinite(lat) or lat < 0:
            raise ConfigError(f"LinkSpec: latency_s must be a finite number >= 0, got {lat!r}")

    def transfer_time_s(self, num_bytes: float) -> float:
        """Seconds to move ``num_bytes`` over the link: ``latency_s + num_bytes / bandwidth_bytes_per_s``."""
        if num_bytes < 0:
            raise ConfigError(f"LinkSpec.transfer_time_s: num_bytes must be >= 0, got {num_bytes!r}")
        return self.latency_s + num_bytes / self.bandwidth_bytes_per_s


_GB = 10**9

# (spec, aliases). Aliases are matched after normalisation (lowercase, non-alphanumerics removed), so
# "H100-SXM", "h100 sxm" and "H100_SXM" are one alias. Include the nvidia-smi product names.
_CATALOGUE: list[tuple[GpuSpec, tuple[str, ...]]] = [
    (
        GpuSpec(
            name="A100-40GB",
            memory_bytes=40 * _GB,
            hbm_bandwidth_bytes_per_s=1555e9,
            dense_bf16_flops_per_s=312e12,
            nvlink_bandwidth_bytes_per_s=600e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN4,
            source="NVIDIA A100 Tensor Core GPU datasheet (A100 40GB SXM: 40 GB HBM2, 1,555 GB/s, "
            "BF16 312 TFLOPS dense / 624 sparse, NVLink 600 GB/s, PCIe Gen4 64 GB/s bidirectional)",
        ),
        ("A100-40G", "A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB", "A100-SXM-40GB", "A100 40GB"),
    ),
    (
        GpuSpec(
            name="A100-80GB",
            memory_bytes=80 * _GB,
            hbm_bandwidth_bytes_per_s=2039e9,
            dense_bf16_flops_per_s=312e12,
            nvlink_bandwidth_bytes_per_s=600e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN4,
            source="NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM: 80 GB HBM2e, 2,039 GB/s, "
            "BF16 312 TFLOPS dense / 624 sparse, NVLink 600 GB/s, PCIe Gen4 64 GB/s bidirectional)",
        ),
        ("A100", "A100-80G", "A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", "A100-SXM-80GB", "A100 80GB"),
    ),
    (
        GpuSpec(
            name="H100-80GB",
            memory_bytes=80 * _GB,
            hbm_bandwidth_bytes_per_s=3.35e12,
            dense_bf16_flops_per_s=989.4e12,
            nvlink_bandwidth_bytes_per_s=900e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN5,
            source="NVIDIA H100 Tensor Core GPU datasheet (H100 SXM: 80 GB HBM3, 3.35 TB/s, "
            "BF16 1,979 TFLOPS with sparsity -> 989.4 dense, NVLink 900 GB/s, PCIe Gen5 128 GB/s bidirectional)",
        ),
        ("H100", "H100-SXM", "H100-SXM5", "H100-SXM-80GB", "H100-SXM5-80GB", "H100-80G",
         "NVIDIA H100 80GB HBM3", "H100 80GB HBM3"),
    ),
    (
        GpuSpec(
            name="H100-PCIe",
            memory_bytes=80 * _GB,
            hbm_bandwidth_bytes_per_s=2.0e12,
            dense_bf16_flops_per_s=756e12,
            nvlink_bandwidth_bytes_per_s=600e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN5,
            source="NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe: 80 GB HBM2e, 2 TB/s, "
            "BF16 1,513 TFLOPS with sparsity -> 756 dense, NVLink bridge 600 GB/s, PCIe Gen5 128 GB/s bidirectional)",
        ),
        ("H100-PCIe-80GB", "NVIDIA H100 PCIe"),
    ),
    (
        GpuSpec(
            name="H200",
            memory_bytes=141 * _GB,
            hbm_bandwidth_bytes_per_s=4.8e12,
            dense_bf16_flops_per_s=989.4e12,
            nvlink_bandwidth_bytes_per_s=900e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN5,
            source="NVIDIA H200 Tensor Core GPU datasheet (H200 SXM: 141 GB HBM3e, 4.8 TB/s, "
            "BF16 1,979 TFLOPS with sparsity -> 989.4 dense, NVLink 900 GB/s, PCIe Gen5 128 GB/s bidirectional)",
        ),
        ("H200-SXM", "H200-141GB", "H200-SXM-141GB", "NVIDIA H200"),
    ),
    (
        GpuSpec(
            name="L4",
            memory_bytes=24 * _GB,
            hbm_bandwidth_bytes_per_s=300e9,
            dense_bf16_flops_per_s=121e12,
            nvlink_bandwidth_bytes_per_s=None,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN4,
            source="NVIDIA L4 Tensor Core GPU datasheet (24 GB GDDR6, 300 GB/s, BF16 242 TFLOPS with "
            "sparsity -> 121 dense, no NVLink, PCIe Gen4 x16 64 GB/s bidirectional)",
        ),
        ("L4-24G", "L4-24GB", "NVIDIA L4"),
    ),
    (
        GpuSpec(
            name="T4",
            memory_bytes=16 * _GB,
            hbm_bandwidth_bytes_per_s=320e9,
            dense_bf16_flops_per_s=65e12,
            nvlink_bandwidth_bytes_per_s=None,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN3,
            source="NVIDIA T4 Tensor Core GPU datasheet (16 GB GDDR6, 320 GB/s, no bf16: FP16 mixed-precision "
            "tensor 65 TFLOPS used instead, no NVLink, PCIe Gen3 x16 32 GB/s bidirectional)",
        ),
        ("T4-16G", "T4-16GB", "Tesla T4"),
    ),
    (
        GpuSpec(
            name="A10G",
            memory_bytes=24 * _GB,
            hbm_bandwidth_bytes_per_s=600e9,
            dense_bf16_flops_per_s=125e12,
            nvlink_bandwidth_bytes_per_s=None,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN4,
            source="NVIDIA A10 Tensor Core GPU datasheet (24 GB GDDR6, 600 GB/s, BF16 125 TFLOPS dense / 250 "
            "sparse, PCIe Gen4 64 GB/s bidirectional). A10G is AWS's (EC2 G5) variant with no public NVIDIA "
            "datasheet; its real tensor throughput is reported lower (~70 TFLOPS), so treat FLOP/s as an upper bound",
        ),
        ("NVIDIA A10G", "A10G-24GB", "A10"),
    ),
    (
        GpuSpec(
            name="V100-16GB",
            memory_bytes=16 * _GB,
            hbm_bandwidth_bytes_per_s=900e9,
            dense_bf16_flops_per_s=125e12,
            nvlink_bandwidth_bytes_per_s=300e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN3,
            source="NVIDIA Tesla V100 datasheet (V100 SXM2 16 GB HBM2, 900 GB/s, no bf16: FP16 tensor 125 "
            "TFLOPS used instead, NVLink 300 GB/s, PCIe Gen3 32 GB/s bidirectional)",
        ),
        ("V100", "V100-16G", "V100-SXM2-16GB", "Tesla V100-SXM2-16GB", "V100-SXM2"),
    ),
    (
        GpuSpec(
            name="V100-32GB",
            memory_bytes=32 * _GB,
            hbm_bandwidth_bytes_per_s=900e9,
            dense_bf16_flops_per_s=125e12,
            nvlink_bandwidth_bytes_per_s=300e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN3,
            source="NVIDIA Tesla V100 datasheet (V100 SXM2 32 GB HBM2, 900 GB/s, no bf16: FP16 tensor 125 "
            "TFLOPS used instead, NVLink 300 GB/s, PCIe Gen3 32 GB/s bidirectional)",
        ),
        ("V100-32G", "V100-SXM2-32GB", "Tesla V100-SXM2-32GB"),
    ),
    (
        GpuSpec(
            name="RTX-4090",
            memory_bytes=24 * _GB,
            hbm_bandwidth_bytes_per_s=1008e9,
            dense_bf16_flops_per_s=165.2e12,
            nvlink_bandwidth_bytes_per_s=None,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN4,
            source="NVIDIA Ada Lovelace GPU Architecture whitepaper v2.1, GeForce RTX 4090 (24 GB GDDR6X, "
            "1,008 GB/s, BF16 tensor with FP32 accumulate 165.2 TFLOPS dense / 330.4 sparse, no NVLink, PCIe Gen4); "
            "runtime memory: device_total_memory_bytes in LLMServingSim 2.0's RTX 4090 vLLM run (meta.json)",
            runtime_memory_bytes=25_250_627_584,
        ),
        ("RTX4090", "GeForce RTX 4090", "NVIDIA GeForce RTX 4090", "4090"),
    ),
    (
        GpuSpec(
            name="RTX-PRO-6000",
            memory_bytes=96 * _GB,
            hbm_bandwidth_bytes_per_s=1792e9,
            dense_bf16_flops_per_s=503.8e12,
            nvlink_bandwidth_bytes_per_s=None,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN5,
            source="NVIDIA RTX PRO 6000 Blackwell Workstation Edition datasheet / RTX Blackwell GPU architecture "
            "whitepaper (96 GB GDDR7 ECC, 1,792 GB/s, FP16/BF16 tensor with FP32 accumulate ~503.8 TFLOPS dense, "
            "no NVLink, PCIe Gen5 x16 128 GB/s bidirectional); runtime memory: 97,886 MiB, the CUDA total "
            "llama.cpp logs for an RTX PRO 6000 Blackwell Workstation Edition (ggml-org/llama.cpp issue #22319)",
            runtime_memory_bytes=97_886 * 2**20,
        ),
        ("RTXPRO6000", "RTX PRO 6000 Blackwell", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
         "NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX-PRO-6000-96GB", "PRO6000"),
    ),
    (
        GpuSpec(
            name="L40S",
            memory_bytes=48 * _GB,
            hbm_bandwidth_bytes_per_s=864e9,
            dense_bf16_flops_per_s=362.05e12,
            nvlink_bandwidth_bytes_per_s=None,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN4,
            source="NVIDIA L40S GPU datasheet (48 GB GDDR6 ECC, 864 GB/s, BF16 362.05 TFLOPS dense / 733 sparse, "
            "no NVLink, PCIe Gen4 x16 64 GB/s bidirectional)",
        ),
        ("NVIDIA L40S", "L40S-48GB"),
    ),
    (
        GpuSpec(
            name="A6000",
            memory_bytes=48 * _GB,
            hbm_bandwidth_bytes_per_s=768e9,
            dense_bf16_flops_per_s=154.8e12,
            nvlink_bandwidth_bytes_per_s=112.5e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN4,
            source="NVIDIA RTX A6000 datasheet and Ampere GA102 whitepaper (48 GB GDDR6, 768 GB/s, tensor 309.7 "
            "TFLOPS sparse -> 154.8 dense FP16/BF16, NVLink bridge 112.5 GB/s bidirectional, PCIe Gen4)",
        ),
        ("RTX A6000", "RTX-A6000", "NVIDIA RTX A6000"),
    ),
    (
        GpuSpec(
            name="RTX-3090",
            memory_bytes=24 * _GB,
            hbm_bandwidth_bytes_per_s=936e9,
            dense_bf16_flops_per_s=71e12,
            nvlink_bandwidth_bytes_per_s=112.5e9,
            pcie_bandwidth_bytes_per_s=_PCIE_GEN4,
            source="NVIDIA Ampere GA102 GPU Architecture whitepaper, GeForce RTX 3090 (24 GB GDDR6X, 936 GB/s, "
            "BF16 tensor with FP32 accumulate 71 TFLOPS dense / 142 sparse, NVLink bridge 112.5 GB/s, PCIe Gen4)",
        ),
        ("RTX3090", "GeForce RTX 3090", "NVIDIA GeForce RTX 3090", "3090"),
    ),
]

GPUS: dict[str, GpuSpec] = {spec.name: spec for spec, _ in _CATALOGUE}
"""Canonical name -> :class:`GpuSpec`."""


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# Vendor words dropped when an exact alias does not match ("NVIDIA GeForce RTX 4090" -> "rtx4090").
_VENDOR_PREFIXES = ("nvidia", "geforce", "tesla", "quadro")


def _build_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for spec, extra in _CATALOGUE:
        for alias in (spec.name, *extra):
            key = _normalise(alias)
            if key in aliases and aliases[key] != spec.name:
                raise AssertionError(f"GPU alias {alias!r} maps to both {aliases[key]} and {spec.name}")
            aliases[key] = spec.name
    return aliases


_ALIASES: dict[str, str] = _build_aliases()


def list_gpus() -> list[str]:
    """Canonical GPU names, in catalogue order."""
    return list(GPUS)


def get_gpu(name: str) -> GpuSpec:
    """The :class:`GpuSpec` for ``name`` (canonical name or alias; case and punctuation are ignored).

    Raises:
        UnknownNameError: ``name`` is not in the catalogue; the message lists the valid names.
    """
    if isinstance(name, GpuSpec):
        return name
    if not isinstance(name, str):
        raise UnknownNameError(f"GPU name must be a string, got {name!r}; valid names: {', '.join(GPUS)}")
    key = _normalise(name)
    if key in _ALIASES:
        return GPUS[_ALIASES[key]]
    stripped = key
    changed = True
    while changed:
        changed = False
        for prefix in _VENDOR_PREFIXES:
            if stripped.startswith(prefix):
                stripped = stripped[len(prefix):]
                changed = True
    if stripped in _ALIASES:
        return GPUS[_ALIASES[stripped]]
    raise UnknownNameError(
        f"unknown GPU {name!r}; valid names: {', '.join(GPUS)} (aliases such as 'h100', 'a100-80g', "
        f"'RTX4090' are accepted; add a GpuSpec to gpusched.hardware for a new part)"
    )
