"""Fast paths of the simulator against the plain code they replace (same results, bit for bit)."""
from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np

from gpusched.kvcache import BlockManager, _CachedBlocks
from gpusched.profiles import Grid2D


def test_cached_blocks_follow_an_lru_ordered_dict():
    """Batches in (named, or unnamed: counted only), prefix hits out of the middle, bulk eviction, clears:
    same blocks as an OrderedDict LRU after every operation (including the rebuild once stale entries pile
    up). Unnamed blocks are negative keys of the reference, which the pool does not list."""
    rng = random.Random(7)
    pool, ref = _CachedBlocks(), OrderedDict()
    next_hash = 0
    for _ in range(20000):
        op = rng.random()
        if op < 0.08:
            k = rng.randint(0, 12)
            pool.add_unnamed(k)
            ref.update(dict.fromkeys(range(-next_hash - 1, -next_hash - 1 - k, -1)))
            next_hash += k
        elif op < 0.4:
            k = rng.randint(0, 12)
            back = tuple(h for h in rng.sample(range(next_hash), min(3, next_hash)) if h not in ref)
            fresh = tuple(range(next_hash, next_hash + k))
            next_hash += k
            batch = fresh + back  # newly cached blocks and blocks that were cached before
            pool.add(batch)
            ref.update(dict.fromkeys(batch))
        elif op < 0.7 and any(h >= 0 for h in ref):
            h = rng.choice([h for h in ref if h >= 0])
            pool.discard((h,))
            del ref[h]
        elif op < 0.995:
            n = rng.randint(1, 30)
            pool.evict(n)
            for _ in range(min(n, len(ref))):
                ref.popitem(last=False)
        else:
            pool.clear()
            ref.clear()
        assert len(pool) == len(ref)
        assert set(pool.keys()) == {h for h in ref if h >= 0}
    pool.add_unnamed(50)  # kept in place through the rebuild below
    ref.update(dict.fromkeys(range(-next_hash - 1, -next_hash - 51, -1)))
    for h in range(next_hash, next_hash + 3000, 10):  # prefix hits of most blocks: the batches are rebuilt
        pool.add(tuple(range(h, h + 10)))
        ref.update(dict.fromkeys(range(h, h + 10)))
    hits = rng.sample(range(next_hash, next_hash + 3000), 2500)
    for k in range(0, len(hits), 5):
        pool.discard(hits[k:k + 5])
        for h in hits[k:k + 5]:
            del ref[h]
    assert len(pool._batches) < 300
    order = []
    while len(pool):  # the eviction order itself (an unnamed block leaves no name: -1)
        before = set(pool.keys())
        pool.evict(1)
        order.extend(before - set(pool.keys()) or [-1])
    assert order == [max(h, -1) for h in ref]


def test_grid2d_along_b_equals_calls_bit_for_bit():
    """Along b, with segments reused while v stays in them, held below and extrapolated above the grid."""
    rng = np.random.default_rng(3)
    a, b = [1.0, 2.0, 4.0, 8.0], [256.0, 1024.0, 2048.0, 4096.0]
    grid = Grid2D(a, b, np.cumsum(rng.random((4, 4)), axis=1) * 1e-4)
    for u in (0.5, 1, 3, 8, 11):
        rising = [c / 7 for c in range(0, 40000, 7 * 37)]  # mean contexts of a decode run, across the grid
        scattered = list(rng.uniform(0, 6000, 200))
        for vs in (rising, scattered, [1024.0, 1024.0, 4096.0, 5000.0]):
            assert grid.along_b(u, vs) == [grid(u, v) for v in vs]


def test_allocate_if_free_is_allocate_or_nothing():
    """Admission in one call: what allocate does when the blocks are free, else None and no change."""
    bm = BlockManager(6, block_size_tokens=4)
    assert bm.allocate_if_free("a", 8, block_hashes=["h1", "h2"]) == 0
    bm.free("a")  # h1, h2 cached
    before = (bm.num_used_blocks, bm.num_cached_blocks, bm.prefix_query_tokens)
    assert bm.allocate_if_free("b", 28, block_hashes=["h1", "h2"]) is None  # 7 blocks > 6
    assert (bm.num_used_blocks, bm.num_cached_blocks, bm.prefix_query_tokens) == before
    assert bm.allocate_if_free("b", 12, block_hashes=["h1", "h2"]) == 8  # the cached prefix is a hit
    assert (bm.num_used_blocks, bm.num_cached_blocks) == (3, 0)


