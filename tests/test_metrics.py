"""Metrics on a hand-made results table; every expected number is computed by hand in comments."""
import math

import numpy as np
import pandas as pd
import pytest

from gpusched.errors import ConfigError
from gpusched.metrics import (
    goodput_per_s,
    meets_slo,
    request_latencies,
    slo_attainment,
    summary,
    throughput,
    time_between_tokens,
)


@pytest.fixture
def df():
    # id arrival first  finish prompt output scheduled
    # 0   0.0     1.0    3.0    100    5      0.5   ttft 1.0, tpot (3-1)/4 = 0.5,  e2e 3.0, queue 0.5
    # 1   1.0     1.5    1.5    50     1      1.0   ttft 0.5, tpot NaN (1 token),  e2e 0.5, queue 0.0
    # 2   2.0     4.0    9.0    10     11     3.0   ttft 2.0, tpot 5/10 = 0.5,     e2e 7.0, queue 1.0
    # 3   3.0     3.2    NaN    20     4      3.1   unfinished: ttft 0.2, no tpot/e2e, queue 0.1
    return pd.DataFrame({
        "request_id": [0, 1, 2, 3],
        "arrival_time_s": [0.0, 1.0, 2.0, 3.0],
        "first_token_time_s": [1.0, 1.5, 4.0, 3.2],
        "finish_time_s": [3.0, 1.5, 9.0, np.nan],
        "prompt_tokens": [100, 50, 10, 20],
        "output_tokens": [5, 1, 11, 4],
        "scheduled_time_s": [0.5, 1.0, 3.0, 3.1],
    })


def test_request_latencies(df):
    lat = request_latencies(df)
    np.testing.assert_allclose(lat["ttft_s"], [1.0, 0.5, 2.0, 0.2])
    np.testing.assert_allclose(lat["tpot_s"], [0.5, np.nan, 0.5, np.nan])
    np.testing.assert_allclose(lat["e2e_s"], [3.0, 0.5, 7.0, np.nan])
    np.testing.assert_allclose(lat["queueing_s"], [0.5, 0.0, 1.0, 0.1])
    assert lat["finished"].tolist() == [True, True, True, False]
    assert "ttft_s" not in df.columns  # input untouched


def test_queueing_only_when_scheduled_known(df):
    assert "queueing_s" not in request_latencies(df.drop(columns="scheduled_time_s")).columns


def test_time_between_tokens():
    np.testing.assert_allclose(time_between_tokens([0.0, 0.1, 0.3, 0.6]), [0.1, 0.2, 0.3])
    # per-request lists: no gap across requests (5.0 - 0.3 must not appear)
    np.testing.assert_allclose(time_between_tokens([[0.0, 0.3], [5.0, 5.1, 5.3]]), [0.3, 0.1, 0.2])
    with pytest.raises(ConfigError):
        time_between_tokens([0.0, 0.2, 0.1])


def test_slo_attainment_joint(df):
    # TTFT <= 1.0 : requests 0, 1 (and 3, but unfinished). TPOT <= 0.5: 0, 1 (no tpot), 2.
    a = slo_attainment(df, ttft_slo_s=1.0, tpot_slo_s=0.5)
    assert (a.num_requests, a.num_attained, a.num_unfinished) == (4, 2, 1)
    assert a.attainment == pytest.approx(0.5)
    assert a.ttft_attainment == pytest.approx(2 / 4)
    assert a.tpot_attainment == pytest.approx(3 / 4)
    # tighter TPOT: 0.4 fails requests 0 and 2; request 1 has no TPOT and passes
    assert slo_attainment(df, ttft_slo_s=1.0, tpot_slo_s=0.4).num_attained == 1
    # TTFT only
    assert math.isnan(slo_attainment(df, ttft_slo_s=2.0).tpot_attainment)
    assert slo_attainment(df, ttft_slo_s=2.0).num_attained == 3


def test_per_request_slo_overrides(df):
    d = df.assign(slo_ttft_s=[0.5, np.nan, 2.0, np.nan])  # req 0 now fails, req 2 now passes
    assert meets_slo(d, ttft_slo_s=1.0).tolist() == [False, True, True, False]


def test_no_slo_raises(df):
    with pytest.raises(ConfigError):
        slo_attainment(df)


def test_goodput_and_throughput(df):
    # makespan = last finish 9.0 - first arrival 0.0
    assert goodput_per_s(df, ttft_slo_s=1.0, tpot_slo_s=0.5) == pytest.approx(2 / 9)
    assert goodput_per_s(df, ttft_slo_s=1.0, duration_s=4.0) == pytest.approx(2 / 4)
    t = throughput(df)
    assert t.makespan_s == pytest.approx(9.0)
    assert (t.num_finished, t.num_unfinished) == (3, 1)
    assert t.requests_per_s == pytest.approx(3 / 9)
    assert t.output_tokens_per_s == pytest.approx((5 + 1 + 11) / 9)
    assert t.total_tokens_per_s == pytest.approx((5 + 1 + 11 + 100 + 50 + 10) / 9)


def test_summary(df):
    s = summary(df, percentiles=(50, 90))
    assert list(s.columns) == ["count", "missing", "mean", "p50", "p90"]
    assert list(s.index) == ["ttft_s", "tpot_s", "e2e_s", "queueing_s"]
    assert s.attrs == {"num_requests": 4, "num_unfinished": 1}
    # ttft values 1.0, 0.5, 2.0, 0.2: mean 0.925; sorted 0.2 0.5 1.0 2.0 -> p50 0.75, p90 = 1.0 + 0.7 * 1.0
    assert s.loc["ttft_s", "mean"] == pytest.approx(0.925)
    assert s.loc["ttft_s", "p50"] == pytest.approx(0.75)
    assert s.loc["ttft_s", "p90"] == pytest.approx(1.7)
    # e2e: 3.0, 0.5, 7.0 (one unfinished) -> mean 3.5, median 3.0
    assert (s.loc["e2e_s", "count"], s.loc["e2e_s", "missing"]) == (3, 1)
    assert s.loc["e2e_s", "mean"] == pytest.approx(3.5)
    assert s.loc["e2e_s", "p50"] == pytest.approx(3.0)
    assert (s.loc["tpot_s", "count"], s.loc["tpot_s", "missing"]) == (2, 2)


def test_bad_tables(df):
    with pytest.raises(ConfigError, match="output_tokens"):
        request_latencies(df.drop(columns="output_tokens"))
    with pytest.raises(ConfigError, match="ordered"):
        request_latencies(df.assign(first_token_time_s=[1.0, 0.5, 4.0, 3.2]))  # req 1 first < arrival
    with pytest.raises(ConfigError):
        request_latencies(df.assign(output_tokens=[5, 0, 11, 4]))
