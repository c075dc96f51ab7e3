"""Locality during training: consecutive-token expert overlap on fixed held-out windows, against
its chance level (the same windows' tokens shuffled within each sequence), and held-out loss.

An untrained router sends consecutive tokens to the same experts because consecutive router
inputs are alike at initialisation; the excess over chance shows when training replaces that
with structure the model learned, so the log starts at step 0.

Shape key: B sequences, T tokens, L MoE layers, K top-k, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..locality import chance_overlap, consecutive_overlap
from ..trace import Trace
from .routing import router_logits, routed_experts

__all__ = ["Probe"]


@dataclass
class Probe:
    tokens: torch.Tensor  # [B, T] held-out windows
    domains: list[str]
    num_experts: int
    top_k: int

    @torch.no_grad()
    def __call__(self, model) -> dict:
        was_training = model.training
        model.eval()
        out = model(input_ids=self.tokens, output_router_logits=True)
        model.train(was_training)
        loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), self.tokens[:, 1:].flatten())
        experts = routed_experts(router_logits(out, len(self.tokens)), self.top_k).cpu().numpy()  # [B, T, L, K]
        trace = Trace.from_arrays(experts, self.num_experts, domains=self.domains)
        observed = consecutive_overlap(trace)[0]
        chance = chance_overlap(trace)[0]
        return {"heldout_loss": float(loss), "overlap": observed, "overlap_chance": chance,
                "overlap_excess": observed - chance}
