"""MC-SF's discrete-time model (Jaillet et al., arXiv 2502.07115, §1(a) of ``shared/papers/mcsf.md``).

One worker whose KV cache holds ``memory`` tokens; time is in rounds (one batch = one round). Request ``i``
arrives at round ``a_i`` with a prompt of ``s_i`` tokens and produces ``o_i`` output tokens. Started at
``p_i >= a_i`` it is in every batch until it completes at ``c_i = p_i + o_i`` (non-preemptive); at round
``t`` in ``p_i+1 .. p_i+o_i`` it holds ``s_i + (t - p_i)`` tokens. A request starting at ``t`` does not count
at ``t``. Feasibility: ``sum_{i: p_i < t <= p_i+o_i} (s_i + t - p_i) <= M`` for every ``t``. Objective: total
end-to-end latency ``TEL = sum_i (p_i + o_i - a_i)`` (eq. (1) of the hindsight IP).

Convention (spec §1(g).1): this is the theory/synthetic convention (``o`` rounds, peak ``s + o``); the
real-data variant in :mod:`.realdata` uses the authors' real-data convention (``o + 1`` iterations).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gpusched.errors import ConfigError, DoesNotFitError

__all__ = ["Instance", "Schedule", "InfeasibleScheduleError", "memory_profile", "schedule_violations",
           "check_schedule", "identical_classes", "MAX_HORIZON_ROUNDS", "MAX_MEMORY_TOKENS"]

#: The largest serial horizon ``T = max_i a_i + sum_i o_i`` (rounds) an instance may have. Everything here is
#: time-indexed: the hindsight IP has a memory row per round up to ``T`` (and up to ``n T`` start columns), a
#: memory profile is an array of ``T`` rounds, and the online algorithms run one batch per round. At 10**7
#: rounds a profile is 80 MB per array and a Python batch loop takes minutes; far beyond, a single output
#: of 2**40 tokens would never return. The paper's instances have ``T`` of a few thousand rounds.
MAX_HORIZON_ROUNDS = 10**7
#: The largest KV capacity ``M`` (tokens). An H100 holds ~10**6 tokens of a 8B model; this bound keeps every
#: memory sum over up to ``MAX_HORIZON_ROUNDS`` requests inside int64 and every coefficient exact in float64.
MAX_MEMORY_TOKENS = 2**32


class InfeasibleScheduleError(ConfigError):
    """A schedule that breaks the model: starts before arrival, wrong length, or memory above ``M``."""


def _bounded_int(label: str, v, minimum: int, maximum: int, why: str) -> int:
    """``v`` as a Python int in ``[minimum, maximum]`` (an integral float accepted), or a ConfigError."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        else:
            raise ConfigError(f"{label} = {v!r} is not an integer; the MC-SF model counts rounds and tokens in "
                              f"integers")
    if v < minimum:
        raise ConfigError(f"{label} = {v} is below the minimum {minimum}")
    if v > maximum:
        raise ConfigError(f"{label} = {v} is above {maximum:,}, {why}")
    return int(v)


def _int_tuple(name: str, values: Sequence[int], minimum: int, maximum: int, why: str) -> tuple[int, ...]:
    """``values`` as a tuple of bounded ints (see :func:`_bounded_int`), one per request."""
    if isinstance(values, (str, bytes, dict, set)) or not hasattr(values, "__len__") \
            or not hasattr(values, "__iter__"):
        hint = f" (for one request pass ({values!r},))" if isinstance(values, (int, float)) else ""
        raise ConfigError(f"{name} must be a sequence of integers, one per request (a list, tuple or array); got "
                          f"{type(values).__name__} {values!r:.60}{hint}")
    return tuple(_bounded_int(f"{name}[{i}]", v, minimum, maximum, why) for i, v in enumerate(values))