def _trace(rows):
    """rows: (arrival_s, prompt_tokens, output_tokens)."""
    import pandas as pd

    from gpusched.workload import Trace

    df = pd.DataFrame(rows, columns=["arrival_time_s", "prompt_tokens", "output_tokens"])
    df.insert(0, "request_id", range(len(df)))
    return Trace(df, name="speed-paths")


def _h100_instance(scheduler, blocks=3000):
    from gpusched.perf import ProfiledStepTime
    from simulators.serving import InstanceConfig

    return [InstanceConfig(ProfiledStepTime.from_profile_dir("h100", model="llama3-8b"), blocks, 16, scheduler)]


def test_a_run_ending_in_a_finish_hands_on_to_the_next_run_without_the_scheduler():
    """Once everything is admitted and decoding, each run ends when a sequence finishes and the next run
    starts without the scheduler (its ``stable_decode_runs`` promise): it is not called again until all
    are done, and per-request results equal step mode's."""
    import pandas as pd

    from simulators.serving.schedulers import VllmV1Scheduler
    from simulators.serving import simulate

    class Counting(VllmV1Scheduler):
        calls = 0

        def schedule(self, waiting, running, kv, now_s):
            Counting.calls += 1
            return super().schedule(waiting, running, kv, now_s)

    trace = _trace([(0.0, 100, out) for out in (5, 20, 40, 41, 90, 90)])
    fast = simulate(trace, _h100_instance(Counting()), mode="fast")
    assert Counting.calls == 3  # idle before the arrivals, the prefill step, idle once all have finished
    runs = fast.timeline["steps"].to_numpy()
    # one run, a row per finish: the prefill step (step 0, every prompt completed) gives each its first
    # token; outputs 5, 20, 40, 41, 90, 90 end after steps 4, 19, 39, 40 and 89 (a long segment is priced a
    # chunk at a time, still one row)
    assert list(runs) == [5, 15, 20, 1, 49]
    slow = simulate(trace, _h100_instance("vllm-v1"), mode="step")
    pd.testing.assert_frame_equal(fast.requests, slow.requests)


def test_a_decode_plan_out_of_running_order_gives_step_mode_results():
    """A scheduler may list a plan's sequences in any order: fast mode must still equal step mode."""
    import pandas as pd

    from simulators.serving.schedulers import VllmV1Scheduler
    from simulators.serving import simulate

    class NewestFirstWhileWaiting(VllmV1Scheduler):
        """Lists the plan newest first while requests wait (still one token for each decode)."""

        def schedule(self, waiting, running, kv, now_s):
            plan = super().schedule(waiting, running, kv, now_s)
            if waiting:
                plan.entries.reverse()
            return plan

    trace = _trace([(0.0, 100, 30), (0.0, 100, 30), (0.0, 100, 50), (0.5, 50, 10)])
    results = [simulate(trace, _h100_instance(NewestFirstWhileWaiting(max_num_seqs=2)), mode=mode)
               for mode in ("fast", "step")]
    pd.testing.assert_frame_equal(results[0].requests, results[1].requests)
    assert results[0].num_steps == results[1].num_steps


