"""Computing a layer's routed experts from cache slots, bit-identical to the stock model.

The offloaded experts implementation is registered in transformers' experts registry and
computes with the implementation the plain model would use (transformers' default,
`grouped_mm`, or `eager`), on *views* that answer like the experts module except that expert
parameters come from the cache's slot pools:

- grouped_mm: each expert's group of (token, k) rows is computed with its slot's weights. On
  CUDA the stock function runs on a view whose parameters are the pools, slot ids standing
  for expert ids. On CPU torch's grouped matmul visits every group, empty or not (about 1-3 us
  each), and a pool has many more slots than a layer has experts; so `_grouped_on_cpu` takes
  the stock function's steps itself, on tensors laid out as the stock's, with one `mm` per
  non-empty group (what torch's CPU kernel computes for each group: same bits, tested against
  the plain model), which makes a decode call cheaper than the stock one.
- eager: the view's `param[e]` is expert e's slot, so the stock loop visits the same experts in
  the same (ascending id) order with the same weights.
- dense (Llama4, outside the registry): see `DenseCompute`.

A call whose experts do not all fit (strict capacity) is computed chunk by chunk, each chunk
once its experts are resident, then combined in the stock order. Misses computed where the
weights live (--misses-on-cpu) are one more chunk, read from the slow tier's host pools (on the
CPU) instead of the cache's slots:
- grouped_mm on CPU: each chunk computes its experts' groups into the call's whole [T * K, ...]
  tensors, and the gate runs on the whole tensor, so every element lies where the stock's does;
  the rows are summed over k once all chunks are in. On a GPU each chunk computes its rows as
  k = 1 calls with a float32 input (cast back to the weights' dtype inside the kernel), summed
  over k at the end.
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


@torch.no_grad()  # slots are buffers, and `mm(out=)` refuses autograd
def _grouped_on_cpu(module, chunks, hidden: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """The stock grouped_mm experts forward on CPU pools, chunk by chunk. A chunk is (experts,
    expert -> pool row, pools); experts None (a whole call in one chunk) is every expert of the call.

    The stock function's steps on tensors laid out as its own, because a row's last bits can
    depend on where it lies: the (token, k) rows in the order of the stock's `torch.sort` of the
    expert ids (not stable with AVX-512, where torch sorts with x86-simd-sort, so not a stable
    sort's order), one `mm` per expert group on the group's rows (what torch's CPU grouped matmul
    computes for each group), bias, and the module's gate (or activation) over the whole
    [T * K, ...] tensor after each chunk (a vectorized loop computes an element of its tail
    otherwise than one of its body), then post norm, routing weights, and the sum over k in
    routing order once every chunk is in. It skips what only the stock kernel's calling
    convention needs: a histogram of every group, a grouped matmul that visits every slot of the
    pool (1-3 us each), and a tensor subclass to intercept it.
    """
    T, K = top_k_index.shape
    ids = top_k_index.reshape(-1)
    order = torch.sort(ids).indices
    o = order.numpy()  # bookkeeping in numpy: a decode call's few rows cost less there than as tensors
    by_expert = ids.numpy()[o]
    starts = np.flatnonzero(np.concatenate(([True], by_expert[1:] != by_expert[:-1])))
    ends = np.append(starts[1:], len(by_expert))
    group_expert = by_expert[starts]
    sizes = (ends - starts).tolist()
    x = up = down = None
    for experts, rows_of, pools in chunks:
        if x is None:
            x = hidden[order // K].to(_dtype(module, pools.tensors))
            up = _rows_for(pools.tensors, _up(module), module.is_transposed, len(o))
            down = _rows_for(pools.tensors, "down_proj", module.is_transposed, len(o))
            x_parts, up_parts, down_parts = x.split(sizes), up.split(sizes), down.split(sizes)
        mine = range(len(starts)) if experts is None else np.flatnonzero(np.isin(group_expert, experts)).tolist()
        groups = [(g, int(rows_of[group_expert[g]])) for g in mine]
        _project(x_parts, pools.tensors, _up(module), groups, module.is_transposed, up_parts)
        act = (module._apply_gate(up) if module.has_gate else module.act_fn(up)).to(x.dtype)
        _project(act.split(sizes), pools.tensors, "down_proj", groups, module.is_transposed, down_parts)
    if module.has_post_expert_norm:
        down = module.post_expert_norm(down)
    weighted = down * top_k_weights.reshape(-1)[order].unsqueeze(-1)
    back = np.empty_like(o)
    back[o] = np.arange(len(o))
    return weighted[torch.from_numpy(back)].view(T, K, -1).sum(dim=1).to(hidden.dtype)


def _rows_for(pools: dict[str, torch.Tensor], name: str, transposed: bool, rows: int) -> torch.Tensor:
    """[rows, out features] zeros for one projection's output."""
    pool = pools[name]
    return torch.zeros((rows, pool.shape[-1] if transposed else pool.shape[-2]), dtype=pool.dtype)


def _project(inputs, pools: dict[str, torch.Tensor], name: str, groups, transposed: bool, outputs) -> None:
    """One projection of the (group, pool row) groups: `mm` of each group's rows (`inputs[group]`)
    with its pool row's weights into `outputs[group]`, then its bias."""
    pool, bias = pools[name], pools.get(name + "_bias")
    for g, row in groups:
        torch.mm(inputs[g], pool[row] if transposed else pool[row].T, out=outputs[g])
        if bias is not None:
            outputs[g].add_(bias[row])


def _up(module) -> str:
    """The name of the experts' first projection."""
    return "gate_up_proj" if module.has_gate else "up_proj"


def _dtype(module, pools: dict[str, torch.Tensor]) -> torch.dtype:
    return pools[_up(module)].dtype


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

    def _on_device(self, module, pools: Pools, hidden, rows: torch.Tensor, top_k_weights) -> torch.Tensor:
        """transformers' own function on a view whose parameters are the (GPU) pools: `rows`
        ([T, K], pool rows) stand for the expert ids."""
        from transformers.integrations.moe import grouped_mm_experts_forward

        view = self._views.get((id(module), id(pools)))
        if view is None:
            view = self._views[(id(module), id(pools))] = _View(module, {**pools.tensors, "num_experts": pools.zero + 1})
        return grouped_mm_experts_forward(view, hidden, rows, top_k_weights)

    def whole(self, module, layer_slots, hidden, top_k_index, top_k_weights):
        if hidden.device.type == "cpu":
            return _grouped_on_cpu(module, [(None, layer_slots, self.slots)], hidden, top_k_index, top_k_weights)
        rows = torch.from_numpy(layer_slots[top_k_index.cpu().numpy()]).to(hidden.device)
        return self._on_device(module, self.slots, hidden, rows, top_k_weights)

    def chunked(self, module, chunks, hidden, top_k_index, top_k_weights):
        if hidden.device.type == "cpu":
            return _grouped_on_cpu(module, chunks, hidden, top_k_index, top_k_weights)
        # on a GPU: each chunk's (token, expert) rows as k = 1 calls with a float32 input (cast
        # back to the weights' dtype inside), summed over k at the end as the stock function does
        T, K = top_k_index.shape
        expert_of_row = top_k_index.reshape(-1).cpu().numpy()  # [T * K]
        row_weights = top_k_weights.reshape(-1, 1)
        rows = torch.empty((T * K, hidden.shape[-1]), dtype=torch.float32, device=hidden.device)
        for experts, layer_rows, pools in chunks:
            mine = np.flatnonzero(np.isin(expert_of_row, experts))
            here = torch.from_numpy(mine).to(hidden.device)
            at = pools.device
            x, w = _to(hidden[here // K].float(), at), _to(row_weights[here], at)
            if at.type == "cpu":  # misses computed where they live
                part = _grouped_on_cpu(module, [(experts, layer_rows, pools)], x,
                                       torch.from_numpy(expert_of_row[mine]).reshape(-1, 1), w)
            else:
                part = self._on_device(module, pools, x, torch.from_numpy(layer_rows[expert_of_row[mine]]).reshape(-1, 1).to(at), w)
            rows[here] = _to(part, rows.device)
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
