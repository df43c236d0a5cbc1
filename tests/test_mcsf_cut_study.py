"""The candidate inequalities of experiments.mcsf_cut_study cut off no schedule.

Each family is checked on every feasible start vector of small instances (enumerated with the brute force of
``test_mcsf``, which uses no package code), and the bounds after the cutting-plane loops stay at or below the
brute-force optimum.
"""
import itertools

import numpy as np
import pytest

from experiments.mcsf_cut_study import (_separation, conflict_matrix, cutting_planes, q_families, relaxation_bound,
                                        violated_cliques, violated_q_rows)
from formulations.mcsf import Instance
from formulations.mcsf.hindsight import build_hindsight_arrays

from test_mcsf import _feasible, brute_force_optimum
from test_mcsf_bounds import _big_job_instances


def test_q_separation_by_hand():
    # M = 10, prompts 1. q = 1 against a request of output 5: i with o = 7 started at 0 holds 8 at its last
    # round 7; a request started at g <= 1 ends inside i (at g + 5 both hold >= 6: 12 > 10), at 2 <= g <= 5
    # it holds 1 + 7 - g at round 7, so 8 + 8 - g <= 10 needs g >= 6, and g = 6 fits (8 + 2 at round 7).
    assert _separation(1, 7, 1, 5, 1, 10) == 6
    # i with o = 5: g = 0 gives 6 + 6 at round 5; g = 1 gives 6 + 5; g = 2 gives 6, 8, 10 at rounds 3-5.
    assert _separation(1, 5, 1, 5, 1, 10) == 2
    # q = 2, outputs 3, M = 12: three requests (s 1, o 3) at 0, 0, g: at g = 0 round 3 holds 3 x 4 = 12 (fits)
    assert _separation(1, 3, 1, 3, 2, 12) == 0
    # same with M = 11: g = 0 needs 12; g = 1: round 3 holds 4 + 4 + 3 = 11 (fits)
    assert _separation(1, 3, 1, 3, 2, 11) == 1


def _feasible_starts(reqs, M, window=12):
    for starts in itertools.product(*[range(a, a + window + 1) for a, s, o in reqs]):
        if _feasible(reqs, M, starts):
            yield starts


def test_families_hold_on_every_feasible_schedule():
    rng = np.random.default_rng(11)
    checked = 0
    for reqs, M in _big_job_instances(rng, 12):
        inst = Instance.from_requests(reqs, M)
        arrays = build_hindsight_arrays(inst, separation_rows=False)
        conflict = conflict_matrix(inst, arrays)
        column = {(int(i), int(k)): c for c, (i, k) in enumerate(zip(arrays.col_req, arrays.col_start))}
        families = q_families(inst)
        for starts in _feasible_starts(reqs, M, window=8):
            cols = [column[(i, p)] for i, p in enumerate(starts) if (i, p) in column]
            assert not conflict[np.ix_(cols, cols)].any(), (reqs, M, starts)
            for members, e, q in families:
                for t in range(max(starts) + 1):
                    covering = sum(starts[i] <= t < starts[i] + e_i for i, e_i in zip(members, e))
                    assert covering <= q, (reqs, M, starts, members.tolist(), e.tolist(), q, t)
            checked += 1
    assert checked > 500


@pytest.mark.parametrize("seed", range(3))
def test_cut_bounds_below_brute_force_optimum(seed):
    rng = np.random.default_rng(100 + seed)
    for reqs, M in _big_job_instances(rng, 4):
        opt, _ = brute_force_optimum(reqs, M)
        inst = Instance.from_requests(reqs, M)
        arrays = build_hindsight_arrays(inst)
        conflict = conflict_matrix(inst, arrays)
        families = q_families(inst)
        lp = relaxation_bound(arrays)[0]
        cliques, _ = cutting_planes(arrays, lambda x: violated_cliques(x, conflict))
        qsep, _ = cutting_planes(arrays, lambda x: violated_q_rows(x, arrays, families))
        assert lp - 1e-6 <= min(cliques, qsep) + 1e-6  # cuts only raise the LP bound
        assert max(cliques, qsep) <= opt + 1e-6, (reqs, M, opt, cliques, qsep)
