"""Computing a layer's routed experts from cache slots, bit-identical to the stock model.

The offloaded experts implementation is registered in transformers' experts registry and
computes with the implementation the plain model would use (transformers' default,
`grouped_mm`, or `eager`), on *views* that answer like the experts module except that expert
parameters come from the cache's slot pools:

- grouped_mm: the view's parameters are the whole pools [S + 1, ...] and the routed expert ids
  are replaced by their slot ids. Every (token, expert) row is computed from its group's rows
  alone and rows are summed over k in routing order, so renaming the groups changes nothing.
  On CPU, torch's grouped matmul visits every group, empty or not (about 1-3 us each), and a
  pool has many more slots than a layer has experts; so CPU pools are handed over as
  `_SlotPool` tensors whose grouped matmul runs one `mm` per non-empty group, which is what
  torch's CPU kernel computes for each group (same bits, tested against the plain model).
- eager: the view's `param[e]` is expert e's slot, so the stock loop visits the same experts in
  the same (ascending id) order with the same weights.
- dense (Llama4, outside the registry): see `DenseCompute`.

A call whose experts do not all fit (strict capacity) is computed chunk by chunk, each chunk
once its experts are resident, then combined in the stock order:
- grouped_mm: each chunk computes its (token, expert) rows with k = 1 and a float32 input
  (cast back to the weights' dtype inside the kernel, so the same bits); the rows are summed
  over k at the end, exactly as the stock function does.
- eager: each expert's contribution is the stock forward over its tokens with every other
  expert mapped to the all-zero slot (adding exactly +0); contributions are summed at the end
  in ascending expert id. About k times the work of those tokens, but exact.

Shape key: T tokens of the call, H hidden size, K top-k, E experts of the layer, S slots.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["IMPLEMENTATIONS", "DENSE", "SlotCompute", "slot_compute"]

IMPLEMENTATIONS = ("grouped_mm", "eager")  # registry implementations the runtime reproduces
DENSE = "dense bmm (the family's own)"  # experts computed outside the registry, on router-scaled inputs


class _ExpertRows:
    """`param[e]` of an experts module, served from the slot pool."""

    __slots__ = ("pool", "slot_of")

    def __init__(self, pool: torch.Tensor, slot_of: np.ndarray):
        self.pool, self.slot_of = pool, slot_of  # [S + 1, ...], [E]

    def __getitem__(self, expert):
        return self.pool[int(self.slot_of[int(expert)])]


class _SlotPool(torch.Tensor):
    """A CPU slot pool whose grouped matmuls skip empty groups; every other op sees a plain tensor."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._grouped_mm:
            return _grouped_mm_nonempty(*args, **kwargs)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if func is torch.Tensor.transpose:  # the weights' transposed view goes on to the grouped matmul
            return out.as_subclass(cls)
        return out


def _grouped_mm_nonempty(mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor, bias=None, out_dtype=None):
    """torch._grouped_mm for a 2-D input and 3-D weights, one mm per group that has rows."""
    if bias is not None or (out_dtype is not None and out_dtype != mat_a.dtype):
        raise NotImplementedError("expertcache: grouped matmul with bias or another output dtype")
    weights = mat_b.as_subclass(torch.Tensor)  # [G, in, out]
    out = torch.empty((mat_a.shape[0], weights.shape[-1]), dtype=mat_a.dtype)
    ends = offs.numpy()
    rows = ends.copy()
    rows[1:] -= ends[:-1]
    groups = np.flatnonzero(rows)
    sizes = rows[groups].tolist()  # the non-empty groups' rows lie one after another
    used = int(ends[-1]) if len(ends) else 0  # rows past the last group (none here) stay unwritten, as in torch
    for group, a, o in zip(groups.tolist(), mat_a[:used].split(sizes), out[:used].split(sizes)):
        torch.mm(a, weights[group], out=o)
    return out


class _View:
    """Stands in for an experts module inside an experts function; `overrides` replace attributes."""

    def __init__(self, module: torch.nn.Module, overrides: dict):
        object.__setattr__(self, "_module", module)
        for name, value in overrides.items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        return getattr(self._module, name)


class SlotCompute:
    """One experts implementation over the cache's slot pools: whole calls and chunked ones."""

    def __init__(self, slots: dict[str, torch.Tensor], zero_slot: int):
        self.slots, self.zero_slot = slots, zero_slot

    def whole(self, module, layer_slots: np.ndarray, hidden, top_k_index, top_k_weights) -> torch.Tensor:
        """The call's output, all its experts resident. layer_slots: [E] expert -> slot."""
        raise NotImplementedError

    def chunked(self, module, layer_slots: np.ndarray, chunks, hidden, top_k_index, top_k_weights) -> torch.Tensor:
        """The call's output, computed as `chunks` yields the experts made resident for each chunk."""
        raise NotImplementedError


