"""Numba kernels: one pass over a request stream gives the hits of every cache size.

All four policies are stack policies: caches of every size are the top C entries of one
stack. A token's requests are judged against the stack as it stood before the token (depth
d hits for every C > d; a first use hits for every C above the number of distinct experts
requested before it), then applied one by one.

- LRU: the stack is the recency order, so a depth is the number of experts used since the
  expert's last use. Up to LRU_COUNT_MAX_IDS ids (a layer) it is counted over all ids' last
  use times, one compare each, a loop the compiler vectorises (O(I/16) instructions, no
  stack to move). Beyond (model level) the recency stack is updated once per token: the
  token's ids move to the front in one pass over the entries above its deepest request, about
  E / k entries per request whatever L (lru_front_hist); where ids per request exceed
  LRU_FRONT_MAX_IDS_PER_REQUEST, the set of last uses answers in O(log R) (a bitset over use
  times, counted per word by a Fenwick tree).
- LFU, Belady, FSF: Mattson's update. Admitting x into every cache smaller than its depth p
  evicts, size by size, the running minimum of priority over the stack's top; those minima
  ("records") move down one step and nothing else moves. One scan of the p entries above x,
  O(p) per request, p being the request's reuse depth (grows with I). Where records are
  dense and unpredictable (FSF up to 128 ids, Belady up to 64) the scan runs without the
  record branch (max / min and selects), which costs less than the mispredictions; FSF's
  8 keys at a time (_lanes). A min-tree that jumps from record to record was measured slower
  at every size up to I = 14 848 (records are 10-35 % of the depth for LFU and FSF), see
  docs/metrics.md. With a size cap the stack holds only its top `cap` entries (the caches of
  sizes 1..cap): a deeper or new request scans cap entries at most and the last record falls
  out, so the cost is O(min(depth, cap)) whatever I.
- LFU and Belady at model level (segment_hist): below its top the stack is a few strictly
  descending runs of keys (LFU 2-5, Belady 10-40), since only the requested entry's key
  changes. Records are then the tail of each run below the running minimum: a run is
  skipped with one compare, its first record found by binary search, its records moved by
  one copy. Cost O(runs above x + log I + records moved), not O(depth). FSF's keys rise
  while entries wait, which breaks runs.
- LFU with thousands of sizes (_lfu_classes.lfu_class_hist): within a use count the experts
  lie in order of last use, and the records of one update form a chain of use counts (2.6 on
  average on synthetic routing, at most the distinct counts), so each count's set of depths
  changes by two bits and nothing moves. Cost O(p / 64 + chain + I / 512) per request.
- FSF above 128 ids (fsf_hist): experts with no pending request in the window lie in order of
  last use and, once the running minimum is one of them, are exactly the records; they are
  left in place (a bitset of their depths changes by two bits), so the scan stops at the
  first of them. Cost O(depth of the first idle entry + log R).

Shape key: R requests of one stream, T tokens, I ids (E per layer, sum of E at model level).
hist[d] counts requests whose smallest hitting cache size is d (d = 1..I); hist[I + 1]
counts requests that miss at every size (a repeat of a first use inside one token). With a
cap, hist[cap + 1] also counts the requests deeper than the cap: misses at every size <= cap.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from ._bits import _popcount, _put_bit, _select_in_word
from ._judge import _judge_token, _widest_token
from ._lanes import _LANES, _LARGEST, mattson_block
from ._lfu_classes import lfu_class_hist

LRU, LFU, BELADY, FSF = 0, 1, 2, 3
POLICY_CODES = {"lru": LRU, "lfu": LFU, "belady": BELADY, "fsf": FSF}

_SHIFT = np.int64(1) << np.int64(32)
MAX_SEQUENCE_REQUESTS = (1 << 32) - 1  # a key's low 32 bits hold the index of the request that set it
LRU_COUNT_MAX_IDS = 256  # up to this, counting beats the Fenwick tree (benchmarks/bench_locality.py)
# Above it, moving each token's ids to the front beats the tree while ids per request (E / k at
# model level) stay below this (benchmarks/bench_locality.py, section 3, 2026-12-01): 1 024 to
# 6 144 keys with E / k = 8 or 16, 8-16 ns against 21-24; E / k = 32 was even on an AMD EPYC
# (8 192 and 14 848 keys, 27-28 against 26-28) and lost on an Intel Xeon (stop 30: 72-97
# against 54-57; 16 x 128 at k = 4, 48-51 against 43), where E / k = 16 still won (28 against
# 38, 36-40 against 39-50); E / k = 64 loses to the tree (43-44 ns against 24-25).
LRU_FRONT_MAX_IDS_PER_REQUEST = 24


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _fenwick_add(tree, i, value):
    i += 1
    while i < tree.shape[0]:
        tree[i] += value
        i += i & (-i)


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _fenwick_prefix(tree, i):
    """Sum of entries [0, i)."""
    total = 0
    while i > 0:
        total += tree[i]
        i -= i & (-i)
    return total


@numba.njit(cache=True)
def lru_hist(ids, tok, n_ids, hist, count):
    """Accumulate the LRU hit histogram of one sequence's stream into hist [n_ids + 2].

    depth = how many ids were used after the expert's last use: with `count`, counted over all
    ids (int32 times: 16 compares per vector instruction), else from the set of last uses (a
    bitset over use times with a Fenwick tree of its counts per word: _bits_below).
    """
    used = np.zeros(1 if count else (ids.shape[0] >> 6) + 1, np.uint64)  # bit q: request q is a last use
    tree = np.zeros(used.shape[0] + 1, np.int32)
    last = np.full(n_ids, -1, np.int32)
    stamp = np.full(n_ids, -1, np.int64)
    depth = np.empty(_widest_token(tok), np.int64)
    seen = 0
    for t in range(tok.shape[0] - 1):
        a, b = tok[t], tok[t + 1]
        for q in range(a, b):
            lx = last[ids[q]]
            d = -1
            if lx >= 0 and count:
                d = 0
                for y in range(n_ids):
                    d += last[y] > lx
            elif lx >= 0:
                d = seen - _bits_below(used, tree, lx + 1)
            depth[q - a] = d
        _judge_token(ids, a, b, t, depth, seen, stamp, hist, n_ids)
        for q in range(a, b):
            x = ids[q]
            if last[x] < 0:
                seen += 1
            elif not count:
                _flip(used, tree, last[x], False)
            if not count:
                _flip(used, tree, q, True)
            last[x] = q


@numba.njit(cache=True)
def lru_front_hist(ids, tok, n_ids, hist):
    """lru_hist with the recency stack kept in an array, updated once per token: the token's
    ids move to the front and the entries they passed close up in one backward pass, branch-free.
    O(deepest request of the token) per token: about E / k per request at model level whatever L,
    where the tree costs O(log R)."""
    stack = np.empty(n_ids, np.int32)  # ids, most recent first
    where = np.full(n_ids, -1, np.int64)  # depth of each id, -1 never used
    mark = np.full(n_ids, -1, np.int64)  # t: requested by token t, not yet moved; -2 - t: moved
    stamp = np.full(n_ids, -1, np.int64)
    depth = np.empty(_widest_token(tok), np.int64)
    size = 0
    for t in range(tok.shape[0] - 1):
        a, b = tok[t], tok[t + 1]
        passed = new = 0  # entries above the deepest request; first uses
        for q in range(a, b):
            x = ids[q]
            d = where[x]
            depth[q - a] = d
            passed = max(passed, d + 1)
            new += d < 0 and mark[x] != t
            mark[x] = t
        _judge_token(ids, a, b, t, depth, size, stamp, hist, n_ids)
        if new:
            passed = size  # every entry moves down
        w = passed + new - 1
        for j in range(passed - 1, -1, -1):  # w >= j: nothing is overwritten before it is read
            y = stack[j]
            stack[w] = y
            where[y] = w
            w -= mark[y] != t
        size += new
        i = 0
        for q in range(b - 1, a - 1, -1):  # the last request of an id decides its place
            x = ids[q]
            if mark[x] == t:
                mark[x] = -2 - t
                stack[i] = x
                where[x] = i
                i += 1


@numba.njit(cache=True)
def _next_uses(ids, n_ids):
    """[R] position of each request's expert's next request; R + q when never again, so that
    Belady's keys are unique (which never-again expert a cache keeps changes no hit)."""
    n = ids.shape[0]
    nxt = np.empty(n, np.int64)
    upcoming = np.full(n_ids, -1, np.int64)
    for q in range(n - 1, -1, -1):
        nxt[q] = upcoming[ids[q]] if upcoming[ids[q]] >= 0 else n + q
        upcoming[ids[q]] = q
    return nxt


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _new_key(policy, x, q, count, future, nxt):
    """The key (larger = kept) of x after its request q: LFU count * 2^32 + last use, FSF
    pending future requests * 2^32 + last use, Belady -(next use), LRU last use."""
    if policy == LFU:
        count[x] += 1
        return count[x] * _SHIFT + q
    if policy == FSF:
        future[x] -= 1
        return future[x] * _SHIFT + q
    if policy == BELADY:
        return -nxt[q]
    return q


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _depth_to_update(where, x, size, cap):
    """(depth whose entry x replaces, new stack size): a first use takes the bottom, and the
    stack grows up to the cap."""
    p = where[x]
    if p < 0:
        return size, min(size + 1, cap)
    return p, size


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _swap(stack, key, where, j, carry, carry_key):
    """A record at depth j: the carry takes its place and its entry becomes the carry."""
    y = stack[j]
    y_key = key[j]
    stack[j] = carry
    key[j] = carry_key
    where[carry] = j
    return y, y_key


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _scan(stack, key, where, a, b, carry, carry_key):
    """Mattson's scan of depths [a, b): each entry below the running minimum (the carry) is a
    record and swaps with it. Returns the carry at depth b."""
    for j in range(a, b):
        if key[j] < carry_key:
            carry, carry_key = _swap(stack, key, where, j, carry, carry_key)
    return carry, carry_key


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _key_id(policy, k, ids):
    """The expert whose key is k: keys carry the request that set them (_new_key)."""
    if policy == BELADY:  # k = -(next use), or -(R + last use) when never used again
        q = -k
        return ids[q - ids.shape[0] * (q >= ids.shape[0])]
    return ids[k & np.int64(0xFFFFFFFF)]


