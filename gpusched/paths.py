"""Where gpusched's bundled data lives: measured profiles (package data) and real traces (repo `traces/`).

Bundled profiles (see each folder's README for provenance and licence):

- ``h100``: our own H100 80GB op tables and whole-step checks (``data/profiles/h100``).
- ``rtx4090`` / ``rtxpro6000``: LLMServingSim 2.0's layerwise vLLM profiles of Llama-3.1-8B.
- ``vllm-rtx4090``: LLMServingSim 2.0's measured vLLM run on the RTX 4090 (a ``validate-vllm`` bench dir),
  ``vllm-rtx4090-seqs128`` the same workload at ``max_num_seqs`` 128 and ``vllm-rtxpro6000`` on an RTX PRO
  6000 (neither records its KV block count).
"""
from __future__ import annotations

import os
from pathlib import Path

from gpusched.errors import UnknownNameError

DATA_DIR = Path(__file__).resolve().parent / "data"
PROFILES_DIR = DATA_DIR / "profiles"
_LSS = PROFILES_DIR / "llmservingsim"

BUNDLED_PROFILES: dict[str, Path] = {
    "h100": PROFILES_DIR / "h100",
    "rtx4090": _LSS / "profiler/perf/RTX4090/meta-llama/Llama-3.1-8B/bf16",
    "rtxpro6000": _LSS / "profiler/perf/RTXPRO6000/meta-llama/Llama-3.1-8B/bf16",
}
BUNDLED_BENCHES: dict[str, Path] = {
    "vllm-rtx4090": _LSS / "bench/examples/RTX4090/Llama-3.1-8B",
    "vllm-rtx4090-seqs128": _LSS / "bench/results/rtx4090-llama8b-tp1",
    "vllm-rtxpro6000": _LSS / "bench/examples/RTXPRO6000/Llama-3.1-8B",
}


TRACES_ENV_VAR = "GPUSCHED_TRACES_DIR"


def traces_dir() -> Path:
    """The folder of bundled traces: ``$GPUSCHED_TRACES_DIR`` if set, else the repository's ``traces/``."""
    override = os.environ.get(TRACES_ENV_VAR)
    return Path(override) if override else Path(__file__).resolve().parents[1] / "traces"


def resolve_profile(name_or_path: str | os.PathLike) -> Path:
    """A bundled profile name (``h100``, ``rtx4090``, ``rtxpro6000``) or an existing directory -> its path."""
    return _resolve(name_or_path, BUNDLED_PROFILES, "profile")


def resolve_bench(name_or_path: str | os.PathLike) -> Path:
    """A bundled measured-run name (``vllm-rtx4090``) or an existing directory -> its path."""
    return _resolve(name_or_path, BUNDLED_BENCHES, "measured run")


def _resolve(name_or_path, bundled: dict[str, Path], what: str) -> Path:
    key = str(name_or_path).lower()
    if key in bundled:
        return bundled[key]
    path = Path(name_or_path)
    if path.is_dir():
        return path
    raise UnknownNameError(
        f"{what} {str(name_or_path)!r} is neither a bundled name ({', '.join(sorted(bundled))}) "
        f"nor an existing directory; pass one of those names or a directory path"
    )
