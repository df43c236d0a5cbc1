"""Replaying measured vLLM runs that do not record their KV block count, and the estimate behind it."""
from __future__ import annotations

import json
import shutil

import pytest

from gpusched.errors import ConfigError, DoesNotFitError, TraceError
from gpusched.paths import resolve_bench, resolve_profile
from gpusched.vllm_memory import estimate_vllm_kv_blocks
from simulators.serving.vllm_replay import read_engine_settings, replay_run

RTX4090_TOTAL_BYTES = 25_250_627_584  # device_total_memory_bytes in the RTX 4090 run's meta.json
RTX4090_RECORDED_BLOCKS = 2588  # kv_cache.num_gpu_blocks of the same run


def test_the_estimate_is_the_hand_computed_one_and_within_5_percent_of_the_recorded_count():
    """Llama-3.1-8B, vLLM 0.19 knobs of the RTX 4090 run (256 sequences, 2,048 batched tokens), by hand:

    parameters: 2 x 128,256 x 4,096 (embeddings, LM head) + 32 x (4,096 x (4,096 + 2 x 1,024 + 4,096)
    + 3 x 4,096 x 14,336 + 2 x 4,096) + 4,096 = 8,030,261,248 -> 16,060,522,496 B in bf16, plus the rotary
    cache 131,072 x 128 x 2 = 33,554,432 B: weights 16,094,076,928 B.
    forward peak: 2,048 x (2 x 4,096 + 3 x 14,336) x 2 = 209,715,200 B; sampler: 256 x 128,256 x 40
    + 2,048 x 4,096 x 2 = 1,330,118,656 B (the larger); non-torch int(0.13 x 2^30) = 139,586,437 B.
    requested int(25,250,627,584 x 0.9) = 22,725,564,825 B; KV 5,161,782,804 B; a block is 2 x 32 x 8 x 128
    x 2 x 16 = 2,097,152 B -> 2,461 blocks.

    The recorded count (2,588) was never used to set a term: it is the independent check.
    """
    estimate = estimate_vllm_kv_blocks("llama3.1-8b", RTX4090_TOTAL_BYTES, 0.9, max_num_batched_tokens=2048,
                                       max_num_seqs=256, vllm_version="0.19.0")
    assert estimate.weight_bytes == 16_094_076_928
    assert (estimate.forward_peak_bytes, estimate.sampler_peak_bytes) == (209_715_200, 1_330_118_656)
    assert estimate.kv_bytes == 5_161_782_804 and estimate.block_bytes == 2_097_152
    assert estimate.num_gpu_blocks == 2461
    assert abs(estimate.num_gpu_blocks / RTX4090_RECORDED_BLOCKS - 1) < 0.05  # measured: -4.9 %
    assert estimate.notes == ()  # vLLM 0.19 does not subtract CUDA-graph memory


def test_the_estimate_moves_the_way_vllm_does():
    base = dict(model="llama3.1-8b", total_memory_bytes=RTX4090_TOTAL_BYTES, max_num_batched_tokens=2048)
    fewer_seqs = estimate_vllm_kv_blocks(**base, max_num_seqs=128).num_gpu_blocks
    more_seqs = estimate_vllm_kv_blocks(**base, max_num_seqs=256).num_gpu_blocks
    assert fewer_seqs > more_seqs  # a smaller profiling batch reserves less for the sampler
    assert estimate_vllm_kv_blocks(**base, gpu_memory_utilization=0.8).num_gpu_blocks < more_seqs
    assert estimate_vllm_kv_blocks(**base, vllm_version="0.21.0").notes  # CUDA-graph memory, not modelled


@pytest.mark.parametrize("bad", [dict(gpu_memory_utilization=0), dict(gpu_memory_utilization=1.5),
                                 dict(max_num_seqs=0), dict(total_memory_bytes=-1), dict(block_size_tokens=2.5),
                                 dict(sampler_bytes_per_logit=float("nan")), dict(non_torch_bytes=-1)])
def test_the_estimate_refuses_bad_knobs(bad):
    with pytest.raises(ConfigError):
        estimate_vllm_kv_blocks(**{"model": "llama3.1-8b", "total_memory_bytes": RTX4090_TOTAL_BYTES, **bad})


def test_a_model_that_leaves_no_room_is_refused():
    with pytest.raises(DoesNotFitError, match="leaves"):
        estimate_vllm_kv_blocks("llama3.1-8b", 16 * 10**9, 0.9)


def test_a_run_with_its_block_count_replays_with_it():
    run = replay_run(resolve_bench("vllm-rtx4090"), resolve_profile("rtx4090"))
    assert run.num_gpu_blocks == RTX4090_RECORDED_BLOCKS and run.estimate is None
    assert run.kv_source.startswith("2,588 KV blocks, recorded by the engine")
    assert "enables no skew correction" in run.step_model_source  # its meta.yaml: skew_fit.enabled false
    assert run.mean_abs_error_pct < 2.0  # measured 1.74 %


