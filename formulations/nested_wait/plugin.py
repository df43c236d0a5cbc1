"""Nested WAIT's policies by name for the engines and the command line (entry point ``gpusched.policies``).

``wait`` and ``nested-wait`` calibrate themselves from the run's :class:`~gpusched.registry.BuildContext` (the trace's
lengths and rate, the instance's step-time model and KV capacity): see :mod:`.calibrate`. Knobs are the keyword
arguments of :func:`.calibrate.calibrated_wait` / :func:`.calibrate.calibrated_nested_wait` (e.g. ``thresholds``,
``mode="no-wait"``, ``max_in_flight``, ``num_segments``, ``max_wait_s``, ``drain``); ``gpusched policies`` lists them
with their defaults. On the command line a list is text: ``--scheduler-knob thresholds=3,2``.
"""
from gpusched import registry

from .calibrate import calibrated_nested_wait, calibrated_wait

SOURCE = "Ao, Luo, Simchi-Levi, Wang, arXiv 2504.11320 (shared/papers/nested_wait.md)"

registry.register("scheduler", "wait", calibrated_wait,
                  "WAIT (Algorithm 1): per-type stage thresholds from the fluid model, known output lengths", SOURCE)
registry.register("scheduler", "nested-wait", calibrated_nested_wait,
                  "Nested WAIT (Algorithm 2): segment thresholds with resident boundary queues, unknown lengths",
                  SOURCE)
