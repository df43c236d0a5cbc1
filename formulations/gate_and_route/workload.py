"""The paper's model on the serving engine: its iteration-time law as a step-time model, and its arrivals as a trace.

* :class:`IterationLawStepTime` -- Eq. (1) as a :class:`gpusched.perf.StepTimeModel`: a step carrying ``b'``
  tokens (prefill chunk tokens plus one per decode) lasts ``c + a max(0, b' - b0)`` seconds, with ``c = 1/gamma``,
  ``a = beta``, ``b0 = (c - alpha) / beta`` (so that ``alpha = c - a b0``, Eq. (3)); decode-only steps of at most
  ``b0`` sequences last ``1/gamma`` (Eq. (2)). Context length does not matter, as in the paper.
* :func:`class_trace` -- Poisson arrivals of rate ``n lambda_i`` per class (spec §1), prompts of ``P_i`` tokens,
  outputs of mean ``D_i`` tokens: geometric (the token-level counterpart of the exponential decode service) or
  fixed. The request's class is in its id (``"c<i>-<k>"``).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError
from gpusched.trace import Trace

from .calibration import IterationTimeFit
from .model import FluidModel

__all__ = ["IterationLawStepTime", "class_trace", "OUTPUTS"]

OUTPUTS = ("geometric", "fixed")


class IterationLawStepTime:
    """Eq. (1)-(3) of the paper as a step-time model (module docstring). ``fit``: alpha, beta, gamma."""

    def __init__(self, fit: IterationTimeFit):
        self.c_s = 1.0 / fit.gamma_tokens_per_s
        self.a_s_per_token = fit.beta_s_per_token
        self.b0_tokens = (self.c_s - fit.alpha_s) / fit.beta_s_per_token
        if not (self.a_s_per_token > 0 and self.b0_tokens >= 0):
            raise ConfigError(f"fit alpha = {fit.alpha_s}, beta = {fit.beta_s_per_token}, gamma = "
                              f"{fit.gamma_tokens_per_s} gives b0 = {self.b0_tokens}; Eq. (1) needs beta > 0 and "
                              f"alpha <= 1/gamma")

    def step_time_s(self, prefill_lens: Sequence[int] = (), decode_contexts: Sequence[int] = (),
                    prefill_cached: Sequence[int] | None = None, num_sampled: int | None = None) -> float:
        b = sum(prefill_lens) + len(decode_contexts)
        if b == 0:
            return 0.0
        return self.c_s + self.a_s_per_token * max(0.0, b - self.b0_tokens)


def class_trace(model: FluidModel, num_gpus: int, horizon_s: float, seed: int = 0,
                output: str = "geometric") -> Trace:
    """Arrivals of ``model``'s classes on ``num_gpus`` GPUs over ``[0, horizon_s)`` (module docstring)."""
    if output not in OUTPUTS:
        raise ConfigError(f"output = {output!r}; choose one of {OUTPUTS}")
    if not (isinstance(horizon_s, (int, float)) and math.isfinite(horizon_s) and horizon_s > 0):
        raise ConfigError(f"horizon_s = {horizon_s!r} must be a finite number > 0")
    rng = np.random.default_rng(seed)
    rows = []
    for i, c in enumerate(model.classes):
        rate = c.arrival_rate * num_gpus
        k = rng.poisson(rate * horizon_s)
        t = np.sort(rng.uniform(0.0, horizon_s, size=k))  # a Poisson process given its count
        P = max(1, int(round(c.prompt_tokens)))
        if output == "geometric":
            D = rng.geometric(1.0 / c.decode_tokens, size=k) if c.decode_tokens > 1 else np.ones(k, int)
        else:
            D = np.full(k, max(1, int(round(c.decode_tokens))))
        rows.append(pd.DataFrame({"request_id": [f"c{i}-{j}" for j in range(k)], "arrival_time_s": t,
                                  "prompt_tokens": P, "output_tokens": D.astype(int)}))
    df = pd.concat(rows, ignore_index=True).sort_values(["arrival_time_s", "request_id"], kind="stable",
                                                        ignore_index=True)
    return Trace(df, name=f"gate-and-route-{model.num_classes}-classes", source="synthetic",
                 meta={"num_gpus": num_gpus, "horizon_s": horizon_s, "seed": seed, "output": output})


def engine_prefill_times_s(model: FluidModel, step_model, context_tokens: int = 0) -> np.ndarray:
    """Seconds a class-``i`` prefill of ``P_i`` tokens (rounded) takes on ``step_model`` in chunks of ``C`` beside
    ``B - 1`` decodes at context ``context_tokens``: the engine's ``1 / mu_p,i`` ((I,) array). Chunking rounds up,
    so it exceeds the fluid ``P_i tau / C`` when ``P_i`` is not a multiple of ``C`` (the last chunk is a step too)."""
    B, C = model.max_decodes, model.chunk_tokens
    out = []
    for c in model.classes:
        left, t = max(1, int(round(c.prompt_tokens))), 0.0
        while left > 0:
            chunk = min(C, left)
            t += float(step_model.step_time_s([chunk], [context_tokens] * (B - 1)))
            left -= chunk
        out.append(t)
    return np.array(out)


def engine_timed_policy(solution, step_model, num_gpus: int, seed: int = 0, context_tokens: int = 0):
    """Gate-and-Route whose plan counts prefill time as the engine spends it ([R], not the paper's rule): class
    ``i``'s planned prefill occupancy is its LP throughput ``mu_p,i x_i*`` times the engine's prefill time
    (:func:`engine_prefill_times_s`), ``M = ceil(n * sum)`` GPUs are mixed, and the occupancy gate targets those
    occupancies. The fluid plan assumes ``P_i tau / C`` per prefill; on a chunked engine it under-provisions the
    mixed pool once ``n`` is large enough for ``ceil`` to stop adding slack."""
    from .gates import OccupancyGate
    from .policies import static_plan
    from .protocol import MIXED, SOLO, GateRoutePolicy
    from .routers import GreedyRouter

    model = solution.model
    x_engine = solution.x * model.mu_prefill * engine_prefill_times_s(model, step_model, context_tokens)
    return GateRoutePolicy("gate-and-route-engine-timed", static_plan(float(x_engine.sum()), num_gpus),
                           OccupancyGate(x_engine, solution.q_prefill, num_gpus), GreedyRouter((SOLO, MIXED), seed))
