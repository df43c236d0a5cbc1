"""The composed SageServe-style week: determinism, schema, round trip, and that its rate follows ServeGen's.

The rate checks read the raw ServeGen files with plain pandas here, independently of the module's reader, and
take each request's region and client from the trace itself (``origin_region``, ``tenant``).
"""
import numpy as np
import pandas as pd
import pytest

from gpusched.composed_traces import TIER_SLA_S, SageServeWeek, read_composed
from gpusched.errors import ConfigError, TraceError
from gpusched.paths import traces_dir
from gpusched.workload import load_trace

RATE = 0.3  # requests/s over the week: about 180,000 requests, enough for hourly counts of ~100 per region


@pytest.fixture(scope="module")
def week():
    return SageServeWeek(seed=3, mean_rate_per_s=RATE).trace()


def _source_rates() -> dict[int, np.ndarray]:
    """Client id -> its 2,016 window rates (req/s), read straight from the CSVs."""
    out = {}
    for f in sorted((traces_dir() / "servegen_m_large").glob("chunk-*-trace.csv")):
        out[int(f.name.split("-")[1])] = pd.read_csv(f, header=None)[1].to_numpy(dtype=float)
    return out


def test_same_seed_same_trace_other_seed_other_trace(week):
    again = SageServeWeek(seed=3, mean_rate_per_s=RATE).trace(0, 86_400)  # a new object, a new draw
    pd.testing.assert_frame_equal(again.df, week.window(0, 86_400, rebase=False).df)
    other = SageServeWeek(seed=4, mean_rate_per_s=RATE).trace(0, 86_400)
    assert not other.df.head(100)["arrival_time_s"].equals(week.df.head(100)["arrival_time_s"])


def test_a_window_is_generated_as_in_the_week(week):
    start, end = 2 * 86_400 + 5 * 3600 + 123.0, 2 * 86_400 + 7 * 3600  # not on a window boundary
    alone = SageServeWeek(seed=3, mean_rate_per_s=RATE).trace(start, end)
    pd.testing.assert_frame_equal(alone.df, week.window(start, end, rebase=False).df)


def test_schema(week):
    df = week.df
    assert list(df.columns)[:4] == ["request_id", "arrival_time_s", "prompt_tokens", "output_tokens"]
    assert {"model", "tier", "slo_e2e_s", "origin_region", "region", "region_priority", "tenant", "batch_id",
            "utility"} <= set(df.columns)
    assert df["request_id"].is_unique and df["arrival_time_s"].is_monotonic_increasing
    assert df["arrival_time_s"].between(0, 7 * 86_400, inclusive="left").all()
    assert set(df["model"]) == {"llama-2-70b", "bloom-176b", "llama-3.1-8b", "llama-3.2-3b"}
    assert (df["slo_e2e_s"] == df["tier"].map(TIER_SLA_S)).all()
    assert set(df["region"]) == {"westus", "centralus", "eastus"}
    # priority strings: a permutation of the three regions, the origin first, kept as text ("021")
    assert df["region_priority"].map(lambda s: sorted(s) == ["0", "1", "2"]).all()
    assert (df["region_priority"].str[0].astype(int) == df["origin_region"]).all()
    assert df["region_priority"].str.startswith("0").any()
    iw, niw = df[df["tier"] != "NIW"], df[df["tier"] == "NIW"]
    assert (iw["batch_id"] == -1).all() and (niw["batch_id"] >= 0).all()
    batches = niw.groupby("batch_id")
    assert (batches["arrival_time_s"].nunique() == 1).all() and (batches["tenant"].nunique() == 1).all()
    # the generator's mean batch size is 20 (geometric): a loose 4-sigma band over ~2,500 batches
    assert abs(batches.size().mean() - 20) < 4 * np.sqrt(20 * 19 / batches.ngroups)


def test_tier_shares_and_total_rate(week):
    n = len(week)
    expected = RATE * 7 * 86_400
    assert abs(n - expected) < 6 * np.sqrt(expected) + 0.02 * expected  # Poisson plus batch clumping
    iw = week.df["tier"] != "NIW"
    share_f = (week.df.loc[iw, "tier"] == "IW-F").mean()
    assert abs(share_f - 0.5) < 4 * np.sqrt(0.25 / iw.sum())  # IW-F : IW-N = 36 : 36
    assert abs(iw.mean() - 0.72) < 0.03  # NIW arrives in batches, so its share varies more


