"""Experiments by name: what each paper registers so that ``gpusched reproduce`` runs it.

An :class:`Experiment` is a set of *cells* (one parameter combination each: a seed, a rate, a policy, a
layout, ...) and a *compute* function that turns one cell's parameters into result rows. Everything else is
read from the table of results: the paper's numbers against ours (:class:`~experiments.reproduce.verdict.Claim`),
the plots, a paragraph of findings.

How a paper joins (no edit of this package): add a module ``experiments/reproduce/papers/<paper>.py`` that calls
:func:`register` at import; :func:`load_papers` imports every module of that folder. Code outside this project
registers the same way from a module named under the entry-point group :data:`ENTRY_POINT_GROUP`.
:mod:`experiments.reproduce.example` is a complete small example.

Rules for ``compute`` (checked where they can be): a module-level function (it is sent by reference to
worker processes and Ray workers); keyword arguments = the cell's parameter names; returns a dict (one row)
or a list of dicts (several rows), values JSON scalars (numbers, strings, booleans, None; numpy scalars are
converted); its result depends only on its parameters (seed inside them), so any backend computes the same
table. Columns that are measurements of this machine (wall times) are named in ``measurements``: they go
to ``timings.csv``, not into the table.
"""
from __future__ import annotations

import importlib
import pickle
import pkgutil
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from gpusched.errors import ConfigError, UnknownNameError

ENTRY_POINT_GROUP = "gpusched.reproduce"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


@dataclass(frozen=True)
class Experiment:
    """One reproduced result.

    name : unique, lower case (``mcsf-synthetic``); also its folder in the output directory.
    paper : the paper it belongs to (``mcsf``), as ``--only`` selects it; several experiments share a paper.
    title : one line for the report.
    cells : ``quick -> list of parameter dicts`` (JSON scalars), in the order they are run and tabled.
    compute : ``compute(**params) -> dict | list[dict]`` (see the module docstring).
    claims : ``quick -> list of Claim`` (the paper's numbers vs ours); a function because quick and full runs
        may compare different things (quick runs smaller instances).
    plots : ``(table, out_dir) -> list of PNG paths`` written into ``out_dir`` (optional).
    findings : ``(table, quick) -> markdown`` written from the data (optional).
    about : a paragraph on the setup and what differs from the paper (markdown).
    measurements : result columns that are timings of this machine, kept out of the deterministic table.
    seconds_per_cell : rough (quick, full) cost of one cell on one core, for the estimate printed up front.
    """

    name: str
    paper: str
    title: str
    cells: Callable[[bool], list[dict]]
    compute: Callable[..., Any]
    claims: Callable[[bool], list] = field(default=lambda quick: [])
    plots: Callable[[pd.DataFrame, Path], list[Path]] | None = None
    findings: Callable[[pd.DataFrame, bool], str] | None = None
    about: str = ""
    measurements: tuple[str, ...] = ()
    seconds_per_cell: tuple[float, float] = (1.0, 60.0)

    def __post_init__(self) -> None:
        for what in ("name", "paper"):
            value = getattr(self, what)
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise ConfigError(f"experiment {what} {value!r} must be lower case letters, digits, '-', '_', '.'")
        if not callable(self.cells) or not callable(self.compute):
            raise ConfigError(f"experiment {self.name!r}: cells and compute must be callables")
        try:
            pickle.dumps(self.compute)
        except Exception as e:  # noqa: BLE001 - any pickling failure means the same fix
            raise ConfigError(f"experiment {self.name!r}: compute {self.compute!r} cannot be sent to worker "
                              f"processes ({type(e).__name__}: {e}); make it a module-level function") from None

    def plan(self, quick: bool) -> list[dict]:
        """The cells of a run, checked: dicts of JSON scalars, no two alike."""
        cells = list(self.cells(quick))
        seen = set()
        for i, params in enumerate(cells):
            if not isinstance(params, dict):
                raise ConfigError(f"experiment {self.name!r}: cell {i} is {params!r}, not a dict of parameters")
            for k, v in params.items():
                if not isinstance(k, str) or not (v is None or isinstance(v, (bool, int, float, str))):
                    raise ConfigError(f"experiment {self.name!r}: cell {i} parameter {k!r}={v!r} is not a JSON "
                                      f"scalar (number, string, boolean or None)")
            key = tuple(sorted(params.items()))
            if key in seen:
                raise ConfigError(f"experiment {self.name!r}: cell {i} {params} appears twice")
            seen.add(key)
        return cells


_EXPERIMENTS: dict[str, Experiment] = {}
_loaded = False


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment``; the same object again is a no-op, another one under a taken name an error."""
    old = _EXPERIMENTS.get(experiment.name)
    if old is not None and old is not experiment and old.compute is not experiment.compute:
        raise ConfigError(f"experiment {experiment.name!r} is already registered by {old.compute.__module__}; "
                          f"{experiment.compute.__module__} cannot take the same name")
    _EXPERIMENTS[experiment.name] = experiment
    return experiment


def load_papers() -> None:
    """Import every module of :mod:`experiments.reproduce.papers` and every entry point of
    :data:`ENTRY_POINT_GROUP` (once per process). A module that fails to import raises :class:`ConfigError`
    naming it: a silently missing paper would be missing from the report."""
    global _loaded
    if _loaded:
        return
    from experiments.reproduce import papers

    modules = [f"{papers.__name__}.{m.name}" for m in pkgutil.iter_modules(papers.__path__) if not m.ispkg]
    modules += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    for name in sorted(modules):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - reported with the module's name
            raise ConfigError(f"reproduce: registration module {name!r} failed to import: "
                              f"{type(e).__name__}: {e}") from e
    _loaded = True


def experiments(only: list[str] | None = None) -> list[Experiment]:
    """Registered experiments, ordered by paper then name; ``only`` keeps those whose paper or name is listed
    (an unknown entry raises :class:`UnknownNameError` listing the choices)."""
    load_papers()
    chosen = sorted(_EXPERIMENTS.values(), key=lambda e: (e.paper, e.name))
    if not only:
        return chosen
    known = {e.paper for e in chosen} | {e.name for e in chosen}
    unknown = [o for o in only if o not in known]
    if unknown:
        raise UnknownNameError(f"reproduce --only {unknown}: no such paper or experiment; registered papers: "
                               f"{', '.join(sorted({e.paper for e in chosen}))}; experiments: "
                               f"{', '.join(e.name for e in chosen)}")
    return [e for e in chosen if e.paper in only or e.name in only]


def get(name: str) -> Experiment:
    """The experiment registered as ``name``."""
    load_papers()
    try:
        return _EXPERIMENTS[name]
    except KeyError:
        raise UnknownNameError(f"unknown experiment {name!r}; registered: {', '.join(sorted(_EXPERIMENTS))}") from None