@dataclass(frozen=True)
class Instance:
    """A set of requests on one worker (all integers).

    Attributes:
        arrival: (n,) arrival rounds ``a_i >= 0``.
        prompt: (n,) prompt sizes ``s_i >= 0`` in tokens.
        output: (n,) true output lengths ``o_i >= 1`` in tokens (= rounds of processing).
        memory: KV capacity ``M`` in tokens.
        predicted_output: (n,) predictions ``õ_i >= 1`` used by the online algorithms, or ``None`` for
            exact predictions (``õ = o``). The paper's guarantee assumes ``õ_i >= o_i``.

    Raises :class:`~gpusched.errors.ConfigError` unless each of ``arrival``, ``prompt``, ``output`` (and
    ``predicted_output``) is a sequence of integers (integral floats accepted) of the same length, with
    ``M <=`` :data:`MAX_MEMORY_TOKENS` and the serial horizon ``max a + sum o <=`` :data:`MAX_HORIZON_ROUNDS`
    (checked on Python integers, before any array is built). An empty instance (``n = 0``) is valid.
    Raises :class:`~gpusched.errors.DoesNotFitError` if a request could never run alone
    (``s_i + o_i > M``) or could never pass MC-SF's check (``s_i + õ_i > M``, spec §1(g).10): a literal
    MC-SF loop would otherwise wait for it forever.
    """

    arrival: tuple[int, ...]
    prompt: tuple[int, ...]
    output: tuple[int, ...]
    memory: int
    predicted_output: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        horizon = "the longest horizon the time-indexed model takes (MAX_HORIZON_ROUNDS)"
        tokens = "the largest KV capacity the model takes (MAX_MEMORY_TOKENS)"
        m = _bounded_int("memory", self.memory, 1, MAX_MEMORY_TOKENS, tokens)
        a = _int_tuple("arrival", self.arrival, 0, MAX_HORIZON_ROUNDS, horizon)
        s = _int_tuple("prompt", self.prompt, 0, MAX_MEMORY_TOKENS, tokens)
        o = _int_tuple("output", self.output, 1, MAX_HORIZON_ROUNDS, horizon)
        if not (len(a) == len(s) == len(o)):
            raise ConfigError(f"arrival, prompt and output must have the same length, got {len(a)}, {len(s)}, "
                              f"{len(o)}")
        T = (max(a) if a else 0) + sum(o)
        if T > MAX_HORIZON_ROUNDS:
            raise ConfigError(f"the serial horizon T = max(arrival) + sum(output) = {T:,} rounds is above "
                              f"MAX_HORIZON_ROUNDS = {MAX_HORIZON_ROUNDS:,}: the time-indexed model (one memory "
                              f"row per round) would not fit in memory or time; scale the instance down (e.g. "
                              f"count outputs in blocks of tokens) or split it")
        object.__setattr__(self, "arrival", a)
        object.__setattr__(self, "prompt", s)
        object.__setattr__(self, "output", o)
        object.__setattr__(self, "memory", m)
        if self.predicted_output is not None:
            p = _int_tuple("predicted_output", self.predicted_output, 1, MAX_MEMORY_TOKENS, tokens)
            if len(p) != len(o):
                raise ConfigError(f"predicted_output has {len(p)} entries, expected {len(o)}")
            object.__setattr__(self, "predicted_output", p)
        for i in range(len(o)):
            if s[i] + o[i] > m:
                raise DoesNotFitError(
                    f"request {i} needs s+o = {s[i]}+{o[i]} = {s[i] + o[i]} tokens at its last round but M = {m}; "
                    f"no schedule can serve it: raise memory or drop/truncate the request")
            if self.predicted_output is not None and s[i] + self.predicted_output[i] > m:
                raise DoesNotFitError(
                    f"request {i} has predicted s+õ = {s[i]}+{self.predicted_output[i]} > M = {m}; MC-SF's "
                    f"future check would never admit it: cap the prediction at M - s = {m - s[i]}")

    @classmethod
    def from_requests(cls, requests: Sequence[tuple[int, int, int]], memory: int,
                      predicted_output: Sequence[int] | None = None) -> "Instance":
        """Build from ``(a, s, o)`` triples, the notation of the spec's test table."""
        reqs = list(requests)
        return cls(tuple(r[0] for r in reqs), tuple(r[1] for r in reqs), tuple(r[2] for r in reqs), memory,
                   None if predicted_output is None else tuple(predicted_output))

    @property
    def n(self) -> int:
        return len(self.output)

    @property
    def predicted(self) -> tuple[int, ...]:
        """``õ``: the predictions, or the true lengths when none were given."""
        return self.predicted_output if self.predicted_output is not None else self.output

    def with_memory(self, memory: int) -> "Instance":
        return Instance(self.arrival, self.prompt, self.output, memory, self.predicted_output)

    def serial_horizon(self) -> int:
        """``T = max_i a_i + sum_i o_i``: the spec's IP horizon, long enough for a serial schedule."""
        return (max(self.arrival) if self.n else 0) + sum(self.output)


def identical_classes(instance: Instance) -> tuple[np.ndarray, np.ndarray]:
    """Classes of requests with the same ``(a, s, o)``: ``(first member of each class, class of each request)``.

    Classes are numbered in order of their first member, so the numbering is deterministic.
    """
    key = {}
    cls = np.empty(instance.n, dtype=np.int64)
    for i, k in enumerate(zip(instance.arrival, instance.prompt, instance.output)):
        cls[i] = key.setdefault(k, len(key))
    first = np.unique(cls, return_index=True)[1]
    return first, cls


