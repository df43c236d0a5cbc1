"""AMPD's session workloads: the stand-ins' statistics, the release contract, the CSV round trip, validation."""
import math

import numpy as np
import pandas as pd
import pytest

from formulations.ampd import WORKLOADS, agent_trace, check_sessions, load_sessions, save_sessions, session_prefills
from gpusched.errors import ConfigError, TraceError
from gpusched.workload import Trace


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_means_match_table_1(name):
    """Per-round means of the paper's Table 1 (spec §4.1) within sampling error: with length CV 1 the
    standard error of a mean over n rounds is mean / sqrt(n); 5 standard errors is the tolerance."""
    w = WORKLOADS[name]
    trace = agent_trace(name, rate_per_s=1.0, num_sessions=3000, seed=2)
    pre = session_prefills(trace)
    n = len(pre)
    rounds = pre.groupby("session_id").size()
    # 1 + Geometric with mean m has standard deviation sqrt(m (m - 1)); a constant count has none
    rounds_se = math.sqrt(w.mean_rounds * (w.mean_rounds - 1) / 3000)
    assert abs(rounds.mean() - w.mean_rounds) <= 5 * rounds_se
    assert pre["incr_tokens"].mean() == pytest.approx(w.mean_incr_tokens, rel=5 / math.sqrt(n))
    assert pre["output_tokens"].mean() == pytest.approx(w.mean_output_tokens, rel=5 / math.sqrt(n))
    later = pre.loc[pre["round"] > 0, "think_time_s"]
    assert later.median() == pytest.approx(w.interaction_median_s, rel=0.1)
    assert (pre.loc[pre["round"] == 0, "think_time_s"] == 0).all()
    if w.rounds_dist == "constant":
        assert (rounds == w.mean_rounds).all()


def test_release_contract_and_prefill_tasks():
    """prompt[r] = prompt[r-1] + output[r-1] + incr[r]; every row carries the session's arrival; the prefill
    tasks' history is exactly the previous prompt + output."""
    trace = agent_trace("toolbench", 2.0, 200, seed=5)
    df = trace.df.sort_values(["session_id", "round"])
    pre = session_prefills(trace)
    for sid, g in df.groupby("session_id"):
        p, o = g["prompt_tokens"].to_numpy(), g["output_tokens"].to_numpy()
        t = pre[pre["session_id"] == sid]
        assert (t["hist_tokens"].to_numpy()[1:] == p[:-1] + o[:-1]).all() and t["hist_tokens"].iloc[0] == 0
        assert (t["hist_tokens"] + t["incr_tokens"]).tolist() == p.tolist()
        assert g["arrival_time_s"].nunique() == 1
    assert (pre["incr_tokens"] >= 1).all()


def test_seeded_and_deterministic():
    a, b = agent_trace("gaia", 1.0, 50, seed=3), agent_trace("gaia", 1.0, 50, seed=3)
    pd.testing.assert_frame_equal(a.df, b.df)
    assert not agent_trace("gaia", 1.0, 50, seed=4).df.equals(a.df)
    arrivals = a.df.groupby("session_id")["arrival_time_s"].first().sort_values().to_numpy()
    assert arrivals.mean() / (np.arange(1, 51).mean()) == pytest.approx(1.0, rel=0.5)  # about 1 session/s


def test_context_cap_cuts_whole_tails_and_says_so():
    full = agent_trace("gaia", 1.0, 200, seed=1)
    cut = agent_trace("gaia", 1.0, 200, seed=1, max_context_tokens=131072)
    assert ((cut.df["prompt_tokens"] + cut.df["output_tokens"]) <= 131072).all()
    over = (full.df["prompt_tokens"] + full.df["output_tokens"]) > 131072
    assert cut.meta["rounds_cut"] == int(over.sum()) > 0          # rounds after the first overflow, which overflow too
    assert cut.meta["sessions_cut"] == full.df.loc[over, "session_id"].nunique()
    assert len(cut) == len(full) - cut.meta["rounds_cut"]
    check_sessions(cut)
    with pytest.raises(ConfigError, match="first round"):
        agent_trace("gaia", 1.0, 50, seed=1, max_context_tokens=100)


def test_csv_round_trip(tmp_path):
    trace = agent_trace("dureader", 3.0, 40, seed=9)
    path = save_sessions(trace, tmp_path / "dureader.csv")
    back = load_sessions(path)
    pd.testing.assert_frame_equal(trace.df, back.df)


def test_text_session_ids_round_trip(tmp_path):
    """Text session ids (e.g. SageServe's or BurstGPT's) come back as the same text, rounds as integers."""
    df = pd.DataFrame({"request_id": [0, 1], "arrival_time_s": [0.0, 0.0], "prompt_tokens": [5, 10],
                       "output_tokens": [2, 2], "session_id": ["a", "a"], "round": [0, 1], "think_time_s": [0.0, 1.0]})
    path = Trace(df, name="strings").to_csv(tmp_path / "strings.csv")
    loaded = load_sessions(path).df
    assert loaded["session_id"].tolist() == ["a", "a"]
    assert loaded["round"].tolist() == [0, 1] and loaded["round"].dtype == np.int64


def test_check_sessions_names_the_row():
    good = agent_trace("hotpotqa", 1.0, 3, seed=0).df
    # broken round numbering is refused by the core Trace itself, before check_sessions sees it
    with pytest.raises(TraceError, match=r"request_id=0\): session_id=0 has rounds that are not exactly 0, 1"):
        check_sessions(Trace(good.assign(round=[0, 1, 1, 0, 1, 2, 0, 1, 2]), name="bad"))
    with pytest.raises(TraceError, match="think_time_s"):
        check_sessions(Trace(good.assign(think_time_s=[1.0] + good["think_time_s"].tolist()[1:]), name="bad"))
    with pytest.raises(TraceError, match="prompt_tokens"):
        shrunk = good["prompt_tokens"].tolist()
        shrunk[2] = shrunk[1]
        check_sessions(Trace(good.assign(prompt_tokens=shrunk), name="bad"))
    with pytest.raises(TraceError, match="missing session"):
        check_sessions(Trace(good.drop(columns=["think_time_s"]), name="bad"))
    with pytest.raises(TraceError, match="session_id"):
        check_sessions(Trace(good.assign(session_id=[0, None, 0, 1, 1, 1, 2, 2, 2]), name="bad"))
    with pytest.raises(ConfigError, match="unknown AMPD workload"):
        agent_trace("sharegpt", 1.0, 3)
    with pytest.raises(ConfigError, match="num_sessions"):
        agent_trace("gaia", 1.0, -1)
