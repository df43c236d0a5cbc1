"""A complete small experiment, to show how a paper registers (and to test the machinery): the M/M/1 queue.

The "paper" is queueing theory: with Poisson arrivals at rate ``rho`` and exponential service at rate 1, the
mean time in system is ``1 / (1 - rho)``. Each cell simulates ``customers`` customers at one load and seed
(Lindley's recursion, vectorised); the claims compare the mean over seeds with the formula.

It is *not* in ``papers/``, so ``gpusched reproduce`` does not run it; pass it explicitly::

    from experiments.reproduce import reproduce
    from experiments.reproduce.example import EXPERIMENT
    reproduce("results/example", experiments=[EXPERIMENT])

A paper's module in ``experiments/reproduce/papers/`` looks the same, and calls ``register(EXPERIMENT)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from experiments.reproduce.registry import Experiment
from experiments.reproduce.verdict import Claim

LOADS = (0.5, 0.8)


def mm1_cell(rho: float, seed: int, customers: int) -> dict:
    """Mean time in system (s) of ``customers`` customers of an M/M/1 queue at load ``rho`` (service rate 1).

    Waiting time by Lindley's recursion ``W[k+1] = max(0, W[k] + S[k] - A[k+1])``, written as a random walk
    reflected at 0: ``W = X - min(0, running min of X)`` with ``X = cumsum(S[k] - A[k+1])``.
    """
    rng = np.random.default_rng([seed, int(round(rho * 1000))])
    gaps = rng.exponential(1.0 / rho, customers)
    service = rng.exponential(1.0, customers)
    x = np.concatenate([[0.0], np.cumsum(service[:-1] - gaps[1:])])
    wait = x - np.minimum(0.0, np.minimum.accumulate(x))
    return {"mean_sojourn_s": float((wait + service).mean()), "mean_wait_s": float(wait.mean())}


def cells(quick: bool) -> list[dict]:
    seeds = range(2 if quick else 8)
    return [{"rho": rho, "seed": s, "customers": 20_000 if quick else 200_000} for rho in LOADS for s in seeds]


def _mean_sojourn(rho: float):
    return lambda t: float(t.loc[t["rho"] == rho, "mean_sojourn_s"].mean())


def claims(quick: bool) -> list[Claim]:
    return [
        Claim("mean time in system, rho = 0.5", 2.0, _mean_sojourn(0.5), rel_tol=0.05,
              source="1 / (1 - rho)", note="5 % covers the sampling error of the seeds' mean"),
        Claim("mean time in system, rho = 0.8", 5.0, _mean_sojourn(0.8), rel_tol=0.10,
              source="1 / (1 - rho)", note="heavier load: slower mixing, wider tolerance"),
        Claim("time in system, rho 0.8 / rho 0.5", 2.5, lambda t: _mean_sojourn(0.8)(t) / _mean_sojourn(0.5)(t),
              kind="direction", pivot=1.0, source="1 / (1 - rho)", note="more load, longer stays"),
    ]


def plots(table: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    g = table.groupby("rho")["mean_sojourn_s"].agg(["mean", "std"])
    ax.errorbar(g.index, g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label="simulated (mean ± sd)")
    rho = np.linspace(0.3, 0.85, 50)
    ax.plot(rho, 1 / (1 - rho), color="tab:red", ls="--", label="1 / (1 - rho)")
    ax.set_xlabel("load rho")
    ax.set_ylabel("mean time in system (s)")
    ax.set_title("M/M/1 queue: simulation vs formula")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "mm1.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


EXPERIMENT = Experiment(
    name="example-mm1", paper="example", title="Example: M/M/1 mean time in system", cells=cells,
    compute=mm1_cell, claims=claims, plots=plots,
    findings=lambda table, quick: f"{len(table)} cells simulated; the formula is exact in the limit.",
    about="Poisson arrivals, exponential service at rate 1; Lindley's recursion per seed.",
    seconds_per_cell=(0.01, 0.1))
