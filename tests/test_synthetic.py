"""Synthetic generators: determinism, statistical rates, session contract."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from gpusched.errors import ConfigError
from gpusched.synthetic import (agent_sessions, gamma_arrivals, lognormal_lengths, poisson_arrivals,
                                sample_lengths, synthetic_trace)


def test_poisson_rate_and_determinism():
    t = poisson_arrivals(50.0, duration_s=200.0, seed=1)
    assert np.all(np.diff(t) >= 0) and t.max() < 200.0
    # 10,000 expected; sd 100 -> 5 sd band
    assert abs(len(t) - 10_000) < 500
    np.testing.assert_array_equal(t, poisson_arrivals(50.0, duration_s=200.0, seed=1))
    assert not np.array_equal(t[:100], poisson_arrivals(50.0, duration_s=200.0, seed=2)[:100])
    assert len(poisson_arrivals(3.0, n=17, seed=0)) == 17
    with pytest.raises(ConfigError):
        poisson_arrivals(1.0, n=5, duration_s=5.0)
    with pytest.raises(ConfigError):
        poisson_arrivals(-1.0, n=5)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_rate_and_cv(cv):
    t = gamma_arrivals(20.0, cv, n=40_000, seed=3)
    gaps = np.diff(np.concatenate([[0.0], t]))
    assert abs(gaps.mean() * 20.0 - 1) < 0.05
    assert abs(gaps.std() / gaps.mean() - cv) < 0.1 * cv


def test_lengths_paired_from_table():
    table = pd.DataFrame({"prompt_tokens": [10, 20, 30], "output_tokens": [1, 2, 3]})
    s = sample_lengths(500, seed=0, table=table)
    assert np.all(s["prompt_tokens"] == 10 * s["output_tokens"])
    s2 = sample_lengths(1000, seed=0, prompt_tokens=(5, 9), output_tokens=lognormal_lengths(100, 0.5))
    assert s2["prompt_tokens"].between(5, 9).all() and (s2["output_tokens"] >= 1).all()
    assert abs(s2["output_tokens"].mean() - 100) < 10


def test_synthetic_trace_determinism_and_bundled_table():
    a = synthetic_trace(5.0, n=300, table="sharegpt-lengths", seed=7, model="m")
    b = synthetic_trace(5.0, n=300, table="sharegpt-lengths", seed=7, model="m")
    pd.testing.assert_frame_equal(a.df, b.df)
    assert (a.df["model"] == "m").all() and len(a) == 300
    c = synthetic_trace(5.0, duration_s=100.0, arrival="gamma", cv=2.0, prompt_tokens=100, output_tokens=10)
    assert c.df["arrival_time_s"].max() < 100.0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.integers(1, 50), st.integers(1, 20), st.integers(0, 10**6))
def test_agent_sessions_history(num_sessions, rounds, new, out, seed):
    tr = agent_sessions(num_sessions, rounds, think_time_s=2.0, new_tokens_per_round=(1, new),
                        output_tokens=(1, out), seed=seed)
    df = tr.df
    assert len(df) == num_sessions * rounds
    for _, s in df.groupby("session_id", sort=False):
        assert s["round"].tolist() == list(range(rounds))  # rounds stay in order after the stable sort
        assert s["arrival_time_s"].nunique() == 1 and s["think_time_s"].iloc[0] == 0.0
        p, o = s["prompt_tokens"].to_numpy(), s["output_tokens"].to_numpy()
        assert np.all(p[1:] > p[:-1] + o[:-1])  # history plus >= 1 new token
        assert np.all(p[1:] - p[:-1] - o[:-1] <= new)


def test_agent_sessions_determinism_and_ranges():
    a = agent_sessions(50, (1, 4), 1.0, 20, 30, seed=3, first_prompt_tokens=500, think_time="constant")
    pd.testing.assert_frame_equal(a.df, agent_sessions(50, (1, 4), 1.0, 20, 30, seed=3, first_prompt_tokens=500,
                                                       think_time="constant").df)
    r0 = a.df[a.df["round"] == 0]
    assert (r0["prompt_tokens"] == 500).all()
    r1 = a.df[a.df["round"] == 1]
    assert (r1["prompt_tokens"] == 550).all() and (r1["think_time_s"] == 1.0).all()
    assert a.df["round"].max() <= 3
