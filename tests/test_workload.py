"""Trace container: validation, transformations, bundled-trace registry."""
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from gpusched.errors import ConfigError, TraceError, UnknownNameError
from gpusched.workload import Request, Trace, bundled_trace_summary, list_bundled_traces, load_trace, traces_dir


def make(times, prompt=None, output=None, **cols):
    n = len(times)
    df = pd.DataFrame({"request_id": np.arange(n), "arrival_time_s": times,
                       "prompt_tokens": prompt if prompt is not None else np.full(n, 10),
                       "output_tokens": output if output is not None else np.full(n, 5), **cols})
    return Trace(df, name="t")


def test_sorted_stably_and_typed():
    tr = make([2.0, 1.0, 1.0, 0.0], prompt=[1, 2, 3, 4])
    assert tr.df["arrival_time_s"].tolist() == [0.0, 1.0, 1.0, 2.0]
    assert tr.df["prompt_tokens"].tolist() == [4, 2, 3, 1]  # ties keep input order
    assert tr.df["prompt_tokens"].dtype == np.int64
    assert len(tr) == 4 and tr.duration_s == 2.0 and tr.rate_per_s == 2.0


@pytest.mark.parametrize("col,value", [("prompt_tokens", 0), ("output_tokens", 0), ("output_tokens", 1.5),
                                       ("prompt_tokens", -3), ("arrival_time_s", np.nan),
                                       ("arrival_time_s", -1.0)])
def test_invalid_table_rejected(col, value):
    df = pd.DataFrame({"request_id": [0, 1], "arrival_time_s": [0.0, 1.0], "prompt_tokens": [3, 4],
                       "output_tokens": [2, 2]})
    df[col] = df[col].astype(float)
    df.loc[1, col] = value
    with pytest.raises(TraceError, match=col):
        Trace(df)


def test_duplicate_ids_and_missing_column():
    with pytest.raises(TraceError, match="request_id"):
        Trace(pd.DataFrame({"request_id": [1, 1], "arrival_time_s": [0, 1], "prompt_tokens": [1, 1],
                            "output_tokens": [1, 1]}))
    with pytest.raises(TraceError, match="output_tokens"):
        Trace(pd.DataFrame({"request_id": [1], "arrival_time_s": [0], "prompt_tokens": [1]}))


def test_request_dataclass():
    with pytest.raises(TraceError):
        Request(0, 0.0, 0, 1)
    r = Request("a", 1.0, 5, 2)
    tr = Trace.from_requests([r, Request("b", 0.5, 3, 1)])
    assert list(tr.df["request_id"]) == ["b", "a"]
    assert [q.request_id for q in tr.requests()] == ["b", "a"]


def test_window_head_repeat():
    tr = make([0.0, 1.0, 2.0, 3.0])
    w = tr.window(1.0, 3.0)
    assert w.df["arrival_time_s"].tolist() == [0.0, 1.0]
    assert tr.window(1.0, 3.0, rebase=False).df["arrival_time_s"].tolist() == [1.0, 2.0]
    assert len(tr.head(2)) == 2
    r = tr.repeat(3)
    assert len(r) == 12 and r.df["request_id"].is_unique
    assert r.df["arrival_time_s"].is_monotonic_increasing
    assert r.df["arrival_time_s"].iloc[4] == 4.0  # span 3 + mean gap 1
    s = Trace.from_requests([Request("x", 0.0, 1, 1), Request("y", 1.0, 1, 1)]).repeat(2)
    assert list(s.df["request_id"]) == ["x", "y", "x#1", "y#1"]
    with pytest.raises(ConfigError):
        tr.window(2.0, 1.0)
    with pytest.raises(ConfigError):
        tr.scale_rate(0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e5, allow_nan=False), min_size=2, max_size=50),
       st.floats(0.01, 100, allow_nan=False))
def test_scale_rate_preserves_order_and_counts(times, factor):
    tr = make(times, prompt=np.arange(1, len(times) + 1))
    s = tr.scale_rate(factor)
    assert len(s) == len(tr)
    assert s.df["prompt_tokens"].tolist() == tr.df["prompt_tokens"].tolist()
    assert s.df["arrival_time_s"].is_monotonic_increasing
    np.testing.assert_allclose(s.duration_s, tr.duration_s / factor, rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1, max_size=40), st.integers(1, 4))
def test_repeat_counts_and_ids(times, k):
    tr = make(times)
    r = tr.repeat(k)
    assert len(r) == k * len(tr) and r.df["request_id"].is_unique