BRANCH, SELECT, LANES = 0, 1, 2  # priority_hist's ways to scan


@numba.njit(cache=True)
def priority_hist(ids, tok, n_ids, policy, m, hist, cap, scan=BRANCH):
    """_priority_hist with `scan` a constant in each inlined copy, so that each copy compiles
    without the other ways' branches (the lanes' loop ran 1.2x slower beside them)."""
    if scan == LANES:
        _priority_hist(ids, tok, n_ids, policy, m, hist, cap, LANES)
    elif scan == SELECT:
        _priority_hist(ids, tok, n_ids, policy, m, hist, cap, SELECT)
    else:
        _priority_hist(ids, tok, n_ids, policy, m, hist, cap, BRANCH)


@numba.njit(cache=True, inline="always")  # see priority_hist
def _priority_hist(ids, tok, n_ids, policy, m, hist, cap, scan):
    """Accumulate the LFU / Belady / FSF(m) (or LRU) hit histogram of one sequence's stream,
    exact for cache sizes 1..cap (cap = n_ids: every size).

    Priorities are int64 keys (_new_key). key[i] is the key of the entry at depth i, so the
    scan reads one contiguous array. Depth `cap` is a sink: the ids below the cap. `scan`:
    BRANCH tests each entry for a record; SELECT scans without the record branch (each entry
    keeps the larger key, the carry the smaller), then stores the depths of the entries
    passed; LANES does SELECT's key update 8 keys at a time (_lanes.mattson_block) and reads
    each passed entry's expert from its key. Without the branch is faster where records are
    dense and unpredictable (Belady on up to BELADY_SELECT_MAX_IDS ids; FSF on up to
    FSF_LANES_MAX_IDS, in lanes).
    """
    T = tok.shape[0] - 1
    stack = np.empty(0 if scan == LANES else cap + 1, np.int32)  # stack[i] = id at depth i (LANES: the key says)
    key = np.zeros(cap + _LANES, np.int64)  # key[i] = priority of the entry at depth i; room for a last block of 8
    where = np.full(n_ids, -1, np.int64)  # depth of each id (cap: below the cap), -1 if never used
    count = np.zeros(n_ids, np.int64)
    future = np.zeros(n_ids, np.int64)
    stamp = np.full(n_ids, -1, np.int64)
    nxt = _next_uses(ids, n_ids) if policy == BELADY else np.empty(0, np.int64)
    depth = np.empty(_widest_token(tok), np.int64)
    size = 0
    if policy == FSF:
        for q in range(tok[0], tok[min(m - 1, T)]):
            future[ids[q]] += 1
    for t in range(T):
        a, b = tok[t], tok[t + 1]
        if policy == FSF and t + m - 1 < T:  # token t + m - 1 enters the window t .. t + m - 1
            for q in range(tok[t + m - 1], tok[t + m]):
                y = ids[q]
                future[y] += 1
                if where[y] >= 0:
                    key[where[y]] += _SHIFT
        for q in range(a, b):
            depth[q - a] = where[ids[q]]
        _judge_token(ids, a, b, t, depth, size, stamp, hist, n_ids)
        for q in range(a, b):
            x = ids[q]
            kx = _new_key(policy, x, q, count, future, nxt)
            p, size = _depth_to_update(where, x, size, cap)
            if p > 0:
                # Cache size i < p evicts the lowest key of depths 0..i-1: the running minimum,
                # which moves down to the next record's depth; the last one lands at depth p.
                if scan == LANES:
                    carry_key = _LARGEST  # depth 0 joins the minimum; its key is replaced below
                    for j0 in range(0, p, _LANES):
                        carry_key = mattson_block(key, j0, carry_key, min(_LANES, p - j0))
                    for j in range(1, p):
                        where[_key_id(policy, key[j], ids)] = j
                    carry = _key_id(policy, carry_key, ids)
                else:
                    carry = stack[0]
                    carry_key = key[0]
                    if scan == SELECT:
                        for j in range(1, p):
                            y_key = key[j]
                            y = stack[j]
                            record = y_key < carry_key
                            stack[j] = carry if record else y
                            carry = y if record else carry
                            key[j] = max(y_key, carry_key)
                            carry_key = min(y_key, carry_key)
                        for j in range(1, p):
                            where[stack[j]] = j
                    else:
                        carry, carry_key = _scan(stack, key, where, 1, p, carry, carry_key)
                    stack[p] = carry
                key[p] = carry_key
                where[carry] = p
            if scan != LANES:
                stack[0] = x
            key[0] = kx
            where[x] = 0


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _next_set(bits, start, stop):
    """First set bit of `bits` (uint64 words) in [start, stop), or stop."""
    w = start >> 6
    word = bits[w] & (~np.uint64(0) << np.uint64(start & 63))
    while word == 0:
        w += 1
        if w << 6 >= stop:
            return stop
        word = bits[w]
    return min((w << 6) + np.int64(trailing_zeros(word)), stop)


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _fenwick_find(tree, r):
    """(smallest i with prefix(i + 1) > r, r - prefix(i)): where the r-th (from 0) unit lies."""
    i = 0
    step = 1
    while step * 2 < tree.shape[0]:
        step *= 2
    while step:
        if i + step < tree.shape[0] and tree[i + step] <= r:
            i += step
            r -= tree[i]
        step >>= 1
    return i, r


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _flip(bits, counts, d, on):
    """Set or clear bit d, keeping the Fenwick tree of set bits per 64-bit word."""
    _put_bit(bits, d, on)
    _fenwick_add(counts, d >> 6, 1 if on else -1)


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _bits_below(bits, counts, i):
    """Set bits at positions below i (counts: _flip's Fenwick tree of set bits per word)."""
    below = np.uint64(i & 63)
    mask = (np.uint64(1) << below) - np.uint64(1)
    return _fenwick_prefix(counts, i >> 6) + np.int64(_popcount(bits[i >> 6] & mask))


