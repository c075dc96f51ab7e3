"""Consecutive-token overlap: the share of a token's experts that the previous token also used.

overlap(l) = sum over consecutive pairs (t, t+1) of one sequence, both routed in layer l, of
|E_t ∩ E_{t+1}|, divided by the sum of |E_{t+1}|. The model value pools every layer.

Shape key: n tokens of a block, L MoE layers, K top-k.
"""

from __future__ import annotations

import numpy as np

from ..trace import Trace
from ._streams import blocks

__all__ = ["consecutive_overlap"]


def consecutive_overlap(trace: Trace, *, shuffle=None) -> tuple[float, np.ndarray]:
    """(model overlap, per-layer overlap [L]); NaN where no consecutive routed pair exists."""
    L = trace.num_moe_layers
    shared = np.zeros(L, np.int64)
    total = np.zeros(L, np.int64)
    pad = trace.pad_id
    for block in blocks(trace, shuffle=shuffle):
        ex = block.experts  # [n, L, K]
        same_seq = np.ones(len(ex) - 1, bool) if len(ex) > 1 else np.zeros(0, bool)
        same_seq[block.seq_offsets[1:-1] - 1] = False  # pairs across a sequence boundary
        prev, cur = ex[:-1][same_seq], ex[1:][same_seq]  # [p, L, K]
        prev_routed, cur_routed = prev != pad, cur != pad
        both = prev_routed.any(axis=2) & cur_routed.any(axis=2)  # [p, L]
        match = ((cur[:, :, :, None] == prev[:, :, None, :]) & prev_routed[:, :, None, :]).any(axis=3) & cur_routed
        shared += (match.sum(axis=2) * both).sum(axis=0)
        total += (cur_routed.sum(axis=2) * both).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(shared.sum() / total.sum()) if total.sum() else float("nan"), shared / total
