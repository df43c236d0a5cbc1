"""The contracts between serving engines (``simulators``) and online policies (``formulations``).

An engine owns time, KV blocks and token accounting; a policy only decides. Four decisions exist:

- :class:`BatchScheduler` — which waiting/running sequences of one instance run in the next step, and
  how many new tokens each computes (prefill chunk or one decode token); it may preempt.
- :class:`Router` — which instance an arriving request goes to.
- :class:`AdmissionGate` — whether an arriving request is admitted at all (rejections are reported).
- :class:`PipelineRouter` — in a layer-partitioned (pipelined) cluster, the chain of nodes and layer ranges
  a request travels (Helix); it speaks :class:`PipelineStage` and :class:`PipelineNodeView`.

Both sides speak :class:`SeqState` (one request's progress inside an instance) and :class:`StepPlan`
(one step's schedule). Engines call the scheduler with a live :class:`~gpusched.kvcache.BlockManager`
so that admission and preemption see exactly the blocks the engine will allocate.

Token accounting follows vLLM V1: ``num_tokens = prompt_tokens + generated_tokens``; a step schedules
``num_tokens - num_computed_tokens`` new tokens at most; when a step brings ``num_computed_tokens`` up to
``num_tokens`` the sequence samples one token. A decode step therefore computes exactly one token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping, Protocol, Sequence, runtime_checkable

from gpusched.kvcache import BlockManager


class SeqState:
    """Mutable progress of one request inside one instance (times in seconds of simulated time).

    ``num_computed_tokens`` counts tokens whose KV is in the cache; it drops to 0 on a recompute
    preemption (vLLM V1 recomputes prompt and generated tokens on resume).
    """

    __slots__ = (
        "request_id", "index", "arrival_time_s", "prompt_tokens", "output_tokens", "block_hashes",
        "predicted_output_tokens", "num_computed_tokens", "generated_tokens", "scheduled_time_s",
        "first_token_time_s", "finish_time_s", "num_preemptions", "instance", "cached_tokens", "swapped",
        "extra",
    )

    def __init__(self, request_id, index: int, arrival_time_s: float, prompt_tokens: int,
                 output_tokens: int, block_hashes: tuple[int, ...] | None = None,
                 predicted_output_tokens: int | None = None):
        self.request_id = request_id
        self.index = index  # row of the request in the trace: engines key their arrays by it
        self.arrival_time_s = arrival_time_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.block_hashes = block_hashes
        self.predicted_output_tokens = predicted_output_tokens
        self.num_computed_tokens = 0
        self.generated_tokens = 0
        self.scheduled_time_s: float | None = None
        self.first_token_time_s: float | None = None
        self.finish_time_s: float | None = None
        self.num_preemptions = 0
        self.instance: int | None = None
        self.cached_tokens = 0  # prompt tokens found in the prefix cache at the last admission
        self.swapped = False  # preempted by swapping its KV to host memory (to be swapped back in)
        self.extra: dict | None = None  # room for a policy's own per-request notes

    @property
    def num_tokens(self) -> int:
        """Tokens the sequence holds once all scheduled work is done: prompt plus generated."""
        return self.prompt_tokens + self.generated_tokens

    @property
    def in_prefill(self) -> bool:
        """True while more than one token remains to compute (prompt, or recompute after preemption)."""
        return self.num_tokens - self.num_computed_tokens > 1 or self.generated_tokens == 0

    def __repr__(self) -> str:
        return (f"SeqState(id={self.request_id!r}, prompt={self.prompt_tokens}, out={self.output_tokens}, "
                f"computed={self.num_computed_tokens}, generated={self.generated_tokens})")


@dataclass
class StepPlan:
    """One step's schedule: ``entries[k] = (seq, new_tokens)``; ``preempted`` lists sequences evicted now.

    Engines derive the step-time inputs from it: an entry whose ``new_tokens == 1`` and whose sequence
    has generated at least one token is a decode at context ``num_computed_tokens``; every other entry
    is a prefill chunk of ``new_tokens`` over ``num_computed_tokens`` cached tokens. ``swap_tokens``
    adds a host-link transfer of that many tokens' KV to the step.

    An empty plan may carry two requests to the engine:

    - ``wake_at_s``: call ``schedule`` again at this simulated time (s) even if nothing arrives or
      finishes before it (a policy that waits on a clock, e.g. an accumulation window);
    - ``hold=True``: the sequences in ``running`` keep their KV and wait on purpose (a threshold policy
      that pauses a stage until enough requests accumulate). Without it, an empty plan while sequences
      hold KV is a stall, and engines that check invariants raise. A run that ends with held sequences
      reports them unfinished.
    """

    entries: list[tuple[SeqState, int]] = field(default_factory=list)
    preempted: list[SeqState] = field(default_factory=list)
    swap_tokens: int = 0  # KV tokens moved between GPU and host memory in this step (out + in)
    wake_at_s: float | None = None  # with an empty plan: schedule again at this time (s) at the latest
    hold: bool = False  # with an empty plan: running sequences wait on purpose, keeping their KV

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)


@runtime_checkable
class BatchScheduler(Protocol):
    """Chooses the next step of one instance.

    ``waiting`` is the instance's queue in arrival order (preempted sequences are put back at its
    front); ``running`` the sequences holding KV. The scheduler mutates both lists (moving admitted
    sequences to ``running``, preempted ones to ``waiting``), allocates KV through ``kv`` for every
    token it schedules, and frees the blocks of what it preempts. It returns the plan; an empty plan
    means "nothing can run now" and the engine waits for the next arrival or finish, or for the plan's
    ``wake_at_s``; an empty plan with sequences in ``running`` must say ``hold=True`` (see :class:`StepPlan`).

    A scheduler may declare ``stable_decode_runs = True``. It promises two things:

    - after a step in which it decoded every running sequence (and preempted nothing), it would keep
      scheduling exactly that until a sequence finishes, a request arrives, or KV growth runs out of
      free blocks;
    - after a step in which it scheduled every running sequence and preempted nothing, if no request
      is waiting and every running sequence is decoding (``num_computed_tokens == num_tokens - 1``,
      ``generated_tokens >= 1``), its next plan decodes all of them, one token each, in ``running``
      order, preempting nothing, whenever KV for that token of each is free.

    A scheduler that keeps only the second promise (its admissions depend on more than the queue and
    the free KV, e.g. a feasibility check that changes every step) declares
    ``decode_runs_when_queue_empty = True`` instead: engines then advance runs only while nothing waits.

    Engines then advance such runs in one event (fast mode) and, in the second case, grow the KV
    themselves (``BlockManager.grow_each_to``) instead of calling ``schedule``: the scheduler must not
    rely on being called at every step. Without either attribute every step is scheduled one by one.

    ``kv`` may hold blocks of sequences that are in neither list: on the prefill instance of a
    prefill/decode pair, a sequence being handed over keeps its KV until the transfer ends. Check what
    is free (``kv.num_free_blocks``, ``kv.allocate_if_free``) rather than infer it from ``running``.

    A scheduler may also define ``compiled_rule() -> CompiledRule | None``: the rule, among those the
    compiled serving engine carries, that makes exactly its decisions with its present settings (None:
    none does, e.g. with a prediction callable). See :class:`CompiledRule`.
    """

    name: str

    def schedule(self, waiting: list[SeqState], running: list[SeqState], kv: BlockManager,
                 now_s: float) -> StepPlan: ...


@dataclass(frozen=True)
class CompiledRule:
    """A batch scheduler's decisions as a rule of the compiled serving engine (:mod:`simulators.compiled`).

    The compiled engine is a numba transcription of the SimPy engine's step mode. Besides the baseline
    schedulers it carries transcriptions of a few policies' rules, each followed bit for bit against the
    Python policy that stays its source (the equality tests are the referee). A policy opts in by
    returning one from ``compiled_rule()`` when its settings are ones the transcription covers; the
    engine never imports the policy.

    name : the transcribed rule: ``"mc-sf"`` (``formulations.mcsf.McsfScheduler``: every running sequence
        continues, then the longest prefix of the queue in priority order that passes the
        future-feasibility check starts, its prompt whole); ``"wait"`` and ``"nested-wait"``
        (``formulations.nested_wait.WaitScheduler``, Algorithm 1, and ``NestedWaitScheduler``, Algorithm 2:
        stage thresholds per type or segment, pauses with ``StepPlan.hold``, wake-up timers).
    token_budget : tokens of one step (the policy's ``max_num_batched_tokens``); 0: the rule has none.
    priority : queue order: ``"output"`` (the true output tokens, shortest first: the oracle prediction),
        or ``"arrival"``; ties by trace row.
    params : the rule's settings beyond these, by name (empty for ``"mc-sf"``). For ``"wait"`` and
        ``"nested-wait"``: ``mode`` (``"paper"`` or ``"no-wait"``), ``thresholds`` (ints, one per type or
        segment), ``max_in_flight`` (int or None), ``drain_after_s`` and ``max_wait_s`` (s, or None); for
        ``"wait"`` also ``type_map``, a request's type from its lengths: ``("exact", ((prompt_tokens,
        output_tokens, type), ...))`` or ``("output-bins", edges, types)`` (type ``types[b]`` for
        ``b = bisect_left(edges, output_tokens)``, -1: none); for ``"nested-wait"`` ``segment_ends`` (the
        segments' last decode stages, increasing). Values are immutable (tuples, numbers, strings).
    """

    name: str
    token_budget: int
    priority: str = "output"
    params: Mapping[str, object] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class InstanceView:
    """What a router may see of an instance at the moment a request arrives."""

    index: int
    role: str
    num_waiting: int
    num_running: int
    outstanding_tokens: int  # prompt tokens still to prefill plus output tokens still to generate
    kv_used_blocks: int
    kv_total_blocks: int

    @property
    def kv_utilization(self) -> float:
        return self.kv_used_blocks / self.kv_total_blocks if self.kv_total_blocks else 0.0


@runtime_checkable
class Router(Protocol):
    """Picks the instance for an arriving request: returns the ``index`` of one of ``instances``.

    ``instances`` is a sequence of :class:`InstanceView` or of objects with the same attributes that
    read the instance when asked (the serving engine passes such live views, so that a router that reads
    nothing costs nothing); they are valid during the call. Engines may offer a subset of the cluster
    (the decode instances for a hand-off, the instances whose KV holds the request), so return the chosen
    view's ``index``, not its position.
    """

    name: str

    def route(self, request: SeqState, instances: Sequence[InstanceView], now_s: float) -> int: ...


@runtime_checkable
class AdmissionGate(Protocol):
    """Admits or rejects an arriving request; a rejection is recorded with the returned reason."""

    name: str

    def admit(self, request: SeqState, instances: Sequence[InstanceView], now_s: float) -> tuple[bool, str]: ...


# ------------------------------------------------------------------ pipelined serving (Helix-style)
@dataclass(frozen=True)
class PipelineStage:
    """One hop of a request's pipeline: ``node`` computes layers ``[start_layer, end_layer)`` (end exclusive).

    A request's pipeline is a list of stages whose layer ranges chain from 0 to ``L``
    (``stages[k].end_layer == stages[k + 1].start_layer``); all its decode steps reuse it, because its KV
    cache lives on those nodes.
    """

    node: Hashable
    start_layer: int
    end_layer: int

    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer


@dataclass(frozen=True)
class PipelineNodeView:
    """What a pipeline router may see of one compute node when it routes a request.

    ``queued_tokens``: tokens waiting in the node's queue (prompt tokens, 1 per decode step);
    ``active_requests``: unfinished requests whose pipeline includes the node; KV in token-layer slots.
    """

    node: Hashable
    start_layer: int
    end_layer: int
    queued_tokens: int
    active_requests: int
    kv_used_slots: int
    kv_capacity_slots: int


@runtime_checkable
class PipelineRouter(Protocol):
    """Chooses each request's per-request pipeline in a pipelined (layer-partitioned) cluster.

    The engine calls ``route`` when a request is to be admitted (arrival, or a retry after a rejection); a
    ``None`` answer means "not now": the engine keeps the request waiting and retries after a request
    finishes. It calls ``on_decode`` when a decode step of a routed request leaves the coordinator (routers
    that balance load per token, like Helix's IWRR, charge the path), and ``release`` exactly once per
    routed request, when its KV is freed (it finished, or the engine could not place it after routing).
    """

    name: str

    def route(self, request: SeqState, nodes: Mapping[Hashable, PipelineNodeView],
              now_s: float) -> Sequence[PipelineStage] | None: ...

    def on_decode(self, request: SeqState, now_s: float) -> None: ...

    def release(self, request: SeqState, now_s: float) -> None: ...


@runtime_checkable
class KVExpectingRouter(PipelineRouter, Protocol):
    """A :class:`PipelineRouter` that keeps its own *expected* KV use per node (Helix's ``KVExpectation``).

    Optional: an engine's offline feeder reads it, as Helix's feeder reads its scheduler's expectation,
    instead of the KV actually allocated. Values are token-layer slots per node name.
    """

    def expected_kv_used_slots(self) -> Mapping[Hashable, int]: ...


# ------------------------------------------------------------------ multi-round sessions (AMPD-style)
@dataclass(frozen=True)
class SessionPrefillView:
    """One pending prefill of a multi-round session, as a placement policy reads it.

    ``incr_tokens`` new tokens over ``hist_tokens`` tokens whose KV the session's decode instance holds
    (0 for an initial prefill, or after the history was evicted: then the evicted history is part of
    ``incr_tokens``); ``enqueue_time_s`` is when the task was formed (its TTFT clock starts there);
    ``postponed`` counts how often a reordering scheduler moved it later.
    """

    session_id: Hashable
    round: int
    hist_tokens: int
    incr_tokens: int
    enqueue_time_s: float
    decode_index: int
    postponed: int = 0


@dataclass(frozen=True)
class SessionWorkerView:
    """A worker of a session-serving cluster at the moment a placement policy is asked.

    ``role``: ``"prefill"`` (prefill only) or ``"decode"`` (holds sessions' KV and decodes; runs local
    prefills, which pause its decodes). ``key``: the worker's key in the run's cost model (see
    :class:`SessionCostModel`). ``queue``: its pending prefills, head first. ``ttft_hat_s``: mean TTFT of the
    prefills that completed on it within the last stats window (0 with none); ``itl_hat_s``: mean inter-token
    gap of its decode steps within the window (0 with none). ``running_remaining_s``: time left (s) of the
    prefill it executes now (0 if none). KV in tokens.
    """

    index: int
    role: str
    key: Hashable
    queue: tuple[SessionPrefillView, ...]
    ttft_hat_s: float
    itl_hat_s: float
    running_remaining_s: float
    num_decoding: int
    kv_free_tokens: int
    kv_total_tokens: int


@runtime_checkable
class SessionCostModel(Protocol):
    """The times a session engine charges (seconds); worker arguments are :attr:`SessionWorkerView.key` values.

    ``prefill_time_s(h, m, w)``: ``m`` new tokens over ``h`` cached ones on worker ``w``;
    ``decode_time_s(b, c, w)``: one decode step of ``b`` sequences with ``c`` context tokens in total;
    ``kv_time_s(l, src, dst)``: moving the KV of ``l`` tokens between two workers (0 for ``l = 0``);
    ``kv_bytes_per_token``: whole-model KV bytes of one token.
    """

    kv_bytes_per_token: float

    def prefill_time_s(self, hist_tokens: int, incr_tokens: int, worker: Hashable) -> float: ...

    def decode_time_s(self, batch_size: int, context_tokens: int, worker: Hashable) -> float: ...

    def kv_time_s(self, tokens: int, src: Hashable, dst: Hashable) -> float: ...


@runtime_checkable
class PrefillPlacement(Protocol):
    """Decides where a session's prefill runs: ``None`` = locally on its decode worker ``decode`` (pausing its
    decodes; no KV moves), or the ``index`` of one of ``prefill_workers`` (which reads the history KV from
    ``decode`` when it starts the task and returns only the increment's KV). Called once per prefill task
    (initial and incremental), when the task is formed and the decode worker has reserved KV for it.
    """

    name: str

    def place(self, task: SessionPrefillView, decode: SessionWorkerView,
              prefill_workers: Sequence[SessionWorkerView], now_s: float) -> int | None: ...


# ------------------------------------------------------------------ cluster dispatch (central queue, GPU modes)
GPU_MIXED, GPU_SOLO, GPU_SHARED = "mixed", "solo", "shared"
GPU_MODES = (GPU_MIXED, GPU_SOLO, GPU_SHARED)


@runtime_checkable
class DispatchView(Protocol):
    """What a :class:`ClusterDispatcher` reads of the cluster when it decides (read-only; the engine keeps it
    current, O(1) per attribute, valid during the call).

    Per queue ``k`` (the dispatcher's queue keys ``0 .. num_queues - 1``): ``waiting[k]`` requests held in the
    central queue, ``prefilling[k]`` requests of the queue in prefill on some GPU, ``oldest_waiting_s[k]`` the
    arrival time (s) of its oldest waiting request (``inf`` when none waits). Per GPU ``g``: ``modes[g]``.
    """

    now_s: float
    num_gpus: int
    modes: Sequence[str]
    waiting: Sequence[int]
    prefilling: Sequence[int]
    oldest_waiting_s: Sequence[float]

    def free_decode_gpus(self, mode: str) -> Sequence[int]:
        """GPUs in ``mode`` with a free decode slot, in the engine's (deterministic) order."""
        ...


@runtime_checkable
class ClusterDispatcher(Protocol):
    """Cluster-level control of a pool of identical GPUs: admission, prefill placement, decode placement, modes.

    Unlike a :class:`Router` (one instance per arrival) and an :class:`AdmissionGate` (yes/no at arrival), a
    dispatcher holds requests in a **central queue** and decides *when* and *where* each prefills, and *where*
    its decode runs (the prefill's GPU, another GPU after a KV transfer over the link, or a decode buffer).

    **GPU modes** (:data:`GPU_MODES`), one per GPU from :meth:`gpu_modes`, fixed for a run; ``B`` is
    ``max_decodes``, ``C`` is ``chunk_tokens``:

    * ``"mixed"``: at most one prefill at a time, in chunks of ``C`` tokens per step, beside at most ``B - 1``
      decodes (one slot stays reserved for a prefill);
    * ``"solo"``: at most ``B`` decodes, never a prefill;
    * ``"shared"``: ``B`` generic slots, at most one of which runs a prefill (in ``C``-token chunks).

    A GPU steps with whatever it holds: a step with a prefill chunk is a mixed step, one without is decode-only.

    **The engine asks**:

    * at an arrival: :meth:`on_arrival` -- a queue key (the request waits there, FCFS within the queue) or a
      string (rejected, with that reason); then, for each GPU that may start a prefill, lowest index first,
      :meth:`choose_prefill` until it answers ``None``;
    * when a GPU may start a prefill (an arrival, a prefill or a decode ended): :meth:`choose_prefill` -- a queue
      key, whose oldest request prefills there, or ``None`` (the slot stays idle);
    * when a prefill completes (first token sampled) on ``g``: :meth:`route_decode` -- a GPU with a free decode
      slot (``g`` itself: the KV stays; another: the KV moves over the link first, the slot is held meanwhile)
      or a buffer name (the request waits there, FCFS across buffers' requests; its KV is parked off the GPU);
      with ``prefill_first`` the engine offers ``g`` a new prefill before it routes;
    * when a decode slot frees on ``g``: :meth:`pull_decode` -- a buffer whose oldest request takes it, or
      ``None``; repeated while ``g`` has a free slot and the buffer is not empty; then (or before, with
      ``prefill_first``) ``g`` is offered a prefill.

    Requests waiting in the central queue or in a decode buffer may abandon (the engine's patience model);
    in service they never do.
    """

    name: str
    num_queues: int
    max_decodes: int
    chunk_tokens: int
    prefill_first: bool

    def gpu_modes(self, num_gpus: int) -> Sequence[str]: ...

    def on_arrival(self, request: SeqState, view: DispatchView) -> int | str: ...

    def choose_prefill(self, view: DispatchView, gpu: int) -> int | None: ...

    def route_decode(self, view: DispatchView, request: SeqState, queue: int, from_gpu: int) -> int | str: ...

    def pull_decode(self, view: DispatchView, gpu: int) -> str | None: ...
