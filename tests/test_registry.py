"""The policy registry (gpusched.registry): names, plugins, errors."""
import pytest

from gpusched import registry
from gpusched.errors import ConfigError, UnknownNameError


def test_baselines_and_paper_policies_are_found_through_the_entry_points():
    schedulers = registry.names("scheduler")
    assert {"vllm-v1", "vllm-v0", "sarathi", "static", "mc-sf", "mc-benchmark"} <= set(schedulers)
    assert {"round-robin", "random", "least-outstanding-tokens", "kv-aware"} <= set(registry.names("router"))


def test_a_typo_names_the_closest_choice():
    with pytest.raises(UnknownNameError, match="did you mean 'mc-sf'"):
        registry.get("scheduler", "mcsf")


def test_bad_knobs_are_named():
    with pytest.raises(ConfigError, match="no_such_knob"):
        registry.build("scheduler", "vllm-v1", no_such_knob=3)


def test_mc_benchmark_is_mc_sf_on_a_fifo_queue():
    policy = registry.build("scheduler", "mc-benchmark")
    assert policy.fcfs and policy.name == "mc-benchmark"
    assert not registry.build("scheduler", "mc-sf").fcfs


def test_the_router_gets_the_run_seed():
    a = registry.build("router", "random", registry.BuildContext(seed=7))
    assert a.seed == 7


def test_a_taken_name_is_refused_for_another_factory_and_kept_for_the_same():
    def factory(context, **knobs):
        return object()

    entry = registry.register("scheduler", "test-only-policy", factory, "a test entry")
    assert registry.register("scheduler", "test-only-policy", factory, "again").factory is entry.factory
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("scheduler", "test-only-policy", lambda context: None, "another")
    registry._ENTRIES.pop(("scheduler", "test-only-policy"))


def test_a_policy_may_take_a_knob_called_name():
    def factory(context, name="default"):
        return name

    registry.register("scheduler", "test-named-policy", factory, "a test entry")
    try:
        assert registry.build("scheduler", "test-named-policy", None, name="mine") == "mine"
    finally:
        registry._ENTRIES.pop(("scheduler", "test-named-policy"))
