"""Run folders: one output folder per run, checked before the work starts, with a ``run.json`` record.

:func:`prepare_out_dir` is called before a run does any work. It refuses, with a message naming the path
and the fix, an ``--out`` that is a file, sits under a file, cannot be created or written (``/proc``,
a read-only mount, no permission), or already holds an earlier run. An earlier run is never
overwritten unless the caller passes ``overwrite=True`` (``--overwrite``): a folder that holds a
``run.json``, or any file at all, counts as one; an empty or new folder is used as is. Refusing, rather
than writing a numbered sibling folder, keeps every result at the path the user asked for.

:func:`write_run_json` records what is needed to reproduce the run: the command line and parsed
arguments, the seed, package versions, the git commit of the code (with ``-dirty`` when the working
tree has changes; ``null`` outside a git checkout), the fingerprint of the trace served, start time
and wall time, plus whatever the command adds (engine, KV blocks, summary, overload verdict).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from gpusched.errors import ConfigError

__all__ = ["prepare_out_dir", "write_run_json", "trace_fingerprint", "package_versions", "git_commit"]

RUN_FILE = "run.json"
_PACKAGES = ("gpusched", "numpy", "pandas", "simpy", "numba", "highspy", "pulp", "ortools", "matplotlib")
_SYSTEM_ROOTS = ("/proc", "/sys", "/dev")


def prepare_out_dir(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """Create ``out`` (and its parents) and check it can take this run's files; return it.

    Raises :class:`ConfigError` (naming ``flag``, the path and the fix) when ``out`` is a file, sits under a
    file, lies in a system folder, cannot be created or written, or holds an earlier run and ``overwrite``
    is False.
    """
    path = Path(out).expanduser()
    resolved = path.resolve()
    if any(resolved == Path(root) or Path(root) in resolved.parents for root in _SYSTEM_ROOTS):
        raise ConfigError(f"{flag} {str(out)!r} is inside {resolved.parts[0]}{resolved.parts[1]}, a system folder; "
                          f"pass a folder of your own, e.g. {flag} results/run1")
    for parent in [resolved, *resolved.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is" if parent == resolved else f"is under {str(parent)!r}, which is"
            raise ConfigError(f"{flag} {str(out)!r} {where} a file, not a folder; pass a folder path "
                              f"(it is created if missing)")
    if resolved.is_dir() and any(resolved.iterdir()) and not overwrite:
        earlier = resolved / RUN_FILE
        what = "an earlier run (run.json)" if earlier.is_file() else "files"
        raise ConfigError(f"{flag} {str(out)!r} already holds {what}; pass --overwrite to replace them, or a new "
                          f"folder, e.g. {flag} {str(out).rstrip('/')}-2")
    try:
        resolved.mkdir(parents=True, exist_ok=True)
        probe = resolved / ".gpusched-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{flag} {str(out)!r} cannot be written ({err.strerror or err}); pass a folder you "
                          f"can write to") from None
    return resolved


def package_versions() -> dict[str, str | None]:
    """Installed versions of gpusched and the libraries whose behaviour its results depend on."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), ``-dirty`` if modified;
    None when it is not a git checkout or git is missing."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def trace_fingerprint(trace) -> str:
    """SHA-256 of the served requests (id, arrival, prompt and output tokens, in order): two runs with the
    same fingerprint served the same requests, whatever file or transformation produced them."""
    import pandas as pd

    columns = ["request_id", "arrival_time_s", "prompt_tokens", "output_tokens"]
    table = trace.df[columns].astype({"request_id": str})
    digest = hashlib.sha256(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def write_run_json(out_dir: str | os.PathLike, args: dict, started_at: float, wall_time_s: float,
                   trace=None, command: list[str] | None = None, **extra: Any) -> Path:
    """Write ``out_dir/run.json`` (see the module docstring) and return its path. ``command``: the argument
    list the run was started with (default ``sys.argv``)."""
    argv = list(command) if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]
    record = {
        "command": " ".join(argv),
        "arguments": _jsonable(args),
        "seed": args.get("seed"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "wall_time_s": round(float(wall_time_s), 3),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "platform": platform.platform(),
    }
    if trace is not None:
        record["trace"] = {"name": trace.name, "source": str(trace.source), "requests": len(trace),
                           "fingerprint": trace_fingerprint(trace)}
    record.update(_jsonable(extra))
    path = Path(out_dir) / RUN_FILE
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    """``value`` with paths, numpy scalars, tuples and non-finite floats made JSON-safe."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not callable(v)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
