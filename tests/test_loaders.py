"""Loaders on the bundled traces and one test per class of bad input.

Reference figures for the bundled traces come from /work/shared/traces/README.md ("Verified facts",
computed with pandas by the people who collected the files).
"""
import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from gpusched.errors import ConfigError, TraceError
from gpusched.loaders import GENERATED_IDS, sniff_format
from gpusched.paths import BUNDLED_BENCHES
from gpusched.trace import MAX_TOKENS
from gpusched.workload import Trace, load_trace, traces_dir

VLLM = BUNDLED_BENCHES["vllm-rtx4090"] / "vllm" / "requests.jsonl"


def test_azure_bundled():
    tr = load_trace("azure-conv-2023")
    assert len(tr) == 19_366
    assert tr.rate_per_s == pytest.approx(5.53, abs=0.01)
    assert tr.df["prompt_tokens"].mean() == pytest.approx(1155, abs=1)
    assert tr.df["arrival_time_s"].iloc[0] == 0.0 and tr.duration_s == pytest.approx(3501.7, abs=1)


def test_azure_code_bundled():
    # expected values: pandas on the raw CSV (timestamps' span, column means), independently of the loader
    tr = load_trace("azure-code-2023")
    assert len(tr) == 8_819 and tr.duration_s == pytest.approx(3435.948, abs=1e-3)
    assert tr.df["prompt_tokens"].mean() == pytest.approx(2047.85, abs=0.01)
    assert tr.df["output_tokens"].median() == 13 and tr.df["output_tokens"].max() == 1_899


