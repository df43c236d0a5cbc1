"""Fuzzing every file format the loaders read (issue 15).

Each test generates valid files (seeded), mutates them the way a broken export, an editor or an attacker
would (a field replaced by a value from a hostile pool, a byte inserted or deleted, the file truncated, lines
dropped or repeated), and loads every result. The outcome must be either a correct load or a project error
(:class:`~gpusched.errors.GpuschedError`) that names the file and a line that exists; never another
exception type, and never silent loss:

* a count replaced by a value that is not an integer in ``1..MAX_TOKENS`` (Python's ``float`` is the oracle)
  must raise at exactly the mutated line; a count that is one must load as that number;
* a successful load has one request per record of the file (``csv``/``json`` count them independently);
  with ``on_error="skip"``, loaded + skipped = records.

Valid generated files also round-trip: the loaded values equal the generated ones.
"""
from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from formulations.helix import HelixProblem, load_helix_placement, load_throughput_table, read_cluster_ini
from gpusched.errors import GpuschedError
from gpusched.trace import MAX_TOKENS
from gpusched.workload import load_trace

TEXT_POOL = ["", "abc", "-1", "0", "-0", "1.5", "1e30", "99999999999999999999", "1000000001", "nan", "inf", "-inf",
             " 7 ", "1e3", '"5"', "0x10", "1_000", "\u0663", "True", "[1]", "null", "12", "2.0", "+4", "1,2", '"',
             "\t", "\u00a0"]
JSON_POOL = [None, "abc", -1, 0, 1.5, 1e30, 99999999999999999999, 1000000001, True, False, [1], {}, "7", " 8 ",
             float("nan"), float("inf"), 12, 2.0, "", "1e3"]
BAD_BYTES = [b"\xff", b"\x00", b'"', b",", b"\n", b"\r", b"{", b"}", b"\xc3", b" ", b"9", b"-"]


@dataclass
class Format:
    """How to write one format and what its fields mean to the oracle."""

    name: str
    jsonl: bool
    rows: Callable[[random.Random, int], list[dict]]
    counts: dict[str, str]                     # file field -> trace column
    times: dict[str, float] = field(default_factory=dict)  # file field -> seconds per unit (absolute times)
    id_field: str | None = None                # file field holding the request id (None: row index)
    load_kw: dict = field(default_factory=dict)
    suffix: str = ".csv"


def _native(r: random.Random, n: int) -> list[dict]:
    return [{"request_id": str(100 + i), "arrival_time_s": f"{r.uniform(0, 50):.6f}",
             "prompt_tokens": str(r.randint(1, 4000)), "output_tokens": str(r.randint(1, 500)),
             "session_id": str(i // 2), "round": str(i % 2), "think_time_s": f"{r.uniform(0, 3):.3f}",
             "slo_ttft_s": "" if r.random() < 0.3 else f"{r.uniform(0.1, 2):.3f}", "model": r.choice("ab"),
             "prefix_block_hashes": " ".join(str(r.randint(0, 99)) for _ in range(r.randint(0, 3)))}
            for i in range(n)]


def _azure(r: random.Random, n: int) -> list[dict]:
    return [{"TIMESTAMP": f"2023-11-16 18:{15 + i // 60:02d}:{i % 60:02d}.{r.randint(0, 999999):06d}",
             "ContextTokens": str(r.randint(1, 9000)), "GeneratedTokens": str(r.randint(1, 900))} for i in range(n)]


def _mooncake(r: random.Random, n: int) -> list[dict]:
    return [{"timestamp": 1000 * i + r.randint(0, 999), "input_length": r.randint(1, 5000),
             "output_length": r.randint(1, 500), "hash_ids": [r.randint(0, 50) for _ in range(r.randint(0, 4))]}
            for i in range(n)]


def _sageserve(r: random.Random, n: int) -> list[dict]:
    return [{"arrival_timestamp": f"{r.uniform(0, 100):.5f}", "regions": r.choice(["012", "120", "021"]),
             "model_type": r.choice("ABCD"), "workload_type": r.choice(["prod", "dev"]),
             "prompt_size": str(r.randint(1, 7000)), "token_size": str(r.randint(1, 700)),
             "request_id": str(5_000_000 + i), "sla": "10"} for i in range(n)]


def _vidur(r: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        p, d = r.randint(1, 4000), r.randint(1, 500)
        rows.append({"arrived_at": f"{r.uniform(0, 60):.4f}", "num_prefill_tokens": str(p),
                     "num_decode_tokens": str(d), "num_total_tokens": str(p + d), "pd_ratio": f"{p / d:.3f}"})
    return rows


def _lengths(r: random.Random, n: int) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "arrived_at"} for row in _vidur(r, n)]


