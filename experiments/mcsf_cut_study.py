"""Which inequalities would strengthen the hindsight IP? Root bounds under candidate families (a study for the
open proof gap of the MC-SF issue: no paper-size instance is proven optimal within a minute).

For the first ``K`` mid-size all-at-0 instances of ``experiments.mcsf_synthetic --scale mid`` it prints the
bound of five relaxations against the best schedule the ``cp-sat+highs`` portfolio finds:

* ``spec``: the LP relaxation of the spec's IP (1)-(4);
* ``+sep``: with the separation rows of :mod:`formulations.mcsf.bounds` (the default model);
* ``+cliques``: ``+sep`` and cliques of the columns' pairwise conflict graph, as cutting planes;
* ``+qsep``: ``+sep`` and q-wise separation families (below), as cutting planes;
* ``big-int``: ``+sep`` with the big requests' columns (``2 (o_i + s_i) > M``) integer and the rest
  continuous: a partial MIP, solved by HiGHS within the time limit (its dual bound is still valid).

All are relaxations of the hindsight problem (no schedule is cut off), so every figure is a lower bound on
the optimum; ``closed`` is the share of the gap from ``+sep`` to the best schedule that a family closes.

**Conflict cliques.** Columns ``(i, k)`` and ``(j, l)`` of different requests conflict when both run at the
earlier of their completion rounds and hold more than ``M`` tokens together there. Each request's memory
rises until it completes, so that round is the pair's peak: conflicting columns never both start, and a
set of pairwise conflicting columns (with any columns of one request, which share row (2)) sums to at most 1.

**q-wise separation.** For a prompt size ``m`` and an output length ``L``, let ``F = {i : s_i >= m, o_i >= L}``
and, for ``i`` in ``F``, let ``e_i`` be the least ``g < o_i`` such that ``i`` started at 0 and ``q`` requests
of prompt ``m`` and output ``L`` started in ``[0, g]``, one at ``g``, fit in ``M`` alone (``o_i`` if none
does). Memory only grows with a prompt or an output (a shorter output is a prefix of the same ramp), so in
any schedule at most ``q`` of the intervals ``[p_i, p_i + e_i)``, ``i`` in ``F``, share a round: the row
``sum_{i in F} sum_{t - e_i < k <= t} x[i,k] <= q`` holds for every ``t``. With ``q = 1`` it contains the
separation rows' idea; ``q = 2, 3`` are new.

Run: ``python -m experiments.mcsf_cut_study [--instances K] [--time-limit S]`` (about half a
minute per instance at the defaults). Writes ``results/mcsf_cut_study/{bounds.csv,summary.md,gap_closed.png}``.
"""
from __future__ import annotations

import argparse
import functools
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from gpusched.errors import SolverError
from gpusched.solve import new_highs
from formulations.mcsf import hindsight_optimal, mcsf
from formulations.mcsf.hindsight import build_hindsight_arrays, highs_model
from formulations.mcsf.model import Instance, memory_profile

from ._ux import add_solver_log_flag, announce, finish, progress, solver_output

from .mcsf_synthetic import synthetic_instances

FAMILIES = ("spec", "+sep", "+cliques", "+qsep", "big-int")


def relaxation_bound(arrays, cuts=(), integer_cols=(), time_limit_s: float = 60.0):
    """Bound of the model of ``arrays`` plus rows ``cuts`` (``(columns, right-hand side)``, coefficients 1):
    the LP optimum, or with ``integer_cols`` HiGHS's dual bound of that partial MIP; and the solution's
    column values."""
    import highspy

    lp = highs_model(arrays, integer=False)
    h = new_highs()
    h.setOptionValue("presolve", "off")  # as in hindsight_optimal
    h.setOptionValue("time_limit", float(time_limit_s))
    h.passModel(lp)
    for cols, rhs in cuts:
        h.addRow(-highspy.kHighsInf, float(rhs), len(cols), np.asarray(cols, np.int32), np.ones(len(cols)))
    if len(integer_cols):
        cols = np.asarray(integer_cols, np.int32)
        h.changeColsIntegrality(cols.size, cols, np.full(cols.size, highspy.HighsVarType.kInteger))
        h.setOptionValue("mip_abs_gap", 1.0 - 1e-6)
    h.run()
    info = h.getInfo()
    if len(integer_cols):
        return float(info.mip_dual_bound), np.asarray(h.getSolution().col_value)  # valid even if stopped early
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:  # only an optimal LP value is a bound
        raise SolverError(f"LP relaxation stopped with {h.modelStatusToString(status)!r}; raise time_limit_s")
    return float(info.objective_function_value), np.asarray(h.getSolution().col_value)


