"""Error classes of gpusched.

Every error raised on bad input is a subclass of :class:`GpuschedError`, so research code can catch the
whole family at once. Messages name the offending value and say what to do about it.
"""
from __future__ import annotations


class GpuschedError(Exception):
    """Base class of every error gpusched raises on purpose."""


class ConfigError(GpuschedError, ValueError):
    """An input (GPU name, model name, cluster, engine knob) that cannot be used as given."""


class UnknownNameError(ConfigError, KeyError):
    """A catalogue lookup (GPU, model, trace, scheduler, ...) found no entry under that name."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DoesNotFitError(ConfigError):
    """A model, a request or a placement needs more memory than the hardware offers."""


class TraceError(GpuschedError, ValueError):
    """A trace file or trace table that cannot be read: names the file, the line and the field."""


class ProfileError(GpuschedError, ValueError):
    """A measured profile table that is missing, malformed, or does not cover the requested model/TP."""


class KVCacheOverflowError(GpuschedError, RuntimeError):
    """A block allocation asked for more KV blocks than are free."""


class SolverError(GpuschedError, RuntimeError):
    """Base class of solver failures; carries the solver's own status text."""


class InfeasibleError(SolverError):
    """The model has no feasible solution."""


class UnboundedError(SolverError):
    """The objective is unbounded."""


class SolverTimeoutError(SolverError):
    """The time limit was reached before any feasible solution was found."""
