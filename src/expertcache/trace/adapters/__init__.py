"""Model adapters: which modules of a transformers MoE model route, and how to read them.

`adapter_for(model)` picks the family by `config.model_type` (see families.py) or falls back
to the shape-based generic adapter; `find_blocks(model, adapter)` lists the MoE layers.
"""

from __future__ import annotations

from torch import nn

from .base import Adapter, MoEBlock, find_blocks
from .families import FAMILIES
from .generic import generic_adapter

__all__ = ["FAMILIES", "Adapter", "MoEBlock", "adapter_for", "find_blocks", "supported_model_types"]

_BY_TYPE = {model_type: adapter for adapter in FAMILIES for model_type in adapter.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def adapter_for(model: nn.Module) -> Adapter:
    """The family adapter for `model` (its config's or text config's model_type), else generic."""
    config = model.config
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is not None and cfg.model_type in _BY_TYPE:
            return _BY_TYPE[cfg.model_type]
    return generic_adapter(model)
