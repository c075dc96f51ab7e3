"""Seeded basic bootstrap over sequences, vectorized through sufficient statistics.

A metric that is a function of sums over sequences is resampled by weighting each sequence's
statistics with how often a resample drew it: one matrix product per breakdown instead of
recomputing from the trace 1000 times.

Shape key: B resamples, S sequences, G groups (layers, domains, ...), V statistic values.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..checks import is_whole
from ..errors import ExpertcacheError

__all__ = ["MAX_RESAMPLES", "RESAMPLES", "basic_interval", "check_resamples", "resample_counts"]

RESAMPLES = 1000
MAX_RESAMPLES = 100_000


def check_resamples(resamples: int) -> int:
    """0..MAX_RESAMPLES: beyond, the draws alone ([B, S] float64) outgrow a machine's memory."""
    if not is_whole(resamples) or not 0 <= resamples <= MAX_RESAMPLES:
        raise ExpertcacheError(f"resamples must be in 0..{MAX_RESAMPLES:,}, got {resamples}")
    return int(resamples)


def resample_counts(num_sequences: int, resamples: int, seed) -> np.ndarray:
    """[B, S] how often each sequence is drawn: row b = bincount of
    `default_rng(seed).integers(0, S, size=(B, S))[b]`."""
    draws = np.random.default_rng(seed).integers(0, num_sequences, size=(resamples, num_sequences))
    counts = np.zeros((resamples, num_sequences), np.float64)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts


def resampled_sums(stats: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B, ...] the sums of per-sequence statistics `stats` [S, ...] in every resample."""
    flat = stats.reshape(len(stats), -1).astype(np.float64)  # [S, V], exact below 2^53
    return (counts @ flat).reshape((len(counts), *stats.shape[1:]))


def basic_interval(estimate: np.ndarray, replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """[..., 2] basic bootstrap interval [2 est - q_hi, 2 est - q_lo] from replicates [B, ...].

    Quantiles are numpy's default (linear interpolation); NaN replicates are ignored.
    """
    alpha = (1.0 - level) / 2.0
    if np.isnan(replicates).any():
        with warnings.catch_warnings():  # a group with no window in any resample: NaN interval
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanquantile(replicates, [alpha, 1.0 - alpha], axis=0)
    else:
        lo, hi = np.quantile(replicates, [alpha, 1.0 - alpha], axis=0)
    return np.stack([2 * estimate - hi, 2 * estimate - lo], axis=-1)
