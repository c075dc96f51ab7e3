"""How every stack kernel scores a token: its requests are judged against the stack as it
stood before the token, then applied (study accounting, see _stack)."""

from __future__ import annotations

import numba


@numba.njit(cache=True)
def _widest_token(tok):
    width = 1
    for t in range(tok.shape[0] - 1):
        width = max(width, tok[t + 1] - tok[t])
    return width


@numba.njit(cache=True, inline="always")  # array arguments: a call would cost refcounting
def _judge_token(ids, a, b, t, depth, seen, stamp, hist, n_ids):
    """Record the hit sizes of token t's requests ids[a:b]; depth[x] < 0 means never used."""
    new = 0
    for q in range(a, b):
        x = ids[q]
        d = depth[q - a]
        if d >= 0:
            hist[d + 1] += 1
        elif stamp[x] == t:  # second request of a first use in one token: not cached before it
            hist[n_ids + 1] += 1
        else:
            stamp[x] = t
            hist[seen + new + 1] += 1
            new += 1
