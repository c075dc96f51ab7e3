"""Compiled policy kernels: the four calls every cache loop makes.

    on_access(kind, I, F, key, t, batch, hint, repeat)
        a request for `key` at stream position t; the first of its batch is the lookup (hit or
        miss), a repeat only refreshes recency (frequencies count once per batch)
    on_insert(kind, I, F, key, t, prefetched)  `key` became resident (end of its batch, or a prefetch)
    on_evict(kind, I, F, key)                  `key` left the cache
    victim(kind, I, F, pool, pin, epoch, work) lowest-priority key of `pool` not pinned
        (pin[key] < epoch), or -1; it writes only `work` (caller-owned scratch space), never the
        policy state, so a runtime may ask first

(I, F) are a PolicyState's two arrays (state.py), passed as arrays: a compiled call that
unpacks a tuple costs several times the work of an LRU access. `hint` carries what an oracle
reads from the future (Belady: the next batch that uses the key), annotated once over the
trace. Ties always break the same way: least recently used first, then the lower key. The simulator calls these inside
one compiled loop; the runtime calls them per layer call. `kind` selects a policy's branch: the
state's own (ANY), or a constant in a loop compiled for one policy.

Editing this file: numba's on-disk cache keys each compiled function on its own source file,
so callers compiled elsewhere (replay.py, the runtime) keep the old kernels until their cache
is cleared: delete the `*.nbi`/`*.nbc` files under `__pycache__` after a change.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .state import (COUNT, FIXED, HEADER, HEAP, HEAP_POS, KEY_POOL, KEY_SIZE, LAST_USE, MEMBER, NXT, PARAMS,
                    POOL_CLOCK, POOL_EVICTIONS, POOL_LEN, POOL_START, PREV, PRIO, STAMP)

LRU, FIFO, LFU, LFU_DECAY, BELADY, STATIC, GDSF, RANDOM, HYPERBOLIC, BELADY_SIZE = range(10)
ANY = -1  # as `kind`: whichever policy the state holds

# No reference counting inside kernels (they never allocate): with it, every call from the
# loop pays atomic increments worth several times an LRU access.
_jit = numba.njit(cache=True, _nrt=False)
# The four calls are inlined into their callers (Numba IR level): a compiled call passes each
# 2-D array as 9 machine words, and LLVM does not inline functions this large by itself; the
# calls then cost more than an LRU access (k = 1 replay: 85 -> 36 ns per request with engine.py).
inline = numba.njit(cache=True, _nrt=False, inline="always")


# ----------------------------------------------------------------- recency / insertion lists
@_jit
def _unlink(I, k):
    p, n = I[PREV, k], I[NXT, k]
    I[NXT, p] = n
    I[PREV, n] = p


@_jit
def _link_after(I, at, k):
    n = I[NXT, at]
    I[NXT, at] = k
    I[PREV, k] = at
    I[NXT, k] = n
    I[PREV, n] = k


@_jit
def _list_victim(I, pool, busy, epoch):
    sentinel = I[HEADER, 1] + pool
    k = I[PREV, sentinel]  # tail = least recent / oldest
    while k != sentinel and busy[k] >= epoch:
        k = I[PREV, k]
    return -1 if k == sentinel else k


# ----------------------------------------------------------------- indexed min-heap per pool
@_jit
def _tie_before(I, a, b):
    """The tie-break every policy shares: least recently used first, then the lower key."""
    if I[LAST_USE, a] != I[LAST_USE, b]:
        return I[LAST_USE, a] < I[LAST_USE, b]
    return a < b


@_jit
def _before(I, F, a, b):
    """True if key a is evicted before key b: (prio, last use, key) ascending."""
    if F[PRIO, a] != F[PRIO, b]:
        return F[PRIO, a] < F[PRIO, b]
    return _tie_before(I, a, b)


@_jit
def _place(I, base, i, k):
    I[HEAP, base + i] = k
    I[HEAP_POS, k] = i


@_jit
def _sift_up(I, F, base, i):
    k = I[HEAP, base + i]
    while i > 0:
        parent = (i - 1) >> 1
        pk = I[HEAP, base + parent]
        if not _before(I, F, k, pk):
            break
        _place(I, base, i, pk)
        i = parent
    _place(I, base, i, k)


@_jit
def _sift_down(I, F, base, n, i):
    k = I[HEAP, base + i]
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        ck = I[HEAP, base + child]
        if child + 1 < n:
            rk = I[HEAP, base + child + 1]
            if _before(I, F, rk, ck):
                child += 1
                ck = rk
        if not _before(I, F, ck, k):
            break
        _place(I, base, i, ck)
        i = child
    _place(I, base, i, k)


@_jit
def _heap_push(I, F, k):
    pool = I[KEY_POOL, k]
    base, n = I[POOL_START, pool], I[POOL_LEN, pool]
    _place(I, base, n, k)
    I[POOL_LEN, pool] = n + 1
    _sift_up(I, F, base, n)


@_jit
def _heap_remove(I, F, k):
    pool = I[KEY_POOL, k]
    base, n = I[POOL_START, pool], I[POOL_LEN, pool] - 1
    i = I[HEAP_POS, k]
    I[HEAP_POS, k] = -1
    I[POOL_LEN, pool] = n
    if i == n:
        return
    moved = I[HEAP, base + n]
    _place(I, base, i, moved)
    _sift_up(I, F, base, i)
    _sift_down(I, F, base, n, I[HEAP_POS, moved])


@_jit
def _heap_update(I, F, k):
    """Restore heap order after the priority or last use of member k changed."""
    pool = I[KEY_POOL, k]
    base, n = I[POOL_START, pool], I[POOL_LEN, pool]
    _sift_up(I, F, base, I[HEAP_POS, k])
    _sift_down(I, F, base, n, I[HEAP_POS, k])


@_jit
def _heap_victim(I, F, pool, busy, epoch, work):
    """Least key not busy. Busy keys near the root are stepped over by a pruned search."""
    base, n = I[POOL_START, pool], I[POOL_LEN, pool]
    if n == 0:
        return -1
    root = I[HEAP, base]
    if busy[root] < epoch:
        return root
    best = -1
    work[0] = 0  # stack of heap indices
    top = 1
    while top > 0:
        top -= 1
        i = work[top]
        k = I[HEAP, base + i]
        if best >= 0 and not _before(I, F, k, best):
            continue  # this subtree cannot beat the best found
        if busy[k] < epoch:
            best = k
            continue
        for child in (2 * i + 1, 2 * i + 2):
            if child < n:
                work[top] = child
                top += 1
    return best


# ----------------------------------------------------------------- unordered set (random policy)
@_jit
def _set_add(I, k):
    pool = I[KEY_POOL, k]
    _place(I, I[POOL_START, pool], I[POOL_LEN, pool], k)
    I[POOL_LEN, pool] += 1


@_jit
def _set_remove(I, k):
    pool = I[KEY_POOL, k]
    base, n = I[POOL_START, pool], I[POOL_LEN, pool] - 1
    i = I[HEAP_POS, k]
    I[HEAP_POS, k] = -1
    I[POOL_LEN, pool] = n
    if i != n:
        _place(I, base, i, I[HEAP, base + n])


@_jit
def _mix(x):
    """splitmix64 finaliser: a reproducible pseudo-random draw from a counter."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@_jit
