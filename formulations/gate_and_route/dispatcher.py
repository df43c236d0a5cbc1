"""Gate-and-Route's policies as cluster dispatchers of the serving engine (:class:`gpusched.policy.ClusterDispatcher`).

:class:`GateRouteDispatcher` wraps a :class:`~.protocol.GateRoutePolicy` -- the same gate, router and GPU roles
the exact stochastic model runs (:mod:`.stochastic`), one source of truth for the rules -- so that any engine
speaking the core protocol serves real traces with it: a request's class is its dispatcher queue, the class of
an arriving request comes from a classifier (:class:`PromptClassifier`: by prompt length, which is known at
arrival; the output length is not), and the GPU roles of the plan are the GPU modes.

:func:`fluid_model_from_trace` builds the :class:`~.model.FluidModel` of a trace on a step-time model: classes by
prompt-length quantiles (mean ``P_i`` and ``D_i`` of each), per-GPU rates from the trace's arrivals, and
Eq. (1)-(3) fitted on the step model (:func:`~.calibration.fit_iteration_time`).
"""
from __future__ import annotations

import math
from bisect import bisect_right
from typing import Callable, Sequence

import numpy as np

from gpusched.errors import ConfigError
from gpusched.policy import GPU_MODES, DispatchView, SeqState

from .calibration import fit_iteration_time
from .fluid import FluidSolution
from .model import FluidModel, RequestClass
from .protocol import GateRoutePolicy

__all__ = ["GateRouteDispatcher", "PromptClassifier", "fluid_model_from_trace"]


class PromptClassifier:
    """Class of a request by its prompt length: class ``i`` for ``boundaries[i-1] <= P < boundaries[i]``.

    Args:
        boundaries_tokens: increasing prompt lengths (tokens) between consecutive classes; ``I - 1`` of them.
    """

    def __init__(self, boundaries_tokens: Sequence[float]):
        self.boundaries = tuple(float(b) for b in boundaries_tokens)
        if any(not math.isfinite(b) for b in self.boundaries) or list(self.boundaries) != sorted(set(self.boundaries)):
            raise ConfigError(f"boundaries_tokens = {boundaries_tokens!r} must be finite and strictly increasing")

    @classmethod
    def nearest(cls, model: FluidModel) -> "PromptClassifier":
        """The class whose ``P_i`` is nearest in log scale: boundaries at geometric means of sorted ``P``
        (classes must be indexed by increasing ``P``)."""
        P = model.prompt_tokens
        if np.any(np.diff(P) <= 0):
            raise ConfigError(f"classes' prompt lengths {P.tolist()} must increase with the class index to be told "
                              f"apart by prompt length")
        return cls(np.sqrt(P[:-1] * P[1:]).tolist())

    @property
    def num_classes(self) -> int:
        return len(self.boundaries) + 1

    def __call__(self, request: SeqState) -> int:
        return bisect_right(self.boundaries, request.prompt_tokens)


class _AsClusterView:
    """The core :class:`~gpusched.policy.DispatchView` read as this package's :class:`~.protocol.ClusterView`
    (GPU modes are the policy's roles: the same strings)."""

    __slots__ = ("_v",)

    def __init__(self, view: DispatchView):
        self._v = view

    num_gpus = property(lambda self: self._v.num_gpus)
    roles = property(lambda self: self._v.modes)
    waiting = property(lambda self: self._v.waiting)
    prefilling = property(lambda self: self._v.prefilling)
    oldest_waiting_s = property(lambda self: self._v.oldest_waiting_s)

    def free_decode_gpus(self, role: str):
        return self._v.free_decode_gpus(role)


