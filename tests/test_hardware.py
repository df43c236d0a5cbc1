"""Tests of gpusched.hardware: catalogue contents, alias lookup, validation."""
import dataclasses

import pytest

from gpusched.errors import ConfigError, UnknownNameError
from gpusched.hardware import GPUS, LinkSpec, get_gpu, list_gpus

REQUIRED = ["A100-40GB", "A100-80GB", "H100-80GB", "H200", "L4", "T4", "A10G", "V100-16GB", "RTX-4090",
            "RTX-PRO-6000", "L40S", "A6000", "RTX-3090"]


def test_catalogue_has_required_gpus():
    assert set(REQUIRED) <= set(list_gpus())
    assert list_gpus() == list(GPUS)


@pytest.mark.parametrize("name", list(GPUS))
def test_specs_are_sane(name):
    g = GPUS[name]
    assert g.name == name
    assert 8e9 <= g.memory_bytes <= 200e9
    assert 100e9 <= g.hbm_bandwidth_bytes_per_s <= 10e12
    assert 10e12 <= g.dense_bf16_flops_per_s <= 3e15
    assert g.pcie_bandwidth_bytes_per_s in (16e9, 32e9, 64e9)
    assert g.source


def test_datasheet_values():
    h100 = get_gpu("H100-80GB")
    assert h100.memory_bytes == 80 * 10**9
    assert h100.hbm_bandwidth_bytes_per_s == 3.35e12
    assert h100.dense_bf16_flops_per_s == pytest.approx(989.4e12)  # 1,979 sparse / 2
    assert h100.nvlink_bandwidth_bytes_per_s == 900e9
    assert get_gpu("A100-80GB").hbm_bandwidth_bytes_per_s == 2039e9
    assert get_gpu("RTX-PRO-6000").memory_bytes == 96 * 10**9
    assert get_gpu("L4").nvlink_bandwidth_bytes_per_s is None
    assert get_gpu("T4").nvlink_bandwidth_bytes_per_s is None
    assert "FP16" in get_gpu("T4").source and "FP16" in get_gpu("V100").source


@pytest.mark.parametrize("alias,canonical", [
    ("h100", "H100-80GB"),
    ("H100-SXM", "H100-80GB"),
    ("NVIDIA H100 80GB HBM3", "H100-80GB"),
    ("a100-80g", "A100-80GB"),
    ("A100", "A100-80GB"),       # a bare a100 is the 80 GB part, as Vidur users mean it
    ("A100-40G", "A100-40GB"),
    ("V100", "V100-16GB"),       # Helix's V100 has 16 GB
    ("V100-16G", "V100-16GB"),
    ("L4-24G", "L4"),
    ("T4-16G", "T4"),
    ("Tesla T4", "T4"),
    ("RTX4090", "RTX-4090"),
    ("NVIDIA GeForce RTX 4090", "RTX-4090"),
    ("RTXPRO6000", "RTX-PRO-6000"),
    ("rtx_pro_6000", "RTX-PRO-6000"),
    ("nvidia l40s", "L40S"),
    ("RTX A6000", "A6000"),
    ("h200", "H200"),
])
def test_alias_lookup(alias, canonical):
    assert get_gpu(alias).name == canonical


def test_unknown_gpu_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        get_gpu("B200-9000")
    msg = str(info.value)
    assert "B200-9000" in msg
    for name in REQUIRED:
        assert name in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, ConfigError)


def test_helix_multi_gpu_nodes_are_not_gpus():
    with pytest.raises(UnknownNameError):
        get_gpu("T4x2")


def test_gpuspec_is_frozen_and_validated():
    g = get_gpu("L4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.memory_bytes = 1
    with pytest.raises(ConfigError):
        dataclasses.replace(g, memory_bytes=0)
    with pytest.raises(ConfigError):
        dataclasses.replace(g, memory_bytes=24e9)  # float, not int bytes
    with pytest.raises(ConfigError):
        dataclasses.replace(g, hbm_bandwidth_bytes_per_s=-1.0)
    with pytest.raises(ConfigError):
        dataclasses.replace(g, nvlink_bandwidth_bytes_per_s=0.0)
    with pytest.raises(ConfigError):
        dataclasses.replace(g, name="")
    with pytest.raises(ConfigError):
        dataclasses.replace(g, source="")


def test_linkspec():
    link = LinkSpec(bandwidth_bytes_per_s=1e9, latency_s=1e-3)
    assert link.transfer_time_s(2e9) == pytest.approx(2.001)
    assert LinkSpec(1e9, 0.0).latency_s == 0.0
    with pytest.raises(ConfigError):
        LinkSpec(0.0, 1e-3)
    with pytest.raises(ConfigError):
        LinkSpec(1e9, -1e-3)
    with pytest.raises(ConfigError):
        LinkSpec(float("inf"), 0.0)
    with pytest.raises(ConfigError):
        link.transfer_time_s(-1)


def test_ridge_point():
    g = get_gpu("H100")
    assert g.ridge_flops_per_byte == pytest.approx(989.4e12 / 3.35e12)
