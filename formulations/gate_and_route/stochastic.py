"""The paper's stochastic model, simulated exactly, event by event (spec §1, §3.2 "convergence tests").

``n`` GPUs with the roles of a :class:`~.protocol.GateRoutePolicy`; class-``i`` requests arrive as a Poisson
stream of rate ``n lambda_i``; a prefill lasts ``Exp(mu_p,i)``; a decode lasts ``Exp(mu_m,i)`` while its GPU
runs a prefill and ``Exp(mu_s,i)`` otherwise; a request waiting for prefill or in a decode buffer abandons
after ``Exp(theta_i)``; everything independent (spec §1 [P]). The policy decides through the engine-neutral
calls of :mod:`.protocol`; this module is the engine.

Exactness (competing exponential clocks in one event heap): every prefill and every waiting request's
patience has its own clock; the decodes of a GPU share one clock at their total rate
``sum_j mu(class_j, mode)``, and when it rings the finishing decode is drawn in proportion to its rate
(uniformly among those of its class on that GPU). Whenever a GPU's decodes or mode change (a prefill starts or
ends on it), its clock is redrawn at the new total rate, which is exact by memorylessness; one clock per GPU
keeps a mode switch at one redraw instead of one per decode. Rates are read when an event has settled: a mode
that changes and changes back within one event (a prefill ends and the gate refills the slot at once) is not a
change. [R] (spec §2.4, §7.7): the decodes of a ``mixed`` GPU whose prefill slot is idle run at the solo rate
(``idle_mixed_rate="solo"``); ``"mixed"`` is the pessimistic variant in which a mixed GPU's decodes always run
at the mixed rate.

Measurements over ``[warmup_s, horizon_s]``: revenue per GPU-second under both charging schemes (bundled:
``w_i`` at decode completion, Eq. (21)-(22); separate: ``c_p P_i`` at prefill completion and ``c_d D_i`` at
decode completion, Eq. (23)), event counts per class, and the time averages per GPU of the state of Eq. (5)
(exact integrals of the piecewise-constant paths). Same inputs and seed, same run.
"""
from __future__ import annotations

import heapq
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gpusched.errors import ConfigError, GpuschedError

from ._draws import BlockDraws
from .model import FluidModel
from .protocol import MIXED, ROLES, SHARED, SOLO, GateRoutePolicy

__all__ = ["StochasticRun", "simulate_stochastic", "PolicyViolationError"]

IDLE_MIXED_RATES = ("solo", "mixed")
_WAITING, _PREFILL, _BUFFERED, _DECODING, _DONE, _ABANDONED = range(6)
_ARRIVAL, _WARMUP, _ABANDON, _PREFILL_DONE, _DECODE_DONE = range(5)


class PolicyViolationError(GpuschedError, RuntimeError):
    """A policy answered something the engine cannot do (a full GPU, a class with no waiting request)."""


