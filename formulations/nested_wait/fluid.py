"""The fluid model of continuous batching under a KV-memory limit (spec ``shared/papers/nested_wait.md`` §1-2).

Ao, Luo, Simchi-Levi, Wang, "Optimizing LLM Inference: Fluid-Guided Online Scheduling with Memory Constraints"
(arXiv 2504.11320), §2-3 of the latest text.

Model [P §2]. Type ``j`` arrives as a Poisson process of rate ``lambda_j`` (req/s), has ``l_j`` prefill tokens and
needs ``l'_j`` decode iterations after its prefill, so it is processed at stages ``s = 0 .. l'_j`` (``s = 0`` is the
prefill) and holds ``l_j + s`` KV tokens at stage ``s``. An iteration over batch ``B`` lasts (eq. 1)

    tau(B) = d0 + d1 * sum_{i in B} (l_i + s_i)        [seconds; the sum counts KV tokens, not requests]

Fluid equilibrium [P §3, eqs. 7-10]. With ``w_j = (l'_j + 1)(l_j + l'_j / 2)`` (KV token-iterations of one type-j
prompt over its ``l'_j + 1`` stages) and ``n*_j`` type-j prompts at *each* stage:

    M*  = sum_j n*_j w_j                                  (7)
    n*_j = lambda_j * DeltaT*                             (flow balance)
    M*  = d0 L / (1 - d1 L),  L = sum_j lambda_j w_j      (8)
    DeltaT* = d0 + d1 M* = d0 / (1 - d1 L)                (9)
    Throughput* = sum_j lambda_j l'_j  (decode tokens/s)  (10)

The fluid exists iff ``d1 L < 1``; at or above it every policy has latency growing with the horizon (the paper's
instability proposition). The stability region with a KV capacity ``C`` is ``{lambda : M*(lambda) <= C}``, which
is the half-space ``L <= C / (d0 + d1 C)`` ([R][V] in the spec, reproducing the paper's LMSYS crossing at 74.1
req/s; test T3).

Overload benchmark (**ours, not in the paper**, spec §2 [R]): admit fluid rates ``r <= lambda`` maximising decode
throughput inside the stability half-space,

    max sum_j r_j l'_j   s.t.   sum_j r_j w_j <= C / (d0 + d1 C),   0 <= r <= lambda,

a fractional knapsack by ``l'_j / w_j`` (short prompts first), solved on HiGHS (:func:`overload_benchmark`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gpusched.errors import ConfigError
from gpusched.solve import SolveResult, solve_highs_lp

__all__ = ["PromptType", "stage_count", "FluidEquilibrium", "FluidInstabilityError", "fluid_equilibrium", "workload_load",
           "stability_load_limit", "in_stability_region", "max_stable_scale", "OverloadBenchmark",
           "overload_benchmark"]


class FluidInstabilityError(ConfigError):
    """The arrival rates lie outside the fluid's stability condition (``d1 sum lambda w >= 1``) or, when a KV
    capacity is given, outside the stability region (``M* > C``)."""


def _finite(name: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} = {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ConfigError(f"{name} = {value!r} must be a finite number {'>' if strict else '>='} {minimum:g}")
    return value


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} = {value!r} is not an integer (token and iteration counts are integers)")
    if value < minimum:
        raise ConfigError(f"{name} = {value} is below {minimum}")
    return int(value)


@dataclass(frozen=True)
class PromptType:
    """One prompt type of the fluid model [P §2].

    prefill_tokens : ``l_j``, tokens prefilled at stage 0 (>= 1).
    decode_tokens : ``l'_j``, decode iterations after the prefill (>= 0); the type is processed at stages
        ``0 .. l'_j``. In the serving engine a request with ``o`` output tokens has ``l' = o - 1``: its prefill
        step samples the first token (see :mod:`.policy`).
    rate_per_s : ``lambda_j``, Poisson arrival rate in requests per second (> 0).
    name : a label for tables.
    """

    prefill_tokens: int
    decode_tokens: int
    rate_per_s: float
    name: str = ""

    def __post_init__(self):
        object.__setattr__(self, "prefill_tokens", _count("PromptType.prefill_tokens", self.prefill_tokens, 1))
        object.__setattr__(self, "decode_tokens", _count("PromptType.decode_tokens", self.decode_tokens, 0))
        object.__setattr__(self, "rate_per_s", _finite("PromptType.rate_per_s", self.rate_per_s, strict=True))

    @property
    def stages(self) -> int:
        """``l'_j + 1``: iterations one prompt of this type takes (prefill + decodes)."""
        return self.decode_tokens + 1

    @property
    def kv_token_iterations(self) -> float:
        """``w_j = (l'_j + 1)(l_j + l'_j / 2)``: KV tokens summed over the prompt's stages (token-iterations)."""
        return self.stages * (self.prefill_tokens + self.decode_tokens / 2)

    @property
    def peak_tokens(self) -> int:
        """KV tokens held at the last stage, ``l_j + l'_j``."""
        return self.prefill_tokens + self.decode_tokens

    def scaled(self, factor: float) -> "PromptType":
        """The same type at ``factor`` times the arrival rate."""
        return PromptType(self.prefill_tokens, self.decode_tokens, self.rate_per_s * factor, self.name)


