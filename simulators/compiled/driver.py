"""A compiled engine for the configurations sweeps use most: colocated or prefill/decode-disaggregated
instances of the baseline schedulers.

:func:`simulators.serving.simulate` in ``mode="fast"`` runs a trace here when :func:`unsupported_reason`
returns None, and on the SimPy engine otherwise. The loop (:mod:`simulators.compiled.kernel`, compiled
by numba on first use and cached on disk) is a transcription of the SimPy engine's step mode on flat
arrays: the same scheduler rules, block manager and step prices, float operations in the same order,
and arrivals seen at the same SimPy times, so its per-request results and timeline are identical to
``mode="step"`` (``tests/test_sim_compiled.py``; the Python schedulers stay the rules' source, the
kernel follows them). It does not replace the SimPy engine: every other configuration, and every
policy plugged in through :mod:`gpusched.policy` other than by a :class:`~gpusched.policy.CompiledRule`,
runs there.

Why it exists: the Python engine spends tens of µs per event (schedule, price, account), so it serves
thousands of requests per wall-second on the bundled Azure trace; sweeps over thousands of
configurations want an order of magnitude more (``gpusched bench`` prints both).

Covered: any number of ``colocated`` instances with the same scheduler settings, step-time model and
block size (KV capacities may differ: a request is routed among those that hold it, as on the SimPy
engine), behind any router of :mod:`simulators.serving.routers` given by name; prefill/decode
disaggregation (any number of ``prefill`` and ``decode`` instances, colocated ones beside them allowed,
a decode router of :mod:`simulators.serving.routers` given by name, a :class:`~gpusched.hardware.LinkSpec`
link: the hand-off after the first token, the KV held on the prefill instance until its transfer ends,
one-token outputs finishing there, as ``_ServingRun._transfer`` does; a round-robin or random decode
router only when every decode instance holds every request); the ``vllm-v1``
scheduler (any token budget, sequence cap, chunking, prefix caching, long-prefill threshold,
full-prompt reservation, recompute or swap preemption), ``vllm-v0``, ``sarathi`` and ``static`` (any
knobs); a profiled step-time model in the H100 op-table format; traces with or without prefix-block
ids (Mooncake's: requests then share the blocks their ids name, as on the SimPy engine; with prefix
caching a request without ids has its own block hashes, so that a preempted request finds what was not
evicted; static batching allocates without hashes and never probes the cache, so the ids only name the
blocks a finished request leaves cached); MC-SF (``formulations.mcsf.McsfScheduler`` with the oracle's
predictions, by output length or FCFS, on colocated instances, traces without prefix-block ids or
sessions: its ``compiled_rule``; its preemption on a KV shortage is not transcribed, since under the
oracle it cannot happen, and the kernel reports it as a broken invariant if it did); WAIT and Nested
WAIT (``formulations.nested_wait``'s ``WaitScheduler`` and ``NestedWaitScheduler``, the registered
``wait`` and ``nested-wait``: any thresholds, segments, mode, in-flight cap, ``max_wait_s`` and drain
time; WAIT's types by exact lengths or the calibration's output-length bins; colocated instances, one
policy object each, traces without prefix-block ids or sessions: their ``compiled_rule``), with the
engine's side of them: an empty plan that holds (residents keep their KV) and its wake-up timer
(``InstanceEngine._wake_later``), events in SimPy's order, held requests reported unfinished when the
run ends; multi-round sessions (``session_id``/``round``/``think_time_s``, with every scheduler, router
and cluster shape above but the policies' rules, sessions beside independent requests too), as
``_ServingRun`` runs them: only first rounds arrive from the trace; a finished round starts its
successor's release, which waits until ``max(trace time, finish + think)`` (an URGENT wait, ordered
against the arrival process's waits as SimPy orders them) and routes it, the release time written into
the results' ``arrival_time_s``; a session's rounds name the same block slots (one set per session and
instance, as long as its longest round), so a round finds the history its predecessors left cached on
its instance. Not covered: abandonment, other policies and router objects, a round-robin or random decode
router offered only some decode instances (instances of unequal KV and a request that only the larger
hold), and sessions behind a round-robin or random entry router when some request fits only some
instances (the compiled engine asks such a router in advance, by routing number, which only works when
its answers do not depend on the request: rounds are routed in release order, not trace order).

Step prices: the terms that depend only on a step's token count (``ProfiledStepTime._token_terms_s``)
are tabulated up to the scheduler's token budget (:func:`_tabulate`); a static batch's prefill has no
budget (up to ``max_batch_size`` whole prompts), so the kernel computes the terms of a larger count
itself (:func:`simulators.compiled.kernel._token_terms`, the model's float operations in its order: the
same bits). Tabulating instead up to the largest batch prefill the trace allows (the ``max_batch_size``
longest prompts, at most the KV capacity) was measured and rejected: on the bundled Azure trace with
the bench's defaults that bound is 214,412 tokens at about 7 µs a count, 1.5 s of tabulation for a run
that takes 0.1 s, while the kernel computes the terms once per batch (four interpolations).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpusched.cluster import DEFAULT_LINK, ROLES  # ROLES by kernel code (kernel.ROLE_*)
from gpusched.hardware import LinkSpec
from gpusched.perf import ProfiledStepTime, _dtype_bytes
from gpusched.policy import InstanceView
from gpusched.workload import Trace
from simulators.serving.instance import SimulationInvariantError
from simulators.serving.results import TIMELINE_COLUMNS, SimResult, requests_frame
from simulators.serving.routers import ROUTERS, KvAwareRouter, LeastOutstandingTokensRouter, make_router
from simulators.serving.schedulers import SarathiScheduler, StaticBatchScheduler, VllmV0Scheduler, VllmV1Scheduler

# by kernel code (kernel.SCHED_*)
COMPILED_SCHEDULERS = (VllmV1Scheduler, VllmV0Scheduler, SarathiScheduler, StaticBatchScheduler)
COMPILED_RULES = ("mc-sf", "wait", "nested-wait")  # the policies' rules it carries (gpusched.policy.CompiledRule)
WAIT_RULES = ("wait", "nested-wait")  # kernel.SCHED_WAIT, SCHED_NESTED_WAIT (and "mc-sf": SCHED_MCSF)
RULE_TABLE_TOKENS = 1024  # token terms tabulated for a rule without a token budget (larger steps: in the kernel)
EAGER_DECODE_BASES = 1024  # decode-step bases tabulated ahead; larger batches' are computed when first needed

__all__ = ["unsupported_reason", "simulate_compiled", "arrival_event_times"]

PROGRESS_EVERY = 2000  # at least this many arrivals between two progress-bar updates
MAX_SHARED_SLOTS = 40_000_000  # engine blocks named by trace prefix ids, over all instances (~21 bytes each)
MAX_SESSION_SLOTS = 40_000_000  # sessions' block slots (each as long as its longest round), times the instances


def unsupported_reason(trace: Trace, instances, router, hash_own_blocks, schedulers=None,
                       decode_router="least-outstanding-tokens", link=DEFAULT_LINK) -> str | None:
    """Why the compiled engine cannot run this configuration, or None if it can. ``schedulers``: the
    instances' schedulers if the caller has built them already (built here otherwise). ``decode_router``
    and ``link``: as :func:`simulators.serving.simulate` takes them (read when there are decode instances)."""
    if not isinstance(router, str) or router.lower() not in ROUTERS:
        return "it runs the routers of simulators.serving.routers given by name"
    decode = [cfg for cfg in instances if cfg.role == "decode"]
    if decode:
        if not isinstance(decode_router, str) or decode_router.lower() not in ROUTERS:
            return "it runs the decode routers of simulators.serving.routers given by name"
        if type(make_router(decode_router)) not in (LeastOutstandingTokensRouter, KvAwareRouter):
            smallest = min(cfg.kv_capacity_tokens for cfg in decode)
            if int((trace.df["prompt_tokens"] + trace.df["output_tokens"]).to_numpy().max(initial=0)) > smallest:
                return ("a round-robin or random decode router, and a request that only some decode instances "
                        "hold (the router's answers depend on which it is offered)")
        if type(link) is not LinkSpec:
            return "it prices hand-offs with a gpusched.hardware.LinkSpec"
        if any(not isinstance(cfg.kv_bytes_per_token, (int, np.integer)) for cfg in instances if cfg.role == "prefill"):
            return "a prefill instance whose kv_bytes_per_token is not an integer"
    first = instances[0]
    if schedulers is None:
        schedulers = [cfg.build_scheduler(trace) for cfg in instances]
    scheduler = schedulers[0]
    rule = compiled_rule(scheduler)
    if type(scheduler) not in COMPILED_SCHEDULERS and rule is None:
        return ("it runs the vllm-v1, vllm-v0, sarathi and static schedulers and the policies' rules of "
                f"gpusched.policy.CompiledRule {COMPILED_RULES}")
    if rule is not None and rule.name in WAIT_RULES:  # (one policy object per instance: compare what the rule reads)
        if len({id(s) for s in schedulers}) < len(schedulers):
            return f"one {rule.name} object on several instances (it keeps one instance's queues)"
        if any(type(other) is not type(scheduler) or compiled_rule(other) != rule for other in schedulers[1:]):
            return "instances with different scheduler settings"
    elif any(other != scheduler for other in schedulers[1:]):
        return "instances with different scheduler settings"
    if rule is not None:
        reason = _rule_unsupported(rule, trace, instances, hash_own_blocks)
        if reason is not None:
            return reason
    if getattr(scheduler, "preemption", "recompute") == "swap":
        link = {(cfg.kv_bytes_per_token, cfg.host_link_bytes_per_s) for cfg in instances}
        if len(link) > 1 or min(link)[0] <= 0 or min(link)[1] <= 0:
            return "swap preemption needs one host link and KV size per token, the same on every instance"
    model = first.step_model
    if type(model) is not ProfiledStepTime or model.fmt != "h100":
        return "it prices steps with the H100-format profiled step-time model"
    if any(cfg.step_model is not model or cfg.block_size_tokens != first.block_size_tokens for cfg in instances):
        return "instances with different step-time models or block sizes"
    df = trace.df
    if _has_sessions(df):
        entry = [cfg for cfg in instances if cfg.role != "decode"]
        if type(make_router(router)) not in (LeastOutstandingTokensRouter, KvAwareRouter):
            smallest = min(cfg.kv_capacity_tokens for cfg in entry)
            if int((df["prompt_tokens"] + df["output_tokens"]).to_numpy().max(initial=0)) > smallest:
                return ("multi-round sessions behind a round-robin or random router, and a request that only some "
                        "instances hold (rounds are routed in release order, and the router's answers depend on "
                        "which instances it is offered)")
        rounds = df["session_id"].notna()
        blocks = (df["prompt_tokens"] + df["output_tokens"])[rounds] // first.block_size_tokens
        slots = int(blocks.groupby(_session_codes(df)[rounds.to_numpy()]).max().sum())  # as _block_slots sizes them
        if slots * len(instances) > MAX_SESSION_SLOTS:
            return (f"more than {MAX_SESSION_SLOTS:,} session block slots (instances x the longest round of "
                    f"each session)")
    if "prefix_block_hashes" in df and df["prefix_block_hashes"].notna().any():
        if any(ids is not None and len(set(ids)) != len(ids) for ids in df["prefix_block_hashes"]):
            return "a request names the same prefix block twice"
        codes = len(set().union(*(ids for ids in df["prefix_block_hashes"] if ids is not None)))
        if codes * (trace.prefix_block_tokens or 0) // first.block_size_tokens * len(instances) > MAX_SHARED_SLOTS:
            return f"more than {MAX_SHARED_SLOTS:,} shared prefix blocks (instances x trace blocks)"
    return None


def compiled_rule(scheduler):
    """The :class:`gpusched.policy.CompiledRule` a scheduler declares for its settings, or None."""
    declare = getattr(scheduler, "compiled_rule", None)
    return declare() if callable(declare) else None


def _rule_unsupported(rule, trace: Trace, instances, hash_own_blocks) -> str | None:
    if rule.name not in COMPILED_RULES or rule.priority not in ("output", "arrival"):
        return f"it carries the rules {COMPILED_RULES} (not {rule.name!r} by {rule.priority!r})"
    if rule.name in WAIT_RULES:
        reason = _wait_unsupported(rule, trace)
        if reason is not None:
            return reason
    if any(cfg.role != "colocated" for cfg in instances):
        return (f"{rule.name}'s check counts only the running sequences' KV, not what a prefill instance holds "
                "for transfers: it runs colocated instances here")
    df = trace.df
    if hash_own_blocks or ("prefix_block_hashes" in df and df["prefix_block_hashes"].notna().any()):
        return f"{rule.name} allocates KV without block hashes: it runs traces without prefix-block ids here"
    if _has_sessions(df):
        return f"{rule.name} allocates KV without block hashes: it runs traces without sessions here"
    if rule.name == "mc-sf" and len(df) and int(df["output_tokens"].max()) * (len(df) + 1) >= 1 << 62:
        return "queue keys (output tokens x requests) would overflow 62 bits"
    return None


def _priority_keys(rule, df: pd.DataFrame, output: np.ndarray) -> np.ndarray:
    """Each request's queue key under ``rule`` (unique, smaller first), as the policy sorts its queue:
    ``(output tokens, row)`` or ``(arrival time, row)``; zeros when the rule has no queue order."""
    n = len(df)
    if rule is None or rule.name != "mc-sf":
        return np.zeros(n, np.int64)
    rows = np.arange(n, dtype=np.int64)
    if rule.priority == "output":
        return output * n + rows
    keys = np.empty(n, np.int64)
    keys[np.lexsort((rows, df["arrival_time_s"].to_numpy(float)))] = rows
    return keys


def _wait_groups(rule, df: pd.DataFrame) -> np.ndarray:
    """Each request's group under a WAIT rule, as the policy classifies it when it first sees the request: its type
    (``params["type_map"]``; -1: none) for ``"wait"``, 0 for ``"nested-wait"``."""
    n = len(df)
    if rule.name == "nested-wait":
        return np.zeros(n, np.int64)
    prompt = df["prompt_tokens"].to_numpy(np.int64)
    output = df["output_tokens"].to_numpy(np.int64)
    kind, *spec = rule.params["type_map"]
    if kind == "exact":
        index = {(p, o): j for p, o, j in spec[0]}
        return np.array([index.get(key, -1) for key in zip(prompt.tolist(), output.tolist())], np.int64)
    edges, types = (np.asarray(x, np.int64) for x in spec)  # "output-bins"
    return types[np.searchsorted(edges, output, side="left")] if n else np.zeros(0, np.int64)


def _wait_unsupported(rule, trace: Trace) -> str | None:
    p = rule.params
    df = trace.df
    if p.get("mode") not in ("paper", "no-wait"):
        return f"{rule.name} in mode {p.get('mode')!r}"
    if rule.name == "wait" and (p.get("type_map") or ("",))[0] not in ("exact", "output-bins"):
        return "a WAIT type map other than by exact lengths or output-length bins"
    groups = _wait_groups(rule, trace.df)
    if len(groups) and (groups.min() < 0 or groups.max() >= len(p["thresholds"])):
        return "a request of no WAIT type (the policy raises on it)"
    return None


def _wait_rule(K, rule, df: pd.DataFrame, ninst: int) -> tuple:
    """The kernel's ``rule`` arrays (see the WAIT section of :mod:`simulators.compiled.kernel`): the settings of a
    WAIT rule and the policy's per-instance state, empty (with the same types) for the other schedulers."""
    if rule is None or rule.name not in WAIT_RULES:
        n, groups, ends, thr = 0, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        ninst = 0
        wp, wf = np.zeros(K.NUM_WP, np.int64), np.zeros(K.NUM_WF)
        rank = by_rank = groups
    else:
        p = rule.params
        n = len(df)
        groups = _wait_groups(rule, df)
        thr = np.asarray(p["thresholds"], np.int64)
        ends = np.asarray(p.get("segment_ends", ()), np.int64)
        wp, wf = np.zeros(K.NUM_WP, np.int64), np.zeros(K.NUM_WF)
        wp[K.W_PAPER] = p["mode"] == "paper"
        wp[K.W_MAX_IN_FLIGHT] = -1 if p["max_in_flight"] is None else p["max_in_flight"]
        wp[K.W_GROUPS] = 1 if rule.name == "nested-wait" else len(thr)
        wp[K.W_SEGMENTS] = len(ends)
        wp[K.W_HAS_DRAIN], wp[K.W_HAS_MAX_WAIT] = p["drain_after_s"] is not None, p["max_wait_s"] is not None
        wp[K.W_STAGES] = int(df["output_tokens"].max()) + 1 if n else 1  # a stage is < the output tokens
        wf[K.WF_DRAIN] = p["drain_after_s"] or 0.0
        wf[K.WF_MAX_WAIT] = p["max_wait_s"] or 0.0
        rows = np.arange(n, dtype=np.int64)
        by_rank = np.lexsort((rows, df["arrival_time_s"].to_numpy(float))).astype(np.int64)  # (arrival, row)
        rank = np.empty(n, np.int64)
        rank[by_rank] = rows
    g = int(max(wp[K.W_GROUPS], 0))
    return (wp, wf, thr, ends, groups, rank, by_rank, np.full((ninst, g), -1, np.int64),
            np.full((ninst, g), -1, np.int64), np.zeros((ninst, g), np.int64), np.empty(n, np.int64),
            np.empty(n, np.int64), np.empty(n, np.int64), np.full((ninst, g), np.nan), np.zeros((ninst, g), np.int8),
            np.zeros(ninst, np.int8))


