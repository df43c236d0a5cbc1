"""Instances and clusters: validation, naming, links, fit checks."""
import pytest

from gpusched.cluster import DEFAULT_LINK, Cluster, Instance
from gpusched.errors import ConfigError, DoesNotFitError, UnknownNameError
from gpusched.hardware import GpuSpec, LinkSpec
from gpusched.kvcache import kv_capacity


def test_instance_derives_num_gpus_and_resolves_gpu():
    i = Instance("H100-80GB", tp=2, pp=2)
    assert i.num_gpus == 4 and isinstance(i.gpu, GpuSpec)
    assert Instance("H100-80GB", 4, tp=4).num_gpus == 4
    with pytest.raises(ConfigError, match="tp\\*pp"):
        Instance("H100-80GB", 4)
    with pytest.raises(ConfigError, match="role"):
        Instance("H100-80GB", role="both")
    with pytest.raises(ConfigError):
        Instance("H100-80GB", tp=0)
    with pytest.raises(UnknownNameError):
        Instance("no-such-gpu")
    with pytest.raises(AttributeError):  # frozen
        i.tp = 8


def test_cluster_names_links_and_capacity():
    fast = LinkSpec(bandwidth_bytes_per_s=100e9, latency_s=1e-6)
    c = Cluster("llama3-8b",
                [Instance("H100-80GB", role="prefill"), Instance("H100-80GB", role="decode"),
                 Instance("H100-80GB", tp=2, role="decode", name="big")],
                links={("prefill-0", "big"): fast})
    assert c.instance_names == ["prefill-0", "decode-0", "big"]
    assert c.is_disaggregated and c.total_gpus == 4
    assert [i.name for i in c.by_role("decode")] == ["decode-0", "big"]
    assert c.link("big", "prefill-0") == fast  # symmetric
    assert c.link("prefill-0", "decode-0") == DEFAULT_LINK
    with pytest.raises(ConfigError):
        c.link("big", "big")
    with pytest.raises(UnknownNameError):
        c.link("big", "nope")
    cap = c.kv_capacity("big")
    assert cap == kv_capacity("llama3-8b", "H100-80GB", tp=2)
    assert c.kv_capacity(c.instance("big")) is cap


def test_model_that_does_not_fit_raises_naming_instance():
    with pytest.raises(DoesNotFitError, match="instance 'small'.*GB"):
        Cluster("llama2-70b", [Instance("H100-80GB", tp=4), Instance("A100-40GB", name="small")])


def test_disaggregated_needs_both_roles():
    with pytest.raises(ConfigError, match="no 'decode'"):
        Cluster("llama3-8b", [Instance("H100-80GB", role="prefill")])
    with pytest.raises(ConfigError, match="no 'prefill'"):
        Cluster("llama3-8b", [Instance("H100-80GB", role="decode"), Instance("H100-80GB")])


def test_bad_links_and_names():
    with pytest.raises(ConfigError, match="unknown instance.*'ghost'"):
        Cluster("llama3-8b", [Instance("H100-80GB")], links={("colocated-0", "ghost"): DEFAULT_LINK})
    with pytest.raises(ConfigError, match="duplicate"):
        Cluster("llama3-8b", [Instance("H100-80GB", name="a"), Instance("H100-80GB", name="a")])
    with pytest.raises(ConfigError):
        Cluster("llama3-8b", [])
