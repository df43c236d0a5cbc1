"""KV capacity arithmetic and BlockManager invariants (hypothesis against a plain reference model)."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusched.errors import ConfigError, DoesNotFitError, KVCacheOverflowError, UnknownNameError
from gpusched.hardware import get_gpu
from gpusched.kvcache import BlockManager, default_activation_reserve_bytes, kv_capacity
from gpusched.llm import get_model

# ---- kv_capacity ---------------------------------------------------------------------------------


def test_kv_capacity_by_hand_llama3_8b_h100():
    m, g = get_model("llama3-8b"), get_gpu("H100-80GB")
    reserve = 1_000_000_000
    cap = kv_capacity(m, g, memory_utilization=0.9, activation_reserve_bytes=reserve, block_size_tokens=16)
    # KV per token: 2 (K,V) x 32 layers x 8 KV heads x 128 head dim x 2 bytes = 131072 bytes
    assert cap.bytes_per_token_per_gpu == 2 * 32 * 8 * 128 * 2 == 131072
    kv_bytes = int(g.memory_bytes * 0.9) - m.weight_bytes() - reserve
    assert cap.kv_bytes == kv_bytes
    assert cap.blocks == kv_bytes // (131072 * 16)
    assert cap.tokens == cap.blocks * 16


def test_tp_splits_weights_and_kv():
    m, g = get_model("llama2-70b"), get_gpu("H100-80GB")
    c4 = kv_capacity(m, g, tp=4, activation_reserve_bytes=0)
    # 8 KV heads over 4 ranks -> 2 heads/GPU: KV/token/GPU = 2 x 80 x 2 x 128 x 2 = 81920 = total / 4
    assert c4.bytes_per_token_per_gpu == m.kv_bytes_per_token() // 4 == 81920
    assert c4.weight_bytes_per_gpu == math.ceil(m.weight_bytes() / 4)
    # TP=16 > 8 KV heads: heads are replicated, a GPU still holds one head
    c16 = kv_capacity(m, g, tp=16, activation_reserve_bytes=0)
    assert c16.bytes_per_token_per_gpu == m.kv_bytes_per_token() // 8
    # PP splits layers
    c22 = kv_capacity(m, g, tp=2, pp=2, activation_reserve_bytes=0)
    assert c22.bytes_per_token_per_gpu == m.kv_bytes_per_token() // 4


def test_default_activation_reserve_is_used_and_documented():
    m = get_model("llama3-8b")
    assert default_activation_reserve_bytes(m) == 8192 * (4 * 4096 + 2 * 14336) * 2
    cap = kv_capacity(m, "H100-80GB")
    assert cap.activation_reserve_bytes == default_activation_reserve_bytes(m)


def test_does_not_fit_message():
    with pytest.raises(DoesNotFitError) as e:
        kv_capacity("llama2-70b", "A100-40GB")
    msg = str(e.value)
    assert "GB" in msg and "TP" in msg and "fp8" in msg
    # the suggested fix works: TP=4 fits
    kv_capacity("llama2-70b", "A100-40GB", tp=4)


def test_bad_args():
    with pytest.raises(ConfigError):
        kv_capacity("llama3-8b", "H100-80GB", tp=0)
    with pytest.raises(ConfigError):
        kv_capacity("llama3-8b", "H100-80GB", memory_utilization=1.5)


# ---- BlockManager: examples -------------------------------------------------------------------


def test_allocate_extend_free():
    bm = BlockManager(10, block_size_tokens=4)
    assert bm.allocate("a", 5) == 0  # 2 blocks
    assert (bm.num_used_blocks, bm.num_free_blocks) == (2, 8)
    assert bm.blocks_needed_to_extend("a", 3) == 0  # 8 tokens still in 2 blocks
    bm.extend("a", 3)
    assert bm.blocks_needed_to_extend("a", 1) == 1
    bm.extend("a")
    assert bm.tokens_of("a") == 9 and bm.num_used_blocks == 3
    assert bm.utilization == pytest.approx(0.3)
    bm.free("a")
    assert (bm.num_used_blocks, bm.num_free_blocks) == (0, 10)


def test_overflow_names_blocks_and_changes_nothing():
    bm = BlockManager(3, block_size_tokens=4)
    bm.allocate("a", 8)
    with pytest.raises(KVCacheOverflowError, match="needs 2 blocks, 1 free"):
        bm.allocate("b", 5)
    assert "b" not in bm and bm.num_used_blocks == 2
    bm.extend("a", 4)
    with pytest.raises(KVCacheOverflowError):
        bm.extend("a", 1)
    assert bm.tokens_of("a") == 12 and bm.num_free_blocks == 0


def test_unknown_and_double_allocate():
    bm = BlockManager(4)
    with pytest.raises(UnknownNameError, match="unknown seq_id 'x'"):
        bm.extend("x")
    with pytest.raises(UnknownNameError):
        bm.free("x")
    with pytest.raises(KeyError):  # UnknownNameError is also a KeyError
        bm.tokens_of("x")
    bm.allocate("a", 1)
    with pytest.raises(ConfigError, match="already allocated"):
        bm.allocate("a", 1)
    with pytest.raises(ConfigError, match="full blocks"):
        bm.allocate("b", 20, block_hashes=[1, 2])  # 20 tokens = 1 full block of 16


def test_prefix_sharing_and_lru():
    bm = BlockManager(6, block_size_tokens=4)
    # a: 10 tokens = 2 full hashed blocks + 1 private
    assert bm.allocate("a", 10, block_hashes=["h1", "h2"]) == 0
    assert bm.num_used_blocks == 3
    # b shares h1, h2 -> 2 cached blocks (8 tokens); needs 1 private block for its tail
    assert bm.allocate("b", 9, block_hashes=["h1", "h2"]) == 8
    assert bm.num_used_blocks == 4
    bm.free("a")
    assert bm.num_used_blocks == 3  # h1, h2 still held by b, plus b's private tail
    bm.free("b")
    assert (bm.num_used_blocks, bm.num_cached_blocks, bm.num_free_blocks) == (0, 2, 6)
    # a hit on cached (unreferenced) blocks revives them
    assert bm.allocate("c", 8, block_hashes=["h1", "h2"]) == 8
    assert bm.num_cached_blocks == 0 and bm.num_used_blocks == 2
    bm.free("c")
    # filling the cache evicts the tail block first (h2), then h1
    bm.allocate("d", 20)  # 5 blocks: 4 empty + evict h2
    assert bm.is_cached("h1") and not bm.is_cached("h2")
    assert bm.allocate("e", 4, block_hashes=["h1"]) == 4  # h1 still reusable
    assert bm.num_free_blocks == 0
    assert bm.prefix_hit_tokens == 8 + 8 + 4


# ---- BlockManager: property test against a reference model -------------------------------------

BS = 4


class Reference:
    """Deliberately naive: recomputes everything from the live sequences."""

    def __init__(self, total):
        self.total = total
        self.seqs = {}  # id -> [tokens, hashes]
        self.lru = []  # unreferenced cached hashes, oldest first

    def live_hashes(self):
        return {h for _, hs in self.seqs.values() for h in hs}

    def used(self):
        private = sum(math.ceil(t / BS) - len(hs) for t, hs in self.seqs.values())
        return private + len(self.live_hashes())

    def need_for_alloc(self, tokens, hashes):
        live = self.live_hashes()
        return math.ceil(tokens / BS) - len(hashes) + len({h for h in hashes if h not in live})

    def evict_until_consistent(self):
        # after a sequence grew, evict the oldest cached blocks until used + cached fits in total
        while self.used() + len(self.lru) > self.total:
            self.lru.pop(0)

    def allocate(self, sid, tokens, hashes):
        live = self.live_hashes()
        hit = 0
        for h in hashes:
            if h in live or h in self.lru:
                hit += 1
            else:
                break
        self.lru = [h for h in self.lru if h not in hashes]
        self.seqs[sid] = [tokens, list(hashes)]
        self.evict_until_consistent()
        return hit * BS

    def extend(self, sid, n):
        t = self.seqs[sid][0]
        self.seqs[sid][0] = t + n
        self.evict_until_consistent()

    def free(self, sid):
        _, hs = self.seqs.pop(sid)
        live = self.live_hashes()
        for h in reversed(hs):
            if h not in live and h not in self.lru:
                self.lru.append(h)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 5), st.integers(0, 40), st.integers(0, 2), st.integers(0, 10)),
        st.tuples(st.just("extend"), st.integers(0, 5), st.integers(0, 9)),
        st.tuples(st.just("free"), st.integers(0, 5)),
        st.tuples(st.just("grow"), st.integers(0, 5), st.integers(-3, 9)),
        st.tuples(st.just("extend_each"), st.integers(0, 5), st.integers(0, 9)),
        st.tuples(st.just("grow_each"), st.integers(0, 5), st.integers(-3, 9)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(total=st.integers(1, 24), ops=ops)
def test_block_manager_matches_reference(total, ops):
    bm, ref = BlockManager(total, block_size_tokens=BS), Reference(total)
    for op in ops:
        kind, sid = op[0], op[1]
        if kind == "alloc":
            _, _, tokens, family, n_hashed = op
            # chained hashes: (family, k) identifies the family's first k+1 blocks
            hashes = [(family, k) for k in range(min(n_hashed, tokens // BS))]
            if sid in ref.seqs:
                with pytest.raises(ConfigError):
                    bm.allocate(sid, tokens, hashes)
                continue
            fits = ref.need_for_alloc(tokens, hashes) <= total - ref.used()
            assert bm.can_allocate(tokens, hashes) == fits
            if fits:
                assert bm.allocate(sid, tokens, hashes) == ref.allocate(sid, tokens, hashes)
            else:
                with pytest.raises(KVCacheOverflowError):
                    bm.allocate(sid, tokens, hashes)
        elif kind == "extend":
            n = op[2]
            if sid not in ref.seqs:
                with pytest.raises(UnknownNameError):
                    bm.extend(sid, n)
                continue
            t = ref.seqs[sid][0]
            need = math.ceil((t + n) / BS) - math.ceil(t / BS)
            assert bm.blocks_needed_to_extend(sid, n) == need
            if need <= total - ref.used():
                bm.extend(sid, n)
                ref.extend(sid, n)
            else:
                with pytest.raises(KVCacheOverflowError):
                    bm.extend(sid, n)
        elif kind == "grow":  # grow_to: extend by the missing tokens if the blocks are free, else nothing
            if sid not in ref.seqs:
                with pytest.raises(UnknownNameError):
                    bm.grow_to(sid, op[2])
                continue
            t = ref.seqs[sid][0]
            target = t + op[2]
            need = max(0, math.ceil(target / BS) - math.ceil(t / BS))
            fits = need <= total - ref.used()
            assert bm.grow_to(sid, target) == fits
            if fits and target > t:
                ref.extend(sid, target - t)
        elif kind == "extend_each":  # all live sequences at once, all or nothing
            n, sids = op[2], sorted(ref.seqs)[: sid + 1]
            need = sum(math.ceil((ref.seqs[s][0] + n) / BS) - math.ceil(ref.seqs[s][0] / BS) for s in sids)
            if need <= total - ref.used():
                bm.extend_each(sids, n)
                for s in sids:
                    ref.extend(s, n)
            else:
                with pytest.raises(KVCacheOverflowError):
                    bm.extend_each(sids, n)
        elif kind == "grow_each":  # grow_each_to: each to its own target (k-th gets op[2] + k more), all or nothing
            sids = sorted(ref.seqs)[: sid + 1]
            targets = [ref.seqs[s][0] + op[2] + k for k, s in enumerate(sids)]
            need = sum(max(0, math.ceil(t / BS) - math.ceil(ref.seqs[s][0] / BS)) for s, t in zip(sids, targets))
            fits = need <= total - ref.used()
            assert bm.grow_each_to(sids, targets) == fits
            if fits:
                for s, t in zip(sids, targets):
                    if t > ref.seqs[s][0]:
                        ref.extend(s, t - ref.seqs[s][0])
        else:
            if sid not in ref.seqs:
                with pytest.raises(UnknownNameError):
                    bm.free(sid)
                continue
            bm.free(sid)
            ref.free(sid)
        # invariants after every operation
        assert bm.num_used_blocks == ref.used()
        assert bm.num_used_blocks + bm.num_free_blocks == total
        assert 0 <= bm.num_used_blocks <= total and bm.num_free_blocks >= 0
        assert bm.num_cached_blocks == len(ref.lru)
        assert all(bm.is_cached(h) for h in ref.lru)
        for sid2, (t, hs) in ref.seqs.items():
            assert bm.tokens_of(sid2) == t and bm.blocks_of(sid2) == math.ceil(t / BS)
            assert bm.free_slots_of(sid2) == math.ceil(t / BS) * BS - t
        live = sorted(ref.seqs)
        assert bm.tokens_each(live) == [ref.seqs[s][0] for s in live]
        assert bm.free_slots_each(live) == [math.ceil(ref.seqs[s][0] / BS) * BS - ref.seqs[s][0] for s in live]
        # refcounts: every live hash is held exactly by the sequences listing it
        counts = {}
        for _, hs in ref.seqs.values():
            for h in hs:
                counts[h] = counts.get(h, 0) + 1
        assert bm._ref == counts


def test_cached_prefix_tokens_probe_has_no_side_effects():
    bm = BlockManager(8, 4)
    bm.allocate("a", 12, block_hashes=[1, 2, 3])
    bm.free("a")  # blocks 1..3 become cached (evictable)
    before = (bm.num_free_blocks, bm.num_cached_blocks, bm.prefix_hit_tokens)
    assert bm.cached_prefix_tokens([1, 2, 9, 3]) == 8  # stops at the first miss: 2 blocks x 4 tokens
    assert bm.cached_prefix_tokens([9, 1]) == 0
    assert (bm.num_free_blocks, bm.num_cached_blocks, bm.prefix_hit_tokens) == before


def test_free_with_hashes_keeps_later_blocks_cached_for_the_next_round():
    # A 2-block prompt hashed [1, 2] grows by 20 tokens to 52 tokens = 3 full blocks + 1 partial (block 16).
    bm = BlockManager(10, 16)
    bm.allocate("r0", 32, block_hashes=[1, 2])
    bm.extend("r0", 20)
    assert bm.num_used_blocks == 4
    bm.free("r0", block_hashes=[1, 2, 3])  # the third full block (generated tokens) gets hash 3
    assert bm.num_used_blocks == 0 and bm.num_cached_blocks == 3  # the partial block is emptied
    # the next round's prompt is the 52-token history + new tokens: 48 tokens found cached
    assert bm.cached_prefix_tokens([1, 2, 3, 4]) == 48
    assert bm.allocate("r1", 70, block_hashes=[1, 2, 3, 4]) == 48