def test_azure_code_file_is_the_one_documented():
    """The code trace was copied by hand from a stored snapshot (traces/README.md): its digest pins the copy."""
    import hashlib
    data = (traces_dir() / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv").read_bytes()
    assert len(data) == 320_117  # upstream's size, as the snapshot reports it
    digest = hashlib.sha256(data).hexdigest()
    assert f"SHA-256 `{digest}`" in (traces_dir() / "README.md").read_text()


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


def servegen_dir(tmp_path, rates: bytes):
    """A folder holding one ServeGen rate file, ``chunk-1-trace.csv``, with ``rates`` as its content."""
    d = tmp_path / "sg"
    d.mkdir()
    (d / "chunk-1-trace.csv").write_bytes(rates)
    return d


def test_bad_servegen_window(tmp_path):
    d = servegen_dir(tmp_path, b"0,2.0,1.0,Gamma,1.0,0.5\n600,1.0,1.0,Poisson,1.0,1.0\n")
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


# ---- issue 15: every case found by fuzzing, one test each -----------------------------------------------

NATIVE = "request_id,arrival_time_s,prompt_tokens,output_tokens"
VLLM_OK = {"request_id": "r0", "input_toks": 5, "output_toks": 3, "queued_ts": 10.0, "scheduled_ts": 10.1,
           "first_token_ts": 10.5, "last_token_ts": 11.0}


def jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.mark.parametrize("value", ["1e30", "99999999999999999999", "1000000001"])
def test_counts_above_the_limit_are_refused_before_any_cast(tmp_path, value):
    p = write(tmp_path, AZ + OK1 + f"2023-11-16 18:15:47,{value},3\n")
    with pytest.raises(TraceError, match=rf"line 3: field 'ContextTokens' = '{value}' is above 1,000,000,000"):
        load_trace(p)
    m = write(tmp_path, jsonl([{"timestamp": 0, "input_length": int(float(value)), "output_length": 2}]), "m.jsonl")
    with pytest.raises(TraceError, match=r"line 1: field 'input_length' = .* is above"):
        load_trace(m)
    with pytest.raises(TraceError, match="prompt_tokens"):  # a DataFrame is checked the same way
        Trace(pd.DataFrame({"request_id": [0], "arrival_time_s": [0.0], "prompt_tokens": [float(value)],
                            "output_tokens": [1]}))
    assert MAX_TOKENS == 10**9
    ok = load_trace(write(tmp_path, AZ + "2023-11-16 18:15:47,1000000000,3\n", "ok.csv"))
    assert ok.df["prompt_tokens"].tolist() == [10**9]  # the limit itself loads exactly


@pytest.mark.parametrize("column,value", [("round", "x"), ("slo_ttft_s", "fast"), ("slo_tpot_s", "1s"),
                                          ("slo_e2e_s", "abc"), ("think_time_s", "soon")])
def test_non_numeric_session_and_slo_fields_are_refused_with_location(tmp_path, column, value):
    rows = {"session_id": ["1", "1"], "round": ["0", "1"], column: ["0", value]}
    header = NATIVE + "," + ",".join(rows)
    body = "".join(f"{i},{i},5,5," + ",".join(v[i] for v in rows.values()) + "\n" for i in range(2))
    with pytest.raises(TraceError, match=rf"t\.csv: line 3: field '{column}' = '{value}' is not a number"):
        load_trace(write(tmp_path, header + "\n" + body))


def test_text_session_ids_load_as_ids_and_broken_sessions_are_refused(tmp_path):
    tr = load_trace(write(tmp_path, NATIVE + ",session_id,round\n0,0,5,5,abc,0\n1,1,5,5,abc,1\n2,2,5,5,,\n"))
    assert tr.df["session_id"].tolist()[:2] == ["abc", "abc"] and tr.df["round"].tolist()[:2] == [0, 1]
    with pytest.raises(TraceError, match=r"line 2: field 'session_id' = 'abc' has rounds that are not exactly 0"):
        load_trace(write(tmp_path, NATIVE + ",session_id,round\n0,0,5,5,abc,1\n1,1,5,5,abc,2\n", "gap.csv"))
    with pytest.raises(TraceError, match=r"line 3: field 'round' = '' is missing for a row of a session"):
        load_trace(write(tmp_path, NATIVE + ",session_id,round\n0,0,5,5,s,0\n1,1,5,5,s,\n", "nor.csv"))


def test_vllm_record_without_request_id_is_refused(tmp_path):
    bad = {k: v for k, v in VLLM_OK.items() if k != "request_id"}
    p = write(tmp_path, jsonl([VLLM_OK, bad]), "v.jsonl")
    with pytest.raises(TraceError, match=r"v\.jsonl: line 2: field 'request_id' = .* is missing; every vLLM"):
        load_trace(p)


def test_native_row_with_empty_id_is_refused(tmp_path):
    with pytest.raises(TraceError, match=r"line 3: field 'request_id' = '' is empty"):
        load_trace(write(tmp_path, NATIVE + "\n0,0,5,5\n,1,5,5\n"))


def test_servegen_windows_out_of_order_are_refused(tmp_path):
    d = servegen_dir(tmp_path, b"0,2.0,1.0,Gamma,1.0,0.5\n1200,1.0,1.0,,,\n600,1.0,1.0,,,\n")
    with pytest.raises(TraceError, match=r"chunk-1-trace\.csv: line 3: field 'window_start_s' = '600' is not after"):
        load_trace(d, lengths="sharegpt-lengths")


def test_servegen_empty_rate_file_is_refused(tmp_path):
    d = servegen_dir(tmp_path, b"")
    with pytest.raises(TraceError, match=r"chunk-1-trace\.csv: the file is empty"):
        load_trace(d / "chunk-1-trace.csv", format="servegen", lengths="sharegpt-lengths")


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", r"line 1: the top level is a JSON list"),
    ('{"0": 5}', r"line 1: window '0' holds a JSON int"),
    ('{\n "0": {"input_tokens": "{10: 1.0}", "output_tokens": "{3: 1.0}"},\n "600": "x"\n}',
     r"line 3: window '600' holds a JSON str"),
    ('{"0": {"input_tokens": "{10: -1.0}", "output_tokens": "{3: 1.0}"}}', r"line 1: .*probability -1\.0"),
    ('{"0": {"input_tokens": "{1e30: 1.0}", "output_tokens": "{3: 1.0}"}}', r"line 1: .*token count 1e\+30"),
    ('{"0": {"input_tokens": "{10: 1.0}"}}', r"line 1: window '0': missing field 'output_tokens'"),
    ("", r"the file is empty"),
])
def test_servegen_malformed_dataset_json_is_a_located_error(tmp_path, text, match):
    (tmp_path / "chunk-3-trace.csv").write_text("0,2.0,1.0,Gamma,1.0,0.5\n600,2.0,1.0,Gamma,1.0,0.5\n")
    (tmp_path / "chunk-3-dataset.json").write_text(text)
    with pytest.raises(TraceError, match=r"chunk-3-dataset\.json: " + match):
        load_trace(tmp_path / "chunk-3-trace.csv", end_s=1200)


