"""The engine's batch step, compiled once and shared by replay and runtime.

    route -> lookup_batch (hits, misses, pins) -> admit -> make room -> [strict: chunk plan]
          -> (runtime: free victims' slots, load misses, compute each chunk) -> prefetch_after

`engine_batch` applies one lookup batch (one MoE layer call) to a policy state and to the
engine state below, and writes a *plan* the runtime executes: the batch's distinct keys in
lookup order, which of them are loads, the chunk each is computed in, and the keys evicted
before each chunk's loads. `replay` (replay.py) calls it for every batch of a trace inside one
compiled loop; the runtime (runtime/cache.py) calls it once per layer call. Nothing here moves
bytes or reads a clock, so counters depend on routing alone.

Pins: a key is pinned while PIN[key] >= the current batch index: the batch's own keys while it
runs, and a prefetched key until its target batch. A victim is only ever an unpinned
resident key of the batch's pool.

Misses computed where the weights live (`cpu_below` > 0, the runtime's --misses-on-cpu): a
missed key that fewer than `cpu_below` requests of its batch use (fewer tokens) is computed at
the slow tier, not loaded: it is a miss that reads no bytes and is never admitted (the policy
still learns of the access, as of any miss).

Accounting: the policy always learns of a batch as in published accounting (lookups, then every
miss admitted at the batch's end, then evictions of unpinned keys while over budget). Under
strict capacity a batch that still leaves the pool over budget is executed in chunks: misses are
loaded in lookup order; when the next one has no room, everything resolved so far (every hit and
the misses loaded) is computed, unpinned and becomes evictable. Where every batch fits, the two
accountings are the same sequence of policy calls, so their counts are identical.

Shape key: K keys, P pools, n distinct keys of a batch, R requests.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from .kernels import inline, on_access, on_evict, on_insert, victim
from .state import KEY_POOL

__all__ = ["Plan", "new_engine", "new_plan", "engine_batch", "prefetch_after", "finish",
           "COUNTERS", "PF_ISSUED", "PF_USED", "PF_WASTED", "PF_BYTES", "PF_WASTED_BYTES", "LOAD", "BUFFER_HIT", "AT_SOURCE",
           "EVERY_MISS"]

# rows of the engine state X [9, C] (int64)
RESIDENT = 0  # [K] 1 while the key is in the main pool
MARK = 1  # [K] last batch that looked the key up (dedup inside a batch)
PIN = 2  # [K] last batch that needs the key resident
PENDING = 3  # [K] prefetched into the main pool, not used yet
IN_BUFFER = 4  # [K] in the reserved prefetch buffer
RING_SLOT = 5  # [K] buffer position of a buffered key
USED = 6  # [P] budget units in use per pool
RING = 7  # [reserve + 1] keys in the FIFO buffer; RING[reserve] = next position
COUNTERS = 8  # [6] prefetch counters, then the number of reserved buffer slots
WORK = 9  # [K] scratch space for victim searches
TALLY = 10  # [K] requests for the key in the current batch (misses computed at the source); 0 between batches
NUM_ROWS = 11

PF_ISSUED, PF_USED, PF_WASTED, PF_BYTES, PF_WASTED_BYTES = range(5)
_RESERVE = 5

# rows of a plan [6, n + K]
ORDER = 0  # [n] distinct keys in lookup order
KIND = 1  # [n] 0 hit, LOAD a read, BUFFER_HIT from the prefetch buffer (no read), AT_SOURCE computed unloaded
CHUNK = 2  # [n] chunk the key is computed in
EVICTED = 3  # [m] keys evicted, in order
EVICTED_BEFORE = 4  # [m] chunk whose loads the eviction makes room for
PREFETCHED = 5  # [f] keys a prefetch started loading
LOAD, BUFFER_HIT, AT_SOURCE = 1, 2, 3
EVERY_MISS = 2**62  # a cpu_below that keeps every miss at the source, whatever its token count
# plan counts [4]: n, m, chunks, f
N_KEYS, N_EVICTED, N_CHUNKS, N_PREFETCHED = range(4)


class Plan(NamedTuple):
    rows: np.ndarray  # [6, W] int64
    counts: np.ndarray  # [4] int64


def new_engine(num_keys: int, num_pools: int, reserve: int = 0) -> np.ndarray:
    """A cold engine state X [11, C] (empty cache, nothing pinned; rows above)."""
    x = np.zeros((NUM_ROWS, max(num_keys, num_pools, reserve + 1, _RESERVE + 1)), np.int64)
    x[MARK] = x[PIN] = -1
    x[RING_SLOT] = x[RING] = -1
    x[RING, reserve] = 0
    x[COUNTERS, _RESERVE] = reserve
    return x


def new_plan(max_batch: int, num_keys: int) -> Plan:
    """Plan buffers for batches of up to `max_batch` requests (evictions are bounded by K)."""
    return Plan(np.zeros((6, max(max_batch, 1) + num_keys + 1), np.int64), np.zeros(4, np.int64))


# Called per batch: no refcounting (see kernels.py); the per-batch path is inlined (`inline`).
_jit = numba.njit(cache=True, _nrt=False)


@inline
def _evict(policy, I, F, X, v, key_cost, key_bytes, plan, counts, chunk):
    X[RESIDENT, v] = 0
    X[USED, I[KEY_POOL, v]] -= key_cost[v]
    if X[PENDING, v]:
        X[PENDING, v] = 0
        X[COUNTERS, PF_WASTED] += 1
        X[COUNTERS, PF_WASTED_BYTES] += key_bytes[v]
    on_evict(policy, I, F, v)
    m = counts[N_EVICTED]
    plan[EVICTED, m] = v
    plan[EVICTED_BEFORE, m] = chunk
    counts[N_EVICTED] = m + 1


@inline
def make_room(policy, I, F, X, pool, need, epoch, key_cost, key_bytes, budget, plan, counts, chunk):
    """Evict unpinned keys (PIN < epoch) of `pool`, lowest priority first, until `need` more
    units fit. Returns False when nothing is left to evict (the pool stays as it is)."""
    while X[USED, pool] + need > budget[pool]:
        v = victim(policy, I, F, pool, X[PIN], epoch, X[WORK])
        if v < 0:
            return False
        _evict(policy, I, F, X, v, key_cost, key_bytes, plan, counts, chunk)
    return True


@_jit
def _drop_unused_prefetches(X, I, pool, b, num_keys):
    """Strict capacity, last resort: unpin keys prefetched for this batch that it does not use."""
    freed = False
    for k in range(num_keys):
        if X[PENDING, k] and X[MARK, k] != b and X[PIN, k] >= b and I[KEY_POOL, k] == pool:
            X[PIN, k] = b - 1
            freed = True
    return freed


@_jit
def _strict_chunks(policy, I, F, X, pool, b, key_cost, key_bytes, budget, plan, counts):
    """Strict capacity for a batch that does not fit: place its loads in lookup order. Before each load,
    evict unpinned entries while there is no room; when none is left, compute everything
    resolved so far (every hit, the loads so far), unpin it, and go on in a new chunk."""
    n = counts[N_KEYS]
    resident = X[USED, pool]  # what is physically resident before the loads: used minus the loads
    for i in range(n):
        if _admitted(plan[KIND, i]):
            resident -= key_cost[plan[ORDER, i]]
    chunk = 0
    unresolved = True  # something resolved is still pinned: a new chunk would free it
    for i in range(n):
        if not _admitted(plan[KIND, i]):
            continue
        k = plan[ORDER, i]
        c = key_cost[k]
        while resident + c > budget[pool]:
            v = victim(policy, I, F, pool, X[PIN], b, X[WORK])
            if v >= 0:
                resident -= key_cost[v]
                _evict(policy, I, F, X, v, key_cost, key_bytes, plan, counts, chunk)
            elif unresolved:
                chunk += 1
                for j in range(n):
                    if plan[KIND, j] == 0 or j < i:
                        X[PIN, plan[ORDER, j]] = b - 1
                unresolved = False
            elif not _drop_unused_prefetches(X, I, pool, b, len(key_cost)):
                break  # one expert larger than the pool: refused before a run starts
        resident += c
        plan[CHUNK, i] = chunk
        unresolved = True
    counts[N_CHUNKS] = chunk + 1


@_jit
def _admitted(kind):
    """The batch makes the key resident: a read, or a move from the prefetch buffer."""
    return kind == LOAD or kind == BUFFER_HIT


@inline
def engine_batch(policy, I, F, X, keys, s, e, t0, b, hint, key_cost, key_bytes, budget, strict, cpu_below, plan, counts):
    """Apply batch b (requests keys[s:e], one pool, the first at stream position t0) and write
    its plan. hint: [R] future annotation (Belady) or empty; cpu_below: misses used by fewer
    requests are computed at the source (0: none). Returns hits, misses, bytes read, misses
    computed at the source (a tuple: an array for them cost a k = 1 replay 10 %).
    """
    counts[N_KEYS], counts[N_EVICTED], counts[N_CHUNKS], counts[N_PREFETCHED] = 0, 0, 1, 0  # no memset call
    has_hint = len(hint) > 0
    n, h, m, rb = 0, 0, 0, 0
    for r in range(s, e):
        k = keys[r]
        repeat = X[MARK, k] == b
        if not repeat:
            X[MARK, k] = b
            X[PIN, k] = max(X[PIN, k], b)
            kind = 0
            if X[RESIDENT, k]:
                h += 1
                if X[PENDING, k]:
                    X[PENDING, k] = 0
                    X[COUNTERS, PF_USED] += 1
            elif X[IN_BUFFER, k]:  # moves from the prefetch buffer into the main pool, no read
                h += 1
                X[COUNTERS, PF_USED] += 1
                X[IN_BUFFER, k] = 0
                kind = BUFFER_HIT
            else:
                m += 1
                rb += key_bytes[k]
                kind = LOAD
            plan[ORDER, n] = k
            plan[KIND, n] = kind
            plan[CHUNK, n] = 0
            n += 1
        on_access(policy, I, F, k, t0 + r - s, b, hint[r] if has_hint else 0, repeat)
        if cpu_below > 0:
            X[TALLY, k] += 1
    at_source = 0
    if cpu_below > 0:
        for i in range(n):
            k = plan[ORDER, i]
            if plan[KIND, i] == LOAD and X[TALLY, k] < cpu_below:
                plan[KIND, i] = AT_SOURCE
                rb -= key_bytes[k]
                at_source += 1
            X[TALLY, k] = 0
    counts[N_KEYS] = n
    if e == s:
        return h, m, rb, at_source
    pool = I[KEY_POOL, keys[s]]
    for i in range(n):
        if _admitted(plan[KIND, i]):
            k = plan[ORDER, i]
            X[RESIDENT, k] = 1
            X[USED, pool] += key_cost[k]
            on_insert(policy, I, F, k, t0 + e - 1 - s, False)
    # also when an earlier batch left the pool over budget (published accounting)
    if not make_room(policy, I, F, X, pool, 0, b, key_cost, key_bytes, budget, plan, counts, 0) and strict:
        _strict_chunks(policy, I, F, X, pool, b, key_cost, key_bytes, budget, plan, counts)
    return h, m, rb, at_source


@_jit
def prefetch_after(policy, I, F, X, predicted, b, target, t, key_cost, key_bytes, budget, strict, plan, counts):
    """After batch b, start loading the keys `predicted` for batch `target`: into the reserved
    FIFO buffer when there is one, else into the main pool, pinned until `target`. Under strict
    capacity a prefetch with no room is not issued. Appends to the plan's PREFETCHED/EVICTED."""
    reserve = X[COUNTERS, _RESERVE]
    for j in range(len(predicted)):
        k = predicted[j]
        if k < 0 or X[RESIDENT, k] or X[IN_BUFFER, k]:
            continue
        if reserve > 0:  # overwriting an unused buffered key wastes it
            head = X[RING, reserve]
            old = X[RING, head]
            if old >= 0 and X[IN_BUFFER, old] and X[RING_SLOT, old] == head:
                X[IN_BUFFER, old] = 0
                X[COUNTERS, PF_WASTED] += 1
                X[COUNTERS, PF_WASTED_BYTES] += key_bytes[old]
            X[RING, head] = k
            X[RING_SLOT, k] = head
            X[IN_BUFFER, k] = 1
            X[RING, reserve] = (head + 1) % reserve
        else:
            pool = I[KEY_POOL, k]
            X[RESIDENT, k] = 1
            X[PENDING, k] = 1
            previous_pin = X[PIN, k]
            X[PIN, k] = max(X[PIN, k], target)
            X[USED, pool] += key_cost[k]
            on_insert(policy, I, F, k, t, True)
            if not make_room(policy, I, F, X, pool, 0, b + 1, key_cost, key_bytes, budget, plan, counts, counts[N_CHUNKS]) \
                    and strict:  # no room: take it back, it was never issued
                X[PENDING, k] = 0
                X[PIN, k] = previous_pin
                X[RESIDENT, k] = 0
                X[USED, pool] -= key_cost[k]
                on_evict(policy, I, F, k)
                continue
        X[COUNTERS, PF_ISSUED] += 1
        X[COUNTERS, PF_BYTES] += key_bytes[k]
        f = counts[N_PREFETCHED]
        plan[PREFETCHED, f] = k
        counts[N_PREFETCHED] = f + 1


@_jit
def finish(X, key_bytes):
    """End of the stream: a prefetch never used is wasted (counters in X[COUNTERS, :5])."""
    for k in range(len(key_bytes)):
        if X[PENDING, k] or X[IN_BUFFER, k]:
            X[COUNTERS, PF_WASTED] += 1
            X[COUNTERS, PF_WASTED_BYTES] += key_bytes[k]
