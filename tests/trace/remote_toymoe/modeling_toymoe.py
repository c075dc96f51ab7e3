"""A custom MoE model unknown to transformers: softmax top-k router, a list of linear experts."""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_toymoe import ToyMoeConfig


class ToyRouter(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(config.num_experts, config.hidden_size))
        self.top_k, self.returns_ids = config.num_experts_per_tok, config.router_returns_ids

    def forward(self, x):
        logits = x @ self.weight.T
        if not self.returns_ids:
            return logits
        weights, ids = logits.softmax(-1).topk(self.top_k, dim=-1)
        return ids, weights


class ToyMoeBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.router = ToyRouter(config)
        self.experts = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size) for _ in range(config.num_experts))

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        if self.config.router_returns_ids:
            ids, weights = self.router(flat)
        else:
            weights, ids = self.router(flat).softmax(-1).topk(self.config.num_experts_per_tok, dim=-1)
        out = torch.zeros_like(flat)
        for slot in range(ids.shape[1]):
            for e, expert in enumerate(self.experts):
                rows = ids[:, slot] == e
                out[rows] += weights[rows, slot, None] * expert(flat[rows])
        return x + out.view_as(x)


class ToyLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.mlp = ToyMoeBlock(config)

    def forward(self, x):
        return self.mlp(x)


class ToyMoeForCausalLM(PreTrainedModel):
    config_class = ToyMoeConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(ToyLayer(config) for _ in range(config.num_layers))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, **kwargs):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return CausalLMOutput(logits=self.lm_head(x))
