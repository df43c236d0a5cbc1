"""One interface to run cells: in this process, in a local process pool, or on Ray.

``make_executor(backend, workers, address)`` returns an object with ``run(tasks)``, which yields
``(task, outcome)`` as cells finish (in any order), and ``close()``. Every backend calls the same
:func:`run_cell` on the same parameters, so a deterministic cell gives the same rows everywhere; only the
order in which cells finish differs, and the store keys results by parameters, not by order.

* ``inprocess`` (default): one cell after another, here.
* ``pool``: ``concurrent.futures.ProcessPoolExecutor`` with ``workers`` processes (default: the CPU count),
  started with ``spawn`` (solvers run threads; forking a threaded process can deadlock).
* ``ray``: one Ray task per cell (1 CPU each). Without ``address`` a local Ray instance with ``workers`` CPUs
  is started (and stopped at ``close``); with ``address`` (``"auto"``, ``"ray://host:10001"``, ...) the cells
  run on that cluster, which must have this package installed, with at most ``workers`` in flight if given.
  Install with ``pip install "gpusched[ray]"``.

A cell that raises is reported with its traceback (not persisted, so the next run tries it again); a worker
that dies (killed, out of memory) fails its cell the same way, and the other cells go on.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import socket
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Callable, Iterable, Iterator

from gpusched.errors import ConfigError

BACKENDS = ("inprocess", "pool", "ray")


@dataclass(frozen=True)
class Task:
    """One cell to compute: the experiment's name, its ``compute`` function and the cell's parameters."""

    experiment: str
    fn: Callable[..., Any]
    params: dict


@dataclass(frozen=True)
class CellOutcome:
    """What running a cell gave: result rows (None if it failed), wall time, who ran it, what it printed."""

    rows: list[dict] | None
    wall_s: float
    worker: str
    log: str = ""
    error: str | None = None


def run_cell(fn: Callable[..., Any], params: dict) -> CellOutcome:
    """Call ``fn(**params)``, capturing what it prints (Python's streams and the process's own file descriptors,
    where solver libraries print their banners), timing it, and normalising its result to a list of rows. An
    exception becomes ``error`` (the traceback); KeyboardInterrupt and SystemExit pass through."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    start = time.perf_counter()
    with _captured_output() as captured:
        try:
            out = fn(**params)
            rows = [out] if isinstance(out, dict) else list(out)
            bad = [r for r in rows if not isinstance(r, dict)]
            if bad:
                raise ConfigError(f"{fn.__module__}.{fn.__qualname__} returned {bad[0]!r}; return a dict or a "
                                  f"list of dicts (one per result row)")
            error = None
        except Exception:  # noqa: BLE001 - reported per cell; the run goes on
            rows, error = None, traceback.format_exc()
    return CellOutcome(rows, time.perf_counter() - start, worker, captured.text, error)


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_output():
    """Send stdout and stderr, both Python's and file descriptors 1 and 2, to a temporary file; its text is
    in the yielded object's ``text`` afterwards."""
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        stream = io.TextIOWrapper(os.fdopen(os.dup(tmp.fileno()), "wb", buffering=0), write_through=True)
        try:
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield captured
        finally:
            stream.flush()
            _flush_c_stdio()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            stream.close()
            tmp.seek(0)
            captured.text = tmp.read().decode("utf-8", errors="replace")


def _flush_c_stdio() -> None:
    """Flush the C library's buffered stdout (a solver's printf) before the descriptors are put back."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (not POSIX): nothing buffered there to lose
        pass


class InProcessExecutor:
    """Cells one after another in this process."""

    name = "inprocess"

    def __init__(self) -> None:
        self.workers = 1

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, CellOutcome]]:
        for task in tasks:
            yield task, run_cell(task.fn, task.params)

    def close(self, wait: bool = True) -> None:
        pass


class PoolExecutor:
    """Cells on ``workers`` local processes (spawned)."""

    name = "pool"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, CellOutcome]]:
        futures = {self._pool.submit(run_cell, t.fn, t.params): t for t in tasks}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except BrokenProcessPool as e:  # a worker died: every cell not finished fails with it
                outcome = CellOutcome(None, math.nan, "?", "", f"a worker process died ({e}); run again to "
                                                               f"compute this cell")
            yield futures[future], outcome

    def close(self, wait: bool = True) -> None:
        """Stop the workers; ``wait=False`` (an interrupted run) does not wait for the cells in flight."""
        self._pool.shutdown(wait=wait, cancel_futures=True)


class RayExecutor:
    """Cells as Ray tasks, on a local Ray instance or an existing cluster (``address``)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'gpusched[ray]' (or 'ray[default]')") from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if address is None:
                ray.init(num_cpus=workers or os.cpu_count() or 1, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        self.workers = workers or int(ray.cluster_resources().get("CPU", 1))
        # a worker lost mid-cell is retried by Ray (cells are deterministic, so a retry is safe)
        self._remote = ray.remote(num_cpus=1, max_retries=2)(run_cell)

    def run(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, CellOutcome]]:
        ray = self._ray
        queue = list(tasks)
        queue.reverse()  # pop() from the end keeps plan order
        in_flight: dict = {}
        while queue or in_flight:
            while queue and len(in_flight) < self.workers:
                task = queue.pop()
                in_flight[self._remote.remote(task.fn, task.params)] = task
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            task = in_flight.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as e:  # the task's worker died and retries were exhausted
                outcome = CellOutcome(None, math.nan, "?", "", f"Ray could not run the cell: {e}")
            yield task, outcome

    def close(self, wait: bool = True) -> None:
        """Stop the local Ray instance this executor started (an existing cluster is left running)."""
        if self._started:
            self._ray.shutdown()


def make_executor(backend: str = "inprocess", workers: int | None = None, address: str | None = None):
    """The executor for ``backend`` (one of :data:`BACKENDS`)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers={workers!r} must be a positive integer")
    if address is not None and backend != "ray":
        raise ConfigError(f"--address {address!r} is for --backend ray (got --backend {backend})")
    if backend == "inprocess":
        if workers not in (None, 1):
            raise ConfigError(f"--backend inprocess runs one cell at a time; use --backend pool or ray for "
                              f"--workers {workers}")
        return InProcessExecutor()
    if backend == "pool":
        return PoolExecutor(workers)
    if backend == "ray":
        return RayExecutor(workers, address)
    raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
