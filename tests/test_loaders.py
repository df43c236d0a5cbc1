"""Loaders on the bundled traces and one test per class of bad input.

Reference figures for the bundled traces come from /work/shared/traces/README.md ("Verified facts",
computed with pandas by the people who collected the files).
"""
import time
import warnings

import numpy as np
import pytest

from gpusched.errors import ConfigError, TraceError
from gpusched.loaders import sniff_format
from gpusched.paths import BUNDLED_BENCHES
from gpusched.workload import load_trace, traces_dir

VLLM = BUNDLED_BENCHES["vllm-rtx4090"] / "vllm" / "requests.jsonl"


def test_azure_bundled():
    t0 = time.perf_counter()
    tr = load_trace("azure-conv-2023")
    assert time.perf_counter() - t0 < 1.0
    assert len(tr) == 19_366
    assert tr.rate_per_s == pytest.approx(5.53, abs=0.01)
    assert tr.df["prompt_tokens"].mean() == pytest.approx(1155, abs=1)
    assert tr.df["arrival_time_s"].iloc[0] == 0.0 and tr.duration_s == pytest.approx(3501.7, abs=1)


def test_mooncake_bundled():
    tr = load_trace("mooncake-conversation")
    assert len(tr) == 12_031 and tr.prefix_block_tokens == 512
    assert tr.duration_s == pytest.approx(3537, abs=1) and tr.rate_per_s == pytest.approx(3.40, abs=0.01)
    n_blocks = tr.df["prefix_block_hashes"].map(len).to_numpy()
    assert np.array_equal(n_blocks, np.ceil(tr.df["prompt_tokens"].to_numpy() / 512).astype(int))