IDLE = -2  # where[] of an idle expert: its depth is not kept (see fsf_hist)


@numba.njit(cache=True)
def fsf_hist(ids, tok, n_ids, m, hist, cap):
    """priority_hist for FSF(m) with the idle entries never moved.

    An expert with no pending request in the window ("idle": key < 2^32) becomes idle only
    when requested, at the top with the latest use, and Mattson's update keeps the order of
    the idle entries it moves; so idle entries lie in descending order of last use. Once the
    running minimum is idle, exactly the idle entries above x are records, and moving each to
    the next one's depth leaves the sequence of idle experts as it was: only the set of idle
    depths changes (the first loses its bit, x's old depth gains one). So idle experts are
    kept as a set ordered by last use (a bitset over use times) and their depths as a
    bitset; the depth of one is needed only when the window makes it pending again (rank by
    last use, then that rank's set bit). Requested experts are always pending, so their depths
    are exact. Cost O(depth of the first idle entry + log R) per request, instead of O(depth).
    The use times are a bitset with a Fenwick tree of counts per word: about 1/21 the memory of
    an int32 tree over every request, and faster (per layer at E = 256, +12 %).
    """
    T = tok.shape[0] - 1
    stack = np.empty(cap + 1, np.int32)
    key = np.empty(cap + 1, np.int64)
    idle = np.zeros((cap >> 6) + 1, np.uint64)  # bit j: depth j holds an idle expert
    per_word = np.zeros(idle.shape[0] + 1, np.int32)  # Fenwick tree: idle bits per word
    by_use = np.zeros((ids.shape[0] >> 6) + 1, np.uint64)  # bit q: an idle expert was last used by request q
    use_words = np.zeros(by_use.shape[0] + 1, np.int32)  # Fenwick tree: bits of by_use per word
    n_idle = 0
    last = np.zeros(n_ids, np.int64)  # last use of an idle expert
    where = np.full(n_ids, -1, np.int64)  # depth; IDLE; cap below the cap; -1 never used
    future = np.zeros(n_ids, np.int64)
    stamp = np.full(n_ids, -1, np.int64)
    depth = np.empty(_widest_token(tok), np.int64)
    size = 0
    for q in range(tok[0], tok[min(m - 1, T)]):
        future[ids[q]] += 1
    for t in range(T):
        a, b = tok[t], tok[t + 1]
        if t + m - 1 < T:  # token t + m - 1 enters the window t .. t + m - 1
            for q in range(tok[t + m - 1], tok[t + m]):
                y = ids[q]
                future[y] += 1
                d = where[y]
                if d == IDLE:  # pending again: kept explicitly where it lies
                    later = n_idle - _bits_below(by_use, use_words, last[y] + 1)  # idle experts used after y
                    w, r = _fenwick_find(per_word, later)
                    d = (w << 6) + _select_in_word(idle[w], r)
                    _flip(idle, per_word, d, False)
                    _flip(by_use, use_words, last[y], False)
                    n_idle -= 1
                    stack[d] = y
                    key[d] = _SHIFT + last[y]
                    where[y] = d
                elif d >= 0 and d < cap:
                    key[d] += _SHIFT
        for q in range(a, b):
            depth[q - a] = where[ids[q]]
        _judge_token(ids, a, b, t, depth, size, stamp, hist, n_ids)
        for q in range(a, b):
            x = ids[q]
            future[x] -= 1
            kx = future[x] * _SHIFT + q
            p, size = _depth_to_update(where, x, size, cap)
            if p > 0:
                f = 0  # the first idle entry: an idle top, or where the scan stops (a record: it takes the carry)
                if not idle[0] & np.uint64(1):
                    f = _next_set(idle, 1, p)
                    carry, carry_key = _scan(stack, key, where, 1, f, stack[0], key[0])
                    d = min(f, p)
                    stack[d] = carry
                    key[d] = carry_key
                    where[carry] = d
                if f < p:  # the idle entries from f to p move down: f's bit leaves, the last lands at p
                    _flip(idle, per_word, f, False)  # one flip for both ways: in each branch, numba kept refcounts
                    if p < cap:
                        _flip(idle, per_word, p, True)
                    else:  # ... below the cap: the least recently used idle expert leaves
                        w, _ = _fenwick_find(use_words, 0)
                        oldest = (w << 6) + np.int64(trailing_zeros(by_use[w]))
                        _flip(by_use, use_words, oldest, False)
                        n_idle -= 1
                        where[ids[oldest]] = cap
            if kx < _SHIFT:  # x is idle from now: at the top, the latest use
                _flip(idle, per_word, 0, True)
                _flip(by_use, use_words, q, True)
                n_idle += 1
                last[x] = q
                where[x] = IDLE
            else:
                stack[0] = x
                key[0] = kx
                where[x] = 0


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _first_below(key, base, n, v):
    """First j in [base, base + n) with key[j] < v, keys strictly descending (base + n if none).
    Branch-free: the loop runs log2(n) times whatever the keys."""
    while n > 1:
        half = n >> 1
        base = base + half if key[base + half - 1] >= v else base
        n -= half
    return base + (key[base] >= v)


