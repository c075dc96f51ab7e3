"""Small traces for hand-worked cases, and the bundled real traces with the figures published on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from expertcache.trace import ModelInfo, Trace
from expertcache.trace.examples import open_example

# published curves and per-step device metrics of the two route traces (NOTICE there)
BIGMOE = Path(__file__).resolve().parents[1] / "data" / "bigmoe"
EXAMPLE = {"qwen": "qwen3-30b-a3b", "gptoss": "gpt-oss-120b"}  # file name in BIGMOE -> bundled trace


def make_trace(experts, num_experts: int, *, phase=None, expert_bytes=None) -> Trace:
    """experts: [S, T, L, K] nested lists (-1 = not routed); phase: [S, T] (default decode)."""
    experts = [np.asarray(s, np.int64) for s in experts]
    L, K = experts[0].shape[1:]
    model = ModelInfo(name="hand", architecture="test", num_layers=L, moe_layers=tuple(range(L)),
                      num_experts=(num_experts,) * L, top_k=K, expert_bytes=tuple(expert_bytes or ()))
    return Trace.from_arrays(experts, model=model, phase=None if phase is None else [np.asarray(p) for p in phase])


def decode_trace(tokens, num_experts: int, expert_bytes=None) -> Trace:
    """One decode sequence; tokens: [T, L, K]."""
    return make_trace([tokens], num_experts, expert_bytes=expert_bytes)


def real_trace(name: str) -> Trace:
    """The bundled trace whose published figures are BIGMOE/{name}.*.csv."""
    return open_example(EXAMPLE[name])
