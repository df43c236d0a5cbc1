"""Serving a trace on a pool of GPUs under a cluster-level dispatcher: a central queue, GPU modes, decode placement.

``simulate_dispatch(trace, gpu, num_gpus, dispatcher)`` runs ``num_gpus`` copies of the GPU ``gpu`` (an
:class:`~simulators.serving.run.InstanceConfig`; its scheduler is not used) as SimPy
:class:`~simulators.serving.instance.InstanceEngine` s with real step times and KV, each under a
:class:`~simulators.serving.modes.GpuModeScheduler` in the mode the dispatcher gives it, and asks a
:class:`gpusched.policy.ClusterDispatcher` at the moments its protocol names: arrivals (hold in a queue or
reject), idle prefill slots (which queue's oldest request prefills there), finished prefills (decode here,
on another GPU after a KV transfer over ``link``, or in a decode buffer) and freed decode slots (pull a buffer).

**Abandonment.** A request waiting in the central queue or in a decode buffer leaves when its patience runs out:
each waiting spell draws an exponential patience of rate ``abandon_rate_per_s(request)`` per second (0: never)
from the run's seeded generator -- the memoryless abandonment of Lin et al. (arXiv 2602.02987, Sec. 2). A
request in prefill or decoding never abandons.

**KV.** A prefill reserves its prompt on its GPU; a decode placed on its prefill's GPU keeps that KV and grows
it a token per step; a decode placed elsewhere holds its slot there while the prompt's KV crosses the link
(``kv_bytes / bandwidth + latency``), the source keeps it until the transfer ends. A request that waits in a
decode buffer parks its KV off the GPU (its blocks are freed when it enters the buffer) and it crosses the link
when the request is placed. The model has no KV constraint (``B`` is the only cap per GPU, spec §3.3), so
the engine refuses, before running, a GPU whose KV cannot hold ``B + 2`` of the trace's largest requests.

**Conservation.** Every request ends in exactly one state (``status`` of the result's request table):
``finished``; ``rejected: <reason>``; ``abandoned waiting for prefill``; ``abandoned in decode buffer``; or,
when the run stops at ``until_s`` or a dispatcher never admits it, ``waiting for prefill`` / ``in prefill``
/ ``in decode buffer`` / ``in KV transfer`` / ``decoding``. The engine checks the count at the end.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy

from gpusched import registry
from gpusched.cluster import DEFAULT_LINK
from gpusched.errors import ConfigError, GpuschedError
from gpusched.hardware import LinkSpec
from gpusched.kvcache import BlockManager
from gpusched.policy import GPU_MIXED, GPU_MODES, GPU_SHARED, GPU_SOLO, ClusterDispatcher, SeqState
from gpusched.registry import BuildContext
from gpusched.workload import Trace
from simulators.serving.instance import InstanceEngine, wait_until
from simulators.serving.modes import GpuModeScheduler
from simulators.serving.patience import AbandonRate, abandon_rate_of
from simulators.serving.results import SimResult, sequences_frame, timeline_frame

__all__ = ["simulate_dispatch", "DispatchResult", "DispatchViolationError", "revenue_rate"]

KIND = "dispatcher"  # the registry kind (gpusched.registry) of ClusterDispatcher factories

_WAITING, _PREFILL, _BUFFERED, _TRANSFER, _DECODING, _DONE, _ABANDONED, _REJECTED = range(8)
_OPEN_STATUS = {_WAITING: "waiting for prefill", _PREFILL: "in prefill", _BUFFERED: "in decode buffer",
                _TRANSFER: "in KV transfer", _DECODING: "decoding"}


class DispatchViolationError(GpuschedError, RuntimeError):
    """A dispatcher answered what the engine cannot do (a queue with no waiting request, a full GPU, a GPU
    of the wrong mode, an unknown queue key)."""


@dataclass
class DispatchResult(SimResult):
    """:class:`~simulators.serving.results.SimResult` of a dispatched run, plus the GPU modes.

    ``requests`` has the usual columns and: ``queue`` (the dispatcher's queue key, -1 if rejected),
    ``prefill_gpu``, ``decode_gpu`` (-1 if none), ``status`` as in the module docstring.
    """

    modes: tuple = ()
    dispatcher: str = ""
    until_s: float = math.inf

    @property
    def num_gpus(self) -> int:
        return len(self.modes)


def simulate_dispatch(trace: Trace, gpu, num_gpus: int, dispatcher: str | ClusterDispatcher,
                      dispatcher_knobs: dict | None = None, link: LinkSpec = DEFAULT_LINK,
                      abandon_rate_per_s: AbandonRate = 0.0, seed: int = 0,
                      until_s: float | None = None, record_timeline: bool = False,
                      check_invariants: bool = True) -> DispatchResult:
    """Serve ``trace`` on ``num_gpus`` copies of ``gpu`` under ``dispatcher`` (module docstring).

    Args:
        gpu: an :class:`~simulators.serving.run.InstanceConfig` (step model, KV blocks, block size,
            ``kv_bytes_per_token`` > 0 to price KV transfers); its ``scheduler`` is not used.
        dispatcher: a :class:`gpusched.policy.ClusterDispatcher`, or a name registered under the kind
            ``"dispatcher"`` (built with ``dispatcher_knobs`` and a :class:`~gpusched.registry.BuildContext`
            of this run: the trace, the GPU, ``num_instances = num_gpus``, ``seed``).
        link: GPU-to-GPU link for KV transfers (and a buffered request's parked KV coming back).
        abandon_rate_per_s: patience rate per second, a number or ``f(request) -> rate`` (0: never abandons).
        seed: seeds the patience draws (the dispatcher has its own seed).
        until_s: stop the clock there (s); ``None`` runs until nothing is left to do.
    """
    if isinstance(num_gpus, bool) or not isinstance(num_gpus, (int, np.integer)) or num_gpus < 1:
        raise ConfigError(f"num_gpus = {num_gpus!r} must be an integer >= 1")
    if gpu.kv_bytes_per_token <= 0:
        raise ConfigError(f"gpu.kv_bytes_per_token = {gpu.kv_bytes_per_token}; a KV transfer needs it "
                          f"(gpusched.llm.get_model(name).kv_bytes_per_token())")
    if until_s is not None and not (isinstance(until_s, (int, float)) and until_s > 0):
        raise ConfigError(f"until_s = {until_s!r} must be a number > 0 or None")
    if isinstance(dispatcher, str):
        context = BuildContext(trace=trace, step_model=gpu.step_model, num_kv_blocks=gpu.num_kv_blocks,
                               block_size_tokens=gpu.block_size_tokens, num_instances=int(num_gpus), seed=seed)
        dispatcher = registry.build(KIND, dispatcher, context, **(dispatcher_knobs or {}))
    elif dispatcher_knobs:
        raise ConfigError("dispatcher_knobs are for a dispatcher given by name; this one is an object")
    run = _DispatchRun(trace, gpu, int(num_gpus), dispatcher, link, abandon_rate_per_s, seed, record_timeline,
                       check_invariants)
    run.env.process(run.arrivals())
    run.env.run(until=until_s)
    return run.result(math.inf if until_s is None else float(until_s))


class _DispatchRun:
    """The SimPy world of one :func:`simulate_dispatch` call; also the :class:`~gpusched.policy.DispatchView`."""

    def __init__(self, trace, gpu, n, dispatcher, link, abandon_rate, seed, record_timeline, check_invariants):
        self.env = env = simpy.Environment()
        self.trace, self.dispatcher, self.link = trace, dispatcher, link
        self.num_gpus = n
        self.modes = tuple(dispatcher.gpu_modes(n))
        if len(self.modes) != n or any(m not in GPU_MODES for m in self.modes):
            raise ConfigError(f"dispatcher {dispatcher.name!r} gave modes {self.modes!r} for {n} GPUs; give one of "
                              f"{GPU_MODES} per GPU")
        B, C, K = dispatcher.max_decodes, dispatcher.chunk_tokens, dispatcher.num_queues
        self.B = B
        self._check_kv(trace, gpu, B)
        self.kv_bytes_per_token = gpu.kv_bytes_per_token
        self.engines = [
            InstanceEngine(env, g, GpuModeScheduler(mode, B, C, g), gpu.step_model,
                           BlockManager(gpu.num_kv_blocks, gpu.block_size_tokens), role="colocated",
                           on_first_token=self._left_gpu, on_finish=self._finished, on_prefill_done=self._prefill_done,
                           record_timeline=record_timeline, check_invariants=check_invariants, fast=False,
                           kv_bytes_per_token=gpu.kv_bytes_per_token)
            for g, mode in enumerate(self.modes)]
        # the view: per queue
        self.waiting = [0] * K
        self.prefilling = [0] * K
        self.oldest_waiting_s = [math.inf] * K
        self._queues = [deque() for _ in range(K)]
        # per GPU
        self._cap = [B - 1 if m == GPU_MIXED else B for m in self.modes]
        self._prefill = [None] * n  # the sequence prefilling on each GPU
        self._decodes = [0] * n  # decode slots taken, transfers in flight included
        self._by_mode = {m: [g for g in range(n) if self.modes[g] == m] for m in GPU_MODES}
        self._buffers: dict[str, deque] = {}
        # per request
        df = trace.df
        self.seqs = [SeqState(r, i, float(t), int(p), int(o)) for i, (r, t, p, o) in enumerate(zip(
            df["request_id"].tolist(), df["arrival_time_s"].tolist(), df["prompt_tokens"].tolist(),
            df["output_tokens"].tolist()))]
        m = len(self.seqs)
        self._status = [_WAITING] * m
        self._reason = [""] * m
        self._queue = [-1] * m
        self._prefill_gpu = [-1] * m
        self._decode_gpu = [-1] * m
        self._spell = [0] * m  # waiting spell of each request: a patience clock of an older spell is stale
        self._target: dict[int, int | None] = {}  # request -> GPU (or None: a buffer) it leaves its prefill GPU for
        self._abandon_rate = abandon_rate
        if not callable(abandon_rate) and not (math.isfinite(float(abandon_rate)) and float(abandon_rate) >= 0):
            raise ConfigError(f"abandon_rate_per_s = {abandon_rate!r} must be a finite number >= 0 or a function")
        self._exp = np.random.default_rng(np.random.SeedSequence(seed)).standard_exponential

    # ---------------------------------------------------------------- view
    @property
    def now_s(self) -> float:
        return self.env.now

    def free_decode_gpus(self, mode: str):
        return [g for g in self._by_mode.get(mode, ()) if self._has_free_decode(g)]

    def _has_free_decode(self, g: int) -> bool:
        busy = self._decodes[g] + (1 if self.modes[g] == GPU_SHARED and self._prefill[g] is not None else 0)
        return busy < self._cap[g]

    def _may_prefill(self, g: int) -> bool:
        mode = self.modes[g]
        if mode == GPU_SOLO or self._prefill[g] is not None:
            return False
        return mode == GPU_MIXED or self._decodes[g] < self._cap[g]

    # ---------------------------------------------------------------- set-up checks
    @staticmethod
    def _check_kv(trace, gpu, B: int) -> None:
        need = (trace.df["prompt_tokens"] + trace.df["output_tokens"]).to_numpy()
        if not need.size:
            return
        biggest = int(need.max())
        blocks = -(-biggest // gpu.block_size_tokens)
        if (B + 2) * blocks > gpu.num_kv_blocks:
            raise ConfigError(
                f"a GPU holds {gpu.num_kv_blocks} KV blocks but B + 2 = {B + 2} of the trace's largest requests "
                f"({biggest} tokens, {blocks} blocks) need {(B + 2) * blocks}: the dispatch model has no KV "
                f"constraint, so KV must never bind. Lower max_decodes, filter the trace, or use a larger GPU")

    # ---------------------------------------------------------------- arrivals and patience
    def arrivals(self):
        env = self.env
        for seq in self.seqs:
            if seq.arrival_time_s > env.now:
                yield from wait_until(env, seq.arrival_time_s, urgent=True)
            self._arrive(seq)

    def _arrive(self, seq: SeqState) -> None:
        key = self.dispatcher.on_arrival(seq, self)
        if isinstance(key, str):
            self._status[seq.index], self._reason[seq.index] = _REJECTED, f"rejected: {key}"
            return
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < len(self.waiting):
            raise DispatchViolationError(f"dispatcher {self.dispatcher.name!r} put request {seq.request_id!r} in "
                                         f"queue {key!r}; queues are 0..{len(self.waiting) - 1} (or a str: reject)")
        i = seq.index
        self._queue[i] = int(key)
        self._queues[key].append(seq)
        self.waiting[key] += 1
        if self.oldest_waiting_s[key] == math.inf:
            self.oldest_waiting_s[key] = seq.arrival_time_s
        self._start_patience(seq)
        for g in range(self.num_gpus):  # idle prefill slots, lowest index first, until the dispatcher declines
            if not any(self.waiting):
                break
            if self._may_prefill(g):
                k = self.dispatcher.choose_prefill(self, g)
                if k is None:
                    break
                self._start_prefill(g, k)

    def _start_patience(self, seq: SeqState) -> None:
        i = seq.index
        self._spell[i] += 1
        rate = abandon_rate_of(self._abandon_rate, seq)
        if rate > 0:
            ev = self.env.timeout(float(self._exp()) / rate)
            ev.callbacks.append(lambda _ev, seq=seq, spell=self._spell[i]: self._abandon(seq, spell))

    def _abandon(self, seq: SeqState, spell: int) -> None:
        i = seq.index
        if spell != self._spell[i] or self._status[i] not in (_WAITING, _BUFFERED):
            return  # it left that wait
        if self._status[i] == _WAITING:
            k = self._queue[i]
            self.waiting[k] -= 1
            self._reason[i] = "abandoned waiting for prefill"
            self._status[i] = _ABANDONED
            self._update_oldest(k)
        else:
            self._reason[i] = "abandoned in decode buffer"
            self._status[i] = _ABANDONED

    def _update_oldest(self, k: int) -> None:
        q = self._queues[k]
        while q and self._status[q[0].index] != _WAITING:
            q.popleft()
        self.oldest_waiting_s[k] = q[0].arrival_time_s if q else math.inf

    # ---------------------------------------------------------------- prefill
    def _start_prefill(self, g: int, k) -> None:
        if (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(self.waiting)
                or self.waiting[k] <= 0):
            raise DispatchViolationError(f"dispatcher {self.dispatcher.name!r} chose queue {k!r} for GPU {g}, which "
                                         f"has no waiting request (waiting = {self.waiting})")
        if not self._may_prefill(g):
            raise DispatchViolationError(f"GPU {g} ({self.modes[g]}) cannot start a prefill now")
        self._update_oldest(k)
        seq = self._queues[k].popleft()
        i = seq.index
        self._status[i] = _PREFILL
        self._spell[i] += 1
        self.waiting[k] -= 1
        self.prefilling[k] += 1
        self._update_oldest(k)
        self._prefill[g] = seq
        self._prefill_gpu[i] = g
        seq.scheduled_time_s = self.env.now
        self.engines[g].submit(seq)

    def _try_prefill(self, g: int) -> None:
        if self._may_prefill(g) and any(self.waiting):
            k = self.dispatcher.choose_prefill(self, g)
            if k is not None:
                self._start_prefill(g, k)

    def _prefill_done(self, seq: SeqState, now_s: float) -> bool:
        """Engine ``g`` sampled ``seq``'s first token: free the prefill slot, route the decode. True: ``seq``
        leaves the GPU (hand-off), False: it decodes there."""
        g, i = seq.instance, seq.index
        self._prefill[g] = None
        self.prefilling[self._queue[i]] -= 1
        if self.dispatcher.prefill_first:
            self._try_prefill(g)
        target = self.dispatcher.route_decode(self, seq, self._queue[i], g)
        stays = False
        if isinstance(target, str):
            self._status[i] = _BUFFERED
            self._buffers.setdefault(target, deque()).append(seq)
            self._target[i] = None
            self._start_patience(seq)
        else:
            self._reserve(target, seq)
            stays = target == g
            if stays:
                self._status[i] = _DECODING
            else:
                self._target[i] = int(target)
        self._fill(g)
        return not stays

    def _reserve(self, t, seq: SeqState) -> None:
        if (isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.num_gpus
                or not self._has_free_decode(t)):
            raise DispatchViolationError(f"dispatcher {self.dispatcher.name!r} sent the decode of {seq.request_id!r} "
                                         f"to GPU {t!r}, which has no free decode slot")
        self._decodes[t] += 1
        self._decode_gpu[seq.index] = int(t)
        self._status[seq.index] = _TRANSFER

    def _left_gpu(self, seq: SeqState, now_s: float) -> None:
        """``seq`` left its prefill GPU's batch (after :meth:`_prefill_done` answered True)."""
        target = self._target.pop(seq.index)
        source = self.engines[seq.instance]
        if target is None:  # parked off the GPU while it waits in a buffer
            source.release(seq)
        else:
            self.env.process(self._transfer(seq, source, target))

    def _transfer(self, seq: SeqState, source: InstanceEngine | None, target: int):
        yield self.env.timeout(self.link.transfer_time_s(seq.num_computed_tokens * self.kv_bytes_per_token))
        if source is not None:
            source.release(seq)
        self._status[seq.index] = _DECODING
        self.engines[target].submit(seq)

    # ---------------------------------------------------------------- decode slots
    def _finished(self, seq: SeqState, now_s: float) -> None:
        g, i = seq.instance, seq.index
        if self._prefill[g] is seq:  # a one-token output: finished with its prefill
            self._prefill[g] = None
            self.prefilling[self._queue[i]] -= 1
        else:
            self._decodes[g] -= 1
        self._status[i] = _DONE
        self._fill(g)

    def _fill(self, g: int) -> None:
        if self.dispatcher.prefill_first:
            self._try_prefill(g)
            self._try_pull(g)
        else:
            self._try_pull(g)
            self._try_prefill(g)

    def _try_pull(self, g: int) -> None:
        while self._has_free_decode(g):
            key = self.dispatcher.pull_decode(self, g)
            q = self._buffers.get(key) if key is not None else None
            while q and self._status[q[0].index] != _BUFFERED:
                q.popleft()  # abandoned
            if not q:
                return
            seq = q.popleft()
            self._spell[seq.index] += 1
            self._reserve(g, seq)
            self.env.process(self._transfer(seq, None, g))

    # ---------------------------------------------------------------- results
    def result(self, until_s: float) -> DispatchResult:
        seqs, status = self.seqs, self._status
        reasons = []
        for i in range(len(seqs)):
            s = status[i]
            if s == _DONE:
                reasons.append("finished")
            elif s in (_ABANDONED, _REJECTED):
                reasons.append(self._reason[i])
            else:
                reasons.append(_OPEN_STATUS[s])
        if math.isinf(until_s):  # ran dry: only requests a dispatcher never admitted may be left
            stuck = [r for r in reasons if r not in ("finished", "waiting for prefill", "in decode buffer")
                     and not r.startswith(("rejected", "abandoned"))]
            if stuck:
                raise DispatchViolationError(f"the run ended with {len(stuck)} request(s) in service ({stuck[0]}); "
                                             f"an engine bug")
        frame = sequences_frame(self.trace.df["request_id"].to_numpy(), seqs, instance=self._decode_gpu,
                                num_preemptions=[0] * len(seqs), cached_tokens=[0] * len(seqs), status=reasons)
        frame["queue"] = self._queue
        frame["prefill_gpu"] = self._prefill_gpu
        frame["decode_gpu"] = self._decode_gpu
        timeline = timeline_frame(self.engines)
        return DispatchResult(frame, timeline, [e.kv.num_blocks for e in self.engines],
                              sum(e.num_steps for e in self.engines), engine="dispatch", modes=self.modes,
                              dispatcher=self.dispatcher.name, until_s=until_s)


def revenue_rate(requests: pd.DataFrame, num_gpus: int, price_prefill: float, price_decode: float,
                 start_s: float, end_s: float, charging: str = "bundled") -> float:
    """Revenue per GPU-second over ``[start_s, end_s)`` from a per-request table (any engine's).

    ``bundled`` (Eq. (21)-(22) of arXiv 2602.02987): ``c_p P + c_d D`` of each request finished in the window,
    with its own prompt ``P`` and output ``D`` tokens. ``separate`` (Eq. (23)): ``c_p P`` when the prefill
    completes (the first token) and ``c_d D`` when the request finishes, each if in the window.
    """
    if not end_s > start_s:
        raise ConfigError(f"revenue window [{start_s}, {end_s}) is empty")
    fin = requests["finish_time_s"].to_numpy(float)
    first = requests["first_token_time_s"].to_numpy(float)
    P = requests["prompt_tokens"].to_numpy(float)
    D = requests["output_tokens"].to_numpy(float)
    done = (requests["status"].to_numpy() == "finished") & (fin >= start_s) & (fin < end_s)
    if charging == "bundled":
        total = float((price_prefill * P + price_decode * D)[done].sum())
    elif charging == "separate":
        pre = (first >= start_s) & (first < end_s)
        total = float(price_prefill * P[pre].sum() + price_decode * D[done].sum())
    else:
        raise ConfigError(f"charging = {charging!r}; choose 'bundled' or 'separate'")
    return total / (num_gpus * (end_s - start_s))
