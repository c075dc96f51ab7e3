"""Capture feeds the simulator: a generation trace with stale-gate scores drives the stale-gate
prefetcher, whose prediction quality is recomputed here from the trace arrays alone."""

import numpy as np
import pytest

from expertcache import PrefetchConfig, capture_generation, curves, simulate
from expertcache.cache.prefetch import PREFETCHERS
from expertcache.trace import DECODE


def test_stale_gate_capture_drives_the_prefetcher(tiny_model, tmp_path):
    trace = capture_generation(tiny_model("qwen3_moe"), "The river ran past the mill", tmp_path / "g",
                               new_tokens=12, stale_gate=True).load()
    k = trace.top_k
    result = simulate(trace, "lru", budget_x=2, prefetch=PrefetchConfig(PREFETCHERS["stale-gate"](), k, 1, 0))

    scores = np.asarray(trace.stale_gate, np.float32)  # [N, L, E], row 0 NaN
    predicted = hits = 0
    for t in np.flatnonzero(trace.phase == DECODE):
        for layer in range(1, trace.num_moe_layers):
            top = set(np.argsort(-scores[t, layer], kind="stable")[:k].tolist())
            predicted += len(top)
            hits += len(top & set(trace.experts[t, layer].tolist()))
    assert result.prefetch.prediction_precision == pytest.approx(hits / predicted)
    assert np.isnan(scores[:, 0]).all() and not np.isnan(scores[:, 1:]).any()
    assert curves(trace, "lru").per_layer.shape == (trace.num_moe_layers, trace.num_experts)