@dataclass(frozen=True)
class StochasticRun:
    """One simulated run; rates and averages are per GPU over ``[warmup_s, horizon_s]``.

    Attributes:
        revenue_bundled / revenue_separate: price units per GPU-second (Eq. (21)-(23)).
        arrivals, prefills, completions, abandoned_prefill, abandoned_decode: (I,) counts in the window.
        waiting, prefilling, decoding_mixed, decoding_solo, buffered: (I,) time-averaged requests per GPU
            (``Q_p,i / n``, ``X_i / n``, ``Y_m,i / n`` at the mixed rate, ``Y_s,i / n`` at the solo rate,
            ``Q_d,i / n``).
        solo_pool_tokens_share: share of the decode tokens completed on ``solo``-role GPUs.
        in_system_end: (I,) requests still waiting, prefilling, buffered or decoding at ``horizon_s``.
        events: events processed (stale clocks included); wall_s: wall seconds.
    """

    model: FluidModel = field(repr=False)
    policy: str
    num_gpus: int
    horizon_s: float
    warmup_s: float
    seed: int
    revenue_bundled: float
    revenue_separate: float
    arrivals: np.ndarray
    prefills: np.ndarray
    completions: np.ndarray
    abandoned_prefill: np.ndarray
    abandoned_decode: np.ndarray
    waiting: np.ndarray
    prefilling: np.ndarray
    decoding_mixed: np.ndarray
    decoding_solo: np.ndarray
    buffered: np.ndarray
    solo_pool_tokens_share: float
    in_system_end: np.ndarray
    events: int
    wall_s: float

    def revenue(self, charging: str) -> float:
        """Revenue per GPU-second under ``"bundled"`` or ``"separate"`` charging."""
        if charging == "bundled":
            return self.revenue_bundled
        if charging == "separate":
            return self.revenue_separate
        raise ConfigError(f"charging = {charging!r}; choose 'bundled' or 'separate'")

    @property
    def mean_tpot_s(self) -> float:
        """Decode-weighted average time per output token, ``(tau Y_m + Y_s / gamma) / (Y_m + Y_s)`` seconds
        (the simulated counterpart of Eq. (47)); NaN without decodes."""
        ym, ys = self.decoding_mixed.sum(), self.decoding_solo.sum()
        if ym + ys <= 0:
            return math.nan
        return float((self.model.tau_mix_s * ym + ys / self.model.gamma_tokens_per_s) / (ym + ys))


class _IndexedSet:
    """Integers with O(1) add, discard and indexing (the policy picks uniformly from ``items``)."""

    __slots__ = ("items", "_pos")

    def __init__(self):
        self.items: list[int] = []
        self._pos: dict[int, int] = {}

    def add(self, x: int) -> None:
        if x not in self._pos:
            self._pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: int) -> None:
        p = self._pos.pop(x, None)
        if p is None:
            return
        last = self.items.pop()
        if p < len(self.items):
            self.items[p] = last
            self._pos[last] = p


