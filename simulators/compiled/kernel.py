"""The compiled serving loop behind :mod:`simulators.compiled` (numba; every function is ``njit``).

A transcription, on flat arrays, of what the SimPy engine does in step mode for colocated instances
behind a router (multi-round sessions' later rounds released during the run:
``_ServingRun._release_round``), or prefill and decode instances with hand-offs over a link (the first token on a
prefill instance; the KV held there until its transfer ends: ``_ServingRun._transfer``, InstanceEngine
._retire and .release), with the baseline schedulers of :mod:`simulators.serving.schedulers` (vLLM V1-like
with recompute or swap preemption, vLLM V0, Sarathi-Serve, static batching; the policies' rules MC-SF, WAIT and
Nested WAIT, see :class:`gpusched.policy.CompiledRule`), the paged block manager with
each request's own block hashes or the trace's shared prefix ids, and the H100-format profiled
step-time model. Each piece names the Python code it
follows; the float operations are written in the same order as there, so results agree to the bit
(``tests/test_sim_compiled*.py`` check it against the SimPy engine).

One file on purpose: numba's disk cache (``cache=True``) is invalidated by changes to the file that defines
a function, not to the functions it calls from other files, so a split into modules would let a cached
:func:`run` keep an edited callee's old code. Its sections: pricing, the block manager, scheduler pieces,
routing, event heaps, MC-SF, WAIT / Nested WAIT, the engine loop.

State arrays (indexed by request ``r`` in trace order):
``comp`` tokens whose KV is computed, ``gen`` tokens generated, ``kv_tok``/``kv_priv``/``kv_hashed`` the
block manager's record (tokens held, private blocks, blocks hashed at allocation; ``kv_tok = -1``: not
allocated). Block hashes are slots: ``hinfo[r] = (hashes, code offset, own slot offset)``. A request
with its own hashes (code offset -1) names its block ``b`` by the slot ``own offset + b``; a request with
trace prefix ids names it by the id's code (``hcode[code offset + b // ratio]``) and ``b % ratio``, one
slot per instance, after the own slots: the same slot for every request that shares the block (see
:func:`_slot`; a disaggregated cluster has two copies of the own slots, prefill side and decode side).
The rounds of a multi-round session share its own slots (``hinfo[r, 2]`` is the session's offset, as many
slots as its longest round has blocks: round r+1's prompt is round r's history), and a trace with sessions
has one copy of the own slots per instance (a session's rounds may run anywhere, and each instance caches
what its rounds left).
``slot_ref[s]`` is the number of sequences holding slot ``s`` (0: not resident, -1: cached, unreferenced:
in its instance's LRU list, oldest at the head; the list of instance ``k`` is linked through
``prev``/``nxt`` from its sentinel ``nslots + k``). ``kvs[k]`` = [private blocks in use,
hashed blocks in use, cached blocks] of instance ``k``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# kernel exit codes (see simulators.compiled.driver._raise_for)
OK, KV_OVER_CAPACITY, ACCOUNTING, KV_SHORT, STALLED, PAUSED, MCSF_SHORT = 0, 1, 2, 3, 4, 5, 6
# integer parameters, by position in ``ip``
(P_ROUTER, P_BS, P_BUDGET, P_MAX_SEQS, P_CHUNKED, P_PROBE, P_LIMIT, P_RESERVE, P_LAYERS, P_LM_HEAD,
 P_HIDDEN, P_VOCAB, P_DTYPE_BYTES, P_HAS_CHUNKED, P_HAS_COMM, P_TIMELINE, P_CHECK, P_RATIO, P_NOWN, P_NSHARED,
 P_SCHED, P_SWAP, P_KV_BYTES, P_DROUTER) = range(24)
NUM_IP = 24
# schedulers (``ip[P_SCHED]``): simulators.serving.schedulers.VllmV1Scheduler, VllmV0Scheduler, SarathiScheduler,
# StaticBatchScheduler, then the policies' rules (gpusched.policy.CompiledRule): "mc-sf" (formulations.mcsf)
SCHED_V1, SCHED_V0, SCHED_SARATHI, SCHED_STATIC, SCHED_MCSF = range(5)
# "wait" and "nested-wait" (formulations.nested_wait): their plans are made by _schedule_wait, their empty plans
# pause with StepPlan.hold and may ask for a wake-up (wait_set_alarm)
SCHED_WAIT, SCHED_NESTED_WAIT = 5, 6
# routers (``ip[P_ROUTER]``): the instance given per request, or the state-dependent rules of simulators.serving.routers
ROUTE_GIVEN, ROUTE_LEAST_OUTSTANDING, ROUTE_KV_AWARE = range(3)
# float parameters, by position in ``fp`` (F_AR_*: one TP all-reduce, perf._ring_allreduce_s: its latency, its
# factor 2 (tp - 1) / tp, the link's bytes per second; F_LINK_*: the prefill -> decode link)
(F_LAUNCH, F_FLOOR, F_FLOPS, F_BW, F_HOST_LINK, F_AR_LATENCY, F_AR_FACTOR, F_AR_LINK, F_LINK_LATENCY,
 F_LINK_BW) = range(10)
NUM_FP = 10
# instance roles (``role[k]``), as simulators.serving.run.ROLES
ROLE_COLOCATED, ROLE_PREFILL, ROLE_DECODE = range(3)
_PRIV, _HELD, _CACHED = range(3)  # positions in ``kvs``
# positions in the state's ``counters``: the arrival process's next first round (a position in ``first``),
# steps done, plans made, events scheduled, transfers in flight, decode routes asked, entry routes asked,
# URGENT events pending, whether the arrival process has started
C_NEXT, C_STEPS, C_PLANS, C_EID, C_NX, C_DROUTES, C_ROUTES, C_NU, C_STARTED = range(9)
NUM_COUNTERS = 9


# ---------------------------------------------------------------- pricing (gpusched.profiles / perf)
@njit(cache=True, inline="always")
def _pmax(a, b):
    """Python's ``max(a, b)``: ``a`` unless ``b`` is larger."""
    return b if b > a else a


@njit(cache=True, inline="always")
def _seg(xs, v):
    """profiles._seg: segment ``i`` and fraction ``t`` (bisect_right as CPython's)."""
    n = xs.shape[0]
    if n == 1:
        return 0, 0.0
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if v < xs[mid]:
            hi = mid
        else:
            lo = mid + 1
    i = lo - 1
    if i < 0:
        return 0, 0.0
    if i >= n - 1:
        i = n - 2
    return i, (v - xs[i]) / (xs[i + 1] - xs[i])


@njit(cache=True, inline="always")
def _grid1(x, y, v):
    """profiles.Grid1D.__call__."""
    if x.shape[0] == 1:
        return y[0]
    i, t = _seg(x, v)
    if t > 1.0:
        last = x.shape[0] - 1
        return y[last] * v / x[last] if x[last] > 0 else y[last]
    return y[i] + (y[i + 1] - y[i]) * t


@njit(cache=True, inline="always")
def _grid2(a, b, z, u, v):
    """profiles.Grid2D.__call__."""
    i, s = _seg(a, u)
    j, t = _seg(b, v)
    i1 = min(i + 1, a.shape[0] - 1)
    j1 = min(j + 1, b.shape[0] - 1)
    z00, z01, z10, z11 = z[i, j], z[i, j1], z[i1, j], z[i1, j1]
    if s > 1.0 or t > 1.0:
        z10 = _pmax(z10, z00)
        z11 = _pmax(z11, z01)
        z01 = _pmax(z01, z00)
        z11 = _pmax(z11, z10)
    return z00 * (1 - s) * (1 - t) + z10 * s * (1 - t) + z01 * (1 - s) * t + z11 * s * t


@njit(cache=True, inline="always")
def _g(fp, x):
    """ProfiledStepTime._g: graph-replay time of a kernel from its eager time."""
    return _pmax(x - fp[F_LAUNCH], fp[F_FLOOR])


@njit(cache=True, inline="always")
def _decode_time(ip, fp, dec_base, da, db, dz, batch, context_sum):
    """ProfiledStepTime.decode_step_time_s."""
    mean_ctx = context_sum / batch
    return dec_base[batch] + ip[P_LAYERS] * _g(fp, _grid2(da, db, dz, float(batch), mean_ctx))


@njit(cache=True)
def _token_terms(ip, fp, tok_lin, tok_elem, tok_comm, op_x, op_y, op_len, elem_bytes, n):
    """ProfiledStepTime._token_terms_s(n): per-layer seconds of the linear layers, the elementwise kernels
    and the TP all-reduces (0.0 without them) of a step of ``n`` tokens. Read from the tables up to their
    size (every step of a scheduler with a token budget); beyond it (a static batch's prefill, which has
    no budget) computed here, with the model's float operations in its order: ``sum`` from 0 over the
    linear ops' ``_g(Grid1D(n))``, ``sum`` from 0 of ``max(n * bytes / bw, floor)``, and
    ``2 * (latency + 2 (tp - 1) / tp * bytes / link)`` (the factor is computed in Python as there)."""
    if n < tok_lin.shape[0]:
        return tok_lin[n], tok_elem[n], tok_comm[n]
    v = float(n)
    linear = 0.0
    for j in range(op_len.shape[0]):
        m = op_len[j]
        linear += _g(fp, _grid1(op_x[j, :m], op_y[j, :m], v))
    elementwise = 0.0
    for j in range(elem_bytes.shape[0]):
        elementwise += _pmax(n * elem_bytes[j] / fp[F_BW], fp[F_FLOOR])
    comm = 0.0
    if ip[P_HAS_COMM]:
        nbytes = n * ip[P_HIDDEN] * ip[P_DTYPE_BYTES]
        if nbytes > 0:
            comm = 2 * (fp[F_AR_LATENCY] + fp[F_AR_FACTOR] * nbytes / fp[F_AR_LINK])
    return linear, elementwise, comm


