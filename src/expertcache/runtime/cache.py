"""The fast tier: a preallocated slot pool, an expert -> slot map, and the engine step that decides.

    route -> resolve residency (engine_batch) -> free victims' slots -> fetch misses -> compute

Every MoE layer call is one lookup batch of the engine (cache/engine.py), the very step the
simulator replays, under strict capacity: the cache never holds more experts than
the budget, and a call whose experts do not fit is computed in chunks. Slots are tensors
[S, *per-expert shape] per experts-module parameter, plus one all-zero slot used by the exact
chunked computation (experts.py). A slot is never refilled before the fetch that filled it
has finished, and never while a computation still reads it (CPU compute is synchronous; on
CUDA every fetch and every compute is ordered on streams with events).

Shape key: S slots, K keys (layer, expert), E experts of a layer.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from ..cache.budget import Budget
from ..cache.kernels import ANY
from ..cache.engine import (AT_SOURCE, BUFFER_HIT, CHUNK, COUNTERS, EVICTED, EVICTED_BEFORE, KIND, LOAD, N_CHUNKS, N_EVICTED,
                            N_KEYS, N_PREFETCHED, ORDER, PF_BYTES, PF_ISSUED, PF_USED, PF_WASTED, PF_WASTED_BYTES,
                            PREFETCHED, engine_batch, finish, new_engine, new_plan, prefetch_after)
from ..cache.stream import key_layers
from ..errors import ExpertcacheError
from .experts import Pools
from .loading import SlotPool, expert_zeros
from .store import ExpertStore

__all__ = ["ExpertCache", "BatchPlan", "Counters"]


@dataclass
class BatchPlan:
    """What one layer call must do: keys in lookup order, the chunk each is computed in."""

    keys: np.ndarray  # [n] distinct keys, lookup order
    chunk: np.ndarray  # [n]
    loads: np.ndarray  # [n] bool: fetched for this call
    at_source: np.ndarray  # [n] bool: computed where the weights live, not fetched
    evicted: np.ndarray  # [m]
    evicted_before: np.ndarray  # [m] chunk whose loads need the room
    chunks: int


@dataclass
class Counters:
    """Totals so far, named as in `simulate`'s result."""

    lookups: int = 0
    hits: int = 0
    decode_lookups: int = 0
    decode_hits: int = 0
    bytes_read: int = 0  # misses plus prefetches
    misses_on_cpu: int = 0  # misses computed where the weights live


