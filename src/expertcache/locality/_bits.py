"""Word-level bit operations the stack kernels share (bitsets of depths, of class members)."""

from __future__ import annotations

import numba
import numpy as np
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, word):
    """One hardware population count (numba has no popcount of its own)."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return word(word), codegen


def _byte_select_table() -> np.ndarray:
    """[256 * 8] position of the n-th set bit of each byte value."""
    table = np.zeros(256 * 8, np.uint8)
    for value in range(256):
        n = 0
        for bit in range(8):
            if value >> bit & 1:
                table[value * 8 + n] = bit
                n += 1
    return table


_BYTE_SELECT = _byte_select_table()


@numba.njit(cache=True, inline="always")
def _select_in_word(word, n):
    """Position of the n-th (from 0) set bit of a uint64 word that has more than n: a byte at a
    time by population count, then a table."""
    b = 0
    while True:
        c = np.int64(_popcount(word & np.uint64(0xFF)))
        if c > n:
            return b + np.int64(_BYTE_SELECT[np.int64(word & np.uint64(0xFF)) * 8 + n])
        n -= c
        word >>= np.uint64(8)
        b += 8


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _put_bit(bits, i, on):
    """Set or clear bit i of a bitset held in uint64 words."""
    mask = np.uint64(1) << np.uint64(i & 63)
    bits[i >> 6] = bits[i >> 6] | mask if on else bits[i >> 6] & ~mask
