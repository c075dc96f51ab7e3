"""Array state of a cache policy: what the compiled policy kernels read and write.

One layout serves every built-in policy, so one compiled loop drives them all and the runtime
calls the very same kernels once per layer call. Keys are (layer, expert) pairs numbered
densely (`KeySpace.key`); a pool is the set of keys that compete for one budget (one pool
for a global cache, one per MoE layer for a partitioned one).

Shape key: K keys (sum of experts over MoE layers), P pools.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["PolicyState", "new_state"]


class PolicyState(NamedTuple):
    """Per-key and per-pool arrays; scalars live in length-1 arrays so kernels can update them."""

    kind: np.ndarray  # [1] int64 policy kind code (see kernels.py)
    params: np.ndarray  # [4] float64 policy parameters (decay rate, seed, ...)
    key_pool: np.ndarray  # [K] int64 pool of each key
    key_size: np.ndarray  # [K] float64 budget units one key takes (1 for slot budgets)
    member: np.ndarray  # [K] uint8 1 while the policy tracks the key as cached
    last_use: np.ndarray  # [K] int64 stream position of the last use, -1 never used
    count: np.ndarray  # [K] float64 use count (decayed for lfu-decay); persists after eviction
    stamp: np.ndarray  # [K] int64 batch of the last count update (lfu-decay)
    prio: np.ndarray  # [K] float64 primary priority of heap policies (lower = evicted first)
    fixed: np.ndarray  # [K] float64 fixed per-key priority (static policy's profile)
    prev: np.ndarray  # [K + P] int64 doubly linked recency/insertion lists, sentinel K + p
    nxt: np.ndarray  # [K + P] int64
    heap: np.ndarray  # [K] int64 keys of each pool's region (heap, or unordered set for random)
    heap_pos: np.ndarray  # [K] int64 index of a key inside its pool's region, -1 if absent
    pool_start: np.ndarray  # [P] int64 first index of the pool's region in `heap`
    pool_len: np.ndarray  # [P] int64 keys currently in the pool's region
    pool_clock: np.ndarray  # [P] float64 inflation value of GDSF
    pool_evictions: np.ndarray  # [P] int64 evictions so far (seeds the random policy's draws)


def new_state(kind: int, key_pool: np.ndarray, key_size: np.ndarray, num_pools: int,
              params=(), fixed: np.ndarray | None = None) -> PolicyState:
    """Empty state (cold cache) for `kind` over keys partitioned into `num_pools` pools."""
    key_pool = np.ascontiguousarray(key_pool, dtype=np.int64)
    K = len(key_pool)
    sentinels = np.arange(K, K + num_pools, dtype=np.int64)
    prev = np.full(K + num_pools, -1, np.int64)
    prev[K:] = sentinels
    pool_sizes = np.bincount(key_pool, minlength=num_pools)
    p = np.zeros(4)
    p[: len(params)] = params
    return PolicyState(
        kind=np.array([kind], np.int64),
        params=p,
        key_pool=key_pool,
        key_size=np.ascontiguousarray(key_size, dtype=np.float64),
        member=np.zeros(K, np.uint8),
        last_use=np.full(K, -1, np.int64),
        count=np.zeros(K),
        stamp=np.zeros(K, np.int64),
        prio=np.zeros(K),
        fixed=np.zeros(K) if fixed is None else np.ascontiguousarray(fixed, dtype=np.float64),
        prev=prev,
        nxt=prev.copy(),
        heap=np.full(K, -1, np.int64),
        heap_pos=np.full(K, -1, np.int64),
        pool_start=np.concatenate([[0], np.cumsum(pool_sizes)[:-1]]).astype(np.int64),
        pool_len=np.zeros(num_pools, np.int64),
        pool_clock=np.zeros(num_pools),
        pool_evictions=np.zeros(num_pools, np.int64),
    )