def conflict_matrix(instance: Instance, arrays) -> np.ndarray:
    """``conflict[u, v]``: columns ``u`` and ``v`` cannot both start (see the module docstring)."""
    s, o = np.asarray(instance.prompt), np.asarray(instance.output)
    i, k = arrays.col_req, arrays.col_start
    I, J, K, L = i[:, None], i[None, :], k[:, None], k[None, :]
    end_i, end_j = K + o[I], L + o[J]
    first_end = np.minimum(end_i, end_j)
    both_run = (K < end_j) & (L < end_i)
    conflict = (both_run & (s[I] + s[J] + 2 * first_end - K - L > instance.memory)) | (I == J)
    np.fill_diagonal(conflict, False)
    return conflict


def violated_cliques(x: np.ndarray, conflict: np.ndarray, most: int = 200) -> list:
    """Greedy cliques around each column of the LP's support, heaviest first; those above 1, made maximal."""
    support = np.flatnonzero(x > 1e-6)
    support = support[np.argsort(-x[support], kind="stable")]
    cuts, seen = [], set()
    for seed in support:
        clique = [seed]
        for c in support[conflict[seed, support]]:
            if conflict[c, clique].all():
                clique.append(c)
        if x[clique].sum() <= 1 + 1e-4:
            continue
        for c in np.flatnonzero(conflict[clique].all(axis=0)):  # lift with columns the LP leaves at 0
            if conflict[c, clique].all():
                clique.append(c)
        key = tuple(sorted(int(c) for c in clique))
        if key not in seen:
            seen.add(key)
            cuts.append((list(key), 1.0))
        if len(cuts) >= most:
            break
    return cuts


def _fits(starts, prompts, outputs, memory) -> bool:
    requests = Instance([0] * len(starts), list(prompts), list(outputs), memory)
    return bool(memory_profile(requests, starts).max() <= memory)


@functools.lru_cache(maxsize=None)  # families share most (prompt, output) pairs
def _separation(s_i: int, o_i: int, m: int, length: int, q: int, memory: int) -> int:
    """``e_i`` of the module docstring."""
    for g in range(o_i):
        for middle in itertools.combinations_with_replacement(range(g + 1), q - 1):
            if _fits((0, *middle, g), (s_i,) + (m,) * q, (o_i,) + (length,) * q, memory):
                return g
    return o_i


def q_families(instance: Instance, qs=(1, 2, 3)) -> list:
    """Every q-wise separation family ``(members, e, q)`` whose row can bind (more than ``q`` members)."""
    s, o = np.asarray(instance.prompt), np.asarray(instance.output)
    out = []
    for m, length in itertools.product(sorted(set(s.tolist())), sorted(set(o.tolist()))):
        members = np.flatnonzero((s >= m) & (o >= length))
        for q in qs:
            if members.size > q:
                e = np.array([_separation(int(s[i]), int(o[i]), m, length, q, instance.memory) for i in members])
                out.append((members, e, q))
    return out


def violated_q_rows(x: np.ndarray, arrays, families, most: int = 300) -> list:
    """Rows of ``families`` that ``x`` breaks, most violated first."""
    col_req, col_start = arrays.col_req, arrays.col_start
    found = []
    for members, e, q in families:
        sep = np.zeros(col_req.size, dtype=np.int64)
        inside = np.isin(col_req, members)
        sep[inside] = e[np.searchsorted(members, col_req[inside])]
        load = np.zeros(int(col_start.max() + sep.max()) + 2)
        for c in np.flatnonzero(inside & (x > 1e-9)):
            load[col_start[c]:col_start[c] + sep[c]] += x[c]
        for t in np.flatnonzero(load > q + 1e-4):
            cols = np.flatnonzero(inside & (col_start <= t) & (col_start > t - sep))
            found.append((load[t] - q, cols.tolist(), float(q)))
    found.sort(key=lambda f: -f[0])
    return [(cols, rhs) for _, cols, rhs in found[:most]]


def cutting_planes(arrays, separate, rounds: int = 30, time_limit_s: float = 60.0) -> tuple[float, int]:
    """LP bound after re-solving with the cuts ``separate(x)`` returns, until none or ``rounds``; and the
    number of cuts added."""
    cuts: list = []
    for _ in range(rounds):
        bound, x = relaxation_bound(arrays, cuts, time_limit_s=time_limit_s)
        new = separate(x)
        if not new:
            break
        cuts += new
    return bound, len(cuts)


