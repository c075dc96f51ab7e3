"""LFU's Mattson stack kept as use-count classes: no record is moved.

LFU's key is (uses, last use); call an expert's use count its class. Three facts:
1. In Mattson's update an entry never moves below one with a smaller key: a record moves only
   to the next record's depth, and every entry it passes has a larger key. Only the requested
   expert's key changes, and it goes to the top with the newest use. So within a class the
   experts lie in order of last use, newest highest.
2. Along an update's scan the running minimum only falls. While it is in class c, every depth
   passed holds a class >= c (else the minimum would have left c), so the first entry of a
   lower class c' < c is the newest of c' (nothing of c' lies above it) and becomes the
   minimum; the class-c entries passed before it are exactly the records, each older than
   the one above.
3. Each class-c record moves to the next class-c depth and the last one to the first lower
   class's depth: the sequence of class-c experts is unchanged, and only the class's set of
   depths changes, by two bits (it loses the depth where the chain entered c, gains the one
   where it left).
So an update for expert x (class cx, at depth p; p = the bottom if new, the cap if below it):

    x leaves class cx (its depth p and its place)
    c = class at depth 0, d = 0
    repeat: z = first depth in (d, p) of a class below c, or p if none
            class c's depths lose d and gain z (at the cap: c's oldest expert falls below it)
            if z = p: stop; else the class at z becomes c, and continue from z with its old class
    x joins class cx + 1 at depth 0

The chain has 2.6 classes per request on average on the benchmark's routing at 1 024 and at
14 848 keys (where the runs of _stack.segment_hist moved 20 and 650 records), at most the number
of distinct use counts (<= sqrt(2R)).

Kept per sequence: the class at each depth in a flat array (the chain's query: 64 depths per
vector compare, _lanes.below_mask; int16 while no expert reaches 32 767 uses), each class's depths
as a bitset with counts per 512 bits (select the r-th depth), each class's experts as a bitset
over the order in which they joined the class. A member's last use is the request that made it
join, so its rank there is its rank by last use; and an expert joins a class once, so the order
is known before the pass. An expert's depth is the r-th depth of its class, r its rank there.
Cost per request O(p / 64 + chain + I / 512) (the counts per 512 bits are summed one by one).

Used for LFU at model level (at least 64 requests per token) where the sizes computed times the
ids per request reach 40 000 (_stack.lfu_takes_classes: large models; at 14 848 keys, every
size, 286-394 ns per request where moving the records took 2 122 and the min-tree this array
replaced 360-458 in the same runs, stop 30); below, moving the records costs less than these
structures, and per layer the scan.

Shape key: R requests of one sequence, I ids, cap sizes tracked, p the request's depth.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from ._bits import _popcount, _put_bit, _select_in_word
from ._judge import _judge_token, _widest_token
from ._lanes import below_mask

__all__ = ["lfu_class_hist"]

_ONE = np.uint64(1)
_BLOCK_WORDS = 8  # 64-bit words per counted block of a bitset (512 bits)
_INT16_CLASSES = 2**15 - 1  # classes below this are kept in int16 (and this marks "no class")


# A counted bitset: bits[w0 + i // 64] holds bit i, block[b0 + i // 512] counts the set bits of
# its 512; the array arguments are flat, shared by every class (w0, b0: the class's offsets).
@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _flip_bit(bits, block, w0, b0, i, on):
    _put_bit(bits, (w0 << 6) + i, on)
    block[b0 + (i >> 9)] += 1 if on else -1


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _select_bit(bits, block, w0, b0, r):
    """Position of the r-th (from 0) set bit."""
    j = 0
    while block[b0 + j] <= r:
        r -= block[b0 + j]
        j += 1
    w = j * _BLOCK_WORDS
    while True:
        c = np.int64(_popcount(bits[w0 + w]))
        if c > r:
            return (w << 6) + _select_in_word(bits[w0 + w], r)
        r -= c
        w += 1


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _count_above(bits, block, w0, b0, n_blocks, i):
    """Set bits at positions above i."""
    j = i >> 9
    total = 0
    for u in range(j + 1, n_blocks):
        total += block[b0 + u]
    for w in range((i >> 6) + 1, (j + 1) * _BLOCK_WORDS):
        total += np.int64(_popcount(bits[w0 + w]))
    above = ~((np.uint64(2) << np.uint64(i & 63)) - _ONE)  # bits i + 1 .. 63 (none for i = 63): no branch
    return total + np.int64(_popcount(bits[w0 + (i >> 6)] & above))


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _first_lower_class(at, lo, c, hi):
    """First depth j in [lo, hi) whose class at[j] is below c, else hi: 64 depths per compare
    (at holds the whole 64-entry block that contains hi - 1: at most cap + 63 entries)."""
    if lo >= hi:
        return hi
    w = lo >> 6
    below = below_mask(at, w << 6, c) & (~np.uint64(0) << np.uint64(lo & 63))
    while below == 0:
        w += 1
        if w << 6 >= hi:
            return hi
        below = below_mask(at, w << 6, c)
    return min((w << 6) + np.int64(trailing_zeros(below)), hi)


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _depth_in_class(m_bits, m_count, m_word, m_block, d_bits, d_count, d_words, d_blocks, c, s, place):
    """Depth of the member of class c (depths in slot s) that joined it at `place`: the r-th
    depth of the class, r the members that joined after it."""
    r = _count_above(m_bits, m_count, m_word[c], m_block[c], m_block[c + 1] - m_block[c], place)
    return _select_bit(d_bits, d_count, s * d_words, s * d_blocks, r)


@numba.njit(cache=True, nogil=True)
def lfu_class_hist(ids, tok, n_ids, hist, cap):
    """Accumulate one sequence's LFU hit histogram (as _stack.priority_hist, exact for sizes
    1..cap) with the stack kept as use-count classes (module docstring)."""
    uses = np.zeros(n_ids, np.int64)
    top = np.int64(0)  # one integer type, so _class_pass compiles once per class width
    for q in range(ids.shape[0]):
        uses[ids[q]] += 1
        top = max(top, uses[ids[q]])
    # the class at each depth; below the stack the largest value, never a running minimum
    if top < _INT16_CLASSES:
        _class_pass(ids, tok, n_ids, hist, cap, top, np.full(cap + 64, _INT16_CLASSES, np.int16))
    else:
        _class_pass(ids, tok, n_ids, hist, cap, top, np.full(cap + 64, 2**31 - 1, np.int32))


@numba.njit(cache=True, nogil=True)
def _class_pass(ids, tok, n_ids, hist, cap, top, at):
    """lfu_class_hist with the most uses of one expert (top) known and the depths' classes (at)
    allocated: int16 where they fit, which halves the bytes a 64-depth compare loads (two
    vector registers instead of four)."""
    T = tok.shape[0] - 1
    R = ids.shape[0]
    # Offline: the class each request moves its expert into, and its place in that class's order.
    uses = np.zeros(n_ids, np.int64)
    joined = np.zeros(top + 2, np.int64)  # experts that join each class
    place = np.empty(R, np.int32)  # request q's expert is the place[q]-th to join its class
    for q in range(R):
        c = uses[ids[q]] + 1
        uses[ids[q]] = c
        place[q] = joined[c]
        joined[c] += 1
    # Class c's members: bits from word m_word[c], blocks from m_block[c]; expert of each place.
    m_word = np.zeros(top + 2, np.int64)
    m_block = np.zeros(top + 2, np.int64)
    m_first = np.zeros(top + 2, np.int64)
    for c in range(1, top + 1):
        blocks = (joined[c] + 511) >> 9
        m_word[c + 1] = m_word[c] + blocks * _BLOCK_WORDS
        m_block[c + 1] = m_block[c] + blocks
        m_first[c + 1] = m_first[c] + joined[c]
    m_bits = np.zeros(m_word[top + 1] + 1, np.uint64)
    m_count = np.zeros(m_block[top + 1] + 1, np.int32)
    member = np.empty(m_first[top + 1] + 1, np.int32)
    uses[:] = 0
    for q in range(R):
        uses[ids[q]] += 1
        member[m_first[uses[ids[q]]] + place[q]] = ids[q]
    oldest = np.zeros(top + 2, np.int64)  # no member of the class joined before this place
    live = np.zeros(top + 2, np.int64)
    # Depths of each class with members in the stack, in slots: the distinct counts d of tracked
    # experts have d (d + 1) / 2 <= R, and there are at most cap of them (x leaves its class
    # before it joins the next).
    slots = min(top, cap, int(np.sqrt(2.0 * R)) + 1)
    d_blocks = (cap + 511) >> 9  # depths 0..cap - 1
    d_words = d_blocks * _BLOCK_WORDS
    d_bits = np.zeros(slots * d_words, np.uint64)
    d_count = np.zeros(slots * d_blocks + 1, np.int32)
    slot_of = np.full(top + 2, -1, np.int64)
    free = np.arange(slots - 1, -1, -1)
    n_free = slots
    state = np.zeros(n_ids, np.int8)  # 0 never used, 1 in the stack, 2 below the cap
    place_of = np.zeros(n_ids, np.int64)  # an expert's place in its class's order
    uses[:] = 0
    stamp = np.full(n_ids, -1, np.int64)
    depth = np.empty(_widest_token(tok), np.int64)
    size = 0
    for t in range(T):
        a, b = tok[t], tok[t + 1]
        for q in range(a, b):
            x = ids[q]
            d = -1 if state[x] == 0 else cap
            if state[x] == 1:
                d = _depth_in_class(m_bits, m_count, m_word, m_block, d_bits, d_count, d_words, d_blocks, uses[x],
                                    slot_of[uses[x]], place_of[x])
            depth[q - a] = d
        _judge_token(ids, a, b, t, depth, size, stamp, hist, n_ids)
        for q in range(a, b):
            x = ids[q]
            if state[x] == 1:  # leaves its class
                c = uses[x]
                s = slot_of[c]
                p = _depth_in_class(m_bits, m_count, m_word, m_block, d_bits, d_count, d_words, d_blocks, c, s,
                                    place_of[x])
                _flip_bit(m_bits, m_count, m_word[c], m_block[c], place_of[x], False)
                _flip_bit(d_bits, d_count, s * d_words, s * d_blocks, p, False)
                live[c] -= 1
                if live[c] == 0:
                    slot_of[c] = -1
                    free[n_free] = s
                    n_free += 1
            elif size < cap:
                p = size
                size += 1
            else:
                p = cap
            if p > 0:  # the chain of classes from depth 0 down to p
                d = 0
                c = at[0]
                while True:
                    z = _first_lower_class(at, d + 1, c, p)
                    s = slot_of[c]
                    _flip_bit(d_bits, d_count, s * d_words, s * d_blocks, d, False)
                    if z < p:
                        _flip_bit(d_bits, d_count, s * d_words, s * d_blocks, z, True)
                        below = at[z]
                        at[z] = c
                        c, d = below, z
                    elif p < cap:
                        _flip_bit(d_bits, d_count, s * d_words, s * d_blocks, p, True)
                        at[p] = c
                        break
                    else:  # the class's oldest member falls below the cap
                        i = oldest[c]
                        while not (m_bits[m_word[c] + (i >> 6)] >> np.uint64(i & 63)) & _ONE:
                            i += 1
                        oldest[c] = i
                        _flip_bit(m_bits, m_count, m_word[c], m_block[c], i, False)
                        state[member[m_first[c] + i]] = 2
                        live[c] -= 1
                        if live[c] == 0:  # as above; a helper returning n_free measured 3-5 % slower
                            slot_of[c] = -1
                            free[n_free] = s
                            n_free += 1
                        break
            uses[x] += 1  # joins class uses[x] at depth 0
            c = uses[x]
            if live[c] == 0:
                n_free -= 1
                slot_of[c] = free[n_free]
            s = slot_of[c]
            live[c] += 1
            place_of[x] = place[q]
            _flip_bit(m_bits, m_count, m_word[c], m_block[c], place[q], True)
            _flip_bit(d_bits, d_count, s * d_words, s * d_blocks, 0, True)
            at[0] = c
            state[x] = 1
