"""A custom ("trust_remote_code") MoE config for testing the generic capture adapter."""

from transformers import PretrainedConfig


class ToyMoeConfig(PretrainedConfig):
    model_type = "toymoe"

    def __init__(self, vocab_size=4096, hidden_size=16, num_layers=2, num_experts=6, num_experts_per_tok=2,
                 router_returns_ids=True, **kwargs):
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers
        self.num_experts, self.num_experts_per_tok = num_experts, num_experts_per_tok
        self.router_returns_ids = router_returns_ids
        super().__init__(**kwargs)