def _vllm(r: random.Random, n: int) -> list[dict]:
    rows, t = [], 27536.0
    for i in range(n):
        t += r.uniform(0, 2)
        s = t + r.uniform(0, 1)
        f = s + r.uniform(0, 1)
        rows.append({"request_id": f"bench-{i}", "input_toks": r.randint(1, 3000), "output_toks": r.randint(1, 800),
                     "arrival_time": 1.78e9 + t, "queued_ts": t, "scheduled_ts": s, "first_token_ts": f,
                     "last_token_ts": f + r.uniform(0, 20)})
    return rows


FORMATS = [
    Format("native", False, _native, {"prompt_tokens": "prompt_tokens", "output_tokens": "output_tokens"},
           {"arrival_time_s": 1.0}, "request_id"),
    Format("azure", False, _azure, {"ContextTokens": "prompt_tokens", "GeneratedTokens": "output_tokens"}),
    Format("mooncake", True, _mooncake, {"input_length": "prompt_tokens", "output_length": "output_tokens"},
           {"timestamp": 1e-3}, suffix=".jsonl"),
    Format("sageserve", False, _sageserve, {"prompt_size": "prompt_tokens", "token_size": "output_tokens"},
           {"arrival_timestamp": 1.0}, "request_id"),
    Format("vidur", False, _vidur, {"num_prefill_tokens": "prompt_tokens", "num_decode_tokens": "output_tokens"},
           {"arrived_at": 1.0}),
    Format("length_stats", False, _lengths,
           {"num_prefill_tokens": "prompt_tokens", "num_decode_tokens": "output_tokens"},
           load_kw={"rate_per_s": 3.0, "seed": 1}),
    Format("vllm", True, _vllm, {"input_toks": "prompt_tokens", "output_toks": "output_tokens"},
           id_field="request_id", suffix=".jsonl"),
]


def render(fmt: Format, rows: list[dict]) -> bytes:
    if fmt.jsonl:
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(rows[0].keys())
    w.writerows(r.values() for r in rows)
    return out.getvalue().encode()


def records(fmt: Format, data: bytes) -> int:
    """Records in the file, counted independently of the loaders (csv / one JSON object per line)."""
    text = data.decode("utf-8-sig", errors="replace")
    if fmt.jsonl:
        return sum(1 for line in text.split("\n") if line.strip())
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r and not (len(r) == 1 and not r[0].strip())]
    return max(len(rows) - 1, 0)


