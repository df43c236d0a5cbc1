"""Instances (GPU kind x count, TP/PP, role) and the network between them.

An :class:`Instance` is one model replica: ``tp * pp`` GPUs of one kind serving one copy of the weights.
Its GPU count is *derived* (``num_gpus = tp * pp``); passing ``num_gpus`` is allowed as a check and must
agree. A :class:`Cluster` is a model plus its instances plus the links between them; it checks at
construction that the model fits every instance (:class:`~gpusched.errors.DoesNotFitError` otherwise)
and that a prefill/decode-disaggregated cluster has both roles.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from gpusched.errors import ConfigError, DoesNotFitError, UnknownNameError
from gpusched.hardware import GpuSpec, LinkSpec, get_gpu
from gpusched.kvcache import KVCapacity, kv_capacity

__all__ = ["Instance", "Cluster", "LinkSpec", "ROLES", "DEFAULT_LINK"]

ROLES = ("colocated", "prefill", "decode")

DEFAULT_LINK = LinkSpec(bandwidth_bytes_per_s=50e9, latency_s=10e-6)
"""Default link between two instances: one 400 Gb/s InfiniBand NDR / RoCE NIC per GPU (50 GB/s one way),
10 microseconds of one-way latency (RDMA plus switch hops). Override per pair with ``Cluster(links=...)``."""


@dataclass(frozen=True)
class Instance:
    """One serving replica.

    Attributes:
        gpu: GPU kind; a name is resolved with :func:`gpusched.hardware.get_gpu` to a ``GpuSpec``.
        num_gpus: GPUs of the instance; ``None`` derives ``tp * pp``; any other value must equal it.
        tp: tensor-parallel degree.
        pp: pipeline-parallel degree.
        role: ``"colocated"`` (prefill and decode), ``"prefill"`` or ``"decode"``.
        name: unique name in its cluster; ``None`` lets :class:`Cluster` name it ``"<role>-<i>"``.
    """

    gpu: GpuSpec | str
    num_gpus: int | None = None
    tp: int = 1
    pp: int = 1
    role: str = "colocated"
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.gpu, str):
            object.__setattr__(self, "gpu", get_gpu(self.gpu))
        elif not isinstance(self.gpu, GpuSpec):
            raise ConfigError(f"Instance: gpu must be a GPU name or GpuSpec, got {self.gpu!r}")
        for f in ("tp", "pp"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"Instance: {f} must be an int >= 1, got {v!r}")
        n = self.tp * self.pp
        if self.num_gpus is None:
            object.__setattr__(self, "num_gpus", n)
        elif self.num_gpus != n:
            raise ConfigError(
                f"Instance: num_gpus={self.num_gpus!r} but tp*pp = {self.tp}*{self.pp} = {n}; "
                f"pass tp/pp so that tp*pp == num_gpus (or omit num_gpus)")
        if self.role not in ROLES:
            raise ConfigError(f"Instance: role must be one of {ROLES}, got {self.role!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ConfigError(f"Instance: name must be a non-empty string or None, got {self.name!r}")


@dataclass(frozen=True)
class Cluster:
    """A model served by a set of instances connected by links.

    Args:
        model: a ``ModelSpec`` or model name for :func:`gpusched.llm.get_model`.
        instances: the instances; unnamed ones are named ``"<role>-<i>"`` (i counts per role from 0).
        links: ``{(name_a, name_b): LinkSpec}``, symmetric (``(a, b)`` also serves ``(b, a)``).
        default_link: link for every pair not in ``links``.
        memory_utilization, block_size_tokens, dtype, activation_reserve_bytes: passed to
            :func:`gpusched.kvcache.kv_capacity` for every instance.

    Raises:
        DoesNotFitError: the model does not fit an instance (message names it, required vs available).
        ConfigError: duplicate names, links naming unknown instances, or a disaggregated cluster
            lacking a prefill or a decode instance.
    """

    model: object
    instances: tuple
    links: dict | None = None
    default_link: LinkSpec = DEFAULT_LINK
    memory_utilization: float = 0.9
    block_size_tokens: int = 16
    dtype: str = "bf16"
    activation_reserve_bytes: int | None = None
    _capacity: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.model, str):
            from gpusched.llm import get_model

            object.__setattr__(self, "model", get_model(self.model))
        insts = tuple(self.instances)
        if not insts:
            raise ConfigError("Cluster: needs at least one instance")
        counters = {r: 0 for r in ROLES}
        named = []
        for inst in insts:
            if not isinstance(inst, Instance):
                raise ConfigError(f"Cluster: instances must be Instance objects, got {inst!r}")
            if inst.name is None:
                inst = replace(inst, name=f"{inst.role}-{counters[inst.role]}")
            counters[inst.role] += 1
            named.append(inst)
        names = [i.name for i in named]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"Cluster: duplicate instance names {dup}; give each instance a unique name")
        object.__setattr__(self, "instances", tuple(named))

        roles = {i.role for i in named}
        if roles & {"prefill", "decode"} and not {"prefill", "decode"} <= roles:
            missing = ({"prefill", "decode"} - roles).pop()
            raise ConfigError(
                f"Cluster: disaggregated cluster has no {missing!r} instance (roles present: {sorted(roles)}); "
                f"add at least one prefill and one decode instance, or use role='colocated'")

        links = {}
        known = set(names)
        for key, link in (self.links or {}).items():
            try:
                a, b = key
            except (TypeError, ValueError):
                raise ConfigError(f"Cluster: link keys must be (name_a, name_b) pairs, got {key!r}") from None
            unknown = [n for n in (a, b) if n not in known]
            if unknown:
                raise ConfigError(f"Cluster: link {key!r} names unknown instance(s) {unknown}; known: {names}")
            if not isinstance(link, LinkSpec):
                raise ConfigError(f"Cluster: link {key!r} must be a LinkSpec, got {link!r}")
            links[(a, b)] = link
        object.__setattr__(self, "links", links)
        if not isinstance(self.default_link, LinkSpec):
            raise ConfigError(f"Cluster: default_link must be a LinkSpec, got {self.default_link!r}")
        object.__setattr__(self, "_capacity", {})
        self.check_fits()

    # ---- lookups --------------------------------------------------------------------------------
    @property
    def instance_names(self) -> list[str]:
        return [i.name for i in self.instances]

    @property
    def is_disaggregated(self) -> bool:
        return any(i.role != "colocated" for i in self.instances)

    @property
    def total_gpus(self) -> int:
        return sum(i.num_gpus for i in self.instances)

    def by_role(self, role: str) -> list[Instance]:
        """Instances of one role, in declaration order."""
        if role not in ROLES:
            raise ConfigError(f"Cluster.by_role: role must be one of {ROLES}, got {role!r}")
        return [i for i in self.instances if i.role == role]

    def instance(self, name: str) -> Instance:
        for i in self.instances:
            if i.name == name:
                return i
        raise UnknownNameError(f"Cluster: no instance named {name!r}; known: {self.instance_names}")

    def _name(self, inst) -> str:
        name = inst.name if isinstance(inst, Instance) else inst
        self.instance(name)  # raises on unknown
        return name

    def link(self, a, b) -> LinkSpec:
        """The link between instances ``a`` and ``b`` (names or Instances), symmetric."""
        a, b = self._name(a), self._name(b)
        if a == b:
            raise ConfigError(f"Cluster.link: {a!r} to itself is not a network link")
        return self.links.get((a, b)) or self.links.get((b, a)) or self.default_link

    def kv_capacity(self, instance) -> KVCapacity:
        """KV capacity of one instance (name or Instance); see :func:`gpusched.kvcache.kv_capacity`."""
        name = self._name(instance)
        cap = self._capacity.get(name)
        if cap is None:
            inst = self.instance(name)
            try:
                cap = kv_capacity(self.model, inst.gpu, tp=inst.tp, pp=inst.pp,
                                  memory_utilization=self.memory_utilization,
                                  activation_reserve_bytes=self.activation_reserve_bytes,
                                  block_size_tokens=self.block_size_tokens, dtype=self.dtype)
            except DoesNotFitError as e:
                raise DoesNotFitError(f"instance {name!r}: {e}") from None
            self._capacity[name] = cap
        return cap

    def check_fits(self) -> None:
        """Raise :class:`DoesNotFitError` if the model does not fit some instance (run at construction)."""
        for i in self.instances:
            self.kv_capacity(i)
