"""Cache policies: small parameter objects naming a compiled kernel (kernels.py), and a registry.

A policy's behaviour lives in its kernel branch; the object only says which kernel, with which
parameters, and what it needs from the trace (Belady's future, the static profile). State is
built over the key space of a model description (a Budget's keys and pools, the number of MoE
layers), so the runtime builds the very same state for a live model as `simulate` does for a
trace; only the policies that read a trace (Belady, static without a profile) need its stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from ..errors import ExpertcacheError
from . import kernels
from .state import PolicyState, new_state
from .budget import Budget
from .stream import LookupStream

__all__ = ["Policy", "POLICIES", "register", "get_policy", "LRU", "FIFO", "LFU", "LFUDecay", "Belady",
           "BeladySize", "StaticFrequency", "GDSF", "Hyperbolic", "Random"]


class Policy(Protocol):
    name: ClassVar[str]
    kind: ClassVar[int]
    uses_future: ClassVar[bool]

    def new_state(self, budget: Budget, num_layers: int, stream: LookupStream | None = None) -> PolicyState: ...


POLICIES: dict[str, type] = {}


def register(cls: type) -> type:
    """Add a policy class to the registry under `cls.name` (usable as a decorator)."""
    if not getattr(cls, "name", None):
        raise ExpertcacheError(f"{cls.__name__} needs a class attribute `name` to be registered")
    POLICIES[cls.name] = cls
    return cls


def get_policy(policy: "str | Policy") -> "Policy":
    """A policy object from a registered name (with default parameters) or the object itself."""
    if not isinstance(policy, str):
        if not callable(getattr(policy, "new_state", None)):
            raise ExpertcacheError(f"policy must be a policy name or a policy object, got {policy!r}")
        return policy
    name = policy.strip().lower()
    if name not in POLICIES:
        raise ExpertcacheError(f"unknown policy {policy!r}; choose from {', '.join(sorted(POLICIES))}")
    return POLICIES[name]()


def per_layer_name(policy: "str | Policy") -> bool:
    """A policy name with the "layer-" prefix, which selects the per-layer scope."""
    return isinstance(policy, str) and policy.strip().lower().startswith("layer-")


def resolve_policy(policy: "str | Policy", scope: str | None = None) -> tuple["Policy", str]:
    """(policy object, scope). Scope None is global unless a "layer-" name prefix selects the
    per-layer scope, which an explicit global scope contradicts."""
    if per_layer_name(policy):
        if scope == "global":
            raise ExpertcacheError(f"policy {policy} is per-layer; drop the global scope or the layer- prefix")
        policy, scope = policy.strip()[len("layer-"):], "layer"
    return get_policy(policy), scope or "global"


@dataclass(frozen=True)
class _Kernel:
    """Shared construction: the kernel kind plus optional params and fixed priorities."""

    uses_future: ClassVar[bool] = False

    def _params(self, num_layers: int) -> tuple:
        return ()

    def _fixed(self, stream: LookupStream | None) -> np.ndarray | None:
        return None

    def new_state(self, budget: Budget, num_layers: int, stream: LookupStream | None = None) -> PolicyState:
        """A cold state over the budget's keys and pools (`stream` only for policies that read it)."""
        return new_state(self.kind, budget.key_pool, budget.key_cost, len(budget.pool_budget), self._params(num_layers),
                         self._fixed(stream))


@register
@dataclass(frozen=True)
class LRU(_Kernel):
    """Evict the least recently used key (last use = position in the request stream)."""

    name: ClassVar[str] = "lru"
    kind: ClassVar[int] = kernels.LRU


@register
@dataclass(frozen=True)
class FIFO(_Kernel):
    """Evict the key admitted first; hits do not reorder."""

    name: ClassVar[str] = "fifo"
    kind: ClassVar[int] = kernels.FIFO


@register
@dataclass(frozen=True)
class LFU(_Kernel):
    """Evict the least frequently used key; counts are all-time and survive eviction; ties LRU."""

    name: ClassVar[str] = "lfu"
    kind: ClassVar[int] = kernels.LFU


@register
@dataclass(frozen=True)
class LFUDecay(_Kernel):
    """LFU whose counts halve every `half_life` tokens (one token = one batch per MoE layer).

    This is also LRFU's combined recency-frequency value: a short half-life tends to LRU,
    a long one to LFU.
    """

    name: ClassVar[str] = "lfu-decay"
    kind: ClassVar[int] = kernels.LFU_DECAY
    half_life: float = 16.0

    def _params(self, num_layers):
        if self.half_life <= 0:
            raise ExpertcacheError(f"lfu-decay half_life must be > 0 tokens, got {self.half_life}")
        return (math.log(2.0) / (self.half_life * num_layers),)  # one token = one batch per MoE layer


@register
@dataclass(frozen=True)
class Belady(_Kernel):
    """Offline bound (MIN): evict the key whose next use is furthest, looking ahead in batches."""

    name: ClassVar[str] = "belady"
    kind: ClassVar[int] = kernels.BELADY
    uses_future: ClassVar[bool] = True


@register
@dataclass(frozen=True)
class BeladySize(_Kernel):
    """Byte-aware offline heuristic for experts of differing sizes: evict the largest
    (batches until the next use) x size; with slot budgets it is Belady."""

    name: ClassVar[str] = "belady-size"
    kind: ClassVar[int] = kernels.BELADY_SIZE
    uses_future: ClassVar[bool] = True


@register
@dataclass(frozen=True)
class StaticFrequency(_Kernel):
    """Keep the keys most used over a profile (default: the replayed stream itself)."""

    name: ClassVar[str] = "static"
    kind: ClassVar[int] = kernels.STATIC
    profile: tuple | None = None  # [K] use counts; None = counts of the replayed stream

    def _fixed(self, stream):
        if self.profile is not None:
            return np.asarray(self.profile, np.float64)
        if stream is None:
            raise ExpertcacheError("the static policy needs a frequency profile: StaticFrequency(profile=counts), "
                                   "e.g. a trace's build_stream(trace).key_counts")
        return stream.key_counts.astype(np.float64)


@register
@dataclass(frozen=True)
class GDSF(_Kernel):
    """Greedy-Dual-Size-Frequency: priority = clock + uses / size, clock = last evicted priority.

    Frequency plus ageing (recency) plus size: small, often used experts stay.
    """

    name: ClassVar[str] = "gdsf"
    kind: ClassVar[int] = kernels.GDSF


@register
@dataclass(frozen=True)
class Hyperbolic(_Kernel):
    """Hyperbolic caching (Blankstein et al., USENIX ATC 2017): evict the lowest
    uses-since-admission / time-in-cache, evaluated at eviction time over the whole pool (the
    exact form, not the paper's sampled one). Frequency and recency in one number."""

    name: ClassVar[str] = "hyperbolic"
    kind: ClassVar[int] = kernels.HYPERBOLIC


@register
@dataclass(frozen=True)
class Random(_Kernel):
    """Evict a pseudo-random key, reproducible from `seed`."""

    name: ClassVar[str] = "random"
    kind: ClassVar[int] = kernels.RANDOM
    seed: int = 0

    def _params(self, num_layers):
        return (float(self.seed),)
