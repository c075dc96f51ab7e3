"""What capture needs to know about one model family, and how MoE layers are found in a model.

Shape key: T tokens (batch and sequence flattened), H hidden size, E experts, K top-k.

An MoE *block* is the module that owns a router and the routed experts (``mlp``,
``feed_forward``, ``block_sparse_moe``, a Switch ``mlp`` ...). Its layer index and stack come
from its module path (``model.layers.3.mlp`` -> decoder layer 3; ``encoder.block.1.layer.1.mlp``
-> encoder layer 1). Layers whose block has no routed experts are dense and are not MoE layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import nn

from ...errors import ExpertcacheError

__all__ = ["Adapter", "MoEBlock", "find_blocks", "linear_router_logits", "biased_sigmoid_choice"]

# (router module, router output) -> (ids [T, K] int, weights [T, K] float); ids < 0 = not routed
RouterReader = Callable[[nn.Module, object], tuple[torch.Tensor, torch.Tensor]]
# (router module, router input [T, H]) -> router logits [T, E], computed as the router does
LogitsFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
# (router module, its logits [T, E]) -> the scores it ranks experts by, where those are not the logits
ChoiceFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

_LAYER_PATH = re.compile(r"^(?P<stack>(?:.*\.)?(?:layers|block|blocks|h))\.(?P<index>\d+)\.")


def linear_router_logits(router: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of a router that is (or holds) one linear map: ``x @ weight.T (+ bias)``."""
    linear = getattr(router, "classifier", router)  # Switch keeps its linear as `classifier`
    weight = linear.weight
    return nn.functional.linear(x.to(weight.dtype), weight, getattr(linear, "bias", None))


def float32_router_logits(router: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DeepSeek / GLM routers compute their logits in float32 whatever the model dtype."""
    return nn.functional.linear(x.float(), router.weight.float())


def biased_sigmoid_choice(router: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3 / GLM4-MoE pick experts (and their groups) by sigmoid(logit) + a per-expert
    load-balancing bias, which can reorder them against the logits."""
    return logits.sigmoid() + router.e_score_correction_bias


@dataclass(frozen=True)
class Adapter:
    """How to read the routing of one family without touching its modeling code.

    `source` says where the applied routing is read:
    - "experts": the experts module goes through transformers' experts-implementation registry,
      which hands it `top_k_index` / `top_k_weights` exactly as applied;
    - "router": the family bypasses the registry, so a forward hook on the router reads its
      output with `read_router`.
    `score_order` says how the K ids are put in descending score order: "weights" sorts by the
    applied routing weight (routers that pick with an unsorted top-k), "router" keeps the order
    the router produced (PhiMoE's sparsemixer picks its experts one after the other).
    """

    name: str
    model_types: tuple[str, ...]
    routing: str  # the rule, in words (stored in the trace's model description)
    source: Literal["experts", "router"] = "experts"
    read_router: RouterReader | None = None
    router_logits: LogitsFn = linear_router_logits
    choice_scores: ChoiceFn | None = None
    score_order: Literal["weights", "router"] = "weights"
    router_attrs: tuple[str, ...] = ("gate", "router")
    shared_attrs: tuple[str, ...] = ("shared_expert", "shared_experts")
    notes: dict = field(default_factory=dict)

    def stale_gate(self, router: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A router on an earlier layer's input [T, H], scored as it ranks experts [T, E]: its
        logits, or the biased score it picks by (choice_scores)."""
        logits = self.router_logits(router, x)
        return logits if self.choice_scores is None else self.choice_scores(router, logits)


@dataclass
class MoEBlock:
    """One MoE layer of one stack, with the modules capture attaches to."""

    stack: str  # "decoder" or "encoder"
    layer: int  # index in the stack's full layer list
    num_layers: int  # length of that layer list
    path: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int | None
    shared: nn.Module | None
    layer_module: nn.Module | None = None  # the whole layer (attention, norms, MoE block)


def find_blocks(model: nn.Module, adapter: Adapter) -> list[MoEBlock]:
    """Every module that holds routed `experts` next to a router, in forward order."""
    blocks = []
    for path, module in model.named_modules():
        experts = getattr(module, "experts", None)
        router = next((getattr(module, a) for a in adapter.router_attrs if isinstance(getattr(module, a, None), nn.Module)), None)
        if not isinstance(experts, nn.Module) or router is None:
            continue
        match = _LAYER_PATH.match(path + ".")
        if match is None:
            raise ExpertcacheError(f"MoE module {path!r} is not inside a numbered layer list; cannot tell its layer")
        stack_path = match["stack"]
        stack = "encoder" if "encoder" in stack_path.split(".") else "decoder"
        num_experts = _count_experts(experts, router)
        top_k = getattr(router, "top_k", None) or getattr(module, "top_k", None)
        shared = next((getattr(module, a) for a in adapter.shared_attrs if isinstance(getattr(module, a, None), nn.Module)), None)
        layers = model.get_submodule(stack_path)
        blocks.append(MoEBlock(stack, int(match["index"]), len(layers), path, module, router, experts, num_experts,
                               top_k, shared, layers[int(match["index"])]))
    return blocks


def _count_experts(experts: nn.Module, router: nn.Module) -> int:
    for owner in (experts, router):
        n = getattr(owner, "num_experts", None)
        if isinstance(n, int) and n > 0:
            return n
    if isinstance(experts, (nn.ModuleList, nn.ModuleDict)):
        return len(experts)
    raise ExpertcacheError(f"cannot tell how many experts {type(experts).__name__} holds")
