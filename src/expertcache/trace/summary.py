"""A trace at a glance: shape, model, tokens per domain and phase, most used experts."""

from __future__ import annotations

import numpy as np

from ..errors import ExpertcacheError
from .format import DECODE, OPTIONAL_ARRAYS, PREFILL
from .trace import Trace

__all__ = ["expert_counts", "summarize"]


def expert_counts(trace: Trace) -> np.ndarray:
    """[L, E] requests per expert and MoE layer, read one layer at a time."""
    counts = np.zeros((trace.num_moe_layers, trace.num_experts), np.int64)
    for layer in range(trace.num_moe_layers):
        ids = trace.layer_experts(layer).ravel()
        counts[layer] = np.bincount(ids[ids != trace.pad_id], minlength=trace.num_experts)[: trace.num_experts]
    return counts


def summarize(trace: Trace, top: int = 8) -> dict:
    """JSON-able summary; expert frequencies are pooled over MoE layers, layer by layer."""
    if top < 0:
        raise ExpertcacheError(f"the number of top experts to list must be >= 0, got {top}")
    counts = expert_counts(trace)  # [L, E]
    requests = counts.sum()
    order = np.argsort(-counts, axis=None, kind="stable")[:top]
    top_experts = [
        {"layer": int(l), "expert": int(e), "requests": int(counts[l, e]),
         "share_of_layer": float(counts[l, e] / max(counts[l].sum(), 1))}
        for l, e in zip(*np.unravel_index(order, counts.shape))
    ]
    token_domain = trace.token_domain
    return {
        "path": str(trace.path) if trace.path else None,
        "model": trace.model.to_json(),
        "sequences": trace.num_sequences,
        "tokens": trace.num_tokens,
        "moe_layers": trace.num_moe_layers,
        "experts": trace.num_experts,
        "top_k": trace.top_k,
        "requests": int(requests),
        "sequence_length": {"min": int(trace.seq_lengths.min()), "max": int(trace.seq_lengths.max())},
        "tokens_per_domain": {d: int((token_domain == i).sum()) for i, d in enumerate(trace.domains)},
        "tokens_per_phase": {"prefill": int((trace.phase == PREFILL).sum()), "decode": int((trace.phase == DECODE).sum())},
        "optional_arrays": [n for n in OPTIONAL_ARRAYS if trace.shard_arrays(n)[0] is not None],  # no concatenation
        "top_experts": top_experts,
        "capture": trace.capture,
        "corpus": trace.corpus,
    }
