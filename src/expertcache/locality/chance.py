"""Chance levels: the same metric with token order permuted inside every sequence.

Skewed expert popularity alone produces reuse, and so does an untrained model's
initialisation; shuffling tokens keeps each sequence's expert loads and destroys their order.
Permutation p uses seed (seed, p); the chance level is the mean over `permutations` draws,
and a locality figure is reported as its excess over that level.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ExpertcacheError
from ..trace import Trace
from ..checks import check_seed, is_whole
from .overlap import consecutive_overlap
from .srp import best_f1, window_stats
from .study_cache import HitCurves, check_request, hit_counts, rates

__all__ = ["DEFAULT_PERMUTATIONS", "MAX_PERMUTATIONS", "chance_curves", "chance_overlap", "chance_srp",
           "check_permutations"]

DEFAULT_PERMUTATIONS = 3
MAX_PERMUTATIONS = 1000  # a chance level averaged over more shuffles changes in no printed digit


def check_permutations(permutations: int, least: int = 1) -> int:
    """The number of shuffles a chance level averages, least..MAX_PERMUTATIONS (`analyze` takes 0: none)."""
    if not is_whole(permutations) or not least <= permutations <= MAX_PERMUTATIONS:
        raise ExpertcacheError(f"permutations must be an integer in {least}..{MAX_PERMUTATIONS}, got {permutations!r}")
    return int(permutations)


def _check(permutations: int, seed: int) -> int:
    """Validate the shuffles' settings before any pass; returns the number of permutations."""
    check_seed(seed)
    return check_permutations(permutations)


def chance_curves(trace: Trace, policy: str, m: int | None = None, domain: str | None = None, *,
                  permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, model_level: bool = True) -> HitCurves:
    """Hit-rate curves of the shuffled trace, averaged over permutations."""
    m = check_request(trace, policy, m, domain)
    runs = [rates(trace, hit_counts(trace, policy, m, model_level=model_level, shuffle=(seed, p)), policy, m, domain)
            for p in range(_check(permutations, seed))]
    first = runs[0]
    return HitCurves(policy, first.m, first.num_experts, first.top_k,
                     np.mean([r.per_layer for r in runs], axis=0), np.mean([r.model_level for r in runs], axis=0),
                     first.requests_per_layer, domain)


def chance_srp(trace: Trace, m_values, *, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0) -> dict:
    """{m: (model SRP, per-layer SRP [L])} of the shuffled trace, averaged over permutations."""
    sums = {}
    for p in range(_check(permutations, seed)):
        for m, st in window_stats(trace, m_values, shuffle=(seed, p)).items():
            per_layer = st.per_sequence.sum(axis=0, dtype=np.int64)  # [L, M]
            model = best_f1(per_layer.sum(axis=0), m)[0]
            layers = best_f1(per_layer, m)[0]
            old = sums.get(m, (0.0, 0.0))
            sums[m] = (old[0] + model, old[1] + layers)
    return {m: (float(a / permutations), b / permutations) for m, (a, b) in sums.items()}


def chance_overlap(trace: Trace, *, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0) -> tuple[float, np.ndarray]:
    """Consecutive-token overlap of the shuffled trace, averaged over the permutations where it is
    defined (a shuffle may leave no two routed tokens adjacent in a sparsely routed layer)."""
    runs = [consecutive_overlap(trace, shuffle=(seed, p)) for p in range(_check(permutations, seed))]
    with warnings.catch_warnings():  # NaN where no permutation defines it, without numpy's warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean([r[0] for r in runs])), np.nanmean([r[1] for r in runs], axis=0)
