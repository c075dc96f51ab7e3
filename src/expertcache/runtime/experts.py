"""Computing a layer's routed experts from cache slots, bit-identical to the stock model.

The offloaded experts implementation is registered in transformers' experts registry. It runs
the experts module's own (stock, eager) forward on a *slot view*: an object that answers like
the module, except that its expert parameters index the cache's slot pool through the
expert -> slot map, so `gate_up_proj[e]` is expert e's slot. The stock loop thus computes the
same rows, in the same order, with the same weights, at the same alignment.

A call whose experts do not all fit (strict capacity) is computed expert by expert: each
expert's contribution comes from the stock forward over just its tokens, with every other
expert of those tokens mapped to the all-zero slot (contributing exactly +0), and the
contributions are summed at the end in ascending expert id, the stock order. Slower (about k
times the work of those tokens) but exact, and only prefill calls larger than the cache take it.

Shape key: T tokens of the call, H hidden size, K top-k, E experts of the layer.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SlotView", "stock_forward", "compute_chunked"]


class _ExpertRows:
    """`param[e]` of an experts module, served from the slot pool."""

    __slots__ = ("pool", "slot_of")

    def __init__(self, pool: torch.Tensor, slot_of: np.ndarray):
        self.pool, self.slot_of = pool, slot_of  # [S + 1, ...], [E]

    def __getitem__(self, expert):
        return self.pool[int(self.slot_of[int(expert)])]


class SlotView:
    """Stands in for an experts module inside its own forward: expert parameters come from slots."""

    def __init__(self, module: torch.nn.Module, slots: dict[str, torch.Tensor], slot_of: np.ndarray):
        object.__setattr__(self, "_module", module)
        for name, pool in slots.items():
            object.__setattr__(self, name, _ExpertRows(pool, slot_of))

    def __getattr__(self, name):
        return getattr(self._module, name)


def stock_forward(module: torch.nn.Module):
    """The module's own forward, under the registry's dispatch (its eager implementation)."""
    return type(module).forward.__wrapped__


def compute_chunked(forward, module, slots, layer_slots: np.ndarray, zero_slot: int, chunks, hidden: torch.Tensor,
                    top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """Exact output of a call computed chunk by chunk.

    `chunks` yields, per chunk and once its experts are resident, the experts it computes.
    layer_slots: [E] the cache's expert -> slot map for this layer (read as chunks go).
    """
    ids = top_k_index.reshape(-1, top_k_index.shape[-1])  # [T, K]
    parts = {}
    for experts in chunks:
        for e in experts:
            rows = (ids == e).any(dim=-1).nonzero().squeeze(-1)  # ascending tokens
            only = np.full_like(layer_slots, zero_slot)
            only[e] = layer_slots[e]
            view = SlotView(module, slots, only)
            parts[e] = (rows, forward(view, hidden[rows], top_k_index[rows], top_k_weights[rows]))
    out = torch.zeros_like(hidden)
    for e in sorted(parts):
        rows, part = parts[e]
        out.index_add_(0, rows, part)
    return out