class GateRouteDispatcher:
    """A :class:`~.protocol.GateRoutePolicy` as a :class:`gpusched.policy.ClusterDispatcher`.

    Args:
        policy: from :func:`~.policies.make_policy` (its roles fix the cluster size and the GPU modes).
        model: the fluid model the plan was solved on (``B = max_decodes``, ``C = chunk_tokens``, classes).
        classify: ``f(request) -> class index``; default :meth:`PromptClassifier.nearest` of ``model``.
        solution: the plan, kept for reports (optional).
    """

    def __init__(self, policy: GateRoutePolicy, model: FluidModel,
                 classify: Callable[[SeqState], int] | None = None, solution: FluidSolution | None = None):
        if not isinstance(policy, GateRoutePolicy):
            raise ConfigError(f"policy must be a GateRoutePolicy (make_policy), got {type(policy).__name__}")
        self.policy, self.model, self.solution = policy, model, solution
        self.classify = classify if classify is not None else PromptClassifier.nearest(model)
        self.name = policy.name
        self.num_queues = model.num_classes
        self.max_decodes = model.max_decodes
        self.chunk_tokens = model.chunk_tokens
        self.prefill_first = policy.prefill_first
        assert set(policy.roles) <= set(GPU_MODES)  # the policy's roles are the core's modes

    def gpu_modes(self, num_gpus: int):
        if num_gpus != self.policy.num_gpus:
            raise ConfigError(f"policy {self.name!r} was planned for {self.policy.num_gpus} GPUs, the engine has "
                              f"{num_gpus}; build it with num_gpus={num_gpus}")
        return self.policy.roles

    def on_arrival(self, request: SeqState, view: DispatchView) -> int:
        c = int(self.classify(request))
        if not 0 <= c < self.num_queues:
            raise ConfigError(f"classifier put request {request.request_id!r} in class {c}; classes are "
                              f"0..{self.num_queues - 1}")
        return c  # the paper's policies never reject: the gate holds (and unplanned classes wait to abandon)

    def choose_prefill(self, view: DispatchView, gpu: int) -> int | None:
        return self.policy.admit(_AsClusterView(view), gpu)

    def route_decode(self, view: DispatchView, request: SeqState, queue: int, from_gpu: int) -> int | str:
        return self.policy.route_decode(_AsClusterView(view), queue, from_gpu)

    def pull_decode(self, view: DispatchView, gpu: int) -> str | None:
        return self.policy.pull_decode(_AsClusterView(view), gpu)

    def abandon_rate_per_s(self, request: SeqState) -> float:
        """``theta`` of the request's class (for the engine's patience model)."""
        return float(self.model.classes[int(self.classify(request))].abandon_rate)


def fluid_model_from_trace(trace, step_model, num_gpus: int, max_decodes: int = 16, chunk_tokens: int = 256,
                           abandon_rate_per_s: float = 0.1, num_classes: int = 2, price_prefill: float = 0.1,
                           price_decode: float = 0.2, context_tokens: int = 1024
                           ) -> tuple[FluidModel, PromptClassifier]:
    """The fluid model of ``trace`` served by ``num_gpus`` GPUs of ``step_model``, and its classifier.

    Classes split the prompt lengths at their ``1/I, ..., (I-1)/I`` quantiles; class ``i`` has the mean prompt
    and output of its requests and arrival rate ``count_i / (duration * num_gpus)`` per GPU-second, where
    ``duration`` is the trace's arrival span (s); ``theta_i = abandon_rate_per_s``. ``tau`` and ``gamma`` come from
    Eq. (1)-(3) fitted on ``step_model`` at ``B = max_decodes`` and decode context ``context_tokens``.
    """
    df = trace.df
    if len(df) < 2:
        raise ConfigError(f"the trace has {len(df)} request(s); a rate needs at least 2")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes = {num_classes!r} must be an integer >= 1")
    t = df["arrival_time_s"].to_numpy(float)
    span = float(t.max() - t.min())
    if span <= 0:
        raise ConfigError("every request of the trace arrives at the same time; a rate needs a time span")
    P = df["prompt_tokens"].to_numpy(float)
    D = df["output_tokens"].to_numpy(float)
    bounds = sorted(set(float(np.quantile(P, q / num_classes)) for q in range(1, num_classes)))
    classify = PromptClassifier(bounds)
    cls = np.array([bisect_right(classify.boundaries, p) for p in P])
    classes = []
    for i in range(classify.num_classes):
        sel = cls == i
        if not sel.any():
            raise ConfigError(f"prompt-length class {i} of {classify.num_classes} is empty; use fewer classes")
        classes.append(RequestClass(float(P[sel].mean()), float(D[sel].mean()),
                                    float(sel.sum()) / (span * num_gpus), abandon_rate_per_s))
    fit = fit_iteration_time(step_model, max_decodes, context_tokens)
    return fit.fluid_model(classes, chunk_tokens, price_prefill, price_decode), classify