def test_exclusive_range_hashes_keep_the_blocks_of_the_same_hashes_as_tuples():
    """A sequence's own hashes given as a ``range`` (exclusive: kept out of the shared-block table while
    held) against the same hashes as a tuple, through random allocations (with prefix hits on blocks left
    cached), growth and frees that cache the full blocks, some of them for good (``reused=False``: then
    unnamed): same blocks in use, free, cached, the same named ones in the same cache order, same hits,
    after every operation."""
    def own(g, n):  # group g's first n block hashes
        return range(-1000 * g - 1, -1000 * g - 1 - n, -1)

    for seed in range(300):
        rng = random.Random(seed)
        fast, plain = BlockManager(40, 4), BlockManager(40, 4)
        live, dead = {}, set()
        for _ in range(200):
            op = rng.random()
            groups = [x for x in range(12) if x not in live and x not in dead]
            if op < 0.4 and len(live) < 6 and groups:
                g = rng.choice(groups)
                full = rng.randint(0, 30)
                tokens, hashes = full * 4 + rng.randint(0, 3), own(g, rng.randint(0, full))
                assert fast.cached_prefix_tokens(own(g, 40)) == plain.cached_prefix_tokens(tuple(own(g, 40)))
                assert fast.can_allocate(tokens, hashes) == plain.can_allocate(tokens, tuple(hashes))
                hit = fast.allocate_if_free(g, tokens, hashes)
                assert hit == plain.allocate_if_free(g, tokens, tuple(hashes))
                if hit is not None:
                    live[g] = tokens
            elif op < 0.6 and live:
                g, n = rng.choice(list(live)), rng.randint(0, 8)
                assert fast.grow_to(g, live[g] + n) == plain.grow_to(g, live[g] + n)
                live[g] = fast.tokens_of(g)
            elif live:
                g = rng.choice(list(live))
                del live[g]
                reused = rng.random() < 0.7
                if not reused:
                    dead.add(g)
                fast.free(g, own(g, 40), reused=reused)
                plain.free(g, tuple(own(g, 40)))
            for attr in ("num_used_blocks", "num_free_blocks", "num_cached_blocks"):
                assert getattr(fast, attr) == getattr(plain, attr), (seed, attr)
            named = [h for h in plain._lru.keys() if (-h - 1) // 1000 not in dead]
            assert [h for h in fast._lru.keys() if (-h - 1) // 1000 not in dead] == named


def test_mcsf_admits_every_candidate_when_their_peaks_fit_as_admit_prefix_does():
    """MC-SF skips admit_prefix when the running and candidate peaks (S + E) sum within memory: random
    instances against admit_prefix itself."""
    from formulations.mcsf.engine import admit_prefix

    rng = random.Random(5)
    checked = 0
    for _ in range(3000):
        m, k = rng.randint(0, 6), rng.randint(1, 5)
        run_S = [rng.randint(1, 60) for _ in range(m)]
        run_E = [rng.randint(1, 40) for _ in range(m)]
        cand_S = [rng.randint(1, 60) for _ in range(k)]
        cand_K = [rng.randint(1, 40) for _ in range(k)]
        memory = sum(run_S) + sum(run_E) + sum(cand_S) + sum(cand_K) + rng.randint(-30, 30)
        if memory < sum(run_S) + sum(run_E) + sum(cand_S) + sum(cand_K):
            continue
        checked += 1
        assert admit_prefix(0, np.zeros(m, np.int64), np.array(run_S, np.int64), np.array(run_E, np.int64),
                            cand_S, cand_K, memory) == k
    assert checked > 1000


def test_mcsf_keeps_its_queue_order_across_steps_as_sorting_it_every_step_does():
    """MC-SF keeps the waiting queue sorted across steps when its predictions are fixed per request (the
    oracle's, read from ``seq.predicted_output_tokens``); with a callable prediction it sorts every step.
    The same predictions both ways must give the same schedule: on an overloaded instance (a long queue),
    shortest-first and FCFS, with predictions at the truth and at half of it (preemptions then put
    sequences back in the queue)."""
    import pandas as pd

    from formulations.mcsf.policy import McsfScheduler
    from gpusched.workload import load_trace
    from simulators.serving import simulate
    from simulators.serving.routers import RoundRobinRouter

    class Predicting(RoundRobinRouter):
        """Sets each arriving request's predicted output (the oracle's fixed prediction)."""

        def __init__(self, predict):
            super().__init__()
            self.predict = predict

        def route(self, request, instances, now_s):
            request.predicted_output_tokens = self.predict(request)
            return super().route(request, instances, now_s)

    trace = load_trace("azure-conv-2023").head(400).scale_rate(16.0)
    for halved in (False, True):
        def predict(seq, halved=halved):
            return max(seq.output_tokens // 2, 1) if halved else seq.output_tokens

        for fcfs in (False, True):
            kept = simulate(trace, _h100_instance(McsfScheduler(fcfs=fcfs), blocks=900), router=Predicting(predict))
            every_step = simulate(trace, _h100_instance(McsfScheduler(prediction=predict, fcfs=fcfs), blocks=900))
            pd.testing.assert_frame_equal(kept.requests, every_step.requests)
            assert (kept.requests["num_preemptions"].sum() > 0) == halved  # under-estimates run KV short