class _Cluster:
    """The engine's state; also the :class:`~.protocol.ClusterView` the policy reads."""

    def __init__(self, model: FluidModel, policy: GateRoutePolicy, horizon_s: float, warmup_s: float,
                 seed: int, idle_mixed_rate: str):
        I, n, B = model.num_classes, policy.num_gpus, model.max_decodes
        self.model, self.policy = model, policy
        self.num_gpus, self.roles = n, policy.roles
        self.horizon_s, self.warmup_s = horizon_s, warmup_s
        # per class (the view)
        self.waiting = [0] * I
        self.prefilling = [0] * I
        self.oldest_waiting_s = [math.inf] * I
        self._queues = [deque() for _ in range(I)]
        # per GPU
        self._cap = [B - 1 if r == MIXED else B for r in self.roles]  # decode slots when not prefilling
        self._prefill_job = [-1] * n
        self._decodes: list[list[list[int]]] = [[[] for _ in range(I)] for _ in range(n)]  # [gpu][class] -> jobs
        self._num_decodes = [0] * n
        self._gpu_version = [0] * n  # version of each GPU's decode clock
        self._always_mixed = [r == MIXED and idle_mixed_rate == "mixed" for r in self.roles]
        self._counted_mixed = list(self._always_mixed)  # mode under which g's decodes sit in the rate counts
        self._free = {r: _IndexedSet() for r in ROLES}
        self._idle_heap: list[int] = []  # GPUs that may start a prefill (lazy: checked when popped)
        self._in_idle_heap = [False] * n
        # per job
        self._cls: list[int] = []
        self._arrival: list[float] = []
        self._status: list[int] = []
        self._version: list[int] = []
        self._gpu: list[int] = []
        self._buffers: dict[str, deque] = {}
        # rates and prices as lists (scalar access)
        self._mu_p = model.mu_prefill.tolist()
        self._mu_m = model.mu_mixed.tolist()
        self._mu_s = model.mu_solo.tolist()
        self._theta = model.abandon_rates.tolist()
        self._w = model.weights.tolist()
        self._pp = (model.price_prefill * model.prompt_tokens).tolist()
        self._pd = (model.price_decode * model.decode_tokens).tolist()
        self._D = model.decode_tokens.tolist()
        # clocks
        arrival_ss, service_ss, choice_ss = np.random.SeedSequence(seed).spawn(3)
        arrival_rng = np.random.default_rng(arrival_ss)
        self._exp = BlockDraws(np.random.default_rng(service_ss).standard_exponential)
        self._choice_u = BlockDraws(np.random.default_rng(choice_ss).random)  # which decode of a GPU finishes
        self._gap = BlockDraws(arrival_rng.standard_exponential)  # inter-arrival times / (n sum lambda)
        self._class_u = BlockDraws(arrival_rng.random)  # the class of each arrival
        lam = model.arrival_rates * n
        self._arrival_rate = float(lam.sum())
        self._class_cdf = (np.cumsum(lam) / lam.sum()).tolist() if self._arrival_rate > 0 else []
        self._heap: list = []
        self._seq = 0
        self.now = 0.0
        self._touched: list[int] = []  # GPUs whose decodes or mode changed in this event
        # measurements: counts in the window and integrals by the "delta x (T - t)" rule
        self._ymix = [0] * I
        self._ysolo = [0] * I
        self._nbuf = [0] * I
        self.counts = {k: [0] * I for k in ("arrivals", "prefills", "completions", "abandoned_prefill",
                                            "abandoned_decode")}
        self.areas = {k: [0.0] * I for k in ("waiting", "prefilling", "decoding_mixed", "decoding_solo", "buffered")}
        self._levels = {"waiting": self.waiting, "prefilling": self.prefilling, "decoding_mixed": self._ymix,
                        "decoding_solo": self._ysolo, "buffered": self._nbuf}
        self.revenue_bundled = self.revenue_separate = 0.0
        self.tokens_by_role = {r: 0.0 for r in ROLES}
        self.in_window = warmup_s <= 0
        for g in range(n):
            self._refresh(g)

    # ---------------------------------------------------------------- view
    def free_decode_gpus(self, role: str):
        return self._free[role].items

    # ---------------------------------------------------------------- bookkeeping
    def _push(self, t: float, kind: int, job: int = -1, version: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, job, version))

    def _bump(self, name: str, i: int, delta: int) -> None:
        self._levels[name][i] += delta
        if self.in_window:
            self.areas[name][i] += delta * (self.horizon_s - self.now)

    def _count(self, name: str, i: int) -> None:
        if self.in_window:
            self.counts[name][i] += 1

    def _mixed_mode(self, g: int) -> bool:
        return self._prefill_job[g] >= 0 or self._always_mixed[g]

    def _decode_cap(self, g: int) -> int:
        return self._cap[g] - (1 if self.roles[g] == SHARED and self._prefill_job[g] >= 0 else 0)

    def _has_free_decode(self, g: int) -> bool:
        return self._num_decodes[g] < self._decode_cap(g)

    def _may_prefill(self, g: int) -> bool:
        role = self.roles[g]
        if role == SOLO or self._prefill_job[g] >= 0:
            return False
        return role == MIXED or self._num_decodes[g] < self._cap[g]

    def _refresh(self, g: int) -> None:
        """Re-file GPU ``g`` in the free-slot sets and the idle-prefill heap after its state changed."""
        free = self._free[self.roles[g]]
        if self._has_free_decode(g):
            free.add(g)
        else:
            free.discard(g)
        if not self._in_idle_heap[g] and self._may_prefill(g):
            self._in_idle_heap[g] = True
            heapq.heappush(self._idle_heap, g)

    def _new_version(self, j: int) -> int:
        self._version[j] += 1
        return self._version[j]

    # ---------------------------------------------------------------- transitions
    def _start_prefill(self, g: int, c: int) -> None:
        if not (isinstance(c, (int, np.integer)) and 0 <= c < len(self.waiting)) or self.waiting[c] <= 0:
            raise PolicyViolationError(f"policy {self.policy.name!r} admitted class {c!r} on GPU {g}, which has no "
                                       f"waiting request (waiting = {self.waiting})")
        q = self._queues[c]
        j = q.popleft()
        while self._status[j] != _WAITING:  # abandoned requests are dropped lazily at the head
            j = q.popleft()
        self._status[j] = _PREFILL
        self._gpu[j] = g
        self._bump("waiting", c, -1)
        self._bump("prefilling", c, +1)
        self._update_oldest(c)
        self._prefill_job[g] = j
        self._touched.append(g)
        self._push(self.now + self._exp() / self._mu_p[c], _PREFILL_DONE, j, self._new_version(j))
        self._refresh(g)

    def _update_oldest(self, c: int) -> None:
        q = self._queues[c]
        while q and self._status[q[0]] != _WAITING:
            q.popleft()
        self.oldest_waiting_s[c] = self._arrival[q[0]] if q else math.inf

    def _place_decode(self, j: int, g: int) -> None:
        """Put request ``j`` in a decode slot of ``g`` (its clock is redrawn when the event settles)."""
        if not (isinstance(g, (int, np.integer)) and 0 <= g < self.num_gpus) or not self._has_free_decode(g):
            raise PolicyViolationError(f"policy {self.policy.name!r} sent a decode to GPU {g!r}, which has no free "
                                       f"decode slot")
        c = self._cls[j]
        self._status[j] = _DECODING
        self._new_version(j)  # its patience clock (if it waited in a buffer) no longer applies
        self._gpu[j] = g
        self._decodes[g][c].append(j)
        self._num_decodes[g] += 1
        self._bump("decoding_mixed" if self._counted_mixed[g] else "decoding_solo", c, +1)
        self._touched.append(g)
        self._refresh(g)

    def _buffer(self, j: int, key: str) -> None:
        c = self._cls[j]
        self._status[j] = _BUFFERED
        self._buffers.setdefault(key, deque()).append(j)
        self._bump("buffered", c, +1)
        v = self._new_version(j)
        if self._theta[c] > 0:
            self._push(self.now + self._exp() / self._theta[c], _ABANDON, j, v)

    def _pull(self, key: str) -> int | None:
        q = self._buffers.get(key)
        while q:
            j = q.popleft()
            if self._status[j] == _BUFFERED:
                self._bump("buffered", self._cls[j], -1)
                return j
        return None

    def _try_prefill(self, g: int) -> None:
        if self._may_prefill(g) and any(self.waiting):
            c = self.policy.admit(self, g)
            if c is not None:
                self._start_prefill(g, c)

    def _try_pull(self, g: int) -> None:
        while self._has_free_decode(g):
            key = self.policy.pull_decode(self, g)
            j = self._pull(key) if key is not None else None
            if j is None:
                return
            self._place_decode(j, g)

    def _fill(self, g: int) -> None:
        if self.policy.prefill_first:
            self._try_prefill(g)
            self._try_pull(g)
        else:
            self._try_pull(g)
            self._try_prefill(g)

    def _settle(self) -> None:
        """End of an event: move the decodes of every GPU whose mode changed between the rate counts, and redraw
        the decode clock of every GPU touched, at the rates the event left."""
        for g in set(self._touched):  # each GPU once (a set of ints iterates in the same order every run)
            mixed = self._mixed_mode(g)
            by_class = self._decodes[g]
            if mixed != self._counted_mixed[g]:
                self._counted_mixed[g] = mixed
                for c, jobs in enumerate(by_class):
                    if jobs:
                        self._bump("decoding_solo" if mixed else "decoding_mixed", c, -len(jobs))
                        self._bump("decoding_mixed" if mixed else "decoding_solo", c, +len(jobs))
            self._gpu_version[g] += 1
            if self._num_decodes[g]:
                rates = self._mu_m if mixed else self._mu_s
                total = sum(len(jobs) * rates[c] for c, jobs in enumerate(by_class))
                self._push(self.now + self._exp() / total, _DECODE_DONE, g, self._gpu_version[g])
        self._touched.clear()

    # ---------------------------------------------------------------- events
    def _on_arrival(self) -> None:
        u = self._class_u()
        c = 0
        while c < len(self._class_cdf) - 1 and u > self._class_cdf[c]:
            c += 1
        j = len(self._cls)
        self._cls.append(c)
        self._arrival.append(self.now)
        self._status.append(_WAITING)
        self._version.append(0)
        self._gpu.append(-1)
        self._queues[c].append(j)
        self._bump("waiting", c, +1)
        self._count("arrivals", c)
        if self.oldest_waiting_s[c] == math.inf:
            self.oldest_waiting_s[c] = self.now
        if self._theta[c] > 0:
            self._push(self.now + self._exp() / self._theta[c], _ABANDON, j, 0)
        self._push(self.now + self._gap() / self._arrival_rate, _ARRIVAL)
        heap = self._idle_heap
        while heap and any(self.waiting):
            g = heap[0]
            if not self._may_prefill(g):
                heapq.heappop(heap)
                self._in_idle_heap[g] = False
                continue
            c = self.policy.admit(self, g)
            if c is None:
                break
            self._start_prefill(g, c)

    def _on_abandon(self, j: int) -> None:
        c, status = self._cls[j], self._status[j]
        if status not in (_WAITING, _BUFFERED):  # its clock should have been made stale when it left the queue
            raise RuntimeError(f"internal error: request {j} abandoned in state {status}, not while waiting")
        self._status[j] = _ABANDONED
        if status == _WAITING:
            self._bump("waiting", c, -1)
            self._count("abandoned_prefill", c)
            self._update_oldest(c)
        else:
            self._bump("buffered", c, -1)
            self._count("abandoned_decode", c)

    def _on_prefill_done(self, j: int) -> None:
        c, g = self._cls[j], self._gpu[j]
        self._prefill_job[g] = -1
        self._bump("prefilling", c, -1)
        self._count("prefills", c)
        if self.in_window:
            self.revenue_separate += self._pp[c]
        self._touched.append(g)
        self._refresh(g)
        if self.policy.prefill_first:
            self._try_prefill(g)
        target = self.policy.route_decode(self, c, g)
        if isinstance(target, str):
            self._buffer(j, target)
        else:
            self._place_decode(j, target)
        self._fill(g)

    def _on_decode_done(self, g: int) -> None:
        """GPU ``g``'s decode clock rang: one of its decodes finishes, drawn in proportion to its rate."""
        by_class = self._decodes[g]
        rates = self._mu_m if self._counted_mixed[g] else self._mu_s
        weights = [len(jobs) * rates[c] for c, jobs in enumerate(by_class)]
        u = self._choice_u() * sum(weights)
        for c, weight in enumerate(weights):  # the last class with decodes, unless u falls in an earlier one
            if weight > 0:
                chosen = c
                if u < weight:
                    break
                u -= weight
        c = chosen
        jobs = by_class[c]
        k = min(int(self._choice_u() * len(jobs)), len(jobs) - 1)
        j = jobs[k]
        jobs[k] = jobs[-1]
        jobs.pop()
        self._num_decodes[g] -= 1
        self._status[j] = _DONE
        self._bump("decoding_mixed" if self._counted_mixed[g] else "decoding_solo", c, -1)
        self._touched.append(g)
        if self.in_window:
            self.counts["completions"][c] += 1
            self.revenue_bundled += self._w[c]
            self.revenue_separate += self._pd[c]
            self.tokens_by_role[self.roles[g]] += self._D[c]
        self._refresh(g)
        self._fill(g)

    def _on_warmup(self) -> None:
        self.in_window = True
        span = self.horizon_s - self.warmup_s
        for name, level in self._levels.items():
            self.areas[name] = [x * span for x in level]

    def in_system(self) -> list[int]:
        """Requests of each class not yet finished or abandoned."""
        out = [0] * len(self.waiting)
        for c, status in zip(self._cls, self._status):
            if status not in (_DONE, _ABANDONED):
                out[c] += 1
        return out

    def run(self) -> int:
        if self._arrival_rate > 0:
            self._push(self._gap() / self._arrival_rate, _ARRIVAL)
        if self.warmup_s > 0:
            self._push(self.warmup_s, _WARMUP)
        heap, version, gpu_version, events = self._heap, self._version, self._gpu_version, 0
        while heap:
            t, _, kind, j, v = heapq.heappop(heap)
            if t > self.horizon_s:
                break
            events += 1
            if j >= 0 and v != (gpu_version if kind == _DECODE_DONE else version)[j]:
                continue  # a clock that an admission, a placement or a mode change made stale
            self.now = t
            if kind == _DECODE_DONE:
                self._on_decode_done(j)
            elif kind == _PREFILL_DONE:
                self._on_prefill_done(j)
            elif kind == _ARRIVAL:
                self._on_arrival()
            elif kind == _ABANDON:
                self._on_abandon(j)
            else:
                self._on_warmup()
            if self._touched:
                self._settle()
        return events