@njit(cache=True)
def _step_time(ip, fp, tok_lin, tok_elem, tok_comm, px, py, da, db, dz, ca, cb, cz, op_x, op_y, op_len, elem_bytes,
               n, plens, pcached, npf, nd, dec_sum, num_sampled):
    """ProfiledStepTime.step_time_s (H100 format) of a step with prefill chunks and decodes."""
    mean_ctx = dec_sum / nd if nd else 0.0
    linear, elementwise, comm = _token_terms(ip, fp, tok_lin, tok_elem, tok_comm, op_x, op_y, op_len, elem_bytes, n)
    layer = linear
    c_tot = 0
    p_tot = 0
    w = 0.0
    for k in range(npf):  # perf._causal_work
        c = plens[k]
        if c:
            p = pcached[k]
            c_tot += c
            p_tot += p
            w += c * (p + 0.5 * c)
    attn = 0.0  # ProfiledStepTime._prefill_attn_s
    if c_tot:
        p_eq = w / c_tot - 0.5 * c_tot
        if p_tot == 0 or p_eq <= 0 or not ip[P_HAS_CHUNKED]:
            attn = _g(fp, _grid1(px, py, math.sqrt(2.0 * w)))
        else:
            attn = _g(fp, _grid2(ca, cb, cz, float(c_tot), p_eq))
    layer += attn
    if nd:
        layer += _g(fp, _grid2(da, db, dz, float(nd), mean_ctx))
    layer += elementwise
    if ip[P_HAS_COMM]:
        layer += comm
    t = ip[P_LAYERS] * layer
    if ip[P_LM_HEAD] and num_sampled:
        k, nout, b = ip[P_HIDDEN], ip[P_VOCAB], ip[P_DTYPE_BYTES]
        flops = 2.0 * num_sampled * k * nout / fp[F_FLOPS]
        stream = b * (k * nout + num_sampled * (k + nout)) / fp[F_BW]
        t += _pmax(_pmax(flops, stream), fp[F_FLOOR])
    return t


# ---------------------------------------------------------------- the cached-block LRU (kvcache._CachedBlocks)
@njit(cache=True, inline="always")
def _lru_append(prev, nxt, head, s):
    """Cache slot ``s`` as the newest (``head`` is the list's sentinel)."""
    last = prev[head]
    nxt[last] = s
    prev[s] = last
    nxt[s] = head
    prev[head] = s


@njit(cache=True, inline="always")
def _lru_remove(prev, nxt, s):
    p, q = prev[s], nxt[s]
    nxt[p] = q
    prev[q] = p


@njit(cache=True)
def _evict(slot_ref, prev, nxt, head, kvs, n):
    """Drop the ``n`` oldest cached blocks (all if ``n`` >= their count)."""
    s = nxt[head]
    while n > 0 and s != head:
        q = nxt[s]
        slot_ref[s] = 0
        kvs[_CACHED] -= 1
        n -= 1
        s = q
    nxt[head] = s
    prev[s] = head


@njit(cache=True, inline="always")
def _make_room(nblocks, slot_ref, prev, nxt, head, kvs, n):
    """BlockManager._make_room: evict so that ``n`` empty blocks exist."""
    evict = n - (nblocks - kvs[_PRIV] - kvs[_HELD] - kvs[_CACHED])
    if evict > 0:
        _evict(slot_ref, prev, nxt, head, kvs, evict)


