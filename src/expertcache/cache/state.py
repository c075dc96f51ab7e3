"""Array state of a cache policy: what the compiled policy kernels read and write.

One layout serves every built-in policy, so one compiled loop drives them all and the runtime
calls the very same kernels once per layer call. Keys are (layer, expert) pairs numbered
densely (stream.py); a pool is the set of keys that compete for one budget (one pool for a
global cache, one per MoE layer for a partitioned one).

The state is two 2-D arrays, rows named below, because a compiled call passes every array
field as separate arguments: two arrays keep each kernel call a few nanoseconds.

Shape key: K keys (sum of experts over MoE layers), P pools, C = K + P columns.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["PolicyState", "new_state"]

# rows of `ints` [12, C] (int64)
HEADER = 0  # [4] policy kind code (kernels.py), number of keys K, number of pools P, clock (hyperbolic)
KEY_POOL = 1  # [K] pool of each key
MEMBER = 2  # [K] 1 while the policy tracks the key as cached
LAST_USE = 3  # [K] stream position of the last use, -1 never used
STAMP = 4  # [K] batch of the last count update (lfu-decay), admission time (hyperbolic)
PREV = 5  # [C] doubly linked recency/insertion lists; pool p's sentinel is column K + p
NXT = 6  # [C]
HEAP = 7  # [K] keys of each pool's region (a heap, or an unordered set for random)
HEAP_POS = 8  # [K] index of a key inside its pool's region, -1 if absent
POOL_START = 9  # [P] first index of the pool's region in HEAP
POOL_LEN = 10  # [P] keys currently in the pool's region
POOL_EVICTIONS = 11  # [P] evictions so far (the random policy's draw counter)
NUM_INT_ROWS = 12

# rows of `floats` [6, C] (float64)
PARAMS = 0  # [4] policy parameters (decay rate, seed, ...)
KEY_SIZE = 1  # [K] budget units one key takes (1 for slot budgets)
COUNT = 2  # [K] use count (decayed for lfu-decay; since admission for hyperbolic); persists after eviction
PRIO = 3  # [K] primary priority of heap policies (lower = evicted first)
FIXED = 4  # [K] fixed per-key priority (the static policy's profile)
POOL_CLOCK = 5  # [P] GDSF inflation value
NUM_FLOAT_ROWS = 6


class PolicyState(NamedTuple):
    ints: np.ndarray  # [12, C] int64
    floats: np.ndarray  # [6, C] float64

    def resident_keys(self) -> np.ndarray:
        """Keys the policy currently tracks as cached."""
        return np.flatnonzero(self.ints[MEMBER] == 1)


def new_state(kind: int, key_pool: np.ndarray, key_size: np.ndarray, num_pools: int,
              params=(), fixed: np.ndarray | None = None) -> PolicyState:
    """Empty state (cold cache) for `kind` over keys partitioned into `num_pools` pools."""
    key_pool = np.asarray(key_pool, dtype=np.int64)
    K, P = len(key_pool), num_pools
    C = max(K + P, 4)
    ints = np.zeros((NUM_INT_ROWS, C), np.int64)
    floats = np.zeros((NUM_FLOAT_ROWS, C))
    ints[HEADER, :3] = kind, K, P
    ints[KEY_POOL, :K] = key_pool
    ints[LAST_USE] = -1
    ints[PREV] = ints[NXT] = -1
    ints[PREV, K:K + P] = ints[NXT, K:K + P] = np.arange(K, K + P)  # empty lists: sentinels self-linked
    ints[HEAP] = ints[HEAP_POS] = -1
    pool_sizes = np.bincount(key_pool, minlength=P)
    ints[POOL_START, :P] = np.concatenate([[0], np.cumsum(pool_sizes)[:-1]])
    floats[PARAMS, : len(params)] = params
    floats[KEY_SIZE, :K] = key_size
    if fixed is not None:
        floats[FIXED, :K] = fixed
    return PolicyState(ints, floats)