def arrival_event_times(arrival_time_s) -> np.ndarray:
    """When each request reaches the instances on the SimPy clock: at its arrival time exactly
    (:func:`simulators.serving.instance.wait_until`), or at once when it is listed after a later one."""
    return np.maximum.accumulate(np.asarray(arrival_time_s, dtype=float)) if len(arrival_time_s) else np.zeros(0)


def simulate_compiled(trace: Trace, instances, router: str = "round-robin", seed: int = 0,
                      record_timeline: bool = True, check_invariants: bool = True,
                      hash_own_blocks: bool | None = None, progress: bool = False,
                      scheduler=None, decode_router: str = "least-outstanding-tokens",
                      link: LinkSpec = DEFAULT_LINK) -> SimResult:
    """Run ``trace`` on the compiled engine (callers check :func:`unsupported_reason` first); with
    ``progress``, a progress bar over the arrivals (the loop returns every 1 % of them to update it).
    ``scheduler``: the instances' common scheduler if the caller has built it (built here otherwise).
    ``decode_router``, ``link``: the hand-offs of a disaggregated cluster (:func:`simulators.serving.simulate`)."""
    from simulators.compiled import kernel as K  # numba loads (and compiles once) only when needed

    first = instances[0]
    if scheduler is None:
        scheduler = first.build_scheduler(trace, seed)
    probe = getattr(scheduler, "enable_prefix_caching", False)  # (static batching has no prefix cache)
    hashed = probe if hash_own_blocks is None else bool(hash_own_blocks)
    df = trace.df
    prompt = df["prompt_tokens"].to_numpy(np.int64)
    output = df["output_tokens"].to_numpy(np.int64)
    bs = first.block_size_tokens
    blocks = np.array([cfg.num_kv_blocks for cfg in instances], np.int64)
    rule = compiled_rule(scheduler)
    max_seqs = _max_seqs(scheduler, blocks)
    ip, fp, tables = _pricing(first.step_model, scheduler, max_seqs)
    ip = np.append(ip, np.zeros(len(instances), np.int64))  # [NUM_IP + k]: instance k's own-slot offset
    roles = np.array([ROLES.index(cfg.role) for cfg in instances], np.int64)  # kernel.ROLE_*
    hinfo, hcode, nslots = _block_slots(K, ip, trace, prompt, output, bs, hashed, roles)
    ip[K.P_ROUTER], route = _routes(K, make_router(router, seed=seed), blocks, bs, prompt + output, roles)
    ip[K.P_DROUTER], droute = _decode_routes(K, make_router(decode_router, seed=seed), blocks, roles, len(df))
    kvb = np.array([cfg.kv_bytes_per_token for cfg in instances], np.int64)
    ip[K.P_BS] = bs
    ip[K.P_SCHED] = (COMPILED_SCHEDULERS.index(type(scheduler)) if rule is None else
                     {"mc-sf": K.SCHED_MCSF, "wait": K.SCHED_WAIT, "nested-wait": K.SCHED_NESTED_WAIT}[rule.name])
    ip[K.P_BUDGET], ip[K.P_MAX_SEQS] = _budget(scheduler), max_seqs
    ip[K.P_PROBE] = probe
    if isinstance(scheduler, VllmV1Scheduler):
        ip[K.P_CHUNKED], ip[K.P_LIMIT] = scheduler.enable_chunked_prefill, scheduler.long_prefill_token_threshold
        ip[K.P_RESERVE], ip[K.P_SWAP] = scheduler.reserve_full_prompt, scheduler.preemption == "swap"
    ip[K.P_KV_BYTES] = first.kv_bytes_per_token
    fp = fp.copy()
    fp[[K.F_HOST_LINK, K.F_LINK_LATENCY, K.F_LINK_BW]] = (first.host_link_bytes_per_s, link.latency_s,
                                                         link.bandwidth_bytes_per_s)
    ip[K.P_TIMELINE], ip[K.P_CHECK] = record_timeline, check_invariants
    arrive_s = df["arrival_time_s"].to_numpy(np.float64).copy()  # the kernel writes later rounds' release times
    succ, think_s, first_rounds = _session_rounds(df)
    arrivals = arrival_event_times(arrive_s[first_rounds].tolist())
    state = K.new_state(len(df), len(blocks), nslots, max_seqs)
    timeline = np.empty((1024 if record_timeline else 0, 7))
    inputs = (arrivals, route, prompt, output, _priority_keys(rule, df, output), _wait_rule(K, rule, df, len(blocks)),
              hinfo, hcode, blocks, roles, kvb, droute, first_rounds, succ, think_s, arrive_s, ip, fp, *tables)
    nfirst = len(first_rounds)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=nfirst, unit="req", desc="simulating (compiled)", mininterval=0.5)
    chunk = max(nfirst // 100, PROGRESS_EVERY) if bar is not None else nfirst + 1  # arrivals between updates
    done = 0
    while True:
        code, culprit, timeline = K.run(state, timeline, done + chunk, *inputs)
        if bar is not None:
            bar.update(int(state[-1][0]) - done)
        done = int(state[-1][0])
        if code != K.PAUSED:
            break
    if bar is not None:
        bar.close()
    if code != K.OK:
        _raise_for(K, code, culprit, df)
    instance, sched, first_s, finish, preempt, cached = state[:6]
    steps = int(state[-1][1])
    timeline = timeline[:steps]
    requests = requests_frame({
        "request_id": df["request_id"].to_numpy(), "arrival_time_s": arrive_s,
        "scheduled_time_s": sched, "first_token_time_s": first_s, "finish_time_s": finish,
        "prompt_tokens": prompt, "output_tokens": output, "instance": instance,
        "num_preemptions": preempt, "cached_tokens": cached})
    ints = timeline[:, 1:].astype(np.int64)
    rows = pd.DataFrame({"time_s": timeline[:, 0], "instance": ints[:, 0], "kv_used_blocks": ints[:, 1],
                         "running": ints[:, 2], "waiting": ints[:, 3], "batch_tokens": ints[:, 4],
                         "batch_seqs": ints[:, 5], "steps": 1}, columns=TIMELINE_COLUMNS)
    rows = rows.sort_values(["time_s", "instance"], kind="stable", ignore_index=True)  # as SimResult.from_run
    return SimResult(requests, rows, blocks.tolist(), steps, engine="compiled")


def _has_sessions(df: pd.DataFrame) -> bool:
    """Whether the trace has multi-round sessions (as :func:`simulators.serving.run._sequences` decides)."""
    return "session_id" in df and "round" in df and bool(df["session_id"].notna().any())


def _session_codes(df: pd.DataFrame) -> np.ndarray:
    """Each row's session number (in order of first appearance, as ``_sequences`` numbers them), -1 outside
    sessions."""
    codes = np.full(len(df), -1, np.int64)
    if _has_sessions(df):
        rows = df["session_id"].notna().to_numpy()
        codes[rows] = pd.factorize(df["session_id"][rows])[0]
    return codes


def _session_rounds(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(succ, think_s, first)``: each request's next round (-1: none), its think time (s, 0 where
    missing), and the requests the trace releases itself (not a successor), in trace order; the successor
    of a round is the next by ``round`` in its session, ties in trace order (``_sequences``)."""
    n = len(df)
    succ = np.full(n, -1, np.int64)
    think = np.zeros(n)
    if _has_sessions(df):
        ordered = df.reset_index(drop=True).assign(_i=range(n)).dropna(subset=["session_id"])
        if "think_time_s" in ordered:
            th = ordered["think_time_s"].to_numpy(np.float64)
            think[ordered["_i"].to_numpy()] = np.where(th == th, th, 0.0)
        ordered = ordered.sort_values(["session_id", "round"], kind="stable")
        idx = ordered["_i"].to_numpy()
        code = pd.factorize(ordered["session_id"])[0]
        same = code[1:] == code[:-1]
        succ[idx[:-1][same]] = idx[1:][same]
    later = np.zeros(n, bool)
    later[succ[succ >= 0]] = True
    return succ, think, np.flatnonzero(~later).astype(np.int64)


def _block_slots(K, ip, trace: Trace, prompt: np.ndarray, output: np.ndarray, bs: int, hashed: bool,
                 roles: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Each request's block hashes as the kernel's slots (as :func:`simulators.serving.run._sequences`
    gives them): the trace's prefix ids where a request has them (engine block ``b`` in trace block
    ``b // ratio``), else with ``hashed`` its own blocks. Returns ``hinfo`` (per request: hashes, offset of
    its ids' codes in ``hcode`` or -1, offset of its own slots), ``hcode`` and the number of slots (own
    slots, then the shared ones of each instance); fills the kernel's ratio and slot-count parameters,
    and fills ``ip[NUM_IP + k]``, instance k's offset into the own slots (a second copy for decode instances:
    a handed-off request's blocks are held by the decode instance's block manager apart from the prefill
    instance's)."""
    n = len(prompt)
    ninst = len(roles)
    hinfo = np.zeros((n, 3), np.int64)
    hinfo[:, 1] = -1
    ids = trace.df["prefix_block_hashes"].tolist() if "prefix_block_hashes" in trace.df else [None] * n
    counts = np.array([0 if h is None else len(h) for h in ids], np.int64)
    session = _session_codes(trace.df)  # a session's rounds name its blocks, whatever prefix ids they carry
    has_ids = (counts > 0) & bool(trace.prefix_block_tokens) & (session < 0)
    hcode, ratio = np.zeros(1, np.int64), 1
    if has_ids.any():
        ratio = trace.prefix_block_tokens // bs  # (simulate refuses a block size that does not divide it)
        flat = np.concatenate([np.asarray(ids[i], np.int64) for i in np.flatnonzero(has_ids)])
        uniq, hcode = np.unique(flat, return_inverse=True)
        hinfo[has_ids, 0] = np.minimum(prompt[has_ids] // bs, counts[has_ids] * ratio)
        hinfo[has_ids, 1] = np.concatenate([[0], np.cumsum(counts[has_ids])[:-1]])
    own = ~has_ids & hashed & (session < 0)
    hinfo[own, 0] = (prompt[own] + output[own]) // bs
    own_slots = np.where(own, hinfo[:, 0], 0)
    hinfo[:, 2] = np.cumsum(own_slots) - own_slots
    nown = int(own_slots.sum())
    if (session >= 0).any():  # after the own slots: each session's, as many as its longest round has blocks
        rounds = session >= 0
        hinfo[rounds, 0] = (prompt[rounds] + output[rounds]) // bs
        size = np.zeros(int(session.max()) + 1, np.int64)
        np.maximum.at(size, session[rounds], hinfo[rounds, 0])
        hinfo[rounds, 2] = nown + (np.cumsum(size) - size)[session[rounds]]
        nown += int(size.sum())
    shared = (int(hcode.max()) + 1) * ratio if has_ids.any() else 0
    if (session >= 0).any():  # a session's blocks may stay cached on every instance its rounds ran on
        copies = ninst
        ip[K.NUM_IP:] = np.arange(ninst, dtype=np.int64) * nown
    else:  # a request's own blocks are held on its entry instance, and on its decode instance if any
        copies = 2 if (roles == K.ROLE_DECODE).any() else 1
        ip[K.NUM_IP:] = np.where(roles == K.ROLE_DECODE, nown, 0)
    ip[K.P_RATIO], ip[K.P_NOWN], ip[K.P_NSHARED] = ratio, copies * nown, shared
    return hinfo, hcode.astype(np.int64), copies * nown + ninst * shared


def _routes(K, router, blocks: np.ndarray, block_size_tokens: int, need_tokens: np.ndarray,
            roles: np.ndarray) -> tuple[int, np.ndarray]:
    """The kernel's router code, and each request's instance when the router does not look at the
    instances (round-robin and random: asked here, in arrival order, exactly as the SimPy engine asks,
    offered the instances whose KV holds the request; the router itself leaves out decode instances)."""
    n = len(need_tokens)
    if isinstance(router, LeastOutstandingTokensRouter):
        return K.ROUTE_LEAST_OUTSTANDING, np.zeros(n, np.int64)
    if isinstance(router, KvAwareRouter):
        return K.ROUTE_KV_AWARE, np.zeros(n, np.int64)
    views = tuple(InstanceView(k, ROLES[role], 0, 0, 0, 0, int(b)) for k, (b, role) in enumerate(zip(blocks, roles)))
    fits_all = int(blocks.min()) * block_size_tokens
    return K.ROUTE_GIVEN, np.array(
        [router.route(None, views if need <= fits_all else
                      tuple(v for v in views if v.kv_total_blocks * block_size_tokens >= need), 0.0)
         for need in need_tokens.tolist()], np.int64)


def _decode_routes(K, router, blocks: np.ndarray, roles: np.ndarray, n: int) -> tuple[int, np.ndarray]:
    """The kernel's decode-router code, and the decode instance of the first ``n`` hand-offs when the
    router does not look at the instances (asked here in hand-off order, as ``_ServingRun._transfer`` asks,
    offered every decode instance: :func:`unsupported_reason` makes sure each holds every request)."""
    if isinstance(router, LeastOutstandingTokensRouter):
        return K.ROUTE_LEAST_OUTSTANDING, np.zeros(1, np.int64)
    if isinstance(router, KvAwareRouter):
        return K.ROUTE_KV_AWARE, np.zeros(1, np.int64)
    views = tuple(InstanceView(k, "decode", 0, 0, 0, 0, int(b))
                  for k, (b, role) in enumerate(zip(blocks, roles)) if ROLES[role] == "decode")
    if not views:
        return K.ROUTE_GIVEN, np.zeros(1, np.int64)
    return K.ROUTE_GIVEN, np.array([router.route(None, views, 0.0) for _ in range(n)], np.int64)


def _budget(scheduler) -> int:
    """The scheduler's token budget of one step; static batching has none: its decode steps hold a token
    per member (its batch prefills are priced beyond the tables, see :func:`_pricing`)."""
    rule = compiled_rule(scheduler)
    if rule is not None:
        return rule.token_budget
    if isinstance(scheduler, StaticBatchScheduler):
        return scheduler.max_batch_size
    return scheduler.token_budget if isinstance(scheduler, SarathiScheduler) else scheduler.max_num_batched_tokens


def _max_seqs(scheduler, blocks: np.ndarray) -> int:
    """The most sequences the scheduler runs at once (a policy's rule has no cap: a running sequence holds
    a KV block at least)."""
    if compiled_rule(scheduler) is not None:
        return int(blocks.max())
    return scheduler.max_batch_size if isinstance(scheduler, StaticBatchScheduler) else scheduler.max_num_seqs


def _pricing(model: ProfiledStepTime, scheduler, max_seqs: int):
    """The kernel's integer and float parameters and tables: the step-time terms that depend only on the
    token count or on the batch size, computed by the model itself (so they are its values to the bit).

    Kept on the model per (tokens, sequences), as the model keeps its own per-size terms: a sweep reuses
    one model across many runs, and tabulating takes 0.3-0.4 s, longer than a run of the bench trace.
    """
    cache = model.__dict__.setdefault("_compiled_pricing", {})
    # a step holds at most the budget's tokens, or (vLLM V0's decode steps) a token per sequence; MC-SF's
    # steps of more decodes than its budget (thousands of sequences) are priced beyond the tables
    tokens = ((_budget(scheduler) or RULE_TABLE_TOKENS) if compiled_rule(scheduler) is not None
              else max(_budget(scheduler), max_seqs))
    key = (tokens, max_seqs)
    if key not in cache:
        cache[key] = _tabulate(model, *key)
    ip, fp, tables = cache[key]
    return ip.copy(), fp, tables  # the caller fills in the rest of ``ip``


def _tabulate(model: ProfiledStepTime, max_tokens: int, max_seqs: int):
    from simulators.compiled import kernel as K

    m = model.model
    ip = np.zeros(K.NUM_IP, np.int64)
    ip[K.P_LAYERS], ip[K.P_LM_HEAD] = m.num_layers, model.include_lm_head
    ip[K.P_HIDDEN], ip[K.P_VOCAB] = m.hidden_size, m.vocab_size // model.tp
    ip[K.P_DTYPE_BYTES] = _dtype_bytes(model.dtype)
    fp = np.zeros(K.NUM_FP)
    fp[[K.F_LAUNCH, K.F_FLOOR, K.F_FLOPS, K.F_BW]] = (model.launch_overhead_s, model.kernel_floor_s,
                                                     float(model.gpu.dense_bf16_flops_per_s),
                                                     model.elementwise_bandwidth_bytes_per_s)
    terms = [(0.0, 0.0, None)] + [model._token_terms_s(n) for n in range(1, max_tokens + 1)]
    ip[K.P_HAS_COMM] = terms[-1][2] is not None
    if ip[K.P_HAS_COMM]:  # as ProfiledStepTime._token_terms_s and perf._ring_allreduce_s compute them
        link = model.gpu.nvlink_bandwidth_bytes_per_s
        fp[K.F_AR_LINK] = link / 2 if link else model.gpu.pcie_bandwidth_bytes_per_s
        fp[K.F_AR_FACTOR] = 2.0 * (model.tp - 1) / model.tp
        fp[K.F_AR_LATENCY] = model.allreduce_latency_s
    tok_lin = np.array([t[0] for t in terms])
    tok_elem = np.array([t[1] for t in terms])
    tok_comm = np.array([t[2] or 0.0 for t in terms])
    eager = min(max_seqs, EAGER_DECODE_BASES)  # each costs O(b): the kernel computes larger ones when needed
    dec_base = np.array([0.0] + [model._decode_base_s(b) for b in range(1, eager + 1)] + [np.nan] * (max_seqs - eager))
    prefill, decode, chunked = model.grids["prefill"], model.grids["decode"], model.grids["chunked"]
    ip[K.P_HAS_CHUNKED] = chunked is not None
    if chunked is None:  # a placeholder the kernel never reads
        chunked = decode
    # what the kernel needs to compute _token_terms_s beyond the tables: the linear ops' grids (padded to
    # one length), the elementwise kernels' bytes per token
    ops = model._ops
    op_len = np.array([len(op.x) for op in ops], np.int64)
    op_x = np.zeros((len(ops), int(op_len.max())))
    op_y = np.zeros_like(op_x)
    for j, op in enumerate(ops):
        op_x[j, : op_len[j]], op_y[j, : op_len[j]] = op.x, op.y
    elem_bytes = np.array(model._elem, np.int64)
    tables = (tok_lin, tok_elem, tok_comm, dec_base, np.array(prefill.x), np.array(prefill.y),
              np.array(decode.a), np.array(decode.b), np.array(decode.z), np.array(chunked.a),
              np.array(chunked.b), np.array(chunked.z), op_x, op_y, op_len, elem_bytes)
    return ip, fp, tables


def _raise_for(K, code: int, culprit: int, df: pd.DataFrame) -> None:
    who = f"request {df['request_id'].iloc[culprit]!r}" if culprit >= 0 else "the instance"
    what = {K.KV_OVER_CAPACITY: "more KV blocks in use than the capacity",
            K.ACCOUNTING: "token accounting broken",
            K.KV_SHORT: "more tokens computed than the KV slots it holds",
            K.STALLED: "nothing scheduled while sequences hold KV (the instance would stall forever)",
            K.MCSF_SHORT: "MC-SF ran out of KV blocks, which its check rules out under the oracle's predictions "
                          "(spec P1); please report it, and run mode='simpy' meanwhile"}[code]
    raise SimulationInvariantError(f"compiled engine, {who}: {what}")
