"""Model shapes: decoder-only transformer dimensions -> parameter counts, weight bytes, KV bytes per token.

A :class:`ModelSpec` holds the shape of a decoder-only transformer (as in its Hugging Face ``config.json``)
and derives the memory a serving engine needs:

* :meth:`ModelSpec.param_count` -- parameters of the checkpoint: token embeddings, learned position
  embeddings (OPT), per-layer attention (q, k, v, o, plus biases where the model has them), FFN (3 matrices
  if gated/SwiGLU, 2 if a plain MLP), norms (RMSNorm: weight; LayerNorm: weight and bias), final norm and an
  untied LM head. Rotary embeddings and ALiBi have no parameters.
* :meth:`ModelSpec.weight_bytes` / :meth:`ModelSpec.layer_weight_bytes` -- bytes at a storage dtype
  (:data:`DTYPE_BYTES`), rounded up to a whole byte.
* :meth:`ModelSpec.kv_bytes_per_token` -- ``2 (K and V) * num_layers * num_kv_heads * head_dim * dtype
  bytes``: the KV-cache bytes one token of context occupies across all layers.

Shapes of the five profiled models match ``shared/profiles/h100/README.md``; parameter counts match the
Hugging Face checkpoints (see ``tests/test_llm.py``). Look models up with :func:`get_model` by short name
(``"llama3-8b"``) or Hugging Face id (``"meta-llama/Meta-Llama-3-8B"``), case- and punctuation-insensitive.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gpusched.errors import ConfigError, UnknownNameError

__all__ = ["DTYPE_BYTES", "ModelSpec", "MODELS", "get_model", "list_models"]

DTYPE_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
"""Bytes per element of each storage dtype."""

_NORMS = ("rmsnorm", "layernorm")


def _dtype_bytes(dtype: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer.

    Attributes:
        name: short name, e.g. ``"llama3-8b"``.
        hf_id: Hugging Face repository id, e.g. ``"meta-llama/Meta-Llama-3-8B"``.
        num_layers: transformer layers.
        hidden_size: model (residual stream) width.
        num_heads: query heads.
        num_kv_heads: key/value heads (< num_heads with grouped-query attention); divides num_heads.
        head_dim: width of one attention head.
        ffn_size: FFN intermediate width.
        vocab_size: token vocabulary (rows of the embedding matrix).
        ffn_gated: True for SwiGLU (gate, up, down: 3 matrices), False for a plain MLP (2 matrices:
            Bloom, OPT).
        tied_embeddings: the LM head shares the embedding matrix (no extra parameters).
        max_context_tokens: longest context the model was trained for, tokens.
        linear_bias: attention and FFN linears carry biases (Bloom, OPT).
        norm: ``"rmsnorm"`` (weight only) or ``"layernorm"`` (weight and bias).
        learned_position_tokens: rows of a learned position-embedding table (OPT: 2050); 0 for rotary or
            ALiBi models.
        embedding_norm: a norm right after the token embedding (Bloom's ``word_embeddings_layernorm``).
    """

    name: str
    hf_id: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    vocab_size: int
    ffn_gated: bool = True
    tied_embeddings: bool = False
    max_context_tokens: int = 4096
    linear_bias: bool = False
    norm: str = "rmsnorm"
    learned_position_tokens: int = 0
    embedding_norm: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"ModelSpec: name must be a non-empty string, got {self.name!r}")
        owner = f"ModelSpec {self.name!r}"
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_size",
                      "vocab_size", "max_context_tokens"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{owner}: {field} must be an int > 0, got {value!r}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ConfigError(
                f"{owner}: num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.norm not in _NORMS:
            raise ConfigError(f"{owner}: norm must be one of {_NORMS}, got {self.norm!r}")
        lp = self.learned_position_tokens
        if isinstance(lp, bool) or not isinstance(lp, int) or lp < 0:
            raise ConfigError(f"{owner}: learned_position_tokens must be an int >= 0, got {lp!r}")

    # ---- parameter counts -------------------------------------------------------------------------------

    @property
    def q_size(self) -> int:
        """Width of the query projection output: ``num_heads * head_dim``."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (and of the value) projection output: ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim

    def _norm_params(self) -> int:
        return self.hidden_size * (2 if self.norm == "layernorm" else 1)

    def attention_param_count(self) -> int:
        """Parameters of one layer's attention: q, k, v, o weights (and biases if ``linear_bias``)."""
        h = self.hidden_size
        n = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.linear_bias:
            n += self.q_size + 2 * self.kv_size + h
        return n

    def ffn_param_count(self) -> int:
        """Parameters of one layer's FFN: 3 matrices if gated, else 2 (and biases if ``linear_bias``)."""
        h, f = self.hidden_size, self.ffn_size
        n = (3 if self.ffn_gated else 2) * h * f
        if self.linear_bias:
            n += (2 * f if self.ffn_gated else f) + h
        return n

    def layer_param_count(self) -> int:
        """Parameters of one transformer layer: attention + FFN + its two norms."""
        return self.attention_param_count() + self.ffn_param_count() + 2 * self._norm_params()

    def embedding_param_count(self) -> int:
        """Parameters before the first layer: token embeddings, learned positions, embedding norm."""
        n = self.vocab_size * self.hidden_size + self.learned_position_tokens * self.hidden_size
        if self.embedding_norm:
            n += self._norm_params()
        return n

    def lm_head_param_count(self) -> int:
        """Parameters after the last layer: final norm and, if untied, the ``hidden x vocab`` LM head."""
        n = self._norm_params()
        if not self.tied_embeddings:
            n += self.vocab_size * self.hidden_size
        return n

    def param_count(self) -> int:
        """Total parameters of the checkpoint (tied embeddings counted once)."""
        return (self.embedding_param_count() + self.num_layers * self.layer_param_count()
                + self.lm_head_param_count())

    # ---- bytes ------------------------------------------------------------------------------------------

    def weight_bytes(self, dtype: str = "bf16") -> int:
        """Bytes of all weights stored as ``dtype`` (rounded up to a whole byte)."""
        return math.ceil(self.param_count() * _dtype_bytes(dtype))

    def layer_weight_bytes(self, dtype: str = "bf16") -> int:
        """Bytes of one transformer layer's weights stored as ``dtype`` (no embeddings, no LM head)."""
        return math.ceil(self.layer_param_count() * _dtype_bytes(dtype))

    def kv_bytes_per_token_per_layer(self, dtype: str = "bf16") -> int:
        """KV-cache bytes one token occupies in one layer: ``2 * num_kv_heads * head_dim * dtype bytes``."""
        return math.ceil(2 * self.kv_size * _dtype_bytes(dtype))

    def kv_bytes_per_token(self, dtype: str = "bf16") -> int:
        """KV-cache bytes one token of context occupies over all layers:
        ``2 * num_layers * num_kv_heads * head_dim * dtype bytes``."""
        return math.ceil(2 * self.num_layers * self.kv_size * _dtype_bytes(dtype))


# ---- catalogue ------------------------------------------------------------------------------------------

def _llama(name: str, hf_id: str, layers: int, hidden: int, heads: int, kv_heads: int, ffn: int,
           vocab: int, ctx: int, tied: bool = False) -> ModelSpec:
    return ModelSpec(name=name, hf_id=hf_id, num_layers=layers, hidden_size=hidden, num_heads=heads,
                     num_kv_heads=kv_heads, head_dim=hidden // heads, ffn_size=ffn, vocab_size=vocab,
                     max_context_tokens=ctx, tied_embeddings=tied)


def _opt(name: str, hf_id: str, layers: int, hidden: int, heads: int) -> ModelSpec:
    # OPT: plain ReLU MLP (4x), biases, LayerNorm, learned positions (2048 + 2 offset rows), tied head.
    return ModelSpec(name=name, hf_id=hf_id, num_layers=layers, hidden_size=hidden, num_heads=heads,
                     num_kv_heads=heads, head_dim=hidden // heads, ffn_size=4 * hidden, vocab_size=50272,
                     ffn_gated=False, tied_embeddings=True, max_context_tokens=2048, linear_bias=True,
                     norm="layernorm", learned_position_tokens=2050)


# (spec, extra aliases). The HF id, its last path segment and the short name are aliases automatically.
_CATALOGUE: list[tuple[ModelSpec, tuple[str, ...]]] = [
    (_llama("llama2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096), ()),
    (_llama("llama2-13b", "meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 13824, 32000, 4096), ()),
    (_llama("llama2-70b", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, 32000, 4096), ()),
    # LLaMA-1 "30B" (the 32.5B-parameter model Meta's paper calls 33B); Meta never hosted it on the Hub.
    (_llama("llama-30b", "huggyllama/llama-30b", 60, 6656, 52, 52, 17920, 32000, 2048),
     ("llama-33b", "llama1-30b", "llama-1-30b", "llama1-33b", "llama-1-33b")),
    (_llama("llama3-8b", "meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 14336, 128256, 8192), ()),
    (_llama("llama3.1-8b", "meta-llama/Llama-3.1-8B", 32, 4096, 32, 8, 14336, 128256, 131072),
     ("meta-llama/Meta-Llama-3.1-8B",)),
    (_llama("llama3-70b", "meta-llama/Meta-Llama-3-70B", 80, 8192, 64, 8, 28672, 128256, 8192), ()),
    (_llama("llama3.1-70b", "meta-llama/Llama-3.1-70B", 80, 8192, 64, 8, 28672, 128256, 131072),
     ("meta-llama/Meta-Llama-3.1-70B",)),
    (_llama("llama3.2-3b", "meta-llama/Llama-3.2-3B", 28, 3072, 24, 8, 8192, 128256, 131072, tied=True), ()),
    (_llama("mistral-7b", "mistralai/Mistral-7B-v0.1", 32, 4096, 32, 8, 14336, 32000, 32768),
     ("mistral-7b-v0.1",)),
    (ModelSpec(name="bloom-176b", hf_id="bigscience/bloom", num_layers=70, hidden_size=14336, num_heads=112,
               num_kv_heads=112, head_dim=128, ffn_size=4 * 14336, vocab_size=250880, ffn_gated=False,
               tied_embeddings=True, max_context_tokens=2048, linear_bias=True, norm="layernorm",
               embedding_norm=True),  # ALiBi positions: no position parameters
     ("bloom", "bloom176b")),
    (_opt("opt-13b", "facebook/opt-13b", 40, 5120, 40), ()),
    (_opt("opt-30b", "facebook/opt-30b", 48, 7168, 56), ()),
    (_opt("opt-66b", "facebook/opt-66b", 64, 9216, 72), ()),
    # OPT-175B weights are released by Meta on request (metaseq), not hosted on the Hub; the id is nominal.
    (_opt("opt-175b", "facebook/opt-175b", 96, 12288, 96), ()),
]

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec, _ in _CATALOGUE}
"""Short name -> :class:`ModelSpec`."""

# Suffixes of fine-tuned / packaging variants that share the base model's shape.
_VARIANT_SUFFIXES = ("hf", "chat", "instruct")


def _normalise(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    changed = True
    while changed:
        changed = False
        for suffix in _VARIANT_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                key = key[: -len(suffix)]
                changed = True
    if key.startswith("meta") and key != "meta":  # "Meta-Llama-3-8B" -> "llama38b"
        key = key[len("meta"):]
    return key


def _build_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for spec, extra in _CATALOGUE:
        for alias in (spec.name, spec.hf_id, spec.hf_id.rsplit("/", 1)[-1], *extra):
            for form in (alias, alias.rsplit("/", 1)[-1]):
                key = _normalise(form)
                if key in aliases and aliases[key] != spec.name:
                    raise AssertionError(f"model alias {form!r} maps to both {aliases[key]} and {spec.name}")
                aliases[key] = spec.name
    return aliases


_ALIASES: dict[str, str] = _build_aliases()


def list_models() -> list[str]:
    """Short names of the catalogued models, in catalogue order."""
    return list(MODELS)


def get_model(name: str) -> ModelSpec:
    """The :class:`ModelSpec` for ``name``: a short name (``"llama3-8b"``) or a Hugging Face id
    (``"meta-llama/Meta-Llama-3-8B"``, ``"meta-llama/Llama-2-7b-hf"``); case and punctuation are ignored,
    and ``-hf``/``-chat``/``-Instruct`` variants resolve to the base shape.

    Raises:
        UnknownNameError: no model under that name; the message lists the valid names.
    """
    if isinstance(name, ModelSpec):
        return name
    if isinstance(name, str):
        key = _normalise(name)
        if key in _ALIASES:
            return MODELS[_ALIASES[key]]
        key = _normalise(name.rsplit("/", 1)[-1])
        if key in _ALIASES:
            return MODELS[_ALIASES[key]]
    raise UnknownNameError(
        f"unknown model {name!r}; valid names: {', '.join(MODELS)} (Hugging Face ids of these are accepted "
        f"too; add a ModelSpec to gpusched.llm for a new shape)"
    )
