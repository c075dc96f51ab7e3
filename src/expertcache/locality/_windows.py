"""Numba kernel: activation-count histograms of all windows of m tokens.

SRP only needs, for each group it pools over, how many (window, expert) pairs have each
count c = 0..m. Sliding the window changes at most 2K counts, and a count stays the same
over a run of windows, so each run is added once when it ends: O(K) per window step.

Shape key: n tokens of a block, K top-k, s sequences, E experts of the layer, P window starts.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _sequence_windows(ids, a, W, m, counts, since, seq_hist, expert_hist, position_diff):
    """Add the W windows of the sequence starting at token a to the histograms.

    When expert e's count changes at window w (token a+w-1 leaves, a+w+m-1 enters; at w = W
    every run ends), the run of windows since[e] .. w-1 that kept counts[e] is added.
    position_diff gets +1/-1 at run start/end so a cumulative sum over window starts gives the
    per-position histogram (skipped when empty). Written out inline: a helper taking arrays
    costs numba reference counting on every call, 10x this loop.
    """
    K = ids.shape[1]
    E = counts.shape[0]
    positions = position_diff.shape[0] > 0
    counts[:] = 0
    since[:] = 0
    for t in range(a, a + m):
        for i in range(K):
            if ids[t, i] >= 0:
                counts[ids[t, i]] += 1
    for w in range(1, W + 1):
        for side in range(2 if w < W else 1):
            t = a + w - 1 + side * m
            for i in range(K if w < W else E):
                e = ids[t, i] if w < W else i
                if e < 0:
                    continue
                start = since[e]
                if w > start:
                    c = counts[e]
                    seq_hist[c] += w - start
                    expert_hist[e, c] += w - start
                    if positions:
                        position_diff[start, c] += 1
                        position_diff[w, c] -= 1
                since[e] = w
                if w < W:
                    counts[e] += 2 * side - 1


@numba.njit(cache=True, nogil=True)
def window_hists(ids, seq_offsets, n_experts, m, max_windows):
    """Count histograms of one layer's windows over a block's sequences.

    ids [n, K] int32 (-1 = not routed). Returns per_seq [s, m + 1] (over experts),
    per_expert [E, m + 1] (over sequences), and, when max_windows > 0, per_position
    [max_windows, m + 1] (over sequences and experts, by window start). Releases the GIL.
    """
    s = seq_offsets.shape[0] - 1
    per_seq = np.zeros((s, m + 1), np.int64)
    per_expert = np.zeros((n_experts, m + 1), np.int64)
    position_diff = np.zeros((max_windows + 1 if max_windows > 0 else 0, m + 1), np.int64)
    counts = np.zeros(n_experts, np.int64)
    since = np.zeros(n_experts, np.int64)
    for j in range(s):
        a = seq_offsets[j]
        W = seq_offsets[j + 1] - a - m + 1
        if W > 0:
            _sequence_windows(ids, a, W, m, counts, since, per_seq[j], per_expert, position_diff)
    positions = np.zeros((max(max_windows, 0), m + 1), np.int64)
    running = np.zeros(m + 1, np.int64)
    for p in range(max_windows):
        running += position_diff[p]
        positions[p] = running
    return per_seq, per_expert, positions
