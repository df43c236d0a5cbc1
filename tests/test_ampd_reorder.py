"""AMPD Algorithm 2 (prefill reordering): the spec's T1/T1b, the cap, FCFS at w = 1, and the dequeue loop
against brute force."""
import itertools

import numpy as np
import pytest

from formulations.ampd import PrefillTask, reorder_window, replay_prefill_queue
from gpusched.errors import ConfigError

T_PRE = {"r1": 0.50, "r2": 0.20, "r3": 0.35}


def t1_queue(counter_r1=0):
    return [PrefillTask("r1", 0, 1, 9.20, postponed=counter_r1), PrefillTask("r2", 0, 1, 9.50),
            PrefillTask("r3", 0, 1, 9.90)]


def by_session(task):
    return T_PRE[task.session]


def test_t1_hand_table():
    """Spec T1: the S_π column of the hand table, recomputed here from Eq. (3)-(4) for every ordering, then
    the algorithm's choice (r2, r3, r1), dequeue r2, only r1 postponed."""
    q = t1_queue()
    expected_s = {("r1", "r2", "r3"): 0, ("r1", "r3", "r2"): 1, ("r2", "r1", "r3"): 1,
                  ("r2", "r3", "r1"): 2, ("r3", "r1", "r2"): 1, ("r3", "r2", "r1"): 1}
    for order, s in expected_s.items():
        done, hits = 0.0, 0
        for name in order:
            done += T_PRE[name]
            task = next(t for t in q if t.session == name)
            hits += (10.0 - task.enqueue_time_s) + done <= 1.0
        assert hits == s
    r = reorder_window(q, 10.0, 1.0, by_session, window=3)
    assert [q[p].session for p in r.order] == ["r2", "r3", "r1"]
    assert r.satisfied == 2 and r.orderings_evaluated == 6
    assert r.postponed == (0,)                     # r1: position 0 -> 2; r3 moves up, not postponed
    task, rest = r.apply(q)
    assert task.session == "r2"
    assert [(t.session, t.postponed) for t in rest] == [("r3", 0), ("r1", 1)]


def test_t1b_cap_skips_orderings_that_postpone_a_capped_task():
    """Spec T1b: counter(r1) = w = 3, so only (r1, r2, r3) [S=0] and (r1, r3, r2) [S=1] are allowed."""
    q = t1_queue(counter_r1=3)
    r = reorder_window(q, 10.0, 1.0, by_session, window=3)
    assert [q[p].session for p in r.order] == ["r1", "r3", "r2"]
    assert r.orderings_evaluated == 2 and r.satisfied == 1
    assert r.postponed == (1,)                     # r2: position 1 -> 2
    task, rest = r.apply(q)
    assert task.session == "r1" and [(t.session, t.postponed) for t in rest] == [("r3", 0), ("r2", 1)]


def test_ties_keep_fcfs_and_window_one_is_fcfs():
    """All orderings satisfy everything (generous SLO): the identity is found first and kept. w = 1 never
    reorders."""
    q = t1_queue()
    r = reorder_window(q, 10.0, 100.0, by_session, window=3)
    assert r.order == (0, 1, 2) and r.postponed == ()
    r1 = reorder_window(q, 10.0, 1.0, by_session, window=1)
    assert r1.order == (0,) and r1.orderings_evaluated == 1


def test_window_longer_than_queue_and_tail_untouched():
    q = t1_queue() + [PrefillTask("r4", 0, 1, 9.95)]
    r = reorder_window(q, 10.0, 1.0, lambda t: T_PRE.get(t.session, 0.1), window=3)
    task, rest = r.apply(q)
    assert rest[-1].session == "r4" and len(rest) == 3
    short = reorder_window(q[:2], 10.0, 1.0, by_session, window=5)
    assert len(short.order) == 2


def test_bad_inputs():
    with pytest.raises(ConfigError, match="empty"):
        reorder_window([], 0.0, 1.0, by_session)
    with pytest.raises(ConfigError, match="window"):
        reorder_window(t1_queue(), 10.0, 1.0, by_session, window=0)
    with pytest.raises(ConfigError, match="now_s"):
        reorder_window(t1_queue(), float("nan"), 1.0, by_session)
    with pytest.raises(ConfigError, match="prefill_time_s"):
        reorder_window(t1_queue(), 10.0, 1.0, lambda t: -1.0)
    with pytest.raises(ConfigError, match="not a PrefillTask"):
        reorder_window([("r1", 9.2)], 10.0, 1.0, by_session)
    with pytest.raises(ConfigError, match="incr_tokens"):
        PrefillTask("x", 0, 0)


def random_tasks(rng, n, spread_s):
    return [PrefillTask(i, int(rng.integers(0, 4000)), int(rng.integers(50, 3000)), float(t))
            for i, t in enumerate(np.sort(rng.uniform(0, spread_s, n)))]


def t_pre_toy(task):
    return 0.01 + 1e-4 * task.incr_tokens + 1e-8 * task.incr_tokens * task.hist_tokens


def test_dequeue_loop_with_everything_queued_reaches_the_brute_force_optimum():
    """All tasks queued at t = 0 and w >= n: every dequeue re-optimises over the rest, and the continuation
    of the previous best order never postpones anything new, so the served order meets as many TTFTs as
    the best of all n! orders (checked by enumerating them here)."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(2, 6))
        tasks = [PrefillTask(i, 0, int(rng.integers(50, 3000)), 0.0) for i in range(n)]
        slo = float(rng.uniform(0.1, 0.6))
        best = 0
        for order in itertools.permutations(tasks):
            done = np.cumsum([t_pre_toy(t) for t in order])
            best = max(best, int((done <= slo).sum()))
        served = replay_prefill_queue(tasks, t_pre_toy, slo, window=n)
        assert int(served["meets_ttft"].sum()) == best


def test_dequeue_loop_invariants_and_fcfs_at_window_one():
    """Every task is served once; no counter passes the cap; w = 1 serves in enqueue order (T4's FCFS
    bullet, on the single-worker loop)."""
    rng = np.random.default_rng(3)
    for w in (1, 2, 3, 4):
        tasks = random_tasks(rng, 40, 2.0)
        served = replay_prefill_queue(tasks, t_pre_toy, 0.4, window=w)
        assert sorted(served["position"]) == list(range(40))
        assert served["postponed"].max() <= w
        assert (served["start_s"].diff().dropna() > 0).all()
        assert (served["start_s"] >= served["enqueue_time_s"]).all()
        if w == 1:
            assert served["position"].tolist() == list(range(40))
            assert served["postponed"].max() == 0


def test_reordering_helps_on_a_queue_built_for_it():
    """A long task ahead of two short ones, all queued at 0, SLO 0.25 s. By hand: FCFS finishes them at 0.5,
    0.6, 0.7 s (none meets); (b, c, a) finishes at 0.1, 0.2, 0.7 s (two meet)."""
    t = {"a": 0.5, "b": 0.1, "c": 0.1}
    tasks = [PrefillTask(s, 0, 1, 0.0) for s in "abc"]
    fcfs = replay_prefill_queue(tasks, lambda x: t[x.session], 0.25, window=1)
    amp = replay_prefill_queue(tasks, lambda x: t[x.session], 0.25, window=3)
    assert fcfs["meets_ttft"].sum() == 0
    assert amp["meets_ttft"].sum() == 2 and amp["session"].tolist() == ["b", "c", "a"]
