"""How many KV blocks a vLLM V1 engine allocates, estimated from the hardware model.

A measured vLLM run often does not record its KV block count (older LLMServingSim data, most benchmark
outputs), yet the count decides how a KV-bound run queues. vLLM (v0.19, the version of the bundled
runs) sizes the cache at start-up, per GPU, as

    requested   = total device memory x gpu_memory_utilization
    non-KV      = weights + activation peak of one profiling pass + non-torch memory increase
    KV blocks   = (requested - non-KV) // (bytes of one block on one GPU)

where the profiling pass runs the model on ``max_num_batched_tokens`` dummy tokens spread over
``min(max_num_seqs, max_num_batched_tokens)`` requests, then the sampler on one row of logits per
request. :func:`estimate_vllm_kv_blocks` evaluates each term from the model's shape; the terms and
their sources (facts about vLLM from its repository and public logs; nothing is fitted to the runs
this project replays):

* **total device memory**: what the CUDA runtime reports (``cudaMemGetInfo``), which is below the
  datasheet figure (an RTX 4090 reports 25.25e9 B); :attr:`gpusched.hardware.GpuSpec.runtime_memory_bytes`
  where a public record exists, else the datasheet ``memory_bytes`` (said so in :attr:`VllmMemoryEstimate.notes`).
* **weights**: the checkpoint's parameters at the storage dtype, split over TP, plus the rotary
  embedding's cos/sin cache (``max_context_tokens x head_dim`` values in the model dtype, a buffer
  vLLM allocates at load time).
* **activation peak**: the larger of the two phases of the profiling pass (the torch allocator's
  peak above what was allocated before it):

  - the forward pass at ``N = max_num_batched_tokens`` tokens, in the activation dtype (2 bytes): the
    residual stream and the hidden states (``2 N hidden``) plus, inside the MLP, the fused gate/up
    projection's output (``2 N ffn / TP``) and the activation's output (``N ffn / TP``);
  - the sampler on ``R = min(max_num_seqs, N)`` rows of ``vocab`` logits, with the forward's hidden
    states (``N hidden``) still referenced. The dummy sampling metadata sets top-k and top-p, so the
    whole top-k/top-p path runs. ``sampler_bytes_per_logit`` bytes are alive per logit at its peak:
    40 by default, vLLM's PyTorch sort-based path (the bf16 logits, their fp32 copy, the sorted
    values and int64 indices, the sort's double buffers, the softmax/cumsum and the masks), as
    measured by vLLM's own benchmark (1.25 GB for 256 x 131,072 logits, vllm-project/vllm PR #32558)
    and by vLLM's start-up logs of three models on an H100 (38.5-38.9 B per logit,
    llm-d/llm-d-benchmark ``config_explorer/empirical-vllm-memory-results.md``). Engines that run
    the Triton top-k/top-p kernel (vllm PR #33538) hold about 14 B per logit (bf16 and fp32 logits,
    the probabilities and the exponential draws) plus ~80 MiB of buffers: pass
    ``sampler_bytes_per_logit=14`` for those.
* **non-torch memory**: CUDA memory allocated outside PyTorch during loading and profiling (kernel
  images, library workspaces, NCCL buffers with TP): 0.13 GiB at TP 1, the value vLLM logged for
  three models on an H100 (the llm-d file above); 0.55 GiB at TP 2 in the same file. A parameter.
* **CUDA graphs**: captured after the KV cache is allocated, out of the ``1 - gpu_memory_utilization``
  headroom, in vLLM before v0.21.0; from v0.21.0 their memory is estimated and subtracted by default
  (``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS``). This estimate does not model it and says so for
  those versions.

Checked against the one run that recorded its count (LLMServingSim 2.0's RTX 4090 run, vLLM 0.19.0,
Llama-3.1-8B, 256 sequences, 2,048 batched tokens: 2,588 blocks) in ``tests/test_replay.py``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from gpusched.errors import ConfigError, DoesNotFitError

__all__ = ["VllmMemoryEstimate", "estimate_vllm_kv_blocks", "NON_TORCH_BYTES_TP1", "NON_TORCH_BYTES_TP2",
           "SAMPLER_BYTES_PER_LOGIT_SORT", "SAMPLER_BYTES_PER_LOGIT_TRITON"]

_GIB = 1 << 30
NON_TORCH_BYTES_TP1 = int(0.13 * _GIB)
"""Non-torch memory increase at TP 1 (vLLM start-up logs, see the module docstring)."""
NON_TORCH_BYTES_TP2 = int(0.55 * _GIB)
"""The same at TP 2 (NCCL buffers added)."""
SAMPLER_BYTES_PER_LOGIT_SORT = 40
"""Bytes alive per logit at the peak of vLLM's PyTorch sort-based top-k/top-p sampler."""
SAMPLER_BYTES_PER_LOGIT_TRITON = 14
"""The same for the Triton top-k/top-p kernel (plus ~80 MiB of buffers, not included)."""
_ACTIVATION_BYTES = 2  # activations and logits are computed in bf16/fp16
_CUDAGRAPH_PROFILED_FROM = (0, 21)  # vLLM version from which CUDA-graph memory is subtracted by default