def study(instance: Instance, time_limit_s: float, threads: int | None) -> dict:
    """The bounds of the module docstring for one instance, with the best schedule found."""
    sf = mcsf(instance)
    best = hindsight_optimal(instance, time_limit_s=time_limit_s, solver="cp-sat+highs", threads=threads,
                             warm_start=sf)
    upper = sf.total_latency
    spec = build_hindsight_arrays(instance, upper, separation_rows=False)
    sep = build_hindsight_arrays(instance, upper)
    conflict = conflict_matrix(instance, sep)
    families = q_families(instance)
    o, s = np.asarray(instance.output), np.asarray(instance.prompt)
    big = np.flatnonzero(2 * (o + s)[sep.col_req] > instance.memory)
    row = {"n": instance.n, "M": instance.memory, "mcsf": upper, "best": best.objective,
           "best_proven": best.is_optimal,
           "spec": relaxation_bound(spec)[0], "+sep": relaxation_bound(sep)[0]}
    row["+cliques"], row["clique_cuts"] = cutting_planes(sep, lambda x: violated_cliques(x, conflict))
    row["+qsep"], row["q_cuts"] = cutting_planes(sep, lambda x: violated_q_rows(x, sep, families))
    row["big-int"] = relaxation_bound(sep, integer_cols=big, time_limit_s=time_limit_s)[0]
    return row


def run(n_instances: int = 6, time_limit_s: float = 20.0, threads: int | None = 1, seed: int = 0,
        out_dir: str = "results/mcsf_cut_study") -> pd.DataFrame:
    """Study the first ``n_instances`` mid-size all-at-0 instances; ``bounds.csv`` is rewritten after each one
    (an interruption keeps the finished ones), ``summary.md`` and ``gap_closed.png`` at the end."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # two time-limited solves per instance (the best schedule, big-int) plus a few seconds of LPs
    started = announce("mcsf_cut_study", out, n_instances * (2 * time_limit_s + 5),
                       f"{n_instances} instances x (2 x {time_limit_s:g} s limits + ~5 s of LPs)")
    # the first all-at-0 instances of mcsf_synthetic --scale mid, same seed
    instances = [inst for _, _, inst in itertools.islice(synthetic_instances(seed, n_instances, "mid"), n_instances)]
    rows = []
    for inst in progress(instances, desc="cut study"):
        rows.append(study(inst, time_limit_s, threads))
        df = _with_closed(pd.DataFrame(rows))
        df.to_csv(out / "bounds.csv", index=False)
    (out / "summary.md").write_text(_markdown(df, n_instances, seed, time_limit_s))
    _plot(df, out / "gap_closed.png")
    finish("mcsf_cut_study", out, ["bounds.csv", "summary.md", "gap_closed.png"], started)
    return df


def _with_closed(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the share of the gap (+sep LP to best schedule) each family closes."""
    gap = df["best"] - df["+sep"]
    for f in ("+cliques", "+qsep", "big-int"):
        df[f"closed {f}"] = (df[f] - df["+sep"]) / gap.where(gap > 0)
    return df


def _plot(df: pd.DataFrame, path: Path) -> None:
    """Share of the gap closed per family and instance, as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.27
    for k, family in enumerate(("+cliques", "+qsep", "big-int")):
        ax.bar(np.arange(len(df)) + (k - 1) * width, 100 * df[f"closed {family}"].fillna(0), width, label=family)
    ax.set_xticks(np.arange(len(df)), [f"n={n}, M={m}" for n, m in zip(df.n, df.M)], fontsize=8)
    ax.set_ylabel("gap closed (%)")
    ax.set_title("Hindsight IP: share of the gap (+sep LP to best schedule) closed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(df: pd.DataFrame, n_instances: int, seed: int, time_limit_s: float) -> str:
    lines = ["# Hindsight IP: bounds under candidate inequalities", "",
             f"{n_instances} mid-size all-at-0 instances (seed {seed}); best = the portfolio's schedule within "
             f"{time_limit_s:g} s (* proven optimal); closed = share of the gap from +sep to best.", "",
             "| n | M | MC-SF | best | spec | +sep | +cliques | +qsep | big-int | closed: cliques | qsep | big-int |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d in df.to_dict("records"):
        closed = [f"{d[f'closed {f}']:.0%}" if pd.notna(d[f"closed {f}"]) else "-"
                  for f in ("+cliques", "+qsep", "big-int")]
        lines.append(f"| {d['n']} | {d['M']} | {d['mcsf']} | {d['best']}{'*' if d['best_proven'] else ''} | "
                     + " | ".join(f"{d[f]:.1f}" for f in FAMILIES) + " | " + " | ".join(closed) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=6)
    ap.add_argument("--time-limit", type=float, default=20.0, help="seconds for the best schedule and for big-int")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/mcsf_cut_study")
    add_solver_log_flag(ap)
    a = ap.parse_args(argv)
    solver_output(a.solver_log)
    run(a.instances, a.time_limit, a.threads, a.seed, a.out)
    print((Path(a.out) / "summary.md").read_text())


if __name__ == "__main__":
    main()
