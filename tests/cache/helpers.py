"""Small traces for hand-worked cases, and the real traces when the shared data is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expertcache.trace import ModelInfo, Trace

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-traces"


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


def real_trace(name: str):
    path = REAL / f"{name}.route.csv"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    from expertcache.trace.bigmoe import import_bigmoe

    return import_bigmoe(path)
