"""LLMServingSim's measured decode-skew correction: bucket keys, a hand-checked corrected step, no change
where there is no skew, the engines' shortcut contract, and malformed skew fits."""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from gpusched.errors import ConfigError, ProfileError
from gpusched.paths import BUNDLED_PROFILES
from gpusched.perf import ProfiledStepTime
from gpusched.profiles import read_lss_skew_fit

PRO = BUNDLED_PROFILES["rtxpro6000"]
LAYERS = 32  # Llama-3.1-8B


@pytest.fixture(scope="module")
def pro():
    return ProfiledStepTime.from_profile_dir("rtxpro6000", model="llama3.1-8b")


@pytest.fixture(scope="module")
def pro_plain():
    return ProfiledStepTime.from_profile_dir("rtxpro6000", model="llama3.1-8b", skew_correction=False)


def _attention_us(pc, kp, nd, kd) -> float:
    at = pd.read_csv(PRO / "tp1" / "attention.csv").set_index(
        ["prefill_chunk", "kv_prefill", "n_decode", "kv_decode"])["time_us"]
    return float(at[(pc, kp, nd, kd)])


def test_the_rtxpro6000_fit_is_read_as_its_meta_yaml_states():
    fit = read_lss_skew_fit(PRO, 1)
    # meta.yaml: skew_fit.per_tp[1].alpha_default 0.0543, bucket_table tp1/skew_fit.csv (3,982 data rows)
    assert fit.alpha_default == 0.0543 and len(fit.alphas) == 3982
    assert fit.source.endswith("tp1/skew_fit.csv")
    assert fit.axes["n"].labels[-2:] == ("n<=256", "n>256")  # from meta.yaml's bucket_axes, not the defaults


@pytest.mark.parametrize("args, key", [
    # (pc, n, skew rate, kv_big, kp): bins of the RTX PRO 6000 meta.yaml, right edges included
    ((0, 128, 439 / 3511, 4096, 0), (0, "n<=128", "sr<=15%", "kvB<=4k", "kp=0")),
    ((16, 3, 1.0, 1025, 513), (16, "n<=4", "sr>70%", "kvB<=4k", "kp<=1k")),
    ((0, 2, 0.05, 1024, 0), (0, "n<=2", "sr<=5%", "kvB<=1k", "kp=0")),
    ((0, 129, 0.0500001, 16385, 1), (0, "n<=256", "sr<=15%", "kvB>16k", "kp<=512")),
    ((2048, 300, -0.5, 20000, 9000), (2048, "n>256", "sr<=5%", "kvB>16k", "kp>8k")),  # rate clipped to 0
    ((32, 64, 1.7, 0, 8192), (32, "n<=64", "sr>70%", "kvB<=1k", "kp<=8k")),  # rate clipped to 1
])
def test_bucket_keys_follow_the_bins(args, key):
    assert read_lss_skew_fit(PRO, 1).key(*args) == key


def test_a_skewed_decode_batch_is_corrected_by_the_alpha_of_its_row(pro, pro_plain):
    """128 decodes: 16 at 4,096 tokens, 16 at 586, 96 at 585. Sum 131,072, mean 1,024 (a grid point), min 585,
    max 4,096 (a grid point): skew rate (1,024 - 585) / (4,096 - 585) = 0.125. Bucket, by hand from the
    meta.yaml bins: pc 0, n<=128, sr<=15%, kvB<=4k, kp=0 -> skew_fit.csv row
    ``0,n<=128,sr<=15%,kvB<=4k,kp=0,0.0311,4``. attention.csv: (0, 0, 128, 1024) = 404.865 us,
    (0, 0, 128, 4096) = 1,461.14 us. Correction per step: 32 layers x 0.0311 x (1,461.14 - 404.865) us
    = 1,051.20488 us on top of the uniform batch at the mean."""
    contexts = [4096] * 16 + [586] * 16 + [585] * 96
    assert sum(contexts) == 128 * 1024
    rows = pd.read_csv(PRO / "tp1" / "skew_fit.csv")
    row = rows[(rows.pc == 0) & (rows.n_label == "n<=128") & (rows.skew_rate_label == "sr<=15%")
               & (rows.kv_big_label == "kvB<=4k") & (rows.kp_label == "kp=0")]
    assert row.alpha.tolist() == [0.0311]
    assert (_attention_us(0, 0, 128, 1024), _attention_us(0, 0, 128, 4096)) == (404.865, 1461.14)
    uniform = pro.step_time_s((), [1024] * 128)
    assert uniform == pro_plain.step_time_s((), contexts)  # without the correction: the mean alone counts
    assert pro.step_time_s((), contexts) - uniform == pytest.approx(1051.20488e-6, rel=1e-9)


