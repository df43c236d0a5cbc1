"""What the pipelined engine (:mod:`simulators.pipeline`) simulates: nodes with layer ranges, links, latencies.

Plain data only, so that a formulation (e.g. Helix's placement) never reaches the engine: the experiment
builds a :class:`PipelineCluster` from its placement and the measured tables and hands it over.

* :class:`LayerLatency` — time of *one layer* for a batch, piecewise linear in the batch's prompt tokens
  (``P(x)``) and decode tokens (``D(x)``), from Helix's ``prompt_bs2time.csv`` / ``decode_bs2time.csv``
  (ms per layer; :func:`load_layer_latency` converts to seconds). Beyond the last measured point the last
  segment is extended (the tables stop at 11k prompt / 800 decode tokens; batch limits stay below that).
* :class:`PipelineNode` — a node's layer range ``[start_layer, end_layer)``, its KV capacity in token-layer
  slots and its batch limits (Helix: ``prompt_max_requests`` 3, ``prompt_max_tokens`` 3·2048,
  ``decode_max_tokens`` per layer count).
* :class:`PipelineLink` — bandwidth (bytes/s) and latency (s) of an undirected link; endpoints are node
  names or ``"source"`` / ``"sink"`` (the coordinator).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Hashable, Mapping

import numpy as np

from gpusched.errors import ConfigError, ProfileError

SOURCE, SINK = "source", "sink"


def _table(xs, ys, what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xs = tuple(float(x) for x in xs)
    ys = tuple(float(y) for y in ys)
    if len(xs) != len(ys) or len(xs) < 2:
        raise ProfileError(f"{what}: needs >= 2 (tokens, time) points of equal length, got {len(xs)} / {len(ys)}")
    if any(b <= a for a, b in zip(xs, xs[1:])) or xs[0] < 0:
        raise ProfileError(f"{what}: token counts {xs[:6]}... must be >= 0 and strictly increasing")
    if any(not (y >= 0 and math.isfinite(y)) for y in ys):
        raise ProfileError(f"{what}: times must be finite and >= 0, got {[y for y in ys if not y >= 0][:3]}")
    return xs, ys


def _interp(x: float, xs: tuple, ys: tuple) -> float:
    if x <= 0:
        return 0.0  # no tokens of that kind in the batch: no kernel runs
    if x <= xs[-1]:
        return float(np.interp(x, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + slope * (x - xs[-1])


@dataclass(frozen=True)
class LayerLatency:
    """Per-layer batch time (seconds) of one GPU type: ``P(prompt tokens) + D(decode tokens)``.

    ``prompt_tokens``/``prompt_time_s``: total prompt tokens in the batch -> time of one layer;
    ``decode_tokens``/``decode_time_s``: decode sequences (one token each) -> time of one layer.
    Linear interpolation between points; 0 tokens take 0 s.
    """

    prompt_tokens: tuple[float, ...]
    prompt_time_s: tuple[float, ...]
    decode_tokens: tuple[float, ...]
    decode_time_s: tuple[float, ...]

    def __post_init__(self) -> None:
        p = _table(self.prompt_tokens, self.prompt_time_s, "prompt latency table")
        d = _table(self.decode_tokens, self.decode_time_s, "decode latency table")
        object.__setattr__(self, "prompt_tokens", p[0])
        object.__setattr__(self, "prompt_time_s", p[1])
        object.__setattr__(self, "decode_tokens", d[0])
        object.__setattr__(self, "decode_time_s", d[1])

    def prompt_s(self, tokens: float) -> float:
        return _interp(tokens, self.prompt_tokens, self.prompt_time_s)

    def decode_s(self, tokens: float) -> float:
        return _interp(tokens, self.decode_tokens, self.decode_time_s)

    def layer_s(self, prompt_tokens: float, decode_tokens: float) -> float:
        """Time of one layer for a mixed batch (Helix's simulator adds the two)."""
        return self.prompt_s(prompt_tokens) + self.decode_s(decode_tokens)


def _read_bs2time(path: Path) -> tuple[list[float], list[float]]:
    """``(batch tokens, seconds per layer)`` rows of one Helix latency table; every bad row is named by line."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"latency table {path} not found") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ProfileError(f"{path}: line {line}: byte {raw[err.start:err.start + 1]!r} is not UTF-8; save the "
                           f"table as UTF-8 text") from None
    xs, ys = [], []
    for n, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
        if not row:
            continue
        try:
            x, ms = float(row[0]), float(row[1])
        except (ValueError, IndexError):
            raise ProfileError(f"{path}: line {n}: expected 'batch_tokens,ms_per_layer', got {row}") from None
        if not (math.isfinite(x) and x >= 0 and math.isfinite(ms) and ms >= 0):
            raise ProfileError(f"{path}: line {n}: batch tokens {row[0]!r} and time {row[1]!r} ms must be finite "
                               f"and >= 0; fix or remove the row")
        xs.append(x)
        ys.append(ms * 1e-3)  # the artifact writes milliseconds per layer
    return xs, ys


def load_layer_latency(folder: str | Path) -> LayerLatency:
    """Read ``prompt_bs2time.csv`` and ``decode_bs2time.csv`` (ms per layer) from one GPU's folder."""
    folder = Path(folder)
    px, py = _read_bs2time(folder / "prompt_bs2time.csv")
    dx, dy = _read_bs2time(folder / "decode_bs2time.csv")
    return LayerLatency(tuple(px), tuple(py), tuple(dx), tuple(dy))


@dataclass(frozen=True)
class PipelineNode:
    """One compute node: holds layers ``[start_layer, end_layer)`` and runs them for every batch.

    ``kv_capacity_slots``: KV capacity in token-layer slots (one token's KV in one layer = one slot).
    """

    start_layer: int
    end_layer: int
    latency: LayerLatency
    kv_capacity_slots: int
    prompt_max_requests: int = 3
    prompt_max_tokens: int = 6144
    decode_max_tokens: int = 480
    gpu_type: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.start_layer < self.end_layer:
            raise ConfigError(f"node layer range [{self.start_layer}, {self.end_layer}) is empty or negative")
        for name in ("kv_capacity_slots", "prompt_max_requests", "prompt_max_tokens", "decode_max_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 1")

    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer


@dataclass(frozen=True)
class PipelineLink:
    """An undirected link: ``bandwidth_bytes_per_s`` (> 0) and one-way ``latency_s`` (>= 0)."""

    bandwidth_bytes_per_s: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not (self.bandwidth_bytes_per_s > 0) or not (self.latency_s >= 0):
            raise ConfigError(f"link bandwidth {self.bandwidth_bytes_per_s!r} B/s must be > 0 and latency "
                              f"{self.latency_s!r} s >= 0")


@dataclass(frozen=True)
class PipelineCluster:
    """Nodes, links and transfer sizes of a pipelined cluster.

    ``links[(u, v)]`` is undirected (either orientation may be given); ``activation_bytes_per_token`` ``α``
    and ``token_bytes`` ``τ``: a hop between compute nodes carries ``tokens·(τ+α)`` bytes, a hop from the
    source or to the sink ``tokens·τ``. ``copy_bandwidths_bytes_per_s``: Helix's simulator charges
    ``tokens·α/b`` for each ``b`` on a node's first layer (concat + host-to-device copy: 4 and 5 GB/s).
    """

    num_layers: int
    nodes: Mapping[Hashable, PipelineNode]
    links: Mapping[tuple, PipelineLink]
    activation_bytes_per_token: int = 16384
    token_bytes: int = 2
    copy_bandwidths_bytes_per_s: tuple[float, ...] = (4e9, 5e9)
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_layers < 1 or not self.nodes:
            raise ConfigError(f"a pipelined cluster needs num_layers >= 1 (got {self.num_layers}) and nodes")
        for n, spec in self.nodes.items():
            if n in (SOURCE, SINK):
                raise ConfigError(f"node name {n!r} is reserved for the coordinator")
            if spec.end_layer > self.num_layers:
                raise ConfigError(f"node {n!r} holds [{spec.start_layer}, {spec.end_layer}) beyond L = {self.num_layers}")
        index = {}
        for (u, v), link in self.links.items():
            for w in (u, v):
                if w not in self.nodes and w not in (SOURCE, SINK):
                    raise ConfigError(f"link ({u!r}, {v!r}) names unknown node {w!r}")
            index[(u, v)] = index[(v, u)] = link
        object.__setattr__(self, "nodes", MappingProxyType(dict(self.nodes)))
        object.__setattr__(self, "_index", index)

    def link(self, u: Hashable, v: Hashable) -> PipelineLink:
        try:
            return self._index[(u, v)]
        except KeyError:
            raise ConfigError(f"no link between {u!r} and {v!r}: a pipeline may only use existing links") from None

    def hop_bytes(self, u: Hashable, v: Hashable, tokens: int) -> int:
        per = self.token_bytes if SOURCE in (u, v) or SINK in (u, v) else self.token_bytes + self.activation_bytes_per_token
        return tokens * per
