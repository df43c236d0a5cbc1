"""The batch loop shared by the discrete-time algorithms and the paper's real-data simulation.

One worker runs one batch at a time. Every started, unfinished request is in every batch (non-preemptive);
a policy decides which waiting prompts join. Time is counted twice: ``it`` (iterations, the model's rounds)
and ``now`` (the clock: equal to ``it`` shifted by idle gaps when every batch takes one unit, wall-clock
seconds with an iteration-time formula).

A request ``i`` needs ``K_i`` iterations; after ``k`` of them it holds ``s_i + k`` tokens. In the theory
model ``K = o`` (peak ``s + o``); in the authors' real-data code ``K = o + 1`` (the prompt iteration counts).
A running request is stored by its *virtual start* ``P = it_started``, so its tokens at iteration counter
``it`` are ``s + it - P``, exactly the ``s_i + t - p_i`` of the model.

Policies (spec §1(c)):
* ``"mcsf"`` / ``"mc-benchmark"``: future-feasibility check at completion points, waiting prompts in order of
  predicted length / arrival, stop at the first that fails (``break``, spec §1(g).3).
* ``"alpha-greedy"``: admit FCFS (up to ``batch_cap`` jobs) only if current usage ``<= (1 - alpha) M``; after a
  batch whose memory exceeded ``M``, reset every request of that batch.
* ``"alpha-beta"``: same admission; on overflow reset each request with probability ``beta`` until the memory
  fits.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gpusched.errors import ConfigError, InfeasibleError

__all__ = ["admit_prefix", "run_batches", "BatchRun", "POLICIES"]

POLICIES = ("mcsf", "mc-benchmark", "alpha-greedy", "alpha-beta")


def admit_prefix(now_it: int, run_P: np.ndarray, run_S: np.ndarray, run_E: np.ndarray,
                 cand_S, cand_K, memory: int) -> int:
    """Length of the longest prefix of candidates that passes MC-SF's future-feasibility check.

    Running request ``j`` projects ``run_S[j] + t' - run_P[j]`` tokens at every ``t' <= run_E[j]`` (its
    predicted last iteration); candidate ``i`` started now projects ``cand_S[i] + t' - now_it`` for
    ``t' <= now_it + cand_K[i]``. The projected load is piecewise increasing and drops only after a
    completion, so it is checked at completion points only (spec §1(c)), up to the last candidate's end.

    The paper adds candidates one at a time and stops at the first that fails. Adding a candidate only
    raises the load, so feasibility is monotone in the prefix length and the first failure is found by
    bisecting over the prefix length, below a bound read off the load at ``t + 1``: O(log m) vectorised
    checks of O(n) each after one sort (n = running + candidates), instead of m checks -- the same
    answer, far fewer numpy calls.

    Args:
        now_it: the iteration counter ``t`` at which the candidates would start.
        run_P, run_S, run_E: (k,) virtual start, prompt tokens and predicted end iteration of running requests.
        cand_S, cand_K: candidate prompt tokens and predicted iteration counts, in priority order.
        memory: ``M`` in tokens.
    """
    live = np.asarray(run_E) > now_it  # a running request past its predicted end projects nothing
    run_end = np.asarray(run_E, dtype=np.int64)[live]
    run_w = (np.asarray(run_S, dtype=np.int64) - np.asarray(run_P, dtype=np.int64))[live]  # load = w + t'
    cand_end = now_it + np.asarray(cand_K, dtype=np.int64)
    cand_w = np.asarray(cand_S, dtype=np.int64) - now_it

    # One sort of every member by completion point serves all prefix checks: a prefix only masks members.
    end = np.concatenate([run_end, cand_end])
    w = np.concatenate([run_w, cand_w])
    rank = np.concatenate([np.full(run_end.size, -1), np.arange(cand_end.size)])  # -1: running
    order = np.argsort(end, kind="stable")
    end, w, rank = end[order], w[order], rank[order]
    first = np.searchsorted(end, end, side="left")  # members from here on end at or after this point

    def fits(m: int) -> bool:
        """Whether the running requests plus the first ``m`` candidates fit at every completion point."""
        member = rank < m
        still_w = np.cumsum(np.where(member, w, 0)[::-1])[::-1]  # sum of w over members ending >= point
        still_n = np.cumsum(member[::-1])[::-1]
        load = still_w[first] + end * still_n[first]
        # Only t' up to the last candidate's end are checked (spec: t' <= t_max(U)); later points carry
        # running requests alone, which the candidates cannot change.
        return bool(load[member & (end <= cand_end[:m].max())].max() <= memory)

    # Upper bound: every member holds its load at t+1 until its completion point, where the load is at
    # least as high, so a prefix that overflows at t+1 cannot fit.
    room = memory - (int(run_w.sum()) + (now_it + 1) * run_w.size)
    good, bad = 0, int(np.searchsorted(np.cumsum(cand_w + now_it + 1), room, side="right")) + 1
    if bad > 1 and fits(bad - 1):
        return bad - 1
    while bad - good > 1:  # invariant: fits(good) (or good == 0), not fits(bad) (or bad past the bound)
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


@dataclass
class BatchRun:
    """Outcome of :func:`run_batches` (arrays in request order).

    Attributes:
        start_time: clock time of the batch in which the completed run started.
        finish_time: clock time at the end of the request's last iteration.
        start_iter: iteration counter at that start (the virtual start ``P``).
        resets: overflow events; restarts: requests thrown back by them (with multiplicity).
        peak_memory: largest token count held at the end of any batch (before any reset).
        overflow_batches: batches whose memory exceeded ``M`` (MC-SF with under-predictions, alpha rules).
        n_batches: batches run; busy_time: clock time spent in batches.
    """

    start_time: np.ndarray
    finish_time: np.ndarray
    start_iter: np.ndarray
    resets: int
    restarts: int
    peak_memory: int
    overflow_batches: int
    n_batches: int
    busy_time: float


def run_batches(arrival, prompt, iters, pred_iters, memory: int, policy: str, *,
                batch_time: Callable[[int, float, int], float] | None = None, alpha: float = 0.0,
                beta: float = 0.5, batch_cap: int | None = None, seed: int = 0,
                max_batches: int | None = None) -> BatchRun:
    """Run one policy on a worker until every request has finished.

    Args:
        arrival: (n,) arrival times on the clock (rounds, or seconds with ``batch_time``).
        prompt: (n,) prompt tokens ``s``.
        iters: (n,) true iterations ``K`` each request needs.
        pred_iters: (n,) predicted iterations used by the MC checks (``K`` for oracle predictions).
        memory: ``M`` tokens.
        policy: one of :data:`POLICIES`.
        batch_time: ``f(jobs, mean_context_tokens, prompt_tokens) -> duration`` of a batch; ``None``: 1.
        alpha, beta, batch_cap: threshold-rule parameters (``batch_cap=None``: unlimited).
        seed: randomness of ``alpha-beta``'s clearing.
        max_batches: give up (raise :class:`~gpusched.errors.InfeasibleError`) after this many batches.

    Raises :class:`~gpusched.errors.InfeasibleError` when alpha-greedy livelocks (the same set of requests
    reset twice in a row, nothing completed in between, and no arrival able to change the next cycle) or
    ``max_batches`` is exceeded.
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {POLICIES}")
    if not 0.0 <= alpha < 1.0:
        raise ConfigError(f"alpha must be in [0, 1), got {alpha!r}")
    if not 0.0 < beta <= 1.0:
        raise ConfigError(f"beta must be in (0, 1], got {beta!r}")
    if batch_cap is not None and batch_cap < 1:
        raise ConfigError(f"batch_cap must be >= 1 or None, got {batch_cap!r}")
    arrival = np.asarray(arrival)
    S = np.asarray(prompt, dtype=np.int64)
    K = np.asarray(iters, dtype=np.int64)
    KP = np.asarray(pred_iters, dtype=np.int64)
    n = len(S)
    if not (len(arrival) == len(K) == len(KP) == n):
        raise ConfigError("arrival, prompt, iters and pred_iters must have the same length")
    if n and (S + K).max() > memory:
        i = int(np.argmax(S + K))
        raise ConfigError(f"request {i} needs {int(S[i] + K[i])} tokens > M = {memory}; it can never run")
    if policy in ("mcsf", "mc-benchmark") and n and (S + KP).max() > memory:
        i = int(np.argmax(S + KP))
        raise ConfigError(f"request {i} has predicted peak {int(S[i] + KP[i])} > M = {memory}; MC-SF would wait "
                          f"for it forever: cap its prediction at M - s")
    if max_batches is None:
        max_batches = int(50 * (K.sum() + n) + 10_000)
    rng = np.random.default_rng(seed)
    arr_order = sorted(range(n), key=lambda i: (arrival[i], i))
    sf = policy == "mcsf"
    fcfs_key = [(arrival[i], i) for i in range(n)]
    key = [(int(KP[i]), i) for i in range(n)] if sf else fcfs_key
    mc = policy in ("mcsf", "mc-benchmark")

    start_time = np.full(n, np.nan)
    finish_time = np.full(n, np.nan)
    start_iter = np.full(n, -1, dtype=np.int64)
    P: dict[int, int] = {}  # running request -> virtual start
    gen = [0] * n  # generation, to invalidate heap entries of reset requests
    done_heap: list[tuple[int, int, int]] = []  # (P + K, id, gen)
    waiting: list[tuple] = []  # heap of (key, id)
    sum_w = 0  # sum over running of (s - P): memory at counter it = sum_w + it * len(P)
    sum_P = 0
    nxt = 0  # next arrival in arr_order
    now = 0 if batch_time is None else 0.0
    it = 0
    resets = restarts = overflow = batches = 0
    peak = 0
    busy = 0.0
    finished = 0
    last_full_reset: frozenset | None = None
    completed_since_reset = False
    drained_since_reset = False  # an admission took the whole queue, so new arrivals could change the next one

    def reset(ids):
        nonlocal sum_w, sum_P, restarts
        for j in ids:
            pj = P.pop(j)
            sum_w -= int(S[j]) - pj
            sum_P -= pj
            gen[j] += 1
            start_time[j] = np.nan
            heapq.heappush(waiting, (key[j], j))
            restarts += 1

    while finished < n:
        while nxt < n and arrival[arr_order[nxt]] <= now:
            i = arr_order[nxt]
            heapq.heappush(waiting, (key[i], i))
            nxt += 1
        if not P and not waiting:
            now = arrival[arr_order[nxt]]  # idle: jump to the next arrival
            if batch_time is None:
                now = int(now)
            continue
        # --- admission --------------------------------------------------------------------------------
        new: list[int] = []
        if waiting:
            if mc:
                # candidates in priority order; the check stops at the first failure, so only a prefix of
                # the sorted waiting list matters -- pop lazily.
                ids = list(P)
                rP = np.fromiter((P[j] for j in ids), dtype=np.int64, count=len(ids))
                rS = S[ids] if ids else np.zeros(0, dtype=np.int64)
                rE = rP + (KP[ids] if ids else np.zeros(0, dtype=np.int64))
                order = []
                # Cheap necessary condition first: projected load at it+1 plus s+1 per newcomer must fit
                # (the load only grows until the next completion point, which the full check visits).
                live = rE > it
                free = memory - int((rS[live] - rP[live]).sum()) - (it + 1) * int(live.sum())
                while waiting:
                    _, i = waiting[0]
                    if free < S[i] + 1:
                        break
                    heapq.heappop(waiting)
                    order.append(i)
                    free -= int(S[i]) + 1
                if order:
                    m = admit_prefix(it, rP, rS, rE, [int(S[i]) for i in order], [int(KP[i]) for i in order],
                                     memory)
                    new = order[:m]
                    for i in order[m:]:
                        heapq.heappush(waiting, (key[i], i))
            else:
                usage = sum_w + it * len(P)
                if usage <= (1.0 - alpha) * memory:
                    room = math.inf if batch_cap is None else batch_cap - len(P)
                    while waiting and len(new) < room:
                        new.append(heapq.heappop(waiting)[1])
                    drained_since_reset |= not waiting and len(new) < room
        # --- run one batch ------------------------------------------------------------------------------
        n_dec = len(P)
        ctx_sum = it * n_dec - sum_P  # decode context = tokens processed so far
        for i in new:
            P[i] = it
            sum_w += int(S[i]) - it
            sum_P += it
            start_time[i] = now
            start_iter[i] = it
            heapq.heappush(done_heap, (it + int(K[i]), i, gen[i]))
        if batch_time is None:
            dur = 1
        else:
            jobs = n_dec + len(new)
            dur = float(batch_time(jobs, ctx_sum / jobs, int(S[new].sum()) if new else 0))
        now = now + dur
        busy += dur
        it += 1
        batches += 1
        if batches > max_batches:
            raise InfeasibleError(f"policy {policy!r} (alpha={alpha}) did not finish within {max_batches} batches "
                                  f"({finished}/{n} done, {resets} memory resets): no progress under this memory")
        mem = sum_w + it * len(P)  # includes requests finishing in this batch (their KV existed during it)
        peak = max(peak, mem)
        if mem > memory:
            overflow += 1
            if policy == "alpha-greedy":
                resets += 1
                # Livelock: FCFS puts the reset requests back at the head of the queue in the same order (new
                # arrivals queue behind them) and admission depends only on their ages, so if this cycle reset
                # the same set as the last, with no completion and never short of queued requests, every
                # later cycle repeats it.
                state = frozenset(P)
                if last_full_reset == state and not completed_since_reset and (not drained_since_reset or nxt >= n):
                    raise InfeasibleError(
                        f"alpha-greedy with alpha={alpha} livelocks: the same {len(state)} requests overflow "
                        f"M = {memory} and are reset again and again ({finished}/{n} done); raise alpha")
                last_full_reset = state
                completed_since_reset = drained_since_reset = False
                reset(sorted(P))
                continue
            if policy == "alpha-beta":
                resets += 1
                while sum_w + it * len(P) > memory:
                    reset([j for j in sorted(P) if rng.random() < beta])
                completed_since_reset = False
        while done_heap and done_heap[0][0] <= it:
            _, i, g = heapq.heappop(done_heap)
            if g != gen[i] or i not in P:
                continue
            pi = P.pop(i)
            sum_w -= int(S[i]) - pi
            sum_P -= pi
            finish_time[i] = now
            finished += 1
            completed_since_reset = True
    return BatchRun(start_time, finish_time, start_iter, resets, restarts, int(peak), overflow, batches, busy)