@numba.njit(cache=True)
def segment_hist(ids, tok, n_ids, policy, hist, cap):
    """priority_hist for LFU and Belady with the stack below its top kept as strictly descending
    segments of keys: an update skips a segment with one compare, finds where its records begin
    by binary search and moves them down one step (no entry-by-entry scan).

    The top entry aside, only the requested entry's key changes, so a segment stays descending
    and its records are the suffix of its keys below the running minimum; a new segment begins
    only where the last record lands above a larger key (x's old depth, or the bottom), and
    neighbours merge when their boundary stops rising. Keys are unique (see _next_uses for
    Belady's).
    """
    T = tok.shape[0] - 1
    stack = np.empty(cap + 1, np.int32)
    key = np.empty(cap + 1, np.int64)
    head = np.empty(cap + 2, np.int64)  # segment starts (depths >= 1); head[nseg] = size
    nseg = 0
    where = np.full(n_ids, -1, np.int64)
    count = np.zeros(n_ids, np.int64)
    future = np.empty(0, np.int64)  # FSF only, which keeps the scan
    stamp = np.full(n_ids, -1, np.int64)
    nxt = _next_uses(ids, n_ids) if policy == BELADY else np.empty(0, np.int64)
    depth = np.empty(_widest_token(tok), np.int64)
    size = 0
    for t in range(T):
        a, b = tok[t], tok[t + 1]
        for q in range(a, b):
            x = ids[q]
            depth[q - a] = where[x]
        _judge_token(ids, a, b, t, depth, size, stamp, hist, n_ids)
        for q in range(a, b):
            x = ids[q]
            kx = _new_key(policy, x, q, count, future, nxt)
            p = where[x]
            grow = p < 0
            if grow:
                p = size
            if p > 0:
                carry = stack[0]
                carry_key = key[0]
                for s in range(nseg):
                    h = head[s]
                    if h >= p:
                        break
                    e = min(head[s + 1], p) - 1
                    if key[e] >= carry_key:  # no record in this segment
                        continue
                    r = _first_below(key, h, e - h + 1, carry_key)
                    y = stack[e]
                    y_key = key[e]
                    for j in range(e, r, -1):
                        z = stack[j - 1]
                        stack[j] = z
                        key[j] = key[j - 1]
                        where[z] = j
                    stack[r] = carry
                    key[r] = carry_key
                    where[carry] = r
                    carry = y
                    carry_key = y_key
                where[carry] = p  # p == cap: below the cap
                if p < cap:
                    stack[p] = carry
                    key[p] = carry_key
                    if grow:  # at the bottom: a new segment unless it continues the last one's descent
                        size += 1
                        if nseg == 0 or key[p - 1] < carry_key:
                            head[nseg] = p
                            nseg += 1
                        head[nseg] = size
                    elif p + 1 < size and key[p + 1] > carry_key:  # the descent breaks below p
                        s = 1
                        while head[s] <= p:
                            s += 1
                        if head[s] != p + 1:
                            for j in range(nseg + 1, s, -1):
                                head[j] = head[j - 1]
                            head[s] = p + 1
                            nseg += 1
                # boundaries at or above p + 1 whose keys no longer rise: merge
                w = s = 1
                while s < nseg and head[s] <= p + 1:
                    if key[head[s] - 1] < key[head[s]]:
                        head[w] = head[s]
                        w += 1
                    s += 1
                if w < s:
                    for j in range(s, nseg + 1):
                        head[w + j - s] = head[j]
                    nseg -= s - w
            elif grow:
                size = 1
            stack[0] = x
            key[0] = kx
            where[x] = 0


