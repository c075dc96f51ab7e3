"""Prefetchers: predict, before layer l of token t runs, which experts it needs.

A prefetcher is its own protocol, plugged into the replay loop as an array of predicted keys
per batch: `predict(trace, count, distance) -> [N, L, F]` expert ids (-1 = no prediction),
computed once with what is known `distance` layers ahead. Decode batches only; a prefill pass
has no earlier token to learn from.

Shape key: N tokens, L MoE layers, K top-k, E experts, F predictions per (token, layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numba
import numpy as np

from ..errors import ExpertcacheError
from ..trace.format import DECODE
from .engine import PF_BYTES, PF_ISSUED, PF_USED, PF_WASTED, PF_WASTED_BYTES

__all__ = ["Prefetcher", "PREFETCHERS", "register_prefetcher", "PrefetchConfig", "PrefetchReport",
           "plan_prefetch", "prediction_quality"]


class Prefetcher(Protocol):
    name: ClassVar[str]
    # True only for a bound that reads the batch's own routing (oracle); any other prediction
    # is dropped where it would be issued before the routing it reads is known (plan_prefetch)
    reads_the_future: ClassVar[bool]

    def predict(self, trace, count: int, distance: int) -> np.ndarray: ...  # [N, L, F]


PREFETCHERS: dict[str, type] = {}


def register_prefetcher(cls: type) -> type:
    PREFETCHERS[cls.name] = cls
    return cls


def _routed(trace) -> np.ndarray:
    experts = np.asarray(trace.experts).astype(np.int64)  # [N, L, K]
    experts[experts == trace.pad_id] = -1
    return experts


def _previous_token(experts: np.ndarray, trace) -> np.ndarray:
    """[N, L, K] the previous token's experts in the same sequence (-1 at a sequence start)."""
    prev = np.full_like(experts, -1)
    prev[1:] = experts[:-1]
    prev[np.asarray(trace.seq_offsets[:-1], np.int64)] = -1
    return prev


@register_prefetcher
@dataclass(frozen=True)
class PreviousToken:
    """The experts the previous token used at the same layer (locality of routing)."""

    name: ClassVar[str] = "previous"

    def predict(self, trace, count, distance):
        return _previous_token(_routed(trace), trace)[:, :, :count]


@numba.njit(cache=True)
def _running_top(experts, num_experts, count):  # [N, L, K] -> [N, L, F]
    N, L, K = experts.shape
    counts = np.zeros((L, num_experts), np.int64)
    out = np.full((N, L, count), -1, np.int64)
    for t in range(N):
        for layer in range(L):
            c = counts[layer]
            if c.sum() > 0:
                order = np.argsort(-c, kind="mergesort")  # ties: lower id first
                for j in range(count):
                    if c[order[j]] > 0:
                        out[t, layer, j] = order[j]
        for layer in range(L):
            for j in range(K):
                e = experts[t, layer, j]
                if e >= 0:
                    counts[layer, e] += 1
    return out


@register_prefetcher
@dataclass(frozen=True)
class Frequency:
    """The experts of the layer used most often by all earlier tokens."""

    name: ClassVar[str] = "frequency"

    def predict(self, trace, count, distance):
        return _running_top(_routed(trace), trace.num_experts, count)


@register_prefetcher
@dataclass(frozen=True)
class StaleGate:
    """Layer l's router applied to the hidden state entering layer l-1 (recorded in the trace)."""

    name: ClassVar[str] = "stale-gate"

    def predict(self, trace, count, distance):
        gate = trace.stale_gate
        if gate is None:
            raise ExpertcacheError("this trace has no stale-gate scores (capture them to use the stale-gate prefetcher)")
        if distance != 1:
            raise ExpertcacheError("the stale gate is known one layer ahead only: use distance 1")
        scores = np.array(gate, np.float32)  # [N, L, E]
        scores[:, np.arange(scores.shape[2]) >= np.asarray(trace.model.num_experts)[:, None]] = np.nan  # padding
        N, L, E = scores.shape
        top = np.empty((N * L, min(count, E)), np.int64)
        top_scoring(scores.reshape(N * L, E), top)
        return top.reshape(N, L, -1)