def test_describe_keys():
    d = make([0.0, 1.0, 2.0], prompt=[1, 2, 3]).describe()
    assert d["rows"] == 3 and d["prompt_p50"] == 2.0
    assert {"output_p90", "output_p99", "prompt_p99", "rate_per_s"} <= set(d)


def test_csv_roundtrip(tmp_path):
    tr = make([0.0, 0.5], prefix_block_hashes=[(1, 2), (1, 3, 4)], session_id=[0, 0], round=[0, 1],
              think_time_s=[0.0, 2.5])
    tr = Trace(tr.df, name="x", prefix_block_tokens=16)
    back = load_trace(tr.to_csv(tmp_path / "t.csv"))
    assert back.prefix_block_tokens == 16
    assert list(back.df["prefix_block_hashes"]) == [(1, 2), (1, 3, 4)]
    pd.testing.assert_frame_equal(back.df[["request_id", "arrival_time_s", "prompt_tokens", "output_tokens",
                                           "think_time_s"]],
                                  tr.df[["request_id", "arrival_time_s", "prompt_tokens", "output_tokens",
                                         "think_time_s"]])


def test_bundled_registry(monkeypatch, tmp_path):
    assert {"azure-conv-2023", "azure-code-2023", "mooncake-conversation", "sharegpt-lengths", "arxiv-lengths",
            "servegen-m-large"} <= set(list_bundled_traces())
    assert (traces_dir() / "README.md").exists()
    with pytest.raises(UnknownNameError, match="azure-conv-2023"):
        load_trace("no-such-trace")
    monkeypatch.setenv("GPUSCHED_TRACES_DIR", str(tmp_path))
    assert traces_dir() == tmp_path
    with pytest.raises(TraceError, match="GPUSCHED_TRACES_DIR"):
        load_trace("azure-conv-2023")


def test_bundled_summary():
    s = bundled_trace_summary()
    assert set(s["name"]) == set(list_bundled_traces())
    assert {"rows", "duration_s", "rate_per_s", "prompt_p50", "prompt_p99", "output_p90", "note"} <= set(s.columns)
    assert "5 req/s" in s.set_index("name").loc["sharegpt-lengths", "note"]


def test_trace_modules_import_one_way_at_module_level():
    """Issue 20: the workload modules form a DAG, with no import inside a function between them."""
    import ast
    from pathlib import Path

    import gpusched
    names = ["trace", "bundled", "arrivals", "rows", "lengths", "synthetic", "servegen", "loaders", "workload"]
    graph = {}
    for name in names:
        tree = ast.parse((Path(gpusched.__file__).parent / f"{name}.py").read_text())
        top = set(tree.body)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                target = node.module.removeprefix("gpusched.") if node.module.startswith("gpusched.") else \
                    (node.names[0].name if node.module == "gpusched" else None)
                if target in names:
                    assert node in top, f"gpusched/{name}.py imports gpusched.{target} inside a function"
                    deps.add(target)
        graph[name] = deps
    done: list[str] = []
    while len(done) < len(names):  # topological order exists iff there is no cycle
        ready = [n for n in names if n not in done and graph[n] <= set(done)]
        assert ready, f"import cycle among {sorted(set(names) - set(done))}: {graph}"
        done += ready


def test_schema_rules_on_a_dataframe():
    base = {"request_id": [0, 1], "arrival_time_s": [0.0, 1.0], "prompt_tokens": [3, 4], "output_tokens": [2, 2]}
    with pytest.raises(TraceError, match=r"row 1 .*request_id=nan\): request_id=nan is empty"):
        Trace(pd.DataFrame({**base, "request_id": [0, None]}))
    with pytest.raises(TraceError, match="session_id.*not exactly 0, 1"):
        Trace(pd.DataFrame({**base, "session_id": ["s", "s"], "round": [0, 2]}))
    with pytest.raises(TraceError, match="has no 'round' column"):
        Trace(pd.DataFrame({**base, "session_id": ["s", "s"]}))
    with pytest.raises(TraceError, match="slo_ttft_s.*is not a number"):
        Trace(pd.DataFrame({**base, "slo_ttft_s": [0.5, "soon"]}))
    ok = Trace(pd.DataFrame({**base, "session_id": ["s", None], "round": [0, None]}))
    rep = ok.repeat(2)  # a row outside every session stays outside in every copy
    assert [None if pd.isna(x) else x for x in rep.df["session_id"]] == ["s", None, "s#1", None]
