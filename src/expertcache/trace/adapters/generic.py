"""Fallback for models no family adapter knows (typically `trust_remote_code` models).

It looks for modules holding a list of experts next to a router whose weight is [E, H] with E
the number of experts, and reads the applied routing from the router's output, which must
contain the chosen ids (an integer tensor [..., K]) and their weights (a float tensor of the
same shape). A router that returns only scores leaves the rule unknown: capture says so and
stops rather than guess.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ExpertcacheError
from .base import Adapter

__all__ = ["generic_adapter"]


def generic_adapter(model: nn.Module) -> Adapter:
    """An adapter whose router attribute names are found by shape; raises if there are none."""
    router_attrs: list[str] = []
    for module in model.modules():
        experts = getattr(module, "experts", None)
        if not isinstance(experts, nn.Module):
            continue
        count = getattr(experts, "num_experts", None) or (len(experts) if isinstance(experts, (nn.ModuleList, nn.ModuleDict)) else None)
        for name, child in module.named_children():
            weight = getattr(child, "weight", None)
            if name != "experts" and isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.shape[0] == count:
                if name not in router_attrs:
                    router_attrs.append(name)
    if not router_attrs:
        raise ExpertcacheError(
            f"no MoE layers found in {type(model).__name__}: no module holds `experts` next to a router "
            "whose weight is [experts, hidden]; this architecture needs an adapter"
        )
    return Adapter("generic", (), "unknown (read from the router's output)", source="router",
                   read_router=_read_router_output, router_attrs=tuple(router_attrs))


def _read_router_output(router: nn.Module, output) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer tensor [..., K] of the output is the ids; a float tensor of that shape the weights."""
    parts = output if isinstance(output, (tuple, list)) else (output,)
    tensors = [p for p in parts if isinstance(p, torch.Tensor)]
    ids = next((t for t in tensors if not t.is_floating_point() and t.ndim >= 2), None)
    if ids is None:
        raise ExpertcacheError(
            f"router {type(router).__name__} returns no expert ids (only scores), so the experts it applies "
            "cannot be read without knowing its rule; this architecture needs an adapter"
        )
    weights = next((t for t in tensors if t.is_floating_point() and t.shape == ids.shape), None)
    ids = ids.reshape(-1, ids.shape[-1])
    if weights is None:  # ids without weights: record the routing, weights unknown (zero)
        return ids, torch.zeros(ids.shape, device=ids.device)
    return ids, weights.reshape(-1, ids.shape[-1])