@numba.njit(cache=True)
def top_scoring(scores, out):
    """Per row of scores [R, E], its F = out.shape[1] highest-scoring columns into out [R, F], best
    first, ties to the lower id; non-finite scores are never chosen, and places left once the
    finite ones are used up hold -1 (no prediction). A stable descending sort of the finite
    scores cut to F, in O(E * F) per row without sorting."""
    R, E = scores.shape
    F = out.shape[1]
    if F == 0:  # nothing to choose (and no last place to compare with)
        return
    for r in range(R):
        n = 0
        for e in range(E):
            s = scores[r, e]
            if not np.isfinite(s):
                continue
            if n == F and not s > scores[r, out[r, F - 1]]:
                continue
            i = min(n, F - 1)  # insertion point: after every kept score >= s (ties keep the lower id first)
            while i > 0 and scores[r, out[r, i - 1]] < s:
                out[r, i] = out[r, i - 1]
                i -= 1
            out[r, i] = e
            n = min(n + 1, F)
        for j in range(n, F):
            out[r, j] = -1


@register_prefetcher
@dataclass(frozen=True)
class Oracle:
    """The experts the batch will use: the bound on any prefetcher."""

    name: ClassVar[str] = "oracle"
    reads_the_future: ClassVar[bool] = True

    def predict(self, trace, count, distance):
        return _routed(trace)[:, :, :count]


@register_prefetcher
@dataclass(frozen=True)
class Learned:
    """Transition counts learned on the first `train_fraction` of the tokens, scored as
    P(e | previous token's experts at l) + P(e | this token's experts at l-1, when distance is 1).
    Predicts only for the remaining tokens (held out)."""

    name: ClassVar[str] = "learned"
    train_fraction: float = 0.5

    def predict(self, trace, count, distance):
        if not 0 < self.train_fraction < 1:
            raise ExpertcacheError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        experts = _routed(trace)
        N, L, _ = experts.shape
        split = int(N * self.train_fraction)
        prev = _previous_token(experts, trace)
        below = np.full_like(experts, -1)
        below[:, 1:] = experts[:, :-1]  # the same token's experts one layer down
        E = trace.num_experts
        sources = [prev] + ([below] if distance == 1 else [])
        tables = [_transition_counts(src[:split], experts[:split], E) for src in sources]  # [L, E, E] each
        scores = np.zeros((N - split, L, E))
        for src, table in zip(sources, tables):
            probs = (table + 1e-3) / (table.sum(axis=2, keepdims=True) + 1e-3 * E)
            s = src[split:]  # [M, L, K]
            rows = probs[np.arange(L)[None, :, None], np.maximum(s, 0)]  # [M, L, K, E]
            scores += (rows * (s >= 0)[..., None]).sum(axis=2)
        out = np.full((N, L, count), -1, np.int64)
        out[split:] = np.argsort(-scores, axis=2, kind="stable")[:, :, :count]
        return out


def _transition_counts(source: np.ndarray, target: np.ndarray, num_experts: int) -> np.ndarray:
    """[L, E, E] how often expert j follows expert i (source row, target column) per layer."""
    L = source.shape[1]
    table = np.zeros((L, num_experts + 1, num_experts + 1))
    s = np.where(source < 0, num_experts, source)[:, :, :, None]  # [M, L, K, 1]
    t = np.where(target < 0, num_experts, target)[:, :, None, :]  # [M, L, 1, K]
    layer = np.broadcast_to(np.arange(L)[None, :, None, None], np.broadcast_shapes(s.shape, t.shape))
    np.add.at(table, (layer.ravel(), np.broadcast_to(s, layer.shape).ravel(), np.broadcast_to(t, layer.shape).ravel()), 1)
    return table[:, :num_experts, :num_experts]


@dataclass(frozen=True)
class PrefetchConfig:
    """Which prefetcher, how many experts per (token, layer), how many layers ahead, and how
    many slots are reserved for prefetched experts (0: they go into the main cache)."""

    prefetcher: Prefetcher
    count: int | None = None  # None = top-k of the trace
    distance: int = 1
    reserve: int = 0

    @classmethod
    def of(cls, spec) -> "PrefetchConfig":
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            name = spec.strip().lower()
            if name not in PREFETCHERS:
                raise ExpertcacheError(f"unknown prefetcher {spec!r}; choose from {', '.join(sorted(PREFETCHERS))}")
            return cls(PREFETCHERS[name]())
        return cls(spec)