def simulate_stochastic(model: FluidModel, policy: GateRoutePolicy, horizon_s: float, warmup_s: float = 0.0,
                        seed: int = 0, idle_mixed_rate: str = "solo") -> StochasticRun:
    """Simulate ``policy`` on the stochastic model of ``model`` over ``[0, horizon_s]`` seconds from an empty
    cluster, measuring over ``[warmup_s, horizon_s]`` (module docstring).

    Args:
        model: rates, prices and ``B`` (per GPU; the cluster has ``policy.num_gpus`` GPUs).
        policy: a :class:`GateRoutePolicy` (e.g. from :func:`~.policies.make_policy`).
        horizon_s, warmup_s: seconds, ``0 <= warmup_s < horizon_s``.
        seed: seeds the arrival and service clocks (the policy has its own seed).
        idle_mixed_rate: ``"solo"`` ([R], default) or ``"mixed"`` (module docstring).
    """
    if not isinstance(model, FluidModel):
        raise ConfigError(f"model must be a FluidModel, got {type(model).__name__}")
    if not isinstance(policy, GateRoutePolicy):
        raise ConfigError(f"policy must be a GateRoutePolicy, got {type(policy).__name__}")
    for name, v in (("horizon_s", horizon_s), ("warmup_s", warmup_s)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{name} = {v!r} must be a finite number >= 0")
    if not warmup_s < horizon_s:
        raise ConfigError(f"warmup_s = {warmup_s} must be below horizon_s = {horizon_s}")
    if idle_mixed_rate not in IDLE_MIXED_RATES:
        raise ConfigError(f"idle_mixed_rate = {idle_mixed_rate!r}; choose one of {IDLE_MIXED_RATES}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed = {seed!r} must be an integer >= 0")
    t0 = time.perf_counter()
    sim = _Cluster(model, policy, float(horizon_s), float(warmup_s), int(seed), idle_mixed_rate)
    events = sim.run()
    span = (horizon_s - warmup_s) * policy.num_gpus
    tokens = sum(sim.tokens_by_role.values())

    def arr(values, scale=1.0):
        return np.asarray(values, dtype=float) * scale

    return StochasticRun(
        model, policy.name, policy.num_gpus, float(horizon_s), float(warmup_s), int(seed),
        revenue_bundled=sim.revenue_bundled / span, revenue_separate=sim.revenue_separate / span,
        arrivals=arr(sim.counts["arrivals"]), prefills=arr(sim.counts["prefills"]),
        completions=arr(sim.counts["completions"]), abandoned_prefill=arr(sim.counts["abandoned_prefill"]),
        abandoned_decode=arr(sim.counts["abandoned_decode"]),
        waiting=arr(sim.areas["waiting"], 1 / span), prefilling=arr(sim.areas["prefilling"], 1 / span),
        decoding_mixed=arr(sim.areas["decoding_mixed"], 1 / span),
        decoding_solo=arr(sim.areas["decoding_solo"], 1 / span), buffered=arr(sim.areas["buffered"], 1 / span),
        solo_pool_tokens_share=sim.tokens_by_role[SOLO] / tokens if tokens else math.nan,
        in_system_end=arr(sim.in_system()),
        events=events, wall_s=time.perf_counter() - t0)
