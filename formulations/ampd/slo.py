"""SLO attainment of multi-round sessions (spec §1 and pitfall 2) and SLO thresholds scaled to the model
(pitfall 1).

The paper counts TTFT for *every* prefill task (initial and incremental: from the moment the task is formed,
i.e. the round's release after its interaction, to its first output token) and ITL between consecutive decode
tokens [P]. How they combine into a per-request verdict is not stated; the spec's default [R]:

* ``per="session"`` (default): a session attains iff every one of its rounds finished, every round's TTFT
  <= TTFT_thres, and the session's mean ITL (all its inter-token gaps, token-weighted over rounds)
  <= ITL_thres;
* ``per="round"``: a round attains iff it finished, its TTFT <= TTFT_thres and its own mean ITL <= ITL_thres.

A round with one output token has no ITL gap and passes the ITL test on its own. Unfinished rounds miss.

The paper gives no threshold values (spec §7). :func:`scaled_slo` derives them the common way: TTFT_thres =
``ttft_factor`` x the isolated prefill time of the mean prompt, ITL_thres = ``itl_factor`` x an isolated
batch-1 decode step at that context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError

from .perf import WorkerTimes
from .tasks import Slo

__all__ = ["SessionAttainment", "session_attainment", "scaled_slo"]

_NEEDED = ("session_id", "arrival_time_s", "first_token_time_s", "finish_time_s", "output_tokens")


@dataclass(frozen=True)
class SessionAttainment:
    """SLO attainment of a run. ``per``: ``"session"`` or ``"round"``; ``num_units``/``num_attained``: sessions
    or rounds; ``attainment`` = num_attained / num_units; ``ttft_attainment``/``itl_attainment``: the share
    meeting each test alone (unfinished units fail both); ``num_unfinished``: units with an unfinished round."""

    per: str
    num_units: int
    num_attained: int
    attainment: float
    ttft_attainment: float
    itl_attainment: float
    num_unfinished: int


def session_attainment(rounds: pd.DataFrame, slo: Slo, per: str = "session") -> SessionAttainment:
    """SLO attainment (module docstring) from one row per round with columns ``session_id``,
    ``arrival_time_s`` (the round's release: when its prefill task is formed), ``first_token_time_s``,
    ``finish_time_s`` (NaN when unfinished) and ``output_tokens`` -- a simulator's request table joined with
    the trace's ``session_id``."""
    if per not in ("session", "round"):
        raise ConfigError(f"session_attainment: per must be 'session' or 'round', got {per!r}")
    if not isinstance(slo, Slo):
        raise ConfigError(f"session_attainment: slo must be a Slo, got {type(slo).__name__}")
    missing = [c for c in _NEEDED if c not in rounds.columns]
    if missing:
        raise ConfigError(f"session_attainment: the rounds table lacks {missing}; it needs {list(_NEEDED)} "
                          f"(join the trace's session_id onto the simulator's request table)")
    if rounds.empty:
        raise ConfigError("session_attainment: the rounds table is empty")
    first = rounds["first_token_time_s"].to_numpy(float)
    finish = rounds["finish_time_s"].to_numpy(float)
    out = rounds["output_tokens"].to_numpy()
    finished = np.isfinite(first) & np.isfinite(finish)
    ttft = first - rounds["arrival_time_s"].to_numpy(float)
    gaps = np.where(finished, np.maximum(out - 1, 0), 0)
    decode_s = np.where(finished & (gaps > 0), finish - first, 0.0)
    ttft_ok = finished & (ttft <= slo.ttft_s)
    if per == "round":
        itl = np.divide(decode_s, gaps, out=np.zeros_like(decode_s), where=gaps > 0)
        itl_ok = finished & (itl <= slo.itl_s)
        ok = ttft_ok & itl_ok
        return SessionAttainment("round", len(ok), int(ok.sum()), float(ok.mean()), float(ttft_ok.mean()),
                                 float(itl_ok.mean()), int((~finished).sum()))
    g = pd.DataFrame({"s": rounds["session_id"].to_numpy(), "fin": finished, "ttft_ok": ttft_ok,
                      "dec": decode_s, "gaps": gaps}).groupby("s", sort=False)
    agg = g.agg(fin=("fin", "all"), ttft_ok=("ttft_ok", "all"), dec=("dec", "sum"), gaps=("gaps", "sum"))
    itl = np.divide(agg["dec"].to_numpy(), agg["gaps"].to_numpy(), out=np.zeros(len(agg)),
                    where=agg["gaps"].to_numpy() > 0)
    fin = agg["fin"].to_numpy()
    itl_ok = fin & (itl <= slo.itl_s)
    ttft_all = agg["ttft_ok"].to_numpy()
    ok = ttft_all & itl_ok
    return SessionAttainment("session", len(ok), int(ok.sum()), float(ok.mean()), float(ttft_all.mean()),
                             float(itl_ok.mean()), int((~fin).sum()))


def scaled_slo(worker: WorkerTimes, prompt_tokens: float, ttft_factor: float = 5.0,
               itl_factor: float = 3.0) -> Slo:
    """Thresholds scaled to the hardware (pitfall 1): ``ttft_factor`` x T_pre(0, prompt) and ``itl_factor`` x
    T_dec(batch 1, context = prompt), on ``worker`` (e.g. ``perf.workers[key]``)."""
    for name, v in (("prompt_tokens", prompt_tokens), ("ttft_factor", ttft_factor), ("itl_factor", itl_factor)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"scaled_slo: {name} must be a finite number > 0, got {v!r}")
    p = max(1, round(prompt_tokens))
    return Slo(ttft_factor * worker.prefill_time_s(0, p), itl_factor * worker.decode_time_s(1, p))
