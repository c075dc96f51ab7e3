"""What the gating network does besides locality: how it splits a token's routing weight over
its k experts, how unevenly it uses the experts (rarely used ones are pruning candidates), and
which experts it picks together.

Memory stays within one layer's arrays: co_firing reads one MoE layer and counts its pairs a
chunk of tokens at a time, weight_by_rank reads a chunk of tokens of every layer.
Shape key: N tokens, L MoE layers, K top-k, E experts.
"""

from __future__ import annotations

import numpy as np

from ..checks import is_whole
from ..errors import ExpertcacheError
from ..trace import Trace

__all__ = ["RARE", "co_firing", "rarely_used", "top_share", "weight_by_rank"]

RARE = 0.1  # rarely used: fewer requests than this fraction of an even share of the layer's requests
CHUNK_TOKENS = 1 << 14  # tokens read at once (routing weights of 48 layers x k = 8: 24 MiB as float32)


def weight_by_rank(trace: Trace, chunk: int = CHUNK_TOKENS) -> np.ndarray | None:
    """[L, K] mean share of a token's routing weight held by its r-th heaviest expert, over
    tokens routed to k experts with a positive weight sum; None when no weights were recorded.
    Reads `chunk` tokens of every layer at a time (contiguous on disk, unlike one layer)."""
    _check_chunk(chunk)
    L, K = trace.num_moe_layers, trace.top_k
    sums, counts = np.zeros((L, K)), np.zeros(L)
    for weights, experts in zip(trace.shard_arrays("weights"), trace.shard_arrays("experts")):
        for start in range(0, len(weights), chunk):
            w = np.asarray(weights[start:start + chunk], np.float32)  # [n, L, K]
            total = w.sum(axis=2)
            usable = (np.asarray(experts[start:start + chunk]) != trace.pad_id).all(axis=2) & (total > 0)  # [n, L]
            share = np.sort(w, axis=2)[..., ::-1] / np.where(usable, total, 1)[..., None]
            sums += (share * usable[..., None]).sum(axis=0)
            counts += usable.sum(axis=0)
    if not counts.any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]


def rarely_used(counts: np.ndarray, num_experts) -> np.ndarray:
    """[L, E] True for experts of a layer with fewer requests than RARE x an even share
    (`counts` [L, E] requests, `num_experts` [L] experts of each layer; padding columns False)."""
    counts, sizes = _checked_counts(counts, num_experts)
    exists = np.arange(counts.shape[1])[None, :] < sizes[:, None]
    even = counts.sum(axis=1, keepdims=True) / sizes[:, None]
    return exists & (counts < RARE * even)


def top_share(counts: np.ndarray, num_experts, fraction: float = 0.1) -> np.ndarray:
    """[L] share of each layer's requests taken by its most used `fraction` of experts (at least one)."""
    counts, sizes = _checked_counts(counts, num_experts)
    if not 0 < fraction <= 1:  # NaN too
        raise ExpertcacheError(f"fraction must be in (0, 1], got {fraction}")
    out = np.empty(len(counts))
    for layer, (row, size) in enumerate(zip(counts, sizes)):
        top = np.sort(row[:size])[::-1][:max(1, int(round(fraction * size)))]
        out[layer] = top.sum() / max(row.sum(), 1)
    return out


def co_firing(trace: Trace, layer: int, chunk: int = CHUNK_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """([E, E] tokens routed to both experts, [E, E] lift) in one MoE layer. Lift = P(both) /
    (P(i) P(j)) over routed tokens: 1 = picked together as often as independent choices would
    be, above 1 = together more often; NaN on the diagonal and for unused experts. Pairs are
    counted `chunk` tokens at a time (a token has k (k - 1) / 2 of them)."""
    _check_chunk(chunk)
    if not is_whole(layer) or not 0 <= layer < trace.num_moe_layers:
        raise ExpertcacheError(f"layer must be an MoE layer index in 0..{trace.num_moe_layers - 1}, got {layer!r}")
    E = trace.model.num_experts[layer]
    layer_ids = trace.layer_experts(layer)  # [N, K]
    i, j = np.triu_indices(layer_ids.shape[1], 1)
    pairs, uses, tokens = np.zeros(E * E, np.int64), np.zeros(E, np.int64), 0
    for start in range(0, len(layer_ids), chunk):
        ids = layer_ids[start:start + chunk].astype(np.int64)
        routed = ids != trace.pad_id
        tokens += int(routed.any(axis=1).sum())
        both = routed[:, i] & routed[:, j]
        a, b = ids[:, i][both], ids[:, j][both]
        pairs += np.bincount(np.minimum(a, b) * E + np.maximum(a, b), minlength=E * E)
        uses += np.bincount(ids[routed], minlength=E)[:E]
    pairs = pairs.reshape(E, E)
    pairs = pairs + pairs.T
    p = uses / max(tokens, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        lift = (pairs / max(tokens, 1)) / np.outer(p, p)
    lift[np.outer(p, p) == 0] = np.nan
    np.fill_diagonal(lift, np.nan)
    return pairs, lift


def _check_chunk(chunk) -> None:
    if not is_whole(chunk) or chunk < 1:
        raise ExpertcacheError(f"chunk must be a whole number of tokens >= 1, got {chunk!r}")


def _checked_counts(counts, num_experts) -> tuple[np.ndarray, np.ndarray]:
    """counts [L, E] requests (>= 0) and num_experts [L] whole numbers in 1..E."""
    counts, sizes = np.asarray(counts), np.asarray(num_experts)
    if counts.ndim != 2 or counts.dtype.kind not in "iuf" or (counts.size and not (counts >= 0).all()):
        raise ExpertcacheError(f"counts must be [MoE layers, experts] of requests >= 0, got {counts.dtype} {counts.shape}")
    if sizes.shape != (len(counts),) or sizes.dtype.kind not in "iu" or not ((sizes >= 1) & (sizes <= counts.shape[1])).all():
        raise ExpertcacheError(f"num_experts must give each of the {len(counts)} layers a whole number of experts in "
                               f"1..{counts.shape[1]}, got {num_experts!r}")
    return counts, sizes
