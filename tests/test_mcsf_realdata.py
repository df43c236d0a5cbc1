"""The real-data variant of MC-SF and MC-Benchmark (``simulate_real``) against a direct transcription.

The reference below is written from the spec's description of the authors' real-data simulation
(``shared/papers/mcsf.md`` §1(c) "Real-data variant" and §1(g).1), independently of the package: a float clock,
each candidate tried in turn, the future-memory check evaluated at projected completion *times*
``now + remaining * avg_batch_s`` with ``input + min(o + 1, processed + floor((t' - now) / avg_batch_s))`` tokens.
The package instead checks in iteration units with a vectorised bisection (``admit_prefix``); the claim tested
here is that both give the same batches, hence the same start and finish times, for any average batch time.
"""
from __future__ import annotations

import numpy as np
import pytest

from formulations.mcsf import simulate_real


def _fits(members, s, o, processed, now, avg_batch_s, memory):
    """The spec's check: memory at every projected completion time of ``members`` at most ``memory``."""
    end = {r: now + (o[r] + 1 - processed[r]) * avg_batch_s for r in members}
    for t_prime in sorted(set(end.values())):
        load = 0
        for r in members:
            if end[r] >= t_prime - 1e-9:  # still running at t'
                steps = int((t_prime - now) / avg_batch_s + 1e-9)  # the slack absorbs float rounding only
                load += s[r] + min(o[r] + 1, processed[r] + steps)
        if load > memory:
            return False
    return True


def reference_run(arrival, s, o, memory, priority, avg_batch_s):
    """Finish and start times (s) of the real-data MC rule with waiting prompts tried in ``priority`` order."""
    n = len(arrival)
    processed = [0] * n  # iterations done; the prompt iteration counts, a request needs o + 1
    start, finish = [None] * n, [None] * n
    by_arrival = sorted(range(n), key=lambda i: (arrival[i], i))
    waiting, running = [], []
    now, nxt = 0.0, 0
    while any(f is None for f in finish):
        while nxt < n and arrival[by_arrival[nxt]] <= now:
            waiting.append(by_arrival[nxt])
            nxt += 1
        if not running and not waiting:
            now = arrival[by_arrival[nxt]]
            continue
        added = []
        for i in sorted(waiting, key=priority):
            if not _fits(running + added + [i], s, o, processed, now, avg_batch_s, memory):
                break  # stop at the first failure (spec §1(g).3)
            added.append(i)
        for i in added:
            waiting.remove(i)
            start[i] = now
        jobs = len(running) + len(added)
        context = sum(processed[r] for r in running)  # a prompt job has context 0
        prompt = sum(s[i] for i in added)
        now += ((0.0027 * (context / jobs) + 0.52) * jobs + 44.6 + 0.378 * prompt) / 1000  # spec §1(d), ms -> s
        running += added
        for r in running:
            processed[r] += 1
            if processed[r] == o[r] + 1:
                finish[r] = now
        running = [r for r in running if finish[r] is None]
    return np.array(start), np.array(finish)


def _stream(seed, n=70):
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.05, size=n))  # 20 requests/s: the worker saturates
    s = rng.integers(1, 80, size=n)
    o = rng.integers(1, 150, size=n)
    return arrival, s, o


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("policy", ["mcsf", "mc-benchmark"])
@pytest.mark.parametrize("avg_batch_s", [0.047, 0.1])
def test_real_variant_equals_the_spec_transcription(seed, policy, avg_batch_s):
    arrival, s, o = _stream(seed)
    memory = 1500  # tight: most batches stop at a failed check
    if policy == "mcsf":
        priority = lambda i: (o[i], i)  # oracle predictions, ties by id  # noqa: E731
    else:
        priority = lambda i: (arrival[i], i)  # noqa: E731
    ref_start, ref_finish = reference_run(arrival, s, o, memory, priority, avg_batch_s)
    run = simulate_real(arrival, s, o, policy, memory_tokens=memory)
    assert run.df.finish_time_s.tolist() == ref_finish.tolist()  # same batches, same float sums
    assert run.df.start_time_s.tolist() == ref_start.tolist()
    assert run.peak_memory_tokens <= memory


def test_the_check_binds_in_these_streams():
    # guard against a vacuous comparison: with M = 1500 the MC rules must differ from admitting everyone
    arrival, s, o = _stream(0)
    tight = simulate_real(arrival, s, o, "mc-benchmark", memory_tokens=1500)
    loose = simulate_real(arrival, s, o, "mc-benchmark", memory_tokens=10**6)
    assert tight.average_latency_s > loose.average_latency_s
