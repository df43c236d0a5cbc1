"""The paper's hardware and one model the core catalogues lack (spec §3), as core objects.

* :data:`H20`: NVIDIA H20 (96 GB HBM3, 4.0 TB/s, 148 TFLOP/s dense BF16, NVLink 900 GB/s) [D]. The testbed is
  4 servers of 8 H20 [P].
* :data:`QWEN3_32B`: Qwen3-32B's shape from its Hugging Face ``config.json`` [D] (64 layers, hidden 5120,
  64 query heads of 128 -- wider than the hidden size --, 8 KV heads, FFN 25600, vocabulary 151936, untied):
  256 KiB of KV per token and about 65.5 GB of BF16 weights (spec §3.2: 65.6).
* Llama-3.1-70B is ``gpusched.llm.get_model("llama3.1-70b")``. Mixtral-8x7B (MoE) is not modelled: the step
  models have no expert-parallel cost (spec pitfall 14).
* :data:`NVLINK_H20` (inside a server: one direction of 900 GB/s, α_net = 1 ms as the spec's default) and
  :data:`~formulations.ampd.perf.AMPD_NETWORK_LINK` (across servers, 25 GB/s).

These belong in :mod:`gpusched.hardware` and :mod:`gpusched.llm` once other papers need them.
"""
from __future__ import annotations

from gpusched.hardware import GpuSpec, LinkSpec
from gpusched.llm import ModelSpec

from .perf import AMPD_NETWORK_LINK

__all__ = ["H20", "QWEN3_32B", "NVLINK_H20", "AMPD_NETWORK_LINK", "GPUS_PER_SERVER"]

GPUS_PER_SERVER = 8

H20 = GpuSpec(
    name="H20",
    memory_bytes=96 * 10**9,
    hbm_bandwidth_bytes_per_s=4.0e12,
    dense_bf16_flops_per_s=148e12,
    nvlink_bandwidth_bytes_per_s=900e9,
    pcie_bandwidth_bytes_per_s=64e9,
    source="NVIDIA H20 product brief as quoted by the AMPD spec §3.1 (96 GB HBM3, 4.0 TB/s, BF16 148 TFLOPS "
           "dense, NVLink 900 GB/s, PCIe Gen5 x16 128 GB/s bidirectional)",
)

QWEN3_32B = ModelSpec(name="qwen3-32b", hf_id="Qwen/Qwen3-32B", num_layers=64, hidden_size=5120, num_heads=64,
                      num_kv_heads=8, head_dim=128, ffn_size=25600, vocab_size=151936, max_context_tokens=40960)

NVLINK_H20 = LinkSpec(bandwidth_bytes_per_s=H20.nvlink_bandwidth_bytes_per_s / 2, latency_s=1e-3)
