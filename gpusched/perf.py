"""Step-time models: the time (seconds) of one engine iteration of a batch.

One protocol, :class:`StepTimeModel`, and two implementations:

* :class:`RooflineStepTime` -- analytic, from :mod:`gpusched.llm` shapes and :mod:`gpusched.hardware` peaks.
  Each operator costs ``max(FLOPs / (peak x flops_efficiency), bytes / (HBM bw x bandwidth_efficiency))``:
  the four GEMMs of a layer (fused QKV, O, fused gate/up, down), attention (prefill: causal QK^T and PV
  FLOPs over cached + new keys; decode: KV bytes read), the memory-bound elementwise ops (2 RMSNorm,
  SiLU and mul, 2 residual adds), the LM head per sampled sequence, and, for ``tp > 1``, two ring
  all-reduces of the hidden states per layer over NVLink. Usable for any GPU/model pair.

* :class:`ProfiledStepTime` -- from measured tables, built by :meth:`ProfiledStepTime.from_profile_dir`,
  which detects the format:

  - **H100 op tables** (per-launch CUDA-event timings, *not* graphs). A graph-replayed layer is composed as

        sum over the 4 GEMMs   max(G_op(N) - launch_overhead_s, kernel_floor_s)       N = tokens in the step
      + prefill attention      max(A_p(equivalent sequence) - launch_overhead_s, kernel_floor_s)
      + decode attention       max(A_d(batch, mean context) - launch_overhead_s, kernel_floor_s)
      + 9 memory-bound kernels max(bytes_k N / elementwise_bandwidth, kernel_floor_s)

    times ``num_layers``; plus the LM head (roofline, per sampled sequence) and TP all-reduces when asked.
    Where each number comes from (nothing is fitted to the whole-step e2e tables):

    * ``G_op``, ``A_p``, ``A_d``: the op tables of *this* model and TP, linear (1-D) / bilinear (2-D)
      interpolation, after a monotone lower envelope (per-launch jitter only ever adds time; a kernel is
      never faster with more work). ``smooth=False`` keeps the raw entries.
    * ``launch_overhead_s`` = (smallest GEMM entry of the whole ops_linear table -- the eager per-launch
      floor, 23.4 µs on the H100 file) - ``kernel_floor_s``: the part of an eager launch a CUDA graph
      does not pay.
    * ``kernel_floor_s`` = 3 µs: the shortest a kernel node lasts inside a graph replay (about 1 µs node
      launch + 2 µs ramp/drain). A hardware prior, documented, not fitted.
    * ``elementwise_bandwidth_bytes_per_s``: slope of decode-attention time vs KV bytes on the table's
      memory-bound entries (KV >= 0.25 GB) -- the achieved HBM streaming rate (~2.9 TB/s on H100).
    * unprofiled kernels, bytes per token (bf16): RMSNorm 2 x (read h + write h), residual add 2 x (2 reads
      + 1 write of h), SiLU (read + write f/tp), mul (2 reads + 1 write of f/tp), K and V written into the
      cache (read + write kv_dim/tp each), attention output relayout (read + write q_dim/tp) -- plain
      PyTorch kernels, as a graph-captured torch step runs them.
    * prefill attention of several sequences is one varlen kernel: looked up at the single sequence with
      the same causal-attention FLOPs (``sum c_i (p_i + c_i/2)``): pure prefill at ``sqrt(2 W)`` from
      ``ops_attn_prefill``, or a chunk ``C = sum c_i`` over the FLOP-equivalent cached length from
      ``ops_attn_chunked`` when there is cached context.
    * decode attention of heterogeneous contexts: the decode table at (batch, mean context) -- this keeps
      the total KV bytes read, which is what a memory-bound decode kernel pays.

  - **LLMServingSim layerwise tables** (vLLM hooks, µs). A step is, as vLLM runs it,
    ``embedding(N) + num_layers x [2 layernorm(N) + qkv(N) + rotary(N) + attention + o(N) + gate_up(N)
    + act(N) + down(N)] + final_layernorm(N) + lm_head(S) + sampler(S)``, with the 4-D attention grid at
    (prefill chunk, its cached tokens, number of decodes, mean decode context). Several prefill chunks
    are looked up as the one chunk of the same total length and causal work (``equivalent_chunk=True``,
    default) rather than LLMServingSim's own key of summed lengths (``False``), which would count
    attention between different requests. ``S`` is the sequences that emit a token: all decodes plus the
    prefill chunks that sample. By default every prefill chunk samples (``prefill_samples=True``; exact
    when chunks end their prompt, an over-estimate of one lm_head row per unfinished chunk); pass
    ``num_sampled=`` to :meth:`ProfiledStepTime.step_time_s` when the engine knows.

    **Decode skew.** The grid's decodes all share one context, so a step is looked up at the mean
    context (the same KV bytes read). When the profile's ``meta.yaml`` enables ``skew_fit`` (LLMServingSim's
    RTX PRO 6000 profile does; its RTX 4090 profile does not), the attention term is corrected as
    LLMServingSim does: ``t_mean + alpha (t_max - t_mean)``, ``t_max`` the grid at the longest decode
    context and ``alpha`` the profile's fitted value for the step's bucket (prefill tokens, number of
    decodes, skew rate ``(mean - min) / (max - min)``, longest context, cached prefill tokens; see
    :class:`gpusched.profiles.SkewFit`). The time then depends on the spread of the contexts, not only
    on their sum, so such a model offers no ``decode_step_time_s`` shortcut (it is None) and engines
    price every step with all its contexts. ``skew_correction=False`` switches the correction off.

Units: tokens are counts, times seconds, bandwidths bytes/s. Inputs are validated: a negative length
raises :class:`~gpusched.errors.ConfigError` naming it.

Checks against whole-step measurements: :func:`compare_to_steps` and :func:`mape`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, ProfileError
from gpusched.profiles import (Grid1D, Grid2D, Grid4D, LINEAR_OPS, SkewFit, detect_format, monotone_envelope,
                               read_h100_tables, read_lss_skew_fit, read_lss_tables)

__all__ = ["StepTimeModel", "RooflineStepTime", "ProfiledStepTime", "compare_to_steps", "mape",
           "DTYPE_BYTES", "KERNEL_FLOOR_S", "same_layer_shapes", "profile_models"]

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1, "int8": 1}
KERNEL_FLOOR_S = 3e-6          # shortest kernel node in a CUDA-graph replay (prior, see module docstring)
ALLREDUCE_LATENCY_S = 5e-6     # fixed cost of one NCCL all-reduce inside a step (prior)


@runtime_checkable
class StepTimeModel(Protocol):
    """Anything that times one engine iteration."""

    def step_time_s(self, prefill_lens: Sequence[int] = (), decode_contexts: Sequence[int] = (),
                    prefill_cached: Sequence[int] | None = None) -> float:
        """Seconds for one step: prefill chunk i of ``prefill_lens[i]`` new tokens over ``prefill_cached[i]``
        cached ones (0 if None), and one new token for each decode j at context ``decode_contexts[j]``."""
        ...


# ------------------------------------------------------------------------------------------- helpers
def _check(prefill_lens, decode_contexts, prefill_cached):
    """Validated (prefill_lens, decode_contexts, prefill_cached) as sequences; fast for small lists."""
    if prefill_cached is None:
        prefill_cached = (0,) * len(prefill_lens)
    elif len(prefill_cached) != len(prefill_lens):
        raise ConfigError(f"prefill_cached has {len(prefill_cached)} entries but prefill_lens has "
                          f"{len(prefill_lens)}; give one cached length per prefill chunk")
    for name, seq in (("prefill_lens", prefill_lens), ("decode_contexts", decode_contexts),
                      ("prefill_cached", prefill_cached)):
        if seq and min(seq) < 0:
            bad = min(seq)
            raise ConfigError(f"{name} contains a negative length {bad!r}; lengths are token counts >= 0")
    return prefill_lens, decode_contexts, prefill_cached


def _model_spec(model):
    if isinstance(model, str):
        from gpusched.llm import get_model
        return get_model(model)
    return model


def _gpu_spec(gpu):
    if isinstance(gpu, str):
        from gpusched.hardware import get_gpu
        return get_gpu(gpu)
    return gpu


def _dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"dtype {dtype!r} unknown; use one of {sorted(DTYPE_BYTES)}") from None


def _elementwise_bytes_per_token(hidden: int, ffn_tp: int, q_tp: int, kv_tp: int, b: int) -> tuple[float, ...]:
    """Bytes per token of the 9 unprofiled memory-bound kernels of a layer (see module docstring)."""
    return (2 * hidden * b, 2 * hidden * b,          # RMSNorm x2: read + write h
            3 * hidden * b, 3 * hidden * b,          # residual add x2: 2 reads + 1 write of h
            2 * ffn_tp * b, 3 * ffn_tp * b,          # SiLU: read + write f; mul: 2 reads + 1 write f
            2 * kv_tp * b, 2 * kv_tp * b,            # K and V written into the KV cache: read + write
            2 * q_tp * b)                            # attention output (B,H,S,D) -> (B,S,H*D) relayout


def _causal_work(prefill_lens, prefill_cached) -> tuple[int, int, float]:
    """(total new tokens C, total cached P, causal attention work W = sum c (p + c/2)) in token^2."""
    c_tot = p_tot = 0
    w = 0.0
    for c, p in zip(prefill_lens, prefill_cached):
        if c:
            c_tot += c
            p_tot += p
            w += c * (p + 0.5 * c)
    return c_tot, p_tot, w


def _ring_allreduce_s(nbytes: float, tp: int, link_bytes_per_s: float | None, latency_s: float) -> float:
    """One ring all-reduce: 2 (tp-1)/tp x bytes over one direction of the per-GPU link."""
    if tp <= 1 or nbytes <= 0:
        return 0.0
    if not link_bytes_per_s:
        raise ConfigError("tp > 1 needs an interconnect bandwidth; this GPU has none")
    return latency_s + 2.0 * (tp - 1) / tp * nbytes / link_bytes_per_s


# ------------------------------------------------------------------------------------------ roofline
@dataclass(frozen=True)
class RooflineStepTime:
    """Analytic roofline step time (see the module docstring for the terms).

    Args:
        model: a ``ModelSpec`` or its name (``gpusched.llm.get_model``).
        gpu: a ``GpuSpec`` or its name (``gpusched.hardware.get_gpu``).
        tp: tensor-parallel degree (heads and FFN columns sharded; hidden-state all-reduces over NVLink,
            or PCIe when the GPU has no NVLink; one direction = half the quoted bidirectional NVLink).
        dtype: weights/activations/KV dtype (``bf16``, ``fp16``, ``fp8``, ...).
        flops_efficiency: achieved fraction of dense peak FLOP/s in GEMMs and attention (0.7: typical
            large bf16 GEMM on Hopper/Ampere).
        bandwidth_efficiency: achieved fraction of peak HBM bandwidth (0.85: typical streaming kernel;
            the H100 decode-attention table achieves 2.9/3.35 = 0.87).
        step_overhead_s: fixed host/launch cost added once per step (0 = graph-replayed steps).
        include_lm_head: add the LM head GEMM for each sampled sequence.
        include_comm: add the TP all-reduces (2 per layer, ring, plus ``allreduce_latency_s`` each).
    """

    model: object
    gpu: object
    tp: int = 1
    dtype: str = "bf16"
    flops_efficiency: float = 0.7
    bandwidth_efficiency: float = 0.85
    step_overhead_s: float = 0.0
    include_lm_head: bool = True
    include_comm: bool = True
    allreduce_latency_s: float = ALLREDUCE_LATENCY_S

    def __post_init__(self):
        object.__setattr__(self, "model", _model_spec(self.model))
        object.__setattr__(self, "gpu", _gpu_spec(self.gpu))
        if not isinstance(self.tp, int) or self.tp < 1:
            raise ConfigError(f"tp must be an int >= 1, got {self.tp!r}")
        for f in ("flops_efficiency", "bandwidth_efficiency"):
            v = getattr(self, f)
            if not 0 < v <= 1:
                raise ConfigError(f"{f} must be in (0, 1], got {v!r}")
        if self.step_overhead_s < 0:
            raise ConfigError(f"step_overhead_s must be >= 0, got {self.step_overhead_s!r}")
        m, b, tp = self.model, _dtype_bytes(self.dtype), self.tp
        if m.num_heads % tp or m.ffn_size % tp:
            raise ConfigError(f"tp={tp} does not divide {m.name}'s {m.num_heads} heads / {m.ffn_size} FFN")
        hd, h = m.head_dim, m.hidden_size
        heads, kv_heads = m.num_heads // tp, max(m.num_kv_heads // tp, 1)
        ffn = m.ffn_size // tp
        gemms = ((h, (heads + 2 * kv_heads) * hd), (heads * hd, h),
                 (h, (2 if m.ffn_gated else 1) * ffn), (ffn, h))
        flops = self.gpu.dense_bf16_flops_per_s * self.flops_efficiency
        bw = self.gpu.hbm_bandwidth_bytes_per_s * self.bandwidth_efficiency
        link = self.gpu.nvlink_bandwidth_bytes_per_s
        link = link / 2 if link else self.gpu.pcie_bandwidth_bytes_per_s
        object.__setattr__(self, "_c", dict(
            gemms=gemms, b=b, h=h, heads=heads, hd=hd, flops=flops, bw=bw, link=link,
            kv_bytes_tok=2 * kv_heads * hd * b, q_bytes_tok=heads * hd * b,
            elem=sum(_elementwise_bytes_per_token(h, ffn, heads * hd, kv_heads * hd, b)), vocab=m.vocab_size // tp, layers=m.num_layers))

    def layers_only(self) -> "RooflineStepTime":
        """The same model without LM head, step overhead or TP communication (what the e2e tables hold)."""
        return replace(self, include_lm_head=False, include_comm=False, step_overhead_s=0.0)

    def _gemm_s(self, n: float, k: int, nout: int) -> float:
        c = self._c
        return max(2.0 * n * k * nout / c["flops"], c["b"] * (k * nout + n * k + n * nout) / c["bw"])

    def step_time_s(self, prefill_lens: Sequence[int] = (), decode_contexts: Sequence[int] = (),
                    prefill_cached: Sequence[int] | None = None, num_sampled: int | None = None) -> float:
        prefill_lens, decode_contexts, prefill_cached = _check(prefill_lens, decode_contexts, prefill_cached)
        c = self._c
        n = sum(prefill_lens) + len(decode_contexts)
        if n == 0:
            return 0.0
        layer = sum(self._gemm_s(n, k, nout) for k, nout in c["gemms"])
        # prefill attention: QK^T and PV, causal, over cached + new keys
        attn_flops = 4.0 * c["hd"] * c["heads"] * _causal_work(prefill_lens, prefill_cached)[2]
        attn_bytes = sum(ci * c["q_bytes_tok"] * 2 + (ci + pi) * c["kv_bytes_tok"]
                         for ci, pi in zip(prefill_lens, prefill_cached) if ci)
        if attn_flops:
            layer += max(attn_flops / c["flops"], attn_bytes / c["bw"])
        if decode_contexts:  # decode: read every cached K and V once
            ctx = sum(decode_contexts) + len(decode_contexts)
            layer += max(4.0 * c["hd"] * c["heads"] * ctx / c["flops"],
                         (ctx * c["kv_bytes_tok"] + 2 * len(decode_contexts) * c["q_bytes_tok"]) / c["bw"])
        layer += n * c["elem"] / c["bw"]
        if self.include_comm:
            layer += 2 * _ring_allreduce_s(n * c["h"] * c["b"], self.tp, c["link"], self.allreduce_latency_s)
        t = c["layers"] * layer + self.step_overhead_s
        if self.include_lm_head:
            s = len(decode_contexts) + sum(1 for x in prefill_lens if x) if num_sampled is None else num_sampled
            if s:
                t += self._gemm_s(s, c["h"], c["vocab"])
        return t


# ------------------------------------------------------------------------------------------ profiled
@dataclass(frozen=True)
class ProfiledStepTime:
    """Step time from measured tables; build it with :meth:`from_profile_dir` (see the module docstring).

    Attributes (all documented there): ``fmt`` (``"h100"`` or ``"llmservingsim"``), ``model`` (ModelSpec),
    ``tp``, ``launch_overhead_s``, ``kernel_floor_s``, ``elementwise_bandwidth_bytes_per_s``,
    ``include_lm_head``, ``include_comm``, ``prefill_samples``, ``grids`` (the interpolation grids), ``skew``
    (LLMServingSim format: the profile's measured decode-skew correction, a :class:`~gpusched.profiles.SkewFit`,
    or None).
    """

    fmt: str
    model: object
    tp: int
    grids: dict = field(repr=False)
    launch_overhead_s: float = 0.0
    kernel_floor_s: float = KERNEL_FLOOR_S
    elementwise_bandwidth_bytes_per_s: float = 0.0
    include_lm_head: bool = True
    include_comm: bool = True
    prefill_samples: bool = True
    gpu: object = None
    dtype: str = "bf16"
    allreduce_latency_s: float = ALLREDUCE_LATENCY_S
    equivalent_chunk: bool = True
    skew: SkewFit | None = field(default=None, repr=False)

    # -------------------------------------------------------------- construction
    @classmethod
    def from_profile_dir(cls, path, model="llama3-8b", tp: int = 1, *, gpu=None, smooth: bool = True,
                         launch_overhead_s: float | None = None, kernel_floor_s: float = KERNEL_FLOOR_S,
                         elementwise_bandwidth_bytes_per_s: float | None = None,
                         include_lm_head: bool = True, include_comm: bool = True,
                         prefill_samples: bool = True, dtype: str = "bf16",
                         skew_correction: bool = True) -> "ProfiledStepTime":
        """Read a profile directory (a bundled name such as ``"h100"``/``"rtx4090"`` or a path).

        Args:
            path: H100 op-table dir, or an LLMServingSim ``.../bf16`` dir, its ``tp<N>`` child, or the model dir.
            model: ModelSpec or name; its short name selects the rows of the H100 tables.
            tp: tensor-parallel degree (a ``tp<N>`` folder in LLMServingSim format).
            gpu: GpuSpec or name, for the LM head roofline and all-reduces (H100 format; default ``"h100"``).
            smooth: apply the monotone lower envelope to the H100 op tables.
            launch_overhead_s, kernel_floor_s, elementwise_bandwidth_bytes_per_s: override the derived
                defaults (H100 format).
            include_lm_head: add LM head (+ sampler in LLMServingSim format) per sampled sequence.
            include_comm: add TP all-reduces (H100 tables were timed on one GPU without communication).
            prefill_samples: count every prefill chunk as emitting a token (see module docstring).
            skew_correction: apply the decode-skew correction the profile measured, when its ``meta.yaml``
                enables one (LLMServingSim format; see the module docstring). False prices decode attention
                at the mean context only.
        """
        from gpusched.paths import resolve_profile
        root = resolve_profile(path)
        if isinstance(root, Path) and root.is_dir() and root.name.startswith("tp") and (root / "dense.csv").is_file():
            root = root.parent
        fmt, root = detect_format(Path(root))
        if not isinstance(tp, int) or tp < 1:
            raise ConfigError(f"tp must be an int >= 1, got {tp!r}")
        spec = _model_spec(model)
        common = dict(model=spec, tp=tp, include_lm_head=include_lm_head, include_comm=include_comm,
                      prefill_samples=prefill_samples, dtype=dtype)
        if fmt == "llmservingsim":
            _check_profiled_shape(root, spec)
            t = read_lss_tables(root, tp)
            need = {"embedding", "layernorm", "qkv_proj", "rotary_emb", "o_proj", "gate_up_proj", "act_fn",
                    "down_proj", "final_layernorm"}
            missing = need - set(t.dense)
            if missing or not {"lm_head", "sampler"} <= set(t.per_sequence):
                raise ProfileError(f"{root}: dense.csv/per_sequence.csv lack layers {sorted(missing)}; "
                                   f"have {sorted(t.dense)} and {sorted(t.per_sequence)}")
            grids = dict(dense=t.dense, per_sequence=t.per_sequence,
                         attention=Grid4D((t.pc, t.kp, t.nd, t.kd), t.att_s))
            skew = read_lss_skew_fit(root, tp) if skew_correction else None
            return cls(fmt=fmt, grids=grids, launch_overhead_s=0.0, kernel_floor_s=0.0, gpu=gpu, skew=skew, **common)

        t = read_h100_tables(root, spec.name, tp)
        env = monotone_envelope if smooth else (lambda z: np.asarray(z, float))
        grids = {op: Grid1D(t.tokens, env(t.linear_s[op])) for op in LINEAR_OPS}
        grids["prefill"] = Grid1D(t.prefill_len, env(t.prefill_s))
        grids["decode"] = Grid2D(t.dec_batch, t.dec_context, env(t.dec_s))
        grids["chunked"] = (Grid2D(t.chunk, t.cached, env(t.chunked_s)) if t.chunked_s is not None else None)
        if launch_overhead_s is None:
            launch_overhead_s = max(t.launch_floor_s - kernel_floor_s, 0.0)
        if elementwise_bandwidth_bytes_per_s is None:
            elementwise_bandwidth_bytes_per_s = t.dec_bandwidth_bytes_per_s
            if not elementwise_bandwidth_bytes_per_s or elementwise_bandwidth_bytes_per_s <= 0:
                raise ProfileError(f"{root}: cannot derive a streaming bandwidth from ops_attn_decode.csv for "
                                   f"{spec.name} tp={tp}; pass elementwise_bandwidth_bytes_per_s")
        return cls(fmt=fmt, grids=grids, launch_overhead_s=launch_overhead_s, kernel_floor_s=kernel_floor_s,
                   elementwise_bandwidth_bytes_per_s=elementwise_bandwidth_bytes_per_s,
                   gpu=_gpu_spec(gpu if gpu is not None else "h100"), **common)

    def __post_init__(self):
        if self.launch_overhead_s < 0 or self.kernel_floor_s < 0:
            raise ConfigError(f"launch_overhead_s ({self.launch_overhead_s!r}) and kernel_floor_s "
                              f"({self.kernel_floor_s!r}) must be >= 0")
        if self.skew is not None and self.fmt != "llmservingsim":
            raise ConfigError(f"a decode-skew correction applies to LLMServingSim-format tables only, not {self.fmt!r}")
        m, b = self.model, _dtype_bytes(self.dtype)
        tp = self.tp
        object.__setattr__(self, "_elem", _elementwise_bytes_per_token(
            m.hidden_size, m.ffn_size // tp, m.num_heads // tp * m.head_dim,
            max(m.num_kv_heads // tp, 1) * m.head_dim, b))
        object.__setattr__(self, "_ops", tuple(self.grids[o] for o in LINEAR_OPS) if self.fmt == "h100" else ())
        object.__setattr__(self, "_token_terms", {})  # n -> _token_terms_s(n), filled by step_time_s

    def layers_only(self) -> "ProfiledStepTime":
        """The transformer layers alone: no LM head, sampler, embedding, final norm or TP communication.

        This is what the H100 e2e tables measured; :func:`compare_to_steps` uses it.
        """
        return replace(self, include_lm_head=False, include_comm=False)

    # -------------------------------------------------------------- evaluation
    def _g(self, t_eager: float) -> float:
        """Graph-replay time of one profiled kernel from its eager (per-launch) time."""
        return max(t_eager - self.launch_overhead_s, self.kernel_floor_s)

    def _prefill_attn_s(self, prefill_lens, prefill_cached) -> float:
        c_tot, p_tot, w = _causal_work(prefill_lens, prefill_cached)
        if not c_tot:
            return 0.0
        chunked = self.grids["chunked"]
        p_eq = w / c_tot - 0.5 * c_tot  # cached length of one chunk C with the same causal work
        if p_tot == 0 or p_eq <= 0 or chunked is None:
            return self._g(self.grids["prefill"](math.sqrt(2.0 * w)))
        return self._g(chunked(c_tot, p_eq))

    def step_time_s(self, prefill_lens: Sequence[int] = (), decode_contexts: Sequence[int] = (),
                    prefill_cached: Sequence[int] | None = None, num_sampled: int | None = None) -> float:
        """Seconds for one step; ``num_sampled`` = sequences emitting a token (default: see module docs)."""
        prefill_lens, decode_contexts, prefill_cached = _check(prefill_lens, decode_contexts, prefill_cached)
        nd = len(decode_contexts)
        n = sum(prefill_lens) + nd
        if n == 0:
            return 0.0
        if num_sampled is None:
            num_sampled = nd + (sum(1 for x in prefill_lens if x) if self.prefill_samples else 0)
        elif num_sampled < 0:
            raise ConfigError(f"num_sampled must be >= 0, got {num_sampled!r}")
        mean_ctx = sum(decode_contexts) / nd if nd else 0.0
        if self.fmt == "llmservingsim":
            return self._lss_step(n, prefill_lens, prefill_cached, decode_contexts, mean_ctx, num_sampled)
        g = self._g
        # the terms that depend on the step's token count only, cached per count (engines price tens of
        # thousands of steps over a few thousand distinct counts); added in the same order as uncached
        by_tokens = self._token_terms
        terms = by_tokens.get(n)
        if terms is None:
            terms = by_tokens[n] = self._token_terms_s(n)
        linear, elementwise, comm = terms
        layer = linear
        layer += self._prefill_attn_s(prefill_lens, prefill_cached)
        if nd:
            layer += g(self.grids["decode"](nd, mean_ctx))
        layer += elementwise
        if comm is not None:
            layer += comm
        m = self.model
        bw, floor = self.elementwise_bandwidth_bytes_per_s, self.kernel_floor_s
        t = m.num_layers * layer
        if self.include_lm_head and num_sampled:
            k, nout, b = m.hidden_size, m.vocab_size // self.tp, _dtype_bytes(self.dtype)
            t += max(2.0 * num_sampled * k * nout / self.gpu.dense_bf16_flops_per_s,
                     b * (k * nout + num_sampled * (k + nout)) / bw, floor)
        return t

    def _token_terms_s(self, n: int) -> tuple[float, float, float | None]:
        """Per-layer seconds of a step of ``n`` tokens that depend on ``n`` only: the linear layers, the
        elementwise kernels, and the TP all-reduces (None without TP communication)."""
        g = self._g
        linear = sum(g(op(n)) for op in self._ops)
        bw, floor = self.elementwise_bandwidth_bytes_per_s, self.kernel_floor_s
        elementwise = sum(max(n * nb / bw, floor) for nb in self._elem)
        comm = None
        if self.include_comm and self.tp > 1:
            m = self.model
            link = self.gpu.nvlink_bandwidth_bytes_per_s
            link = link / 2 if link else self.gpu.pcie_bandwidth_bytes_per_s
            comm = 2 * _ring_allreduce_s(n * m.hidden_size * _dtype_bytes(self.dtype), self.tp, link,
                                         self.allreduce_latency_s)
        return linear, elementwise, comm

    @property
    def decode_step_time_s(self):
        """``decode_step_time_s(batch_size, context_sum)``: seconds of a decode-only step of ``batch_size``
        sequences whose cached contexts sum to ``context_sum`` tokens, equal (to rounding) to
        ``step_time_s(decode_contexts=...)``; or **None** when this model has a decode-skew correction.

        Engines price decode steps through this shortcut when a model offers it (``getattr(model,
        "decode_step_time_s", None)``), without building per-sequence lists. It is exact only while decode
        time depends on the contexts through their sum alone; with a skew correction it also depends on
        their spread, so the model withholds the shortcut and engines call :meth:`step_time_s` with every
        context.
        """
        return None if self.skew is not None else self._decode_step_s

    @property
    def decode_run_ends_s(self):
        """``decode_run_ends_s(start_s, batch_size, context_sum, steps)`` (see :meth:`_decode_run_ends`), or
        None when :attr:`decode_step_time_s` is None."""
        return None if self.skew is not None else self._decode_run_ends

    def _decode_step_s(self, batch_size: int, context_sum: int) -> float:
        """:attr:`decode_step_time_s`: the batch-size terms are computed once per batch size and cached."""
        if batch_size < 1 or context_sum < 0:
            raise ConfigError(f"decode_step_time_s needs batch_size >= 1 and context_sum >= 0, got "
                              f"{batch_size!r}, {context_sum!r}")
        cache = self.__dict__.setdefault("_decode_base", {})
        base = cache.get(batch_size)
        if base is None:  # the step without its decode attention
            base = cache[batch_size] = self._decode_base_s(batch_size)
        mean_ctx = context_sum / batch_size
        if self.fmt == "llmservingsim":
            return base + self.model.num_layers * self.grids["attention"](0, 0, batch_size, mean_ctx)
        return base + self.model.num_layers * self._g(self.grids["decode"](batch_size, mean_ctx))

    def _decode_run_ends(self, start_s: float, batch_size: int, context_sum: int, steps: int) -> list[float]:
        """End times (s) of ``steps`` back-to-back decode-only steps from ``start_s``, every context one
        token longer at each step: ``ends[k] = ends[k-1] + decode_step_time_s(batch_size, context_sum +
        k * batch_size)`` with ``ends[-1] = start_s``.

        Bit-for-bit equal to that loop (engines rely on it: fast and step modes must agree exactly): the
        H100 format runs the same float operations in the same order, with the batch-size work done once
        (see :meth:`Grid2D.along_b`); other formats run the loop.
        """
        t, ends = start_s, []
        base = self.__dict__.get("_decode_base", {}).get(batch_size)
        if self.fmt != "h100" or base is None or context_sum < 0:  # also validates, fills the cache
            for k in range(steps):
                t = t + self._decode_step_s(batch_size, context_sum + k * batch_size)
                ends.append(t)
            return ends
        layers, launch, floor = self.model.num_layers, self.launch_overhead_s, self.kernel_floor_s
        mean_ctx = [(context_sum + k * batch_size) / batch_size for k in range(steps)]
        for x in self.grids["decode"].along_b(batch_size, mean_ctx):
            x = x - launch
            t = t + (base + layers * (x if x >= floor else floor))  # max(x, floor), as _g
            ends.append(t)
        return ends

    def _decode_base_s(self, batch_size: int) -> float:
        """A decode-only step of ``batch_size`` sequences minus its attention (seconds)."""
        contexts = [0] * batch_size
        total = self.step_time_s(decode_contexts=contexts, num_sampled=batch_size)
        if self.fmt == "llmservingsim":
            return total - self.model.num_layers * self.grids["attention"](0, 0, batch_size, 0.0)
        return total - self.model.num_layers * self._g(self.grids["decode"](batch_size, 0.0))

    def _lss_prefill_key(self, prefill_lens, prefill_cached) -> tuple[float, float]:
        """(chunk, cached) of the 4-D attention grid for this step's prefill chunks.

        The grid was profiled with one prefill sequence. Several chunks in one step run as one varlen
        kernel whose work is the sum of their causal work, so they are looked up at the single chunk
        of the same total length whose cached context gives the same work (``equivalent_chunk=True``),
        rather than as one long sequence of the summed length, which would count attention between
        different requests (``equivalent_chunk=False``: LLMServingSim's own keys).
        """
        c_tot, p_tot, w = _causal_work(prefill_lens, prefill_cached)
        if not self.equivalent_chunk or c_tot == 0:
            return c_tot, p_tot
        p_eq = w / c_tot - 0.5 * c_tot
        return (c_tot, p_eq) if p_eq > 0 else (math.sqrt(2.0 * w), 0.0)

    def _lss_attention_s(self, prefill_lens, prefill_cached, decode_contexts, mean_ctx) -> float:
        """One layer's attention (seconds): the 4-D grid at the step's prefill key and the mean decode
        context, plus the profile's decode-skew correction when it has one (see :class:`SkewFit`):
        ``t_mean + alpha (t_max - t_mean)``, ``t_max`` the grid at the longest decode context.

        As LLMServingSim applies it: no correction for fewer than two decodes, equal contexts, ``alpha = 0``
        or ``t_max <= t_mean``; the bucket's ``pc`` and ``kp`` are the sums of the prefill chunks' new and
        cached tokens (LLMServingSim's grid keys), while ``t_mean`` and ``t_max`` are read at this model's
        own prefill key (:meth:`_lss_prefill_key`), as the uncorrected term is.
        """
        attention = self.grids["attention"]
        pc, kp = self._lss_prefill_key(prefill_lens, prefill_cached)
        nd = len(decode_contexts)
        t_mean = attention(pc, kp, nd, mean_ctx)
        skew = self.skew
        if skew is None or nd < 2:
            return t_mean
        lo, hi = min(decode_contexts), max(decode_contexts)
        if lo == hi:
            return t_mean
        chunks = [(c, p) for c, p in zip(prefill_lens, prefill_cached) if c]
        rate = (sum(decode_contexts) // nd - lo) / (hi - lo)  # LLMServingSim's integer mean
        alpha = skew.alpha(sum(c for c, _ in chunks), nd, rate, hi, sum(p for _, p in chunks))
        if alpha == 0.0:
            return t_mean
        t_max = attention(pc, kp, nd, hi)
        return t_mean + alpha * (t_max - t_mean) if t_max > t_mean else t_mean

    def _lss_step(self, n, prefill_lens, prefill_cached, decode_contexts, mean_ctx, num_sampled) -> float:
        d = self.grids["dense"]
        layer = (2 * d["layernorm"](n) + d["qkv_proj"](n) + d["rotary_emb"](n) + d["o_proj"](n)
                 + d["gate_up_proj"](n) + d["act_fn"](n) + d["down_proj"](n)
                 + self._lss_attention_s(prefill_lens, prefill_cached, decode_contexts, mean_ctx))
        t = d["embedding"](n) + self.model.num_layers * layer
        if self.include_lm_head:
            t += d["final_layernorm"](n)
            if num_sampled:
                ps = self.grids["per_sequence"]
                t += ps["lm_head"](num_sampled) + ps["sampler"](num_sampled)
        return t


_SHAPE_FIELDS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_size", "vocab_size",
                 "ffn_gated")


def same_layer_shapes(a, b) -> bool:
    """True when two models run the same kernels per step (layers, widths, heads, FFN, vocabulary)."""
    return all(getattr(a, f) == getattr(b, f) for f in _SHAPE_FIELDS)


def _check_profiled_shape(root: Path, spec) -> None:
    """Refuse to price ``spec`` with an LLMServingSim profile measured on a model of another shape: its
    tables time *that* model's layers, so another shape would be priced silently wrong."""
    from gpusched.errors import UnknownNameError
    from gpusched.llm import MODELS, get_model
    from gpusched.profiles import lss_profiled_model

    profiled = lss_profiled_model(root)
    if profiled is None:
        raise ProfileError(f"{root}: cannot tell which model this profile measured (no 'model:' in meta.yaml and "
                           f"no <org>/<model>/<variant> folders); add 'model: <Hugging Face id>' to its meta.yaml")
    try:
        measured = get_model(profiled)
    except UnknownNameError:
        raise ProfileError(f"{root}: measured {profiled!r}, a model gpusched.llm does not know, so it cannot check "
                           f"that {spec.name} has the same shape; add a ModelSpec for it") from None
    if same_layer_shapes(spec, measured):
        return
    covers = [name for name, other in MODELS.items() if same_layer_shapes(other, measured)]
    from gpusched.paths import BUNDLED_PROFILES
    label = next((name for name, path in BUNDLED_PROFILES.items() if Path(path).resolve() == Path(root).resolve()),
                 str(root))
    diff = ", ".join(f"{f} {getattr(spec, f)} vs {getattr(measured, f)}" for f in _SHAPE_FIELDS
                     if getattr(spec, f) != getattr(measured, f))
    raise ProfileError(f"profile {label} measured {profiled} and covers only models of its shape "
                       f"({', '.join(covers)}); {spec.name} differs ({diff}), so its steps cannot be priced with "
                       f"these tables: use a profile measured on {spec.name}, the H100 profile (several models) or "
                       f"the roofline model of the GPU")


def profile_models(path) -> list[str]:
    """Short names of the catalogued models a profile can price (same layer shapes as what it measured)."""
    from gpusched.llm import MODELS, get_model
    from gpusched.paths import resolve_profile
    from gpusched.profiles import lss_profiled_model

    fmt, root = detect_format(Path(resolve_profile(path)))
    if fmt == "h100":
        measured = pd.read_csv(Path(root) / "ops_linear.csv", usecols=["model"])["model"].unique()
        return sorted(str(m) for m in measured)
    profiled = lss_profiled_model(root)
    if profiled is None:
        return []
    spec = get_model(profiled)
    return [name for name, other in MODELS.items() if same_layer_shapes(other, spec)]


# ------------------------------------------------------------------------------------------ checks
def compare_to_steps(model: StepTimeModel, csv_path) -> pd.DataFrame:
    """Predicted vs measured whole-step times, one row per measured step.

    Reads either e2e format of the H100 profile (``e2e_step_*.csv``: kind, prefill_tokens, prefill_seqs,
    decode_batch, context; ``e2e_chunked_*.csv``: chunk, cached, decode_batch, decode_context). Both
    measured the transformer layers only, so a model with ``layers_only()`` is evaluated through it.
    Returns columns ``kind, prefill_tokens, prefill_seqs, cached, decode_batch, context, measured_s,
    predicted_s, error_pct`` (error = 100 (predicted - measured) / measured).
    """
    df = pd.read_csv(csv_path)
    m = model.layers_only() if hasattr(model, "layers_only") else model
    rows = []
    for r in df.itertuples(index=False):
        if "chunk" in df.columns:
            kind, seqs = "chunked", 1
            pre, cached, nb, ctx = int(r.chunk), int(r.cached), int(r.decode_batch), int(r.decode_context)
            lens, cach = [pre], [cached]
        elif "kind" in df.columns:
            kind, pre, seqs = str(r.kind), int(r.prefill_tokens), int(r.prefill_seqs)
            nb, ctx, cached = int(r.decode_batch), int(r.context), 0
            if seqs and pre % seqs:
                raise ProfileError(f"{csv_path}: {pre} prefill tokens do not split into {seqs} equal sequences")
            lens = [pre // seqs] * seqs if seqs else []
            cach = [0] * len(lens)
        else:
            raise ProfileError(f"{csv_path}: neither an e2e_step nor an e2e_chunked table; columns {list(df.columns)}")
        pred = m.step_time_s(lens, [ctx] * nb, cach)
        meas = float(r.step_ms) * 1e-3
        rows.append(dict(kind=kind, prefill_tokens=pre, prefill_seqs=seqs, cached=cached, decode_batch=nb,
                         context=ctx, measured_s=meas, predicted_s=pred, error_pct=100.0 * (pred - meas) / meas))
    return pd.DataFrame(rows)


def mape(df: pd.DataFrame) -> float:
    """Mean absolute percentage error (%) of a :func:`compare_to_steps` table."""
    if df.empty:
        raise ConfigError("mape of an empty comparison table")
    return float(df["error_pct"].abs().mean())
