"""The combinatorial lower bound of formulations.mcsf.bounds never exceeds the brute-force optimum."""
import numpy as np

from formulations.mcsf import Instance, mcsf
from formulations.mcsf.bounds import latency_lower_bound

from test_mcsf import _random_tiny, brute_force_optimum


def test_bound_is_tight_on_spec_case_a():
    # spec §1(f) case A (optimum 6). Hand: areas 2, 5, 9 -> ceil(2/6), ceil(7/6), ceil(16/6) = 1, 2, 3;
    # a + o sorted = 1, 2, 3; sum of the maxima = 6.
    inst = Instance.from_requests([(0, 1, 1), (0, 1, 2), (0, 1, 3)], 6)
    assert latency_lower_bound(inst) == 6


def test_bound_below_brute_force_optimum():
    rng = np.random.default_rng(23)
    for _ in range(40):
        reqs, M = _random_tiny(rng)
        opt, _ = brute_force_optimum(reqs, M)
        inst = Instance.from_requests(reqs, M)
        assert latency_lower_bound(inst) <= opt <= mcsf(inst).check(), (reqs, M)