def test_a_prefill_chunk_off_the_profiled_grid_takes_alpha_default(pro, pro_plain):
    """A mixed step with a 1,000-token chunk: pc = 1,000 was not profiled (the table's pc are 0, 16, 32, ...,
    2,048), so, as in LLMServingSim, its bucket is absent and alpha_default = 0.0543 (meta.yaml) applies."""
    contexts = [300] * 10 + [3000] * 2
    mean = sum(contexts) / len(contexts)
    grid = pro.grids["attention"]
    gap = grid(1000, 0, 12, 3000) - grid(1000, 0, 12, mean)
    assert gap > 0
    got = pro.step_time_s([1000], contexts) - pro_plain.step_time_s([1000], contexts)
    assert got == pytest.approx(LAYERS * 0.0543 * gap, rel=1e-12)


def test_no_correction_where_there_is_no_skew(pro, pro_plain):
    """Uniform contexts, a single decode, or no decode: the corrected model is the plain one, which sits on the
    measured per-layer tables at grid points (checked entry by entry for 64 decodes at 2,048 tokens)."""
    for args in [((), [2048] * 64), ((), [777]), ([512], []), ([256], [100] * 7, [64]), ([1], [5, 5])]:
        assert pro.step_time_s(*args) == pro_plain.step_time_s(*args)
    dense = pd.read_csv(PRO / "tp1" / "dense.csv").set_index(["layer", "tokens"]).time_us
    per = pd.read_csv(PRO / "tp1" / "per_sequence.csv").set_index(["layer", "sequences"]).time_us
    n = 64
    layer = (2 * dense["layernorm", n] + sum(dense[k, n] for k in ("qkv_proj", "rotary_emb", "o_proj",
             "gate_up_proj", "act_fn", "down_proj")) + _attention_us(0, 0, n, 2048))
    expect_us = (dense["embedding", n] + LAYERS * layer + dense["final_layernorm", n] + per["lm_head", n]
                 + per["sampler", n])
    assert pro.step_time_s((), [2048] * n) == pytest.approx(expect_us * 1e-6, rel=1e-9)


def test_engines_get_no_scalar_shortcut_from_a_skew_corrected_model(pro, pro_plain):
    """Engines price decode-only steps by ``decode_step_time_s(batch, context_sum)`` when a model offers it;
    a corrected model's decode time depends on the spread of the contexts, so it must not offer one."""
    assert getattr(pro, "decode_step_time_s", None) is None and getattr(pro, "decode_run_ends_s", None) is None
    assert pro_plain.decode_step_time_s(128, 131072) == pytest.approx(pro_plain.step_time_s((), [1024] * 128))
    rtx4090 = ProfiledStepTime.from_profile_dir("rtx4090", model="llama3.1-8b")
    assert rtx4090.skew is None  # its meta.yaml says skew_fit.enabled: false (a skew_fit.csv lies beside)
    assert rtx4090.decode_step_time_s(4, 400) == pytest.approx(rtx4090.step_time_s((), [100] * 4))
    assert len(rtx4090.decode_run_ends_s(0.0, 4, 400, 3)) == 3


def test_only_llmservingsim_tables_take_a_skew_correction(pro):
    h100 = ProfiledStepTime.from_profile_dir("h100", model="llama3-8b")
    assert h100.skew is None and h100.decode_step_time_s is not None  # the compiled engine relies on it
    with pytest.raises(ConfigError, match="LLMServingSim-format tables only"):
        replace(h100, skew=pro.skew)


# ------------------------------------------------------------------ malformed skew fits
def _profile(tmp_path, meta_edit=None, csv_edit=None):
    """A copy of the RTX PRO 6000 meta.yaml and skew_fit.csv (all read_lss_skew_fit reads), edited."""
    (tmp_path / "tp1").mkdir(parents=True)
    meta = (PRO / "meta.yaml").read_text()
    (tmp_path / "meta.yaml").write_text(meta_edit(meta) if meta_edit else meta)
    if csv_edit is not False:
        text = (PRO / "tp1" / "skew_fit.csv").read_text()
        (tmp_path / "tp1" / "skew_fit.csv").write_text(csv_edit(text) if csv_edit else text)
    return tmp_path


