"""The head-to-head experiment: the common 1x load, scheduler knobs, metrics and deadline attainment, skips."""
import numpy as np
import pandas as pd
import pytest

from experiments import head_to_head as h2h
from gpusched.errors import ConfigError
from gpusched.workload import Trace, load_trace


def test_one_x_offers_the_reference_tokens_per_s():
    reference = h2h.tokens_per_s(load_trace("azure-conv-2023"))
    for name in ("azure-conv-2023", "azure-code-2023", "sageserve-composed"):
        one_x = h2h.base_trace(name)
        assert h2h.tokens_per_s(one_x) == pytest.approx(reference, rel=1e-9), name
        assert h2h.tokens_per_s(one_x.scale_rate(4.0)) == pytest.approx(4 * reference, rel=1e-9)
    composed = h2h.base_trace("sageserve-composed")
    assert {"slo_e2e_s", "tier"} <= set(composed.df.columns) and composed.df["arrival_time_s"].min() >= 0


def test_whole_sequence_schedulers_get_vllms_budget_rule():
    df = pd.DataFrame({"request_id": [0, 1], "arrival_time_s": [0.0, 1.0], "prompt_tokens": [100, 5000],
                       "output_tokens": [10, 20]})
    trace = Trace(df)
    assert h2h.scheduler_knobs("vllm-v0", trace) == {"max_num_batched_tokens": 5020}
    assert h2h.scheduler_knobs("vllm-v1", trace) == {}  # chunked prefill serves any prompt


def test_deadline_attainment_counted_by_hand():
    trace = Trace(pd.DataFrame({
        "request_id": [1, 2, 3, 4], "arrival_time_s": [0.0, 0.0, 1.0, 2.0], "prompt_tokens": [10] * 4,
        "output_tokens": [5] * 4, "tier": ["IW-F", "IW-N", "IW-N", "NIW"], "slo_e2e_s": [1.0, 60.0, 60.0, 86400.0]}))
    requests = pd.DataFrame({
        "request_id": [4, 3, 2, 1], "status": ["finished", "finished", "finished", "unfinished: waiting"],
        "arrival_time_s": [2.0, 1.0, 0.0, 0.0], "first_token_time_s": [3.0, 2.0, 0.5, np.nan],
        "finish_time_s": [10.0, 70.0, 30.0, np.nan], "prompt_tokens": [10] * 4, "output_tokens": [5] * 4,
        "num_preemptions": [0, 1, 0, 0]})
    requests["e2e_s"] = requests["finish_time_s"] - requests["arrival_time_s"]
    requests["ttft_s"] = requests["first_token_time_s"] - requests["arrival_time_s"]
    requests["tpot_s"] = (requests["finish_time_s"] - requests["first_token_time_s"]) / 4
    m = h2h._metrics(requests, trace)
    # request 4 (NIW, 8 s <= 1 day) and 2 (IW-N, 30 s <= 60 s) meet theirs; 3 (IW-N, 69 s) misses; 1 never finished
    assert m["slo_attainment"] == 0.5
    assert (m["slo_attainment_IW-F"], m["slo_attainment_IW-N"], m["slo_attainment_NIW"]) == (0.0, 0.5, 1.0)
    assert m["e2e_mean_s"] == pytest.approx((8 + 69 + 30) / 3) and m["preemptions"] == 1


def test_a_cell_runs_deterministically_and_a_refused_configuration_is_skipped(monkeypatch):
    one = h2h.cell("azure-conv-2023", "vllm-v1", 2.0, 60, 0)
    assert one == {**h2h.cell("azure-conv-2023", "vllm-v1", 2.0, 60, 0), "wall_s": one["wall_s"]}
    assert one["skipped"] == "" and one["num_requests"] == one["finished"] == 60 and one["e2e_mean_s"] > 0

    def refuse(*args, **kwargs):
        raise ConfigError("this scheduler cannot serve it")

    monkeypatch.setattr(h2h, "build_instances", refuse)
    skipped = h2h.cell("azure-conv-2023", "vllm-v1", 2.0, 60, 0)
    assert skipped["skipped"] == "ConfigError: this scheduler cannot serve it" and "e2e_mean_s" not in skipped


def test_cells_cover_every_registered_scheduler():
    from gpusched import registry

    cells = h2h.cells(True)
    assert {c["scheduler"] for c in cells} == set(registry.names("scheduler"))
    assert {c["trace"] for c in cells} == set(h2h.TRACES)
    assert len(cells) == len(h2h.TRACES) * len(registry.names("scheduler")) * len(h2h.QUICK_LOADS)