@pytest.mark.parametrize("rate", ["1e8", "1e30"])
def test_servegen_huge_rates_are_refused_before_allocating(tmp_path, rate):
    f = tmp_path / "chunk-2-trace.csv"
    f.write_text(f"0,1.0,1.0,Gamma,1.0,1.0\n600,{rate},1.0,Gamma,1.0,1e-30\n")
    with pytest.raises(TraceError, match=rf"line 2: field 'rate_rps' = {re.escape(repr(float(rate)))}: .* more "
                                         rf"than max_requests=10,000,000"):
        load_trace(f, lengths="sharegpt-lengths")
    # under the limit, a narrow interval of the same file loads
    small = load_trace(f, lengths="sharegpt-lengths", end_s=600)
    assert 0 < len(small) < 2000


def test_servegen_end_inside_a_busy_window_draws_only_up_to_the_end(tmp_path):
    # 1e4 req/s over a 600-s window would be 6e6 draws; up to end_s = 10 s it is ~1e5 (Poisson: sd ~316)
    f = tmp_path / "chunk-4-trace.csv"
    f.write_text("0,1e4,1.0,Gamma,1.0,1e-4\n600,1.0,1.0,Gamma,1.0,1.0\n")
    tr = load_trace(f, lengths="sharegpt-lengths", start_s=5, end_s=10, max_requests=200_000)
    assert abs(len(tr) - 5e4) < 5 * 224 and tr.df["arrival_time_s"].between(5, 10, inclusive="left").all()
    with pytest.raises(TraceError, match=r"line 1: .*~6e\+06 arrivals"):
        load_trace(f, lengths="sharegpt-lengths", end_s=600, max_requests=200_000)


def test_vllm_first_token_before_queued_is_refused(tmp_path):
    bad = dict(VLLM_OK, request_id="r1", first_token_ts=9.0)
    with pytest.raises(TraceError, match=r"line 2: field 'first_token_ts' = 9\.0 is before queued_ts"):
        load_trace(write(tmp_path, jsonl([VLLM_OK, bad]), "v.jsonl"))


def test_azure_timezone_offsets_load_in_utc_and_mixing_with_naive_is_refused(tmp_path):
    tr = load_trace(write(tmp_path, AZ + "2023-11-16 18:15:46+01:00,5,5\n2023-11-16 18:15:47+02:00,6,6\n"
                          "2023-11-16T17:15:50Z,7,7\n"))
    # in UTC the rows are 17:15:46, 16:15:47 and 17:15:50: origin 16:15:47, gaps of 3599 s and 3603 s
    assert tr.df["arrival_time_s"].tolist() == [0.0, 3599.0, 3603.0]
    assert tr.df["prompt_tokens"].tolist() == [6, 5, 7]
    with pytest.raises(TraceError, match=r"line 3: field 'TIMESTAMP' = '2023-11-16 18:15:47' mixes with line 2"):
        load_trace(write(tmp_path, AZ + "2023-11-16 18:15:46+01:00,5,5\n2023-11-16 18:15:47,5,5\n", "mix.csv"))


def test_prefix_block_hashes_that_are_not_integers_are_refused(tmp_path):
    with pytest.raises(TraceError, match=r"line 2: field 'prefix_block_hashes' = 'abc' is not a space-separated"):
        load_trace(write(tmp_path, NATIVE + ",prefix_block_hashes\n0,0,5,5,abc\n"))
    with pytest.raises(TraceError, match=r"line 1: field 'hash_ids' = \['a'\]"):
        load_trace(write(tmp_path, jsonl([{"timestamp": 0, "input_length": 5, "output_length": 1,
                                           "hash_ids": ["a"]}]), "m.jsonl"))


