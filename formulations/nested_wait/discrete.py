"""The paper's own discrete model as a small exact engine, for the spec's toy cases (T1, T2, T6, P1-P6).

Model [P §2] (spec ``shared/papers/nested_wait.md`` §1): one server; a type-j prompt is processed at stages
``0 .. l'_j`` (stage 0 = prefill), one stage per iteration it is part of, and holds ``l_j + s`` KV tokens at stage
``s``. Before each iteration the policy picks admissions (waiting prompts, processed at stage 0) and which
resident prompts run; the iteration lasts (eq. 1)

    tau(B) = d0 + d1 * sum_{i in B} (l_i + s_i)

Memory (eq. 2): every resident prompt, paused or not, together with the new admissions, must satisfy
``sum (l_i + s_i) <= C`` at its current stage. When it does not, the server evicts **LIFO** (most recently admitted
first) until it does; an evicted prompt loses its KV and restarts from stage 0 as a waiting job (it re-enters the
queue in arrival order). Arrivals during an iteration wait for the next decision. A prompt's first output token
is produced by its stage-0 iteration (TTFT), it completes after its stage ``l'_j``.

Policies (:class:`ToyFcfs`, :class:`ToyWait`, :class:`ToyNestedWait`) see the waiting queue and the residents with
their stages; only the engine (and :class:`ToyWait`, which is given the lengths) reads a prompt's type. Nothing
here is shared with the serving simulator: this engine is the reference for the paper's arithmetic.
"""
from __future__ import annotations

import bisect
import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError

from .fluid import PromptType, _count, _finite, _time_model, _types
from .segments import SegmentDesign
from .thresholds import _thresholds

__all__ = ["ToyInstance", "ToyJob", "ToyRun", "ToyFcfs", "ToyWait", "ToyNestedWait", "simulate_toy",
           "poisson_type_arrivals"]


@dataclass(frozen=True)
class ToyInstance:
    """Prompt types, the linear iteration time ``d0 + d1 x tokens`` (s, s/token) and the KV capacity ``C`` (tokens)."""

    types: tuple[PromptType, ...]
    d0_s: float
    d1_s_per_token: float
    capacity_tokens: float

    def __post_init__(self):
        object.__setattr__(self, "types", _types(self.types))
        d0, d1 = _time_model(self.d0_s, self.d1_s_per_token)
        if d0 + d1 == 0:
            raise ConfigError("d0_s and d1_s_per_token are both 0: an iteration would take no time")
        object.__setattr__(self, "d0_s", d0)
        object.__setattr__(self, "d1_s_per_token", d1)
        object.__setattr__(self, "capacity_tokens", _finite("capacity_tokens", self.capacity_tokens, strict=True))


@dataclass(eq=False)
class ToyJob:
    """One prompt. ``stage``: the stage it is processed at next (0 = waiting for prefill)."""

    id: int
    type: int
    arrival_s: float
    stage: int = 0
    admitted: int = -1  # admission counter: larger = more recent (LIFO eviction order)
    first_token_s: float | None = None
    completion_s: float | None = None
    restarts: int = 0


class ToyPolicy(Protocol):
    name: str

    def select(self, queue: list[ToyJob], residents: list[ToyJob], instance: ToyInstance,
               draining: bool) -> tuple[list[ToyJob], list[ToyJob]]:
        """(jobs of ``queue`` to admit now, residents to run now); ``draining``: no arrival will come."""
        ...


def _memory(jobs, types) -> int:
    return sum(types[j.type].prefill_tokens + j.stage for j in jobs)


@dataclass
class ToyFcfs:
    """Memory-greedy FCFS [P §4.1]: every resident runs; waiting prompts are admitted in order while the memory
    at their current stages fits (growth of the residents is not foreseen, hence the evictions)."""

    name: str = "fcfs"

    def select(self, queue, residents, instance, draining):
        types = instance.types
        used = _memory(residents, types)
        admit = []
        for job in queue:
            need = types[job.type].prefill_tokens
            if used + need > instance.capacity_tokens:
                break
            admit.append(job)
            used += need
        return admit, list(residents)


def _capped(jobs_by_stage: dict, caps) -> list:
    """The oldest ``caps(stage)`` jobs of every stage."""
    out = []
    for s, jobs in jobs_by_stage.items():
        out.extend(jobs[:caps(s)])
    return out