@dataclass(frozen=True)
class VllmMemoryEstimate:
    """The terms of :func:`estimate_vllm_kv_blocks`, bytes per GPU (see the module docstring).

    ``activation_peak_bytes = max(forward_peak_bytes, sampler_peak_bytes)``; ``kv_bytes = requested_bytes
    - weight_bytes - activation_peak_bytes - non_torch_bytes``; ``num_gpu_blocks = kv_bytes // block_bytes``.
    ``notes`` lists what the estimate assumed that the caller may want to check.
    """

    total_memory_bytes: int
    gpu_memory_utilization: float
    requested_bytes: int
    weight_bytes: int
    forward_peak_bytes: int
    sampler_peak_bytes: int
    non_torch_bytes: int
    block_bytes: int
    num_gpu_blocks: int
    notes: tuple[str, ...] = field(default=())

    @property
    def activation_peak_bytes(self) -> int:
        return max(self.forward_peak_bytes, self.sampler_peak_bytes)

    @property
    def kv_bytes(self) -> int:
        return self.requested_bytes - self.weight_bytes - self.activation_peak_bytes - self.non_torch_bytes

    def describe(self) -> str:
        """One paragraph: the block count and how it was obtained, in GiB."""
        g = lambda b: f"{b / _GIB:.2f} GiB"  # noqa: E731 - a local formatter
        peak = "sampler" if self.sampler_peak_bytes >= self.forward_peak_bytes else "forward pass"
        text = (f"{self.num_gpu_blocks:,} KV blocks estimated as vLLM sizes its cache: {g(self.total_memory_bytes)} "
                f"x gpu_memory_utilization {self.gpu_memory_utilization:g} = {g(self.requested_bytes)}, minus "
                f"weights {g(self.weight_bytes)}, activation peak {g(self.activation_peak_bytes)} (the profiling "
                f"pass's {peak}), non-torch memory {g(self.non_torch_bytes)}, leaves {g(self.kv_bytes)} "
                f"= {self.num_gpu_blocks:,} blocks of {self.block_bytes / 2**20:.2f} MiB")
        return text + "".join(f"; {note}" for note in self.notes)