def test_lengths_come_from_each_models_table(week):
    sharegpt = load_trace("sharegpt-lengths").df
    pairs = set(zip(sharegpt["prompt_tokens"], sharegpt["output_tokens"]))
    rows = week.df[week.df["model"] == "llama-2-70b"]
    assert all(p in pairs for p in zip(rows["prompt_tokens"], rows["output_tokens"]))


def test_round_trip_through_the_native_csv(week, tmp_path):
    part = week.window(0, 6 * 3600, rebase=False)
    path = part.to_csv(tmp_path / "week.csv")
    back = read_composed(path)
    pd.testing.assert_frame_equal(back.df, part.df)
    plain = load_trace(path)  # the loader alone keeps the priority strings as text
    assert plain.df["region_priority"].tolist() == part.df["region_priority"].tolist()
    (tmp_path / "bad.csv").write_text("request_id,arrival_time_s,prompt_tokens,output_tokens\n1,0.0,5,5\n")
    with pytest.raises(TraceError, match="missing column"):
        read_composed(tmp_path / "bad.csv")


def test_hourly_counts_follow_servegen_per_region(week):
    """Per region: hourly counts of interactive requests against the hourly mean of the region's clients'
    ServeGen rates, shifted by the region's UTC offset (westus -8 h, centralus -6 h, eastus -5 h). Interactive
    requests arrive one by one (Poisson); NIW requests come in batches of ~20, whose clumps would add noise."""
    src = _source_rates()
    df = week.df
    hour = (df["arrival_time_s"] // 3600).astype(int)
    hours = np.arange(7 * 24)
    for region, offset_h in ((0, -8), (1, -6), (2, -5)):
        sel = df["origin_region"] == region
        counts = hour[sel & (df["tier"] != "NIW")].value_counts().reindex(hours, fill_value=0).to_numpy()
        clients = df.loc[sel, "tenant"].unique()
        windows = (np.arange(7 * 24 * 6) + offset_h * 6) % 2016
        rate = sum(src[c][windows] for c in clients).reshape(-1, 6).mean(axis=1)
        r = np.corrcoef(counts, rate)[0, 1]
        assert r > 0.9, (region, r)
        # and not merely any daily cycle: against the source shifted by 12 hours the fit is far worse
        shifted = sum(src[c][(windows + 72) % 2016] for c in clients).reshape(-1, 6).mean(axis=1)
        assert np.corrcoef(counts, shifted)[0, 1] < r - 0.5


def test_bad_parameters_are_refused(tmp_path):
    for kw in ({"days": 0}, {"days": 15}, {"days": "7"}, {"mean_rate_per_s": None}, {"mean_rate_per_s": float("nan")}, {"mean_rate_per_s": -1},
               {"seed": -1}, {"seed": 1.5}, {"source_start_day": 14}, {"models": ()},
               {"models": ("a", "a"), "model_lengths": ("sharegpt-lengths",) * 2},
               {"model_lengths": ("sharegpt-lengths",)}, {"regions": (0, 3), "region_utc_offset_h": (0, 0)},
               {"regions": (0,)}, {"tier_shares": (0.5, 0.5, 0.5)}, {"tier_shares": (-0.1, 0.6, 0.5)},
               {"tier_sla_s": (1.0, 0.0, 5.0)}, {"niw_mean_batch_size": 0.5},
               {"region_utc_offset_h": (-8.0, -6.0, -5.25)}):
        with pytest.raises(ConfigError):
            SageServeWeek(**kw)
    with pytest.raises(ConfigError, match="window"):
        SageServeWeek(days=1).trace(0, 2 * 86_400)
    with pytest.raises(ConfigError, match="not a bundled trace"):
        SageServeWeek(days=0.01, model_lengths=("nope",) * 4).trace()
    with pytest.raises(TraceError, match="no ServeGen"):
        SageServeWeek(source_dir=str(tmp_path)).trace(0, 60)
    (tmp_path / "chunk-1-trace.csv").write_text("0,1.0,1,Gamma,1,1\n600,oops,1,Gamma,1,1\n")
    with pytest.raises(TraceError, match="line 2: field 'rate_rps'"):
        SageServeWeek(source_dir=str(tmp_path), days=0.01).trace()
