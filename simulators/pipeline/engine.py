"""A pipelined serving engine: each node runs its layer range, requests travel their own pipeline (Helix §1.c-7).

``simulate_pipeline(cluster, router, trace, mode=...)`` runs a :class:`~simulators.pipeline.spec.PipelineCluster`
with a :class:`~gpusched.policy.PipelineRouter` and returns a
:class:`~simulators.pipeline.results.PipelineResult`.

How a request moves:

1. **Admission.** The coordinator asks the router for the request's stages. KV accounting (``kv_mode``):

   * ``"grow"`` (default; what Helix's simulator does, ``KVCache.initialize_query_kv_cache`` /
     ``grow_query_kv_cache``): on every stage node the engine allocates ``prompt x stage layers`` token-layer
     slots at admission and ``stage layers`` more for each decode step (when the step leaves the
     coordinator). Admission itself only checks that the prompt fits; keeping room for the growth is the
     router's job (Helix's KV *expectation*, ``⌊x + 240 ρ⌋`` per layer) or the feeder's (a fixed in-flight
     count). If a decode step does not fit, Helix's simulator stops on an assertion ("Exceed KV-cache
     capacity"); we raise :class:`~gpusched.errors.KVCacheOverflowError` naming node, request and slots
     (no preemption: the paper has none). Helix allocates the prompt's slots when the prompt reaches each
     node; we do so at admission, which holds them a few hundred ms early (slightly conservative).
   * ``"reserve"``: the request's *final* footprint ``(prompt + output) x stage layers`` is reserved at
     admission (an oracle that knows output lengths; KV never overflows, nothing is preempted).

   If the router says ``None`` or a node lacks room, the request waits in a FIFO at the coordinator
   (``release`` is called on a refused route) and the head is retried whenever a request finishes. A
   request refused while nothing is in flight can never be served and is reported with that reason
   (Helix's online mode asserts instead).
2. **Prompt.** The prompt's tokens leave the source, cross each link (latency + bytes / bandwidth; a directed
   link sends one transfer at a time, FIFO) and queue at each stage node. Reaching the sink yields the first
   output token.
3. **Decode.** Each further output token is one decode step: a single token re-travels the same stages
   (the KV lives there). The request finishes when it has ``output_tokens`` tokens; its KV is freed and the
   router's ``release`` is called.

Nodes batch continuously: whenever a node is idle it takes, in queue order, up to ``prompt_max_requests``
prompts (``prompt_max_tokens`` in total; a longer prompt runs alone) and up to ``decode_max_tokens`` decode
steps. A batch takes, per layer of the node, ``P(prompt tokens on that layer) + D(decode tokens on that
layer)`` (items of a partial-inference stage cover only some layers), plus ``tokens·α/b`` host copies on
the first layer.

Modes:

* ``online``: requests arrive at the trace's ``arrival_time_s``;
* ``offline``: closed loop over the trace rows (arrival = launch). Without ``offline_kv_threshold``:
  ``offline_in_flight`` requests start at 0 and each finished request launches one more (Helix's feeder for
  its baseline schedulers, which cannot refuse work: a fixed, hand-picked in-flight count). With
  ``offline_kv_threshold`` the ``offline_in_flight`` initial requests (Helix: 20) are followed by

  * ``offline_feeder="helix"`` (default, ``OfflineRequestFeeder.check_launch_new_query``): each time a prompt
    or a request finishes, launch **one** request if the bottleneck KV usage is at most the threshold;
  * ``offline_feeder="fill"``: at those events launch *while* the usage is at most the threshold.

  Bottleneck usage = max over layers of used / capacity, each node's slots split evenly over its layers.
  "Used" is the router's KV *expectation* if the router offers one
  (:class:`~gpusched.policy.KVExpectingRouter`, as Helix's feeder reads its scheduler's), else the
  engine's allocated KV.

The run stops at ``duration_s``; decode throughput counts decode-step tokens reaching the sink in
``[warmup_s, duration_s]``. Invariants are asserted as the run goes: KV reserved never exceeds a node's
capacity, items visit their stages in order, and at the end tokens sent = tokens received + tokens in flight.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Hashable, Sequence

import simpy

from gpusched.errors import ConfigError, KVCacheOverflowError
from gpusched.policy import PipelineNodeView, PipelineRouter, PipelineStage, SeqState
from gpusched.workload import Trace

from simulators.pipeline.results import PipelineResult, build_result
from simulators.pipeline.spec import SINK, SOURCE, PipelineCluster

MODES = ("online", "offline")
KV_MODES = ("grow", "reserve")
OFFLINE_FEEDERS = ("helix", "fill")


class _Flight:
    """Engine-side state of one request: its stages, KV reservations and decode timing."""

    __slots__ = ("seq", "stages", "reserved", "step_start_s", "decode_latency_sum_s", "status", "in_prompt",
                 "layers_by_node")

    def __init__(self, seq: SeqState) -> None:
        self.seq = seq
        self.stages: list[PipelineStage] | None = None
        self.reserved: dict[Hashable, int] = {}  # node -> token-layer slots held
        self.step_start_s = 0.0
        self.decode_latency_sum_s = 0.0
        self.status = "waiting"
        self.in_prompt = True
        self.layers_by_node: dict = {}


class _Node:
    """Queue, KV ledger and counters of one compute node."""

    def __init__(self, name, spec) -> None:
        self.name, self.spec = name, spec
        self.queue: deque = deque()  # items (flight, stage_index, tokens)
        self.batch: list = []
        self.wake: simpy.Event | None = None
        self.kv_used = 0
        self.kv_peak = 0
        self.active = 0
        self.busy_s = 0.0
        self.batches = 0
        self.tokens = 0
        self.queued_tokens = 0


class PipelineEngine:
    """One run; use :func:`simulate_pipeline`. Attributes after ``run``: ``flights``, ``nodes``, counters."""

    def __init__(self, cluster: PipelineCluster, router: PipelineRouter, trace: Trace, *, mode: str = "online",
                 duration_s: float = 600.0, warmup_s: float = 0.0, offline_in_flight: int = 20,
                 offline_kv_threshold: float | None = None, record_batches: bool = False,
                 kv_mode: str = "grow", offline_feeder: str = "helix") -> None:
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} unknown; use one of {MODES}")
        if kv_mode not in KV_MODES:
            raise ConfigError(f"kv_mode {kv_mode!r} unknown; use one of {KV_MODES}")
        if offline_feeder not in OFFLINE_FEEDERS:
            raise ConfigError(f"offline_feeder {offline_feeder!r} unknown; use one of {OFFLINE_FEEDERS}")
        if not duration_s > warmup_s >= 0:
            raise ConfigError(f"need duration_s > warmup_s >= 0, got duration_s={duration_s}, warmup_s={warmup_s}")
        if mode == "offline" and offline_kv_threshold is None and offline_in_flight < 1:
            raise ConfigError(f"offline_in_flight={offline_in_flight} must be >= 1")
        if offline_kv_threshold is not None and not 0 < offline_kv_threshold <= 1:
            raise ConfigError(f"offline_kv_threshold={offline_kv_threshold} must be in (0, 1]")
        if len(trace) == 0:
            raise ConfigError(f"trace {trace.name!r} has no request")
        self.cluster, self.router, self.trace, self.mode = cluster, router, trace, mode
        self.duration_s, self.warmup_s = float(duration_s), float(warmup_s)
        self.offline_in_flight, self.offline_kv_threshold = offline_in_flight, offline_kv_threshold
        self.kv_mode, self.offline_feeder = kv_mode, offline_feeder
        self.env = simpy.Environment()
        self.nodes = {n: _Node(n, s) for n, s in cluster.nodes.items()}
        self.link_free_at: dict[tuple, float] = {}
        self.flights: list[_Flight] = []
        self.waiting: deque[_Flight] = deque()
        self.next_row = 0
        self.live = 0  # flights launched and neither finished nor rejected
        self.tokens_sent = self.tokens_received = self.tokens_on_links = 0
        self.decode_tokens_in_window = 0
        self.batch_log: list[dict] | None = [] if record_batches else None
        self._rows = trace.df[["request_id", "arrival_time_s", "prompt_tokens", "output_tokens"]].to_numpy(object)
        self._layer_cover = None  # per layer: (nodes holding it, their KV slots per layer summed)
        if offline_kv_threshold is not None:
            cover = [[] for _ in range(cluster.num_layers)]
            for node in self.nodes.values():
                for layer in range(node.spec.start_layer, node.spec.end_layer):
                    cover[layer].append(node)
            self._layer_cover = [(nodes, sum(n.spec.kv_capacity_slots / n.spec.num_layers for n in nodes))
                                 for nodes in cover]

    # ------------------------------------------------------------------ admission
    def _new_flight(self, now_s: float) -> _Flight | None:
        if self.next_row >= len(self._rows):
            return None
        rid, arr, p, o = self._rows[self.next_row]
        arrival = float(arr) if self.mode == "online" else now_s
        seq = SeqState(rid, self.next_row, arrival, int(p), int(o))
        self.next_row += 1
        f = _Flight(seq)
        self.flights.append(f)
        self.live += 1
        return f

    def _views(self) -> dict:
        return {n: PipelineNodeView(n, x.spec.start_layer, x.spec.end_layer, x.queued_tokens, x.active,
                                    x.kv_used, x.spec.kv_capacity_slots) for n, x in self.nodes.items()}

    def _check_stages(self, f: _Flight, stages: Sequence[PipelineStage]) -> None:
        last, prev = 0, SOURCE
        for st in stages:
            node = self.nodes.get(st.node)
            if node is None:
                raise ConfigError(f"router {self.router.name!r} routed request {f.seq.request_id!r} to unknown node {st.node!r}")
            if st.start_layer != last or not node.spec.start_layer <= st.start_layer < st.end_layer <= node.spec.end_layer:
                raise ConfigError(f"router {self.router.name!r}: stage {st} of request {f.seq.request_id!r} does not "
                                  f"continue at layer {last} inside node range [{node.spec.start_layer}, {node.spec.end_layer})")
            self.cluster.link(prev, st.node)
            last, prev = st.end_layer, st.node
        if last != self.cluster.num_layers:
            raise ConfigError(f"router {self.router.name!r}: pipeline of request {f.seq.request_id!r} ends at layer "
                              f"{last}, not L = {self.cluster.num_layers}")
        self.cluster.link(prev, SINK)

    def _try_admit(self, f: _Flight) -> bool:
        now = self.env.now
        stages = self.router.route(f.seq, self._views(), now)
        if stages is None:
            return False
        stages = list(stages)
        self._check_stages(f, stages)
        per_layer = f.seq.prompt_tokens + (f.seq.output_tokens if self.kv_mode == "reserve" else 0)
        layers: dict = {}
        for st in stages:
            layers[st.node] = layers.get(st.node, 0) + st.num_layers
        need = {n: per_layer * k for n, k in layers.items()}
        if any(self.nodes[n].kv_used + c > self.nodes[n].spec.kv_capacity_slots for n, c in need.items()):
            self.router.release(f.seq, now)
            return False
        for n, c in need.items():
            node = self.nodes[n]
            node.kv_used += c
            node.kv_peak = max(node.kv_peak, node.kv_used)
            node.active += 1
            assert node.kv_used <= node.spec.kv_capacity_slots, "KV reserved above capacity"
            f.reserved[n] = c
        f.layers_by_node = layers
        f.stages, f.status = stages, "running"
        f.seq.scheduled_time_s = now
        f.step_start_s = now
        self._send_from_source(f, f.seq.prompt_tokens)
        return True

    def _offer(self, f: _Flight) -> bool:
        """Admit ``f`` now if no one waits before it and it fits; else queue it. Returns whether it ran."""
        if not self.waiting and self._try_admit(f):
            return True
        self.waiting.append(f)
        self._drain_if_idle()
        return False

    def _drain(self) -> None:
        while self.waiting and self._try_admit(self.waiting[0]):
            self.waiting.popleft()
        self._drain_if_idle()

    def _drain_if_idle(self) -> None:
        # nothing in flight and the head is refused: it will be refused forever, so report it
        while self.waiting and not any(n.active for n in self.nodes.values()):
            head = self.waiting[0]
            if self._try_admit(head):
                self.waiting.popleft()
                continue
            head.status = "rejected: no pipeline fits on an idle cluster"
            self.live -= 1
            self.waiting.popleft()

    # ------------------------------------------------------------------ transfers
    def _transfer(self, u, v, tokens: int, items: list) -> None:
        link = self.cluster.link(u, v)
        now = self.env.now
        start = max(now, self.link_free_at.get((u, v), 0.0))
        tx = self.cluster.hop_bytes(u, v, tokens) / link.bandwidth_bytes_per_s
        self.link_free_at[(u, v)] = start + tx
        self.tokens_on_links += tokens
        ev = self.env.timeout(start + tx + link.latency_s - now)
        ev.callbacks.append(lambda _e, v=v, items=items, tokens=tokens: self._arrive(v, items, tokens))

    def _send_from_source(self, f: _Flight, tokens: int) -> None:
        self.tokens_sent += tokens
        self._transfer(SOURCE, f.stages[0].node, tokens, [(f, 0, tokens)])

    def _arrive(self, v, items: list, tokens: int) -> None:
        self.tokens_on_links -= tokens
        if v == SINK:
            for f, _, n in items:
                self._at_sink(f, n)
            return
        node = self.nodes[v]
        for it in items:
            assert it[0].stages[it[1]].node == v, "item delivered to a node that is not its stage"
            node.queue.append(it)
            node.queued_tokens += it[2]
        if node.wake is not None and not node.wake.triggered:
            node.wake.succeed()

    # ------------------------------------------------------------------ nodes
    def _take_batch(self, node: _Node) -> list:
        spec = node.spec
        batch, keep = [], deque()
        n_prompt = prompt_tokens = decode_tokens = 0
        for it in node.queue:
            f, _, n = it
            if f.in_prompt:
                fits = n_prompt < spec.prompt_max_requests and (
                    prompt_tokens + n <= spec.prompt_max_tokens or n_prompt == 0)
                if fits:
                    n_prompt += 1
                    prompt_tokens += n
                    batch.append(it)
                    continue
            elif decode_tokens + n <= spec.decode_max_tokens:
                decode_tokens += n
                batch.append(it)
                continue
            keep.append(it)
        node.queue = keep
        node.queued_tokens -= prompt_tokens + decode_tokens
        return batch

    def _batch_time_s(self, node: _Node, batch: list) -> float:
        lat = node.spec.latency
        groups: dict[tuple[int, int], list[int]] = {}
        entering = 0
        for f, k, n in batch:
            st = f.stages[k]
            g = groups.setdefault((st.start_layer, st.end_layer), [0, 0])
            g[0 if f.in_prompt else 1] += n
            entering += n
        if len(groups) == 1:
            (a, b), (p, d) = next(iter(groups.items()))
            t = (b - a) * lat.layer_s(p, d)
        else:  # partial-inference stages cover different layers: sum per layer segment
            bounds = sorted({x for ab in groups for x in ab})
            t = 0.0
            for x, y in zip(bounds, bounds[1:]):
                p = sum(g[0] for (a, b), g in groups.items() if a <= x < b)
                d = sum(g[1] for (a, b), g in groups.items() if a <= x < b)
                t += (y - x) * lat.layer_s(p, d)
        alpha = self.cluster.activation_bytes_per_token
        return t + sum(entering * alpha / bw for bw in self.cluster.copy_bandwidths_bytes_per_s)

    def _node_loop(self, node: _Node):
        env = self.env
        while True:
            if not node.queue:
                node.wake = env.event()
                yield node.wake
                node.wake = None
            batch = self._take_batch(node)
            dt = self._batch_time_s(node, batch)
            node.batch = batch
            if self.batch_log is not None:
                self.batch_log.append({"time_s": env.now, "node": node.name, "items": len(batch),
                                       "tokens": sum(it[2] for it in batch), "duration_s": dt})
            yield env.timeout(dt)
            node.batch = []
            node.busy_s += dt
            node.batches += 1
            out: dict = {}
            for f, k, n in batch:
                node.tokens += n
                nxt = f.stages[k + 1].node if k + 1 < len(f.stages) else SINK
                grp = out.setdefault(nxt, [[], 0])
                grp[0].append((f, k + 1, n))
                grp[1] += n
            for nxt, (items, tokens) in out.items():
                self._transfer(node.name, nxt, tokens, items)

    # ------------------------------------------------------------------ coordinator
    def _at_sink(self, f: _Flight, tokens: int) -> None:
        now = self.env.now
        self.tokens_received += tokens
        seq = f.seq
        if f.in_prompt:
            f.in_prompt = False
            seq.first_token_time_s = now
            if self.mode == "offline" and self.offline_kv_threshold is not None:
                self._feed()  # a finished prompt is the feeder's other chance to look at KV usage
        else:
            f.decode_latency_sum_s += now - f.step_start_s
            if self.warmup_s <= now <= self.duration_s:
                self.decode_tokens_in_window += 1
        seq.generated_tokens += 1
        if seq.generated_tokens == seq.output_tokens:
            self._finish(f)
            return
        f.step_start_s = now
        if self.kv_mode == "grow":
            self._grow_kv(f)
        self.router.on_decode(seq, now)
        self._send_from_source(f, 1)

    def _grow_kv(self, f: _Flight) -> None:
        """One more token of KV on every stage (Helix: ``grow_query_kv_cache``); overflow stops the run."""
        for n, k in f.layers_by_node.items():
            node = self.nodes[n]
            if node.kv_used + k > node.spec.kv_capacity_slots:
                raise KVCacheOverflowError(
                    f"t = {self.env.now:.3f} s: request {f.seq.request_id!r} needs {k} more KV slots on node {n!r}, "
                    f"which holds {node.kv_used} of {node.spec.kv_capacity_slots} (Helix's simulator asserts here "
                    f"too); admit less: a lower offline_in_flight / offline_kv_threshold, a router with KV "
                    f"expectation, or kv_mode='reserve'")
            node.kv_used += k
            node.kv_peak = max(node.kv_peak, node.kv_used)
            f.reserved[n] += k

    def _finish(self, f: _Flight) -> None:
        now = self.env.now
        f.seq.finish_time_s = now
        f.status = "finished"
        self.live -= 1
        for n, c in f.reserved.items():
            self.nodes[n].kv_used -= c
            self.nodes[n].active -= 1
        f.reserved = {}
        self.router.release(f.seq, now)
        self._drain()
        if self.mode == "offline":
            self._feed()

    def _bottleneck_kv_usage(self) -> float:
        """Max over layers of used / capacity; "used" is the router's expectation when it keeps one."""
        expected = getattr(self.router, "expected_kv_used_slots", None)
        used_by = expected() if callable(expected) else {n: x.kv_used for n, x in self.nodes.items()}
        worst = 0.0
        for nodes, cap in self._layer_cover:
            used = sum(used_by.get(n.name, 0) / n.spec.num_layers for n in nodes)
            worst = max(worst, used / cap if cap else 1.0)
        return worst

    def _feed(self) -> None:
        """Offline closed loop: keep the in-flight target (or Helix's KV-usage rule) satisfied."""
        launched = 0
        while True:
            if self.offline_kv_threshold is None or self.env.now == 0:
                if self.live >= self.offline_in_flight:
                    return
            elif self.waiting or self._bottleneck_kv_usage() > self.offline_kv_threshold:
                return  # (a refused request waiting at the coordinator also stops the feeder)
            elif self.offline_feeder == "helix" and launched:
                return  # Helix launches at most one request per finished prompt / request
            f = self._new_flight(self.env.now)
            if f is None:
                return
            launched += 1
            if not self._offer(f) and f.status == "waiting":
                return  # it waits for a finish; a rejected one is replaced at once

    def _arrivals(self):
        env = self.env
        while True:
            if self.next_row >= len(self._rows) or float(self._rows[self.next_row][1]) > self.duration_s:
                return
            t = float(self._rows[self.next_row][1])
            if t > env.now:
                yield env.timeout(t - env.now)
            self._offer(self._new_flight(env.now))

    def run(self) -> PipelineResult:
        t0 = time.perf_counter()
        for node in self.nodes.values():
            self.env.process(self._node_loop(node))
        if self.mode == "online":
            self.env.process(self._arrivals())
        else:
            self._feed()
        self.env.run(until=self.duration_s)
        in_nodes = sum(it[2] for n in self.nodes.values() for it in list(n.queue) + n.batch)
        assert self.tokens_sent == self.tokens_received + in_nodes + self.tokens_on_links, "tokens not conserved"
        for f in self.flights:
            if f.status == "finished":
                assert f.seq.generated_tokens == f.seq.output_tokens, "finished with missing tokens"
            elif f.status == "running":
                f.status = "unfinished: running at the horizon"
            elif f.status == "waiting":
                f.status = "unfinished: waiting for a pipeline at the horizon"
        return build_result(self, time.perf_counter() - t0)


def simulate_pipeline(cluster: PipelineCluster, router: PipelineRouter, trace: Trace, *, mode: str = "online",
                      duration_s: float = 600.0, warmup_s: float = 0.0, offline_in_flight: int = 20,
                      offline_kv_threshold: float | None = None, record_batches: bool = False,
                      kv_mode: str = "grow", offline_feeder: str = "helix") -> PipelineResult:
    """Serve ``trace`` on ``cluster`` with ``router``; see the module docstring for the model.

    ``trace`` gives lengths (and, online, arrival times in seconds); offline it is consumed in row order.
    Deterministic: the same inputs (and router seed) give the same result.
    """
    return PipelineEngine(cluster, router, trace, mode=mode, duration_s=duration_s, warmup_s=warmup_s,
                          offline_in_flight=offline_in_flight, offline_kv_threshold=offline_kv_threshold,
                          record_batches=record_batches, kv_mode=kv_mode, offline_feeder=offline_feeder).run()
