"""Results of a pipelined run (:mod:`simulators.pipeline`): per-request and per-node tables and a summary."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

REQUEST_COLUMNS = ["request_id", "arrival_time_s", "scheduled_time_s", "first_token_time_s", "finish_time_s",
                   "prompt_tokens", "output_tokens", "generated_tokens", "prompt_latency_s", "decode_latency_s",
                   "num_stages", "path", "status"]
NODE_COLUMNS = ["node", "start_layer", "end_layer", "busy_s", "utilization", "batches", "tokens",
                "kv_peak_slots", "kv_capacity_slots"]


@dataclass
class PipelineResult:
    """One pipelined run.

    requests : one row per launched request. ``prompt_latency_s`` = first token - arrival (queueing at the
        coordinator included); ``decode_latency_s`` = mean time of one decode step (token out of the
        coordinator -> back at it); ``status`` is ``finished`` or why not.
    nodes : per node: busy time, utilisation over the run, batches, tokens processed, peak KV reserved.
    summary : ``decode_throughput_tokens_per_s`` (decode-step tokens reaching the sink in
        ``[warmup_s, duration_s]`` / window length), counts, and the wall time of the run.
    batches : one row per batch if the run recorded them, else empty.
    """

    requests: pd.DataFrame
    nodes: pd.DataFrame
    summary: dict
    batches: pd.DataFrame

    @property
    def decode_throughput_tokens_per_s(self) -> float:
        return self.summary["decode_throughput_tokens_per_s"]


def _nan(x):
    return math.nan if x is None else x


def build_result(engine, wall_time_s: float) -> PipelineResult:
    rows = []
    for f in engine.flights:
        s = f.seq
        steps = max(s.generated_tokens - 1, 0)
        rows.append({
            "request_id": s.request_id, "arrival_time_s": s.arrival_time_s,
            "scheduled_time_s": _nan(s.scheduled_time_s), "first_token_time_s": _nan(s.first_token_time_s),
            "finish_time_s": _nan(s.finish_time_s), "prompt_tokens": s.prompt_tokens,
            "output_tokens": s.output_tokens, "generated_tokens": s.generated_tokens,
            "prompt_latency_s": _nan(s.first_token_time_s) - s.arrival_time_s,
            "decode_latency_s": f.decode_latency_sum_s / steps if steps else math.nan,
            "num_stages": len(f.stages) if f.stages else 0,
            "path": ">".join(str(st.node) for st in f.stages) if f.stages else "",
            "status": f.status,
        })
    requests = pd.DataFrame(rows, columns=REQUEST_COLUMNS)
    horizon = engine.duration_s
    nodes = pd.DataFrame([{
        "node": n.name, "start_layer": n.spec.start_layer, "end_layer": n.spec.end_layer, "busy_s": n.busy_s,
        "utilization": n.busy_s / horizon, "batches": n.batches, "tokens": n.tokens,
        "kv_peak_slots": n.kv_peak, "kv_capacity_slots": n.spec.kv_capacity_slots,
    } for n in engine.nodes.values()], columns=NODE_COLUMNS)
    window = engine.duration_s - engine.warmup_s
    fin = requests[requests["status"] == "finished"]
    summary = {
        "mode": engine.mode, "router": engine.router.name, "duration_s": engine.duration_s,
        "warmup_s": engine.warmup_s,
        "decode_throughput_tokens_per_s": engine.decode_tokens_in_window / window,
        "decode_tokens_in_window": engine.decode_tokens_in_window,
        "launched": len(requests), "finished": len(fin),
        "rejected": int(requests["status"].str.startswith("rejected").sum()),
        "unfinished": int(requests["status"].str.startswith("unfinished").sum()),
        "prompt_latency_p50_s": _pct(requests["prompt_latency_s"], 50),
        "prompt_latency_p95_s": _pct(requests["prompt_latency_s"], 95),
        "decode_latency_p50_s": _pct(requests["decode_latency_s"], 50),
        "decode_latency_p95_s": _pct(requests["decode_latency_s"], 95),
        "mean_stages": float(requests.loc[requests["num_stages"] > 0, "num_stages"].mean())
        if (requests["num_stages"] > 0).any() else math.nan,
        "wall_time_s": wall_time_s,
    }
    batches = pd.DataFrame(engine.batch_log or [], columns=["time_s", "node", "items", "tokens", "duration_s"])
    return PipelineResult(requests, nodes, summary, batches)


def _pct(col: pd.Series, q: float) -> float:
    v = col.dropna().to_numpy(float)
    return float(np.percentile(v, q)) if len(v) else math.nan
