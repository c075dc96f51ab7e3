"""Routing with known locality: segments of tokens sharing their experts, and the same shuffled."""

import numpy as np

from expertcache import Trace

E, K, L, SEGMENT = 32, 2, 2, 30


def _pairs(rng, n):
    return np.stack([rng.choice(E, K, replace=False) for _ in range(n)])


def local_routing(rng, sequences=4, tokens=240) -> np.ndarray:
    """[S, T, L, K]: every SEGMENT consecutive tokens use one random pair of experts per layer."""
    segments = tokens // SEGMENT
    return np.stack([np.repeat(_pairs(rng, segments * L).reshape(segments, L, K), SEGMENT, axis=0)
                     for _ in range(sequences)])


def local_trace(rng) -> Trace:
    return Trace.from_arrays(local_routing(rng), E)


def shuffled_trace(rng) -> Trace:
    """The local routing with token order shuffled in each sequence: same loads, no locality."""
    return Trace.from_arrays(np.stack([s[rng.permutation(len(s))] for s in local_routing(rng)]), E)


def random_trace(rng, sequences=4, tokens=240) -> Trace:
    return Trace.from_arrays(_pairs(rng, sequences * tokens * L).reshape(sequences, tokens, L, K), E)


def popular_trace(rng, sequences=4, tokens=240) -> Trace:
    """Every token picks 2 of the same 4 experts at random: skewed popularity, no order."""
    picks = np.stack([rng.choice(4, K, replace=False) for _ in range(sequences * tokens * L)])
    return Trace.from_arrays(picks.reshape(sequences, tokens, L, K), E)