def test_length_stats_need_rate():
    with pytest.raises(TraceError, match="rate_per_s"):
        load_trace(traces_dir() / "length_stats" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    tr = load_trace("sharegpt-lengths", rate_per_s=20.0, seed=1)
    assert len(tr) == 30_731 and tr.rate_per_s == pytest.approx(20.0, rel=0.03)
    assert tr.df["prompt_tokens"].mean() == pytest.approx(2340, abs=1)
    arx = load_trace("arxiv-lengths", rate_per_s=2.0, n=1000, seed=0, arrival="gamma", cv=2.0)
    assert len(arx) == 1000


def test_servegen_bundled_rates_and_determinism():
    a = load_trace("servegen-m-large", clients=[61, 34], start_s=0, end_s=1200, seed=5)
    b = load_trace("servegen-m-large", clients=[61, 34], start_s=0, end_s=1200, seed=5)
    assert a.df.equals(b.df)
    assert set(a.df["client"]) == {61, 34}
    # windows 0 and 600 of client 61 have rate 87.2 and 93.6 req/s -> ~108,500 expected over 1200 s
    n61 = (a.df["client"] == 61).sum()
    assert n61 == pytest.approx((87.20333 + 93.57667) * 600, rel=0.05)
    assert a.df["arrival_time_s"].max() < 1200
    # a client without dataset json needs a length table
    with pytest.raises(TraceError, match="lengths="):
        load_trace("servegen-m-large", clients=[50], end_s=600)
    c = load_trace("servegen-m-large", clients=[78], start_s=600, end_s=1200, lengths="sharegpt-lengths")
    assert c.df["arrival_time_s"].min() >= 600


def test_vllm_requests():
    tr = load_trace(VLLM)
    assert len(tr) == 300 and tr.df["arrival_time_s"].iloc[0] == 0.0
    ttft = tr.df["measured_first_token_s"] - tr.df["arrival_time_s"]
    assert ttft.mean() * 1000 == pytest.approx(65_456.6, abs=0.5)  # summary.txt figure


def test_sageserve_format(tmp_path):
    p = tmp_path / "sage.csv"
    p.write_text("arrival_timestamp,regions,model_type,workload_type,prompt_size,token_size,client_tenant,"
                 "request_id,batch_id,scenario,sla,utility,request_type,application_id,batch_size\n"
                 "0.00000,120,C,dev,702,64,8,5399999,-1,ES,10,1,2,-1,1\n"
                 "0.13163,021,D,prod,7091,81,4,6899998,-1,ES,10,1,2,-1,1\n")
    tr = load_trace(p)
    assert tr.df["region_priority"].tolist() == ["120", "021"]
    assert tr.df["region"].tolist() == ["centralus", "westus"]
    assert tr.df["model"].tolist() == ["llama-3.1-8b", "llama-3.2-3b"]
    assert tr.df["tier"].tolist() == ["batch", "interactive"]
    assert tr.df["slo_e2e_s"].tolist() == [10.0, 10.0]
    with pytest.raises(TraceError, match="performance-model"):
        load_trace(traces_dir() / "sageserve_perf" / "perf_model_4_models.csv")


def test_sniffing_ignores_extension(tmp_path):
    p = tmp_path / "trace.txt"
    p.write_text('{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n')
    assert sniff_format(p) == "mooncake"
    q = tmp_path / "x.jsonl"
    q.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,3,4\n")
    assert sniff_format(q) == "azure" and len(load_trace(q)) == 1


# ---- bad input: one test per class ---------------------------------------------------------------

AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
OK1 = "2023-11-16 18:15:46.6805900,374,44\n"
OK2 = "2023-11-16 18:15:50.9951690,396,109\n"


def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bad_malformed_row(tmp_path):
    p = write(tmp_path, AZ + OK1 + "2023-11-16 18:15:50.9,1,2,3\n" + OK2)
    with pytest.raises(TraceError, match=r"line 3.*malformed"):
        load_trace(p)
    with pytest.warns(UserWarning, match="skipped 1"):
        tr = load_trace(p, on_error="skip")
    assert len(tr) == 2 and tr.skipped_rows == 1


def test_bad_malformed_json_line(tmp_path):
    good = '{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}\n'
    p = write(tmp_path, good + '{"timestamp": 5, "input_len\n' + good, "m.jsonl")
    with pytest.raises(TraceError, match=r"m\.jsonl: line 2: malformed JSON"):
        load_trace(p)


def test_bad_negative_count(tmp_path):
    p = write(tmp_path, AZ + OK1 + OK2 + "2023-11-16 18:15:51.0,-5,3\n")
    with pytest.raises(TraceError, match=r"t\.csv: line 4: field 'ContextTokens' = '-5' is negative"):
        load_trace(p)


def test_bad_non_integer_count(tmp_path):
    p = write(tmp_path, AZ + OK1 + "2023-11-16 18:15:51.0,5,2.5\n" + OK2)
    with pytest.raises(TraceError, match=r"line 3: field 'GeneratedTokens' = '2.5' is not an integer"):
        load_trace(p)
    p2 = write(tmp_path, AZ + OK1 + "2023-11-16 18:15:51.0,abc,2\n", "u.csv")
    with pytest.raises(TraceError, match=r"line 3: field 'ContextTokens' = 'abc' is not a number"):
        load_trace(p2)


def test_bad_zero_output(tmp_path):
    good = '{"timestamp": 0, "input_length": 10, "output_length": 2}\n'
    p = write(tmp_path, good + '{"timestamp": 5, "input_length": 10, "output_length": 0}\n', "z.jsonl")
    with pytest.raises(TraceError, match=r"line 2: field 'output_length'"):
        load_trace(p)


def test_bad_timestamp_unparsable_and_missing(tmp_path):
    p = write(tmp_path, AZ + OK1 + "yesterday,5,2\n" + OK2)
    with pytest.raises(TraceError, match=r"line 3: field 'TIMESTAMP' = 'yesterday' is not a parsable datetime"):
        load_trace(p)
    p2 = write(tmp_path, AZ + OK1 + OK2 + ",5,2\n", "m.csv")
    with pytest.raises(TraceError, match=r"line 4: field 'TIMESTAMP' = '' is missing"):
        load_trace(p2)
    good = '{"timestamp": 0, "input_length": 10, "output_length": 2}\n'
    p3 = write(tmp_path, good + '{"input_length": 10, "output_length": 2}\n', "n.jsonl")
    with pytest.raises(TraceError, match=r"line 2: field 'timestamp'.*missing"):
        load_trace(p3)


def test_bad_missing_column(tmp_path):
    p = write(tmp_path, "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,3\n")
    with pytest.raises(TraceError, match=r"t\.csv: line 1: missing column 'GeneratedTokens'"):
        load_trace(p)


def test_bad_unknown_format(tmp_path):
    p = write(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match=r"t\.csv: line 1: unknown trace format"):
        load_trace(p)
    with pytest.raises(TraceError, match="empty"):
        load_trace(write(tmp_path, "", "e.csv"))
    with pytest.raises(ConfigError):
        load_trace(p, format="nope")


def test_bad_servegen_window(tmp_path):
    d = tmp_path / "sg"
    d.mkdir()
    (d / "chunk-1-trace.csv").write_text("0,2.0,1.0,Gamma,1.0,0.5\n600,1.0,1.0,Poisson,1.0,1.0\n")
    with pytest.raises(TraceError, match=r"line 2: field 'arrival_dist' = 'Poisson'"):
        load_trace(d, lengths="sharegpt-lengths")


def test_skip_mode_counts_all_bad_rows(tmp_path):
    p = write(tmp_path, AZ + OK1 + "x,1,1\n" + "2023-11-16 18:15:47,0,1\n" + OK2 + "2023-11-16 18:15:52,3,1.5\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tr = load_trace(p, on_error="skip")
    assert len(tr) == 2 and tr.skipped_rows == 3
    assert any("skipped 3" in str(x.message) for x in w)
    with pytest.raises(ConfigError):
        load_trace(p, on_error="ignore")
