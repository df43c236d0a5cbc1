"""Helix placement problem (Mei et al., ASPLOS'25, §1.a of ``shared/papers/helix.md``) and its loaders.

A :class:`HelixProblem` is the input of both the max-flow evaluation (:mod:`.flow`) and the placement MILP
(:mod:`.milp`): ``L`` identical layers, per-node throughput tables ``T_i(1..K_i)`` in tokens/s, undirected
compute links and source/sink links with capacities in tokens/s (``c_uv`` of the spec: ``B/α`` between compute
nodes, ``B/τ`` on source/sink links).

Loaders read the Helix artifact's files (bundled under ``formulations/helix/data``): cluster ``.ini`` files
(bandwidths written as ``N * mbps`` and divided by *bytes*, so they are bytes/s), the derived ``T_i(k)``
table and published placements (``*_sol.ini``, ``offset=2``).
"""
from __future__ import annotations

import ast
import configparser
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Hashable, Mapping

import numpy as np
import pandas as pd

from gpusched.errors import ConfigError, UnknownNameError
from gpusched.rows import parse_numbers, read_csv_text, require_columns, utf8_error

DATA_DIR = Path(__file__).resolve().parent / "data"

#: bytes per token on source/sink links (a token id), ``τ``
TOKEN_SIZE_BYTES = 2


@dataclass(frozen=True)
class HelixModel:
    """Model shape as the MILP sees it: layer count ``L`` and activation bytes per token ``α``."""

    name: str
    num_layers: int
    activation_size_bytes: int


HELIX_MODELS: Mapping[str, HelixModel] = MappingProxyType({
    "llama2_70b": HelixModel("llama2_70b", 80, 16384),
    "llama1_30b": HelixModel("llama1_30b", 60, 13312),
})

Node = Hashable
Placement = Mapping[Node, tuple[int, int]]  # node -> (start layer, end layer exclusive)


def _link_key(u: Node, v: Node) -> tuple[Node, Node]:
    return (u, v) if _sort_key(u) <= _sort_key(v) else (v, u)


def _sort_key(x: Node):
    return (0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x))


