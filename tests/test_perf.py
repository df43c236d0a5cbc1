"""Step-time models: roofline arithmetic, table interpolation, monotonicity, the H100 whole-step check,
the LLMServingSim format, and input validation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpusched.errors import ConfigError, ProfileError
from gpusched.perf import (ProfiledStepTime, RooflineStepTime, StepTimeModel, compare_to_steps, mape)
from gpusched.profiles import Grid1D, Grid2D, monotone_envelope

from gpusched.paths import BUNDLED_PROFILES, PROFILES_DIR

SHARED = PROFILES_DIR  # bundled copies of ../shared/profiles
H100 = SHARED / "h100"
if not (H100 / "ops_linear.csv").is_file():
    H100 = Path(__file__).resolve().parents[1] / "gpusched/data/profiles/h100"
LSS = BUNDLED_PROFILES["rtx4090"]
if not LSS.is_dir():
    LSS = Path(__file__).resolve().parents[1] / "gpusched/data/profiles/llmservingsim/profiler/perf/RTX4090/meta-llama/Llama-3.1-8B/bf16"


@dataclass(frozen=True)
class TinyModel:
    name: str = "tiny"
    num_layers: int = 2
    hidden_size: int = 8
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 4
    ffn_size: int = 16
    vocab_size: int = 32
    ffn_gated: bool = True


@dataclass(frozen=True)
class TinyGpu:
    name: str = "tiny-gpu"
    hbm_bandwidth_bytes_per_s: float = 1000.0
    dense_bf16_flops_per_s: float = 1000.0
    nvlink_bandwidth_bytes_per_s: float | None = 200.0
    pcie_bandwidth_bytes_per_s: float = 10.0


@pytest.fixture(scope="module")
def h100_8b():
    return ProfiledStepTime.from_profile_dir(H100, model="llama3-8b", tp=1)


def test_roofline_hand_computed_decode():
    # One decode at context 3, tiny model, efficiencies 1, no LM head.
    m = RooflineStepTime(TinyModel(), TinyGpu(), flops_efficiency=1.0, bandwidth_efficiency=1.0,
                         include_lm_head=False)
    # GEMM bytes 2 (K N + n K + n N), n = 1: qkv (8x16) 2*(128+8+16)=304, o (8x8) 2*(64+8+8)=160,
    # gate_up (8x32) 2*(256+8+32)=592, down (16x8) 2*(128+16+8)=304  -> 1360 B (FLOPs 2*n*K*N <= 512)
    # attention: bytes (3+1) keys x K,V 2*1*4*2=16 -> 64 B, + 2 x q (2*4*2=16) -> 96 B, i.e. 0.096 s;
    #            FLOPs 4 * head_dim 4 * heads 2 * keys 4 = 128 -> 0.128 s (compute-bound here)
    # elementwise: norms 2x(2*8*2)=64, adds 2x(3*8*2)=96, silu 2*16*2=64, mul 3*16*2=96,
    #              K,V writes 2x(2*4*2)=32, out relayout 2*8*2=32 -> 384 B
    per_layer = (1360 + 384) / 1000.0 + 0.128
    assert m.step_time_s((), [3]) == pytest.approx(2 * per_layer)


def test_roofline_prefill_flops_and_lm_head():
    m = RooflineStepTime(TinyModel(), TinyGpu(), flops_efficiency=1.0, bandwidth_efficiency=1.0)
    base = RooflineStepTime(TinyModel(), TinyGpu(), flops_efficiency=1.0, bandwidth_efficiency=1.0,
                            include_lm_head=False)
    # LM head for one sampled sequence: max(2*1*8*32=512 FLOP/1000, 2*(256+8+32)=592 B/1000) = 0.592 s
    assert m.step_time_s([4]) - base.step_time_s([4]) == pytest.approx(0.592)
    # prefill attention FLOPs: 4 * head_dim * heads * c (p + c/2) = 4*4*2*4*(0+2) = 256
    assert 4 * 4 * 2 * 4 * 2 == 256


def test_roofline_tp_adds_allreduce():
    one = RooflineStepTime(TinyModel(), TinyGpu(), tp=2, include_lm_head=False)
    no_comm = one.layers_only()
    # 2 ring all-reduces per layer of n*h*2 bytes: 2*(tp-1)/tp * 16 B / (200/2 B/s) + latency each
    expect = 2 * 2 * (5e-6 + 2 * 0.5 * 16 / 100.0)
    assert one.step_time_s([1]) - no_comm.step_time_s([1]) == pytest.approx(expect)


def test_grid_interpolation_exact_at_grid_points():
    raw = pd.read_csv(H100 / "ops_linear.csv")
    raw = raw[(raw.model == "llama3-8b") & (raw.tp == 1)]
    g = Grid1D(raw.tokens, raw.qkv_ms * 1e-3)
    for n, t in zip(raw.tokens, raw.qkv_ms):
        assert g(n) == pytest.approx(t * 1e-3, rel=1e-12)
    dec = pd.read_csv(H100 / "ops_attn_decode.csv")
    dec = dec[(dec.model == "llama3-8b") & (dec.tp == 1)]
    p = dec.pivot(index="batch", columns="context", values="attn_ms")
    g2 = Grid2D(p.index, p.columns, p.to_numpy() * 1e-3)
    for r in dec.itertuples():
        assert g2(r.batch, r.context) == pytest.approx(r.attn_ms * 1e-3, rel=1e-12)


def test_profiled_unsmoothed_reproduces_table(h100_8b):
    raw = ProfiledStepTime.from_profile_dir(H100, model="llama3-8b", smooth=False)
    lin = pd.read_csv(H100 / "ops_linear.csv").query("model == 'llama3-8b' and tp == 1")
    for r in lin.itertuples():
        assert raw.grids["gate_up"](r.tokens) == pytest.approx(r.gate_up_ms * 1e-3, rel=1e-12)
    # the smoothed grid is the monotone lower envelope of the same entries
    env = monotone_envelope(lin.gate_up_ms.to_numpy() * 1e-3)
    assert np.allclose([h100_8b.grids["gate_up"](n) for n in lin.tokens], env)


@pytest.mark.parametrize("name", ["h100", "roofline", "lss"])
def test_monotone_in_tokens_and_context(name, h100_8b):
    if name == "h100":
        m = h100_8b
    elif name == "roofline":
        m = RooflineStepTime("llama3-8b", "h100")
    else:
        m = ProfiledStepTime.from_profile_dir(LSS, model="meta-llama/Llama-3.1-8B")
    assert isinstance(m, StepTimeModel)
    lens = [1, 7, 16, 100, 128, 300, 512, 1000, 2048, 3000, 5000, 9000, 20000]
    t = [m.step_time_s([n]) for n in lens]
    assert all(b >= a for a, b in zip(t, t[1:])), t
    for b in (1, 3, 16, 100, 256, 300):
        t = [m.step_time_s((), [c] * b) for c in (0, 10, 256, 700, 1024, 5000, 8192, 12000)]
        assert all(y >= x for x, y in zip(t, t[1:])), (b, t)
    t = [m.step_time_s((), [1000] * b) for b in (1, 2, 5, 16, 64, 200, 256, 400)]
    assert all(y >= x for x, y in zip(t, t[1:])), t
    t = [m.step_time_s([256], [], [c]) for c in (0, 100, 512, 3000, 8192, 40000)]
    assert all(y >= x for x, y in zip(t, t[1:])), t


def test_h100_e2e_mape_below_10pct(h100_8b):
    """Held-out check: the e2e whole-step tables are never read when building the model (all parameters
    come from the op tables, the model catalogue and stated priors), so their error is a fair test."""
    step = compare_to_steps(h100_8b, H100 / "e2e_step_llama3-8b.csv")
    chunked = compare_to_steps(h100_8b, H100 / "e2e_chunked_llama3-8b.csv")
    assert len(step) == 53 and len(chunked) == 13
    assert set(step.kind) == {"prefill", "decode", "mixed"} and set(chunked.kind) == {"chunked"}
    assert mape(step) < 10.0
    assert mape(chunked) < 10.0
    assert {"kind", "measured_s", "predicted_s", "error_pct"} <= set(step.columns)


def test_lss_format_loads_and_matches_grid_point():
    m = ProfiledStepTime.from_profile_dir(LSS, model="meta-llama/Llama-3.1-8B")
    assert m.fmt == "llmservingsim"
    # also from the tp1 child and from the model directory
    assert ProfiledStepTime.from_profile_dir(LSS / "tp1", model="llama3-8b").fmt == "llmservingsim"
    assert ProfiledStepTime.from_profile_dir(LSS.parent, model="llama3-8b").fmt == "llmservingsim"
    dense = pd.read_csv(LSS / "tp1/dense.csv").set_index(["layer", "tokens"]).time_us * 1e-6
    per = pd.read_csv(LSS / "tp1/per_sequence.csv").set_index(["layer", "sequences"]).time_us * 1e-6
    att = pd.read_csv(LSS / "tp1/attention.csv").set_index(
        ["prefill_chunk", "kv_prefill", "n_decode", "kv_decode"]).time_us * 1e-6
    n, b, ctx = 32, 32, 1024  # 32 decodes at context 1024: every term sits on a grid point
    layer = (2 * dense["layernorm", n] + sum(dense[k, n] for k in ("qkv_proj", "rotary_emb", "o_proj",
             "gate_up_proj", "act_fn", "down_proj")) + att[0, 0, b, ctx])
    expect = (dense["embedding", n] + m.model.num_layers * layer + dense["final_layernorm", n]
              + per["lm_head", b] + per["sampler", b])
    got = m.step_time_s((), [ctx] * b)
    assert got > 0 and got == pytest.approx(expect, rel=1e-9)
    # num_sampled overrides the default (every prefill chunk samples)
    assert m.step_time_s([512], [], num_sampled=0) < m.step_time_s([512])


def test_bad_inputs_raise(h100_8b):
    with pytest.raises(ConfigError, match="-5"):
        h100_8b.step_time_s([-5])
    with pytest.raises(ConfigError, match="-1"):
        h100_8b.step_time_s((), [10, -1])
    with pytest.raises(ConfigError):
        h100_8b.step_time_s([10, 20], (), [0])
    with pytest.raises(ConfigError):
        RooflineStepTime("llama3-8b", "h100").step_time_s([4], [], [-3])
    with pytest.raises(ProfileError, match="available"):
        ProfiledStepTime.from_profile_dir(H100, model="llama-30b", tp=8)
    with pytest.raises(ProfileError, match="available"):
        ProfiledStepTime.from_profile_dir(LSS, model="llama3-8b", tp=2)
    with pytest.raises(ConfigError):
        RooflineStepTime("llama3-8b", "h100", flops_efficiency=1.5)
    assert h100_8b.step_time_s() == 0.0


# ------------------------------------------------------------------ LLMServingSim attention grids
def _measured(name: str):
    """The attention grid of a bundled LLMServingSim profile as read, and its measured points (seconds)."""
    from gpusched.profiles import read_lss_tables

    tables = read_lss_tables(BUNDLED_PROFILES[name], 1)
    raw = pd.read_csv(BUNDLED_PROFILES[name] / "tp1" / "attention.csv")
    axes = (tables.pc, tables.kp, tables.nd, tables.kd)
    index = tuple(np.searchsorted(a, raw[c].to_numpy(float)) for a, c in zip(axes, raw.columns[:4]))
    return tables, raw, index


@pytest.mark.parametrize("name", ["rtx4090", "rtxpro6000"])
def test_attention_grid_is_completed_and_keeps_every_measured_point(name):
    tables, raw, index = _measured(name)
    assert not np.isnan(tables.att_s).any()
    assert np.array_equal(tables.att_s[index], raw["time_us"].to_numpy(float) * 1e-6)


def test_a_merged_grid_hole_is_the_interpolation_of_its_nearest_bracketing_points():
    """The RTX PRO 6000 profile merges a x2 grid and a x1.5 grid; chunk 24 was measured only at cached 0 and
    >= 512, so (24, 16, 1, 16) is a hole. Along the chunk axis it lies halfway between the measured chunks 16
    and 32 (a narrower bracket than cached 0..512), so it is their mean, read here from the CSV itself."""
    tables, raw, _ = _measured("rtxpro6000")
    at = raw.set_index(["prefill_chunk", "kv_prefill", "n_decode", "kv_decode"])["time_us"]
    assert (24, 16, 1, 16) not in at.index
    expected = 0.5 * (at[(16, 16, 1, 16)] + at[(32, 16, 1, 16)]) * 1e-6
    i, k, l, m = (int(np.searchsorted(a, v)) for a, v in zip((tables.pc, tables.kp, tables.nd, tables.kd),
                                                             (24, 16, 1, 16)))
    assert tables.att_s[i, k, l, m] == pytest.approx(expected, rel=1e-12)


def test_the_rtxpro6000_profile_prices_steps():
    model = ProfiledStepTime.from_profile_dir("rtxpro6000", model="llama3.1-8b")
    chunked = model.step_time_s([24], [1000] * 8, [100])  # a chunk of the x1.5 grid over cached context
    assert 0 < model.step_time_s([], [1000] * 8) < chunked < model.step_time_s([2048], [1000] * 8)


@pytest.mark.parametrize("model", ["mistral-7b", "llama2-70b", "llama2-7b"])
def test_an_lss_profile_refuses_a_model_of_another_shape(model):
    with pytest.raises(ProfileError, match=f"covers only models of its shape .*{model} differs"):
        ProfiledStepTime.from_profile_dir("rtx4090", model=model)
    ProfiledStepTime.from_profile_dir("rtx4090", model="llama3-8b")  # same layers as Llama-3.1-8B: allowed
