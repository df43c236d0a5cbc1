"""The overload check of a run (simulators.serving.results.overload_report), on hand-made request tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpusched import metrics
from simulators.serving.results import overload_report


def _requests(arrival, scheduled, first, finish):
    frame = pd.DataFrame({"request_id": range(len(arrival)), "arrival_time_s": arrival, "scheduled_time_s": scheduled,
                          "first_token_time_s": first, "finish_time_s": finish, "prompt_tokens": 100,
                          "output_tokens": 11, "instance": 0, "num_preemptions": 0, "cached_tokens": 0})
    frame["status"] = np.where(np.isnan(frame["finish_time_s"]), "unfinished", "finished")
    return metrics.request_latencies(frame)


def test_a_served_run_is_not_overloaded():
    t = np.arange(100.0)  # one request a second, each scheduled at once, 0.1 s to first token, 1 s to serve
    report = overload_report(_requests(t, t, t + 0.1, t + 1.1))
    assert not report.overloaded and report.message() == "not overloaded"
    assert (report.waiting_mid, report.waiting_end) == (0, 0)


def test_a_growing_backlog_is_reported():
    """100 arrivals in 0..99 s, served one per 2 s from t = 0: request i starts at 2 i. At the last arrival
    (t = 99) starts 0..49 have happened: 50 wait; at t = 49.5, 50 arrived, 25 started: 25 wait."""
    t = np.arange(100.0)
    start = 2 * t
    report = overload_report(_requests(t, start, start + 0.1, start + 1.0))
    assert (report.waiting_mid, report.waiting_end) == (25, 50)
    assert report.overloaded and "50 requests were waiting when the last one arrived" in report.message()


def test_ttft_many_times_the_service_time_is_reported():
    t = np.zeros(5)  # all at 0, each waits 100 s for 1 s of service: TTFT 100x the service after it
    report = overload_report(_requests(t, 100 + t, 100 + t, 101 + t))
    assert report.median_ttft_s == 100 and report.median_service_s == 1
    assert report.overloaded and "100x the median service time" in report.reasons[0]


def test_unfinished_requests_are_reported():
    t = np.arange(3.0)
    report = overload_report(_requests(t, t, t + 0.1, [1.0, 2.0, np.nan]))
    assert report.unfinished == 1 and "1 request(s) did not finish" in report.message()
