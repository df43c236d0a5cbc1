"""What every experiment tells its user: where it writes, how long it will take, how far it is, what it wrote.

* :func:`announce` -- before the work: the output folder (absolute) and an estimate of the wall time with the
  arithmetic behind it, so a user can stop a run that is too long for them;
* :func:`progress` -- a tqdm bar on stderr for the long loop (off with ``disable``);
* :func:`finish` -- after the work: the files written and the wall time taken;
* :func:`solver_output` -- HiGHS prints a banner when its first model is built in a process; experiments
  silence it unless ``--solver-log`` is given (:func:`add_solver_log_flag`), which also turns the solvers'
  own logs on where the experiment's solver calls take a ``msg`` switch;
* :func:`quick_note` -- a ``--quick`` run on smaller data can point the other way from the full run: the
  experiment compares its quick result with the full run's (the README's measured values) and says so.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from gpusched.solve import silence_highs_banner


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def announce(name: str, out_dir: str | os.PathLike, estimate_s: float | None, basis: str = "") -> float:
    """Print where ``name`` writes and its estimated wall time; return the start time (``time.perf_counter``)."""
    where = Path(out_dir).resolve()
    guess = "" if estimate_s is None else f"; estimated time about {duration(estimate_s)}"
    print(f"{name}: writing to {where}{guess}{f' ({basis})' if basis else ''}", flush=True)
    return time.perf_counter()


def finish(name: str, out_dir: str | os.PathLike, files, started: float) -> None:
    """Print what ``name`` wrote and how long it took."""
    names = ", ".join(str(f) for f in files)
    print(f"{name}: wrote {names} in {Path(out_dir).resolve()} ({duration(time.perf_counter() - started)})",
          flush=True)


def progress(iterable, total: int | None = None, desc: str = "", disable: bool = False):
    """A tqdm progress bar on stderr."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, file=sys.stderr, mininterval=1.0, leave=False)


def add_solver_log_flag(parser) -> None:
    parser.add_argument("--solver-log", action="store_true",
                        help="show the solvers' banners and logs (silenced by default)")


def solver_output(show: bool) -> None:
    """Silence HiGHS's start-up banner for this process unless ``show`` (see
    :func:`gpusched.solve.silence_highs_banner`)."""
    if not show:
        silence_highs_banner()


def quick_note(what: str, quick_value: float, full_value: float, full_source: str) -> str | None:
    """A sentence when a ``--quick`` result has the opposite sign from the full run's (both differences or
    log-ratios measured the same way, positive meaning the same direction); None when they agree."""
    if quick_value * full_value >= 0:
        return None
    return (f"note: --quick points the other way from the full run on {what}: {quick_value:+.3g} here, "
            f"{full_value:+.3g} in the full run ({full_source}); the quick data are too small to read this from")


class ResumableRows:
    """The rows of a long experiment, rewritten to ``<out>/<name>.csv`` after every row so that an interruption
    loses at most the row in progress.

    With ``resume=True`` the rows an interrupted run left there are kept, if that run used the same
    ``settings`` (saved beside it as ``<name>.settings.json``; a run with other settings is refused, naming the
    differences), and :meth:`done` tells the experiment which keys to skip. Without it, an old CSV is removed
    so that it never sits beside new settings.
    """

    def __init__(self, out_dir, name: str, settings: dict, key: tuple[str, ...], resume: bool = False):
        import json

        import pandas as pd

        from gpusched.errors import ConfigError

        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv = self.out / f"{name}.csv"
        self.key = key
        saved = self.out / f"{name}.settings.json"
        normal = json.loads(json.dumps(settings, default=str))
        self.rows: list[dict] = []
        if resume and self.csv.exists():
            earlier = json.loads(saved.read_text()) if saved.exists() else None
            if earlier != normal:
                differ = ({k: (earlier.get(k), v) for k, v in normal.items() if earlier.get(k) != v}
                          if earlier is not None else "no settings file")
                raise ConfigError(f"cannot resume {self.csv}: it was written with other settings (earlier, now): "
                                  f"{differ}; re-run with those settings or choose another --out")
            self.rows = pd.read_csv(self.csv, keep_default_na=False, na_values=[""]).to_dict("records")
        elif self.csv.exists():
            self.csv.unlink()
        saved.write_text(json.dumps(normal, indent=1))

    def _key(self, row: dict) -> tuple:
        return tuple(str(row[k]) for k in self.key)

    def done(self, **key) -> bool:
        """Whether a row with these key values is already there."""
        want = tuple(str(key[k]) for k in self.key)
        return any(self._key(row) == want for row in self.rows)

    def add(self, row: dict) -> None:
        import pandas as pd

        self.rows.append(row)
        pd.DataFrame(self.rows).to_csv(self.csv, index=False)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)