# ---------------------------------------------------------------- block manager (kvcache.BlockManager)
@njit(cache=True, inline="always")
def _slot(ip, hinfo, hcode, r, b, k):
    """The slot of block ``b`` of request ``r`` on instance ``k``: its own, or the shared one of its trace id
    (serving.prefix: engine block ``b`` lies in trace block ``b // ratio``). A request's own slots come in
    two copies when the cluster is disaggregated: on its prefill (or colocated) instance and on its decode
    instance (``ip[NUM_IP + k]``: the copy's offset), as the two block managers hold it apart."""
    off = hinfo[r, 1]
    if off < 0:
        return hinfo[r, 2] + b + ip[NUM_IP + k]
    ratio = ip[P_RATIO]
    return ip[P_NOWN] + k * ip[P_NSHARED] + hcode[off + b // ratio] * ratio + b % ratio


@njit(cache=True)
def _blocks_needed(ip, hinfo, hcode, slot_ref, r, k, tokens):
    """BlockManager._plan's blocks from the free pool for ``tokens`` tokens of request ``r`` on instance
    ``k``: the private tail and the hashed blocks no sequence holds (cached ones leave the evictable pool)."""
    bs = ip[P_BS]
    nh = min(tokens // bs, hinfo[r, 0])
    need = -(-tokens // bs) - nh
    for b in range(nh):
        if slot_ref[_slot(ip, hinfo, hcode, r, b, k)] <= 0:
            need += 1
    return need


@njit(cache=True)
def _allocate_if_free(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kvs, kv_tok, kv_priv, kv_hashed, r, k,
                      tokens):
    """BlockManager.allocate_if_free with the request's hashes for its full blocks: True if done.

    The blocks that take memory from the free pool are those no sequence holds (cached ones leave the
    evictable pool) plus the private tail; held ones are shared, cached ones pinned before room is made
    (a request's hashes are distinct: the driver checks it).
    """
    if _blocks_needed(ip, hinfo, hcode, slot_ref, r, k, tokens) > nblocks - kvs[_PRIV] - kvs[_HELD]:
        return False
    bs = ip[P_BS]
    total = -(-tokens // bs)
    nh = min(tokens // bs, hinfo[r, 0])
    private = total - nh
    fresh = 0
    for b in range(nh):  # _pin_resident
        s = _slot(ip, hinfo, hcode, r, b, k)
        c = slot_ref[s]
        if c > 0:
            slot_ref[s] = c + 1
        elif c < 0:
            _lru_remove(prev, nxt, s)
            kvs[_CACHED] -= 1
            kvs[_HELD] += 1
            slot_ref[s] = 1
        else:
            fresh += 1
    _make_room(nblocks, slot_ref, prev, nxt, head, kvs, fresh + private)
    for b in range(nh):
        s = _slot(ip, hinfo, hcode, r, b, k)
        if slot_ref[s] == 0:
            slot_ref[s] = 1
            kvs[_HELD] += 1
    kvs[_PRIV] += private
    kv_tok[r] = tokens
    kv_priv[r] = private
    kv_hashed[r] = nh
    return True


@njit(cache=True)
def _grow_to(ip, nblocks, slot_ref, prev, nxt, head, kvs, kv_tok, kv_priv, kv_hashed, r, tokens):
    """BlockManager.grow_to."""
    if tokens <= kv_tok[r]:
        return True
    need = -(-tokens // ip[P_BS]) - kv_priv[r] - kv_hashed[r]
    if need > 0:
        empty = nblocks - kvs[_PRIV] - kvs[_HELD] - kvs[_CACHED]
        if need > empty:
            if need > empty + kvs[_CACHED]:
                return False
            _make_room(nblocks, slot_ref, prev, nxt, head, kvs, need)
        kvs[_PRIV] += need
        kv_priv[r] += need
    kv_tok[r] = tokens
    return True


@njit(cache=True)
def _free(ip, hinfo, hcode, slot_ref, prev, nxt, head, kvs, kv_tok, kv_priv, kv_hashed, r, k):
    """BlockManager.free(r, its hashes): its full private blocks whose hashes are not resident stay cached
    (tail first, at most as many as its private blocks), then its hashed blocks that no other sequence
    holds, tail first."""
    tokens, private, nh = kv_tok[r], kv_priv[r], kv_hashed[r]
    kv_tok[r] = -1
    if hinfo[r, 0] > 0 and private > 0:  # _kept_private
        kept = 0
        b = min(tokens // ip[P_BS], hinfo[r, 0]) - 1
        while b >= nh and kept < private:
            s = _slot(ip, hinfo, hcode, r, b, k)
            if slot_ref[s] == 0:
                slot_ref[s] = -1
                _lru_append(prev, nxt, head, s)
                kvs[_CACHED] += 1
                kept += 1
            b -= 1
        private -= kept
        kvs[_PRIV] -= kept
    kvs[_PRIV] -= private
    for b in range(nh - 1, -1, -1):
        s = _slot(ip, hinfo, hcode, r, b, k)
        c = slot_ref[s] - 1
        if c > 0:
            slot_ref[s] = c
        else:
            slot_ref[s] = -1
            _lru_append(prev, nxt, head, s)
            kvs[_HELD] -= 1
            kvs[_CACHED] += 1


@njit(cache=True)
def _cached_prefix_tokens(ip, hinfo, hcode, slot_ref, r, k):
    """BlockManager.cached_prefix_tokens of the request's hashes."""
    have = hinfo[r, 0]
    hit = 0
    while hit < have and slot_ref[_slot(ip, hinfo, hcode, r, hit, k)] != 0:
        hit += 1
    return hit * ip[P_BS]


# ---------------------------------------------------------------- scheduler pieces (simulators.serving.schedulers)
@njit(cache=True)
def _preempt(ip, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, comp, preemptions, swapped,
             waiting, wh, nwait, k, victim, swap):
    """schedulers._preempt: free the victim's KV and put it back at the head of the queue; its computed
    tokens are lost (recompute) or move to host memory (``swap``). Returns the tokens swapped out."""
    _free(ip, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, victim, k)
    out = 0
    if swap and comp[victim] > 0:
        swapped[victim] = 1
        out = comp[victim]
    else:
        comp[victim] = 0
    preemptions[victim] += 1
    ring = waiting.shape[1]
    wh[k] = (wh[k] - 1) % ring
    waiting[k, wh[k]] = victim
    nwait[k] += 1
    return out


@njit(cache=True)
def _prefix_hit(ip, hinfo, hcode, slot_ref, comp, prompt, gen, r, k, enabled):
    """schedulers._prefix_hit_tokens: the tokens a waiting request keeps (swapped out) or finds cached
    (capped so that one is computed)."""
    if comp[r] > 0:
        return comp[r]
    if not enabled or hinfo[r, 0] == 0:
        return 0
    bs = ip[P_BS]
    return min(_cached_prefix_tokens(ip, hinfo, hcode, slot_ref, r, k), (prompt[r] + gen[r] - 1) // bs * bs)


@njit(cache=True)
def _admit(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, comp,
           cached_tokens, swapped, sched_s, now, r, k, hit, n, reserve):
    """schedulers._admit up to the lists: KV for ``max(hit + n, reserve)`` tokens if free. Returns the
    tokens swapped back in, or -1 if the request is not admitted (nothing changed)."""
    if not _allocate_if_free(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed,
                             r, k, max(hit + n, reserve)):
        return -1
    swap_in = 0
    if swapped[r]:
        swap_in = hit
        swapped[r] = 0
    elif comp[r] == 0:
        cached_tokens[r] = hit
    comp[r] = hit
    if np.isnan(sched_s[r]):
        sched_s[r] = now
    return swap_in


@njit(cache=True)
def _run_head(running, nrun, waiting, wh, nwait, ent_r, ent_n, k, ne, n):
    """The admitted head of instance ``k``'s queue joins its running list and the plan (``n`` tokens);
    returns the plan's new length."""
    r = waiting[k, wh[k]]
    running[k, nrun[k]] = r
    nrun[k] += 1
    ent_r[k, ne] = r
    ent_n[k, ne] = n
    wh[k] = (wh[k] + 1) % waiting.shape[1]
    nwait[k] -= 1
    return ne + 1


# ---------------------------------------------------------------- routing (simulators.serving.routers)
@njit(cache=True)
def _pick(rule, to_decode, need, role, blocks, bs, kvs, running, nrun, waiting, wh, nwait, prompt, output, comp):
    """The instance a state-reading router picks: ``_ServingRun._dispatch`` (``to_decode`` False: among the
    instances that take new requests, routers._candidates) or ``_ServingRun._transfer`` (among the decode
    instances), each offered only if its KV holds ``need`` tokens (run._fitting); then
    InstanceEngine.live_view as the router reads it and the rule of routers.LeastOutstandingTokensRouter
    (``rule`` = ROUTE_LEAST_OUTSTANDING: fewest tokens to do, then lowest index) or routers.KvAwareRouter
    (lowest KV utilisation, then fewest waiting, then lowest index)."""
    ring = waiting.shape[1]
    k = -1
    best_a = 0.0
    best_b = 0
    for j in range(blocks.shape[0]):
        if (role[j] == ROLE_DECODE) != to_decode or blocks[j] * bs < need:
            continue
        if rule == ROUTE_LEAST_OUTSTANDING:
            a = 0.0
            b = 0
            for q in range(nrun[j]):
                x = running[j, q]
                b += prompt[x] + output[x] - comp[x]
            for q in range(nwait[j]):
                x = waiting[j, (wh[j] + q) % ring]
                b += prompt[x] + output[x] - comp[x]
        else:
            a = (kvs[j, _PRIV] + kvs[j, _HELD]) / blocks[j]
            b = nwait[j]
        if k < 0 or a < best_a or (a == best_a and b < best_b):
            k = j
            best_a = a
            best_b = b
    return k


# ---------------------------------------------------------------- KV transfers in flight (a heap)
@njit(cache=True, inline="always")
def _before(t1, q1, t2, q2):
    """SimPy's event order: by time, then by scheduling order (both NORMAL priority)."""
    return t1 < t2 or (t1 == t2 and q1 < q2)


@njit(cache=True)
def _xfer_push(xt, xq, xr, xs, n, t, q, r, src):
    """Add the transfer of request ``r`` from instance ``src``, ending at ``t`` (scheduled ``q``-th);
    returns the new count. (The URGENT waits use the same heap code: ``src`` is then the two-event flag.)"""
    i = n
    while i > 0:
        p = (i - 1) // 2
        if _before(xt[p], xq[p], t, q):
            break
        xt[i], xq[i], xr[i], xs[i] = xt[p], xq[p], xr[p], xs[p]
        i = p
    xt[i], xq[i], xr[i], xs[i] = t, q, r, src
    return n + 1


@njit(cache=True)
def _xfer_pop(xt, xq, xr, xs, n):
    """Remove the first transfer (the heap's root); returns the new count."""
    n -= 1
    t, q, r, src = xt[n], xq[n], xr[n], xs[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _before(xt[c + 1], xq[c + 1], xt[c], xq[c]):
            c += 1
        if _before(t, q, xt[c], xq[c]):
            break
        xt[i], xq[i], xr[i], xs[i] = xt[c], xq[c], xr[c], xs[c]
        i = c
    if n > 0:
        xt[i], xq[i], xr[i], xs[i] = t, q, r, src
    return n


# ---------------------------------------------------------------- MC-SF (formulations.mcsf.policy.McsfScheduler)
@njit(cache=True)
def _heap_push(waiting, nwait, k, r, key):
    """Put request ``r`` in instance ``k``'s queue, which MC-SF keeps as a binary heap on ``key`` (unique per
    request) in the queue's storage from position 0: its smallest first, as the Python policy's sorted
    ``_order``; routers read the queue as a set."""
    i = nwait[k]
    nwait[k] = i + 1
    kr = key[r]
    while i > 0:
        parent = (i - 1) // 2
        p = waiting[k, parent]
        if key[p] <= kr:
            break
        waiting[k, i] = p
        i = parent
    waiting[k, i] = r


@njit(cache=True)
def _heap_pop(waiting, nwait, k, key):
    """Take the request with the smallest key out of instance ``k``'s queue (see :func:`_heap_push`)."""
    top = waiting[k, 0]
    n = nwait[k] - 1
    nwait[k] = n
    if n == 0:
        return top
    last = waiting[k, n]
    kl = key[last]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and key[waiting[k, child + 1]] < key[waiting[k, child]]:
            child += 1
        if key[waiting[k, child]] >= kl:
            break
        waiting[k, i] = waiting[k, child]
        i = child
    waiting[k, i] = last
    return top


@njit(cache=True)
def _remaining_steps(pred, gen, padded, memory):
    """McsfScheduler._remaining under the stock oracle (_oracle_remaining): predicted steps left, >= 1, capped
    so that the padded peak fits ``memory``."""
    e = pred - gen
    if e < 1:
        e = 1
    cap = memory - padded
    if e > cap:
        e = cap
    return e if e >= 1 else 1


@njit(cache=True)
def _prefix_fits(end, w, rank, first, cand_end, m, memory):
    """formulations.mcsf.engine.admit_prefix's ``fits(m)``: the running requests and the first ``m``
    candidates fit at every completion point up to the last of those candidates' ends."""
    n = end.shape[0]
    last = cand_end[0]
    for i in range(1, m):
        if cand_end[i] > last:
            last = cand_end[i]
    still_w = np.empty(n, np.int64)  # sums over members ending at or after each point
    still_n = np.empty(n, np.int64)
    sw = 0
    sn = 0
    for i in range(n - 1, -1, -1):
        if rank[i] < m:
            sw += w[i]
            sn += 1
        still_w[i] = sw
        still_n[i] = sn
    peak = -(1 << 62)
    for i in range(n):
        if rank[i] < m and end[i] <= last:
            load = still_w[first[i]] + end[i] * still_n[first[i]]
            if load > peak:
                peak = load
    return peak <= memory


@njit(cache=True)
def _admit_prefix(run_S, run_E, nrun, cand_S, cand_K, ncand, memory):
    """formulations.mcsf.engine.admit_prefix with ``now_it = 0`` and every running request live (its
    predicted end ``E >= 1``): the length of the longest prefix of the candidates that passes MC-SF's
    future-feasibility check, found by bisection below the bound read off the load at ``t + 1``. Integer
    arithmetic only, so it is that function's answer exactly."""
    n = nrun + ncand
    end = np.empty(n, np.int64)
    w = np.empty(n, np.int64)
    rank = np.empty(n, np.int64)
    for i in range(nrun):
        end[i] = run_E[i]
        w[i] = run_S[i]
        rank[i] = -1
    for i in range(ncand):
        end[nrun + i] = cand_K[i]
        w[nrun + i] = cand_S[i]
        rank[nrun + i] = i
    order = np.argsort(end, kind="mergesort")  # stable, as the Python's
    end, w, rank = end[order], w[order], rank[order]
    first = np.searchsorted(end, end)  # side "left"
    run_w = 0
    for i in range(nrun):
        run_w += run_S[i]
    room = memory - (run_w + nrun)
    csum = np.empty(ncand, np.int64)
    acc = 0
    for i in range(ncand):
        acc += cand_S[i] + 1
        csum[i] = acc
    good = 0
    bad = np.searchsorted(csum, room, side="right") + 1
    cand_end = cand_K[:ncand]
    if bad > 1 and _prefix_fits(end, w, rank, first, cand_end, bad - 1, memory):
        return bad - 1
    while bad - good > 1:
        mid = (good + bad) // 2
        if _prefix_fits(end, w, rank, first, cand_end, mid, memory):
            good = mid
        else:
            bad = mid
    return good


@njit(cache=True)
def _schedule_mcsf(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, comp, gen,
                   prompt, output, key, sched_s, now, running, nrun, waiting, nwait, ent_r, ent_n, k, budget0,
                   scratch):
    """McsfScheduler.schedule with the oracle's predictions (the true outputs): fills the plan of instance
    ``k`` and returns its entries, or ``-1 - r`` if KV ran short for request ``r`` (see below: it cannot under
    the oracle). ``scratch``: (5, n) int64 work rows."""
    bs = ip[P_BS]
    m = nrun[k]
    ne = 0
    # 1. every running sequence continues (its num_tokens' KV, all or nothing: BlockManager.grow_each_to)
    need = 0
    for q in range(m):
        r = running[k, q]
        t = prompt[r] + gen[r]
        if t > kv_tok[r]:
            b = -(-t // bs) - kv_priv[r] - kv_hashed[r]
            if b > 0:
                need += b
    if need > nblocks - kv[_PRIV] - kv[_HELD]:
        # The Python rule then grows them one by one, preempting the newest. Under the oracle it cannot happen
        # (spec P1): a capped request projects the whole memory at its capped end, so nothing that outlives it
        # is admitted with it, and alone it fits. So here it is a broken invariant, not a branch to transcribe.
        return -1 - running[k, 0]
    budget = budget0
    for q in range(m):
        r = running[k, q]
        t = prompt[r] + gen[r]
        if t <= (kv_priv[r] + kv_hashed[r]) * bs:  # no new block (inline: a call costs more than the step)
            if t > kv_tok[r]:
                kv_tok[r] = t
        else:
            _grow_to(ip, nblocks, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, r, t)
        ent_r[k, ne] = r
        ent_n[k, ne] = t - comp[r]
        budget -= t - comp[r]
        ne += 1
    if nwait[k] == 0:
        return ne
    # 2. the longest feasible prefix of the queue in priority order
    pad = bs - 1
    memory = nblocks * bs
    run_S, run_E, cand_S, cand_K, cands = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4]
    sum_S = 0
    for q in range(m):
        r = running[k, q]
        run_S[q] = prompt[r] + gen[r] + pad
        sum_S += run_S[q]
    free = memory - sum_S - m
    ncand = 0
    prefill = 0
    while nwait[k] > 0:  # the cheap necessary condition first: bounds the candidates
        r = _heap_pop(waiting, nwait, k, key)
        t = prompt[r] + gen[r]
        n = t - comp[r]
        oversized_alone = prefill == 0 and n > budget0
        if free < t + pad + 1 or (n > budget - prefill and not oversized_alone):
            _heap_push(waiting, nwait, k, r, key)
            break
        cands[ncand] = r
        cand_S[ncand] = t + pad
        ncand += 1
        free -= t + pad + 1
        prefill += n
    if ncand == 0:
        return ne
    total = sum_S
    for q in range(m):
        r = running[k, q]
        run_E[q] = _remaining_steps(output[r], gen[r], run_S[q], memory)
        total += run_E[q]
    for q in range(ncand):
        cand_K[q] = _remaining_steps(output[cands[q]], gen[cands[q]], cand_S[q], memory)
        total += cand_S[q] + cand_K[q]
    if total <= memory:  # every prefix fits (see McsfScheduler.schedule)
        admitted = ncand
    else:
        admitted = _admit_prefix(run_S, run_E, m, cand_S, cand_K, ncand, memory)
    for q in range(admitted, ncand):  # back in the queue
        _heap_push(waiting, nwait, k, cands[q], key)
    for q in range(admitted):  # kv.allocate of the whole prompt (it fits: the check is sufficient)
        r = cands[q]
        n = prompt[r] + gen[r] - comp[r]
        if not _allocate_if_free(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv,
                                 kv_hashed, r, k, comp[r] + n):
            return -1 - r  # (as above: the check is sufficient, so this is a broken invariant)
        if np.isnan(sched_s[r]):
            sched_s[r] = now
        running[k, nrun[k]] = r
        nrun[k] += 1
        ent_r[k, ne] = r
        ent_n[k, ne] = n
        ne += 1
    return ne


@njit(cache=True)
def _wait_urgent(ut, uq, ur, um, nu, now, at, q, r):
    """serving.instance.wait_until(at, urgent=True) from ``now`` (``at > now``), scheduled ``q``-th, for the
    arrival process (``r`` = -1) or session round ``r``: one event at ``at``, or from far back a first
    one about three quarters of the way (:func:`run` schedules the second when it comes)."""
    if 0 < now < at / 2:
        return _xfer_push(ut, uq, ur, um, nu, now + (0.75 * at - now), q, r, 1)
    return _xfer_push(ut, uq, ur, um, nu, now + _pmax(at - now, 0.0), q, r, 0)


# ---------------------------------------------------------------- routing and queueing of a request
@njit(cache=True)
def _route(router, entries, route, m, need, role, blocks, bs, kvs, running, nrun, waiting, wh, nwait, prompt, output,
           comp):
    """The instance ``_ServingRun._dispatch`` sends the ``m``-th request it routes to (``need`` tokens)."""
    if router == ROUTE_GIVEN:
        return route[m]
    if entries == 1:
        for j in range(blocks.shape[0]):
            if role[j] != ROLE_DECODE:
                return j
    return _pick(router, False, need, role, blocks, bs, kvs, running, nrun, waiting, wh, nwait, prompt, output, comp)


@njit(cache=True)
def _submit(k, r, now, eid, instance, waiting, wh, nwait, event_s, event_q, sched, key, rule, mid):
    """InstanceEngine.submit: queue request ``r`` at instance ``k`` at time ``now`` (MC-SF: in its heap on
    ``key``; WAIT / Nested WAIT: in their queues, ``rule``; else at the queue's end); an idle instance, or
    one paused with a wake-up timer (which this drops), wakes then (an event scheduled ``eid``-th).
    Returns the next scheduling number."""
    instance[r] = k
    waits = sched == SCHED_WAIT or sched == SCHED_NESTED_WAIT
    if sched == SCHED_MCSF:
        _heap_push(waiting, nwait, k, r, key)
    elif waits:
        wait_enqueue(rule, waiting, nwait, k, r)
    else:
        ring = waiting.shape[1]
        waiting[k, (wh[k] + nwait[k]) % ring] = r
        nwait[k] += 1
    if event_s[k] == np.inf or (waits and wait_drop_alarm(rule, mid, k)):
        event_s[k] = now
        event_q[k] = eid
        eid += 1
    return eid


@njit(cache=True)
def _save(counters, next_arrival, steps, plan_id, eid, nx, ndroutes, nroutes, nu):
    counters[C_NEXT], counters[C_STEPS], counters[C_PLANS] = next_arrival, steps, plan_id
    counters[C_EID], counters[C_NX], counters[C_DROUTES] = eid, nx, ndroutes
    counters[C_ROUTES], counters[C_NU] = nroutes, nu


# ---------------------------------------------------------------- WAIT / Nested WAIT (formulations.nested_wait.policy)
# The rule's arrays (``rule`` of :func:`run`, built by simulators.compiled.driver._wait_rule): ``wp`` integer settings
# and ``wf`` float ones (by the positions below), ``thr`` the thresholds (one per type, or per segment), ``ends`` the
# segments' last stages (Nested WAIT), ``grp`` each request's type (0 for Nested WAIT), ``rank`` its place in
# (arrival time, row) order and ``by_rank`` the inverse; per instance and group the policy's queue as a linked list
# (``qhead``, ``qtail``, ``qlen``; ``qnext``/``qprev`` per request), per request its position in the engine's waiting
# set ``wpos`` (the engine's queue is a set here: routers and the timeline only count it), per instance and group the
# ``max_wait_s`` clock (``since``: NaN for None) and release flag, per instance whether a wake-up timer runs
# (``alarm``).
W_PAPER, W_MAX_IN_FLIGHT, W_GROUPS, W_SEGMENTS, W_HAS_DRAIN, W_HAS_MAX_WAIT, W_STAGES = range(7)
NUM_WP = 7
WF_DRAIN, WF_MAX_WAIT = range(2)
NUM_WF = 2


@njit(cache=True, inline="always")
def _q_append(qhead, qtail, qlen, qnext, qprev, k, g, r):
    """``deque.append``: request ``r`` joins the back of group ``g``'s queue on instance ``k``."""
    t = qtail[k, g]
    qprev[r] = t
    qnext[r] = -1
    if t < 0:
        qhead[k, g] = r
    else:
        qnext[t] = r
    qtail[k, g] = r
    qlen[k, g] += 1


@njit(cache=True, inline="always")
def _q_appendleft(qhead, qtail, qlen, qnext, qprev, k, g, r):
    """``deque.appendleft``: an evicted request goes back to the front of its group's queue."""
    h = qhead[k, g]
    qnext[r] = h
    qprev[r] = -1
    if h < 0:
        qtail[k, g] = r
    else:
        qprev[h] = r
    qhead[k, g] = r
    qlen[k, g] += 1


@njit(cache=True, inline="always")
def _q_popleft(qhead, qtail, qlen, qnext, qprev, k, g):
    """``deque.popleft``: the head of group ``g``'s queue leaves it."""
    h = qhead[k, g]
    n = qnext[h]
    qhead[k, g] = n
    if n < 0:
        qtail[k, g] = -1
    else:
        qprev[n] = -1
    qlen[k, g] -= 1
    return h


@njit(cache=True, inline="always")
def _set_add(waiting, nwait, wpos, k, r):
    """Request ``r`` joins instance ``k``'s waiting set (positions ``0 .. nwait - 1``)."""
    i = nwait[k]
    waiting[k, i] = r
    wpos[r] = i
    nwait[k] = i + 1


@njit(cache=True, inline="always")
def _set_remove(waiting, nwait, wpos, k, r):
    """Request ``r`` leaves instance ``k``'s waiting set (the last member takes its place)."""
    n = nwait[k] - 1
    last = waiting[k, n]
    i = wpos[r]
    waiting[k, i] = last
    wpos[last] = i
    nwait[k] = n


@njit(cache=True)
def wait_enqueue(rule, waiting, nwait, k, r):
    """An arrival at instance ``k`` under WAIT: the engine's ``waiting.append`` and the policy's classification
    (``_StageScheduler.schedule`` queues it at its next call, in arrival order: the same order, since only that call
    moves requests between queues)."""
    wp, wf, thr, ends, grp, rank, by_rank, qhead, qtail, qlen, qnext, qprev, wpos, since, released, alarm = rule
    _set_add(waiting, nwait, wpos, k, r)
    _q_append(qhead, qtail, qlen, qnext, qprev, k, grp[r], r)


@njit(cache=True)
def wait_drop_alarm(rule, mid, k):
    """An arrival wakes instance ``k``: True if it was idle with a wake-up timer running (the timer then fires for a
    wake-up event that has already triggered: it changes nothing, so it is dropped)."""
    alarm = rule[15]
    if alarm[k] == 0:
        return False
    alarm[k] = 0
    mid[k] = False
    return True


@njit(cache=True)
def wait_alarm_fires(rule, k):
    """Whether the event of idle instance ``k`` is its timer's end (``_wake_later``'s ``alarm``: it triggers the
    wake-up, which is one more event at the same time); clears the timer."""
    alarm = rule[15]
    if alarm[k] == 0:
        return False
    alarm[k] = 0
    return True


@njit(cache=True)
def wait_set_alarm(rule, mid, step_end, k, now, at_s):
    """InstanceEngine._wake_later: a timer to ``at_s`` started at SimPy time ``now`` (``wait_until``: from far back a
    first event three quarters of the way, ``mid``; the target kept in ``step_end``, unused while idle). Returns the
    time of its first event."""
    rule[15][k] = 1
    step_end[k] = at_s
    if 0 < now < at_s / 2:
        mid[k] = True
        return now + (0.75 * at_s - now)
    return now + _pmax(at_s - now, 0.0)


@njit(cache=True, inline="always")
def _wait_release(wp, wf, since, released, k, g, stalled, now, has_work):
    """_StageScheduler._release for group ``g`` of instance ``k``."""
    if released[k, g]:
        if not has_work:
            released[k, g] = 0
        return released[k, g] != 0
    if not stalled:
        since[k, g] = np.nan
        return False
    if not wp[W_HAS_MAX_WAIT]:
        return False
    s = since[k, g]
    if np.isnan(s):
        s = now
        since[k, g] = now
    if now >= s + wf[WF_MAX_WAIT]:
        released[k, g] = 1
        since[k, g] = np.nan
    return released[k, g] != 0


@njit(cache=True, inline="always")
def _bisect_left(a, n, x):
    lo, hi = 0, n
    while lo < hi:
        m = (lo + hi) // 2
        if a[m] < x:
            lo = m + 1
        else:
            hi = m
    return lo


# _schedule_wait's work rows: per bucket its group, stage, next bucket of its stage (then its fill position), member
# count and offset in the members row; the members; per running position its bucket; the selected residents. Its
# small rows, per group (or segment): eligible, admissions allowed, has residents, residents at the first stage.
_B_GROUP, _B_STAGE, _B_NEXT, _B_COUNT, _B_OFF, _MEMBER, _BUCKET_OF, _SELECTED = range(8)
_ELIGIBLE, _ADMIT, _RESIDENT, _AT_FIRST = range(4)


@njit(cache=True)
def _schedule_wait(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, comp, gen,
                   prompt, preemptions, sched_s, now, running, nrun, waiting, nwait, ent_r, ent_n, k, nested, rule,
                   plan_id, work, stages, small, cand):
    """_StageScheduler.schedule with WaitScheduler._select (``nested`` False) or NestedWaitScheduler._select: fills
    the plan of instance ``k`` (plan number ``plan_id``); returns its entries and, for an empty plan, the wake-up time
    (``inf``: none). Work arrays: ``work`` (8, max_seqs), ``stages`` (2, stages: a stamp and a bucket per stage),
    ``small`` (4, max(groups, segments)), ``cand`` (2, requests); int64."""
    wp, wf, thr, ends, grp, rank, by_rank, qhead, qtail, qlen, qnext, qprev, wpos, since, released, alarm = rule
    bs = ip[P_BS]
    draining = wp[W_HAS_DRAIN] != 0 and now >= wf[WF_DRAIN]
    wait = wp[W_PAPER] != 0 and not draining
    G = wp[W_GROUPS]
    m = nrun[k]
    # (the work rows are indexed in place: a row view would cost reference counting at every step)
    # residents bucketed by (group, stage), buckets in order of first appearance in ``running`` (the policy's dict):
    # per stage (stamped with the plan number) a chain of its buckets, one per group present
    nb = 0
    for q in range(m):
        r = running[k, q]
        s = gen[r]
        g = grp[r]
        if stages[0, s] != plan_id:
            stages[0, s] = plan_id
            stages[1, s] = -1
        b = stages[1, s]
        while b >= 0 and work[_B_GROUP, b] != g:
            b = work[_B_NEXT, b]
        if b < 0:
            b = nb
            nb += 1
            work[_B_GROUP, b] = g
            work[_B_STAGE, b] = s
            work[_B_COUNT, b] = 0
            work[_B_NEXT, b] = stages[1, s]
            stages[1, s] = b
        work[_B_COUNT, b] += 1
        work[_BUCKET_OF, q] = b
    off = 0
    for b in range(nb):  # members of each bucket in running order, from work[_B_OFF, b]
        work[_B_OFF, b] = off
        work[_B_NEXT, b] = off
        off += work[_B_COUNT, b]
    for q in range(m):
        b = work[_BUCKET_OF, q]
        work[_MEMBER, work[_B_NEXT, b]] = running[k, q]
        work[_B_NEXT, b] += 1
    ns = 0
    if not nested:  # WaitScheduler._select
        if wait:
            for j in range(G):
                small[_RESIDENT, j] = 0
            for b in range(nb):
                small[_RESIDENT, work[_B_GROUP, b]] = 1
            for j in range(G):
                ok = qlen[k, j] >= thr[j]
                busy = qlen[k, j] > 0 or small[_RESIDENT, j] != 0
                small[_ELIGIBLE, j] = _wait_release(wp, wf, since, released, k, j, busy and not ok, now, busy) or ok
        else:
            for j in range(G):
                small[_ELIGIBLE, j] = 1
        for j in range(G):
            small[_ADMIT, j] = min(thr[j], qlen[k, j]) if small[_ELIGIBLE, j] else 0
        for b in range(nb):
            j = work[_B_GROUP, b]
            if small[_ELIGIBLE, j]:
                for x in range(work[_B_OFF, b], work[_B_OFF, b] + min(work[_B_COUNT, b], thr[j])):
                    work[_SELECTED, ns] = work[_MEMBER, x]
                    ns += 1
    else:  # NestedWaitScheduler._select
        small[_ADMIT, 0] = 0
        L = wp[W_SEGMENTS]
        queued = qlen[k, 0]
        for x in range(L):  # residents at each segment's first stage (its boundary queue)
            small[_AT_FIRST, x] = 0
        for b in range(nb):
            s = work[_B_STAGE, b] - 1
            x = _bisect_left(ends, L, s)
            if x < L - 1 and ends[x] == s:
                small[_AT_FIRST, x + 1] = work[_B_COUNT, b]
        if not wait:  # discrete.prefix_length
            kk = L
        elif queued < thr[0]:
            kk = 0
        else:
            kk = 1
            for x in range(1, L):
                if small[_AT_FIRST, x] < thr[x]:
                    break
                kk += 1
        if wait:
            stalled = False
            if kk < L:
                if kk == 0 and queued > 0:
                    stalled = True
                else:
                    for b in range(nb):
                        if min(_bisect_left(ends, L, work[_B_STAGE, b]), L - 1) >= kk:
                            stalled = True
                            break
            if _wait_release(wp, wf, since, released, k, 0, stalled, now, queued > 0 or m > 0):
                kk = L
        if kk > 0:
            small[_ADMIT, 0] = min(thr[0], queued)
            for b in range(nb):
                seg = min(_bisect_left(ends, L, work[_B_STAGE, b]), L - 1)
                if seg < kk:
                    for x in range(work[_B_OFF, b], work[_B_OFF, b] + min(work[_B_COUNT, b], thr[seg])):
                        work[_SELECTED, ns] = work[_MEMBER, x]
                        ns += 1
    # the selected residents decode one token each; LIFO eviction when one cannot grow (_evict_for)
    ne = 0
    npre = 0
    for i in range(ns):
        r = work[_SELECTED, i]
        c = comp[r]
        if c == 0:  # evicted earlier in this step
            continue
        if c + 1 <= (kv_priv[r] + kv_hashed[r]) * bs:  # no new block (inline: a call costs more than the rest)
            if c + 1 > kv_tok[r]:
                kv_tok[r] = c + 1
            ok = True
        else:
            ok = _grow_to(ip, nblocks, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, r, c + 1)
        if not ok:
            while True:
                victim = running[k, nrun[k] - 1]
                nrun[k] -= 1
                _free(ip, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, victim, k)
                comp[victim] = 0
                preemptions[victim] += 1
                _set_add(waiting, nwait, wpos, k, victim)
                _q_appendleft(qhead, qtail, qlen, qnext, qprev, k, grp[victim], victim)
                npre += 1
                if victim == r:
                    break
                if _grow_to(ip, nblocks, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, r, comp[r] + 1):
                    ok = True
                    break
            if not ok:
                continue
        ent_r[k, ne] = r
        ent_n[k, ne] = 1
        ne += 1
    if npre:  # entries evicted after they were planned leave the plan (an evicted request has nothing computed)
        keep = 0
        for e in range(ne):
            r = ent_r[k, e]
            if comp[r] > 0:
                ent_r[k, keep] = r
                ent_n[k, keep] = 1
                keep += 1
        ne = keep
    else:  # _admit: the groups' heads, in (arrival, row) order, while the in-flight cap and free KV allow
        nc = 0
        for j in range(G):
            r = qhead[k, j]
            for _ in range(small[_ADMIT, j]):
                cand[0, nc] = r
                nc += 1
                r = qnext[r]
        if nc > 1:
            ranks = cand[1, :nc]
            for i in range(nc):
                ranks[i] = rank[cand[0, i]]
            ranks.sort()
            for i in range(nc):
                cand[0, i] = by_rank[ranks[i]]
        room = nc
        if wp[W_MAX_IN_FLIGHT] >= 0:
            room = max(wp[W_MAX_IN_FLIGHT] - nrun[k], 0)
        for i in range(min(room, nc)):
            r = cand[0, i]
            tokens = prompt[r] + gen[r]
            if not _allocate_if_free(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv,
                                     kv_hashed, r, k, tokens):
                break  # LIFO: the newest admission is the first to go
            _q_popleft(qhead, qtail, qlen, qnext, qprev, k, grp[r])
            _set_remove(waiting, nwait, wpos, k, r)
            comp[r] = 0
            if np.isnan(sched_s[r]):
                sched_s[r] = now
            running[k, nrun[k]] = r
            nrun[k] += 1
            ent_r[k, ne] = r
            ent_n[k, ne] = tokens
            ne += 1
    wake = np.inf
    if ne == 0:
        if npre:  # every request of the step was evicted: re-decide at once with the freed KV
            wake = np.nextafter(now, np.inf)
        elif wait:  # the drain time, a stalled group's release: even with no event
            if wp[W_HAS_DRAIN] and wf[WF_DRAIN] > now:
                wake = wf[WF_DRAIN]
            if wp[W_HAS_MAX_WAIT]:  # _next_release_s
                nxt_s = np.inf
                for j in range(since.shape[1]):
                    s = since[k, j]
                    if not np.isnan(s) and not released[k, j]:
                        t = s + wf[WF_MAX_WAIT]
                        if t < nxt_s:
                            nxt_s = t
                if now < nxt_s < wake:
                    wake = nxt_s
    return ne, wake


# ---------------------------------------------------------------- the engine loop
@njit(cache=True)
def new_state(nreq, ninst, nslots, max_seqs):
    """Everything :func:`run` keeps between calls, for ``nreq`` requests on ``ninst`` instances.

    Per request: instance, scheduled / first-token / finish times, preemptions, cached tokens, computed
    and generated tokens, the block manager's record. Per block slot: its state and LRU links. Per
    instance: KV counts, the running list, the waiting ring (head ``wh[k]``, ``nwait[k]`` entries), the
    plan of the step in flight and its exact end, the SimPy time of its next event (a step end if
    ``busy[k]``, else a wake-up; ``inf`` when idle) and its clock (exact end of its last step).
    Per request also: swapped out (swap preemption), the plan that preempted it last. Per instance also:
    the SimPy scheduling number of its next event (``event_q``: ties at equal times go by it) and whether
    that event is the first half of a wait (``mid``: :func:`simulators.serving.instance.wait_until` waits
    in two events from far back; the step end is then ``step_end``). The KV transfers in flight, a heap
    by (end time, scheduling number): ``xt``, ``xq``, request ``xr``, source instance ``xs``. The URGENT
    events pending (:func:`simulators.serving.instance.wait_until` with ``urgent=True``), a heap of the same
    shape: ``ut``, ``uq``, ``ur`` (the session round to release, or -1: the arrival process's next first
    round), ``um`` (1: the first half of a two-event wait, see :func:`run`). ``counters``: see ``C_*``.
    """
    ring = max(nreq, 1)
    prev = np.empty(nslots + ninst, np.int64)  # each instance's LRU list has its sentinel at nslots + k
    nxt = np.empty(nslots + ninst, np.int64)
    for k in range(ninst):
        prev[nslots + k] = nxt[nslots + k] = nslots + k
    return (np.full(nreq, -1, np.int64), np.full(nreq, np.nan), np.full(nreq, np.nan), np.full(nreq, np.nan),
            np.zeros(nreq, np.int64), np.zeros(nreq, np.int64), np.zeros(nreq, np.int64), np.zeros(nreq, np.int64),
            np.full(nreq, -1, np.int64), np.zeros(nreq, np.int64), np.zeros(nreq, np.int64),
            np.zeros(nslots, np.int32), prev, nxt, np.zeros((ninst, 3), np.int64),
            np.empty((ninst, max_seqs), np.int64), np.zeros(ninst, np.int64),
            np.empty((ninst, ring), np.int64), np.zeros(ninst, np.int64), np.zeros(ninst, np.int64),
            np.empty((ninst, max_seqs), np.int64), np.empty((ninst, max_seqs), np.int64), np.zeros(ninst, np.int64),
            np.zeros(ninst), np.full(ninst, np.inf), np.zeros(ninst, np.bool_), np.zeros(ninst),
            np.zeros(nreq, np.int8), np.full(nreq, -1, np.int64),
            np.zeros(ninst, np.int64), np.zeros(ninst, np.bool_),
            np.empty(nreq), np.empty(nreq, np.int64), np.empty(nreq, np.int64), np.empty(nreq, np.int64),
            np.empty(nreq + 1), np.empty(nreq + 1, np.int64), np.empty(nreq + 1, np.int64),
            np.empty(nreq + 1, np.int64), np.zeros(NUM_COUNTERS, np.int64))


@njit(cache=True)
def run(state, timeline, until_arrival, arrival_event_s, route, prompt, output, key, rule, hinfo, hcode, blocks, role,
        kvb, droute, first, succ, think_s, arrive_s, ip, fp, tok_lin, tok_elem, tok_comm, dec_base, px, py, da, db,
        dz, ca, cb, cz, op_x, op_y, op_len, elem_bytes):
    """Serve the requests on ``blocks.shape[0]`` instances, from ``state`` (:func:`new_state`), until
    every request is done or arrival number ``until_arrival`` is next (then return :data:`PAUSED`, to
    be called again with the same state: callers show progress this way); return ``(code, culprit,
    timeline)``.

    ``hinfo``, ``hcode``: each request's block hashes as slots (see the module docstring). ``key``: each
    request's queue priority under MC-SF (smaller first; unused by the other schedulers). ``rule``: WAIT's and
    Nested WAIT's settings and state (see the WAIT section; placeholders for the other schedulers). ``dec_base``
    entries that are NaN are computed when first needed (``ProfiledStepTime._decode_base_s``).
    ``first``: the requests the trace releases (all but the later rounds of multi-round sessions), in
    trace order; ``arrival_event_s[p]``: when ``first[p]`` reaches the router on the SimPy clock of the
    Python engine (see :func:`simulators.compiled.driver.arrival_event_times`); ``succ[r]``: the next round
    of request ``r``'s session (-1: none), released ``think_s`` of it after ``r`` finishes and not before its
    ``arrive_s`` (``_ServingRun._release_round``, which writes the release time back: so does the kernel,
    into ``arrive_s``); ``route[m]``: the instance of the ``m``-th request routed when the
    router does not look at the instances (``ip[P_ROUTER] == ROUTE_GIVEN``); ``blocks[k]``: instance
    ``k``'s KV blocks, ``role[k]`` its role (ROLE_*), ``kvb[k]`` its KV bytes per token (what a hand-off
    from it moves); ``droute[m]``: the decode instance of the ``m``-th hand-off when the decode router
    (``ip[P_DROUTER]``) does not look at the instances. ``code`` is :data:`OK`, :data:`PAUSED` or the broken
    invariant (``culprit``: the request, or -1). ``timeline`` (grown and returned as needed) gets one row
    per step: time, instance, KV blocks in use, running, waiting, batch tokens, batch sequences (the SimPy
    engine's step-mode rows, in event order).

    Events run in the SimPy engine's order. URGENT events come before every NORMAL one at their time, and
    among themselves by scheduling number: the arrival process's waits (``_ServingRun.arrivals``: it routes
    every first round whose time has come, then waits for the next) and the waits of session rounds
    released with a think time (``_ServingRun._release_round``); each wait from far back is two events, as
    ``wait_until`` makes it. A round released at once (no think time, its trace time past) is routed in the
    release process's first (Initialize) event, right after the step end that finished its predecessor, in
    the order of that step's plan among the hand-offs (processes started in a callback run next, in the
    order they were started). The other events are NORMAL ones, taken by (time, scheduling number): a step end
    (or the first half of its wait, see :func:`new_state`), an idle instance's wake-up (InstanceEngine
    ._wake: scheduled when a request is submitted to it or, on a prefill instance, when a transfer
    releases KV there) and a KV transfer's end (``_ServingRun._transfer``'s timeout, scheduled when its
    process starts: after the step end that handed the request off has scheduled that instance's next
    step, in the order of the step's plan). Numbers are taken in the order SimPy schedules these events.
    Instances interact only through the routers and the transfers: a router sees each instance as it
    stood after its last event before the arrival or the transfer's end.

    Under WAIT and Nested WAIT an instance whose plan is empty pauses (its residents keep their KV) until a
    request arrives or, if the policy asked for one, its wake-up timer ends (InstanceEngine._wake_later: the
    timer's process waits as a step does, in two events from far back; its end triggers the wake-up, one more
    event at that time). An arrival before the timer's end wakes the instance at once and the timer is dropped
    (it would find the wake-up triggered and do nothing).
    """
    (instance, sched_s, first_s, finish_s, preemptions, cached_tokens, comp, gen, kv_tok, kv_priv, kv_hashed,
     slot_ref, prev, nxt, kvs, running, nrun, waiting, wh, nwait, ent_r, ent_n, nent, step_end, event_s, busy,
     clock, swapped, marked, event_q, mid, xt, xq, xr, xs, ut, uq, ur, um, counters) = state
    nfirst = first.shape[0]
    ninst = blocks.shape[0]
    nslots = prev.shape[0] - ninst
    ring = waiting.shape[1]
    max_seqs, budget0, limit, bs = ip[P_MAX_SEQS], ip[P_BUDGET], ip[P_LIMIT], ip[P_BS]
    router = ip[P_ROUTER]
    plens = np.empty(max_seqs, np.int64)
    pcached = np.empty(max_seqs, np.int64)
    decodes = np.empty(max_seqs, np.int64)  # SarathiScheduler's snapshot of running decodes and prefills
    prefills = np.empty(max_seqs, np.int64)
    sched, swap, probe = ip[P_SCHED], ip[P_SWAP] != 0, ip[P_PROBE] != 0
    plan_id = counters[C_PLANS]
    done = np.zeros(max_seqs, np.bool_)
    scratch = np.empty((5, max_seqs if sched == SCHED_MCSF else 0), np.int64)  # MC-SF's work rows
    waits = sched == SCHED_WAIT or sched == SCHED_NESTED_WAIT
    wwork = np.empty((8, max_seqs if waits else 0), np.int64)  # WAIT's work rows (see _schedule_wait)
    wstages = np.zeros((2, rule[0][W_STAGES] if waits else 0), np.int64)
    wsmall = np.empty((4, max(rule[0][W_GROUPS], rule[0][W_SEGMENTS]) if waits else 0), np.int64)
    wcand = np.empty((2, prompt.shape[0] if waits else 0), np.int64)
    record = ip[P_TIMELINE] != 0
    check = ip[P_CHECK] != 0
    next_arrival, steps = counters[C_NEXT], counters[C_STEPS]
    eid, nx, ndroutes = counters[C_EID], counters[C_NX], counters[C_DROUTES]
    nroutes, nu = counters[C_ROUTES], counters[C_NU]
    drouter = ip[P_DROUTER]
    # what a step end starts, in the order of its plan: hand-offs (r) and session rounds to release (-1 - r)
    hand = np.empty(max_seqs, np.int64)
    if not counters[C_STARTED]:  # the arrival process's first wait, from time 0 (one event: wait_until)
        counters[C_STARTED] = 1
        if nfirst > 0:
            nu = _xfer_push(ut, uq, ur, um, nu, 0.0 + _pmax(arrival_event_s[0] - 0.0, 0.0), eid, -1, 0)
            eid += 1
    # one instance that takes new requests (or one decode instance): every router picks it
    entries = 0
    decoders = 0
    for j in range(ninst):
        if role[j] == ROLE_DECODE:
            decoders += 1
        else:
            entries += 1
    while True:
        k = -1
        t = np.inf
        tq = 0
        for j in range(ninst):
            e = event_s[j]
            if e < t or (e == t and k >= 0 and event_q[j] < tq):
                t = e
                tq = event_q[j]
                k = j
        xfer = nx > 0 and _before(xt[0], xq[0], t, tq) if k >= 0 else nx > 0
        if xfer:
            t = xt[0]
        if nu > 0 and ut[0] <= t:
            # ---- an URGENT event: before every NORMAL one at its time (ties: by scheduling number)
            tu, r = ut[0], ur[0]
            target = arrival_event_s[next_arrival] if r < 0 else arrive_s[r]
            if um[0]:  # the first half of a wait from far back: the second is scheduled now
                nu = _xfer_pop(ut, uq, ur, um, nu)
                nu = _xfer_push(ut, uq, ur, um, nu, tu + _pmax(target - tu, 0.0), eid, r, 0)
                eid += 1
                continue
            arrival = r < 0
            if arrival:  # _ServingRun.arrivals routes its next first round (its event stays while it routes)
                if next_arrival >= until_arrival:
                    _save(counters, next_arrival, steps, plan_id, eid, nx, ndroutes, nroutes, nu)
                    return PAUSED, -1, timeline
                r = first[next_arrival]
                next_arrival += 1
            else:  # _ServingRun._release_round: a session round's think time is over
                nu = _xfer_pop(ut, uq, ur, um, nu)
            # ---- _ServingRun._dispatch
            k = _route(router, entries, route, nroutes, prompt[r] + output[r], role, blocks, bs, kvs, running, nrun,
                       waiting, wh, nwait, prompt, output, comp)
            nroutes += 1
            eid = _submit(k, r, tu, eid, instance, waiting, wh, nwait, event_s, event_q, sched, key, rule, mid)
            if arrival:
                if next_arrival >= nfirst:
                    nu = _xfer_pop(ut, uq, ur, um, nu)
                elif arrival_event_s[next_arrival] > tu:  # the next first round is later: wait_until it
                    nu = _xfer_pop(ut, uq, ur, um, nu)
                    nu = _wait_urgent(ut, uq, ur, um, nu, tu, arrival_event_s[next_arrival], eid, -1)
                    eid += 1
                # else it arrives now too: routed at the next turn of the loop, in this same event
            continue
        if xfer:
            # ---- a KV transfer ends: _ServingRun._transfer
            r, src = xr[0], xs[0]
            nx = _xfer_pop(xt, xq, xr, xs, nx)
            _free(ip, hinfo, hcode, slot_ref, prev, nxt, nslots + src, kvs[src], kv_tok, kv_priv, kv_hashed, r,
                  src)  # InstanceEngine.release: the source frees the KV, and wakes if idle
            if event_s[src] == np.inf:
                event_s[src] = t
                event_q[src] = eid
                eid += 1
            if drouter == ROUTE_GIVEN:
                k = droute[ndroutes]
                ndroutes += 1
            elif decoders == 1:
                for j in range(ninst):
                    if role[j] == ROLE_DECODE:
                        k = j
            else:
                k = _pick(drouter, True, prompt[r] + output[r], role, blocks, bs, kvs, running, nrun, waiting, wh,
                          nwait, prompt, output, comp)
            eid = _submit(k, r, t, eid, instance, waiting, wh, nwait, event_s, event_q, sched, key, rule, mid)
            continue
        if k < 0:
            break  # no arrival left, no transfer in flight, every instance idle
        if mid[k]:  # the first half of a wait from far back (wait_until): the second is scheduled now
            mid[k] = False
            event_s[k] = t + _pmax(step_end[k] - t, 0.0)
            event_q[k] = eid
            eid += 1
            continue
        if waits and not busy[k] and wait_alarm_fires(rule, k):  # the timer's end triggers the wake-up event
            event_s[k] = t
            event_q[k] = eid
            eid += 1
            continue
        now = event_s[k]
        nblocks = blocks[k]
        head = nslots + k
        kv = kvs[k]
        prefill = role[k] == ROLE_PREFILL
        nhand = 0
        if busy[k]:
            # ---- the step in flight ends: InstanceEngine._complete and _retire
            end = step_end[k]
            clock[k] = end
            steps += 1
            ne = nent[k]
            nfin = 0  # sequences leaving ``running``: finished, or handed off (a prefill instance)
            tokens = 0
            for e in range(ne):
                r = ent_r[k, e]
                tokens += ent_n[k, e]
                c = comp[r] + ent_n[k, e]
                comp[r] = c
                g = gen[r]
                done[e] = False
                if c >= prompt[r] + g:
                    g += 1
                    gen[r] = g
                    if g == 1:
                        first_s[r] = end
                    if g >= output[r]:  # (a one-token output finishes on a prefill instance too)
                        finish_s[r] = end
                        done[e] = True
                        nfin += 1
                        if succ[r] >= 0:  # _ServingRun._finished: the next round's release starts
                            hand[nhand] = -1 - r
                            nhand += 1
                    elif g == 1 and prefill:  # handed off: leaves running, keeps its KV until released
                        hand[nhand] = r
                        nhand += 1
                        nfin += 1
                if check:
                    if c > prompt[r] + g or g > output[r]:
                        return ACCOUNTING, r, timeline
                    if kv_tok[r] < c:
                        return KV_SHORT, r, timeline
            if nfin:
                keep = 0
                for q in range(nrun[k]):
                    r = running[k, q]
                    if np.isnan(finish_s[r]) and not (prefill and gen[r] > 0):  # (running prefills have none)
                        running[k, keep] = r
                        keep += 1
                nrun[k] = keep
                for e in range(ne):
                    if done[e]:
                        _free(ip, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed,
                              ent_r[k, e], k)
            used = kv[_PRIV] + kv[_HELD]
            if check and used > nblocks:
                return KV_OVER_CAPACITY, -1, timeline
            if record:
                if steps > timeline.shape[0]:
                    grown = np.empty((max(2 * timeline.shape[0], 1024), 7))
                    grown[: timeline.shape[0]] = timeline
                    timeline = grown
                row = timeline[steps - 1]
                row[0] = end
                row[1] = k
                row[2] = used
                row[3] = nrun[k]
                row[4] = nwait[k]
                row[5] = tokens
                row[6] = ne
        else:
            clock[k] = now  # woken (a request, a release): InstanceEngine takes the SimPy time as its clock
        # ---- the next plan: the scheduler's schedule
        ne = 0
        wake_s = np.inf  # (an empty WAIT plan's wake-up time)
        preempted = False
        swap_tokens = 0
        budget = budget0
        plan_id += 1
        nds = 0
        npfs = 0
        if sched == SCHED_SARATHI:  # running decodes, then running prefills, as listed before any preemption
            for q in range(nrun[k]):
                r = running[k, q]
                if prompt[r] + gen[r] - comp[r] > 1 or gen[r] == 0:
                    prefills[npfs] = r
                    npfs += 1
                else:
                    decodes[nds] = r
                    nds += 1
        elif sched == SCHED_V0:  # a step of whole prefills if one can be admitted
            while nwait[k] > 0 and nrun[k] < max_seqs:
                r = waiting[k, wh[k]]
                hit = _prefix_hit(ip, hinfo, hcode, slot_ref, comp, prompt, gen, r, k, probe)
                n = prompt[r] + gen[r] - hit
                if n > budget:
                    break
                if _admit(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed, comp,
                          cached_tokens, swapped, sched_s, clock[k], r, k, hit, n, 0) < 0:
                    break
                ne = _run_head(running, nrun, waiting, wh, nwait, ent_r, ent_n, k, ne, n)
                budget -= n
        elif sched == SCHED_MCSF:  # McsfScheduler.schedule
            ne = _schedule_mcsf(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed,
                                comp, gen, prompt, output, key, sched_s, clock[k], running, nrun, waiting, nwait,
                                ent_r, ent_n, k, budget0, scratch)
            if ne < 0:
                return MCSF_SHORT, -1 - ne, timeline
        elif waits:  # WaitScheduler / NestedWaitScheduler.schedule
            ne, wake_s = _schedule_wait(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv,
                                        kv_hashed, comp, gen, prompt, preemptions, sched_s, clock[k], running, nrun,
                                        waiting, nwait, ent_r, ent_n, k, sched == SCHED_NESTED_WAIT, rule, plan_id,
                                        wwork, wstages, wsmall, wcand)
        elif sched == SCHED_STATIC:  # StaticBatchScheduler.schedule
            if nrun[k] == 0:  # a batch forms only when none runs: FCFS while KV for prompt + output is free
                while nwait[k] > 0 and nrun[k] < max_seqs:
                    r = waiting[k, wh[k]]
                    tokens = prompt[r] + output[r]
                    need = -(-tokens // bs)  # BlockManager.can_allocate/allocate without hashes: all private
                    if need > nblocks - kv[_PRIV] - kv[_HELD]:  # (cached blocks count as free: evictable)
                        break
                    _make_room(nblocks, slot_ref, prev, nxt, head, kv, need)
                    kv[_PRIV] += need
                    kv_tok[r] = tokens
                    kv_priv[r] = need
                    kv_hashed[r] = 0
                    if np.isnan(sched_s[r]):
                        sched_s[r] = clock[k]
                    running[k, nrun[k]] = r
                    nrun[k] += 1
                    wh[k] = (wh[k] + 1) % ring
                    nwait[k] -= 1
            for q in range(nrun[k]):  # every member computes what it lacks: its prompt, then a token a step
                r = running[k, q]
                ent_r[k, ne] = r
                ent_n[k, ne] = prompt[r] + gen[r] - comp[r]
                ne += 1
        # running sequences (VllmV1Scheduler: each gets what is left, up to the budget; vLLM V0 and Sarathi
        # decodes: one token; static batching: none, its plan is made), preempting the newest when KV cannot
        # grow (_grow_or_preempt)
        q = 0
        v0_decodes = sched == SCHED_V0 and ne == 0  # vLLM V0 decodes only in a step without prefills
        while True:
            if sched == SCHED_SARATHI:
                if q >= nds or budget == 0:
                    break
                r = decodes[q]
                q += 1
                if marked[r] == plan_id:  # preempted in this plan
                    continue
            else:
                if q >= nrun[k] or (budget <= 0 if sched == SCHED_V1 else not v0_decodes):
                    break
                r = running[k, q]
            c = comp[r]
            n = 1
            if sched == SCHED_V1:
                n = prompt[r] + gen[r] - c
                if 0 < limit < n:
                    n = limit
                if n > budget:
                    n = budget
            kept = True
            # the common case (no new block) inline: a call passes its arrays with reference counting
            # (atomic operations), which would cost more than the rest of the step
            fits = c + n <= (kv_priv[r] + kv_hashed[r]) * bs
            if fits and c + n > kv_tok[r]:
                kv_tok[r] = c + n
            while not fits and not _grow_to(ip, nblocks, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv,
                                            kv_hashed, r, c + n):
                victim = running[k, nrun[k] - 1]  # the newest goes
                nrun[k] -= 1
                swap_tokens += _preempt(ip, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed,
                                        comp, preemptions, swapped, waiting, wh, nwait, k, victim, swap)
                marked[victim] = plan_id
                preempted = True
                if victim == r:
                    kept = False
                    break
            if not kept:
                if sched == SCHED_SARATHI:
                    continue
                break
            ent_r[k, ne] = r
            ent_n[k, ne] = n
            ne += 1
            budget -= n
            if sched != SCHED_SARATHI:
                q += 1
        if sched == SCHED_SARATHI:  # running prefills (their whole prompt's KV was reserved at admission)
            for q in range(npfs):
                if budget == 0:
                    break
                r = prefills[q]
                if marked[r] == plan_id:
                    continue
                n = min(prompt[r] + gen[r] - comp[r], budget)
                ent_r[k, ne] = r
                ent_n[k, ne] = n
                ne += 1
                budget -= n
        # admissions, FCFS, chunked to the budget left
        if not preempted and sched != SCHED_V0 and sched != SCHED_STATIC and sched != SCHED_MCSF and not waits:
            while nwait[k] > 0 and budget > 0 and nrun[k] < max_seqs:
                r = waiting[k, wh[k]]
                hit = _prefix_hit(ip, hinfo, hcode, slot_ref, comp, prompt, gen, r, k, probe)
                remaining = prompt[r] + gen[r] - hit
                reserve = 0
                if sched == SCHED_SARATHI:  # KV of the whole prompt at admission
                    n = min(remaining, budget)
                    reserve = prompt[r] + gen[r]
                else:
                    n = remaining if not 0 < limit < remaining else limit
                    if not ip[P_CHUNKED] and n > budget:
                        break
                    n = min(n, budget)
                    if ip[P_RESERVE] and _blocks_needed(ip, hinfo, hcode, slot_ref, r, k, hit + remaining) > (
                            nblocks - kv[_PRIV] - kv[_HELD]):
                        break
                swap_in = _admit(ip, nblocks, hinfo, hcode, slot_ref, prev, nxt, head, kv, kv_tok, kv_priv, kv_hashed,
                                 comp, cached_tokens, swapped, sched_s, clock[k], r, k, hit, n, reserve)
                if swap_in < 0:
                    break
                swap_tokens += swap_in
                ne = _run_head(running, nrun, waiting, wh, nwait, ent_r, ent_n, k, ne, n)
                budget -= n
        nent[k] = ne
        if ne == 0:
            if nrun[k] and not waits:  # (WAIT's empty plans hold: its residents pause on purpose)
                return STALLED, running[k, 0], timeline
            busy[k] = False
            event_s[k] = np.inf  # idle until a request arrives
            if waits and wake_s < np.inf:  # or until the policy's wake-up time (InstanceEngine._wake_later)
                event_s[k] = wait_set_alarm(rule, mid, step_end, k, now, wake_s)
                event_q[k] = eid
                eid += 1
        else:
            # ---- the step's duration: InstanceEngine._compute_time_s
            npf = 0
            nd = 0
            dec_sum = 0
            sampled = 0
            tokens = 0
            for e in range(ne):
                r, n = ent_r[k, e], ent_n[k, e]
                c, g = comp[r], gen[r]
                tokens += n
                if n == 1 and g > 0 and c == prompt[r] + g - 1:
                    dec_sum += c
                    nd += 1
                    sampled += 1
                else:
                    plens[npf] = n
                    pcached[npf] = c
                    npf += 1
                    if c + n >= prompt[r] + g:
                        sampled += 1
            if npf == 0:
                if np.isnan(dec_base[nd]):  # ProfiledStepTime._decode_base_s: the step without its decode attention
                    total = _step_time(ip, fp, tok_lin, tok_elem, tok_comm, px, py, da, db, dz, ca, cb, cz, op_x, op_y,
                                       op_len, elem_bytes, nd, plens, pcached, 0, nd, 0, nd)
                    dec_base[nd] = total - ip[P_LAYERS] * _g(fp, _grid2(da, db, dz, float(nd), 0.0))
                dt = _decode_time(ip, fp, dec_base, da, db, dz, nd, dec_sum)
            else:
                dt = _step_time(ip, fp, tok_lin, tok_elem, tok_comm, px, py, da, db, dz, ca, cb, cz, op_x, op_y,
                                op_len, elem_bytes, tokens, plens, pcached, npf, nd, dec_sum, sampled)
            if swap_tokens:  # InstanceEngine._step_time_s: the KV moved over the host link, then the compute
                dt = swap_tokens * ip[P_KV_BYTES] / fp[F_HOST_LINK] + dt
            end = clock[k] + dt
            step_end[k] = end
            if 0 < now < end / 2:  # serving.instance.wait_until from far back: two events
                mid[k] = True
                event_s[k] = now + (0.75 * end - now)
            else:  # (SimPy's clock reaches the exact end)
                event_s[k] = _pmax(now, end)
            event_q[k] = eid
            eid += 1
            busy[k] = True
        # the hand-offs of the step that ended: each transfer's process starts after this event (SimPy
        # URGENT Initialize events), so its timeout is scheduled after this instance's next step end
        for i in range(nhand):
            r = hand[i]
            if r >= 0:
                dt = fp[F_LINK_LATENCY] + comp[r] * kvb[k] / fp[F_LINK_BW]  # LinkSpec.transfer_time_s
                nx = _xfer_push(xt, xq, xr, xs, nx, now + dt, eid, r, k)
                eid += 1
                continue
            # _ServingRun._release_round: the trace's time of a later round is a lower bound
            r = -1 - r
            nr = succ[r]
            a = _pmax(arrive_s[nr], finish_s[r] + think_s[nr])
            arrive_s[nr] = a
            if a > now:
                nu = _wait_urgent(ut, uq, ur, um, nu, now, a, eid, nr)
                eid += 1
            else:  # released at once: routed in this process's first event
                j = _route(router, entries, route, nroutes, prompt[nr] + output[nr], role, blocks, bs, kvs, running,
                           nrun, waiting, wh, nwait, prompt, output, comp)
                nroutes += 1
                eid = _submit(j, nr, now, eid, instance, waiting, wh, nwait, event_s, event_q, sched, key, rule,
                              mid)
    _save(counters, next_arrival, steps, plan_id, eid, nx, ndroutes, nroutes, nu)
    return OK, -1, timeline