def estimate_vllm_kv_blocks(model, total_memory_bytes: int, gpu_memory_utilization: float = 0.9,
                            max_num_batched_tokens: int = 8192, max_num_seqs: int = 256,
                            block_size_tokens: int = 16, tp: int = 1, dtype: str = "bf16",
                            non_torch_bytes: int | None = None,
                            sampler_bytes_per_logit: float = SAMPLER_BYTES_PER_LOGIT_SORT,
                            vllm_version: str | None = None) -> VllmMemoryEstimate:
    """Estimate the GPU KV blocks a vLLM V1 engine allocates (per GPU of a TP group).

    Args:
        model: a ``ModelSpec`` or name (:func:`gpusched.llm.get_model`).
        total_memory_bytes: device memory as the CUDA runtime reports it, bytes.
        gpu_memory_utilization: vLLM's fraction, in (0, 1].
        max_num_batched_tokens, max_num_seqs: the engine's knobs (they size the profiling pass).
        block_size_tokens: tokens per KV block.
        tp: tensor-parallel degree (weights, FFN and KV heads split; KV heads replicated past their count).
        dtype: weights and KV dtype.
        non_torch_bytes: override of the non-torch term; default 0.13 GiB at TP 1, 0.55 GiB above.
        sampler_bytes_per_logit: see the module docstring (40: sort-based sampler; 14: Triton kernel).
        vllm_version: the engine's version, e.g. ``"0.19.0"``; from 0.21 a note says CUDA-graph memory
            (subtracted by those versions) is not modelled.

    Raises:
        ConfigError: a knob out of range. DoesNotFitError: nothing is left for the KV cache.
    """
    from gpusched.llm import get_model

    spec = get_model(model) if isinstance(model, str) else model
    for name, value in (("total_memory_bytes", total_memory_bytes), ("max_num_batched_tokens", max_num_batched_tokens),
                        ("max_num_seqs", max_num_seqs), ("block_size_tokens", block_size_tokens), ("tp", tp)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"estimate_vllm_kv_blocks: {name} must be an int >= 1, got {value!r}")
    if not (isinstance(gpu_memory_utilization, (int, float)) and 0 < gpu_memory_utilization <= 1):
        raise ConfigError(f"estimate_vllm_kv_blocks: gpu_memory_utilization must be in (0, 1], "
                          f"got {gpu_memory_utilization!r}")
    if not (isinstance(sampler_bytes_per_logit, (int, float)) and math.isfinite(sampler_bytes_per_logit)
            and sampler_bytes_per_logit >= 0):
        raise ConfigError(f"estimate_vllm_kv_blocks: sampler_bytes_per_logit must be >= 0, "
                          f"got {sampler_bytes_per_logit!r}")
    if non_torch_bytes is None:
        non_torch_bytes = NON_TORCH_BYTES_TP1 if tp == 1 else NON_TORCH_BYTES_TP2
    elif non_torch_bytes < 0:
        raise ConfigError(f"estimate_vllm_kv_blocks: non_torch_bytes must be >= 0, got {non_torch_bytes!r}")

    n, rows = max_num_batched_tokens, min(max_num_seqs, max_num_batched_tokens)
    h, ffn = spec.hidden_size, math.ceil(spec.ffn_size / tp)
    rotary = spec.max_context_tokens * spec.head_dim * _ACTIVATION_BYTES if not spec.learned_position_tokens else 0
    weights = math.ceil(spec.weight_bytes(dtype) / tp) + rotary
    forward = n * (2 * h + 3 * ffn) * _ACTIVATION_BYTES
    sampler = int(rows * spec.vocab_size * sampler_bytes_per_logit) + n * h * _ACTIVATION_BYTES
    kv_heads = math.ceil(spec.num_kv_heads / tp)
    block_bytes = spec.kv_bytes_per_token(dtype) * kv_heads // spec.num_kv_heads * block_size_tokens
    requested = int(total_memory_bytes * gpu_memory_utilization)
    kv = requested - weights - max(forward, sampler) - non_torch_bytes
    notes = []
    if vllm_version and _version_tuple(vllm_version) >= _CUDAGRAPH_PROFILED_FROM:
        notes.append(f"vLLM {vllm_version} also subtracts its CUDA-graph memory estimate by default, which is "
                     f"not modelled: the real count is somewhat lower")
    if kv < block_bytes:
        raise DoesNotFitError(
            f"{spec.name} at TP{tp} leaves {kv / _GIB:.2f} GiB for the KV cache on a GPU of "
            f"{total_memory_bytes / _GIB:.2f} GiB at gpu_memory_utilization {gpu_memory_utilization} (weights "
            f"{weights / _GIB:.2f} GiB, activation peak {max(forward, sampler) / _GIB:.2f} GiB); raise TP, "
            f"gpu_memory_utilization or lower max_num_seqs/max_num_batched_tokens")
    return VllmMemoryEstimate(int(total_memory_bytes), float(gpu_memory_utilization), requested, weights, forward,
                              sampler, int(non_torch_bytes), int(block_bytes), int(kv // block_bytes), tuple(notes))


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"0.19.0"`` -> ``(0, 19, 0)``; non-numeric tails (``rc1``, ``+cu128``) are ignored."""
    return tuple(int(x) for x in re.findall(r"\d+", str(version).split("+")[0])[:3])
