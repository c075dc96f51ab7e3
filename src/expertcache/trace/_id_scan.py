"""The compiled pass over expert ids behind `validate.check_expert_ids`.

Kept apart so that importing the trace package does not import numba: only code that checks
ids (writing or first reading a shard) pays for it.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def scan_ids(ids, limits, pad):
    """(token, layer, problem, id, routed) for ids [N, L, K] against limits [L]: the first id
    that is out of range (problem 1) or repeats an id of its (token, layer) list (problem 2),
    or problem 0; `routed` counts the non-pad ids read so far.

    A stamp per expert (the last row that routed it) finds repeats in one read of each id,
    where comparing every pair of a row costs k/2 times as much.
    """
    N, L, K = ids.shape
    width = 1
    for l in range(L):
        width = max(width, limits[l])
    stamp = np.full(width, -1, np.int64)
    routed = 0
    for t in range(N):
        for l in range(L):
            row = t * L + l
            limit = limits[l]
            for j in range(K):
                v = np.int64(ids[t, l, j])
                if v == pad:
                    continue
                if v < 0 or v >= limit:
                    return t, l, 1, v, routed
                if stamp[v] == row:
                    return t, l, 2, v, routed
                stamp[v] = row
                routed += 1
    return -1, -1, 0, 0, routed