def _random_victim(I, F, pool, busy, epoch):
    base, n = I[POOL_START, pool], I[POOL_LEN, pool]
    if n == 0:
        return -1
    seed = np.uint64(int(F[PARAMS, 0])) * np.uint64(1000003) + np.uint64(pool)
    draw = _mix(seed * np.uint64(0x100000001B3) + np.uint64(I[POOL_EVICTIONS, pool]))
    start = np.int64(draw % np.uint64(n))
    for j in range(n):  # the first key not busy from a random start
        k = I[HEAP, base + (start + j) % n]
        if busy[k] < epoch:
            return k
    return -1


@_jit
def _scan_victim(I, F, pool, busy, epoch, kind):
    """Lowest score now, over the whole pool: for priorities whose order changes with time.
    hyperbolic: uses since admission / time in cache; belady-size: -(batches to next use) x size."""
    base, n = I[POOL_START, pool], I[POOL_LEN, pool]
    now = I[HEADER, 3]
    best, best_s = -1, 0.0
    for j in range(n):
        k = I[HEAP, base + j]
        if busy[k] >= epoch:
            continue
        if kind == HYPERBOLIC:
            s = F[COUNT, k] / (now - I[STAMP, k] + 1)
        else:
            s = -(F[PRIO, k] - now) * F[KEY_SIZE, k]
        if best < 0 or s < best_s or (s == best_s and _tie_before(I, k, best)):
            best, best_s = k, s
    return best


@_jit
def _gdsf_priority(I, F, k):
    """The pool's clock (last evicted priority) + uses / size."""
    return F[POOL_CLOCK, I[KEY_POOL, k]] + F[COUNT, k] / F[KEY_SIZE, k]


