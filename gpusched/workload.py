"""Workloads in one import: load a trace by bundled name or path, and the request schema.

This module is the front door; each idea lives in its own module and is re-exported here:

- :mod:`gpusched.trace`: :class:`Request`, :class:`Trace` and the schema's columns and rules.
- :mod:`gpusched.loaders`: readers of real trace formats, sniffed from a file's content.
- :mod:`gpusched.servegen`: ServeGen rate windows sampled into requests.
- :mod:`gpusched.bundled`: the bundled traces by name.
- :mod:`gpusched.synthetic` (with :mod:`gpusched.arrivals`, :mod:`gpusched.lengths`): seeded generators.

Imports run one way (each module imports only those before it, at module level)::

    trace, bundled, arrivals  ->  rows  ->  lengths  ->  synthetic, servegen  ->  loaders  ->  workload
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from gpusched import loaders
from gpusched.bundled import (BUNDLED, BUNDLED_DEFAULTS, bundled_arguments, bundled_trace_path,  # noqa: F401
                              list_bundled_traces)
from gpusched.errors import UnknownNameError
from gpusched.paths import traces_dir  # noqa: F401 (re-exported)
from gpusched.trace import OPTIONAL_COLUMNS, PERCENTILES, REQUIRED_COLUMNS, Request, Trace  # noqa: F401

__all__ = ["load_trace", "bundled_trace_summary", "list_bundled_traces", "bundled_trace_path", "traces_dir",
           "Request", "Trace", "REQUIRED_COLUMNS", "OPTIONAL_COLUMNS"]


def load_trace(name_or_path: str | os.PathLike | list, **kwargs: Any) -> Trace:
    """Load a bundled trace by name, or a trace file/folder by path (format sniffed from its content).

    Recognised formats (see :mod:`gpusched.loaders`): native CSV (written by :meth:`Trace.to_csv`), Azure LLM
    inference 2023 CSV, Mooncake JSONL, SageServe-style CSV, Vidur request-trace CSV, ServeGen per-client
    rate windows (a ``chunk-<id>-trace.csv``, a list of them or a folder), length-statistics CSVs and vLLM
    benchmark ``requests.jsonl``. A file without timestamps needs ``rate_per_s=`` (seeded Poisson arrivals;
    ``seed=``). Pass ``format=`` to skip sniffing and ``on_error="skip"`` to drop bad rows (counted in
    ``trace.skipped_rows``, with a warning) instead of raising :class:`~gpusched.errors.TraceError`.
    """
    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        name = name_or_path
        trace = loaders.load_path(bundled_trace_path(name), **bundled_arguments(name, kwargs))
        return Trace(trace.df, name=name, source=trace.source, prefix_block_tokens=trace.prefix_block_tokens,
                     skipped_rows=trace.skipped_rows, meta={**trace.meta, "bundled": name})
    if isinstance(name_or_path, str) and not Path(name_or_path).exists() and os.sep not in name_or_path \
            and not Path(name_or_path).suffix:
        raise UnknownNameError(f"unknown trace {name_or_path!r}: not a bundled name "
                               f"({', '.join(list_bundled_traces())}) and not an existing path")
    return loaders.load_path(name_or_path, **kwargs)


def bundled_trace_summary() -> pd.DataFrame:
    """One row per bundled trace, loaded with its defaults (``note`` says the rate/window used)."""
    rows = []
    for name in list_bundled_traces():
        tr = load_trace(name)
        row = tr.describe()
        d = BUNDLED_DEFAULTS.get(name, {})
        if "rate_per_s" in d:
            note = f"synthetic Poisson arrivals at {d['rate_per_s']:g} req/s (seed {d['seed']})"
        elif "end_s" in d:
            note = (f"arrivals sampled in [{d['start_s']:g}, {d['end_s']:g}) s for clients "
                    f"{tr.meta.get('clients')} (seed {d['seed']})")
        else:
            note = "recorded arrivals"
        row["note"] = note
        rows.append(row)
    return pd.DataFrame(rows)
