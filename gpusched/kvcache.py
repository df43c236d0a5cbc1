"""KV-cache capacity of an instance, and paged block accounting.

:func:`kv_capacity` answers "how many tokens of KV cache does one instance hold": per GPU,

    kv_bytes = memory_bytes * memory_utilization - weight_bytes / (TP * PP) - activation_reserve_bytes
    tokens   = kv_bytes // bytes_per_token_per_gpu, rounded down to whole blocks of block_size_tokens

where ``bytes_per_token_per_gpu`` is the model's KV bytes per token split over the GPUs: each tensor-
parallel rank holds ``ceil(num_kv_heads / TP)`` KV heads (KV heads are replicated when TP > num_kv_heads,
as vLLM does) and each pipeline stage holds ``ceil(num_layers / PP)`` layers (the fullest stage binds).
When TP divides the KV heads and PP the layers this is exactly ``kv_bytes_per_token / (TP * PP)``.
Weights are taken as evenly split over the ``TP * PP`` GPUs.

:class:`BlockManager` is the paged-attention (vLLM-style) accounting of one instance's blocks, with
hash-based prefix sharing and an LRU of unreferenced cached blocks. It is called in the simulator's hot
loop, so it keeps only ints and dicts: no block objects, no per-token state.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from itertools import repeat, takewhile

from gpusched.errors import ConfigError, DoesNotFitError, KVCacheOverflowError, UnknownNameError

__all__ = [
    "KVCapacity",
    "kv_capacity",
    "default_activation_reserve_bytes",
    "DEFAULT_ACTIVATION_CHUNK_TOKENS",
    "BlockManager",
]

DEFAULT_ACTIVATION_CHUNK_TOKENS = 8192
"""Tokens of one forward pass the default activation reserve is sized for (vLLM's default
``max_num_batched_tokens`` for online serving on large GPUs)."""

_ACTIVATION_BYTES_PER_ELEMENT = 2  # activations are computed in bf16/fp16 whatever the storage dtype


def _pos_int(owner: str, field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {field} must be an int >= 1, got {value!r}")
    return value


def default_activation_reserve_bytes(model, tp: int = 1, chunk_tokens: int = DEFAULT_ACTIVATION_CHUNK_TOKENS) -> int:
    """Default per-GPU memory kept back for activations, bytes.

    Why: vLLM sizes the KV cache *after* a profiling forward pass of ``max_num_batched_tokens`` tokens and
    reserves that pass's peak activation memory. We estimate that peak analytically as the largest set of
    tensors alive at once inside one layer for a ``chunk_tokens``-token batch: the residual stream, its
    normalised copy, the attention output and the QKV projection (~4 x hidden) plus the FFN's gate and up
    intermediates (2 x ffn_size / TP), in bf16:

        chunk_tokens * (4 * hidden_size + 2 * ffn_size / TP) * 2 bytes

    For Llama-3-8B at TP=1 this is ~0.74 GB. CUDA context, NCCL buffers and allocator fragmentation are
    covered by the ``1 - memory_utilization`` headroom, not by this reserve.
    """
    per_token = 4 * model.hidden_size + 2 * math.ceil(model.ffn_size / tp)
    return int(chunk_tokens * per_token * _ACTIVATION_BYTES_PER_ELEMENT)


@dataclass(frozen=True)
class KVCapacity:
    """KV capacity of one instance (every GPU of it holds the same number of tokens).

    Attributes:
        kv_bytes: bytes per GPU available to the KV cache (before rounding to blocks).
        tokens: KV tokens the instance holds, a whole number of blocks (``blocks * block_size_tokens``).
        blocks: KV blocks the instance holds.
        block_size_tokens: tokens per block.
        bytes_per_token_per_gpu: KV bytes one token of context occupies on each GPU.
        weight_bytes_per_gpu: model weight bytes on each GPU.
        activation_reserve_bytes: bytes per GPU reserved for activations.
    """

    kv_bytes: int
    tokens: int
    blocks: int
    block_size_tokens: int
    bytes_per_token_per_gpu: int
    weight_bytes_per_gpu: int = 0
    activation_reserve_bytes: int = 0


def kv_capacity(
    model,
    gpu,
    tp: int = 1,
    pp: int = 1,
    memory_utilization: float = 0.9,
    activation_reserve_bytes: int | None = None,
    block_size_tokens: int = 16,
    dtype: str = "bf16",
) -> KVCapacity:
    """KV capacity of an instance of ``tp * pp`` GPUs of kind ``gpu`` serving ``model``.

    Args:
        model: a ``ModelSpec`` or a model name for :func:`gpusched.llm.get_model`.
        gpu: a ``GpuSpec`` or a GPU name for :func:`gpusched.hardware.get_gpu`.
        tp, pp: tensor- and pipeline-parallel degrees.
        memory_utilization: fraction of device memory the engine may use (vLLM's
            ``gpu_memory_utilization``), in (0, 1].
        activation_reserve_bytes: bytes per GPU kept for activations; ``None`` uses
            :func:`default_activation_reserve_bytes` (see there for the reasoning).
        block_size_tokens: tokens per KV block.
        dtype: storage dtype of weights and KV cache (``"bf16"``, ``"fp8"``, ...).

    Raises:
        DoesNotFitError: weights + activation reserve leave less than one block of KV cache; the message
            gives required vs available bytes and the ways out.
    """
    if isinstance(model, str):
        from gpusched.llm import get_model

        model = get_model(model)
    if isinstance(gpu, str):
        from gpusched.hardware import get_gpu

        gpu = get_gpu(gpu)
    _pos_int("kv_capacity", "tp", tp)
    _pos_int("kv_capacity", "pp", pp)
    _pos_int("kv_capacity", "block_size_tokens", block_size_tokens)
    if not (isinstance(memory_utilization, (int, float)) and 0 < memory_utilization <= 1):
        raise ConfigError(f"kv_capacity: memory_utilization must be in (0, 1], got {memory_utilization!r}")
    if activation_reserve_bytes is None:
        activation_reserve_bytes = default_activation_reserve_bytes(model, tp)
    elif activation_reserve_bytes < 0:
        raise ConfigError(f"kv_capacity: activation_reserve_bytes must be >= 0, got {activation_reserve_bytes!r}")

    n_gpus = tp * pp
    weights_per_gpu = math.ceil(model.weight_bytes(dtype) / n_gpus)
    kv_heads_per_gpu = math.ceil(model.num_kv_heads / tp)
    layers_per_gpu = math.ceil(model.num_layers / pp)
    per_layer = model.kv_bytes_per_token(dtype) / model.num_layers
    bytes_per_token = math.ceil(per_layer * layers_per_gpu * kv_heads_per_gpu / model.num_kv_heads)

    budget = int(gpu.memory_bytes * memory_utilization)
    kv_bytes = budget - weights_per_gpu - int(activation_reserve_bytes)
    block_bytes = bytes_per_token * block_size_tokens
    blocks = kv_bytes // block_bytes if kv_bytes > 0 else 0
    if blocks < 1:
        required = weights_per_gpu + int(activation_reserve_bytes) + block_bytes
        raise DoesNotFitError(
            f"{model.name} ({dtype}) does not fit on {gpu.name} with TP={tp}, PP={pp}: each GPU needs "
            f"{required / 1e9:.2f} GB (weights {weights_per_gpu / 1e9:.2f} GB + activation reserve "
            f"{activation_reserve_bytes / 1e9:.2f} GB + one KV block {block_bytes / 1e6:.2f} MB) but has "
            f"{budget / 1e9:.2f} GB ({gpu.memory_bytes / 1e9:.0f} GB x memory_utilization {memory_utilization}). "
            f"Fix: raise TP or PP, use a GPU with more memory, or a smaller dtype (e.g. 'fp8')."
        )
    return KVCapacity(
        kv_bytes=int(kv_bytes),
        tokens=int(blocks * block_size_tokens),
        blocks=int(blocks),
        block_size_tokens=block_size_tokens,
        bytes_per_token_per_gpu=int(bytes_per_token),
        weight_bytes_per_gpu=int(weights_per_gpu),
        activation_reserve_bytes=int(activation_reserve_bytes),
    )


class BlockManager:
    """Paged KV-block accounting for one instance, with prefix sharing by block hash.

    A block is in exactly one of three states:

    * *used*: held by at least one live sequence (private blocks, or hashed blocks with refcount >= 1);
    * *cached*: hashed, resident, referenced by no sequence; kept in LRU order, reusable by hash and
      evicted (oldest first) when a fresh block is needed;
    * *free*: empty.

    ``num_used_blocks + num_free_blocks == num_blocks`` always, where ``num_free_blocks`` counts free plus
    cached (evictable) blocks. Every call is O(1) except those that take a ``block_hashes`` list, which
    are O(len(block_hashes)) (mostly C-level dict/set operations), :meth:`extend_each`, O(sequences), and
    eviction, O(blocks evicted), done in one pass per call however many blocks the call fills.

    Prefix sharing: ``allocate(..., block_hashes=hs)`` gives one hash per *full* block of the prompt, in
    order (hashes are expected to be chained, i.e. each identifies its whole prefix, as in vLLM and the
    Mooncake trace). The longest prefix of ``hs`` whose blocks are resident is reused and its token count
    returned; the remaining hashed blocks are filled fresh and become shareable. The partial last block
    and blocks added by :meth:`extend` are private. The caller decides how many tokens to recompute
    (an engine must still compute at least the prompt's last token even on a full hit).

    Hashes given as a ``range`` are *exclusive*: no other live sequence of this manager names any of
    them (a request's own blocks, a session's history: its rounds never run at the same time). Such a
    sequence's blocks are not entered in the table of shared blocks while it holds them (they cannot be
    shared), only in the cache when it frees them, which saves a dictionary entry per block and per
    sequence; the blocks taken, hit, cached and evicted are exactly those of the same hashes given as a
    tuple.
    """

    __slots__ = ("num_blocks", "block_size_tokens", "_seqs", "_ref", "_lru", "_private",
                 "prefix_query_tokens", "prefix_hit_tokens")

    def __init__(self, num_blocks: int, block_size_tokens: int = 16):
        self.num_blocks = _pos_int("BlockManager", "num_blocks", num_blocks)
        self.block_size_tokens = _pos_int("BlockManager", "block_size_tokens", block_size_tokens)
        # seq_id -> [num_tokens, num_private_blocks, hashes (tuple, or range if exclusive), num_hashed_blocks]
        self._seqs: dict = {}
        self._ref: dict = {}  # hash -> refcount (>= 1) of shared hashed blocks in use
        self._lru = _CachedBlocks()  # unreferenced cached blocks, oldest first
        self._private = 0  # blocks in use not in _ref: private ones and those of exclusive hashes
        self.prefix_query_tokens = 0  # tokens offered for prefix matching (full hashed blocks)
        self.prefix_hit_tokens = 0  # of which found cached

    # ---- state ------------------------------------------------------------------------------------
    @property
    def num_used_blocks(self) -> int:
        """Blocks held by live sequences."""
        return self._private + len(self._ref)

    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation may take: empty plus cached-but-unreferenced (evictable)."""
        return self.num_blocks - self._private - len(self._ref)

    @property
    def num_cached_blocks(self) -> int:
        """Unreferenced cached blocks (a subset of :attr:`num_free_blocks`)."""
        return len(self._lru)

    @property
    def utilization(self) -> float:
        """Fraction of blocks held by live sequences, in [0, 1]."""
        return (self._private + len(self._ref)) / self.num_blocks

    @property
    def num_sequences(self) -> int:
        return len(self._seqs)

    def __contains__(self, seq_id) -> bool:
        return seq_id in self._seqs

    def tokens_of(self, seq_id) -> int:
        """Tokens the sequence currently holds."""
        try:
            return self._seqs[seq_id][0]  # engines check every scheduled sequence at every step
        except KeyError:
            return self._get(seq_id)[0]  # raises UnknownNameError

    def tokens_each(self, seq_ids) -> list[int]:
        """:meth:`tokens_of` of every sequence of ``seq_ids``, in one call (an engine checks a whole batch)."""
        seqs = self._seqs
        try:
            return [seqs[i][0] for i in seq_ids]
        except KeyError:
            for i in seq_ids:
                self._get(i)
            raise

    def slots_each(self, seq_ids) -> list[int]:
        """Token slots of the blocks each sequence of ``seq_ids`` holds (filled or not), in one call."""
        seqs, bs = self._seqs, self.block_size_tokens
        try:
            return [(rec[1] + rec[3]) * bs for rec in map(seqs.__getitem__, seq_ids)]
        except KeyError:
            for i in seq_ids:
                self._get(i)
            raise

    def free_slots_each(self, seq_ids) -> list[int]:
        """:meth:`free_slots_of` of every sequence of ``seq_ids``, in one call (token slots)."""
        seqs, bs = self._seqs, self.block_size_tokens
        try:
            return [(rec[1] + rec[3]) * bs - rec[0] for rec in map(seqs.__getitem__, seq_ids)]
        except KeyError:
            for i in seq_ids:
                self._get(i)
            raise

    def blocks_of(self, seq_id) -> int:
        """Blocks the sequence currently references (private + shared)."""
        rec = self._get(seq_id)
        return rec[1] + rec[3]

    def cached_prefix_tokens(self, block_hashes) -> int:
        """Tokens of the longest prefix of ``block_hashes`` whose blocks are resident (no side effects).

        An engine probes this before deciding how many prompt tokens to schedule (vLLM's
        ``get_computed_blocks``).
        """
        ref, lru = self._ref, self._lru.keys()  # a dict view: a C-level ``in``
        if not ref:  # no shared block in use (only exclusive ones, if any): resident means cached, in C
            return len(list(takewhile(lru.__contains__, block_hashes))) * self.block_size_tokens
        hit = 0
        for h in block_hashes:
            if h in ref or h in lru:
                hit += 1
            else:
                break
        return hit * self.block_size_tokens

    def is_cached(self, block_hash) -> bool:
        """Whether a block with this hash is resident (in use or cached)."""
        return block_hash in self._ref or block_hash in self._lru

    # ---- operations -------------------------------------------------------------------------------
    def _get(self, seq_id):
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise UnknownNameError(
                f"BlockManager: unknown seq_id {seq_id!r} (not allocated, or already freed)") from None

    def _plan(self, num_tokens: int, block_hashes):
        """(blocks that must come from the free pool, prefix-hit blocks, hashes tuple, blocks needed,
        whether any of the hashes is resident)."""
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
            raise ConfigError(f"BlockManager: num_tokens must be an int >= 0, got {num_tokens!r}")
        bs = self.block_size_tokens
        total = -(-num_tokens // bs)
        if not block_hashes:
            return total, 0, (), total, False
        hashes = block_hashes if type(block_hashes) is range else tuple(block_hashes)
        if len(hashes) > num_tokens // bs:
            raise ConfigError(
                f"BlockManager: {len(hashes)} block hashes for {num_tokens} tokens, but only "
                f"{num_tokens // bs} full blocks of {bs} tokens; give one hash per full block")
        private = total - len(hashes)
        if type(hashes) is range:  # exclusive: none is in use, every one takes a block from the free pool
            if self._lru.keys().isdisjoint(hashes):
                return total, 0, hashes, total, False
            return total, self.cached_prefix_tokens(hashes) // bs, hashes, total, True
        ref = self._ref
        if ref.keys().isdisjoint(hashes) and self._lru.keys().isdisjoint(hashes):  # the common case
            return len(set(hashes)) + private, 0, hashes, total, False
        hit = self.cached_prefix_tokens(hashes) // bs
        # Blocks that take memory from the free pool: distinct non-resident hashes + private tail;
        # resident-but-unreferenced hashes leave the evictable pool, so they also reduce what is free.
        fresh = len(set(hashes).difference(ref))  # new blocks, or blocks taken out of the evictable LRU
        return fresh + private, hit, hashes, total, True

    def can_allocate(self, num_tokens: int, block_hashes=None) -> bool:
        """Whether :meth:`allocate` of ``num_tokens`` (with these hashes) would succeed now."""
        return self._plan(num_tokens, block_hashes)[0] <= self.num_free_blocks

    def blocks_needed_to_allocate(self, num_tokens: int, block_hashes=None) -> int:
        """Free blocks :meth:`allocate` would consume (prefix hits on in-use blocks cost nothing)."""
        return self._plan(num_tokens, block_hashes)[0]

    def allocate(self, seq_id, num_tokens: int, block_hashes=None) -> int:
        """Reserve blocks for a new sequence of ``num_tokens`` tokens; return the tokens found cached.

        Raises:
            ConfigError: ``seq_id`` already allocated, or more hashes than full blocks.
            KVCacheOverflowError: not enough free + evictable blocks (nothing is changed).
        """
        hit_tokens = self.allocate_if_free(seq_id, num_tokens, block_hashes)
        if hit_tokens is None:
            need, free = self.blocks_needed_to_allocate(num_tokens, block_hashes), self.num_free_blocks
            raise KVCacheOverflowError(
                f"KV cache overflow: allocating seq {seq_id!r} ({num_tokens} tokens) needs {need} blocks, "
                f"{free} free of {self.num_blocks}; wait for sequences to finish, preempt one, or add capacity")
        return hit_tokens

    def allocate_if_free(self, seq_id, num_tokens: int, block_hashes=None) -> int | None:
        """:meth:`allocate` if the blocks it takes are free (returns the tokens found cached), else None,
        changing nothing: a scheduler's admission check and allocation in one pass over the hashes.

        Raises ConfigError as :meth:`allocate`.
        """
        if seq_id in self._seqs:
            raise ConfigError(f"BlockManager: seq_id {seq_id!r} is already allocated; free it first or use extend()")
        need, hit, hashes, total, resident = self._plan(num_tokens, block_hashes)
        if need > self.num_free_blocks:
            return None
        if type(hashes) is range:
            return self._allocate_exclusive(seq_id, num_tokens, hashes, total, hit, resident)
        new = self._pin_resident(hashes) if resident else hashes
        private = total - len(hashes)
        # One eviction for all fresh blocks: evicting the oldest cached blocks one new block at a time
        # (as blocks are filled) removes the same blocks, since nothing joins the LRU meanwhile.
        fresh = dict.fromkeys(new, 1)
        self._make_room(len(fresh) + private)
        ref = self._ref
        if len(fresh) == len(new):
            ref.update(fresh)
        else:  # a hash repeated within this prompt shares one block
            for h in new:
                ref[h] = ref.get(h, 0) + 1
        self._private += private
        self._seqs[seq_id] = [num_tokens, private, hashes, len(hashes)]
        bs = self.block_size_tokens
        self.prefix_query_tokens += len(hashes) * bs
        self.prefix_hit_tokens += hit * bs
        return hit * bs

    def _allocate_exclusive(self, seq_id, num_tokens: int, hashes: range, total: int, hit: int,
                            resident: bool) -> int:
        """:meth:`allocate_if_free` with exclusive hashes (the caller checked the free blocks): the cached
        ones among them leave the cache, the others and the private tail are filled fresh."""
        lru = self._lru
        fresh = total
        if resident:  # pinned (in use) before room is made, so that eviction cannot take them
            cached = lru.keys()  # (a dict view: a C-level ``in``)
            revived = [h for h in hashes if h in cached]
            lru.discard(revived)
            self._private += len(revived)
            fresh -= len(revived)
        self._make_room(fresh)
        self._private += fresh
        self._seqs[seq_id] = [num_tokens, total - len(hashes), hashes, len(hashes)]
        bs = self.block_size_tokens
        self.prefix_query_tokens += len(hashes) * bs
        self.prefix_hit_tokens += hit * bs
        return hit * bs

    def _pin_resident(self, hashes) -> list:
        """Reference the resident blocks among ``hashes`` (taking cached ones out of the LRU) before
        making room, so that eviction cannot take them; return the other hashes (blocks to fill)."""
        ref, lru = self._ref, self._lru.keys()
        new, revived = [], []
        for h in hashes:
            if h in ref:
                ref[h] += 1
            elif h in lru:
                revived.append(h)
                ref[h] = 1
            else:
                new.append(h)
        self._lru.discard(revived)
        return new

    def _make_room(self, n: int) -> None:
        """Ensure ``n`` empty blocks exist by evicting the oldest cached blocks (caller checked capacity)."""
        lru = self._lru
        evict = n - (self.num_blocks - self._private - len(self._ref) - len(lru))
        if evict > 0:
            lru.evict(evict)

    def blocks_needed_to_extend(self, seq_id, n: int = 1) -> int:
        """New blocks :meth:`extend` by ``n`` tokens would take."""
        rec = self._get(seq_id)
        return max(0, -(-(rec[0] + n) // self.block_size_tokens) - rec[1] - rec[3])

    def grow_to(self, seq_id, num_tokens: int) -> bool:
        """Make the sequence hold at least ``num_tokens`` tokens if the blocks that takes are free.

        Returns False, changing nothing, when they are not; this is :meth:`extend` by the missing
        tokens guarded by :meth:`blocks_needed_to_extend` ``<=`` :attr:`num_free_blocks`, in one call
        (schedulers call it for every running sequence at every step).
        """
        try:
            rec = self._seqs[seq_id]
        except KeyError:
            self._get(seq_id)
            raise
        if num_tokens <= rec[0]:
            return True
        need = -(-num_tokens // self.block_size_tokens) - rec[1] - rec[3]
        if need > 0:
            lru = self._lru
            empty = self.num_blocks - self._private - len(self._ref) - len(lru)
            if need > empty:
                if need > empty + len(lru):
                    return False
                self._make_room(need)
            self._private += need
            rec[1] += need
        rec[0] = num_tokens
        return True

    def grow_each_to(self, seq_ids, num_tokens_each) -> bool:
        """:meth:`grow_to` every sequence of ``seq_ids`` to the matching entry of ``num_tokens_each``, all
        or nothing: return False, changing nothing, if the blocks they take together are not free.

        When it succeeds the same blocks end up taken and evicted as by one :meth:`grow_to` per sequence
        in order (each would succeed, since free blocks only shrink, and eviction takes the oldest
        cached blocks while nothing joins the cache in between).
        """
        seqs, bs = self._seqs, self.block_size_tokens
        try:
            recs = [seqs[i] for i in seq_ids]
        except KeyError:
            for i in seq_ids:
                self._get(i)
            raise
        grow, need = [], 0
        for rec, t in zip(recs, num_tokens_each):
            if t > rec[0]:
                k = -(-t // bs) - rec[1] - rec[3]
                if k > 0:
                    need += k
                grow.append((rec, t, k))
        if need > self.num_free_blocks:
            return False
        for rec, t, k in grow:
            if k > 0:
                rec[1] += k
            rec[0] = t
        if need:
            self._make_room(need)
            self._private += need
        return True

    def extend(self, seq_id, num_new_tokens: int = 1) -> None:
        """Grow a sequence by ``num_new_tokens``; takes a block only when crossing a block boundary.

        Raises KVCacheOverflowError (nothing changed) if the new blocks are not free.
        """
        try:
            rec = self._seqs[seq_id]
        except KeyError:
            self._get(seq_id)
            raise
        if num_new_tokens < 0:
            raise ConfigError(f"BlockManager: num_new_tokens must be >= 0, got {num_new_tokens!r}")
        t = rec[0] + num_new_tokens
        need = -(-t // self.block_size_tokens) - rec[1] - rec[3]
        if need > 0:
            empty = self.num_blocks - self._private - len(self._ref) - len(self._lru)
            if need > empty:
                free = empty + len(self._lru)
                if need > free:
                    raise KVCacheOverflowError(
                        f"KV cache overflow: extending seq {seq_id!r} by {num_new_tokens} tokens needs {need} "
                        f"blocks, {free} free of {self.num_blocks}; preempt a sequence or add capacity")
                self._make_room(need)
            self._private += need
            rec[1] += need
        rec[0] = t

    def extend_each(self, seq_ids, num_new_tokens: int) -> list[int]:
        """:meth:`extend` every sequence of ``seq_ids`` by ``num_new_tokens``, in one call; return the
        tokens each now holds (as :meth:`tokens_each`, which an engine checking invariants needs next).

        The same blocks end up taken and evicted as by one :meth:`extend` per sequence (eviction takes
        the oldest cached blocks and nothing joins the cache in between). Raises KVCacheOverflowError,
        changing nothing, if the new blocks are not free together.
        """
        if num_new_tokens < 0:
            raise ConfigError(f"BlockManager: num_new_tokens must be >= 0, got {num_new_tokens!r}")
        seqs, bs = self._seqs, self.block_size_tokens
        recs = [seqs[i] if i in seqs else self._get(i) for i in seq_ids]
        free = self.num_free_blocks
        if len(recs) * -(-num_new_tokens // bs) > free:  # may not fit (a record grows by at most that): check
            need = sum(max(0, -(-(rec[0] + num_new_tokens) // bs) - rec[1] - rec[3]) for rec in recs)
            if need > free:
                raise KVCacheOverflowError(
                    f"KV cache overflow: extending {len(recs)} sequences by {num_new_tokens} tokens needs {need} "
                    f"blocks, {free} free of {self.num_blocks}; preempt a sequence or add capacity")
        need = 0
        held = []
        for rec in recs:
            t = rec[0] + num_new_tokens
            k = -(-t // bs) - rec[1] - rec[3]
            if k > 0:
                rec[1] += k
                need += k
            rec[0] = t
            held.append(t)
        if need:
            self._make_room(need)
            self._private += need
        return held

    def free_slots_of(self, seq_id) -> int:
        """Token slots of the sequence's blocks not yet filled (it grows this much before a new block)."""
        rec = self._get(seq_id)
        return (rec[1] + rec[3]) * self.block_size_tokens - rec[0]

    def free(self, seq_id, block_hashes=None, reused: bool = True) -> None:
        """Release a sequence. Its private blocks become empty; its hashed blocks whose refcount drops to
        zero join the cached LRU (tail blocks first, so a prompt's tail is evicted before its head).

        ``block_hashes``, if given, names the sequence's full blocks beyond those hashed at allocation
        (blocks filled later by :meth:`extend`: later prefill chunks, generated tokens): they are kept as
        cached blocks under those hashes instead of being emptied, so that a later request with the same
        prefix (the next round of a conversation) finds them. Pass one hash per full block from the
        start of the sequence; hashes already resident are not duplicated.

        ``reused=False`` says that no sequence will ever name these blocks again (a finished request's
        own blocks): with exclusive hashes, the blocks join the cache unnamed, taking their place in the
        eviction order as named ones would but costing no dictionary entries.
        """
        try:
            tokens, private, hashes, _ = self._seqs.pop(seq_id)
        except KeyError:
            self._get(seq_id)
            raise
        ref = self._ref
        cached = ()  # the blocks that become cached, in LRU order (the tail's first)
        if block_hashes and private > 0:
            cached = self._kept_private(block_hashes[len(hashes): tokens // self.block_size_tokens], private)
            private -= len(cached)
            self._private -= len(cached)
        self._private -= private
        if type(hashes) is range:  # exclusive: not in _ref, all become cached
            self._private -= len(hashes)
            if not reused:
                self._lru.add_unnamed(len(cached) + len(hashes))
                return
            cached += tuple(hashes[::-1])
        elif hashes:
            counts = list(map(ref.__getitem__, hashes))
            if max(counts) == 1:  # no other holder and no repeat (the common case): all become cached
                for h in hashes:
                    del ref[h]
                cached += hashes[::-1]
            else:
                released = []
                for h in reversed(hashes):
                    c = ref[h] - 1
                    if c:
                        ref[h] = c
                    else:
                        del ref[h]
                        released.append(h)
                cached += tuple(released)
        self._lru.add(cached)

    def _kept_private(self, later, private: int) -> tuple:
        """Hashes, tail first, under which a freed sequence's private blocks stay cached: those of ``later``
        (its full blocks past the hashed prefix) not resident yet, at most ``private`` of them."""
        ref, lru = self._ref, self._lru.keys()
        if type(later) is range:  # exclusive: none is in use
            if lru.isdisjoint(later):  # none resident yet (the common case)
                return tuple(later[::-1][:private])
            return tuple(h for h in reversed(later) if h not in lru)[:private]
        later = tuple(later)
        if ref.keys().isdisjoint(later) and lru.isdisjoint(later):  # none resident yet (the common case)
            keep = tuple(dict.fromkeys(reversed(later)))
        else:
            keep = tuple(dict.fromkeys(h for h in reversed(later) if h not in ref and h not in lru))
        return keep[:private]  # only as many as the sequence's own blocks

    def reset_prefix_cache(self) -> None:
        """Drop every unreferenced cached block (they become empty)."""
        self._lru.clear()

    def __repr__(self) -> str:
        return (f"BlockManager(num_blocks={self.num_blocks}, block_size_tokens={self.block_size_tokens}, "
                f"used={self.num_used_blocks}, cached={self.num_cached_blocks}, seqs={len(self._seqs)})")


class _CachedBlocks:
    """The hashes of unreferenced cached blocks in LRU order, oldest first (a :class:`BlockManager`'s
    evictable pool): ``in``, ``len``, ``keys()`` as a dict's, plus :meth:`add`, :meth:`discard`,
    :meth:`evict`, :meth:`clear`.

    Why not an OrderedDict: blocks join in batches (those a freed sequence leaves) and leave mostly
    oldest first, many at a time (eviction). Keeping each batch as one tuple, with a plain dict from
    hash to batch for membership, roughly halves the per-block cost of an OrderedDict's linked list.
    A block taken out of the middle (a prefix hit pins it again) only leaves the dict; its stale entry
    in its batch is skipped when eviction reaches it, and the batches are rebuilt once stale entries
    outnumber cached blocks by 1024 (so memory stays proportional to the pool).

    Unnamed blocks (:meth:`add_unnamed`: blocks nobody will ask for again) are a batch of ``None`` with
    a count: they are evicted in their turn, a count at a time.
    """

    __slots__ = ("_batch_of", "_batches", "_head", "_stale", "_unnamed")

    def __init__(self):
        self._batch_of: dict = {}  # hash -> its batch: [hashes oldest first, how many still cached]
        self._batches: deque = deque()  # oldest first
        self._head = 0  # entries at the start of the oldest batch already evicted
        self._stale = 0  # entries past the head that are no longer cached here
        self._unnamed = 0  # cached blocks in unnamed batches

    def __len__(self) -> int:
        return len(self._batch_of) + self._unnamed

    def __contains__(self, block_hash) -> bool:
        return block_hash in self._batch_of

    def keys(self):
        return self._batch_of.keys()

    def add(self, hashes: tuple) -> None:
        """Cache these blocks as the newest, in order (distinct hashes, none cached already)."""
        if hashes:
            batch = [hashes, len(hashes)]
            self._batches.append(batch)
            self._batch_of.update(zip(hashes, repeat(batch)))

    def add_unnamed(self, n: int) -> None:
        """Cache ``n`` blocks as the newest, with no hash: they can only be evicted."""
        if n:
            self._batches.append([None, n])
            self._unnamed += n

    def discard(self, hashes) -> None:
        """Take these cached blocks (distinct) out of the pool."""
        pop = self._batch_of.pop
        for h in hashes:
            pop(h)[1] -= 1
        self._stale += len(hashes)
        if self._stale > len(self) + 1024:  # (unnamed blocks count: rebuilding skips them cheaply)
            self._compact()

    def clear(self) -> None:
        self._batch_of.clear()
        self._batches.clear()
        self._head = self._stale = self._unnamed = 0

    def evict(self, n: int) -> None:
        """Drop the ``n`` oldest blocks (all of them if ``n`` >= the pool)."""
        if n >= len(self):
            self.clear()
            return
        batches = self._batches
        while n > 0:
            batch = batches[0]
            if batch[0] is None:  # unnamed: a count
                k = min(n, batch[1])
                batch[1] -= k
                self._unnamed -= k
                n -= k
                if not batch[1]:
                    batches.popleft()
                continue
            cached = batch[1]
            self._evict_from_oldest(batch, n)
            n -= cached - batch[1]
            if self._head == len(batch[0]):  # the oldest batch is used up
                batches.popleft()
                self._head = 0

    def _evict_from_oldest(self, batch: list, n: int) -> None:
        """Evict up to ``n`` blocks of the oldest batch, from the head on; move the head past them."""
        hashes, batch_of, start = batch[0], self._batch_of, self._head
        if batch[1] == len(hashes) - start:  # no stale entry in what is left of it: drop a slice
            end = min(start + n, len(hashes))
            deque(map(batch_of.__delitem__, hashes[start:end]), maxlen=0)  # del each, in C
            batch[1] -= end - start
        else:
            end = start
            while n > 0 and end < len(hashes):
                h = hashes[end]
                end += 1
                if batch_of.get(h) is batch:
                    del batch_of[h]
                    batch[1] -= 1
                    n -= 1
                else:
                    self._stale -= 1
        self._head = end

    def _compact(self) -> None:
        """Rebuild the named batches between unnamed ones as one each, without stale entries (same order)."""
        batch_of, head = self._batch_of, self._head
        runs, order = [], []  # tuples of named hashes and unnamed counts, oldest first
        for batch in self._batches:
            if batch[0] is None:
                if order:
                    runs.append(tuple(order))
                    order = []
                runs.append(batch[1])
            else:
                order.extend(h for h in batch[0][head:] if batch_of.get(h) is batch)
            head = 0
        if order:
            runs.append(tuple(order))
        self.clear()
        for run in runs:
            if type(run) is int:
                self.add_unnamed(run)
            else:
                self.add(run)
