"""Policies by name: where a formulation makes itself available to every engine and to the command line.

A policy is registered under a *kind* and a *name*, with a factory that builds a fresh object for one run:

================  ======================================================  ===============================
kind              the object implements                                   who asks
================  ======================================================  ===============================
``scheduler``     :class:`gpusched.policy.BatchScheduler`                 an instance of the serving engine
``router``        :class:`gpusched.policy.Router`                         the serving engine, per arrival
``gate``          :class:`gpusched.policy.AdmissionGate`                  the serving engine, per arrival
``placement``     :class:`gpusched.policy.PrefillPlacement`               the session engine, per prefill
``prefill-queue`` :class:`gpusched.policy.BatchScheduler` of a prefill     the session engine's prefill workers
                  worker's queue (one prefill per step)
``dispatcher``    :class:`gpusched.policy.ClusterDispatcher`              the dispatch engine, per arrival/slot
================  ======================================================  ===============================

New kinds are plain strings; a paper that needs another decision (for example where an incremental
prefill runs) registers under its own kind and the engine that understands it asks for that kind.

A factory is called as ``factory(context, **knobs)``: ``context`` is a :class:`BuildContext` (the trace the
run will serve and the instance the policy runs on, so that a policy can calibrate itself, e.g. thresholds
from the trace's lengths and the step-time model), ``knobs`` the user's keyword arguments.

How a package registers: the engines' own baselines register when their module is imported; a paper's
package (``formulations/<paper>``) registers in a small module named in ``pyproject.toml`` under the entry
point group :data:`PLUGIN_GROUP`, so that the core and the engines find it without importing
``formulations`` (the import rules forbid it). Research code outside this project registers the same way,
or by calling :func:`register` before it simulates.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from gpusched.errors import ConfigError, UnknownNameError

PLUGIN_GROUP = "gpusched.policies"
KINDS = ("scheduler", "router", "gate", "placement", "prefill-queue", "dispatcher")


@dataclass(frozen=True)
class BuildContext:
    """What a policy may read when it is built for one run.

    trace : the :class:`gpusched.workload.Trace` the run serves (None when unknown, e.g. built by hand).
    step_model : the :class:`gpusched.perf.StepTimeModel` of the instance the policy runs on (schedulers).
    num_kv_blocks, block_size_tokens : that instance's KV capacity.
    num_instances : instances in the cluster (routers, gates).
    seed : the run's seed; a randomised policy draws from it.
    """

    trace: Any = None
    step_model: Any = None
    num_kv_blocks: int | None = None
    block_size_tokens: int = 16
    num_instances: int = 1
    seed: int = 0


@dataclass(frozen=True)
class PolicyEntry:
    """One registered policy. ``summary``: one line for listings; ``source``: the paper or engine it follows."""

    kind: str
    name: str
    factory: Callable[..., Any] = field(repr=False)
    summary: str
    source: str = ""

    def build(self, context: BuildContext | None = None, /, **knobs) -> Any:
        """A fresh policy object for one run; bad knobs raise :class:`ConfigError` naming them."""
        try:
            return self.factory(context or BuildContext(), **knobs)
        except TypeError as err:
            raise ConfigError(f"{self.kind} {self.name!r} does not take the knobs {sorted(knobs)}: {err}") from None


_ENTRIES: dict[tuple[str, str], PolicyEntry] = {}
_plugins_loaded = False


def register(kind: str, name: str, factory: Callable[..., Any], summary: str, source: str = "") -> PolicyEntry:
    """Register ``factory`` under ``(kind, name)``; names are case-insensitive.

    Registering the same name again with the same factory is a no-op (a module imported twice); a
    different factory under a taken name raises :class:`ConfigError`, naming both.
    """
    key = (kind, name.lower())
    entry = PolicyEntry(kind, name.lower(), factory, summary, source)
    old = _ENTRIES.get(key)
    if old is not None and old.factory is not factory:
        raise ConfigError(f"{kind} {name!r} is already registered by {_origin(old.factory)}; "
                          f"{_origin(factory)} cannot take the same name")
    _ENTRIES[key] = entry
    return entry


def load_plugins() -> None:
    """Import every module declared under the :data:`PLUGIN_GROUP` entry point group (once per process).

    A plugin that fails to import raises :class:`ConfigError` naming it: a silently missing policy would
    surface later as an unknown name.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            ep.load()
        except Exception as err:  # noqa: BLE001 - reported with the plugin's name, then re-raised as ours
            _plugins_loaded = False
            raise ConfigError(f"policy plugin {ep.name!r} ({ep.value}) failed to import: "
                              f"{type(err).__name__}: {err}") from err


def get(kind: str, name: str) -> PolicyEntry:
    """The entry ``(kind, name)``; an unknown name raises :class:`UnknownNameError` listing the choices and
    the closest match."""
    key = (kind, str(name).lower())
    if key not in _ENTRIES:
        load_plugins()
    try:
        return _ENTRIES[key]
    except KeyError:
        choices = names(kind)
        close = difflib.get_close_matches(str(name).lower(), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown {kind} {name!r}{hint} Registered: {', '.join(choices) or 'none'} "
                               f"(or pass an object implementing the protocol; list all with "
                               f"`gpusched policies`)") from None


def build(kind: str, name: str, context: BuildContext | None = None, /, **knobs) -> Any:
    """``get(kind, name).build(context, **knobs)``; a policy may take a knob called ``name`` (or ``kind``)."""
    return get(kind, name).build(context, **knobs)


def names(kind: str) -> list[str]:
    """Registered names of ``kind``, sorted (plugins included)."""
    load_plugins()
    return sorted(n for k, n in _ENTRIES if k == kind)


def entries(kind: str | None = None) -> list[PolicyEntry]:
    """Every registered entry (of ``kind``), sorted by kind then name (plugins included)."""
    load_plugins()
    return [_ENTRIES[k] for k in sorted(_ENTRIES) if kind is None or k[0] == kind]


def _origin(factory: Callable) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"
