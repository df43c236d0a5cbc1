"""AMPD's SLO attainment (per session, per round), scaled thresholds, and the windowed TTFT/ITL averages."""
import math

import pandas as pd
import pytest

from formulations.ampd import PerfModel, Slo, WindowedMean, scaled_slo, session_attainment
from gpusched.errors import ConfigError
from gpusched.perf import RooflineStepTime

SLO = Slo(ttft_s=1.0, itl_s=0.05)


def rounds_table():
    """Two sessions by hand.

    session A: round 0 TTFT 0.5, 11 tokens over 0.3 s (ITL 0.03); round 1 TTFT 0.9, 5 tokens over 0.3 s
        (ITL 0.075) -> per round: ok, misses ITL; per session: ITL (0.3 + 0.3) / (10 + 4) = 0.043, ok.
    session B: round 0 TTFT 1.2 (misses), 1 token (no ITL gap); round 1 unfinished.
    """
    return pd.DataFrame({
        "session_id": ["A", "A", "B", "B"],
        "arrival_time_s": [0.0, 10.0, 1.0, 5.0],
        "first_token_time_s": [0.5, 10.9, 2.2, math.nan],
        "finish_time_s": [0.8, 11.2, 2.2, math.nan],
        "output_tokens": [11, 5, 1, 7],
    })


def test_per_session_by_hand():
    r = session_attainment(rounds_table(), SLO)
    assert (r.per, r.num_units, r.num_attained, r.num_unfinished) == ("session", 2, 1, 1)
    assert r.attainment == 0.5 and r.ttft_attainment == 0.5 and r.itl_attainment == 0.5


def test_per_round_by_hand():
    r = session_attainment(rounds_table(), SLO, per="round")
    # A0 ok; A1 TTFT ok, ITL 0.075 misses; B0 TTFT misses, no ITL gap passes ITL; B1 unfinished misses both
    assert (r.num_units, r.num_attained, r.num_unfinished) == (4, 1, 1)
    assert r.ttft_attainment == 0.5 and r.itl_attainment == 0.5


def test_attainment_bad_inputs():
    with pytest.raises(ConfigError, match="lacks"):
        session_attainment(rounds_table().drop(columns=["finish_time_s"]), SLO)
    with pytest.raises(ConfigError, match="per"):
        session_attainment(rounds_table(), SLO, per="request")
    with pytest.raises(ConfigError, match="empty"):
        session_attainment(rounds_table().iloc[:0], SLO)


def test_scaled_slo_is_factors_times_isolated_steps():
    step = RooflineStepTime("llama3-8b", "h100")
    w = PerfModel.from_step_models({"x": step}, 131072).workers["x"]
    slo = scaled_slo(w, 1500, ttft_factor=5, itl_factor=3)
    assert slo.ttft_s == pytest.approx(5 * step.step_time_s([1500]))
    assert slo.itl_s == pytest.approx(3 * step.step_time_s([], [1500]))
    with pytest.raises(ConfigError, match="prompt_tokens"):
        scaled_slo(w, 0)


def test_windowed_mean_by_hand():
    m = WindowedMean(10.0)
    assert m.mean(0.0) == 0.0                         # idle: 0, an idle worker looks eligible
    m.add(1.0, 2.0)
    m.add(5.0, 4.0, weight=3)                         # an ITL sample of a 3-sequence step
    assert m.mean(5.0) == pytest.approx((2 + 12) / 4)
    assert m.mean(11.0) == pytest.approx(4.0)         # the sample at t = 1 left the window (11 - 10 >= 1)
    assert m.mean(15.0) == 0.0 and len(m) == 0
    with pytest.raises(ConfigError, match="time order"):
        m.add(3.0, 1.0)
    with pytest.raises(ConfigError, match="last question"):
        m.mean(12.0)                                  # the window at 12 s was already expired at 15 s
    with pytest.raises(ConfigError, match="weight"):
        m.add(20.0, 1.0, weight=0)
    with pytest.raises(ConfigError, match="window_s"):
        WindowedMean(0)
