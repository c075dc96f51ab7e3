"""The engine loop (SPEC §4, §5), compiled once: every batch of a stream through one policy.

Per batch: each distinct key is looked up once (a repeat only refreshes it through
on_access), misses are admitted at the end of the batch, then while the batch's pool is over
budget the policy's victim among keys the batch does not use is evicted. A prefetch for batch
b is issued after batch b - distance: into the main pool (protected until b) or into a FIFO
buffer of reserved slots (a buffer hit moves the key into the main pool without a read).

Shape key: R requests, B batches, K keys, P pools, F predictions per batch.
"""

from __future__ import annotations

import numba
import numpy as np

from .kernels import on_access, on_evict, on_insert, victim
from .state import KEY_POOL

__all__ = ["replay", "PF_ISSUED", "PF_USED", "PF_WASTED", "PF_BYTES", "PF_WASTED_BYTES"]

PF_ISSUED, PF_USED, PF_WASTED, PF_BYTES, PF_WASTED_BYTES = range(5)


@numba.njit(cache=True, _nrt=False)  # called per batch: no refcounting (see kernels.py)
def _evict_over(I, F, pool, used, budget, key_cost, resident, busy, epoch, pending, key_bytes, pf):
    while used[pool] > budget[pool]:
        v = victim(I, F, pool, busy, epoch)
        if v < 0:
            return  # everything left is in flight: the engine must wait; stay over budget
        resident[v] = 0
        used[pool] -= key_cost[v]
        if pending[v]:
            pending[v] = 0
            pf[PF_WASTED] += 1
            pf[PF_WASTED_BYTES] += key_bytes[v]
        on_evict(I, F, v)


@numba.njit(cache=True, _nrt=False)
def _issue_prefetch(I, F, predicted, b, target, t, reserve, resident, in_buffer, pending, busy, ring, ring_slot,
                    used, budget, key_cost, key_bytes, pf):
    """After batch b: load the keys predicted for batch `target` (ring[reserve] = next ring slot)."""
    for j in range(len(predicted)):
        k = predicted[j]
        if k < 0 or resident[k] or in_buffer[k]:
            continue
        pf[PF_ISSUED] += 1
        pf[PF_BYTES] += key_bytes[k]
        if reserve > 0:  # FIFO buffer of reserved slots; overwriting an unused entry wastes it
            head = ring[reserve]
            old = ring[head]
            if old >= 0 and in_buffer[old] and ring_slot[old] == head:
                in_buffer[old] = 0
                pf[PF_WASTED] += 1
                pf[PF_WASTED_BYTES] += key_bytes[old]
            ring[head] = k
            ring_slot[k] = head
            in_buffer[k] = 1
            ring[reserve] = (head + 1) % reserve
        else:  # into the main pool, protected until its target batch
            pool = I[KEY_POOL, k]
            resident[k] = 1
            pending[k] = 1
            busy[k] = max(busy[k], target)
            used[pool] += key_cost[k]
            on_insert(I, F, k, t, True)
            if used[pool] > budget[pool]:
                _evict_over(I, F, pool, used, budget, key_cost, resident, busy, b + 1, pending, key_bytes, pf)


@numba.njit(cache=True)
def replay(I, F, keys, batch_start, hint, key_cost, key_bytes, budget,
           pf_keys, pf_distance, pf_reserve, hits, misses, read):
    """Fill hits/misses/read ([B] each); return the prefetch counters [5].

    hint: [R] future annotation (Belady) or empty; key_cost: [K] budget units per key;
    key_bytes: [K] bytes moved per load; budget: [P] units per pool; pf_keys: [B, F] keys
    predicted for each batch (-1 none; F = 0 disables prefetch).
    """
    K = len(key_cost)
    B = len(batch_start) - 1
    resident = np.zeros(K, np.uint8)
    mark = np.full(K, -1, np.int64)  # batch that last looked the key up (dedup)
    busy = np.full(K, -1, np.int64)  # last batch that needs the key resident (in flight)
    pending = np.zeros(K, np.uint8)  # prefetched into the main pool, not used yet
    in_buffer = np.zeros(K, np.uint8)
    ring = np.full(pf_reserve + 1, -1, np.int64)
    ring[pf_reserve] = 0  # next slot to fill
    ring_slot = np.full(K, -1, np.int64)
    used = np.zeros(len(budget), np.int64)
    pf = np.zeros(5, np.int64)
    has_hint = len(hint) > 0
    max_batch = 0
    for b in range(B):
        max_batch = max(max_batch, batch_start[b + 1] - batch_start[b])
    admit = np.empty(max_batch, np.int64)
    prefetching = pf_keys.shape[1] > 0

    for b in range(B):
        s, e = batch_start[b], batch_start[b + 1]
        n_admit = 0
        h = 0
        m = 0
        rb = 0
        for r in range(s, e):
            k = keys[r]
            repeat = mark[k] == b
            if not repeat:
                mark[k] = b
                if busy[k] < b:
                    busy[k] = b
                if resident[k]:
                    h += 1
                    if prefetching and pending[k]:
                        pending[k] = 0
                        pf[PF_USED] += 1
                else:
                    if prefetching and in_buffer[k]:
                        h += 1
                        pf[PF_USED] += 1
                        in_buffer[k] = 0
                    else:
                        m += 1
                        rb += key_bytes[k]
                    admit[n_admit] = k
                    n_admit += 1
            on_access(I, F, k, r, b, hint[r] if has_hint else 0, repeat)
        hits[b] = h
        misses[b] = m
        read[b] = rb
        if e > s:
            pool = I[KEY_POOL, keys[s]]
            for i in range(n_admit):
                k = admit[i]
                resident[k] = 1
                used[pool] += key_cost[k]
                on_insert(I, F, k, e - 1, False)
            if used[pool] > budget[pool]:  # also when an earlier batch left the pool over budget
                _evict_over(I, F, pool, used, budget, key_cost, resident, busy, b, pending, key_bytes, pf)
        if prefetching and b + pf_distance < B:
            _issue_prefetch(I, F, pf_keys[b + pf_distance], b, b + pf_distance, e - 1, pf_reserve, resident, in_buffer,
                            pending, busy, ring, ring_slot, used, budget, key_cost, key_bytes, pf)

    for k in range(K):  # prefetched and never used before the end
        if pending[k] or in_buffer[k]:
            pf[PF_WASTED] += 1
            pf[PF_WASTED_BYTES] += key_bytes[k]
    return pf