# Where segment_hist beats priority_hist's scan (benchmarks/bench_locality.py, section 3): more
# than 256 ids, and at least 64 requests per token, i.e. a model-level stack interleaving many
# layers' experts. Per layer (k requests per token) the records of an update lie in about one
# run, which the scan passes faster: measured 2026-12-01 (ns per request, scan / runs / classes,
# synthetic routing with locality) one layer of 512 experts at k = 1, 4, 8: 55 / 89 / 99,
# 51 / 82 / 129, 51 / 81 / 141; model level 4 x 256 at k = 8 (32 requests per token):
# 85 / 102 / 154; 8 x 256 (64): 141 / 143 / 171; 16 x 128 at k = 4 (64): 163 / 146 / 174;
# 12 x 128 (96): 106 / 99 / 170; 16 x 128 (128): 130 / 112 / 174.
LFU_SEGMENTS_MIN_IDS = 256
LFU_SEGMENTS_MIN_REQUESTS_PER_TOKEN = 64
# Where LFU's use-count classes beat moving the records: the records moved grow with the sizes
# computed times the ids per request (ids over a token's requests: E / k at model level), the
# classes' cost barely. Measured 2026-12-01 (stop 30, the classes searched 64 depths per
# compare), ns per request, classes / runs: from 44 544 on the classes in every shape (58 x 256
# keys at k = 8 capped at 1 392 and 1 856: 180 / 228, 207 / 331; 8 x 256 at 1 536, 248 / 353;
# every size of 14 848 keys, 286-394 / 2 122); at 32 768 one or the other (16 x 256 at k = 4
# capped at 512, 155 / 180; 32 x 128 at 2 048, 266 / 328; 58 x 256 at 1 024, 103 / 94); below,
# the runs (24 576: 90 / 78 and 177 / 154; 8 192: 171-201 / 115-119).
LFU_CLASSES_MIN_SIZES_X_IDS_PER_REQUEST = 40_000
BELADY_SEGMENTS_MIN_IDS = 2048
BELADY_SEGMENTS_MIN_CAP = 512
# Chosen by the number of ids, per layer or model level alike (benchmarks/bench_locality.py,
# sections 2b and 3). Up to these, the scan without the record branch: FSF in lanes 1.1-1.4x
# faster than without them at 64 and 128 ids (and that 1.3-1.5x faster than the branch),
# Belady 1.05-1.2x at 64 (slower from 128; in lanes slower than without); LFU, whose records
# are fewer and deeper, and longer stacks keep the branch.
FSF_LANES_MAX_IDS = 128
BELADY_SELECT_MAX_IDS = 64
# Above FSF_LANES_MAX_IDS, FSF leaves its idle entries in place (fsf_hist): 1.2x faster at
# 1 024 ids, 2x at 256 per layer and at 4 096, 5x at 14 848; with every size, with a cap above
# FSF_IDLE_MIN_CAP, or where the cap times the ids per request reaches the second figure. Below,
# a short capped stack scans faster: the scan passes about the cap's entries, the idle kernel
# the pending ones, which are more where a token's requests are more of the ids. Measured
# (2026-12-01, ns per request, scan / idle): 1 024 ids at E / k = 8, cap 256: 83 / 97, cap 512:
# 114 / 107; 4 096 at E / k = 64, cap 64: 38 / 45, cap 128: 63 / 54, cap 512: 167 / 62; 14 848
# at E / k = 32, cap 128: 37 / 45, cap 256: 70 / 70, cap 384: 99 / 91.
FSF_IDLE_MIN_CAP = 512
FSF_IDLE_MIN_SIZES_X_IDS_PER_REQUEST = 8192


