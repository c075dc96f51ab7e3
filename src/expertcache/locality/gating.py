"""What the gating network does besides locality: how it splits a token's routing weight over
its k experts, how unevenly it uses the experts (rarely used ones are pruning candidates), and
which experts it picks together.

Each function reads one MoE layer at a time, so memory stays within one layer's arrays.
Shape key: N tokens, L MoE layers, K top-k, E experts.
"""

from __future__ import annotations

import numpy as np

from ..trace import Trace

__all__ = ["RARE", "co_firing", "rarely_used", "top_share", "weight_by_rank"]

RARE = 0.1  # rarely used: fewer requests than this fraction of an even share of the layer's requests


def _layer_weights(trace: Trace, layer: int) -> np.ndarray:
    """[N, K] routing weights of one MoE layer, read without the other layers."""
    return np.concatenate([np.asarray(w[:, layer, :], np.float32) for w in trace.shard_arrays("weights")])


def weight_by_rank(trace: Trace) -> np.ndarray | None:
    """[L, K] mean share of a token's routing weight held by its r-th heaviest expert, over
    tokens routed to k experts with a positive weight sum; None when no weights were recorded."""
    out = np.full((trace.num_moe_layers, trace.top_k), np.nan)
    for layer in range(trace.num_moe_layers):
        weights = _layer_weights(trace, layer)
        total = weights.sum(axis=1)
        usable = (trace.layer_experts(layer) != trace.pad_id).all(axis=1) & (total > 0)
        if usable.any():
            share = np.sort(weights[usable], axis=1)[:, ::-1] / total[usable, None]
            out[layer] = share.mean(axis=0)
    return None if np.isnan(out).all() else out


def rarely_used(counts: np.ndarray, num_experts) -> np.ndarray:
    """[L, E] True for experts of a layer with fewer requests than RARE x an even share
    (`counts` [L, E] requests, `num_experts` [L] experts of each layer; padding columns False)."""
    sizes = np.asarray(num_experts)
    exists = np.arange(counts.shape[1])[None, :] < sizes[:, None]
    even = counts.sum(axis=1, keepdims=True) / sizes[:, None]
    return exists & (counts < RARE * even)


def top_share(counts: np.ndarray, num_experts, fraction: float = 0.1) -> np.ndarray:
    """[L] share of each layer's requests taken by its most used `fraction` of experts (at least one)."""
    out = np.empty(len(counts))
    for layer, (row, size) in enumerate(zip(counts, num_experts)):
        top = np.sort(row[:size])[::-1][:max(1, int(round(fraction * size)))]
        out[layer] = top.sum() / max(row.sum(), 1)
    return out


def co_firing(trace: Trace, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """([E, E] tokens routed to both experts, [E, E] lift) in one MoE layer. Lift = P(both) /
    (P(i) P(j)) over routed tokens: 1 = picked together as often as independent choices would
    be, above 1 = together more often; NaN on the diagonal and for unused experts."""
    E = trace.model.num_experts[layer]
    ids = trace.layer_experts(layer).astype(np.int64)
    ids = ids[(ids != trace.pad_id).any(axis=1)]
    routed = ids != trace.pad_id
    i, j = np.triu_indices(ids.shape[1], 1)
    both = routed[:, i] & routed[:, j]
    a, b = ids[:, i][both], ids[:, j][both]
    pairs = np.bincount(np.minimum(a, b) * E + np.maximum(a, b), minlength=E * E).reshape(E, E)
    pairs = pairs + pairs.T
    n = max(len(ids), 1)
    p = np.bincount(ids[routed], minlength=E)[:E] / n
    with np.errstate(invalid="ignore", divide="ignore"):
        lift = (pairs / n) / np.outer(p, p)
    lift[np.outer(p, p) == 0] = np.nan
    np.fill_diagonal(lift, np.nan)
    return pairs, lift