class ExpertCache:
    def __init__(self, policy, budget: Budget, num_layers: int, key_offset: np.ndarray, key_bytes: np.ndarray,
                 params: dict, residues: dict[str, np.ndarray], store: ExpertStore, device: torch.device,
                 misses_on_cpu_below: int = 0):
        self.budget, self.store, self.device = budget, store, device
        self.key_offset = key_offset  # [L + 1]
        K = int(key_offset[-1])
        layer_of = key_layers(key_offset)
        self._layer_expert = list(zip(layer_of.tolist(), (np.arange(K) - key_offset[layer_of]).tolist()))  # [K]
        self.key_bytes = key_bytes.astype(np.int64)  # [K]
        self.I, self.F = policy.new_state(budget, num_layers)
        self.X = new_engine(K, len(budget.pool_budget))
        self._plan = new_plan(1, K)
        self.misses_on_cpu_below = misses_on_cpu_below
        self._no_hint = self._none = np.empty(0, np.int64)
        self._after_compute = (self._none, self._none)  # (evicted, prefetched) keys waiting for a computation
        S = _slot_count(budget)
        self.num_slots = S
        # slot S: all zero. On the CPU a slot moves to where the stock keeps the expert it is filled with
        self.slots = {name: SlotPool(param, S + 1) if device.type == "cpu" else expert_zeros(param, S + 1, device)
                      for name, param in params.items()}
        self._residues = [(self.slots[name], residues[name].tolist()) for name in params] if device.type == "cpu" else []
        self.zero_slot = S
        self.pools = Pools(self.slots, S)
        self.slot_of = np.full(K, S, np.int64)  # [K] slot of a resident key (S = the zero slot)
        self._free = list(range(S - 1, -1, -1))
        self._pending: dict[int, Future] = {}  # slot -> fetch in flight
        self._reusable_after: dict[int, object] = {}  # slot -> CUDA event: its last reader is done
        self.counters = Counters()
        self.failed = False
        self.batch = 0  # lookup batches so far (= index of the next one)
        self.position = 0  # requests so far: stream position of the next one

    # ------------------------------------------------------------------ one layer call
    def lookup(self, keys: np.ndarray, decode: bool) -> BatchPlan | None:
        """Run the engine step for one layer call (keys in lookup order, repeats allowed).

        None when there is nothing to do: every key resident, no fetch in flight.
        """
        if self.failed:
            raise ExpertcacheError("an earlier layer call did not finish (an expert read failed, or it was "
                                   "interrupted), so the cache no longer holds known weights; load the model again")
        if len(keys) + self.X.shape[1] + 1 > self._plan.rows.shape[1]:
            self._plan = new_plan(len(keys) * 2, len(self.key_bytes))
        rows, counts = self._plan
        h, m, rb, at_source = engine_batch(ANY, self.I, self.F, self.X, keys, 0, len(keys), self.position, self.batch,
                                           self._no_hint, self.budget.key_cost, self.key_bytes,
                                           self.budget.pool_budget, True, self.misses_on_cpu_below, rows, counts)
        self.batch += 1
        self.position += len(keys)
        c = self.counters
        c.lookups += h + m
        c.hits += h
        c.bytes_read += rb
        c.misses_on_cpu += at_source
        if decode:
            c.decode_lookups += h + m
            c.decode_hits += h
        ne = int(counts[N_EVICTED])
        if m == 0 and ne == 0 and not self._pending:
            return None
        n = int(counts[N_KEYS])
        kind = rows[KIND, :n]
        if (kind == BUFFER_HIT).any():
            raise ExpertcacheError("reserved prefetch buffers are a simulator option; the runtime prefetches into the cache")
        return BatchPlan(rows[ORDER, :n].copy(), rows[CHUNK, :n].copy(), kind == LOAD, kind == AT_SOURCE,
                         rows[EVICTED, :ne].copy(), rows[EVICTED_BEFORE, :ne].copy(), int(counts[N_CHUNKS]))

    def prepare(self, plan: BatchPlan, chunk: int) -> None:
        """Free the slots of the keys evicted before `chunk`, fetch its misses, wait for its keys."""
        self.start(plan, chunk)
        self.wait(plan, chunk)

    def start(self, plan: BatchPlan, chunk: int) -> None:
        """Free the slots of the keys evicted before `chunk` and start fetching its misses."""
        if len(plan.evicted):
            self._release(plan.evicted[plan.evicted_before == chunk])
        for k in plan.keys[(plan.chunk == chunk) & plan.loads]:
            self._start_fetch(int(k), urgent=True)

    def in_flight(self, plan: BatchPlan, chunk: int) -> np.ndarray:
        """[n] bool: the keys of `chunk` whose fetch (a load or a prefetch) is still running; fetches
        already finished are collected on the way (as `wait` would, read errors included)."""
        late = np.zeros(len(plan.keys), bool)
        if self._pending:
            for i in np.flatnonzero(plan.chunk == chunk):
                slot = int(self.slot_of[plan.keys[i]])
                future = self._pending.get(slot)
                if future is not None and future.done():
                    self._wait(slot)
                late[i] = slot in self._pending
        return late

    def wait(self, plan: BatchPlan, chunk: int) -> None:
        """Wait until every key of `chunk` is in its slot."""
        if self._pending:  # all hits and nothing in flight (the common decode case): nothing to wait for
            for k in plan.keys[plan.chunk == chunk]:
                self._wait(int(self.slot_of[k]))

    def prefetch(self, predicted_keys: np.ndarray, in_use: np.ndarray | None = None) -> None:
        """After the last batch's engine step, start fetching the keys predicted for the next one.

        With `in_use` (the last batch's keys, when the prefetch is issued before that batch
        computes), the slots of evicted keys in use are freed, and the fetches that need them
        started, only at `settle()`; the counters are the same either way.
        """
        rows, counts = self._plan
        counts[:] = 0
        before = self.X[COUNTERS, PF_BYTES]
        prefetch_after(ANY, self.I, self.F, self.X, predicted_keys.astype(np.int64, copy=False), self.batch - 1, self.batch,
                       self.position - 1, self.budget.key_cost, self.key_bytes, self.budget.pool_budget, True, rows,
                       counts)
        self.counters.bytes_read += int(self.X[COUNTERS, PF_BYTES] - before)
        n_evicted, n_fetches = int(counts[N_EVICTED]), int(counts[N_PREFETCHED])
        if n_evicted == n_fetches == 0:  # every prediction already resident (or none)
            return
        evicted, fetches = rows[EVICTED, :n_evicted].copy(), rows[PREFETCHED, :n_fetches].copy()
        evicted_later = fetches_later = self._none
        if in_use is not None and len(evicted):
            busy = np.isin(evicted, in_use)
            evicted, evicted_later = evicted[~busy], evicted[busy]
        self._release(evicted)
        if in_use is not None:  # as many fetches as there are free slots now; the rest in settle()
            fetches, fetches_later = fetches[:len(self._free)], fetches[len(self._free):]
        self._after_compute = (evicted_later, fetches_later)
        for k in fetches:
            self._start_fetch(int(k), urgent=False)

    def settle(self) -> None:
        """After the batch computed: free the slots a prefetch evicted from it, start the fetches left."""
        evicted, fetches = self._after_compute
        self._after_compute = (self._none, self._none)
        self._release(evicted)
        for k in fetches:
            self._start_fetch(int(k), urgent=False)

    # ------------------------------------------------------------------ slots
    def _release(self, keys: np.ndarray) -> None:
        for k in keys:
            slot = int(self.slot_of[k])
            if slot != self.zero_slot:
                self._wait(slot)
                if self.device.type == "cuda":  # the next copy into it waits for the compute queued so far
                    self._reusable_after[slot] = torch.cuda.current_stream(self.device).record_event()
                self._free.append(slot)
                self.slot_of[k] = self.zero_slot

    def _start_fetch(self, key: int, urgent: bool) -> None:
        if not self._free:
            raise RuntimeError("expertcache: no free slot although the engine made room (a bug)")
        slot = self._free.pop()
        self.slot_of[key] = slot
        layer, expert = self._layer_expert[key]
        for pool, residue in self._residues:
            pool.place(slot, residue[key])
        dest = {name: pool[slot] for name, pool in self.slots.items()}
        self._pending[slot] = self.store.fetch(layer, expert, dest, urgent, self._reusable_after.pop(slot, None))

    def _wait(self, slot: int) -> None:
        future = self._pending.pop(slot, None)
        if future is not None:
            try:
                self.store.hurry(future)  # a no-op once a worker has taken it
                copied = future.result()
            except BaseException:
                self.failed = True  # the slot's contents are unknown: no later call may compute with them
                raise
            if copied is not None:  # on a GPU: compute queued from now on runs after the copy
                torch.cuda.current_stream(self.device).wait_event(copied)

    def drain(self) -> None:
        """Wait for every fetch in flight (before closing, or on an interrupt)."""
        for slot in list(self._pending):
            try:
                self._wait(slot)
            except ExpertcacheError:
                pass

    def prefetch_counts(self) -> tuple[int, int, int, int, int]:
        """issued, used, wasted, bytes and wasted bytes (prefetched keys still unused count as
        wasted, as at a trace's end)."""
        X = self.X.copy()
        finish(X, self.key_bytes)
        return tuple(int(X[COUNTERS, i]) for i in (PF_ISSUED, PF_USED, PF_WASTED, PF_BYTES, PF_WASTED_BYTES))

    @property
    def resident_bytes(self) -> int:
        return sum(self.num_slots * pool[0].numel() * pool[0].element_size() for pool in self.slots.values())


def _slot_count(budget: Budget) -> int:
    """The most experts the budget can hold at once: per pool, its budget over its cheapest key,
    and no more than the pool's keys (a budget above every expert allocates no idle slots)."""
    return sum(min(limit // int(cost.min()), len(cost)) for _, limit, cost in budget.pools())