@numba.njit(cache=True, inline="always")
def _sizes_x_ids_per_request_reach(bound, cap, n_ids, tokens, requests):
    """Whether the sizes computed (cap) times the ids per request (n_ids x tokens / requests, E / k
    at model level) reach `bound`, in integers."""
    return cap * n_ids * tokens >= bound * requests


@numba.njit(cache=True)
def lfu_takes_segments(n_ids, tokens, requests):
    """Whether LFU moves runs (segment_hist) or classes rather than scanning: more than 256 ids and
    at least 64 requests per token."""
    return n_ids > LFU_SEGMENTS_MIN_IDS and requests >= LFU_SEGMENTS_MIN_REQUESTS_PER_TOKEN * tokens


@numba.njit(cache=True)
def lfu_takes_classes(n_ids, cap, tokens, requests):
    """Whether LFU keeps use-count classes (lfu_class_hist) rather than runs or the scan: where it
    would take the runs, sizes computed x ids per request (n_ids x tokens / requests) reach 40 000."""
    return lfu_takes_segments(n_ids, tokens, requests) and \
        _sizes_x_ids_per_request_reach(LFU_CLASSES_MIN_SIZES_X_IDS_PER_REQUEST, cap, n_ids, tokens, requests)


@numba.njit(cache=True, nogil=True)
def sequence_hist(ids, tok, n_ids, policy, m, hist, cap):
    """Accumulate one sequence's hit histogram (exact up to size cap) with the faster method."""
    tokens, requests = tok.shape[0] - 1, tok[-1] - tok[0]  # ids per request: n_ids * tokens / requests
    if policy == LRU:
        if n_ids > LRU_COUNT_MAX_IDS and n_ids * tokens <= LRU_FRONT_MAX_IDS_PER_REQUEST * requests:
            lru_front_hist(ids, tok, n_ids, hist)
        else:
            lru_hist(ids, tok, n_ids, hist, n_ids <= LRU_COUNT_MAX_IDS)
    elif policy == LFU and lfu_takes_classes(n_ids, cap, tokens, requests):
        lfu_class_hist(ids, tok, n_ids, hist, cap)
    elif (policy == LFU and lfu_takes_segments(n_ids, tokens, requests)) or \
            (policy == BELADY and n_ids > BELADY_SEGMENTS_MIN_IDS and cap > BELADY_SEGMENTS_MIN_CAP):
        segment_hist(ids, tok, n_ids, policy, hist, cap)
    elif policy == FSF and n_ids > FSF_LANES_MAX_IDS and (
            cap == n_ids or cap > FSF_IDLE_MIN_CAP
            or _sizes_x_ids_per_request_reach(FSF_IDLE_MIN_SIZES_X_IDS_PER_REQUEST, cap, n_ids, tokens, requests)):
        fsf_hist(ids, tok, n_ids, m, hist, cap)
    elif policy == FSF and n_ids <= FSF_LANES_MAX_IDS:
        priority_hist(ids, tok, n_ids, policy, m, hist, cap, LANES)
    else:
        select = policy == BELADY and n_ids <= BELADY_SELECT_MAX_IDS
        priority_hist(ids, tok, n_ids, policy, m, hist, cap, SELECT if select else BRANCH)


@numba.njit(cache=True, nogil=True)
def stream_hists(ids, tok, seq_offsets, seq_row, n_ids, policy, m, cap, out):
    """Add the hit histograms of a block's sequences into out [rows, n_ids + 2].

    Sequence j covers tokens seq_offsets[j]:seq_offsets[j + 1] of the token offsets `tok`
    into the requests `ids`, and adds into row seq_row[j]. Releases the GIL: callers run
    independent blocks on threads.
    """
    for j in range(seq_row.shape[0]):
        t0 = seq_offsets[j]
        t1 = seq_offsets[j + 1]
        if t1 > t0:
            sub_tok = tok[t0:t1 + 1] - tok[t0]
            sub_ids = ids[tok[t0]:tok[t1]]
            sequence_hist(sub_ids, sub_tok, n_ids, policy, m, out[seq_row[j]], cap)