@pytest.mark.parametrize("name,head", [("a.csv", AZ), ("m.jsonl", "")])
def test_invalid_utf8_is_reported_on_its_real_line(tmp_path, name, head):
    rows = [OK1.encode(), OK2.encode(), b"2023-11-16 18:15:51.0,5\xff,2\n"] if head else \
        [(json.dumps({"timestamp": t, "input_length": 5, "output_length": 1}) + "\n").encode() for t in (0, 1)] + \
        [b'{"timestamp": 2, "input_length": 5\xff, "output_length": 1}\n']
    p = tmp_path / name
    p.write_bytes(head.encode() + b"".join(rows))
    line = 4 if head else 3
    with pytest.raises(TraceError, match=rf"{name}: line {line}: byte 0xff at byte \d+ of the line is not valid UTF-8"):
        load_trace(p)


def test_negative_think_time_names_file_and_1_based_line(tmp_path):
    p = write(tmp_path, NATIVE + ",session_id,round,think_time_s\n0,0,5,5,1,0,0\n1,0,5,5,1,1,-2\n")
    with pytest.raises(TraceError, match=r"t\.csv: line 3: field 'think_time_s' = '-2' is negative"):
        load_trace(p)


def test_a_bom_is_read_the_same_in_every_format(tmp_path):
    m = jsonl([{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [1]}])
    plain = load_trace(write(tmp_path, m, "plain.jsonl"))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + m.encode())
    assert sniff_format(bom) == "mooncake"
    pd.testing.assert_frame_equal(load_trace(bom).df, plain.df)
    for text, name in ((AZ + OK1, "a.csv"), (NATIVE + "\n0,0,5,5\n", "n.csv")):
        p = tmp_path / name
        p.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert len(load_trace(p)) == 1


@pytest.mark.parametrize("text,name", [(AZ, "a.csv"), (NATIVE + "\n", "n.csv"), (NATIVE + "\n\n\n", "b.csv"),
                                       ("num_prefill_tokens,num_decode_tokens\n", "l.csv"),
                                       ("arrived_at,num_prefill_tokens,num_decode_tokens\n", "v.csv")])
def test_a_header_without_rows_is_an_error_not_an_empty_trace(tmp_path, text, name):
    with pytest.raises(TraceError, match=rf"{name}: has a header \(line 1\) but no data rows"):
        load_trace(write(tmp_path, text, name), rate_per_s=1.0) if name == "l.csv" else \
            load_trace(write(tmp_path, text, name))


def test_every_row_skipped_is_an_error_not_an_empty_trace(tmp_path):
    p = write(tmp_path, AZ + "x,1,1\n2023-11-16 18:15:47,0,1\n")
    with pytest.warns(UserWarning, match="skipped 2"), pytest.raises(TraceError, match="no valid row left"):
        load_trace(p, on_error="skip")


def test_line_numbers_count_blank_lines(tmp_path):
    p = write(tmp_path, AZ + "\n" + OK1 + "\n\n" + "2023-11-16 18:15:50,5,0\n")
    with pytest.raises(TraceError, match=r"line 6: field 'GeneratedTokens' = '0' must be >= 1"):
        load_trace(p)


# ---- Vidur's column names, generated ids, length-only traces --------------------------------------------

def test_vidur_request_trace(tmp_path):
    p = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
                        "0.5,10,3,13,3.33\n0.25,4,2,6,2.0\n")
    assert sniff_format(p) == "vidur"
    tr = load_trace(p)
    assert tr.df[["request_id", "arrival_time_s", "prompt_tokens", "output_tokens"]].values.tolist() == \
        [[1, 0.25, 4, 2], [0, 0.5, 10, 3]]
    assert tr.meta["request_id"] == GENERATED_IDS and "pd_ratio" not in tr.df
    with pytest.raises(TraceError, match=r"line 2: field 'num_total_tokens' = '14' is not"):
        load_trace(write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens,num_total_tokens\n"
                                   "0.5,10,3,14\n", "bad.csv"))
    own = load_trace(write(tmp_path, "request_id,arrived_at,num_prefill_tokens,num_decode_tokens\n"
                                     "q7,0,3,1\n", "own.csv"))
    assert own.df["request_id"].tolist() == ["q7"] and "request_id" not in own.meta


