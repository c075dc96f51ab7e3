"""Computing a layer's routed experts from cache slots, bit-identical to the stock model.

The offloaded experts implementation is registered in transformers' experts registry and
computes with the implementation the plain model would use (transformers' default,
`grouped_mm`, or `eager`), on *views* that answer like the experts module except that expert
parameters come from the cache's slot pools:

- grouped_mm: the routed expert ids are renamed to their slot ids and the pools [S + 1, ...]
  stand for the weights. Every (token, expert) row is computed from its group's rows alone and
  rows are summed over k in routing order, so renaming the groups changes nothing. On CUDA the
  stock function runs on a view whose parameters are the pools. On CPU torch's grouped matmul
  visits every group, empty or not (about 1-3 us each), and a pool has many more slots than a
  layer has experts; so `_grouped_forward` takes the stock function's steps itself, with one
  `mm` per non-empty group (what torch's CPU kernel computes for each group: same bits, tested
  against the plain model) and its bookkeeping in numpy, which makes a decode call cheaper
  than the stock one.
- eager: the view's `param[e]` is expert e's slot, so the stock loop visits the same experts in
  the same (ascending id) order with the same weights.
- dense (Llama4, outside the registry): see `DenseCompute`.

A call whose experts do not all fit (strict capacity) is computed chunk by chunk, each chunk
once its experts are resident, then combined in the stock order. Misses computed where the
weights live (--misses-on-cpu) are one more chunk, read from the slow tier's host pools (on the
CPU) instead of the cache's slots:
- grouped_mm: each chunk computes its (token, expert) rows with k = 1 and a float32 input
  (cast back to the weights' dtype inside the kernel, so the same bits); the rows are summed
  over k at the end, exactly as the stock function does. A single token on CPU (a decode call
  split while its misses are read) takes the shorter way of `_token_chunked`.
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


def stock_order(top_k_index: torch.Tensor) -> np.ndarray | None:
    """[T * K] the (token, k) rows in the order the stock function computes them: its own
    `torch.sort` of the routed expert ids. That sort is not stable (with AVX-512 torch sorts with
    x86-simd-sort), and a row's bits can depend on its place in its group's matmul, so the order
    inside a group is the sort's, not a stable one's. None where no expert repeats: every row is
    then a group of its own, and order does not matter."""
    flat = top_k_index.reshape(-1)
    if len(set(flat.tolist())) == len(flat):
        return None
    return torch.sort(flat).indices.cpu().numpy()


@torch.no_grad()  # slots are buffers, and `mm(out=)` refuses autograd
def _grouped_forward(module, pools: dict[str, torch.Tensor], hidden: torch.Tensor, slot_ids: np.ndarray,
                     top_k_weights: torch.Tensor, order: np.ndarray | None) -> torch.Tensor:
    """The stock grouped_mm experts forward on CPU slot pools, bookkeeping in numpy.

    The same steps and ops as transformers' function: rows grouped by expert in the stock order
    (`order`, from `stock_order`; None: each row a group of its own), inputs cast to the
    weights' dtype, one `mm` per group, the module's own gate (or activation), bias, post norm,
    routing weights, rows in routing order summed over k. It skips what only the stock kernel's
    calling convention needs: a histogram of every group, a grouped matmul that visits every
    slot of the pool, and a tensor subclass to intercept it. slot_ids: [T, K], one slot per
    expert of the call, so groups of slots are groups of experts.
    """
    T, K = slot_ids.shape
    x = hidden.to(_dtype(module, pools))
    if order is None:  # every row a group of its own (a decode call, or a chunk of one)
        slots = slot_ids.reshape(-1).tolist()
        rows = x.split(1)
        inputs = [rows[i // K] for i in range(T * K)]
    else:
        by_slot = slot_ids.reshape(-1)[order]
        starts = np.flatnonzero(np.concatenate(([True], by_slot[1:] != by_slot[:-1])))
        slots = by_slot[starts].tolist()
        inputs = x[torch.from_numpy(order // K)].split(np.diff(starts, append=len(by_slot)).tolist())
    row_slots = torch.from_numpy(slot_ids.reshape(-1) if order is None else by_slot) if module.has_bias else None
    proj = _expert_rows(module, pools, inputs, slots, row_slots)
    if order is None:
        return _weighted_sum(proj, top_k_weights.reshape(-1), T, hidden.dtype)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return _weighted_sum(proj, top_k_weights.reshape(-1)[torch.from_numpy(order)], T, hidden.dtype,
                         torch.from_numpy(back))


@torch.no_grad()
def _token_chunked(module, chunks, hidden: torch.Tensor, top_k_index: torch.Tensor,
                   top_k_weights: torch.Tensor) -> torch.Tensor:
    """One token's call on CPU pools, chunk by chunk: each chunk's experts through
    `_expert_rows` (each row a group of its own, as in the whole call), then the routing weights
    and the sum over k once, in routing order: the same ops as `_grouped_forward`."""
    ids = top_k_index.reshape(-1).tolist()  # [K]
    proj = None
    x = None
    for experts, layer_rows, pools in chunks:
        if x is None:
            x = hidden.to(_dtype(module, pools.tensors))
        mine = set(experts)
        cols = [j for j, e in enumerate(ids) if e in mine]
        slots = [int(layer_rows[ids[j]]) for j in cols]
        part = _expert_rows(module, pools.tensors, [x] * len(cols), slots,
                            torch.tensor(slots) if module.has_bias else None)
        if proj is None:
            proj = part.new_empty((len(ids), part.shape[-1]))
        proj[torch.tensor(cols)] = part
    return _weighted_sum(proj, top_k_weights.reshape(-1), 1, hidden.dtype)


def _weighted_sum(proj: torch.Tensor, weights: torch.Tensor, T: int, dtype: torch.dtype,
                  back: torch.Tensor | None = None) -> torch.Tensor:
    """Rows times their routing weights, put back in routing order (`back`, when they were
    sorted), summed over each token's k: the stock function's last steps."""
    weighted = proj * weights.unsqueeze(-1)
    if back is not None:
        weighted = weighted[back]
    return weighted.view(T, -1, weighted.shape[-1]).sum(dim=1).to(dtype)


def _up(module) -> str:
    """The name of the experts' first projection."""
    return "gate_up_proj" if module.has_gate else "up_proj"