@dataclass
class ToyWait:
    """WAIT, Algorithm 1 [P §4]: type j runs (all its stages, at most ``n_j`` prompts each, oldest first) only when
    at least ``n_j`` of its prompts wait for prefill; other types pause with their KV. ``wait=False`` is the
    paper's "WAIT-no-wait" ablation (the same caps, no accumulation); when draining (no arrival left), the
    thresholds act as caps only, so the tail is served."""

    thresholds: Sequence[int]
    wait: bool = True
    name: str = "wait"

    def select(self, queue, residents, instance, draining):
        n = _thresholds(self.thresholds, len(instance.types))
        waiting = Counter(j.type for j in queue)
        eligible = {j for j in range(len(n)) if waiting[j] >= n[j] or ((not self.wait or draining) and waiting[j])}
        if not self.wait or draining:
            eligible |= {j.type for j in residents}
        admit, taken = [], Counter()
        for job in queue:
            if job.type in eligible and taken[job.type] < n[job.type]:
                admit.append(job)
                taken[job.type] += 1
        by_stage: dict = {}
        for job in residents:
            if job.type in eligible:
                by_stage.setdefault((job.type, job.stage), []).append(job)
        run = []
        for (j, _), jobs in by_stage.items():
            run.extend(jobs[:n[j]])
        return admit, run


@dataclass
class ToyNestedWait:
    """Nested WAIT, Algorithm 2 [P §5]: prompts' lengths are hidden; stages are grouped into segments ending at
    ``design.ends``. With ``k`` the longest prefix of segments whose boundary queues (the waiting queue for
    segment 1; the prompts at stage ``r_{k-1} + 1`` for segment k) hold at least ``n_k``, segments ``1..k`` run, at
    most ``n_k`` prompts per stage; nothing runs when fewer than ``n_1`` wait. ``wait=False``: caps only."""

    design: SegmentDesign
    thresholds: Sequence[int]
    wait: bool = True
    name: str = "nested-wait"

    def select(self, queue, residents, instance, draining):
        d = self.design
        n = _thresholds(self.thresholds, d.num_segments)
        by_stage: dict = {}
        for job in residents:
            by_stage.setdefault(job.stage, []).append(job)
        k = prefix_length(d, n, len(queue), lambda s: len(by_stage.get(s, ())), wait=self.wait and not draining)
        if k == 0:
            return [], []
        run = [job for s, jobs in by_stage.items() if d.segment_of_stage(s) < k
               for job in jobs[:n[d.segment_of_stage(s)]]]
        return list(queue[:n[0]]), run


def prefix_length(design: SegmentDesign, thresholds: Sequence[int], queued: int, at_stage, wait: bool = True) -> int:
    """Algorithm 2's ``k``: segments ``1..k`` run. ``queued``: prompts waiting for prefill; ``at_stage(s)``: resident
    prompts at stage ``s``. Without ``wait`` every segment runs (``k = L``)."""
    if not wait:
        return design.num_segments
    if queued < thresholds[0]:
        return 0
    k = 1
    for first, nk in zip(design.first_stages[1:], thresholds[1:]):
        if at_stage(first) < nk:
            break
        k += 1
    return k


def poisson_type_arrivals(types: Sequence[PromptType], horizon_s: float, seed: int = 0) -> list[tuple[float, int]]:
    """Independent Poisson arrivals of every type in ``[0, horizon_s)``: sorted ``(time_s, type index)`` pairs."""
    types = _types(types)
    horizon = _finite("horizon_s", horizon_s, strict=True)
    rng = np.random.default_rng(seed)
    out = []
    for j, t in enumerate(types):
        k = rng.poisson(t.rate_per_s * horizon)
        out.extend((float(x), j) for x in rng.uniform(0.0, horizon, k))
    out.sort()
    return out


@dataclass
class ToyRun:
    """The outcome of :func:`simulate_toy`.

    jobs : one row per prompt (``type, arrival_s, first_token_s, completion_s, restarts``; NaN when unfinished).
    iterations : one row per iteration (``start_s, end_s, batch, batch_tokens, memory_tokens`` after eviction,
        ``residents, paused, queued, admitted, evicted, completed``).
    batches, states : when recorded, one entry per decision (also those that ran nothing): the batch as
        ``(id, type, stage)`` tuples (stage before the iteration; empty when the policy waited), and the state
        before the decision, ``(queue types in order, resident (id, type, stage) tuples in admission order)``.
    """

    jobs: pd.DataFrame
    iterations: pd.DataFrame
    evictions: int
    end_s: float
    batches: list = field(default_factory=list, repr=False)
    states: list = field(default_factory=list, repr=False)

    @property
    def completed(self) -> pd.DataFrame:
        return self.jobs[self.jobs["completion_s"].notna()]

    def throughput_tokens_per_s(self, types: Sequence[PromptType], until_s: float | None = None) -> float:
        """Decode tokens of prompts completed by ``until_s`` (default: the end), per second (evicted work does
        not count: effective throughput, [P §2.4])."""
        until = self.end_s if until_s is None else until_s
        done = self.jobs[self.jobs["completion_s"] <= until]
        tokens = sum(types[j].decode_tokens for j in done["type"])
        return tokens / until if until > 0 else 0.0

    def mean_latency_s(self) -> float:
        c = self.completed
        return float((c["completion_s"] - c["arrival_s"]).mean())


