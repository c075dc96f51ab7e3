"""The simulator's loop: every batch of a stream through the engine step the runtime also
calls (engine.py), then the prefetch for the batch `distance` ahead. One compiled loop serves
every policy (the kind read from the state); LRU's is compiled on its own as well (`_loop_lru`).

Shape key: R requests, B batches, K keys, P pools, F predictions per batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np

from ..trace.format import DECODE, expert_dtype
from .state import HEADER
from .kernels import ANY, LRU, inline
from .engine import COUNTERS, finish, new_engine, new_plan, engine_batch, prefetch_after

__all__ = ["replay", "Replayed"]


_jit = numba.njit(cache=True, _nrt=False)  # the inlined engine step would refcount its array views per batch


@inline
def _loop(policy, I, F, X, keys, batch_start, batch_phase, hint, key_cost, key_bytes, budget, strict, cpu_below, pf_keys,
          pf_distance, plan, counts, hm, at_source, totals):
    B = len(batch_start) - 1
    prefetching = pf_keys.shape[1] > 0
    h = m = rb = at = dh = dm = 0  # totals, and the decode batches' hits and misses
    for b in range(B):
        s, e = batch_start[b], batch_start[b + 1]
        bh, bm, brb, bat = engine_batch(policy, I, F, X, keys, s, e, s, b, hint, key_cost, key_bytes, budget, strict,
                                        cpu_below, plan, counts)
        hm[b, 0] = bh
        hm[b, 1] = bm
        if bat:  # mostly 0: pages never written stay unallocated
            at_source[b] = bat
        h, m, rb, at = h + bh, m + bm, rb + brb, at + bat
        if batch_phase[b] == DECODE:
            dh, dm = dh + bh, dm + bm
        if prefetching and b + pf_distance < B:
            prefetch_after(policy, I, F, X, pf_keys[b + pf_distance], b, b + pf_distance, e - 1, key_cost, key_bytes,
                           budget, strict, plan, counts)
    finish(X, key_bytes)
    totals[:] = h, m, rb, at, dh, dm


@_jit
def _loop_lru(I, F, X, keys, batch_start, batch_phase, hint, key_cost, key_bytes, budget, strict, cpu_below, pf_keys,
              pf_distance, plan, counts, hm, at_source, totals):
    """LRU's loop compiled on its own: the other policies' branches cost its k = 1 replay 14 %."""
    _loop(LRU, I, F, X, keys, batch_start, batch_phase, hint, key_cost, key_bytes, budget, strict, cpu_below, pf_keys,
          pf_distance, plan, counts, hm, at_source, totals)


class Replayed(NamedTuple):
    hits: np.ndarray  # [B] unsigned, the smallest type that holds a batch's distinct keys
    misses: np.ndarray  # [B] same type
    at_source: np.ndarray  # [B] same type: misses computed at the source, not loaded
    totals: np.ndarray  # [6] int64 hits, misses, bytes read by misses, at_source; decode batches' hits, misses
    prefetch: np.ndarray  # [5] prefetch counters (engine.PF_*)


def replay(state, stream, hint, key_cost, key_bytes, budget, pf_keys, pf_distance, pf_reserve, *,
           strict: bool = False, cpu_below: int = 0) -> Replayed:
    """Replay a LookupStream through a policy state. Totals are summed in the loop, so a
    caller needs no pass over the per-batch arrays.

    hint: [R] future annotation (Belady) or empty; key_cost: [K] budget units per key;
    key_bytes: [K] bytes moved per load; budget: [P] units per pool; pf_keys: [B, F] keys
    predicted for each batch (-1 none; F = 0 disables prefetch); strict: never over budget (strict capacity);
    cpu_below: a miss fewer requests of its batch use is computed at the source, not loaded (0: never).
    """
    K, B = len(key_cost), stream.num_batches
    X = new_engine(K, len(budget), pf_reserve)
    plan = new_plan(stream.max_batch + pf_keys.shape[1], K)
    # small per-batch counts: a long k = 1 stream's int32 arrays (hundreds of MiB) made the
    # kernel stall on fresh memory, nearly doubling a replay's time
    per_batch = expert_dtype(min(stream.max_batch, int(np.diff(stream.key_offset).max(initial=0))))
    hm = np.zeros((B, 2), per_batch)
    r = Replayed(hm[:, 0], hm[:, 1], np.zeros(B, per_batch), np.zeros(6, np.int64),
                 np.zeros(5, np.int64))
    policy = int(state.ints[HEADER, 0])
    loop = _loop_lru if policy == LRU else functools.partial(_loop, ANY)
    loop(state.ints, state.floats, X, stream.keys, stream.batch_start, stream.batch_phase, hint, key_cost, key_bytes,
          budget, bool(strict), int(cpu_below), pf_keys, int(pf_distance), plan.rows, plan.counts, hm,
          r.at_source, r.totals)
    r.prefetch[:] = X[COUNTERS, :5]
    return r
