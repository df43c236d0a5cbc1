"""One command reproduces every registered paper: ``gpusched reproduce [--quick] [--only PAPER...] --out DIR``.

* :mod:`.registry`: :class:`Experiment` (cells, a compute function, the paper's claims, plots) and
  :func:`register`; papers register in ``experiments/reproduce/papers/<paper>.py``.
* :mod:`.executor`: cells run in-process, on a local process pool or on Ray, behind one interface.
* :mod:`.store`: each finished cell persisted atomically; one tidy table per experiment.
* :mod:`.verdict`: the paper's number vs ours: within / outside the tolerance, or direction only.
* :mod:`.report`: ``report.md`` and a static ``report.html`` with the plots embedded.
* :mod:`.run`: :func:`reproduce`, which ties them together; :mod:`.cell` recomputes one cell.
"""
from experiments.reproduce.registry import Experiment, experiments, get, register
from experiments.reproduce.run import RunSummary, reproduce
from experiments.reproduce.verdict import Claim

__all__ = ["Claim", "Experiment", "RunSummary", "experiments", "get", "register", "reproduce"]