def test_a_held_out_run_on_the_rtx4090_replays_with_an_estimated_count():
    """LLMServingSim's second RTX 4090 run (max_num_seqs 128, KV-bound: requests wait for blocks): no block
    count, no device in its meta. Measured: 2,774 blocks estimated, mean absolute error 4.12 % over the table
    (within the issue's 5 % goal; the same replay with the wrong count 2,588 gives 9.5 %)."""
    run = replay_run(resolve_bench("vllm-rtx4090-seqs128"), resolve_profile("rtx4090"))
    assert run.estimate is not None and run.num_gpu_blocks == run.estimate.num_gpu_blocks == 2774
    assert "estimated as vLLM sizes its cache" in run.kv_source and "RTX-4090" in run.kv_source
    assert run.mean_abs_error_pct < 5.0


def test_a_held_out_run_on_an_rtx_pro_6000_replays_within_5_percent():
    """The RTX PRO 6000 run (a GPU this project had never replayed): the profile loads, the block count is
    estimated (35,986: far more than 128 sequences need, so the count does not matter here) and the replay
    runs with the decode-skew correction the profile measured (its meta.yaml enables it). Measured: mean
    absolute error 1.32 % over the table; without the correction 5.33 % (TPOT 1-3 % low, hence TTFT behind
    the 128-sequence cap 7-14 % low). Nothing in the correction was fitted to this run: every alpha is the
    profile's."""
    run = replay_run(resolve_bench("vllm-rtxpro6000"), resolve_profile("rtxpro6000"))
    assert run.num_gpu_blocks == 35986 and "RTX-PRO-6000" in run.kv_source
    assert "measured skew correction" in run.step_model_source and "skew_fit.csv" in run.step_model_source
    halved = replay_run(resolve_bench("vllm-rtxpro6000"), resolve_profile("rtxpro6000"),
                        num_gpu_blocks=run.num_gpu_blocks // 2)
    assert halved.table["simulated"].tolist() == run.table["simulated"].tolist()
    assert run.mean_abs_error_pct < 2.0  # regression guard at the measured 1.32 %
    plain = replay_run(resolve_bench("vllm-rtxpro6000"), resolve_profile("rtxpro6000"), skew_correction=False)
    assert "switched off" in plain.step_model_source
    assert plain.mean_abs_error_pct > 5.0  # measured 5.33 %: the correction is what closes the gap
    tpot = plain.table.set_index(["metric", "stat"])["simulated"]["tpot"]
    assert (run.table.set_index(["metric", "stat"])["simulated"]["tpot"] > tpot).all()  # skew only adds time


def test_missing_settings_take_vllm_defaults_and_say_so():
    settings = read_engine_settings(resolve_bench("vllm-rtxpro6000"))
    assert settings.num_gpu_blocks is None and settings.device_total_memory_bytes is None
    assert settings.block_size == 16 and settings.gpu_memory_utilization == 0.9 and settings.reserve_full_prompt
    assert "gpu_memory_utilization=0.9" in settings.assumed and "block_size=16" in settings.assumed


def _bench_copy(tmp_path, meta: dict):
    bench = tmp_path / "bench"
    (bench / "vllm").mkdir(parents=True)
    shutil.copy(resolve_bench("vllm-rtxpro6000") / "vllm" / "requests.jsonl", bench / "vllm" / "requests.jsonl")
    (bench / "vllm" / "meta.json").write_text(json.dumps(meta))
    return bench


def test_a_run_naming_no_gpu_with_a_profile_naming_none_asks_for_one(tmp_path):
    meta = json.loads((resolve_bench("vllm-rtxpro6000") / "vllm" / "meta.json").read_text())
    bench = _bench_copy(tmp_path, meta)
    profile = tmp_path / "meta-llama" / "Llama-3.1-8B" / "bf16"  # the tables without their meta.yaml
    shutil.copytree(resolve_profile("rtx4090") / "tp1", profile / "tp1")
    with pytest.raises(ConfigError, match="--gpu"):
        replay_run(bench, profile)
    assert replay_run(bench, profile, gpu="RTX-4090").num_gpu_blocks == 2774  # as the held-out 4090 run


@pytest.mark.parametrize("meta, match", [({"engine_kwargs": {"max_num_seqs": 1}}, "model"),
                                         ({"engine_kwargs": {"model": "x", "max_num_seqs": 1}}, "max_num_batched"),
                                         ({"engine_kwargs": {"model": "x", "max_num_seqs": "many",
                                                             "max_num_batched_tokens": 8}}, "'many'"),
                                         ([1, 2], "not a JSON object")])
def test_a_malformed_meta_is_refused_by_field(tmp_path, meta, match):
    with pytest.raises(TraceError, match=match):
        read_engine_settings(_bench_copy(tmp_path, meta))
