"""Router losses for training, and the routing a toy model applies, read from its router logits.

Shape key: B sequences, T tokens, E experts, K top-k, L MoE layers.

Every toy family picks the top-k of its router logits (softmax and sigmoid are monotone;
DeepSeek-V3 runs with one group and a zero score-correction bias), so the applied routing is
`logits.topk(k)`, and the model's `output_router_logits` seam gives the logits with gradients.

Balance loss (Switch / DeepSeek-V3 form): E * sum_e f_e * P_e, with f_e the share of the K
routed slots sent to e and P_e the mean routing probability of e (softmax, or sigmoid scores
normalized to sum 1); 1 = perfectly even. "global" takes f and P over the whole batch, "local"
within each sequence and averages: the local form forces every sequence to spread its tokens.
Router z-loss: mean over tokens of logsumexp(logits)^2.
"""

from __future__ import annotations

import torch

__all__ = ["balance_loss", "router_logits", "routed_experts", "z_loss"]


def router_logits(output, batch: int) -> list[torch.Tensor]:
    """Per MoE layer [B, T, E] logits from a forward run with `output_router_logits=True`."""
    return [logits.reshape(batch, -1, logits.shape[-1]) for logits in output.router_logits]


def routed_experts(logits: list[torch.Tensor], k: int) -> torch.Tensor:
    """[B, T, L, K] the experts each token is routed to, in descending score order."""
    return torch.stack([l.topk(k, dim=-1).indices for l in logits], dim=2)


def balance_loss(logits: list[torch.Tensor], k: int, scope: str, sigmoid: bool) -> torch.Tensor:
    """Mean over MoE layers of the balance loss (see the module doc)."""
    dims = (0, 1) if scope == "global" else (1,)
    losses = []
    for layer in logits:  # [B, T, E]
        E = layer.shape[-1]
        if sigmoid:
            scores = layer.float().sigmoid()
            probs = scores / scores.sum(dim=-1, keepdim=True)
        else:
            probs = layer.float().softmax(dim=-1)
        chosen = torch.zeros_like(probs).scatter_(-1, layer.topk(k, dim=-1).indices, 1.0)  # [B, T, E]
        f = chosen.mean(dim=dims) * E / k  # [E] or [B, E]
        p = probs.mean(dim=dims)
        losses.append((f * p).sum(dim=-1).mean())
    return torch.stack(losses).mean()


def z_loss(logits: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.logsumexp(l.float(), dim=-1).square().mean() for l in logits]).mean()
