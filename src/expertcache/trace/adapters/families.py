"""The supported transformers MoE families, located by `config.model_type`.

Most families route through transformers' experts registry, which hands the experts module
the ids and weights the router chose; only Llama4 and Switch Transformers compute experts
outside it, so their routing is read from the router's own output.
"""

from __future__ import annotations

import torch

from .base import Adapter, biased_sigmoid_choice, float32_router_logits

__all__ = ["FAMILIES"]


def _read_llama4_router(router, output) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama4Router returns (scores [T, E] = sigmoid at the top-k, 0 elsewhere; logits [T, E]).

    The experts it applies are the top-k of its logits (sorted), with weight = that score.
    """
    scores, logits = output
    ids = torch.topk(logits, router.top_k, dim=-1).indices  # [T, K], descending logit
    return ids, scores.gather(-1, ids)


def _read_switch_router(router, output) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch's top-1 router returns (one-hot [B, S, E] with capacity-dropped tokens zeroed,
    probability of the top expert [B, S, 1], logits). A dropped token is not routed (id -1)."""
    onehot, probs, _ = output
    onehot = onehot.reshape(-1, onehot.shape[-1])  # [T, E]
    routed = onehot.any(dim=-1, keepdim=True)  # [T, 1]
    ids = torch.where(routed, onehot.argmax(dim=-1, keepdim=True), -1)  # [T, 1]
    weights = torch.where(routed, probs.reshape(-1, 1), 0.0)  # [T, 1]
    return ids, weights


_SOFTMAX_TOPK = "softmax over all experts, top-k (weights renormalised if norm_topk_prob)"
_GROUP_SIGMOID = ("sigmoid scores; top-k of score + e_score_correction_bias within the topk_group best of n_group "
                  "groups (group score = sum of its 2 best); weight = score (normalised if norm_topk_prob) x "
                  "routed_scaling_factor")

FAMILIES: tuple[Adapter, ...] = (
    Adapter("OLMoE", ("olmoe",), _SOFTMAX_TOPK),
    Adapter("Mixtral", ("mixtral",), "softmax over all experts, top-k, renormalised"),
    Adapter("Qwen2-MoE", ("qwen2_moe",), _SOFTMAX_TOPK + "; a gated shared expert", notes={"dense": "mlp_only_layers, decoder_sparse_step"}),
    Adapter("Qwen3-MoE", ("qwen3_moe",), _SOFTMAX_TOPK, notes={"dense": "mlp_only_layers, decoder_sparse_step"}),
    Adapter("Qwen3-Next", ("qwen3_next",), _SOFTMAX_TOPK + "; a gated shared expert"),
    Adapter("DeepSeek-V2", ("deepseek_v2",),
            "softmax scores; top-k (greedy, or within the topk_group best groups by group max); "
            "weight = score x routed_scaling_factor",
            router_logits=float32_router_logits, notes={"dense": "first_k_dense_replace"}),
    Adapter("DeepSeek-V3", ("deepseek_v3", "kimi_k2"), _GROUP_SIGMOID,
            router_logits=float32_router_logits, choice_scores=biased_sigmoid_choice,
            notes={"dense": "first_k_dense_replace"}),
    Adapter("GLM4-MoE", ("glm4_moe",), _GROUP_SIGMOID,
            router_logits=float32_router_logits, choice_scores=biased_sigmoid_choice,
            notes={"dense": "first_k_dense_replace"}),
    Adapter("GPT-OSS", ("gpt_oss",), "top-k of the logits (with router bias), then softmax over the k"),
    Adapter("PhiMoE", ("phimoe",), "sparsemixer: experts picked one after another by logit, each weighted by a "
            "masked softmax", score_order="router"),
    Adapter("GraniteMoE", ("granitemoe",), "top-k of the logits, then softmax over the k"),
    Adapter("Llama4", ("llama4_text", "llama4"), "top-k of the logits, weight = sigmoid(logit); one shared expert",
            source="router", read_router=_read_llama4_router, notes={"dense": "moe_layers / interleave_moe_layer_step"}),
    Adapter("Switch Transformers", ("switch_transformers",),
            "softmax, top-1; tokens beyond expert_capacity per sequence are dropped (not routed)",
            source="router", read_router=_read_switch_router, notes={"dense": "encoder/decoder_sparse_step"}),
)
