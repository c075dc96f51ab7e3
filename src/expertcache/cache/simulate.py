"""`simulate`: replay a trace through a cache policy with engine accounting.

Shape key: B batches, L MoE layers, N tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..checks import is_whole
from ..errors import ExpertcacheError
from ..trace.opening import open_trace
from .budget import Budget, budget_warnings, layer_expert_bytes, resolve_budget
from .policies import Policy, resolve_policy
from .prefetch import PrefetchConfig, PrefetchReport, plan_prefetch
from .engine import EVERY_MISS, PF_BYTES
from .replay import Replayed, replay
from .stream import LookupStream, stream_for

__all__ = ["simulate", "SimulationResult", "HitCounts", "run_stream", "ACCOUNTINGS"]

ACCOUNTINGS = ("published", "strict")  # the published replays' rule, and the runtime's


class HitCounts:
    """Rates from the lookup/hit counts, and their JSON: shared by a replay's result and a live run's."""

    @property
    def misses(self) -> int:
        return self.lookups - self.hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    @property
    def decode_hit_rate(self) -> float | None:
        """None when no decode step looked anything up (a prefill-only trace)."""
        return self.decode_hits / self.decode_lookups if self.decode_lookups else None

    def counters_json(self, prefetch: dict | None) -> dict:
        """The public JSON contract of `expertcache simulate --json`, one definition for both."""
        return {
            "policy": self.policy, "scope": self.scope, "accounting": self.accounting, "budget_bytes": self.budget_bytes,
            "budget_slots": self.budget_slots, "lookups": self.lookups, "hits": self.hits, "hit_rate": self.hit_rate,
            "decode_lookups": self.decode_lookups, "decode_hits": self.decode_hits,
            "decode_hit_rate": self.decode_hit_rate, "bytes_read": self.bytes_read,
            "misses_on_cpu": self.misses_on_cpu, "prefetch": prefetch,
        }


@dataclass(frozen=True)
class SimulationResult(HitCounts):
    """Counts of one replay. Totals are attributes; breakdowns come from the per-batch arrays."""

    policy: str
    scope: str
    accounting: str
    budget_bytes: int | None
    budget_slots: int | None
    lookups: int
    hits: int
    decode_lookups: int
    decode_hits: int
    bytes_read: int | None  # misses plus prefetches; None when the trace has no expert sizes
    misses_on_cpu: int  # misses computed where the weights live, never loaded (misses_on_cpu_below)
    prefetch: PrefetchReport | None
    # per batch, unsigned, the smallest type that holds a batch's distinct keys (a long k = 1
    # replay is faster with them small): cast before arithmetic that can go below zero
    batch_hits: np.ndarray = field(repr=False)  # [B]
    batch_misses: np.ndarray = field(repr=False)  # [B]
    batch_at_source: np.ndarray = field(repr=False)  # [B] misses computed where the weights live
    layer_bytes: np.ndarray | None = field(repr=False)  # [L] bytes of one expert per MoE layer, None unknown
    stream: LookupStream = field(repr=False)
    warnings: tuple[str, ...] = ()  # sizing problems (sizing.py), for people, not for the JSON contract

    def _batch_bytes(self, experts: np.ndarray) -> np.ndarray:
        """[B] bytes of `experts` experts per batch (a batch is one layer): derived, not stored,
        since a long k = 1 replay would spend more on writing them than on the cache."""
        return experts * (0 if self.layer_bytes is None else self.layer_bytes[self.stream.batch_layer])

    @property
    def batch_read(self) -> np.ndarray:
        """[B] bytes read by misses."""
        return self._batch_bytes(self.batch_misses - self.batch_at_source)

    @property
    def batch_at_source_bytes(self) -> np.ndarray:
        """[B] bytes of the misses computed where they live."""
        return self._batch_bytes(self.batch_at_source)

    def _group(self, index: np.ndarray, size: int) -> dict[str, np.ndarray]:
        lookups = np.bincount(index, self.batch_hits + self.batch_misses, size).astype(np.int64)
        hits = np.bincount(index, self.batch_hits, size).astype(np.int64)
        return {"lookups": lookups, "hits": hits, "bytes_read": np.bincount(index, self.batch_read, size).astype(np.int64),
                "hit_rate": np.divide(hits, lookups, out=np.full(size, np.nan), where=lookups > 0)}  # NaN: no lookup

    def per_layer(self) -> dict[str, np.ndarray]:
        """[L] lookups, hits, bytes read (misses), hit rate (NaN without lookups) per MoE layer."""
        return self._group(self.stream.batch_layer, len(self.stream.key_offset) - 1)

    def per_phase(self) -> dict[str, np.ndarray]:
        """[2] the same per phase: index 0 prefill, 1 decode."""
        return self._group(self.stream.batch_phase.astype(np.int64), 2)

    def per_step(self) -> dict[str, np.ndarray]:
        """[N] the same per token (a prefill pass is counted at its first token)."""
        return self._group(self.stream.batch_token, self.stream.num_tokens)

    def to_json(self) -> dict:
        """The public JSON contract of `expertcache simulate --json`."""
        return self.counters_json(None if self.prefetch is None else self.prefetch.to_json())


def run_stream(stream: LookupStream, policy: Policy, budget: Budget, pf_keys: np.ndarray | None = None,
               distance: int = 1, reserve: int = 0, key_bytes: np.ndarray | None = None, accounting: str = "published",
               misses_on_cpu_below: int = 0) -> Replayed:
    """Drive the compiled loop: per-batch hits, misses, misses computed at the source, totals
    (also over decode batches) and prefetch counters."""
    check_accounting(accounting)
    if accounting == "strict":
        _check_every_expert_fits(budget)
    state = policy.new_state(budget, len(stream.key_offset) - 1, stream)
    hint = stream.next_use if policy.uses_future else np.empty(0, np.int64)
    if key_bytes is None:
        key_bytes = np.zeros(stream.num_keys, np.int64)
    if pf_keys is None:
        pf_keys = np.empty((stream.num_batches, 0), np.int64)
    return replay(state, stream, hint, budget.key_cost, key_bytes, budget.pool_budget, pf_keys, int(distance),
                  int(reserve), strict=accounting == "strict", cpu_below=_cpu_below(misses_on_cpu_below))


def _cpu_below(tokens) -> int:
    if not is_whole(tokens) or tokens < 0:
        raise ExpertcacheError(f"misses_on_cpu_below must be a whole number of tokens >= 0, not {tokens!r}")
    return min(int(tokens), EVERY_MISS)


def _check_every_expert_fits(budget: Budget) -> None:
    """Strict capacity computes every expert from its cache: each pool must hold its largest one."""
    for pool, limit, cost in budget.pools():
        if limit < cost.max():
            where = "the cache" if len(budget.pool_budget) == 1 else f"layer {pool}'s cache"
            raise ExpertcacheError(f"strict accounting: {where} holds {limit} {budget.unit}, less than one expert "
                                   f"({int(cost.max())}); raise the budget")


def check_accounting(accounting: str) -> None:
    if accounting not in ACCOUNTINGS:
        raise ExpertcacheError(f"unknown accounting {accounting!r}; choose {' or '.join(ACCOUNTINGS)}")


def simulate(trace, policy: "str | Policy", scope: str | None = None, budget_mib: float | None = None,
             budget_slots: int | None = None, budget_x: float | None = None, prefetch=None, *,
             shares: str | None = None, stream: LookupStream | None = None, accounting: str = "published",
             misses_on_cpu_below: int = 0) -> SimulationResult:
    """Replay `trace` through `policy` under one budget (exactly one of mib / slots / x).

    `trace` is a Trace or a path (trace directory or *.route.csv). `policy` is a registered name
    ("lru", "lfu", "belady", ...; a "layer-" prefix selects the per-layer scope) or a policy
    object; `scope` is "global" (one pool, the default) or "layer". `prefetch` is a prefetcher name or object, or a PrefetchConfig (count, distance,
    reserved slots). `shares` splits a per-layer budget: "equal" (the default) or "bytes".
    Pass `stream=build_stream(trace)` to reuse the lookup stream across many calls.
    `accounting` is "published" (a batch that does not fit sits over budget until a
    later batch evicts) or "strict" (the runtime's rule: never over budget).
    `misses_on_cpu_below` replays the runtime's --misses-on-cpu: a miss that fewer than this
    many tokens of its layer call use is computed where the weights live, not loaded (0: never).
    """
    check_accounting(accounting)
    policy, scope = resolve_policy(policy, scope)
    if shares is not None and scope != "layer":
        raise ExpertcacheError(f"shares split a per-layer budget; {shares!r} applies only with scope layer, not {scope}")
    trace = open_trace(trace)
    stream = stream_for(trace, stream)
    config = None if prefetch is None else PrefetchConfig.of(prefetch)
    budget = resolve_budget(trace.model, stream.key_layer, scope, budget_mib=budget_mib, budget_slots=budget_slots,
                            budget_x=budget_x, shares=shares or "equal", reserve_slots=0 if config is None else config.reserve)
    sizes = layer_expert_bytes(trace.model)  # [L] or None
    key_bytes = None if sizes is None else sizes[stream.key_layer]
    pf_keys = None if config is None else plan_prefetch(trace, stream, config)
    r = run_stream(stream, policy, budget, pf_keys, 1 if config is None else config.distance,
                   0 if config is None else config.reserve, key_bytes, accounting, misses_on_cpu_below)
    hits, misses, read, at_source, decode_hits, decode_misses = r.totals.tolist()
    report = None if config is None else PrefetchReport.from_counts(config, r.prefetch, pf_keys, stream,
                                                                    sizes is not None)
    return SimulationResult(
        policy=policy.name, scope=scope, accounting=accounting, budget_bytes=budget.budget_bytes, budget_slots=budget.budget_slots,
        lookups=hits + misses, hits=hits,
        decode_lookups=decode_hits + decode_misses, decode_hits=decode_hits,
        bytes_read=None if sizes is None else read + int(r.prefetch[PF_BYTES]), misses_on_cpu=at_source,
        prefetch=report,
        batch_hits=r.hits, batch_misses=r.misses, batch_at_source=r.at_source, layer_bytes=sizes, stream=stream,
        warnings=tuple(budget_warnings(trace.model, scope, budget)),
    )
