"""What a toy model is: one flat, typed config naming every factor the lab varies.

A config file is JSON holding any subset of ToyConfig's fields, optionally with "preset" naming
the config it starts from (default "base"). Every value is checked here, so a bad file fails in
one line before anything is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExpertcacheError

__all__ = ["FAMILIES", "SCOPES", "ToyConfig", "hf_config", "read_config_file"]

FAMILIES = ("qwen3_moe", "olmoe", "deepseek_v3")
SCOPES = ("global", "local")  # balance loss over the whole batch, or within every sequence (then averaged)


@dataclass(frozen=True)
class ToyConfig:
    """Architecture, the routing factors, and the training recipe of one toy model.

    Factors: `experts`, `top_k`, `shared_experts` and `dense_layers` (deepseek_v3 only: the
    first `dense_layers` layers get a plain MLP), `balance_weight` with `balance_scope`,
    `z_loss_weight`, `hidden_size` (width) and `layers` (depth). `expert_size` is one routed
    expert's intermediate size; a shared expert and a dense layer's MLP are `expert_size` and
    `top_k * expert_size` wide (the width of the active routed experts).
    """

    family: str = "deepseek_v3"
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    experts: int = 16
    top_k: int = 2
    expert_size: int = 64
    shared_experts: int = 0
    dense_layers: int = 0
    balance_weight: float = 0.01
    balance_scope: str = "global"
    z_loss_weight: float = 0.0
    seq_len: int = 256
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    steps: int = 1000  # training length when neither --steps nor --minutes is given
    probe_every: int = 50  # steps between locality probes on held-out text
    corpus_chars: int = 2_000_000  # characters read from each corpus domain
    heldout_fraction: float = 0.1  # tail of each domain's text kept apart for probes and the study's traces

    def __post_init__(self):
        _check(self)

    def replace(self, **changes) -> "ToyConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(c: ToyConfig) -> None:
    if c.family not in FAMILIES:
        raise ExpertcacheError(f"unknown family {c.family!r}; choose from: {', '.join(FAMILIES)}")
    if c.balance_scope not in SCOPES:
        raise ExpertcacheError(f"unknown balance_scope {c.balance_scope!r}; choose from: {', '.join(SCOPES)}")
    for name in ("hidden_size", "layers", "heads", "experts", "top_k", "expert_size", "seq_len", "batch_size", "steps",
                 "probe_every", "corpus_chars"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ExpertcacheError(f"{name} must be a positive integer, got {value!r}")
    for name in ("shared_experts", "dense_layers", "warmup_steps"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ExpertcacheError(f"{name} must be a non-negative integer, got {value!r}")
    for name in ("balance_weight", "z_loss_weight", "lr", "weight_decay", "heldout_fraction"):
        value = getattr(c, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise ExpertcacheError(f"{name} must be a finite non-negative number, got {value!r}")
    if c.top_k > c.experts:
        raise ExpertcacheError(f"top_k ({c.top_k}) cannot exceed experts ({c.experts})")
    if c.hidden_size % c.heads:
        raise ExpertcacheError(f"hidden_size ({c.hidden_size}) must be a multiple of heads ({c.heads})")
    pairs = 4 if c.family == "deepseek_v3" else 2  # rotary embeddings turn pairs of a head's (rotary half's) dims
    if (c.hidden_size // c.heads) % pairs:
        raise ExpertcacheError(f"a head's width hidden_size / heads = {c.hidden_size // c.heads} must be a multiple of "
                               f"{pairs} for {c.family} (rotary position embeddings)")
    if c.seq_len < 2:
        raise ExpertcacheError(f"seq_len must be at least 2 (a next token to predict), got {c.seq_len}")
    if c.dense_layers >= c.layers:
        raise ExpertcacheError(f"dense_layers ({c.dense_layers}) must leave at least one MoE layer of {c.layers}")
    if c.family != "deepseek_v3" and (c.shared_experts or c.dense_layers):
        raise ExpertcacheError("shared_experts and dense_layers need family deepseek_v3")
    if not 0 < c.heldout_fraction < 0.5:
        raise ExpertcacheError(f"heldout_fraction must lie in (0, 0.5), got {c.heldout_fraction}")


def read_config_file(path: str | os.PathLike, presets: dict[str, ToyConfig]) -> ToyConfig:
    """A JSON file of ToyConfig fields over the preset it names ("preset", default "base")."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExpertcacheError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExpertcacheError(f"cannot read config file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ExpertcacheError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ExpertcacheError(f"{path}: expected a JSON object of config fields")
    start = data.pop("preset", "base")
    if start not in presets:
        raise ExpertcacheError(f"{path}: unknown preset {start!r}; known: {', '.join(presets)}")
    fields = {f.name for f in dataclasses.fields(ToyConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ExpertcacheError(f"{path}: unknown config fields {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    try:
        return presets[start].replace(**data)
    except ExpertcacheError as e:
        raise ExpertcacheError(f"{path}: {e}") from None


def hf_config(c: ToyConfig, vocab_size: int, special_id: int):
    """The transformers config of `c` (rope, norms and activations at their family defaults)."""
    import transformers

    head_dim = c.hidden_size // c.heads
    common = dict(vocab_size=vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.layers,
                  num_attention_heads=c.heads, num_key_value_heads=c.heads, max_position_embeddings=max(c.seq_len, 512),
                  num_experts_per_tok=c.top_k, tie_word_embeddings=True, bos_token_id=special_id,
                  eos_token_id=special_id, pad_token_id=special_id)
    if c.family == "qwen3_moe":
        config = transformers.Qwen3MoeConfig(num_experts=c.experts, moe_intermediate_size=c.expert_size,
                                             intermediate_size=c.top_k * c.expert_size, head_dim=head_dim,
                                             norm_topk_prob=True, router_aux_loss_coef=0.0, **common)
    elif c.family == "olmoe":
        config = transformers.OlmoeConfig(num_experts=c.experts, intermediate_size=c.expert_size,
                                          norm_topk_prob=False, router_aux_loss_coef=0.0, **common)
    else:  # one group (plain top-k of sigmoid scores), no score-correction bias updates: the loss balances
        config = transformers.DeepseekV3Config(
            n_routed_experts=c.experts, moe_intermediate_size=c.expert_size, n_shared_experts=c.shared_experts,
            intermediate_size=c.top_k * c.expert_size, first_k_dense_replace=c.dense_layers, n_group=1, topk_group=1,
            norm_topk_prob=True, routed_scaling_factor=1.0, kv_lora_rank=head_dim * 2, q_lora_rank=None,
            qk_nope_head_dim=head_dim // 2, qk_rope_head_dim=head_dim // 2, v_head_dim=head_dim, head_dim=head_dim // 2,
            **common)
    return config