def load(path: Path, fmt: Format, **kw):
    """``("ok", trace)`` or ``("error", message)``; any exception other than a project error fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", load_trace(path, format=fmt.name, **fmt.load_kw, **kw)
        except GpuschedError as e:
            return "error", str(e)


def check_located(message: str, path: Path, data: bytes) -> None:
    assert path.name in message, message
    n_lines = data.count(b"\n") + 1
    for m in re.finditer(r"\bline (\d+)", message):
        assert 1 <= int(m.group(1)) <= n_lines, message


def check_outcome(path: Path, fmt: Format, data: bytes) -> tuple[str, object]:
    """Load in both error modes; check the error is located and nothing is lost."""
    kind, got = load(path, fmt)
    if kind == "error":
        check_located(got, path, data)
    else:
        assert len(got) == records(fmt, data), f"{len(got)} requests from {records(fmt, data)} records"
        assert got.df["prompt_tokens"].between(1, MAX_TOKENS).all() and got.df["output_tokens"].between(1, MAX_TOKENS).all()
    kind_s, got_s = load(path, fmt, on_error="skip")
    if kind_s == "error":
        check_located(got_s, path, data)
    else:
        assert len(got_s) + got_s.skipped_rows == records(fmt, data)
    return kind, got


def _count_oracle(value) -> int | None:
    """The count a value stands for, or None if it is not an integer in 1..MAX_TOKENS."""
    if value is None or isinstance(value, (bool, list, dict)):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return int(v) if math.isfinite(v) and v == int(v) and 1 <= v <= MAX_TOKENS else None


def _replace_field(fmt: Format, rows: list[dict], i: int, key: str, value) -> list[dict]:
    out = [dict(r) for r in rows]
    out[i][key] = value
    return out


def _request_id(fmt: Format, rows: list[dict], i: int):
    if fmt.id_field is None:
        return i
    v = rows[i][fmt.id_field]
    return int(v) if fmt.name != "vllm" else v


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_valid_files_round_trip(tmp_path, fmt):
    r = random.Random(hash(fmt.name) % 1000)
    for k in range(3):
        rows = fmt.rows(r, r.randint(1, 30))
        data = render(fmt, rows)
        path = tmp_path / f"ok{k}{fmt.suffix}"
        path.write_bytes(data)
        kind, tr = load(path, fmt)
        assert kind == "ok", tr
        by_id = tr.df.set_index("request_id")
        for i, row in enumerate(rows):
            got = by_id.loc[_request_id(fmt, rows, i)]
            for src, col in fmt.counts.items():
                assert got[col] == int(row[src])
            for src, unit in fmt.times.items():
                assert got["arrival_time_s"] == pytest.approx(float(row[src]) * unit)
        if fmt.name == "native":
            back = load_trace(tr.to_csv(tmp_path / f"back{k}.csv"))
            cols = ["request_id", "arrival_time_s", "prompt_tokens", "output_tokens", "session_id", "round",
                    "think_time_s", "slo_ttft_s", "prefix_block_hashes"]
            assert back.df[cols].equals(tr.df[cols])


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_a_replaced_count_loads_as_its_number_or_fails_on_its_line(tmp_path, fmt):
    r = random.Random(15)
    pool = JSON_POOL if fmt.jsonl else TEXT_POOL
    seen = set()
    for k, value in enumerate(pool):
        rows = [{k: v for k, v in row.items() if k != "num_total_tokens"} for row in fmt.rows(r, 6)]
        i = r.randrange(len(rows))
        key = r.choice(list(fmt.counts))
        mutated = _replace_field(fmt, rows, i, key, value)
        data = render(fmt, mutated)
        path = tmp_path / f"m{k}{fmt.suffix}"
        path.write_bytes(data)
        line = i + (1 if fmt.jsonl else 2)
        kind, got = check_outcome(path, fmt, data)
        expected = _count_oracle(value if fmt.jsonl else str(value))
        if expected is None:
            assert kind == "error" and f"line {line}:" in got, (value, got)
        elif kind == "ok":
            assert got.df.set_index("request_id").loc[_request_id(fmt, mutated, i), fmt.counts[key]] == expected
        else:
            assert f"line {line}:" in got, (value, got)
        seen.add(kind)
    assert seen == {"ok", "error"}  # the pool exercised both outcomes


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.times], ids=[f.name for f in FORMATS if f.times])
def test_a_replaced_time_loads_as_its_seconds_or_fails_on_its_line(tmp_path, fmt):
    r = random.Random(16)
    pool = JSON_POOL if fmt.jsonl else TEXT_POOL
    key, unit = next(iter(fmt.times.items()))
    seen = set()
    for k, value in enumerate(pool):
        rows = fmt.rows(r, 5)
        i = r.randrange(len(rows))
        mutated = _replace_field(fmt, rows, i, key, value)
        data = render(fmt, mutated)
        path = tmp_path / f"t{k}{fmt.suffix}"
        path.write_bytes(data)
        kind, got = check_outcome(path, fmt, data)
        try:
            seconds = None if isinstance(value, (bool, list, dict)) or value is None else float(value) * unit
        except (TypeError, ValueError):
            seconds = None
        if seconds is None or not (math.isfinite(seconds) and seconds >= 0):
            assert kind == "error" and f"line {i + (1 if fmt.jsonl else 2)}:" in got, (value, got)
        elif kind == "ok":
            t = got.df.set_index("request_id").loc[_request_id(fmt, mutated, i), "arrival_time_s"]
            assert t == pytest.approx(seconds)
        seen.add(kind)
    assert seen == {"ok", "error"}


def _byte_mutations(data: bytes, r: random.Random, count: int):
    for _ in range(count):
        op = r.randrange(5)
        pos = r.randrange(len(data) + 1)
        if op == 0:
            yield data[:pos] + r.choice(BAD_BYTES) + data[pos:]
        elif op == 1 and data:
            yield data[:pos] + data[pos + 1:]
        elif op == 2:
            yield data[:pos]
        else:
            lines = data.split(b"\n")
            j = r.randrange(len(lines))
            yield b"\n".join(lines[:j] + ([lines[j], lines[j]] if op == 3 else []) + lines[j + 1:])


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_byte_level_damage_is_a_correct_load_or_a_located_error(tmp_path, fmt):
    r = random.Random(17)
    data = render(fmt, fmt.rows(r, 8))
    for k, bad in enumerate(_byte_mutations(data, r, 30)):
        path = tmp_path / f"b{k}{fmt.suffix}"
        path.write_bytes(bad)
        check_outcome(path, fmt, bad)


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_harmless_changes_load_the_same_trace(tmp_path, fmt):
    r = random.Random(18)
    data = render(fmt, fmt.rows(r, 10))
    (tmp_path / f"base{fmt.suffix}").write_bytes(data)
    base = load(tmp_path / f"base{fmt.suffix}", fmt)[1].df
    variants = [b"\xef\xbb\xbf" + data, data.replace(b"\n", b"\r\n"), data + b"\n\n  \n",
                data.replace(b"\n", b"\n\n", 3), data.rstrip(b"\n")]
    for k, v in enumerate(variants):
        path = tmp_path / f"v{k}{fmt.suffix}"
        path.write_bytes(v)
        kind, tr = load(path, fmt)
        assert kind == "ok", tr
        assert tr.df.equals(base), k


# ---- ServeGen: rate windows and dataset.json ------------------------------------------------------------

def _servegen_files(r: random.Random) -> tuple[str, str]:
    lines = []
    for w in range(4):
        if r.random() < 0.3:
            lines.append(f"{600 * w},0.0,nan,,,")
        else:
            shape = r.uniform(0.5, 3)
            rate = r.uniform(0.1, 2)
            dist = r.choice(["Gamma", "Weibull", ""])
            scale = 1 / (rate * shape) if dist == "Gamma" else r.uniform(0.1, 5)
            lines.append(f"{600 * w},{rate},{1 / math.sqrt(shape)},{dist},{shape if dist else ''},"
                         f"{scale if dist else ''}")
    pmf = {str(600 * w): {"input_tokens": str({r.randint(1, 99): 0.5, r.randint(100, 200): 0.5}),
                          "output_tokens": str({r.randint(1, 50): 1.0})} for w in (0, 2)}
    return "\n".join(lines) + "\n", json.dumps(pmf, indent=1)


def test_servegen_damage_is_a_correct_load_or_a_located_error(tmp_path):
    r = random.Random(19)
    seen = {"ok": 0, "error": 0}
    for k in range(45):
        d = tmp_path / f"sg{k}"
        d.mkdir()
        rates, dataset = _servegen_files(r)
        target = r.choice(["rates", "dataset"])
        data = (rates if target == "rates" else dataset).encode()
        if k % 3:  # two in three: damaged
            if r.random() < 0.5:
                data = next(_byte_mutations(data, r, 1))
            else:
                text = data.decode()
                tokens = re.findall(r"[^,\n:{}\"\[\] ]+", text)
                if tokens:
                    tok = r.choice(tokens)
                    data = text.replace(tok, str(r.choice(TEXT_POOL + ["1e8", "1e30", "-600", "Poisson"])), 1).encode()
        (d / "chunk-5-trace.csv").write_bytes(data if target == "rates" else rates.encode())
        (d / "chunk-5-dataset.json").write_bytes(data if target == "dataset" else dataset.encode())
        name = "chunk-5-trace.csv" if target == "rates" else "chunk-5-dataset.json"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tr = load_trace(d / "chunk-5-trace.csv", end_s=2400, seed=k)
            seen["ok"] += 1
            assert len(tr) > 0 and tr.df["arrival_time_s"].between(0, 2400, inclusive="left").all()
        except GpuschedError as e:
            seen["error"] += 1
            assert name in str(e) or "chunk-5" in str(e), str(e)
    assert seen["ok"] >= 10 and seen["error"] >= 8  # both outcomes were exercised


# ---- Helix: cluster INI, throughput CSV, placement INI -----------------------------------------------------

def _cluster(r: random.Random) -> str:
    n = r.randint(2, 4)
    parts = [f"[ComputeNode-{i}]\ntype={r.choice(['T4', 'L4'])}\n" for i in range(n)]
    ends = [("source", 0), (n - 1, "sink")] + [(i, i + 1) for i in range(n - 1)]
    parts += [f"[Link-{a}-{b}]\nbandwidth={r.randint(1, 2000)} * mbps\nlatency={r.randint(0, 9)} * MilliSec\n"
              for a, b in ends]
    return "\n".join(parts)


def _helix_outcome(path: Path, call) -> str:
    try:
        call(path)
        return "ok"
    except GpuschedError as e:
        data = path.read_bytes()
        check_located(str(e), path, data)
        return "error"


def _text_mutations(text: str, r: random.Random, count: int, pool: list[str]):
    data = text.encode()
    for k in range(count):
        if k % 2:
            yield next(_byte_mutations(data, r, 1))
        else:
            tokens = re.findall(r"[^\s,=\[\]*]+", text)
            yield text.replace(r.choice(tokens), r.choice(pool), 1).encode()


INI_POOL = TEXT_POOL + ["-5", "-1 * MilliSec", "1e999", "50%", "%(x)s", "[", "]", "=", "source", "sink", "Link-0",
                        "ComputeNode-0"]


def test_helix_cluster_ini_damage_is_a_correct_load_or_a_located_error(tmp_path):
    r = random.Random(20)
    outcomes = set()
    for k, bad in enumerate(_text_mutations(_cluster(r), r, 60, INI_POOL)):
        path = tmp_path / f"c{k}.ini"
        path.write_bytes(bad)
        outcomes.add(_helix_outcome(path, read_cluster_ini))
    assert outcomes == {"ok", "error"}


def test_helix_throughput_csv_damage_is_a_correct_load_or_a_located_error(tmp_path):
    r = random.Random(21)
    text = "model,cluster_mix,gpu_type,k_layers,T_k_tokens_per_s\n" + "".join(
        f"m,mix,{g},{k},{300 / k:.3f}\n" for g in ("T4", "L4") for k in (1, 2, 3))
    outcomes = set()
    for k, bad in enumerate(_text_mutations(text, r, 60, TEXT_POOL)):
        path = tmp_path / f"t{k}.csv"
        path.write_bytes(bad)
        outcomes.add(_helix_outcome(path, lambda p: load_throughput_table(p, "m", {0: "T4", 1: "L4"}, "mix")))
    assert outcomes == {"ok", "error"}


def test_helix_placement_ini_damage_is_a_correct_load_or_a_located_error(tmp_path):
    r = random.Random(22)
    problem = HelixProblem(6, {i: [100.0 / k for k in range(1, 4)] for i in range(4)},
                           {(i, j): math.inf for i in range(4) for j in range(i + 1, 4)})
    text = "[Settings]\noffset=2\n\n[Solution]\n" + "".join(
        f"compute_node_{i + 2}={list(range(3 * (i % 2), 3 * (i % 2) + 3))}\n" for i in range(4))
    assert load_helix_placement(_write(tmp_path, text), problem)[3] == (3, 6)
    outcomes = set()
    for k, bad in enumerate(_text_mutations(text, r, 60, INI_POOL + ["[0, 2]", "[7]", "[3, 4, 5, 6]"])):
        path = tmp_path / f"p{k}.ini"
        path.write_bytes(bad)
        outcomes.add(_helix_outcome(path, lambda p: load_helix_placement(p, problem)))
    assert outcomes == {"ok", "error"}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "placement.ini"
    p.write_text(text)
    return p

