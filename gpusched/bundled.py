"""The registry of bundled real traces: name -> file under ``traces/``, default arguments, description.

Provenance and licences of the files are in ``traces/README.md``; :func:`gpusched.workload.load_trace`
loads them by name and :func:`gpusched.workload.bundled_trace_summary` lists them.
"""
from __future__ import annotations

from pathlib import Path

from gpusched.errors import TraceError, UnknownNameError
from gpusched.paths import TRACES_ENV_VAR, traces_dir

# name -> (relative path, fixed loader kwargs, description)
BUNDLED: dict[str, tuple[str, dict, str]] = {
    "azure-conv-2023": ("azure_llm_2023/AzureLLMInferenceTrace_conv.csv", {},
                        "Azure LLM inference 2023, conversation (~58 min)"),
    "azure-code-2023": ("azure_llm_2023/AzureLLMInferenceTrace_code.csv", {},
                        "Azure LLM inference 2023, code completion (~57 min)"),
    "mooncake-conversation": ("mooncake_fast25/conversation_trace.jsonl", {},
                              "Mooncake FAST'25 conversation trace with 512-token prefix-block hashes"),
    "sharegpt-lengths": ("length_stats/sharegpt_8k_filtered_stats_llama2_tokenizer.csv", {},
                         "ShareGPT length table, synthetic arrivals"),
    "arxiv-lengths": ("length_stats/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv", {},
                      "arXiv-summarisation length table, synthetic arrivals"),
    "servegen-m-large": ("servegen_m_large", {},
                         "Alibaba ServeGen m-large per-client rate windows, sampled arrivals"),
}
#: Defaults used for bundled names when the caller does not pass them (documented in the summary).
BUNDLED_DEFAULTS: dict[str, dict] = {
    "sharegpt-lengths": {"rate_per_s": 5.0, "seed": 0},
    "arxiv-lengths": {"rate_per_s": 5.0, "seed": 0},
    "servegen-m-large": {"seed": 0, "start_s": 0.0, "end_s": 3600.0},
}


def list_bundled_traces() -> list[str]:
    """Names accepted by :func:`gpusched.workload.load_trace` besides paths."""
    return sorted(BUNDLED)


def bundled_trace_path(name: str) -> Path:
    """Where the bundled trace ``name`` lives (raises if the name is unknown or the file is absent)."""
    if name not in BUNDLED:
        raise UnknownNameError(f"unknown bundled trace {name!r}; known: {', '.join(list_bundled_traces())} "
                               f"(or pass a file path)")
    path = traces_dir() / BUNDLED[name][0]
    if not path.exists():
        raise TraceError(f"bundled trace {name!r} not found at {path}; set ${TRACES_ENV_VAR} to the traces folder")
    return path


def bundled_arguments(name: str, given: dict) -> dict:
    """The loader arguments for bundled ``name``: its defaults, its fixed arguments, then ``given``."""
    return {**BUNDLED_DEFAULTS.get(name, {}), **BUNDLED[name][1], **given}
