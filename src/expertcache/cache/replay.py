"""The simulator's loop, compiled once: every batch of a stream through the
engine step the runtime also calls (engine.py), then the prefetch for the batch `distance` ahead.

Shape key: R requests, B batches, K keys, P pools, F predictions per batch.
"""

from __future__ import annotations

import numba
import numpy as np

from .engine import COUNTERS, finish, new_engine, new_plan, engine_batch, prefetch_after

__all__ = ["replay"]


@numba.njit(cache=True, _nrt=False)  # the inlined engine step would refcount its array views per batch
def _loop(I, F, X, keys, batch_start, hint, key_cost, key_bytes, budget, strict, cpu_below, pf_keys, pf_distance,
          plan, counts, hits, misses, read, at_source, out):
    B = len(batch_start) - 1
    prefetching = pf_keys.shape[1] > 0
    for b in range(B):
        s, e = batch_start[b], batch_start[b + 1]
        engine_batch(I, F, X, keys, s, e, s, b, hint, key_cost, key_bytes, budget, strict, cpu_below, plan, counts,
                     out)
        hits[b], misses[b], read[b], at_source[b] = out[0], out[1], out[2], out[3]
        if prefetching and b + pf_distance < B:
            prefetch_after(I, F, X, pf_keys[b + pf_distance], b, b + pf_distance, e - 1, key_cost, key_bytes,
                           budget, strict, plan, counts)
    finish(X, key_bytes)


def replay(state, keys, batch_start, hint, key_cost, key_bytes, budget, pf_keys, pf_distance, pf_reserve, hits,
           misses, read, at_source, *, strict: bool = False, cpu_below: int = 0) -> np.ndarray:
    """Fill hits/misses/read/at_source ([B] each) for a policy state; return the prefetch counters [5].

    hint: [R] future annotation (Belady) or empty; key_cost: [K] budget units per key;
    key_bytes: [K] bytes moved per load; budget: [P] units per pool; pf_keys: [B, F] keys
    predicted for each batch (-1 none; F = 0 disables prefetch); strict: never over budget (strict capacity);
    cpu_below: a miss fewer requests of its batch use is computed at the source, not loaded (0: never).
    """
    K = len(key_cost)
    X = new_engine(K, len(budget), pf_reserve)
    max_batch = int(np.diff(batch_start).max()) if len(batch_start) > 1 else 0
    plan = new_plan(max_batch + pf_keys.shape[1], K)
    _loop(state.ints, state.floats, X, keys, batch_start, hint, key_cost, key_bytes, budget, bool(strict),
          int(cpu_below), pf_keys, int(pf_distance), plan.rows, plan.counts, hits, misses, read, at_source,
          np.zeros(4, np.int64))
    return X[COUNTERS, :5].copy()