def memory_profile(instance: Instance, start: Sequence[int]) -> np.ndarray:
    """Tokens held at each round ``t = 0 .. max_i (p_i + o_i)``: ``sum_{p_i < t <= p_i+o_i} (s_i + t - p_i)``.

    Returns an int64 array of length ``makespan + 1`` (memory at ``t = 0`` is always 0).
    """
    p = np.asarray(start, dtype=np.int64)
    s = np.asarray(instance.prompt, dtype=np.int64)
    o = np.asarray(instance.output, dtype=np.int64)
    if p.size == 0:
        return np.zeros(1, dtype=np.int64)
    end = p + o
    T = int(end.max())
    # memory(t) = sum_active (s_i - p_i) + t * (#active); both are step functions -> difference arrays.
    d_const = np.zeros(T + 2, dtype=np.int64)
    d_cnt = np.zeros(T + 2, dtype=np.int64)
    np.add.at(d_const, p + 1, s - p)
    np.add.at(d_const, end + 1, -(s - p))
    np.add.at(d_cnt, p + 1, 1)
    np.add.at(d_cnt, end + 1, -1)
    const = np.cumsum(d_const)[: T + 1]
    cnt = np.cumsum(d_cnt)[: T + 1]
    return const + np.arange(T + 1, dtype=np.int64) * cnt


def schedule_violations(instance: Instance, start: Sequence[int]) -> list[str]:
    """Every way ``start`` breaks the model, as messages (empty list = feasible)."""
    start = list(start)
    msgs = []
    if len(start) != instance.n:
        return [f"schedule has {len(start)} start times for {instance.n} requests"]
    for i, (p, a) in enumerate(zip(start, instance.arrival)):
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            msgs.append(f"request {i}: start {p!r} is not an integer round")
        elif p < a:
            msgs.append(f"request {i}: starts at round {p} before its arrival {a}")
    if msgs:
        return msgs
    prof = memory_profile(instance, start)
    over = np.flatnonzero(prof > instance.memory)
    for t in over[:5]:
        msgs.append(f"round {t}: {prof[t]} tokens held > M = {instance.memory}")
    if len(over) > 5:
        msgs.append(f"... and {len(over) - 5} more rounds above M")
    return msgs


def check_schedule(instance: Instance, start: Sequence[int]) -> int:
    """Check ``start`` against the model and return its total end-to-end latency ``sum(p_i + o_i - a_i)``.

    Non-preemption is built into the representation (one start per request, ``o_i`` consecutive rounds).
    Raises :class:`InfeasibleScheduleError` naming the first violations.
    """
    msgs = schedule_violations(instance, start)
    if msgs:
        raise InfeasibleScheduleError("infeasible schedule: " + "; ".join(msgs))
    return int(sum(p + o - a for p, o, a in zip(start, instance.output, instance.arrival)))


@dataclass(frozen=True)
class Schedule:
    """Start rounds of every request (instance order), as produced by an algorithm or the IP.

    Attributes:
        instance: the instance scheduled.
        start: (n,) start round ``p_i`` of each request (for the reset baselines, the start of the run that
            completed).
        algorithm: who produced it (``"mcsf"``, ``"hindsight"``, ...).
        resets: overflow events (alpha rules only; MC-SF never resets).
        restarts: requests thrown back to the queue by those resets, counted with multiplicity.
    """

    instance: Instance
    start: tuple[int, ...]
    algorithm: str = ""
    resets: int = 0
    restarts: int = 0
    _profile: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(p) for p in self.start))
        if len(self.start) != self.instance.n:
            raise ConfigError(f"schedule has {len(self.start)} starts for {self.instance.n} requests")

    @property
    def completion(self) -> tuple[int, ...]:
        return tuple(p + o for p, o in zip(self.start, self.instance.output))

    @property
    def latency(self) -> tuple[int, ...]:
        """Per-request end-to-end latency ``c_i - a_i`` in rounds."""
        return tuple(c - a for c, a in zip(self.completion, self.instance.arrival))

    @property
    def total_latency(self) -> int:
        """TEL, the objective (1)."""
        return int(sum(self.latency))

    @property
    def average_latency(self) -> float:
        return self.total_latency / max(self.instance.n, 1)

    @property
    def makespan(self) -> int:
        return max(self.completion, default=0)

    def memory_profile(self) -> np.ndarray:
        if self._profile is None:
            object.__setattr__(self, "_profile", memory_profile(self.instance, self.start))
        return self._profile

    @property
    def peak_memory(self) -> int:
        return int(self.memory_profile().max())

    @property
    def is_feasible(self) -> bool:
        return not schedule_violations(self.instance, self.start)

    def check(self) -> int:
        """:func:`check_schedule` on this schedule: TEL, or :class:`InfeasibleScheduleError`."""
        return check_schedule(self.instance, self.start)