# ----------------------------------------------------------------- the four calls
@_jit
def _kind(kind, I):
    """The policy's kind: a constant where a loop is compiled for one policy (its other
    branches then drop out), else read from the state at each call (ANY). Held in a register
    instead, the generic loop measured 11 % slower (LFU, k = 1 replay)."""
    return I[HEADER, 0] if kind == ANY else kind


@inline
def on_access(kind, I, F, k, t, batch, hint, repeat):
    kind = _kind(kind, I)
    I[LAST_USE, k] = t
    if kind == LRU:
        if I[MEMBER, k]:
            _unlink(I, k)
            _link_after(I, I[HEADER, 1] + I[KEY_POOL, k], k)
        return
    if kind == FIFO or kind == RANDOM:
        return
    if kind == BELADY_SIZE:
        I[HEADER, 3] = batch  # the clock victim() reads
        F[PRIO, k] = float(hint)  # batch of the next use
        return
    if kind == HYPERBOLIC:
        I[HEADER, 3] = t  # the clock victim() reads
        if I[MEMBER, k] and not repeat:
            F[COUNT, k] += 1.0  # uses since admission
        return
    if kind == BELADY:
        F[PRIO, k] = -float(hint)  # the later the next use, the sooner evicted
    elif repeat:
        pass  # frequencies count once per batch; the new last use still reorders ties
    elif kind == LFU:
        F[COUNT, k] += 1.0
        F[PRIO, k] = F[COUNT, k]
    elif kind == LFU_DECAY:
        rate = F[PARAMS, 0]
        F[COUNT, k] = F[COUNT, k] * math.exp(-rate * (batch - I[STAMP, k])) + 1.0
        I[STAMP, k] = batch
        F[PRIO, k] = math.log(F[COUNT, k]) + rate * batch  # order-preserving, time-invariant
    elif kind == STATIC:
        F[PRIO, k] = F[FIXED, k]
    elif kind == GDSF:
        F[COUNT, k] += 1.0
        F[PRIO, k] = _gdsf_priority(I, F, k)
    if I[MEMBER, k]:
        _heap_update(I, F, k)


@inline
def on_insert(kind, I, F, k, t, prefetched):
    kind = _kind(kind, I)
    I[MEMBER, k] = 1
    if prefetched:  # a prefetch counts as a use at its issue time, without frequency credit
        I[LAST_USE, k] = t
        if kind == STATIC:
            F[PRIO, k] = F[FIXED, k]
        elif kind == GDSF:
            F[PRIO, k] = _gdsf_priority(I, F, k)
    if kind == LRU:  # keep the list sorted by last use: a batch's misses go behind its later hits
        sentinel = I[HEADER, 1] + I[KEY_POOL, k]
        at = sentinel
        while I[NXT, at] != sentinel and I[LAST_USE, I[NXT, at]] > I[LAST_USE, k]:
            at = I[NXT, at]
        _link_after(I, at, k)
    elif kind == FIFO:
        _link_after(I, I[HEADER, 1] + I[KEY_POOL, k], k)
    elif kind == RANDOM or kind == BELADY_SIZE:
        _set_add(I, k)
    elif kind == HYPERBOLIC:
        F[COUNT, k] = 1.0
        I[STAMP, k] = t
        I[HEADER, 3] = max(I[HEADER, 3], t)
        _set_add(I, k)
    else:
        _heap_push(I, F, k)


@inline
def on_evict(kind, I, F, k):
    kind = _kind(kind, I)
    pool = I[KEY_POOL, k]
    I[MEMBER, k] = 0
    I[POOL_EVICTIONS, pool] += 1
    if kind == LRU or kind == FIFO:
        _unlink(I, k)
    elif kind == RANDOM or kind == HYPERBOLIC or kind == BELADY_SIZE:
        _set_remove(I, k)
    else:
        if kind == GDSF:
            F[POOL_CLOCK, pool] = max(F[POOL_CLOCK, pool], F[PRIO, k])
        _heap_remove(I, F, k)


@inline
def victim(kind, I, F, pool, busy, epoch, work):
    kind = _kind(kind, I)
    if kind == LRU or kind == FIFO:
        return _list_victim(I, pool, busy, epoch)
    if kind == RANDOM:
        return _random_victim(I, F, pool, busy, epoch)
    if kind == HYPERBOLIC or kind == BELADY_SIZE:
        return _scan_victim(I, F, pool, busy, epoch, kind)
    return _heap_victim(I, F, pool, busy, epoch, work)