def _dtype(module, pools: dict[str, torch.Tensor]) -> torch.dtype:
    return pools[_up(module)].dtype


def _expert_rows(module, pools: dict[str, torch.Tensor], inputs, slots: list[int],
                 row_slots: torch.Tensor | None) -> torch.Tensor:
    """Each group's rows (`inputs`, one tensor per group, sorted as `slots`) through its expert:
    up (and gate) projection, the module's own gate or activation, down projection, post norm."""
    proj = _grouped_linear(inputs, pools, _up(module), slots, module.is_transposed, row_slots)
    proj = (module._apply_gate(proj) if module.has_gate else module.act_fn(proj)).to(_dtype(module, pools))
    proj = _grouped_linear(proj.split([len(rows) for rows in inputs]), pools, "down_proj", slots,
                           module.is_transposed, row_slots)
    if module.has_post_expert_norm:
        proj = module.post_expert_norm(proj)
    return proj


def _grouped_linear(inputs, pools: dict[str, torch.Tensor], name: str, slots: list[int], transposed: bool,
                    row_slots: torch.Tensor | None) -> torch.Tensor:
    """One projection, group by group: `mm` of each group's rows with its slot's weights (what
    torch's CPU grouped matmul computes for each group, same bits), then each row's slot's bias."""
    pool = pools[name]  # [S + 1, out, in], or [S + 1, in, out] when transposed
    out = torch.empty((sum(len(rows) for rows in inputs), pool.shape[-1] if transposed else pool.shape[-2]),
                      dtype=pool.dtype)
    at = 0
    for slot, rows in zip(slots, inputs):
        torch.mm(rows, pool[slot] if transposed else pool[slot].T, out=out[at:at + len(rows)])
        at += len(rows)
    if row_slots is not None:
        out.add_(pools[name + "_bias"][row_slots])
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


def _in_place(slot_ids: np.ndarray) -> np.ndarray | None:
    """The order of rows already in the stock order (k = 1): as they are, or None if no slot repeats."""
    return None if len(np.unique(slot_ids)) == slot_ids.size else np.arange(slot_ids.size)


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

    def _forward(self, module, pools: Pools, hidden, slot_ids: np.ndarray, top_k_weights, order) -> torch.Tensor:
        """The grouped_mm forward with expert ids renamed to rows of `pools` (slot_ids: [T, K]);
        order: the rows' stock order on CPU (see `stock_order`)."""
        if pools.device.type == "cpu":
            return _grouped_forward(module, pools.tensors, hidden, slot_ids, top_k_weights, order)
        from transformers.integrations.moe import grouped_mm_experts_forward

        view = self._views.get((id(module), id(pools)))
        if view is None:
            view = self._views[(id(module), id(pools))] = _View(module, {**pools.tensors, "num_experts": pools.zero + 1})
        return grouped_mm_experts_forward(view, hidden, torch.from_numpy(slot_ids).to(pools.device), top_k_weights)

    def whole(self, module, layer_slots, hidden, top_k_index, top_k_weights):
        return self._forward(module, self.slots, hidden, layer_slots[top_k_index.cpu().numpy()], top_k_weights,
                             stock_order(top_k_index))

    def chunked(self, module, chunks, hidden, top_k_index, top_k_weights):
        T, K = top_k_index.shape
        if T == 1 and hidden.device.type == "cpu":  # every pool a chunk reads is then on the CPU too
            return _token_chunked(module, chunks, hidden, top_k_index, top_k_weights)
        expert_of_row = top_k_index.reshape(-1).cpu().numpy()  # [T * K]
        order = stock_order(top_k_index)
        order = np.arange(T * K) if order is None else order
        row_weights = top_k_weights.reshape(-1, 1)
        rows = torch.empty((T * K, hidden.shape[-1]), dtype=torch.float32, device=hidden.device)
        for experts, layer_rows, pools in chunks:
            mine = order[np.isin(expert_of_row[order], experts)]  # the chunk's rows, in the stock order
            at = pools.device
            here = torch.from_numpy(mine).to(hidden.device)
            slot_ids = layer_rows[expert_of_row[mine]].reshape(-1, 1)
            rows[here] = _to(self._forward(module, pools, _to(hidden[here // K].float(), at), slot_ids,
                                           _to(row_weights[here], at), _in_place(slot_ids)), rows.device)
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
