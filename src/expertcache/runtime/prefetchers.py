"""Prefetchers in online form: observe each layer call's routing, predict a later one.

Each predicts exactly what its offline form (cache/prefetch.py) predicts from the finished
trace, so the runtime's prefetch counters replay exactly in `simulate`:
- previous:   the previous token's experts at the same layer (none at a sequence start);
- frequency:  the layer's most used experts over all earlier tokens (ties: lower id);
- stale-gate: the next layer's router on this layer's input, rounded as the trace stores it.

Shape key: L MoE layers, K top-k, E experts, F predictions.
"""

from __future__ import annotations

import math

import numpy as np

from ..cache.prefetch import top_scoring
from ..errors import ExpertcacheError

__all__ = ["ONLINE_PREFETCHERS", "OnlinePrefetcher", "online_prefetcher", "PredictionTally"]


class OnlinePrefetcher:
    """Routing history of the run; `predict(layer)` is for the current token at `layer`."""

    needs_stale_gate = False

    def __init__(self, num_layers: int, num_experts: int, count: int):
        self.L, self.E, self.count = num_layers, num_experts, count
        self.previous: np.ndarray | None = None  # [L, K] the previous token's experts
        self.counts = np.zeros((num_layers, num_experts), np.int64)

    def start_sequence(self) -> None:
        self.previous = None

    def end_token(self, experts: np.ndarray) -> None:
        """experts: [L, K] of the token just finished (-1 = not routed)."""
        self.previous = experts
        for layer in range(self.L):
            routed = experts[layer][experts[layer] >= 0]
            self.counts[layer, routed] += 1

    def predict(self, layer: int, stale_scores: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


class _Previous(OnlinePrefetcher):
    def predict(self, layer, stale_scores):
        if self.previous is None:
            return np.full(0, -1, np.int64)
        return self.previous[layer, :self.count].astype(np.int64)


class _Frequency(OnlinePrefetcher):
    def predict(self, layer, stale_scores):
        c = self.counts[layer]
        order = np.argsort(-c, kind="mergesort")[:self.count]
        return np.where(c[order] > 0, order, -1)


class _StaleGate(OnlinePrefetcher):
    needs_stale_gate = True

    def predict(self, layer, stale_scores):
        top = np.empty((1, self.count), np.int64)
        top_scoring(stale_scores.astype(np.float16).astype(np.float32)[None], top)  # rounded as the trace stores them
        return top[0]


ONLINE_PREFETCHERS = {"previous": _Previous, "frequency": _Frequency, "stale-gate": _StaleGate}


def online_prefetcher(name: str, num_layers: int, num_experts: int, count: int) -> OnlinePrefetcher:
    if name not in ONLINE_PREFETCHERS:
        raise ExpertcacheError(f"the runtime prefetches with {', '.join(ONLINE_PREFETCHERS)}; got {name!r}")
    return ONLINE_PREFETCHERS[name](num_layers, num_experts, min(count, num_experts))


class PredictionTally:
    """Precision and recall of the predictions against the experts each decode layer call then
    used, counted as `prediction_quality` counts them over a trace (distinct keys; recall over
    the calls that had a prediction). Python sets: a decode call has a handful of keys."""

    def __init__(self):
        self.predicted = self.correct = self.needed = 0
        self._open: dict[int, set] = {}  # layer -> keys predicted for its next call

    def predict(self, layer: int, keys: list[int]) -> None:
        if keys:
            self._open[layer] = set(keys)

    def called(self, layer: int, keys: list[int]) -> None:
        """The decode call of `layer` looked up `keys`: settle its prediction, if it had one."""
        predicted = self._open.pop(layer, None)
        if predicted is not None:
            needed = set(keys)
            self.predicted += len(predicted)
            self.correct += len(predicted & needed)
            self.needed += len(needed)

    def precision_recall(self) -> tuple[float, float]:
        """NaN where undefined, as over a trace."""
        return (self.correct / self.predicted if self.predicted else math.nan,
                self.correct / self.needed if self.needed else math.nan)