@dataclass(frozen=True)
class HelixProblem:
    """The cluster graph and node capacities of the Helix MILP.

    Parameters
    ----------
    num_layers : ``L``, number of identical decoder layers.
    throughput : ``{node: [T_i(1), ..., T_i(K_i)]}`` in tokens/s; ``K_i = len(...)``. Node order is kept.
    links : ``{(u, v): capacity_tokens_per_s}`` of undirected compute links (each yields arcs u->v and v->u
        with that capacity; ``math.inf`` = unlimited).
    source_links, sink_links : ``{node: capacity_tokens_per_s}``; ``None`` means an unlimited link from the
        source to every node (resp. from every node to the sink).
    link_latency_s : optional ``{(u, v) or ("source", v) or (u, "sink"): latency_s}`` kept for simulation.
    node_types : optional ``{node: gpu type}`` (informational; symmetry detection uses the data itself).
    """

    num_layers: int
    throughput: Mapping[Node, tuple[float, ...]]
    links: Mapping[tuple[Node, Node], float]
    source_links: Mapping[Node, float] | None = None
    sink_links: Mapping[Node, float] | None = None
    link_latency_s: Mapping[tuple, float] | None = field(default=None, compare=False)
    node_types: Mapping[Node, str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ConfigError(f"num_layers must be a positive int, got {self.num_layers!r}")
        if not self.throughput:
            raise ConfigError("throughput is empty: a Helix problem needs at least one compute node")
        thr = {}
        for node, table in self.throughput.items():
            if node in ("source", "sink"):
                raise ConfigError(f"node name {node!r} is reserved for the source/sink")
            table = tuple(float(x) for x in table)
            if not table:
                raise ConfigError(f"node {node!r} has an empty throughput table (K_i must be >= 1)")
            for k, t in enumerate(table, start=1):
                if not (t >= 0 and math.isfinite(t)):
                    raise ConfigError(f"node {node!r}: T({k}) = {t!r} tokens/s must be finite and >= 0")
            thr[node] = table
        links = {}
        for key, cap in self.links.items():
            if len(key) != 2:
                raise ConfigError(f"link key {key!r} must be a pair (u, v)")
            u, v = key
            for w in (u, v):
                if w not in thr:
                    raise UnknownNameError(f"link {key!r} names unknown node {w!r}; known nodes: {list(thr)}")
            if u == v:
                raise ConfigError(f"link {key!r} is a self-loop")
            cap = float(cap)
            if not cap >= 0:
                raise ConfigError(f"link {key!r}: capacity {cap!r} tokens/s must be >= 0")
            k2 = _link_key(u, v)
            if k2 in links:
                raise ConfigError(f"link {key!r} given twice (links are undirected)")
            links[k2] = cap
        ends = {}
        for name in ("source_links", "sink_links"):
            given = getattr(self, name)
            if given is None:
                ends[name] = None
                continue
            d = {}
            for node, cap in given.items():
                if node not in thr:
                    raise UnknownNameError(f"{name} names unknown node {node!r}; known nodes: {list(thr)}")
                cap = float(cap)
                if not cap >= 0:
                    raise ConfigError(f"{name}[{node!r}]: capacity {cap!r} tokens/s must be >= 0")
                d[node] = cap
            ends[name] = MappingProxyType(d)
        for key, latency in (self.link_latency_s or {}).items():
            if not (isinstance(latency, (int, float)) and math.isfinite(latency) and latency >= 0):
                raise ConfigError(f"link_latency_s[{key!r}] = {latency!r} must be a finite number of seconds >= 0")
        object.__setattr__(self, "throughput", MappingProxyType(thr))
        object.__setattr__(self, "links", MappingProxyType(links))
        object.__setattr__(self, "source_links", ends["source_links"])
        object.__setattr__(self, "sink_links", ends["sink_links"])

    # ------------------------------------------------------------------ views
    @property
    def nodes(self) -> list[Node]:
        return list(self.throughput)

    def max_layers(self, node: Node) -> int:
        """``K_i``."""
        return len(self.throughput[node])

    def source_capacity(self, node: Node) -> float | None:
        """Capacity of source->node in tokens/s, ``inf`` if unlimited, ``None`` if there is no such link."""
        if self.source_links is None:
            return math.inf
        return self.source_links.get(node)

    def sink_capacity(self, node: Node) -> float | None:
        if self.sink_links is None:
            return math.inf
        return self.sink_links.get(node)

    def link_capacity(self, u: Node, v: Node) -> float | None:
        return self.links.get(_link_key(u, v))

    def upper_bound_tokens_per_s(self) -> float:
        """``UB = Σ_i max_k k·T_i(k) / L`` (``get_flow_upper_bound``)."""
        return sum(max(k * t for k, t in enumerate(tab, 1)) for tab in self.throughput.values()) / self.num_layers

    def validate_placement(self, placement: Placement, *, require_coverage: bool = True) -> dict:
        """Check a ``{node: (start, end)}`` placement; returns it as a plain dict.

        Every node must be placed with ``0 <= start < end <= L`` and ``end - start <= K_i``; with
        ``require_coverage`` every layer must be held by some node. Errors name the node and the value.
        """
        out = {}
        for node in placement:
            if node not in self.throughput:
                raise UnknownNameError(f"placement names unknown node {node!r}")
        for node in self.throughput:
            if node not in placement:
                raise ConfigError(f"placement leaves node {node!r} without a layer range (every node holds >= 1 layer)")
            s, e = placement[node]
            s, e = int(s), int(e)
            if not 0 <= s < e <= self.num_layers:
                raise ConfigError(f"node {node!r}: range [{s}, {e}) is not within [0, {self.num_layers}) or empty")
            if e - s > self.max_layers(node):
                raise ConfigError(f"node {node!r}: holds {e - s} layers [{s}, {e}) but K_i = {self.max_layers(node)}")
            out[node] = (s, e)
        if require_coverage:
            covered = [False] * self.num_layers
            for s, e in out.values():
                for l in range(s, e):
                    covered[l] = True
            missing = [l for l, c in enumerate(covered) if not c]
            if missing:
                raise ConfigError(f"placement leaves layer(s) {missing[:10]} uncovered (L = {self.num_layers})")
        return out


# ---------------------------------------------------------------------------- loaders
_UNITS = {"bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9, "MilliSec": 1e-3, "Sec": 1.0, "MicroSec": 1e-6}


class _Ini:
    """An INI file read for error messages: the parsed sections and where each section and key sits."""

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"cannot read {what} {self.path}: no such file")
        try:
            text = self.path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError(str(utf8_error(self.path))) from None
        self.lines = text.splitlines()
        self.cp = configparser.ConfigParser(interpolation=None)  # '%' is data here, not a reference
        try:
            self.cp.read_string(text, source=str(self.path))
        except configparser.Error as e:
            errors = getattr(e, "errors", None)  # ParsingError: [(line, text), ...]
            line = errors[0][0] if errors else getattr(e, "lineno", "?")
            detail = f"cannot parse line {errors[0][1]}" if errors else \
                re.sub(r"^While reading from .*?\]: ", "", str(e).splitlines()[0])
            raise ConfigError(f"{self.path}: line {line}: not a valid {what} ({type(e).__name__}: {detail}); "
                              f"sections are [Name] lines and entries key = value lines, once each") from None

    def where(self, section: str, key: str | None = None) -> str:
        """``<file>: line <n>: [section]`` (the key's line when it is found, else the section's)."""
        line = next((i for i, t in enumerate(self.lines, 1) if t.strip() == f"[{section}]"), None)
        if line is not None and key is not None:
            for i in range(line, len(self.lines)):
                t = self.lines[i].strip()
                if t.startswith("["):
                    break
                if re.match(rf"{re.escape(key)}\s*[=:]", t, flags=re.IGNORECASE):
                    line = i + 1
                    break
        return f"{self.path}: line {line if line is not None else '?'}: [{section}]"


def _parse_quantity(text: str, where: str, what: str) -> float:
    """``N`` or ``N * unit`` as a finite number >= 0 in base units (bytes/s, seconds)."""
    m = re.fullmatch(r"\s*([-+0-9.eE]+)\s*(?:\*\s*([A-Za-z]+))?\s*", text)
    try:
        value = float(m.group(1)) if m else math.nan
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise ConfigError(f"{where}: {what} = {text!r} is not a quantity 'N * unit' (e.g. '1000 * mbps', "
                          f"'1 * MilliSec')")
    if m.group(2):
        if m.group(2) not in _UNITS:
            raise ConfigError(f"{where}: {what} = {text!r} has unknown unit {m.group(2)!r}; known: {sorted(_UNITS)}")
        value *= _UNITS[m.group(2)]
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{where}: {what} = {text!r} must be a finite number >= 0 (a negative {what} "
                          f"has no meaning)")
    return value


def _parse_endpoint(tok: str, nodes: set, where: str):
    if tok in ("source", "sink"):
        return tok
    try:
        i = int(tok)
    except ValueError:
        raise ConfigError(f"{where}: endpoint {tok!r} is neither 'source', 'sink' nor a node index") from None
    if i not in nodes:
        raise UnknownNameError(f"{where}: link to unknown node {i!r}; the cluster defines nodes {sorted(nodes)}")
    return i


def read_cluster_ini(path: str | Path) -> tuple[dict[int, str], list[tuple[object, object, float, float]]]:
    """Parse a Helix cluster file: ``({node: gpu_type}, [(u, v, bandwidth_bytes_per_s, latency_s)])``.

    Raises :class:`ConfigError` naming the file, line and section for a file that is not INI, a node
    without a type or given twice, a link to an unknown node, to itself or given twice, and a bandwidth
    or latency that is not a finite quantity >= 0.
    """
    ini = _Ini(path, "cluster file")
    cp = ini.cp
    types: dict[int, str] = {}
    for sec in cp.sections():
        m = re.fullmatch(r"ComputeNode-(\d+)", sec)
        if m:
            if not cp[sec].get("type", "").strip():
                raise ConfigError(f"{ini.where(sec)} has no 'type' (the node's GPU type, e.g. type=A100)")
            if int(m.group(1)) in types:
                raise ConfigError(f"{ini.where(sec)} defines node {int(m.group(1))} again")
            types[int(m.group(1))] = cp[sec]["type"].strip()
    if not types:
        raise ConfigError(f"{ini.path}: no [ComputeNode-i] sections; a cluster file defines its nodes that way")
    links, seen = [], {}
    for sec in cp.sections():
        if not sec.startswith("Link-"):
            continue
        parts = sec[len("Link-"):].split("-")
        if len(parts) != 2:
            raise ConfigError(f"{ini.where(sec)}: a link section is named Link-<a>-<b>")
        u = _parse_endpoint(parts[0], set(types), ini.where(sec))
        v = _parse_endpoint(parts[1], set(types), ini.where(sec))
        if u == v:
            raise ConfigError(f"{ini.where(sec)}: a link from {u!r} to itself")
        pair = frozenset((u, v))
        if pair in seen:
            raise ConfigError(f"{ini.where(sec)}: the link {u}-{v} is already given by [{seen[pair]}] (links are "
                              f"undirected); keep one")
        seen[pair] = sec
        if "bandwidth" not in cp[sec]:
            raise ConfigError(f"{ini.where(sec)} has no 'bandwidth' (e.g. bandwidth = 1000 * mbps)")
        bw = _parse_quantity(cp[sec]["bandwidth"], ini.where(sec, "bandwidth"), "bandwidth")
        lat = _parse_quantity(cp[sec].get("latency", "0"), ini.where(sec, "latency"), "latency")
        links.append((u, v, bw, lat))
    return types, links


def _mix_matches(mix: str, counts: dict[str, int], n: int) -> bool:
    gpu_types = set(counts)
    for tok in mix.split("_"):
        m = re.fullmatch(r"(\d+)node", tok)
        if m and int(m.group(1)) != n:
            return False
        m = re.fullmatch(r"(.+)x(\d+)", tok)
        if m and not re.fullmatch(r"\d+node", tok):
            g, c = m.group(1), int(m.group(2))
            if counts.get(g) != c:
                return False
            gpu_types.discard(g)
    if mix.endswith("_only") and gpu_types:
        return False
    return True


_THROUGHPUT_COLUMNS = ("model", "cluster_mix", "gpu_type", "k_layers", "T_k_tokens_per_s")


def _throughput_rows(path: Path) -> pd.DataFrame:
    """The ``T_i(k)`` CSV checked row by row (located :class:`ConfigError`): names present, ``k_layers`` an
    integer >= 1, ``T_k_tokens_per_s`` a finite number >= 0, no (model, mix, type, k) twice."""
    text = read_csv_text(path, error=ConfigError, skippable=False)
    require_columns(path, text.df.columns, _THROUGHPUT_COLUMNS, text.header_line, error=ConfigError)
    df = text.df
    rows = text.checker(path, "raise", error=ConfigError, fix="correct them in the file")
    for c in ("model", "cluster_mix", "gpu_type"):
        rows.flag((df[c].str.strip() == "").to_numpy(), c, df[c], "is empty")
    k = parse_numbers(rows, df["k_layers"], "k_layers")
    rows.flag(np.isfinite(k) & ((k < 1) | (k != np.floor(k)) | (k > 10**6)), "k_layers", df["k_layers"],
              "must be an integer >= 1 (layers held by one node)")
    t = parse_numbers(rows, df["T_k_tokens_per_s"], "T_k_tokens_per_s", unit="tokens/s")
    out = pd.DataFrame({"model": df["model"].str.strip(), "cluster_mix": df["cluster_mix"].str.strip(),
                        "gpu_type": df["gpu_type"].str.strip(), "k_layers": np.where(np.isfinite(k), k, 0),
                        "T_k_tokens_per_s": t})
    rows.flag(out.duplicated(["model", "cluster_mix", "gpu_type", "k_layers"]).to_numpy(), "k_layers",
              df["k_layers"], "repeats an earlier row's (model, cluster_mix, gpu_type, k_layers)")
    rows.finish()
    out["k_layers"] = out["k_layers"].astype(np.int64)
    out["line"] = text.lines
    return out


def load_throughput_table(throughput_csv: str | Path, model: str, node_types: Mapping[int, str],
                          cluster_mix: str | None = None) -> dict[str, tuple[float, ...]]:
    """``{gpu_type: (T(1), ..., T(K))}`` for this model and cluster mix from ``node_throughput_T_k.csv``.

    ``T_i(k)`` depends on the whole cluster's machine mix (spec §1.g); ``cluster_mix=None`` picks the
    table whose ``cluster_mix`` label agrees with the cluster's node count and per-type counts. A malformed
    file (not CSV, a column missing, a negative or non-numeric throughput, a layer count repeated or
    missing) raises :class:`ConfigError` naming the file and line.
    """
    throughput_csv = Path(throughput_csv)
    df = _throughput_rows(throughput_csv)
    if model not in set(df["model"]):
        raise UnknownNameError(f"model {model!r} not in {throughput_csv}; known: {sorted(set(df['model']))}")
    df = df[df["model"] == model]
    known = set(df["gpu_type"])
    for node, t in sorted(node_types.items(), key=lambda x: _sort_key(x[0])):
        if t not in known:
            raise UnknownNameError(f"{throughput_csv}: node {node} has type {t!r} without a throughput table for "
                                   f"{model}; tables exist for {sorted(known)}")
    counts: dict[str, int] = {}
    for t in node_types.values():
        counts[t] = counts.get(t, 0) + 1
    mixes = sorted(set(df["cluster_mix"]))
    if cluster_mix is None:
        cands = [m for m in mixes if _mix_matches(m, counts, len(node_types))
                 and set(counts) <= set(df[df["cluster_mix"] == m]["gpu_type"])]
        if len(cands) != 1:
            raise ConfigError(f"{throughput_csv}: cannot pick a T(k) table for model {model!r} and node counts "
                              f"{counts}: candidates {cands} among {mixes}; pass cluster_mix explicitly")
        cluster_mix = cands[0]
    elif cluster_mix not in mixes:
        raise UnknownNameError(f"cluster_mix {cluster_mix!r} not in {throughput_csv}; known: {mixes}")
    sub = df[df["cluster_mix"] == cluster_mix]
    tables = {}
    for g, grp in sub.groupby("gpu_type"):
        grp = grp.sort_values("k_layers")
        ks = list(grp["k_layers"])
        if ks != list(range(1, len(ks) + 1)):
            raise ConfigError(f"{throughput_csv}: line {int(grp['line'].min())}: the T(k) table of {g!r} ({model}, "
                              f"{cluster_mix}) has layer counts {ks}, not 1..K; add the missing rows")
        tables[g] = tuple(float(x) for x in grp["T_k_tokens_per_s"])
    return tables


def load_helix_problem(cluster_ini: str | Path, model: str, throughput_csv: str | Path | None = None,
                       cluster_mix: str | None = None) -> HelixProblem:
    """Build a :class:`HelixProblem` from an artifact cluster file and the ``T_i(k)`` table.

    Capacities (spec §1.b (ii)): compute links ``B/α`` tokens/s, source/sink links ``B/τ`` with
    ``τ = 2`` bytes; ``B`` is the file's "bandwidth" taken as bytes/s (``mbps = 1e6``, no factor 8).
    Nodes are the integer indices of ``[ComputeNode-i]``. The NIC caps are already folded into ``T_i(k)``.
    """
    if model not in HELIX_MODELS:
        raise UnknownNameError(f"unknown Helix model {model!r}; known: {sorted(HELIX_MODELS)}")
    spec = HELIX_MODELS[model]
    throughput_csv = DATA_DIR / "node_throughput_T_k.csv" if throughput_csv is None else throughput_csv
    types, raw_links = read_cluster_ini(cluster_ini)
    tables = load_throughput_table(throughput_csv, model, types, cluster_mix)
    throughput = {}
    for node in sorted(types):
        if types[node] not in tables:
            raise UnknownNameError(f"node {node} has type {types[node]!r} without a throughput table "
                                   f"for {model}; tables exist for {sorted(tables)}")
        throughput[node] = tables[types[node]]
    links, src, snk, lat = {}, {}, {}, {}
    for u, v, bw, latency in raw_links:
        if u == "sink" or v == "source":
            u, v = v, u
        if u == "source" and v == "sink":
            raise ConfigError(f"{cluster_ini}: a direct source-sink link is meaningless")
        if u == "source":
            src[v] = bw / TOKEN_SIZE_BYTES
        elif v == "sink":
            snk[u] = bw / TOKEN_SIZE_BYTES
        else:
            links[(u, v)] = bw / spec.activation_size_bytes
        lat[(u, v)] = latency
    return HelixProblem(spec.num_layers, throughput, links, src, snk, link_latency_s=lat, node_types=types)


def load_helix_placement(sol_ini: str | Path, problem: HelixProblem | None = None) -> dict[int, tuple[int, int]]:
    """Read a published placement (``[Settings] offset``; ``compute_node_{i+offset} = [layer ids]``).

    Returns ``{node: (start, end)}`` with ``end`` exclusive. Layer ids must be contiguous integers >= 0. With
    ``problem`` the placement is also validated (every node placed, ranges within ``L`` and ``K_i``, every
    layer covered). Errors are :class:`ConfigError` naming the file and line.
    """
    ini = _Ini(sol_ini, "placement file")
    cp = ini.cp
    offset = 0
    if cp.has_section("Settings") and "offset" in cp["Settings"]:
        try:
            offset = int(cp["Settings"]["offset"])
        except ValueError:
            raise ConfigError(f"{ini.where('Settings', 'offset')}: offset = {cp['Settings']['offset']!r} is not "
                              f"an integer") from None
    if not cp.has_section("Solution"):
        raise ConfigError(f"{ini.path}: no [Solution] section (lines compute_node_<i> = [layer ids])")
    out, line_of = {}, {}
    for key, value in cp["Solution"].items():
        where = ini.where("Solution", key)
        m = re.fullmatch(r"compute_node_(\d+)", key)
        if not m:
            raise ConfigError(f"{where}: unexpected key {key!r} (expected compute_node_<i>)")
        node = int(m.group(1)) - offset
        try:
            layers = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            layers = None
        if not isinstance(layers, (list, tuple)) or not layers or \
                not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers):
            raise ConfigError(f"{where}: {key} = {value[:60]!r} is not a non-empty list of layer ids >= 0")
        if list(layers) != list(range(layers[0], layers[0] + len(layers))):
            raise ConfigError(f"{where}: node {node} holds non-contiguous layers {list(layers)[:20]}; a node holds "
                              f"one contiguous range")
        if node in out:
            raise ConfigError(f"{where}: node {node} is placed twice")
        out[node], line_of[node] = (int(layers[0]), int(layers[-1]) + 1), where
    if problem is not None:
        for node, (a, b) in out.items():
            if node not in problem.throughput:
                raise UnknownNameError(f"{line_of[node]}: node {node} (offset {offset}) is not in the problem; "
                                       f"its nodes are {problem.nodes}")
            if b > problem.num_layers or b - a > problem.max_layers(node):
                raise ConfigError(f"{line_of[node]}: node {node} holds layers [{a}, {b}) but the model has L = "
                                  f"{problem.num_layers} layers and the node at most K = {problem.max_layers(node)}")
        try:
            problem.validate_placement(out)
        except ConfigError as e:
            raise type(e)(f"{ini.path}: {e}") from None
    return out