def _replace_row(text: str, row: int, new: str) -> str:
    lines = text.splitlines()
    lines[row - 1] = new
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("csv_edit, match", [
    (lambda t: _replace_row(t, 2, "0,n<=128,sr<=15%,kvB<=16k,kp=0,nan,4"), "row 2: alpha = nan"),
    (lambda t: _replace_row(t, 3, "0,n<=128,sr<=15%,kvB<=1k,kp=0,abc,4"), "row 3: alpha = 'abc'"),
    (lambda t: _replace_row(t, 4, "0,n<=999,sr<=15%,kvB<=4k,kp=0,0.03,4"), "row 4: n label 'n<=999'"),
    (lambda t: _replace_row(t, 5, "0,n<=128,sr<=15%,kvB<=16k,kp=0,0.03,4"), r"row 5: bucket .* row 2"),
    (lambda t: _replace_row(t, 6, "-16,n<=128,sr<=40%,kvB<=1k,kp=0,0.03,2"), "row 6: pc = -16 is not a token count"),
    (lambda t: t.replace("skew_rate_label", "rate_label", 1), "lacks columns"),
])
def test_a_malformed_skew_table_is_refused_by_row_and_field(tmp_path, csv_edit, match):
    with pytest.raises(ProfileError, match=match):
        read_lss_skew_fit(_profile(tmp_path, csv_edit=csv_edit), 1)


@pytest.mark.parametrize("meta_edit, match", [
    (lambda m: m.replace("  per_tp:\n    1:\n", "  per_tp: [1]\n  unused:\n    1:\n"), "per_tp is a list"),
    (lambda m: m.replace("alpha_default: 0.0543", "alpha_default: .nan"), "alpha_default = nan"),
    (lambda m: m.replace("n_bins: [0, 2, 4,", "n_bins: [0, 4, 2,"), "'n' needs strictly increasing"),
    (lambda m: m.replace("kp_labels: [kp=0, ", "kp_labels: ["), "'kp' needs strictly increasing"),
    (lambda m: m + "  oops: [\n", "not valid YAML"),
])
def test_a_malformed_skew_block_is_refused(tmp_path, meta_edit, match):
    with pytest.raises(ProfileError, match=match):
        read_lss_skew_fit(_profile(tmp_path, meta_edit=meta_edit), 1)


def test_a_missing_bucket_table_names_the_file_and_the_way_out(tmp_path):
    with pytest.raises(ProfileError, match="skew_fit.csv: .* missing.*enabled to false"):
        read_lss_skew_fit(_profile(tmp_path, csv_edit=False), 1)


def test_what_the_meta_yaml_enables_decides(tmp_path):
    disabled = _profile(tmp_path, meta_edit=lambda m: m.replace("skew_fit:\n  enabled: true",
                                                                "skew_fit:\n  enabled: false"))
    assert read_lss_skew_fit(disabled, 1) is None
    assert read_lss_skew_fit(tmp_path / "nowhere", 1) is None  # no meta.yaml: nothing measured
    # enabled, but no entry for this TP: the block's pooled alpha_default (here none -> no correction)
    assert read_lss_skew_fit(_profile(tmp_path / "a"), 4) is None
    pooled = _profile(tmp_path / "b", meta_edit=lambda m: m.replace("skew_fit:\n  enabled: true",
                                                                    "skew_fit:\n  enabled: true\n  alpha_default: 0.07"))
    fit = read_lss_skew_fit(pooled, 4)
    assert fit.alphas == {} and fit.alpha(0, 8, 0.5, 2048, 0) == 0.07


def test_an_inline_bucket_table_is_read_like_the_csv(tmp_path):
    """Older meta.yamls inline the buckets (``alpha_by_bucket``) instead of naming a CSV."""
    inline = "      alpha_by_bucket:\n        pc=0|n<=128|sr<=15%|kvB<=4k|kp=0: 0.25\n"
    root = _profile(tmp_path / "p", csv_edit=False,
                    meta_edit=lambda m: m.replace("      bucket_table: tp1/skew_fit.csv\n", inline, 1))
    fit = read_lss_skew_fit(root, 1)
    assert fit.alphas == {(0, "n<=128", "sr<=15%", "kvB<=4k", "kp=0"): 0.25}
    bad = _profile(tmp_path / "q", csv_edit=False, meta_edit=lambda m: m.replace(
        "      bucket_table: tp1/skew_fit.csv\n", inline.replace("pc=0|", "pc=x|"), 1))
    with pytest.raises(ProfileError, match="pc=<int>"):
        read_lss_skew_fit(bad, 1)