class GroupedCompute(SlotCompute):
    def __init__(self, slots, zero_slot):
        super().__init__({name: pool.as_subclass(_SlotPool) if pool.device.type == "cpu" else pool
                          for name, pool in slots.items()}, zero_slot)
        self._views: dict[int, _View] = {}  # id(experts module) -> its view (the pools never move)

    def _view(self, module):
        view = self._views.get(id(module))
        if view is None:
            view = self._views[id(module)] = _View(module, {**self.slots, "num_experts": self.zero_slot + 1})
        return view

    def _slot_ids(self, layer_slots, expert_ids: torch.Tensor) -> torch.Tensor:
        ids = torch.from_numpy(layer_slots[expert_ids.cpu().numpy()])
        return ids.to(expert_ids.device)

    def whole(self, module, layer_slots, hidden, top_k_index, top_k_weights):
        from transformers.integrations.moe import grouped_mm_experts_forward

        return grouped_mm_experts_forward(self._view(module), hidden, self._slot_ids(layer_slots, top_k_index),
                                          top_k_weights)

    def chunked(self, module, layer_slots, chunks, hidden, top_k_index, top_k_weights):
        from transformers.integrations.moe import grouped_mm_experts_forward

        T, K = top_k_index.shape
        expert_of_row = top_k_index.reshape(-1)  # [T * K]
        row_weights = top_k_weights.reshape(-1, 1)
        rows = torch.empty((T * K, hidden.shape[-1]), dtype=torch.float32, device=hidden.device)
        view = self._view(module)
        for experts in chunks:
            mine = torch.isin(expert_of_row, torch.tensor(experts, device=expert_of_row.device)).nonzero().squeeze(-1)
            slot_ids = self._slot_ids(layer_slots, expert_of_row[mine]).unsqueeze(-1)  # [P, 1]
            rows[mine] = grouped_mm_experts_forward(view, hidden[mine // K].float(), slot_ids, row_weights[mine])
        weighted = torch.promote_types(next(iter(self.slots.values())).dtype, top_k_weights.dtype)
        return rows.to(weighted).view(T, K, -1).sum(dim=1).to(hidden.dtype)


class EagerCompute(SlotCompute):
    def _view(self, module, layer_slots):
        return _View(module, {name: _ExpertRows(pool, layer_slots) for name, pool in self.slots.items()})

    def whole(self, module, layer_slots, hidden, top_k_index, top_k_weights):
        return _eager(module)(self._view(module, layer_slots), hidden, top_k_index, top_k_weights)

    def chunked(self, module, layer_slots, chunks, hidden, top_k_index, top_k_weights):
        forward = _eager(module)
        ids = top_k_index.reshape(-1, top_k_index.shape[-1])  # [T, K]
        parts = {}
        for experts in chunks:
            for e in experts:
                rows = (ids == e).any(dim=-1).nonzero().squeeze(-1)  # ascending tokens
                only = np.full_like(layer_slots, self.zero_slot)
                only[e] = layer_slots[e]
                parts[e] = (rows, forward(self._view(module, only), hidden[rows], top_k_index[rows],
                                          top_k_weights[rows]))
        out = torch.zeros_like(hidden)
        for e in sorted(parts):
            rows, part = parts[e]
            out.index_add_(0, rows, part)
        return out


class DenseCompute(SlotCompute):
    """Families whose experts module computes every expert on router-scaled inputs (Llama4).

    The module gets [E * T, H] (token rows times each expert's score, zero where not routed)
    and the block sums its [E, T, H] output over experts. Each routed expert is computed by the
    module's own forward on its [T, H] block with its slot as a one-expert weight ([1, ...]),
    the same batched matmul per expert that the stock call does; experts no token chose give
    zeros, as the stock one's zero rows do.
    """

    def whole(self, module, layer_slots, hidden, top_k_index, top_k_weights):
        return self.chunked(module, layer_slots, [sorted(set(top_k_index.reshape(-1).tolist()))], hidden,
                            top_k_index, top_k_weights)

    def chunked(self, module, layer_slots, chunks, hidden, top_k_index, top_k_weights):
        rows = hidden.view(len(layer_slots), -1, hidden.shape[-1])  # [E, T, H]
        out = torch.zeros_like(rows)
        for experts in chunks:
            for e in experts:
                slot = int(layer_slots[e])
                view = _View(module, {name: pool[slot:slot + 1] for name, pool in self.slots.items()})
                out[e] = type(module).forward(view, rows[e])
        return out.view(-1, hidden.shape[-1])


def _eager(module: torch.nn.Module):
    """The module's own forward, under the registry's dispatch (its eager implementation)."""
    return type(module).forward.__wrapped__


def slot_compute(implementation: str, slots: dict[str, torch.Tensor], zero_slot: int) -> SlotCompute:
    computes = {"grouped_mm": GroupedCompute, "eager": EagerCompute, DENSE: DenseCompute}
    return computes[implementation](slots, zero_slot)
