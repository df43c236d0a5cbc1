"""Gates, routers and named policies on small hand-made states (spec ``gate_and_route.md`` B5).

Expected answers are worked out by hand in the comments from the rules of spec §2.4, §2.5, §2.7, §2.8.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from gpusched.errors import ConfigError, UnknownNameError
from formulations.gate_and_route import (DECODE_BUFFER, MIXED, POLICIES, SHARED, SOLO, ClusterView, FcfsGate,
                                         GateRoutePolicy, GreedyRouter, ImmediateRouter, OccupancyGate, PriorityGate,
                                         RandomizedRouter, make_policy, paper_instance, solve_fluid, static_plan)


@dataclass
class View:
    """A hand-made cluster state."""

    waiting: list
    prefilling: list
    oldest_waiting_s: list = None
    roles: tuple = ()
    free: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.oldest_waiting_s is None:
            self.oldest_waiting_s = [0.0 if w else math.inf for w in self.waiting]

    @property
    def num_gpus(self):
        return len(self.roles)

    def free_decode_gpus(self, role):
        return self.free.get(role, [])


def test_view_meets_the_protocol():
    assert isinstance(View([1], [0]), ClusterView)


# --------------------------------------------------------------------------- the occupancy gate (B5)
def gate(q_star=(0.0, 0.0), **kw):
    return OccupancyGate(x_star=(0.1, 0.3), q_prefill_star=q_star, num_gpus=10, **kw)


def test_gate_admits_the_class_furthest_below_plan():
    # xi = ((1 - 1)/0.1, (2 - 3)/0.3) = (0, -3.33) -> class index 1
    assert gate().choose(View([5, 5], [1, 2])) == 1
    # xi = ((0 - 1)/0.1, (3 - 3)/0.3) = (-10, 0) -> class 0
    assert gate().choose(View([5, 5], [0, 3])) == 0
    assert gate().deviation(View([5, 5], [0, 3]), 0) == pytest.approx(-10)


def test_gate_breaks_ties_by_excess_queue_then_index():
    # X = (1, 3): xi = (0, 0) (in floats 10 * 0.3 != 3, a 1e-15 difference that must count as a tie)
    # delta = Q - n q*: q* = (0.05, 0.1) -> with Q = (3, 1): (2.5, 0) -> class 0; with Q = (1, 5): (0.5, 4) -> 1
    assert gate((0.05, 0.1)).choose(View([3, 1], [1, 3])) == 0
    assert gate((0.05, 0.1)).choose(View([1, 5], [1, 3])) == 1
    # equal xi and delta -> the lower index
    assert gate((0.0, 0.0)).choose(View([2, 2], [1, 3])) == 0


def test_gate_skips_classes_that_do_not_wait():
    assert gate().choose(View([0, 5], [0, 3])) == 1   # class 0 would win on xi but has nobody waiting
    assert gate().choose(View([0, 0], [0, 0])) is None


def test_unplanned_class_is_never_admitted_by_default():
    g = OccupancyGate(x_star=(0.0, 0.2), q_prefill_star=(1.0, 0.0), num_gpus=10)
    assert g.choose(View([7, 0], [0, 0])) is None     # only the x* = 0 class waits: the slot stays idle
    assert g.choose(View([7, 1], [0, 9])) == 1
    conserving = OccupancyGate(x_star=(0.0, 0.2), q_prefill_star=(1.0, 0.0), num_gpus=10, admit_unplanned=True)
    assert conserving.choose(View([7, 0], [0, 0])) == 0
    assert conserving.choose(View([7, 1], [0, 9])) == 1   # a planned class still goes first


def test_gate_validates():
    with pytest.raises(ConfigError):
        OccupancyGate((0.1, math.nan), (0, 0), 10)
    with pytest.raises(ConfigError):
        OccupancyGate((0.1, 0.2), (0,), 10)
    with pytest.raises(ConfigError):
        OccupancyGate((0.1, 0.2), (0, 0), 0)


# --------------------------------------------------------------------------- other gates
def test_prioritize_and_route_gate_on_the_paper_classes():
    g = PriorityGate.prioritize_and_route(paper_instance())
    assert g.order == (0, 1)                           # D/P = (1000/300, 400/3000) = (3.33, 0.13)
    assert g.choose(View([1, 9], [0, 0])) == 0         # class 0 whenever it waits
    assert g.choose(View([0, 9], [0, 0])) == 1
    assert g.choose(View([0, 0], [0, 0])) is None
    with pytest.raises(ConfigError):
        PriorityGate((0, 0))


def test_fcfs_gate_takes_the_oldest_request():
    assert FcfsGate().choose(View([2, 2], [0, 0], oldest_waiting_s=[5.0, 3.0])) == 1
    assert FcfsGate().choose(View([2, 0], [0, 0], oldest_waiting_s=[5.0, 3.0])) == 0   # class 1 empty
    assert FcfsGate().choose(View([0, 0], [0, 0])) is None


# --------------------------------------------------------------------------- routers (B5)
def test_greedy_router_prefers_solo_then_mixed_then_the_buffer():
    r = GreedyRouter(seed=3)
    both = View([0], [0], roles=(MIXED, MIXED, SOLO, SOLO, SOLO), free={SOLO: [2, 4], MIXED: [0, 1]})
    picks = [r.route(both, 0, 0) for _ in range(4000)]
    assert set(picks) == {2, 4}                         # never a mixed GPU while a solo slot is free
    assert abs(picks.count(2) / 4000 - 0.5) < 0.05      # uniformly at random among the free solo GPUs
    assert r.route(View([0], [0], free={MIXED: [1]}), 0, 0) == 1
    assert r.route(View([0], [0]), 0, 0) == DECODE_BUFFER
    assert r.pull(both, 0) == DECODE_BUFFER


def test_randomized_router_targets_pools_with_p_solo():
    r = RandomizedRouter(p_solo=(0.8, 0.0), seed=1)
    view = View([0, 0], [0, 0], roles=(MIXED, SOLO), free={SOLO: [1], MIXED: [0]})
    picks = [r.route(view, 0, 0) for _ in range(5000)]
    assert abs(picks.count(1) / 5000 - 0.8) < 0.02      # solo with probability p_s,0 = 0.8
    assert all(r.route(view, 1, 0) == 0 for _ in range(100))   # p_s,1 = 0: always the mixed pool
    full = View([0, 0], [0, 0], roles=(MIXED, SOLO))
    assert {r.route(full, 0, 0) for _ in range(200)} == {SOLO, MIXED}   # each pool's own buffer
    assert r.route(full, 1, 0) == MIXED
    assert r.pull(full, 0) == MIXED and r.pull(full, 1) == SOLO
    with pytest.raises(ConfigError):
        RandomizedRouter((1.2,))


def test_immediate_router_keeps_the_prefill_gpu():
    r = ImmediateRouter()
    assert r.route(View([0], [0]), 0, 7) == 7 and r.pull(View([0], [0]), 7) is None


def test_sli_router_probabilities_on_the_paper_instance():
    # spec B5: the proportional split sends g = 0.856164 of every class's decode tokens to the solo pool
    pol = make_policy("sli-gate-and-route", solve_fluid(paper_instance()), 20, seed=0)
    np.testing.assert_allclose(pol.router.p_solo, [0.856164, 0.856164], atol=5e-7)


# --------------------------------------------------------------------------- plans and named policies
def test_static_plan():
    assert static_plan(8 / 15, 15) == (MIXED,) * 8 + (SOLO,) * 7     # spec B1: M = 8 at n = 15
    assert static_plan(0.0, 3) == (SOLO,) * 3
    assert static_plan(1.0, 2) == (MIXED,) * 2


def test_named_policies():
    m = paper_instance()
    bundled, separate = solve_fluid(m), solve_fluid(m, "separate")
    roles = {}
    for name in POLICIES:
        pol = make_policy(name, separate if name == "prioritize-and-route" else bundled, 500, seed=1)
        assert isinstance(pol, GateRoutePolicy) and pol.name == name and pol.num_gpus == 500
        roles[name] = pol.roles
    # spec B3: M = 107 at n = 500 (bundled), M~ = 108 (separate)
    assert roles["gate-and-route"].count(MIXED) == 107 and roles["fg-sp"].count(MIXED) == 107
    assert roles["prioritize-and-route"].count(MIXED) == 108
    assert all(set(roles[n]) == {SHARED} for n in ("gi-wsp", "gf-wsp", "fi-wsp"))
    assert make_policy("gf-wsp", bundled, 4).prefill_first
    assert not make_policy("gate-and-route", bundled, 4).prefill_first
    assert isinstance(make_policy("fi-wsp", None, 4).gate, FcfsGate)


def test_make_policy_errors():
    sol = solve_fluid(paper_instance())
    with pytest.raises(UnknownNameError, match="gate-and-route"):
        make_policy("gate_and_route", sol, 10)
    with pytest.raises(ConfigError, match="fluid solution"):
        make_policy("gate-and-route", None, 10)
    with pytest.raises(ConfigError, match="knobs"):
        make_policy("gate-and-route", sol, 10, colour="red")
    with pytest.raises(ConfigError):
        make_policy("gi-wsp", sol, 0)
    with pytest.raises(ConfigError, match="roles"):
        GateRoutePolicy("x", ("mixed", "hybrid"), FcfsGate(), ImmediateRouter())
