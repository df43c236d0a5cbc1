"""Multi-round sessions on a prefill/decode cluster: a session lives on one decode worker; each round's prefill
runs locally there or remotely on a prefill worker (a reusable engine capability; AMPD, arXiv 2602.14516, is its
first user, ``shared/papers/ampd.md`` §2.2).

``simulate_sessions(trace, workers, cost, placement=..., binder=...)`` serves a session trace (columns
``session_id``/``round``/``think_time_s``; ``prompt_tokens`` of round r is the whole prompt, history included):

* **binding** -- when a session arrives, a :class:`~gpusched.policy.Router` (the *binder*) picks its decode
  worker among those whose KV can hold its largest round; the binding is permanent (spec §2.2 step 1);
* **KV, per round** -- the decode worker reserves ``incr + output`` tokens of KV when a round's task is formed
  (not the session's peak over all rounds: that starves small decode workers). Between rounds the session's
  history stays resident; it is freed when the session ends, or *evicted* (least recently idle first) when a
  round on that worker needs room. An evicted session re-prefills its whole history with its next round
  (counted in ``recomputed_tokens``). A round that does not fit even after evictions waits at the
  coordinator, first come first served per worker (spec pitfall 10), except that a later round of a session whose
  history is still resident tries at once instead of queueing behind new sessions; its TTFT clock runs from its
  release.
  ``kv_ttl_s`` pins an idle session's KV for that long after its round ends (vLLM-Continuum's time-to-live);
* **placement** -- a :class:`~gpusched.policy.PrefillPlacement` decides per task: ``None`` runs it on the decode
  worker, which pauses its decode batch for ``T_pre(h, m)`` (prefill priority, no chunking, spec §3.3); an index
  runs it on that prefill worker, which reads the ``h`` history tokens' KV from the decode worker when it
  dequeues the task (lazy read), computes ``T_pre(h, m)`` on its own configuration, and sends back only the
  ``m`` new tokens' KV; the first token counts when that return lands (spec §2.2 (b)). The history read of the
  next queued task overlaps the current compute: a task starts at max(previous compute end, its read end)
  (spec §2.2 (c)): the scheduler picks that next task when the current compute starts, with ``now_s`` = the
  compute's end (its earliest start); a task queued after that pick waits for the next one;
* **queues** -- every worker's prefill queue is ordered by a :class:`~gpusched.policy.BatchScheduler` (registry
  kind ``prefill-queue``) that returns exactly one task (a :class:`SeqState` with ``num_computed_tokens = h``, ``prompt_tokens = h + m``,
  ``arrival_time_s`` = enqueue time, and ``extra`` = ``{"session_id", "round", "postponed", "t_pre_s"}``, the
  last being the engine's prediction of its compute time on this worker). The engine owns the KV; ``kv`` is
  an empty block manager the scheduler must not allocate from;
* **statistics** -- per worker, the mean TTFT of prefills completed in the last ``stats_window_s`` (10 s in
  AMPD) and the mean inter-token gap of its decode steps in that window (weighted by sequences), offered to
  the placement through :class:`~gpusched.policy.SessionWorkerView` (0 with nothing in the window).

Times come from a :class:`~gpusched.policy.SessionCostModel` (``formulations.ampd.perf.PerfModel`` is one):
prefill with a cached history, decode steps at the batch's total context, and α-β KV transfers per link. Links
are not shared (each transfer pays its own α-β time); KV is accounted in tokens. Equal-time events are ordered
by SimPy's FIFO, so one seed gives one result.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np
import pandas as pd
import simpy

from gpusched import registry
from gpusched.errors import ConfigError
from gpusched.kvcache import BlockManager
from gpusched.policy import (BatchScheduler, InstanceView, PrefillPlacement, Router, SeqState, SessionCostModel,
                             SessionPrefillView, SessionWorkerView)
from gpusched.registry import BuildContext
from gpusched.workload import Trace

__all__ = ["SessionWorker", "SessionResult", "simulate_sessions", "ROLES"]

ROLES = ("prefill", "decode")


@dataclass
class SessionWorker:
    """One worker. ``key``: its key in the cost model; ``role``: ``prefill`` or ``decode`` (a co-located vLLM
    replica is a decode worker whose prefills all run locally); ``kv_capacity_tokens``: KV it holds (decode
    workers; prefill workers hold a task's KV only while computing it); ``scheduler``: its prefill-queue order,
    a name registered under the kind ``prefill-queue`` (built with ``scheduler_knobs``) or an object (one per
    worker if stateful)."""

    key: Hashable
    role: str
    kv_capacity_tokens: int = 0
    scheduler: str | BatchScheduler = "session-fcfs"
    scheduler_knobs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ConfigError(f"SessionWorker {self.key!r}: role {self.role!r} is not one of {ROLES}")
        if self.role == "decode" and (isinstance(self.kv_capacity_tokens, bool)
                                      or not isinstance(self.kv_capacity_tokens, (int, np.integer))
                                      or self.kv_capacity_tokens < 1):
            raise ConfigError(f"SessionWorker {self.key!r}: a decode worker needs kv_capacity_tokens >= 1, "
                              f"got {self.kv_capacity_tokens!r}")


@dataclass
class SessionResult:
    """What a run produced.

    rounds : one row per round: ``session_id``, ``round``, ``arrival_time_s`` (release: when its task was
        formed), ``admit_time_s`` (KV reserved), ``first_token_time_s``, ``finish_time_s`` (NaN unfinished),
        ``prompt_tokens``, ``output_tokens``, ``hist_tokens``/``incr_tokens`` (the task as run),
        ``recomputed_tokens`` (history re-prefilled after an eviction), ``local``, ``prefill_worker`` (-1 when
        local), ``decode_worker``, ``kv_tokens_read`` (history read by a prefill worker), ``kv_tokens_returned``.
    workers : one row per worker: busy times, prefills run, decode steps, evictions.
    events : ``(time_s, what, session_id, round, worker)`` in simulation order (determinism checks).
    """

    rounds: pd.DataFrame
    workers: pd.DataFrame
    events: list
    num_evictions: int
    kv_bytes_per_token: float

    @property
    def local_share(self) -> float:
        """Share of prefill tasks run on their decode worker."""
        return float(self.rounds["local"].mean()) if len(self.rounds) else 0.0

    @property
    def recomputed_tokens(self) -> int:
        return int(self.rounds["recomputed_tokens"].sum())

    @property
    def kv_bytes_transferred(self) -> float:
        """Bytes of KV moved over links: history reads plus increment returns."""
        return float((self.rounds["kv_tokens_read"].sum() + self.rounds["kv_tokens_returned"].sum())
                     * self.kv_bytes_per_token)


class _Window:
    """Weighted mean of samples in ``(now - window_s, now]``; samples and questions in time order."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.samples: deque = deque()
        self.total = self.weight = 0.0

    def add(self, t: float, value: float, weight: float = 1.0) -> None:
        self.samples.append((t, value * weight, weight))
        self.total += value * weight
        self.weight += weight

    def mean(self, now: float) -> float:
        while self.samples and self.samples[0][0] <= now - self.window_s:
            _, vw, w = self.samples.popleft()
            self.total -= vw
            self.weight -= w
        if not self.samples:
            self.total = self.weight = 0.0
            return 0.0
        return self.total / self.weight


class _Session:
    __slots__ = ("sid", "rows", "prompt", "output", "think", "arrival_s", "decode", "resident", "idle_since",
                 "peak_tokens")

    def __init__(self, sid, rows, prompt, output, think, arrival_s):
        self.sid, self.rows, self.prompt, self.output, self.think = sid, rows, prompt, output, think
        self.arrival_s = arrival_s
        self.decode: _DecodeWorker | None = None
        self.resident = 0          # KV tokens held on the decode worker (history, plus the running round's room)
        self.idle_since: float | None = None  # set between rounds (evictable then)
        self.peak_tokens = int(max(p + o for p, o in zip(prompt, output)))


class _Round:
    """A round in flight: its queue entry (a SeqState) and its decode progress."""

    __slots__ = ("session", "r", "row", "seq", "hist", "incr", "generated", "last_token_s", "prefill_worker")

    def __init__(self, session, r, row, hist, incr, release_s):
        self.session, self.r, self.row, self.hist, self.incr = session, r, row, hist, incr
        self.seq = SeqState((session.sid, r), row, release_s, hist + incr, int(session.output[r]))
        self.seq.num_computed_tokens = hist
        self.seq.extra = {"session_id": session.sid, "round": r, "postponed": 0, "t_pre_s": 0.0, "round_obj": self}
        self.generated = 0
        self.last_token_s = 0.0
        self.prefill_worker = -1

    def view(self) -> SessionPrefillView:
        return SessionPrefillView(self.session.sid, self.r, self.hist, self.incr, self.seq.arrival_time_s,
                                  self.session.decode.index, self.seq.extra["postponed"])


class _Worker:
    def __init__(self, run: "_Run", index: int, cfg: SessionWorker, scheduler: BatchScheduler):
        self.run, self.index, self.cfg, self.key, self.scheduler = run, index, cfg, cfg.key, scheduler
        self.queue: list[SeqState] = []
        self.ttft = _Window(run.stats_window_s)
        self.itl = _Window(run.stats_window_s)
        self.wake: simpy.Event | None = None
        self.prefill_end_s: float | None = None
        self.busy_prefill_s = 0.0
        self.prefills = 0
        self._kv = BlockManager(1)

    def enqueue(self, rd: _Round) -> None:
        rd.seq.extra["t_pre_s"] = self.run.cost.prefill_time_s(rd.hist, rd.incr, self.key)
        self.queue.append(rd.seq)
        self.poke()

    def poke(self) -> None:
        if self.wake is not None and not self.wake.triggered:
            self.wake.succeed()

    def pick(self, now: float) -> _Round:
        """The scheduler's one pick from the queue (removed from it)."""
        before = list(self.queue)
        running: list[SeqState] = []
        plan = self.scheduler.schedule(self.queue, running, self._kv, now)
        if len(plan.entries) != 1 or running != [plan.entries[0][0]] or plan.entries[0][0] not in before \
                or len(self.queue) != len(before) - 1:
            raise ConfigError(f"scheduler {getattr(self.scheduler, 'name', self.scheduler)!r} on worker "
                              f"{self.key!r}: a session engine's scheduler must move exactly one waiting task to "
                              f"running and plan it alone; it planned {plan.entries!r}")
        return plan.entries[0][0].extra["round_obj"]

    def view(self, now: float, extra_head: tuple = ()) -> SessionWorkerView:
        remaining = max(0.0, self.prefill_end_s - now) if self.prefill_end_s is not None else 0.0
        queue = extra_head + tuple(s.extra["round_obj"].view() for s in self.queue)
        return SessionWorkerView(self.index, self.cfg.role, self.key, queue, self.ttft.mean(now), self.itl.mean(now),
                                 remaining, self._num_decoding(), *self._kv_tokens())

    def _num_decoding(self) -> int:
        return 0

    def _kv_tokens(self) -> tuple[int, int]:
        return 0, 0


class _PrefillWorker(_Worker):
    def __init__(self, *args):
        super().__init__(*args)
        self.prefetched: _Round | None = None

    def view(self, now: float, extra_head: tuple = ()) -> SessionWorkerView:
        head = (self.prefetched.view(),) if self.prefetched is not None else ()
        return super().view(now, head)

    def loop(self):
        run, env = self.run, self.run.env
        nxt = None  # (round, read end) of a task whose history read overlaps the current compute
        while True:
            if nxt is None:
                if not self.queue:
                    self.wake = env.event()
                    yield self.wake
                    self.wake = None
                    continue
                rd = self.pick(env.now)
                read_end = env.now + run.read_time_s(rd, self)
            else:
                (rd, read_end), nxt, self.prefetched = nxt, None, None
            if read_end > env.now:
                yield env.timeout(read_end - env.now)
            compute_s = run.cost.prefill_time_s(rd.hist, rd.incr, self.key)
            self.prefill_end_s = env.now + compute_s
            run.log("prefill-start", rd, self.index)
            if run.overlap_reads and self.queue:
                # chosen now so that its read overlaps this compute; judged at its earliest start time
                nrd = self.pick(env.now + compute_s)
                nxt = (nrd, env.now + run.read_time_s(nrd, self))
                self.prefetched = nrd
            yield env.timeout(compute_s)
            self.prefill_end_s = None
            self.busy_prefill_s += compute_s
            self.prefills += 1
            back_s = run.cost.kv_time_s(rd.incr, self.key, rd.session.decode.key)
            run.record[rd.row]["kv_tokens_returned"] = rd.incr
            # TTFT is known now (compute end + return transfer); recorded now to keep the window in time order
            self.ttft.add(env.now, env.now + back_s - rd.seq.arrival_time_s)
            env.process(run.deliver(rd, back_s))


class _DecodeWorker(_Worker):
    def __init__(self, *args):
        super().__init__(*args)
        self.capacity = int(self.cfg.kv_capacity_tokens)
        self.used = 0
        self.batch: list[_Round] = []
        self.incoming: list[_Round] = []
        self.pending: deque = deque()  # (session, round, release time) waiting for KV
        self.idle: dict = {}  # session id -> session, KV resident between rounds (insertion = idle order)
        self.busy_decode_s = 0.0
        self.decode_steps = 0
        self.evictions = 0
        self.retry_at: float | None = None

    def _num_decoding(self) -> int:
        return len(self.batch)

    def _kv_tokens(self) -> tuple[int, int]:
        return self.capacity - self.used, self.capacity

    def instance_view(self) -> InstanceView:
        outstanding = sum(s.prompt_tokens - s.num_computed_tokens for s in self.queue) + \
            sum(rd.seq.output_tokens - rd.generated for rd in self.batch)
        return InstanceView(self.index, "decode", len(self.queue) + len(self.pending), len(self.batch),
                            outstanding, self.used, self.capacity)

    def loop(self):
        run, env = self.run, self.run.env
        while True:
            if self.incoming:
                self.batch.extend(self.incoming)
                self.incoming.clear()
            if self.queue:                                   # prefill priority: the decode batch pauses
                rd = self.pick(env.now)
                compute_s = run.cost.prefill_time_s(rd.hist, rd.incr, self.key)
                self.prefill_end_s = env.now + compute_s
                run.log("prefill-start", rd, self.index)
                yield env.timeout(compute_s)
                self.prefill_end_s = None
                self.busy_prefill_s += compute_s
                self.prefills += 1
                self.ttft.add(env.now, env.now - rd.seq.arrival_time_s)
                run.first_token(rd)
                continue
            if self.batch:
                contexts = sum(rd.hist + rd.incr + rd.generated for rd in self.batch)
                step_s = run.cost.decode_time_s(len(self.batch), contexts, self.key)
                yield env.timeout(step_s)
                now = env.now
                self.busy_decode_s += step_s
                self.decode_steps += 1
                gaps = 0.0
                done = []
                for rd in self.batch:
                    gaps += now - rd.last_token_s
                    rd.last_token_s = now
                    rd.generated += 1
                    if rd.generated >= rd.seq.output_tokens:
                        done.append(rd)
                self.itl.add(now, gaps / len(self.batch), len(self.batch))
                if done:
                    self.batch = [rd for rd in self.batch if rd.generated < rd.seq.output_tokens]
                    for rd in done:
                        run.round_done(rd)
                continue
            self.wake = env.event()
            yield self.wake
            self.wake = None

    # ---- KV
    def _pinned(self, s: _Session, now: float) -> bool:
        ttl = self.run.kv_ttl_s
        return ttl is not None and now < s.idle_since + ttl

    def try_reserve(self, need: int, now: float, owner=None) -> bool:
        """Reserve ``need`` tokens, evicting idle unpinned sessions other than ``owner`` (least recently idle
        first) if that suffices; False (and nothing evicted) otherwise."""
        if self.capacity - self.used >= need:
            self.used += need
            return True
        victims, freed = [], 0
        for s in self.idle.values():
            if self.capacity - self.used + freed >= need:
                break
            if s.sid != owner and not self._pinned(s, now):
                victims.append(s)
                freed += s.resident
        if self.capacity - self.used + freed < need:
            return False
        for s in victims:
            del self.idle[s.sid]
            self.used -= s.resident
            s.resident = 0
            self.evictions += 1
            self.run.evictions += 1
            self.run.log_session("evict", s, self.index)
        self.used += need
        return True

    def next_pin_expiry(self) -> float | None:
        ttl = self.run.kv_ttl_s
        if ttl is None or not self.idle:
            return None
        return min(s.idle_since + ttl for s in self.idle.values())


class _Run:
    def __init__(self, trace, workers, cost, placement, binder, seed, stats_window_s, kv_ttl_s, overlap_reads):
        self.env = simpy.Environment()
        self.cost = cost
        self.placement, self.binder = placement, binder
        self.stats_window_s, self.kv_ttl_s, self.overlap_reads = stats_window_s, kv_ttl_s, overlap_reads
        self.evictions = 0
        self.events: list = []
        self.prefill: list[_PrefillWorker] = []
        self.decode: list[_DecodeWorker] = []
        self.workers: list[_Worker] = []
        for k, cfg in enumerate(workers):
            sched = cfg.scheduler
            if isinstance(sched, str):
                sched = registry.build("prefill-queue", sched, BuildContext(trace=trace, seed=seed), **cfg.scheduler_knobs)
            cls = _PrefillWorker if cfg.role == "prefill" else _DecodeWorker
            w = cls(self, k, cfg, sched)
            self.workers.append(w)
            (self.prefill if cfg.role == "prefill" else self.decode).append(w)
        df = trace.df
        self.record = [dict(session_id=sid, round=int(r), arrival_time_s=math.nan, admit_time_s=math.nan,
                            first_token_time_s=math.nan, finish_time_s=math.nan, prompt_tokens=int(p),
                            output_tokens=int(o), hist_tokens=-1, incr_tokens=-1, recomputed_tokens=0, local=False,
                            prefill_worker=-1, decode_worker=-1, kv_tokens_read=0, kv_tokens_returned=0)
                       for sid, r, p, o in zip(df["session_id"], df["round"], df["prompt_tokens"], df["output_tokens"])]
        self.sessions: list[_Session] = []
        for sid, g in df.groupby("session_id", sort=False):
            g = g.sort_values("round")
            self.sessions.append(_Session(sid, g.index.to_numpy(), g["prompt_tokens"].to_numpy(np.int64),
                                          g["output_tokens"].to_numpy(np.int64), g["think_time_s"].to_numpy(float),
                                          float(g["arrival_time_s"].iloc[0])))
        self.sessions.sort(key=lambda s: (s.arrival_s, s.rows[0]))
        # rows of the trace are positional after Trace validation; map index labels to positions
        self._pos = {label: i for i, label in enumerate(df.index)}

    # ---- logging
    def log(self, what: str, rd: _Round, worker: int) -> None:
        self.events.append((self.env.now, what, rd.session.sid, rd.r, worker))

    def log_session(self, what: str, s: _Session, worker: int) -> None:
        self.events.append((self.env.now, what, s.sid, -1, worker))

    def row(self, s: _Session, r: int) -> int:
        return self._pos[s.rows[r]]

    # ---- lifecycle
    def arrivals(self):
        env = self.env
        for s in self.sessions:
            if s.arrival_s > env.now:
                yield env.timeout(s.arrival_s - env.now)
            fitting = [w for w in self.decode if w.capacity >= s.peak_tokens]
            views = [w.instance_view() for w in fitting]
            probe = SeqState(s.sid, self.row(s, 0), env.now, int(s.prompt[0]), int(s.output[0]))
            chosen = self.binder.route(probe, views, env.now)
            match = [w for w in fitting if w.index == chosen]
            if not match:
                raise ConfigError(f"binder {getattr(self.binder, 'name', self.binder)!r} returned {chosen!r}, not the "
                                  f"index of an offered decode worker ({[v.index for v in views]})")
            s.decode = match[0]
            self.log_session("bind", s, s.decode.index)
            self.release(s, 0)

    def release(self, s: _Session, r: int) -> None:
        """Round ``r``'s task is formed now: reserve its KV (or wait for it), then place it."""
        rec = self.record[self.row(s, r)]
        rec["arrival_time_s"] = self.env.now
        d = s.decode
        # a new session queues behind those already waiting (FCFS); a later round of a session whose history is
        # resident tries at once: queued behind a newcomer that waits for memory, it would hold its KV hostage
        in_flight = r > 0 and s.resident > 0
        if (d.pending and not in_flight) or not self._admit(s, r):
            d.pending.append((s, r))
            self._schedule_retry(d)

    def _admit(self, s: _Session, r: int) -> bool:
        d, now = s.decode, self.env.now
        need = int(s.prompt[r]) - s.resident + int(s.output[r])
        if not d.try_reserve(need, now, owner=s.sid):
            return False                # still idle (evictable) while it waits
        d.idle.pop(s.sid, None)
        s.idle_since = None
        hist = s.resident
        incr = int(s.prompt[r]) - hist
        s.resident += need
        row = self.row(s, r)
        rec = self.record[row]
        true_hist = int(s.prompt[r - 1] + s.output[r - 1]) if r > 0 else 0
        rec.update(admit_time_s=now, hist_tokens=hist, incr_tokens=incr, recomputed_tokens=true_hist - hist,
                   decode_worker=d.index)
        rd = _Round(s, r, row, hist, incr, rec["arrival_time_s"])
        choice = self.placement.place(rd.view(), d.view(now), [w.view(now) for w in self.prefill], now)
        if choice is None:
            rec["local"] = True
            self.log("place-local", rd, d.index)
            d.enqueue(rd)
        else:
            match = [w for w in self.prefill if w.index == choice]
            if not match:
                raise ConfigError(f"placement {getattr(self.placement, 'name', self.placement)!r} returned "
                                  f"{choice!r}: not None (local) nor the index of a prefill worker "
                                  f"({[w.index for w in self.prefill]})")
            rd.prefill_worker = choice
            rec["prefill_worker"] = choice
            self.log("place-remote", rd, choice)
            match[0].enqueue(rd)
        return True

    def _admit_pending(self, d: _DecodeWorker) -> None:
        while d.pending:
            s, r = d.pending[0]
            if not self._admit(s, r):
                self._schedule_retry(d)
                return
            d.pending.popleft()

    def _schedule_retry(self, d: _DecodeWorker) -> None:
        """With pinned KV in the way, try again when the first pin expires."""
        at = d.next_pin_expiry()
        if at is None or at <= self.env.now or (d.retry_at is not None and d.retry_at <= at):
            return
        d.retry_at = at

        def retry():
            yield self.env.timeout(at - self.env.now)
            d.retry_at = None
            self._admit_pending(d)
        self.env.process(retry())

    def read_time_s(self, rd: _Round, w: _PrefillWorker) -> float:
        self.record[rd.row]["kv_tokens_read"] = rd.hist
        return self.cost.kv_time_s(rd.hist, rd.session.decode.key, w.key)

    def deliver(self, rd: _Round, back_s: float):
        if back_s > 0:
            yield self.env.timeout(back_s)
        self.first_token(rd)
        d = rd.session.decode
        if rd.seq.output_tokens > 1:
            d.incoming.append(rd)
            d.poke()

    def first_token(self, rd: _Round) -> None:
        now = self.env.now
        rd.generated = 1
        rd.last_token_s = now
        self.record[rd.row]["first_token_time_s"] = now
        self.log("first-token", rd, rd.session.decode.index)
        if rd.seq.output_tokens <= 1:
            self.round_done(rd)
        elif rd.prefill_worker < 0:
            rd.session.decode.batch.append(rd)

    def round_done(self, rd: _Round) -> None:
        now, s, d = self.env.now, rd.session, rd.session.decode
        self.record[rd.row]["finish_time_s"] = now
        self.log("finish", rd, d.index)
        if rd.r + 1 >= len(s.prompt):
            d.used -= s.resident
            s.resident = 0
            self.log_session("end", s, d.index)
        else:
            s.idle_since = now
            d.idle[s.sid] = s
            self.env.process(self._think(s, rd.r + 1))
        self._admit_pending(d)

    def _think(self, s: _Session, r: int):
        yield self.env.timeout(float(s.think[r]))
        self.release(s, r)


def _check_trace(trace: Trace) -> None:
    missing = [c for c in ("session_id", "round", "think_time_s") if c not in trace.df.columns]
    if missing:
        raise ConfigError(f"simulate_sessions: trace {trace.name!r} lacks {missing}; it needs multi-round session "
                          f"columns (e.g. formulations.ampd.agent_trace or gpusched.synthetic.agent_sessions)")
    df = trace.df
    for sid, g in df.groupby("session_id", sort=False):
        rounds = np.sort(g["round"].to_numpy())
        if not np.array_equal(rounds, np.arange(len(rounds))):
            raise ConfigError(f"simulate_sessions: session {sid!r} has rounds {rounds.tolist()}; need 0..n-1")
        g = g.sort_values("round")
        p, o = g["prompt_tokens"].to_numpy(), g["output_tokens"].to_numpy()
        if (o < 1).any() or (len(p) > 1 and (p[1:] <= p[:-1] + o[:-1]).any()):
            raise ConfigError(f"simulate_sessions: session {sid!r}: each round needs >= 1 output token and a prompt "
                              f"longer than the previous prompt + output (the increment must be >= 1 token)")


def simulate_sessions(trace: Trace, workers: Sequence[SessionWorker], cost: SessionCostModel,
                      placement: str | PrefillPlacement = "always-local", binder: str | Router = "most-free-kv",
                      seed: int = 0, stats_window_s: float = 10.0, kv_ttl_s: float | None = None,
                      overlap_reads: bool = True, placement_knobs: dict | None = None) -> SessionResult:
    """Serve the session ``trace`` on ``workers`` (module docstring) and return a :class:`SessionResult`.

    placement : a :class:`~gpusched.policy.PrefillPlacement` or a name registered under kind ``placement``
        (built with ``placement_knobs``). ``binder``: a :class:`~gpusched.policy.Router` (or a router name) that
        binds each arriving session to a decode worker; its :class:`InstanceView` counts KV in tokens
        (``kv_*_blocks`` are tokens). ``kv_ttl_s``: keep an idle session's KV pinned this long after its round
        (None: evictable at once, least recently idle first). ``overlap_reads``: overlap the next task's
        history read with the current compute on prefill workers.
    """
    if not isinstance(trace, Trace):
        raise ConfigError(f"simulate_sessions: trace must be a gpusched Trace, got {type(trace).__name__}")
    _check_trace(trace)
    workers = list(workers)
    if not any(w.role == "decode" for w in workers):
        raise ConfigError("simulate_sessions: need at least one decode worker (sessions live on decode workers)")
    if len({w.key for w in workers}) != len(workers):
        raise ConfigError(f"simulate_sessions: worker keys must be distinct, got {[w.key for w in workers]}")
    if not isinstance(cost, SessionCostModel):
        raise ConfigError("simulate_sessions: cost must offer prefill_time_s, decode_time_s, kv_time_s and "
                          "kv_bytes_per_token (e.g. formulations.ampd.PerfModel)")
    if not (isinstance(stats_window_s, (int, float)) and stats_window_s > 0):
        raise ConfigError(f"simulate_sessions: stats_window_s must be > 0 seconds, got {stats_window_s!r}")
    if kv_ttl_s is not None and not (isinstance(kv_ttl_s, (int, float)) and kv_ttl_s >= 0):
        raise ConfigError(f"simulate_sessions: kv_ttl_s must be None or >= 0 seconds, got {kv_ttl_s!r}")
    context = BuildContext(trace=trace, seed=seed, num_instances=len(workers))
    if isinstance(placement, str):
        placement = registry.build("placement", placement, context, **(placement_knobs or {}))
    if isinstance(binder, str):
        binder = registry.build("router", binder, context)
    peak = int((trace.df["prompt_tokens"] + trace.df["output_tokens"]).max()) if len(trace) else 0
    biggest = max(w.kv_capacity_tokens for w in workers if w.role == "decode")
    if peak > biggest:
        raise ConfigError(f"simulate_sessions: a round needs {peak} KV tokens (prompt + output) but the largest "
                          f"decode worker holds {biggest}; give decode workers more KV or cut the sessions "
                          f"(agent_trace(max_context_tokens=...))")
    if not any(w.role == "prefill" for w in workers) and getattr(placement, "needs_prefill_workers", False):
        raise ConfigError(f"placement {placement.name!r} sends prefills to prefill workers, but there are none")
    run = _Run(trace, workers, cost, placement, binder, seed, stats_window_s, kv_ttl_s, overlap_reads)
    for w in run.workers:
        run.env.process(w.loop())
    run.env.process(run.arrivals())
    run.env.run()
    rounds = pd.DataFrame(run.record)
    rows = []
    for w in run.workers:
        d = isinstance(w, _DecodeWorker)
        rows.append(dict(index=w.index, key=str(w.key), role=w.cfg.role, prefills=w.prefills,
                         busy_prefill_s=w.busy_prefill_s, decode_steps=w.decode_steps if d else 0,
                         busy_decode_s=w.busy_decode_s if d else 0.0, evictions=w.evictions if d else 0,
                         kv_capacity_tokens=w.capacity if d else 0))
    return SessionResult(rounds, pd.DataFrame(rows), run.events, run.evictions, float(cost.kv_bytes_per_token))


from simulators.serving import session_policies as _policies  # noqa: E402,F401  (registers the baselines)
