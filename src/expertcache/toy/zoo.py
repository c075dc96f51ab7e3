"""Tiny randomly initialised MoE models of every supported family, and the demo's model.

They exist for the demo, the tests and the benchmarks: a folder written here loads with
`from_pretrained` exactly as a downloaded model would. Sizes are kept minimal (hidden 32, 2-4
layers, 8-16 experts) but each config keeps its family's routing features switched on: dense
first layers, group-limited routing, score-correction bias, shared experts, non-MoE layers,
expert capacity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import ExpertcacheError

__all__ = ["DEMO_CONTEXT", "TINY_FAMILIES", "build_demo_model", "build_tiny_model", "save_model", "tiny_config"]

_ATTN = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


DEMO_CONTEXT = 4096  # tokens the demo model's positions reach


def _demo(t, v):  # the demo model: a little wider and deeper than the test models
    return t.Qwen3MoeConfig(vocab_size=v, hidden_size=64, intermediate_size=64, moe_intermediate_size=32,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_experts=16, num_experts_per_tok=4, norm_topk_prob=True,
                            max_position_embeddings=DEMO_CONTEXT)


def _olmoe(t, v):
    return t.OlmoeConfig(vocab_size=v, eos_token_id=0, intermediate_size=32, num_hidden_layers=2, num_experts=8,
                         num_experts_per_tok=2, **_ATTN)


def _mixtral(t, v):
    return t.MixtralConfig(vocab_size=v, intermediate_size=32, num_hidden_layers=2, num_local_experts=8,
                           num_experts_per_tok=2, **_ATTN)


def _qwen2_moe(t, v):  # layer 1 is a plain MLP (mlp_only_layers); one shared expert
    return t.Qwen2MoeConfig(vocab_size=v, intermediate_size=32, moe_intermediate_size=16,
                            shared_expert_intermediate_size=32, num_hidden_layers=3, num_experts=8,
                            num_experts_per_tok=2, mlp_only_layers=[1], **_ATTN)


def _qwen3_moe(t, v):  # decoder_sparse_step=2: only odd layers are MoE
    return t.Qwen3MoeConfig(vocab_size=v, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=4,
                            num_experts=16, num_experts_per_tok=4, decoder_sparse_step=2, head_dim=8, **_ATTN)


_MLA = dict(kv_lora_rank=16, q_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, head_dim=8,
            hidden_size=32, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)


def _deepseek_v2(t, v):  # first layer dense, group-limited greedy softmax routing, shared experts
    return t.DeepseekV2Config(vocab_size=v, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                              n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4,
                              first_k_dense_replace=1, topk_method="group_limited_greedy", n_group=4,
                              topk_group=2, routed_scaling_factor=1.5, **_MLA)


def _deepseek_v3(t, v):  # group-limited sigmoid routing with e_score_correction_bias
    return t.DeepseekV3Config(vocab_size=v, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                              n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
                              first_k_dense_replace=1, n_group=4, topk_group=2, norm_topk_prob=True,
                              routed_scaling_factor=2.5, **_MLA)


def _gpt_oss(t, v):  # top-k on logits, then softmax over the k
    rope = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 64, "rope_theta": 150000.0}
    return t.GptOssConfig(vocab_size=v, intermediate_size=32, num_hidden_layers=2, num_local_experts=8,
                          num_experts_per_tok=2, head_dim=8, sliding_window=16, rope_parameters=rope,
                          layer_types=["sliding_attention", "full_attention"], **_ATTN)


def _phimoe(t, v):  # sparsemixer top-2
    return t.PhimoeConfig(vocab_size=v, intermediate_size=32, num_hidden_layers=2, num_local_experts=8,
                          num_experts_per_tok=2, **_ATTN)


def _granitemoe(t, v):
    return t.GraniteMoeConfig(vocab_size=v, intermediate_size=32, num_hidden_layers=2, num_local_experts=8,
                              num_experts_per_tok=2, **_ATTN)


def _llama4_text(t, v):  # MoE every second layer, sigmoid top-1, one shared expert
    return t.Llama4TextConfig(vocab_size=v, intermediate_size=16, intermediate_size_mlp=32, num_hidden_layers=4,
                              num_local_experts=8, num_experts_per_tok=1, interleave_moe_layer_step=2,
                              head_dim=8, attention_chunk_size=64, **_ATTN)


def _glm4_moe(t, v):  # first layer dense, sigmoid group routing with bias
    return t.Glm4MoeConfig(vocab_size=v, intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=3,
                           n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
                           n_group=2, topk_group=1, norm_topk_prob=True, head_dim=8, **_ATTN)


def _qwen3_next(t, v):  # hybrid linear / full attention, shared expert
    return t.Qwen3NextConfig(vocab_size=v, intermediate_size=32, moe_intermediate_size=16,
                             shared_expert_intermediate_size=16, num_hidden_layers=4, num_experts=8,
                             num_experts_per_tok=2, head_dim=8, linear_key_head_dim=8, linear_value_head_dim=8,
                             linear_num_key_heads=2, linear_num_value_heads=4, **_ATTN)


def _switch_transformers(t, v):  # encoder-decoder; every second block sparse; capacity drops tokens
    return t.SwitchTransformersConfig(vocab_size=v, d_model=32, d_kv=8, d_ff=32, num_layers=4, num_decoder_layers=4,
                                      num_heads=4, num_experts=8, expert_capacity=12, encoder_sparse_step=2,
                                      decoder_sparse_step=2, decoder_start_token_id=0)


TINY_FAMILIES: dict[str, Callable] = {
    "olmoe": _olmoe,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v3": _deepseek_v3,
    "gpt_oss": _gpt_oss,
    "phimoe": _phimoe,
    "granitemoe": _granitemoe,
    "llama4_text": _llama4_text,
    "glm4_moe": _glm4_moe,
    "qwen3_next": _qwen3_next,
    "switch_transformers": _switch_transformers,
}


def tiny_config(model_type: str, vocab_size: int = 512, special_id: int = 0):
    """A transformers config of `model_type` small enough to run on a laptop core.

    `special_id` becomes its BOS / EOS / pad (and decoder start) token.
    """
    import transformers

    return _with_special_tokens(_factory(model_type)(transformers, vocab_size), special_id)


def _factory(model_type: str) -> Callable:
    if model_type not in TINY_FAMILIES:
        raise ExpertcacheError(f"no tiny config for {model_type!r}; known: {', '.join(TINY_FAMILIES)}")
    return TINY_FAMILIES[model_type]


def _with_special_tokens(config, special_id: int):
    config.bos_token_id = config.eos_token_id = config.pad_token_id = special_id
    if config.is_encoder_decoder:
        config.decoder_start_token_id = special_id
    return config


def build_tiny_model(model_type: str, path: str | os.PathLike, *, vocab_size: int = 512, seed: int = 0,
                     tokenizer=None) -> Path:
    """Initialise a tiny model with `seed` and save it (and `tokenizer`, if given) to `path`.

    Routing biases that start at zero (DeepSeek-V3 / GLM4-MoE `e_score_correction_bias`) are
    randomised so that tests see them change the selection.
    """
    return _build(_factory(model_type), path, vocab_size=vocab_size, seed=seed, tokenizer=tokenizer)


def build_demo_model(path: str | os.PathLike, *, tokenizer, seed: int = 0) -> Path:
    """The demo's model (a little wider and deeper than the test models) over `tokenizer`."""
    return _build(_demo, path, vocab_size=len(tokenizer), seed=seed, tokenizer=tokenizer)


def _build(factory: Callable, path, *, vocab_size: int, seed: int, tokenizer) -> Path:
    import torch
    import transformers

    config = _with_special_tokens(factory(transformers, vocab_size), getattr(tokenizer, "eos_token_id", None) or 0)
    torch.manual_seed(seed)
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    model = auto.from_config(config)
    biases = torch.Generator().manual_seed(seed)  # one stream: every layer gets its own bias
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.copy_(torch.randn(buffer.shape, generator=biases) * 0.2)
    path = Path(path)
    save_model(model, path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def save_model(model, folder: Path) -> None:
    """`save_pretrained`, with the weights readable as the user's other files are: safetensors
    writes them owner-only (0600), whatever the umask."""
    model.save_pretrained(folder)
    mask = os.umask(0)
    os.umask(mask)
    for weights in Path(folder).glob("*.safetensors"):
        weights.chmod(0o666 & ~mask)
