"""Named toy configs: `smoke` for tests, `base`, and the study grid (one factor changed per variant).

The study also traces `base` untrained (UNTRAINED): at initialisation consecutive router inputs
are alike, so routing is already above chance; a trained variant shows learned locality only
beyond that.

Every grid variant is the DeepSeek-V3-style `base` with exactly one field changed, so a
difference between a variant and `base` is that factor's effect (DeepSeek-V3 is the one family
here with shared experts and dense first layers; plain top-k of sigmoid scores, balanced by the
loss). `fine-grained` keeps total and active expert parameters: 2x the experts, 2x top-k,
half the expert size.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ExpertcacheError
from .config import ToyConfig

__all__ = ["GRID", "PRESETS", "UNTRAINED", "Variant", "preset"]

BASE = ToyConfig()


@dataclass(frozen=True)
class Variant:
    """A grid point: its preset name, the factor it changes, and the study claim it tests."""

    name: str
    factor: str
    change: str  # the changed field, in words
    config: ToyConfig


UNTRAINED = Variant("untrained", "training", "base at initialisation (not trained)", BASE)
GRID: tuple[Variant, ...] = (
    Variant("base", "-", "16 experts, top-2, global balance loss 0.01", BASE),
    Variant("local-balance", "balance scope", "balance loss within each sequence", BASE.replace(balance_scope="local")),
    Variant("no-balance", "balance weight", "balance loss weight 0", BASE.replace(balance_weight=0.0)),
    Variant("high-balance", "balance weight", "balance loss weight 0.1", BASE.replace(balance_weight=0.1)),
    Variant("shared-expert", "shared experts", "one shared expert", BASE.replace(shared_experts=1)),
    Variant("dense-first", "dense first layers", "first layer dense", BASE.replace(dense_layers=1)),
    Variant("more-experts", "experts", "64 experts, top-2", BASE.replace(experts=64)),
    Variant("fine-grained", "granularity", "32 experts of half size, top-4",
            BASE.replace(experts=32, top_k=4, expert_size=32)),
    Variant("z-loss", "router z-loss", "router z-loss weight 0.001", BASE.replace(z_loss_weight=0.001)),
    Variant("wide", "width", "hidden size 256", BASE.replace(hidden_size=256)),
    Variant("deep", "depth", "8 layers", BASE.replace(layers=8)),
)

PRESETS: dict[str, ToyConfig] = {
    "smoke": ToyConfig(family="qwen3_moe", hidden_size=32, layers=2, experts=8, top_k=2, expert_size=16, seq_len=32,
                       batch_size=4, steps=30, probe_every=10, warmup_steps=5, corpus_chars=60_000),
    **{v.name: v.config for v in GRID},
}


def preset(name: str) -> ToyConfig:
    if name not in PRESETS:
        raise ExpertcacheError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
