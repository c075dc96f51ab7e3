"""Random traces of many shapes for the locality tests, and the curves check against the reference."""

from __future__ import annotations

import numpy as np

from expertcache import Trace
from expertcache.locality import curves

from . import reference


def random_trace(rng, *, sequences=(1, 4), tokens=(1, 14), layers=(1, 3), experts=(1, 8), k=None,
                 domains=("a", "b"), pad_share=0.0, skew=True) -> Trace:
    """Random routing with distinct experts per token, optional skew, pads and domains."""
    S = int(rng.integers(*sequences, endpoint=True))
    L = int(rng.integers(*layers, endpoint=True))
    E = int(rng.integers(*experts, endpoint=True))
    K = int(rng.integers(1, E, endpoint=True)) if k is None else min(k, E)
    popularity = rng.dirichlet(np.full(E, 0.3)) if skew else np.full(E, 1.0 / E)
    popularity = 0.9 * popularity + 0.1 / E  # every expert possible, so k distinct always exist
    seqs = []
    for _ in range(S):
        T = int(rng.integers(*tokens, endpoint=True))
        seq = np.array([[rng.choice(E, K, replace=False, p=popularity) for _ in range(L)] for _ in range(T)])
        seq[rng.random((T, L)) < pad_share] = -1  # a layer that routed nothing for a token
        seqs.append(seq.reshape(T, L, K))
    return Trace.from_arrays(seqs, E, domains=[str(rng.choice(domains)) for _ in range(S)])


def assert_curves_match_reference(trace, policy, m=None, domain=None):
    """curves() equals the brute-force reference to 1e-9, per layer and at model level."""
    fast = curves(trace, policy, m, domain)
    per_layer, model = reference.trace_curves(trace, policy, m, domain=domain)
    np.testing.assert_allclose(fast.per_layer, per_layer, atol=1e-9, rtol=0)
    np.testing.assert_allclose(fast.model_level, model, atol=1e-9, rtol=0)
    return fast
