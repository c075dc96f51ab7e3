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
once its experts are resident, then combined in the stock order. Misses computed where the
weights live (--misses-on-cpu) are one more chunk, read from the slow tier's host pools (on the
CPU) instead of the cache's slots:
- grouped_mm: each chunk computes its (token, expert) rows with k = 1 and a float32 input
  (cast back to the weights' dtype inside the kernel, so the same bits); the rows are summed
  over k at the end, exactly as the stock function does.
- eager: each expert's contribution is the stock forward over its tokens with every other
  expert mapped to the all-zero slot (adding exactly +0); contributions are summed at the end
  in ascending expert id. About k times the work of those tokens, but exact.

Shape key: T tokens of the call, H hidden size, K top-k, E experts of the layer, S slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["IMPLEMENTATIONS", "DENSE", "Pools", "SlotCompute", "slot_compute"]

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


@dataclass(frozen=True, eq=False)
class Pools:
    """Expert weights by row, `tensors[param][row]` ([rows, ...] each); row `zero` is all zeros:
    the cache's slots, or a layer's experts in the slow tier's host memory."""

    tensors: dict[str, torch.Tensor]
    zero: int

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x if x.device == device else x.to(device)


class _View:
    """Stands in for an experts module inside an experts function; `overrides` replace attributes."""

    def __init__(self, module: torch.nn.Module, overrides: dict):
        object.__setattr__(self, "_module", module)
        for name, value in overrides.items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        return getattr(self._module, name)


class SlotCompute:
    """One experts implementation over slot pools: whole calls and chunked ones.

    A chunk is (experts, rows, pools): the layer's experts it computes, expert -> row of `pools`
    ([E]; every expert the call routes has one), and the pools they are read from.
    """

    chunks_cost_nothing = True  # a call computed in chunks costs about what it costs whole

    def __init__(self, slots: Pools):
        self.slots = slots

    def whole(self, module, layer_slots: np.ndarray, hidden, top_k_index, top_k_weights) -> torch.Tensor:
        """The call's output, all its experts resident. layer_slots: [E] expert -> slot."""
        raise NotImplementedError

    def chunked(self, module, chunks, hidden, top_k_index, top_k_weights) -> torch.Tensor:
        """The call's output, computed chunk by chunk as `chunks` yields them (see above)."""
        raise NotImplementedError


class GroupedCompute(SlotCompute):
    def __init__(self, slots: Pools):
        super().__init__(slots)
        self._views: dict[tuple[int, int], _View] = {}  # (id(module), id(pools)) -> view (pools never move)

    def _view(self, module, pools: Pools):
        view = self._views.get((id(module), id(pools)))
        if view is None:
            tensors = {name: pool.as_subclass(_SlotPool) if pool.device.type == "cpu" else pool
                       for name, pool in pools.tensors.items()}
            view = self._views[(id(module), id(pools))] = _View(module, {**tensors, "num_experts": pools.zero + 1})
        return view

    def _slot_ids(self, layer_slots, expert_ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        return _to(torch.from_numpy(layer_slots[expert_ids.cpu().numpy()]), device)

    def whole(self, module, layer_slots, hidden, top_k_index, top_k_weights):
        from transformers.integrations.moe import grouped_mm_experts_forward

        return grouped_mm_experts_forward(self._view(module, self.slots), hidden,
                                          self._slot_ids(layer_slots, top_k_index, hidden.device), top_k_weights)

    def chunked(self, module, chunks, hidden, top_k_index, top_k_weights):
        from transformers.integrations.moe import grouped_mm_experts_forward

        T, K = top_k_index.shape
        expert_of_row = top_k_index.reshape(-1)  # [T * K]
        row_weights = top_k_weights.reshape(-1, 1)
        rows = torch.empty((T * K, hidden.shape[-1]), dtype=torch.float32, device=hidden.device)
        for experts, layer_rows, pools in chunks:
            mine = torch.isin(expert_of_row, torch.tensor(experts, device=expert_of_row.device)).nonzero().squeeze(-1)
            at = pools.device
            slot_ids = self._slot_ids(layer_rows, expert_of_row[mine], at).unsqueeze(-1)  # [P, 1]
            rows[mine] = _to(grouped_mm_experts_forward(self._view(module, pools), _to(hidden[mine // K].float(), at),
                                                        slot_ids, _to(row_weights[mine], at)), rows.device)
        weighted = torch.promote_types(next(iter(self.slots.tensors.values())).dtype, top_k_weights.dtype)
        return rows.to(weighted).view(T, K, -1).sum(dim=1).to(hidden.dtype)


class EagerCompute(SlotCompute):
    chunks_cost_nothing = False  # each chunk runs the stock loop over all k routed experts

    def _view(self, module, pools: Pools, layer_rows):
        return _View(module, {name: _ExpertRows(pool, layer_rows) for name, pool in pools.tensors.items()})

    def whole(self, module, layer_slots, hidden, top_k_index, top_k_weights):
        return _eager(module)(self._view(module, self.slots, layer_slots), hidden, top_k_index, top_k_weights)

    def chunked(self, module, chunks, hidden, top_k_index, top_k_weights):
        forward = _eager(module)
        ids = top_k_index.reshape(-1, top_k_index.shape[-1])  # [T, K]
        parts = {}
        for experts, layer_rows, pools in chunks:
            at = pools.device
            for e in experts:
                rows = (ids == e).any(dim=-1).nonzero().squeeze(-1)  # ascending tokens
                only = np.full_like(layer_rows, pools.zero)
                only[e] = layer_rows[e]
                part = forward(self._view(module, pools, only), _to(hidden[rows], at), _to(top_k_index[rows], at),
                               _to(top_k_weights[rows], at))
                parts[e] = (rows, _to(part, hidden.device))
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
        return self.chunked(module, [(sorted(set(top_k_index.reshape(-1).tolist())), layer_slots, self.slots)],
                            hidden, top_k_index, top_k_weights)

    def chunked(self, module, chunks, hidden, top_k_index, top_k_weights):
        out = None
        for experts, layer_rows, pools in chunks:
            if out is None:
                rows = hidden.view(len(layer_rows), -1, hidden.shape[-1])  # [E, T, H]
                out = torch.zeros_like(rows)
            for e in experts:
                row = int(layer_rows[e])
                view = _View(module, {name: pool[row:row + 1] for name, pool in pools.tensors.items()})
                out[e] = _to(type(module).forward(view, _to(rows[e], pools.device)), out.device)
        return out.view(-1, hidden.shape[-1])


def _eager(module: torch.nn.Module):
    """The module's own forward, under the registry's dispatch (its eager implementation)."""
    return type(module).forward.__wrapped__


def slot_compute(implementation: str, slots: Pools) -> SlotCompute:
    computes = {"grouped_mm": GroupedCompute, "eager": EagerCompute, DENSE: DenseCompute}
    return computes[implementation](slots)