def plan_prefetch(trace, stream, config: PrefetchConfig) -> np.ndarray:
    """[B, F] keys to prefetch for each batch (-1 none): decode batches only."""
    count = trace.top_k if config.count is None else int(config.count)
    if count < 1 or config.distance < 1 or config.reserve < 0:
        raise ExpertcacheError("prefetch count and distance must be >= 1, reserved slots >= 0")
    count = min(count, trace.num_experts)
    L = trace.num_moe_layers
    future = getattr(config.prefetcher, "reads_the_future", False)
    if config.distance > L and not future:
        raise ExpertcacheError(f"prefetch distance {config.distance} is more than the trace's {L} MoE layers: "
                               f"{config.prefetcher.name} would predict from the routing of tokens not computed yet "
                               f"when its loads are issued; use a distance of at most {L}")
    pred = _checked_predictions(config.prefetcher.predict(trace, count, config.distance), trace, config)  # [N, L, F]
    rows = pred[stream.batch_token, stream.batch_layer]  # [B, F]
    keys = np.where(rows >= 0, stream.key_offset[stream.batch_layer][:, None] + rows, -1)
    keys[stream.batch_phase != DECODE] = -1
    if not future:  # issued after batch b - distance: before the layer's previous batch, its routing is unknown
        keys[np.arange(len(keys)) - config.distance < _previous_at_layer(stream)] = -1
    return keys


def _checked_predictions(pred, trace, config) -> np.ndarray:
    """A prefetcher's [N, L, F] expert ids as int64, each -1 or an expert of its layer: an id
    beyond the layer would name another layer's expert, or a key past the cache's arrays."""
    pred = np.asarray(pred)
    name = getattr(config.prefetcher, "name", type(config.prefetcher).__name__)
    if pred.ndim != 3 or pred.shape[:2] != (trace.num_tokens, trace.num_moe_layers) or pred.dtype.kind not in "iu":
        raise ExpertcacheError(f"prefetcher {name} must predict integer expert ids [tokens, MoE layers, count] = "
                               f"[{trace.num_tokens}, {trace.num_moe_layers}, F], got {pred.dtype} {pred.shape}")
    limits = np.asarray(trace.model.num_experts)[None, :, None]
    if pred.size and ((pred < -1) | (pred >= limits)).any():
        raise ExpertcacheError(f"prefetcher {name} predicted an expert id outside -1..E-1 of its MoE layer")
    return pred.astype(np.int64, copy=False)


def _previous_at_layer(stream) -> np.ndarray:
    """[B] index of the previous batch of the same MoE layer (-1 for a layer's first)."""
    return _previous_same(stream.batch_layer, len(stream.key_offset) - 1)


@numba.njit(cache=True)
def _previous_same(values, n_values):
    """[B] for each position, the last earlier one holding the same value (-1 if none): one pass."""
    last = np.full(n_values, -1, np.int64)
    prev = np.empty(len(values), np.int64)
    for b in range(len(values)):
        prev[b] = last[values[b]]
        last[values[b]] = b
    return prev


def prediction_quality(stream, pf_keys: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of the predictions against the keys each decode batch used; NaN
    where undefined (nothing predicted, or nothing needed where a prediction was made)."""
    B = stream.num_batches
    req_batch = stream.request_batch
    needed = np.unique(req_batch * stream.num_keys + stream.keys)
    has_pred = (pf_keys >= 0).any(axis=1)
    flat = (np.arange(B)[:, None] * stream.num_keys + pf_keys)[pf_keys >= 0]
    flat = np.unique(flat)
    correct = np.isin(flat, needed).sum()
    needed_in_scope = has_pred[needed // stream.num_keys].sum()
    return (correct / len(flat) if len(flat) else math.nan, correct / needed_in_scope if needed_in_scope else math.nan)


@dataclass(frozen=True)
class PrefetchReport:
    name: str
    count: int
    distance: int
    reserve_slots: int
    issued: int
    used: int
    wasted: int
    bytes: int | None
    bytes_wasted: int | None
    precision: float  # used / issued (the cache's view); NaN when nothing was issued
    prediction_precision: float  # predicted and needed / predicted; NaN when nothing was predicted
    recall: float  # predicted and needed / needed (batches with a prediction); NaN when none

    @classmethod
    def from_counts(cls, config, pf, pf_keys, stream, has_sizes: bool) -> "PrefetchReport":
        p, r = prediction_quality(stream, pf_keys)
        issued = int(pf[PF_ISSUED])
        return cls(config.prefetcher.name, pf_keys.shape[1], config.distance, config.reserve, issued,
                   int(pf[PF_USED]), int(pf[PF_WASTED]), int(pf[PF_BYTES]) if has_sizes else None,
                   int(pf[PF_WASTED_BYTES]) if has_sizes else None, int(pf[PF_USED]) / issued if issued else math.nan, p, r)

    def to_json(self) -> dict:
        """Undefined ratios (NaN) become null: JSON has no NaN."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in self.__dict__.items()}