def test_csv_without_request_id_gets_deterministic_row_ids(tmp_path):
    p = write(tmp_path, "arrival_time_s,prompt_tokens,output_tokens\n2.0,5,1\n1.0,6,2\n")
    tr = load_trace(p)
    assert tr.df["request_id"].tolist() == [1, 0]  # the data-row index, kept through the sort by arrival
    assert tr.meta["request_id"] == "generated: 0-based data-row index in file order"
    pd.testing.assert_frame_equal(tr.df, load_trace(p).df)
    sage = load_trace(write(tmp_path, "arrival_timestamp,prompt_size,token_size\n0,7,1\n", "s.csv"))
    assert sage.df["request_id"].tolist() == [0] and sage.meta["request_id"] == GENERATED_IDS


LENGTH_ONLY = [("prompt_tokens,output_tokens\n{p},{o}\n", "native"),
               ("ContextTokens,GeneratedTokens\n{p},{o}\n", "azure"),
               ('{{"input_length": {p}, "output_length": {o}}}\n', "mooncake"),
               ("prompt_size,token_size,model_type\n{p},{o},A\n", "sageserve"),
               ("num_prefill_tokens,num_decode_tokens\n{p},{o}\n", "vidur"),
               ("num_prefill_tokens,num_decode_tokens\n{p},{o}\n", "length_stats")]


@pytest.mark.parametrize("template,fmt", LENGTH_ONLY)
def test_length_only_traces_need_a_rate_and_get_seeded_poisson_arrivals(tmp_path, template, fmt):
    rows = [(10 + i, 1 + i % 3) for i in range(400)]
    head, line = template.split("\n")[0], template.split("\n", 1)[-1]
    text = "".join(template.format(p=p, o=o) for p, o in rows[:1]) + \
        "".join(line.format(p=p, o=o) for p, o in rows[1:]) if "{" not in head else \
        "".join(template.format(p=p, o=o) for p, o in rows)
    p = write(tmp_path, text, "t.jsonl" if fmt == "mooncake" else "t.csv")
    with pytest.raises(TraceError, match=r"no timestamps; pass rate_per_s=.*--rate"):
        load_trace(p, format=fmt)
    a = load_trace(p, format=fmt, rate_per_s=4.0, seed=11)
    pd.testing.assert_frame_equal(a.df, load_trace(p, format=fmt, rate_per_s=4.0, seed=11).df)
    assert a.meta["rate_per_s"] == 4.0 and a.meta["seed"] == 11
    # row i of the file gets the i-th arrival of numpy's seeded exponential gaps (an independent draw here)
    gaps = np.random.default_rng(11).exponential(1 / 4.0, len(rows))
    np.testing.assert_allclose(a.df["arrival_time_s"], np.cumsum(gaps))
    assert a.df["prompt_tokens"].tolist() == [p for p, _ in rows]
    assert not np.array_equal(a.df["arrival_time_s"], load_trace(p, format=fmt, rate_per_s=4.0, seed=12)
                              .df["arrival_time_s"])


def test_rate_for_a_timed_trace_and_unknown_arguments_are_config_errors(tmp_path):
    p = write(tmp_path, AZ + OK1)
    with pytest.raises(ConfigError, match=r"has timestamps \(column 'TIMESTAMP'\).*scale_rate"):
        load_trace(p, rate_per_s=2.0)
    with pytest.raises(ConfigError, match=r"takes no argument\(s\) \['rate'\]; it accepts"):
        load_trace(p, rate=2.0)
    with pytest.raises(ConfigError, match="rate_per_s"):
        load_trace(write(tmp_path, "prompt_tokens,output_tokens\n5,5\n", "n.csv"), rate_per_s=-1.0)
