"""Compiled policy kernels: the four calls every cache loop makes (SPEC §4).

    on_access(state, key, t, batch, hint, repeat)
                                            a request for `key` at stream position t; the first
                                            of its batch is the lookup (hit or miss), a repeat
                                            only refreshes recency (counts once per batch)
    on_insert(state, key, t, prefetched)    `key` became resident (end of its batch, or a prefetch)
    on_evict(state, key)                    `key` left the cache
    victim(state, pool, busy, epoch)        lowest-priority key of `pool` whose busy[key] < epoch,
                                            or -1; no side effects, so a runtime may ask first

`hint` carries what an oracle reads from the future (Belady: the next batch that uses the key),
annotated once over the trace. Ties always break the same way: least recently used first, then
the lower key. The simulator calls these inside one compiled loop; the runtime calls them per
layer call. Each policy's logic is a few lines below; `kind` selects it.
"""

from __future__ import annotations

import math

import numba
import numpy as np

LRU, FIFO, LFU, LFU_DECAY, BELADY, STATIC, GDSF, RANDOM = range(8)
LIST_KINDS = (LRU, FIFO)

_jit = numba.njit(cache=True)


# ----------------------------------------------------------------- recency / insertion lists
@_jit
def _unlink(st, k):
    p, n = st.prev[k], st.nxt[k]
    st.nxt[p] = n
    st.prev[n] = p


@_jit
def _link_after(st, at, k):
    n = st.nxt[at]
    st.nxt[at] = k
    st.prev[k] = at
    st.nxt[k] = n
    st.prev[n] = k


@_jit
def _list_victim(st, pool, busy, epoch):
    sentinel = len(st.key_pool) + pool
    k = st.prev[sentinel]  # tail = least recent / oldest
    while k != sentinel and busy[k] >= epoch:
        k = st.prev[k]
    return -1 if k == sentinel else k


# ----------------------------------------------------------------- indexed min-heap per pool
@_jit
def _before(st, a, b):
    """True if key a is evicted before key b: (prio, last use, key) ascending."""
    if st.prio[a] != st.prio[b]:
        return st.prio[a] < st.prio[b]
    if st.last_use[a] != st.last_use[b]:
        return st.last_use[a] < st.last_use[b]
    return a < b


@_jit
def _place(st, base, i, k):
    st.heap[base + i] = k
    st.heap_pos[k] = i


@_jit
def _sift_up(st, base, i):
    k = st.heap[base + i]
    while i > 0:
        parent = (i - 1) >> 1
        pk = st.heap[base + parent]
        if not _before(st, k, pk):
            break
        _place(st, base, i, pk)
        i = parent
    _place(st, base, i, k)


@_jit
def _sift_down(st, base, n, i):
    k = st.heap[base + i]
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        ck = st.heap[base + child]
        if child + 1 < n:
            rk = st.heap[base + child + 1]
            if _before(st, rk, ck):
                child += 1
                ck = rk
        if not _before(st, ck, k):
            break
        _place(st, base, i, ck)
        i = child
    _place(st, base, i, k)


@_jit
def _heap_push(st, k):
    pool = st.key_pool[k]
    base, n = st.pool_start[pool], st.pool_len[pool]
    _place(st, base, n, k)
    st.pool_len[pool] = n + 1
    _sift_up(st, base, n)


@_jit
def _heap_remove(st, k):
    pool = st.key_pool[k]
    base, n = st.pool_start[pool], st.pool_len[pool] - 1
    i = st.heap_pos[k]
    st.heap_pos[k] = -1
    st.pool_len[pool] = n
    if i == n:
        return
    moved = st.heap[base + n]
    _place(st, base, i, moved)
    _sift_up(st, base, i)
    _sift_down(st, base, n, st.heap_pos[moved])


@_jit
def _heap_update(st, k):
    """Restore heap order after prio/last_use of member k changed."""
    pool = st.key_pool[k]
    base, n = st.pool_start[pool], st.pool_len[pool]
    i = st.heap_pos[k]
    _sift_up(st, base, i)
    _sift_down(st, base, n, st.heap_pos[k])


@_jit
def _heap_victim(st, pool, busy, epoch):
    """Least key not busy. Busy keys near the root are stepped over by a pruned search."""
    base, n = st.pool_start[pool], st.pool_len[pool]
    if n == 0:
        return -1
    root = st.heap[base]
    if busy[root] < epoch:
        return root
    best = -1
    stack = np.empty(n, np.int64)
    stack[0] = 0
    top = 1
    while top > 0:
        top -= 1
        i = stack[top]
        k = st.heap[base + i]
        if best >= 0 and not _before(st, k, best):
            continue  # this subtree cannot beat the best found
        if busy[k] < epoch:
            best = k
            continue
        for child in (2 * i + 1, 2 * i + 2):
            if child < n:
                stack[top] = child
                top += 1
    return best


