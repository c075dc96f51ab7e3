"""Checks of arguments that several rooms take alike: one rule, one message each."""

from __future__ import annotations

import math
import numbers

from .errors import ExpertcacheError

__all__ = ["MAX_SEED", "check_sampling", "check_seed", "is_whole"]

MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy's SeedSequence both take it; 2^64 overflowed torch's


def is_whole(value) -> bool:
    """An integer (Python's or numpy's), not a bool: what counts, indexes and seeds must be."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_seed(seed, option: str = "seed") -> int:
    """An integer seed in 0..MAX_SEED (numpy's SeedSequence refuses negatives; torch overflows past it)."""
    if not is_whole(seed) or not 0 <= seed <= MAX_SEED:
        raise ExpertcacheError(f"{option} must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return int(seed)


def check_sampling(sample: bool, temperature: float, seed) -> None:
    """Generation settings: a seed in range, and when sampling a finite temperature > 0 (inf
    divided every logit into a NaN probability: a traceback in the sampler)."""
    check_seed(seed, "--seed")
    if sample and not 0 < temperature < math.inf:
        raise ExpertcacheError(f"--temperature must be a finite number > 0 when sampling, got {temperature}")
