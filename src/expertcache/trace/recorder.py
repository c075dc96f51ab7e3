"""Record the routing a transformers MoE model applies, during its ordinary forward passes.

Shape key: T tokens of one forward (batch and sequence flattened, row-major), L MoE layers of
one stack, K top-k, E experts, H hidden size.

Two taps, neither touching modeling code:
- families that compute experts through transformers' experts registry get our registered
  implementation, which notes `top_k_index` / `top_k_weights` (exactly what is applied) and
  calls the implementation the model was using, so outputs are unchanged;
- families that bypass the registry get a forward hook on the router that reads its output.
Router inputs (for full logits and "stale gate" scores) come from forward pre-hooks.
Everything stays on the device until `take()`, which copies one forward's routing at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import ExpertcacheError
from .adapters import Adapter, MoEBlock

__all__ = ["REGISTRY_NAME", "RoutingRecorder"]

REGISTRY_NAME = "expertcache_capture"

# id(experts module) -> its tap, for the registered implementation to find
_TAPS: dict[int, "_Tap"] = {}


def _registered_experts_forward(module, hidden_states, top_k_index, top_k_weights, *args, **kwargs):
    """The experts implementation we register: note the routing, then compute as before."""
    tap = _TAPS.get(id(module))
    if tap is None:  # a model left switched to us after its recorder closed: compute eagerly
        return type(module).forward.__wrapped__(module, hidden_states, top_k_index, top_k_weights, *args, **kwargs)
    tap.note(top_k_index, top_k_weights)
    return tap.inner(module, hidden_states, top_k_index, top_k_weights, *args, **kwargs)


def _ensure_registered() -> None:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if REGISTRY_NAME not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(REGISTRY_NAME, _registered_experts_forward)


@dataclass
class _Tap:
    """One MoE layer's recording buffers for the current forward passes."""

    block: MoEBlock
    slot: int  # position among its stack's MoE layers
    sort_by_weight: bool
    inner: object = None  # the experts implementation the model used before capture
    ids: list = field(default_factory=list)  # [T, K] per call
    weights: list = field(default_factory=list)  # [T, K] per call
    logits: list = field(default_factory=list)  # [T, E] per call
    stale: list = field(default_factory=list)  # [T, E] per call

    def note(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        ids, weights = ids.reshape(-1, ids.shape[-1]), weights.reshape(-1, weights.shape[-1])  # [T, K]
        if self.sort_by_weight:  # routers that pick with an unsorted top-k: descending weight
            weights, order = torch.sort(weights.float(), dim=-1, descending=True, stable=True)
            ids = ids.gather(-1, order)
        self.ids.append(ids.detach())
        self.weights.append(weights.detach().float())


class RoutingRecorder:
    """Context manager that records every MoE layer's routing while the model runs.

    `take(stack)` returns what the forward passes since the last `take` routed, in token
    order: experts [T, L, K] int64 (-1 where a layer did not route a token), weights [T, L, K]
    float32, and, when asked for, logits / stale_gate [T, L, E] float32 (NaN padding).
    """

    def __init__(self, model: nn.Module, adapter: Adapter, blocks: list[MoEBlock], *,
                 logits: bool = False, stale_gate: bool = False):
        self.model, self.adapter = model, adapter
        self.want_logits, self.want_stale = logits, stale_gate
        self.stacks: dict[str, list[_Tap]] = {}
        for block in sorted(blocks, key=lambda b: (b.stack, b.layer)):
            taps = self.stacks.setdefault(block.stack, [])
            taps.append(_Tap(block, len(taps), adapter.score_order == "weights"))
        self._handles: list = []
        self._saved_impl = None
        self._last_input: dict[str, torch.Tensor | None] = {}

    # ------------------------------------------------------------------ install / remove
    def __enter__(self) -> "RoutingRecorder":
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _install(self) -> None:
        taps = [tap for taps in self.stacks.values() for tap in taps]
        if self.adapter.source == "experts":
            self._switch_registry(taps)
        else:
            for tap in taps:
                self._handles.append(tap.block.router.register_forward_hook(self._router_hook(tap)))
        if self.want_logits or self.want_stale:
            for tap in taps:
                self._handles.append(tap.block.router.register_forward_pre_hook(self._router_input_hook(tap), with_kwargs=True))

    def _switch_registry(self, taps: list[_Tap]) -> None:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        _ensure_registered()
        for tap in taps:
            experts = tap.block.experts
            original = getattr(getattr(experts, "config", None), "_experts_implementation", None)
            wrapped = getattr(type(experts).forward, "__wrapped__", None)
            if original is None or wrapped is None:
                raise ExpertcacheError(
                    f"{type(experts).__name__} does not dispatch through transformers' experts registry; "
                    f"the {self.adapter.name} adapter needs source='router'"
                )
            if original == REGISTRY_NAME:
                raise ExpertcacheError("another RoutingRecorder is already recording this model")
            tap.inner = ALL_EXPERTS_FUNCTIONS.get_interface(original, wrapped)
            _TAPS[id(experts)] = tap
        self._saved_impl = self.model.get_experts_implementation()
        self.model.set_experts_implementation(REGISTRY_NAME)
        stuck = [t.block.path for t in taps if t.block.experts.config._experts_implementation != REGISTRY_NAME]
        if stuck:
            raise ExpertcacheError(f"could not route the experts of {stuck[0]} through the capture implementation")

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for taps in self.stacks.values():
            for tap in taps:
                if _TAPS.get(id(tap.block.experts)) is tap:
                    del _TAPS[id(tap.block.experts)]
        if self._saved_impl is not None:
            self.model.set_experts_implementation(self._saved_impl)
            self._saved_impl = None

    # ------------------------------------------------------------------ hooks
    def _router_hook(self, tap: _Tap):
        read = self.adapter.read_router

        def hook(router, inputs, output):
            tap.note(*read(router, output))

        return hook

    def _router_input_hook(self, tap: _Tap):
        logits_fn = self.adapter.router_logits
        stack = tap.block.stack

        def hook(router, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            x = x.reshape(-1, x.shape[-1]).detach()  # [T, H]
            with torch.no_grad():
                if self.want_logits:
                    tap.logits.append(logits_fn(router, x).float())  # [T, E]
                if self.want_stale:
                    prev = self._last_input.get(stack) if tap.slot > 0 else None
                    if prev is None or prev.shape[0] != x.shape[0]:
                        tap.stale.append(torch.full((x.shape[0], tap.block.num_experts), float("nan"), device=x.device))
                    else:
                        tap.stale.append(self.adapter.stale_gate(router, prev).float())  # [T, E]
                    self._last_input[stack] = x

        return hook

    # ------------------------------------------------------------------ results
    def clear(self, stack: str | None = None) -> None:
        """Forget what was recorded (for one stack, or all)."""
        for name, taps in self.stacks.items():
            if stack in (None, name):
                for tap in taps:
                    tap.ids.clear(), tap.weights.clear(), tap.logits.clear(), tap.stale.clear()
                self._last_input.pop(name, None)

    def take(self, stack: str = "decoder") -> dict[str, np.ndarray]:
        """One stack's routing since the last take, as numpy arrays (see the class docstring)."""
        taps = self.stacks[stack]
        counts = {sum(len(x) for x in tap.ids) for tap in taps}
        if len(counts) != 1:
            missing = [t.block.path for t in taps if not t.ids]
            raise ExpertcacheError(
                f"MoE layers saw different numbers of tokens ({sorted(counts)}); "
                + (f"{missing[0]} recorded nothing (its experts bypass the registry, e.g. hub kernels)" if missing else "")
            )
        num_tokens = counts.pop()
        k = max(t.ids[0].shape[-1] for t in taps) if num_tokens else 0
        out = {
            "experts": _stack([_cat(t.ids, num_tokens, k, -1) for t in taps]).long(),
            "weights": _stack([_cat(t.weights, num_tokens, k, 0.0) for t in taps]).float(),
        }
        width = max(t.block.num_experts for t in taps)
        if self.want_logits:
            out["logits"] = _stack([_cat(t.logits, num_tokens, width, float("nan")) for t in taps])
        if self.want_stale:
            out["stale_gate"] = _stack([_cat(t.stale, num_tokens, width, float("nan")) for t in taps])
        self.clear(stack)
        return {name: value.cpu().numpy() for name, value in out.items()}


def _cat(parts: list[torch.Tensor], num_tokens: int, width: int, fill) -> torch.Tensor:
    """Concatenate one layer's per-call pieces over tokens, padding columns up to `width`."""
    if not parts:
        return torch.full((num_tokens, width), fill)
    x = torch.cat(parts) if len(parts) > 1 else parts[0]
    if x.shape[-1] < width:
        x = torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=fill)
    return x


def _stack(layers: list[torch.Tensor]) -> torch.Tensor:
    device = layers[0].device
    return torch.stack([x.to(device) for x in layers], dim=1)  # [T, L, ...]