# ----------------------------------------------------------------- unordered set (random policy)
@_jit
def _set_add(st, k):
    pool = st.key_pool[k]
    _place(st, st.pool_start[pool], st.pool_len[pool], k)
    st.pool_len[pool] += 1


@_jit
def _set_remove(st, k):
    pool = st.key_pool[k]
    base, n = st.pool_start[pool], st.pool_len[pool] - 1
    i = st.heap_pos[k]
    st.heap_pos[k] = -1
    st.pool_len[pool] = n
    if i != n:
        _place(st, base, i, st.heap[base + n])


@_jit
def _mix(x):
    """splitmix64 finaliser: a reproducible pseudo-random draw from a counter."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    return x ^ (x >> np.uint64(31))


@_jit
def _random_victim(st, pool, busy, epoch):
    base, n = st.pool_start[pool], st.pool_len[pool]
    if n == 0:
        return -1
    seed = np.uint64(int(st.params[0])) * np.uint64(1000003) + np.uint64(pool)
    draw = _mix(seed * np.uint64(0x100000001B3) + np.uint64(st.pool_evictions[pool]))
    start = np.int64(draw % np.uint64(n))
    for j in range(n):  # first non-busy key from a random start
        k = st.heap[base + (start + j) % n]
        if busy[k] < epoch:
            return k
    return -1


# ----------------------------------------------------------------- the four calls
@_jit
def on_access(st, k, t, batch, hint, repeat):
    kind = st.kind[0]
    st.last_use[k] = t
    if kind == LRU:
        if st.member[k]:
            _unlink(st, k)
            _link_after(st, len(st.key_pool) + st.key_pool[k], k)
        return
    if kind == FIFO or kind == RANDOM:
        return
    if kind == BELADY:
        st.prio[k] = -float(hint)  # the later the next use, the sooner evicted
    elif repeat:
        pass  # counts once per batch; the new last use still moves it in the heap
    elif kind == LFU:
        st.count[k] += 1.0
        st.prio[k] = st.count[k]
    elif kind == LFU_DECAY:
        rate = st.params[0]
        st.count[k] = st.count[k] * math.exp(-rate * (batch - st.stamp[k])) + 1.0
        st.stamp[k] = batch
        st.prio[k] = math.log(st.count[k]) + rate * batch  # order-preserving, time-invariant
    elif kind == STATIC:
        st.prio[k] = st.fixed[k]
    elif kind == GDSF:
        st.count[k] += 1.0
        st.prio[k] = st.pool_clock[st.key_pool[k]] + st.count[k] / st.key_size[k]
    if st.member[k]:
        _heap_update(st, k)


@_jit
def on_insert(st, k, t, prefetched):
    kind = st.kind[0]
    st.member[k] = 1
    if prefetched:  # a prefetch counts as a use at its issue time; no frequency credit
        st.last_use[k] = t
        if kind == STATIC:
            st.prio[k] = st.fixed[k]
        elif kind == GDSF:
            st.prio[k] = st.pool_clock[st.key_pool[k]] + st.count[k] / st.key_size[k]
    if kind == LRU:  # keep the list sorted by last use: misses of a batch go behind later hits
        at = len(st.key_pool) + st.key_pool[k]
        sentinel = at
        while st.nxt[at] != sentinel and st.last_use[st.nxt[at]] > st.last_use[k]:
            at = st.nxt[at]
        _link_after(st, at, k)
    elif kind == FIFO:
        _link_after(st, len(st.key_pool) + st.key_pool[k], k)
    elif kind == RANDOM:
        _set_add(st, k)
    else:
        _heap_push(st, k)


@_jit
def on_evict(st, k):
    kind = st.kind[0]
    pool = st.key_pool[k]
    st.member[k] = 0
    st.pool_evictions[pool] += 1
    if kind == LRU or kind == FIFO:
        _unlink(st, k)
    elif kind == RANDOM:
        _set_remove(st, k)
    else:
        if kind == GDSF:
            st.pool_clock[pool] = max(st.pool_clock[pool], st.prio[k])
        _heap_remove(st, k)


@_jit
def victim(st, pool, busy, epoch):
    kind = st.kind[0]
    if kind == LRU or kind == FIFO:
        return _list_victim(st, pool, busy, epoch)
    if kind == RANDOM:
        return _random_victim(st, pool, busy, epoch)
    return _heap_victim(st, pool, busy, epoch)