def stage_count(prefill_tokens: int, decode_tokens: int, prefill_chunk_tokens: int | None = None) -> int:
    """Iterations of one prompt: ``l' + 1``, or ``ceil(l / chunk) + l'`` when its prefill is split into chunks of
    ``prefill_chunk_tokens`` (the paper's real-GPU runs: chunk 384, spec §5a and test T10)."""
    l = _count("prefill_tokens", prefill_tokens, 1)
    d = _count("decode_tokens", decode_tokens, 0)
    if prefill_chunk_tokens is None:
        return d + 1
    return -(-l // _count("prefill_chunk_tokens", prefill_chunk_tokens, 1)) + d


def _types(types: Sequence[PromptType]) -> tuple[PromptType, ...]:
    types = tuple(types)
    if not types:
        raise ConfigError("no prompt types given; pass at least one PromptType")
    for i, t in enumerate(types):
        if not isinstance(t, PromptType):
            raise ConfigError(f"types[{i}] = {t!r} is not a PromptType")
    return types


def _time_model(d0_s, d1_s_per_token) -> tuple[float, float]:
    return (_finite("d0_s", d0_s), _finite("d1_s_per_token", d1_s_per_token))


def workload_load(types: Sequence[PromptType]) -> float:
    """``L = sum_j lambda_j w_j``: KV token-iterations offered per second."""
    return float(sum(t.rate_per_s * t.kv_token_iterations for t in _types(types)))


@dataclass(frozen=True)
class FluidEquilibrium:
    """The fluid equilibrium of eqs. (7)-(10) for ``types`` under ``tau = d0 + d1 x tokens``.

    memory_tokens : ``M*`` (7)/(8), KV tokens resident in equilibrium.
    iteration_s : ``DeltaT*`` (9), seconds per iteration.
    per_stage : ``n*_j = lambda_j DeltaT*``, prompts of type j at each of its stages (one entry per type).
    throughput_tokens_per_s : ``Throughput*`` (10), decode tokens per second of completed prompts.
    load : ``L = sum_j lambda_j w_j`` (token-iterations per second); ``d1 * load < 1`` always holds here.
    """

    types: tuple[PromptType, ...]
    d0_s: float
    d1_s_per_token: float
    memory_tokens: float
    iteration_s: float
    per_stage: tuple[float, ...]
    throughput_tokens_per_s: float
    load: float

    @property
    def in_flight(self) -> float:
        """Prompts resident in equilibrium, ``sum_j n*_j (l'_j + 1)`` (Little's law over the stages)."""
        return float(sum(n * t.stages for n, t in zip(self.per_stage, self.types)))

    def fits(self, capacity_tokens: float) -> bool:
        """``M* <= C``: the rates lie in the stability region of capacity ``C``."""
        return self.memory_tokens <= capacity_tokens


def fluid_equilibrium(types: Sequence[PromptType], d0_s: float, d1_s_per_token: float,
                      capacity_tokens: float | None = None) -> FluidEquilibrium:
    """The fluid equilibrium (eqs. 7-10). Raises :class:`FluidInstabilityError` if ``d1 L >= 1`` (no equilibrium:
    the instability proposition), or if ``capacity_tokens`` is given and ``M* > C`` (outside the stability
    region); the message gives the largest rate factor that is still inside."""
    types = _types(types)
    d0, d1 = _time_model(d0_s, d1_s_per_token)
    load = workload_load(types)
    if d1 * load >= 1:
        raise FluidInstabilityError(
            f"d1 x sum_j lambda_j w_j = {d1:.6g} s/token x {load:.6g} token-iterations/s = {d1 * load:.6g} >= 1: "
            f"the decode work alone exceeds the server (eq. 8 has no positive solution), so every policy's latency "
            f"grows with the horizon. Scale the rates below {1 / (d1 * load):.6g}x")
    iteration = d0 / (1 - d1 * load)
    memory = d0 * load / (1 - d1 * load)
    if capacity_tokens is not None:
        cap = _finite("capacity_tokens", capacity_tokens, strict=True)
        if memory > cap:
            raise FluidInstabilityError(
                f"M* = {memory:.6g} KV tokens > C = {cap:.6g}: outside the stability region (M* <= C); the largest "
                f"stable rate factor in this direction is {max_stable_scale(types, d0, d1, cap):.6g}x")
    return FluidEquilibrium(types, d0, d1, memory, iteration, tuple(t.rate_per_s * iteration for t in types),
                            float(sum(t.rate_per_s * t.decode_tokens for t in types)), load)


def stability_load_limit(d0_s: float, d1_s_per_token: float, capacity_tokens: float) -> float:
    """``C / (d0 + d1 C)``: the largest ``L = sum lambda_j w_j`` with ``M* <= C`` (token-iterations/s)."""
    d0, d1 = _time_model(d0_s, d1_s_per_token)
    cap = _finite("capacity_tokens", capacity_tokens, strict=True)
    if d0 + d1 * cap == 0:
        raise ConfigError("d0_s and d1_s_per_token are both 0: iterations take no time and nothing is limited")
    return cap / (d0 + d1 * cap)


def in_stability_region(types: Sequence[PromptType], d0_s: float, d1_s_per_token: float,
                        capacity_tokens: float) -> bool:
    """Whether ``M*(lambda) <= C`` (the half-space ``L <= C / (d0 + d1 C)``)."""
    return workload_load(types) <= stability_load_limit(d0_s, d1_s_per_token, capacity_tokens)


def max_stable_scale(types: Sequence[PromptType], d0_s: float, d1_s_per_token: float,
                     capacity_tokens: float) -> float:
    """The largest factor ``a`` such that the rates ``a * lambda`` stay in the stability region."""
    return stability_load_limit(d0_s, d1_s_per_token, capacity_tokens) / workload_load(types)


@dataclass(frozen=True)
class OverloadBenchmark:
    """Our overload reference (**not in the paper**): the throughput-maximising admitted fluid rates.

    admitted_rates_per_s : ``r_j`` (one per type); throughput_tokens_per_s : ``sum_j r_j l'_j``;
    load_limit : ``C / (d0 + d1 C)``; solve : the HiGHS :class:`~gpusched.solve.SolveResult` (status, objective,
    solve time, gap).
    """

    types: tuple[PromptType, ...]
    admitted_rates_per_s: tuple[float, ...]
    throughput_tokens_per_s: float
    load_limit: float
    solve: SolveResult = field(repr=False)

    @property
    def admitted_fraction(self) -> tuple[float, ...]:
        return tuple(r / t.rate_per_s for r, t in zip(self.admitted_rates_per_s, self.types))


def overload_benchmark(types: Sequence[PromptType], d0_s: float, d1_s_per_token: float, capacity_tokens: float,
                       time_limit_s: float = 10.0) -> OverloadBenchmark:
    """Solve our overload LP ``max sum r_j l'_j s.t. sum r_j w_j <= C/(d0 + d1 C), 0 <= r <= lambda`` on HiGHS.

    Labelled as ours (spec §2 [R]): the paper studies overload only empirically. Inside the stability region
    the answer is ``r = lambda`` and the paper's Throughput* (10).
    """
    types = _types(types)
    limit = stability_load_limit(d0_s, d1_s_per_token, capacity_tokens)
    res = solve_highs_lp(c=[t.decode_tokens for t in types], A_ub=[[t.kv_token_iterations for t in types]],
                         b_ub=[limit], bounds=(np.zeros(len(types)), [t.rate_per_s for t in types]), maximize=True,
                         time_limit_s=time_limit_s, var_names=[f"r_{j}" for j in range(len(types))])
    rates = tuple(float(v) for v in res.x)
    return OverloadBenchmark(types, rates, float(res.objective), limit, res)
