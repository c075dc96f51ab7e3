"""Numba kernel: activation-count histograms of all windows of m tokens (SPEC §3, §6).

SRP only needs, for each group it pools over, how many (window, expert) pairs have each
count c = 0..m. Sliding the window changes at most 2K counts, and a count stays the same
over a run of windows, so each run is added once when it ends: O(K) per window step.

Shape key: n tokens of a block, K top-k, s sequences, E experts of the layer, P window starts.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _close_run(e, w, counts, since, per_seq, j, per_expert, per_position):
    """Add the run of windows since[e] .. w-1 during which expert e kept counts[e]."""
    start = since[e]
    if w > start:
        c = counts[e]
        per_seq[j, c] += w - start
        per_expert[e, c] += w - start
        if per_position.shape[0] > 0:
            per_position[start, c] += 1
            per_position[w, c] -= 1
    since[e] = w


@numba.njit(cache=True, parallel=True)
def window_hists(ids, seq_offsets, n_experts, m, max_windows, n_threads):
    """Count histograms of one layer's windows over the block's sequences.

    ids [n, K] int32 (-1 = not routed). Returns per_seq [s, m + 1] (over experts),
    per_expert [E, m + 1] (over sequences), and, when max_windows > 0, per_position
    [max_windows, m + 1] (over sequences and experts, by window start).
    """
    s = seq_offsets.shape[0] - 1
    K = ids.shape[1]
    per_seq = np.zeros((s, m + 1), np.int64)
    per_expert = np.zeros((n_threads, n_experts, m + 1), np.int64)
    per_position = np.zeros((n_threads, max_windows + 1 if max_windows > 0 else 0, m + 1), np.int64)
    for w_thread in numba.prange(n_threads):
        counts = np.zeros(n_experts, np.int64)
        since = np.zeros(n_experts, np.int64)
        pe = per_expert[w_thread]
        pp = per_position[w_thread]
        for j in range(w_thread, s, n_threads):
            a = seq_offsets[j]
            W = seq_offsets[j + 1] - a - m + 1
            if W <= 0:
                continue
            counts[:] = 0
            since[:] = 0
            for t in range(a, a + m):
                for i in range(K):
                    if ids[t, i] >= 0:
                        counts[ids[t, i]] += 1
            for w in range(1, W):
                for i in range(K):
                    e = ids[a + w - 1, i]
                    if e >= 0:
                        _close_run(e, w, counts, since, per_seq, j, pe, pp)
                        counts[e] -= 1
                for i in range(K):
                    e = ids[a + w + m - 1, i]
                    if e >= 0:
                        _close_run(e, w, counts, since, per_seq, j, pe, pp)
                        counts[e] += 1
            for e in range(n_experts):
                _close_run(e, W, counts, since, per_seq, j, pe, pp)
    positions = np.zeros((max(max_windows, 0), m + 1), np.int64)
    if max_windows > 0:
        running = np.zeros(m + 1, np.int64)
        total = per_position.sum(axis=0)
        for p in range(max_windows):
            running += total[p]
            positions[p] = running
    return per_seq, per_expert.sum(axis=0), positions
