"""Lower bounds and separation families of formulations.mcsf.bounds, against brute force and hand calculations.

The separation lemma (starts of a family at least ``d_i`` apart) is checked on *every* feasible start vector
of small instances, enumerated by the brute force of ``test_mcsf`` (which uses no package code).
"""
import itertools

import numpy as np
import pytest

from formulations.mcsf import Instance, hindsight_optimal, mcsf
from formulations.mcsf.bounds import (_srpt_total_completion, area_lower_bound, latency_lower_bound,
                                      separation_families, separation_lower_bound)

from test_mcsf import _feasible, _random_tiny, brute_force_optimum


def test_bound_is_tight_on_spec_case_a():
    # spec §1(f) case A (optimum 6). Hand: areas 2, 5, 9 -> ceil(2/6), ceil(7/6), ceil(16/6) = 1, 2, 3;
    # a + o sorted = 1, 2, 3; sum of the maxima = 6.
    inst = Instance.from_requests([(0, 1, 1), (0, 1, 2), (0, 1, 3)], 6)
    assert area_lower_bound(inst) == 6
    assert latency_lower_bound(inst) == 6


def test_bound_below_brute_force_optimum():
    rng = np.random.default_rng(23)
    for _ in range(40):
        reqs, M = _random_tiny(rng)
        opt, _ = brute_force_optimum(reqs, M)
        inst = Instance.from_requests(reqs, M)
        assert latency_lower_bound(inst) <= opt <= mcsf(inst).check(), (reqs, M)


def test_separation_family_by_hand():
    # M = 10, s = 1 for all. Big: 2 (o + 1) > 10 -> o >= 5: requests 1 (o=5) and 2 (o=7); d = min(o, 1+1+2o-10):
    # min(5, 2) = 2 and min(7, 6) = 6. Request 0 (o=2) is not big.
    inst = Instance.from_requests([(0, 1, 2), (0, 1, 5), (0, 1, 7)], 10)
    (members, d), = separation_families(inst)
    assert members.tolist() == [1, 2] and d.tolist() == [2, 6]
    # hand: the family on one machine, SPT: d=2 starts at 0, d=6 at 2 -> starts sum 2, latency 5 + 7 + 2 = 14;
    # request 0 alone: area bound 2. Total 16, and the brute force finds 16 (0 and o=5 at 0, o=7 at 2: at
    # round 2, 3 + 3 = 6; at 5, 6 + 4 = 10 <= 10).
    assert separation_lower_bound(inst) == 16
    assert brute_force_optimum([(0, 1, 2), (0, 1, 5), (0, 1, 7)], 10)[0] == 16


def test_srpt_by_hand():
    # releases 0, 1, 2 with processing 4, 1, 1: 0 runs 0-1, 1 runs 1-2 (C=2), 2 runs 2-3 (C=3), 0 resumes to
    # 6 -> 2 + 3 + 6 = 11
    assert _srpt_total_completion(np.array([0, 1, 2]), np.array([4, 1, 1])) == 11
    assert _srpt_total_completion(np.array([0, 0, 0]), np.array([3, 1, 2])) == 1 + 3 + 6  # SPT


def _big_job_instances(rng, count):
    """Tiny instances where most requests are big (2 (o + s) > M), so families exist."""
    for _ in range(count):
        M = int(rng.integers(6, 11))
        reqs = []
        for _ in range(int(rng.integers(2, 5))):
            s = int(rng.integers(0, 3))
            o = int(rng.integers(max(1, M // 2 - s - 1), M - s + 1))
            reqs.append((int(rng.integers(0, 3)), s, o))
        yield reqs, M


def test_separation_holds_on_every_feasible_schedule():
    rng = np.random.default_rng(5)
    checked = 0
    for reqs, M in _big_job_instances(rng, 20):
        inst = Instance.from_requests(reqs, M)
        families = separation_families(inst)
        # every start vector within 12 rounds of the arrivals: a subset of the schedules, the lemma must hold on each
        for starts in itertools.product(*[range(a, a + 13) for a, s, o in reqs]):
            if not _feasible(reqs, M, starts):
                continue
            for members, d in families:
                for (i, di), (j, dj) in itertools.combinations(zip(members, d), 2):
                    first_gap = di if (starts[i], reqs[i][2]) <= (starts[j], reqs[j][2]) else dj
                    assert abs(starts[i] - starts[j]) >= first_gap, (reqs, M, starts, i, j)
                    checked += 1
    assert checked > 1000  # the lemma was exercised, not vacuous


@pytest.mark.parametrize("solver", ["highs", "cp-sat"])
def test_models_with_separation_reach_the_brute_force_optimum(solver):
    rng = np.random.default_rng(11)
    for reqs, M in _big_job_instances(rng, 15):
        opt, _ = brute_force_optimum(reqs, M)
        inst = Instance.from_requests(reqs, M)
        assert separation_lower_bound(inst) <= opt, (reqs, M)
        for separation in (True, False):
            res = hindsight_optimal(inst, time_limit_s=10, threads=1, solver=solver, separation=separation,
                                    aggregate_identical=separation)
            assert res.is_optimal and res.objective == opt, (reqs, M, separation)