def simulate_toy(instance: ToyInstance, policy: ToyPolicy, arrivals: Sequence[tuple[float, int]] = (),
                 initial: Sequence[tuple[int, int, int]] = (), max_iterations: int = 1_000_000,
                 drain: bool = True, record: bool = False) -> ToyRun:
    """Run ``policy`` on ``instance``.

    arrivals : ``(time_s, type)`` pairs (any order). initial : ``(type, stage, count)`` prompts present at time 0
        (stage 0: waiting; stage >= 1: resident, as if admitted in that order). drain : once no arrival is left,
        tell the policy (WAIT-type policies then serve the tail instead of waiting forever). Stops when everything
        is done, when the policy waits with no arrival left, or after ``max_iterations``. record : keep per-iteration
        batch counts and states (for invariant checks).
    """
    types = instance.types
    m = len(types)
    pending = []
    for i, (t, j) in enumerate(arrivals):
        _count("arrival type", j, 0)
        if j >= m:
            raise ConfigError(f"arrival {i} has type {j}; the instance has {m} types")
        pending.append((_finite(f"arrivals[{i}] time", t), i, j))
    heapq.heapify(pending)
    jobs: list[ToyJob] = []
    queue: list[ToyJob] = []  # waiting for prefill, in arrival order
    residents: list[ToyJob] = []  # admitted, in admission order
    counter = 0
    for j, stage, count in initial:
        if not 0 <= j < m or not 0 <= stage <= types[j].decode_tokens:
            raise ConfigError(f"initial entry ({j}, {stage}, {count}) is not a (type, stage <= l'_j, count)")
        for _ in range(_count("initial count", count, 0)):
            job = ToyJob(len(jobs), j, 0.0, stage)
            jobs.append(job)
            if stage == 0:
                queue.append(job)
            else:
                job.admitted = counter
                counter += 1
                residents.append(job)
    next_id = len(jobs)
    d0, d1, cap = instance.d0_s, instance.d1_s_per_token, instance.capacity_tokens
    now, evictions = 0.0, 0
    rows, batches, states = [], [], []
    for _ in range(max_iterations):
        while pending and pending[0][0] <= now:
            t, _, j = heapq.heappop(pending)
            job = ToyJob(next_id, j, t)
            next_id += 1
            jobs.append(job)
            queue.append(job)
        if not queue and not residents and not pending:
            break
        if record:
            states.append((tuple(j.type for j in queue), tuple((j.id, j.type, j.stage) for j in residents)))
        admit, run = policy.select(list(queue), list(residents), instance, drain and not pending)
        admitted_ids = {id(j) for j in admit}
        queue = [j for j in queue if id(j) not in admitted_ids]
        for job in admit:
            job.stage, job.admitted = 0, counter
            counter += 1
        group = residents + admit  # admission order: the newest last
        used = _memory(group, types)
        evicted = []
        while used > cap:
            victim = group.pop()  # LIFO: the most recently admitted
            used -= types[victim.type].prefill_tokens + victim.stage
            evicted.append(victim)
        for victim in evicted:
            victim.stage, victim.admitted = 0, -1
            victim.restarts += 1
            bisect.insort(queue, victim, key=lambda x: (x.arrival_s, x.id))
        evictions += len(evicted)
        gone = {id(j) for j in evicted}
        residents = [j for j in group]
        batch = [j for j in run if id(j) not in gone] + [j for j in admit if id(j) not in gone]
        if record:
            batches.append(tuple((j.id, j.type, j.stage) for j in batch))
        if not batch:
            if not pending:
                break  # the policy waits and nothing will arrive
            now = max(now, pending[0][0])
            continue
        tokens = _memory(batch, types)
        end = now + d0 + d1 * tokens
        completed = 0
        for job in batch:
            if job.stage == 0 and job.first_token_s is None:
                job.first_token_s = end
            job.stage += 1
            if job.stage > types[job.type].decode_tokens:
                job.completion_s = end
                completed += 1
        done = {id(j) for j in batch if j.completion_s is not None}
        residents = [j for j in residents if id(j) not in done]
        kept_admits = sum(1 for j in admit if id(j) not in gone)
        rows.append((now, end, len(batch), tokens, used, len(group), len(group) - len(batch), len(queue),
                     kept_admits, len(evicted), completed))
        now = end
    it = pd.DataFrame(rows, columns=["start_s", "end_s", "batch", "batch_tokens", "memory_tokens", "residents",
                                     "paused", "queued", "admitted", "evicted", "completed"])
    table = pd.DataFrame({"id": [j.id for j in jobs], "type": [j.type for j in jobs],
                          "arrival_s": [j.arrival_s for j in jobs],
                          "first_token_s": [np.nan if j.first_token_s is None else j.first_token_s for j in jobs],
                          "completion_s": [np.nan if j.completion_s is None else j.completion_s for j in jobs],
                          "restarts": [j.restarts for j in jobs]})
    return ToyRun(table, it, evictions, now, batches, states)
