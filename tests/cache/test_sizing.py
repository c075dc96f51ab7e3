"""Sizing advice: the token-cycle warning and the smallest budget reaching a fraction of the best."""

import numpy as np
import pytest

from expertcache import ExpertcacheError
from expertcache.cache import build_stream, cycle_size, recommend_budget, simulate

from .helpers import decode_trace


def test_warns_below_one_token_cycle_where_global_lru_collapses():
    tokens = [[[t % 3, 3 + t % 2], [t % 3, 3 + t % 2]] for t in range(12)]  # L=2, k=2
    trace = decode_trace(tokens, 6, expert_bytes=(10, 10))
    assert cycle_size(trace.model) == (4, 40)
    small = simulate(trace, "lru", budget_mib=39 / 2**20)
    assert small.hits == 0 and small.warnings and "one token cycle" in small.warnings[0]
    assert not simulate(trace, "lru", budget_mib=40 / 2**20).warnings
    assert simulate(trace, "lru", budget_slots=3).warnings and not simulate(trace, "lru", budget_slots=4).warnings


def test_warns_when_the_budget_holds_no_expert():
    tokens = [[[t % 3, 3 + t % 2], [t % 3, 3 + t % 2]] for t in range(12)]  # L=2, k=2
    tiny = simulate(decode_trace(tokens, 6, expert_bytes=(10, 10)), "lru", budget_mib=9 / 2**20)
    assert tiny.hits == 0 and tiny.warnings[0].startswith("the budget holds no expert (the smallest takes 10 B)")


def test_warns_when_a_per_layer_split_leaves_slots_unused():
    tokens = [[[t % 3, 3 + t % 2], [t % 3, 3 + t % 2]] for t in range(12)]  # L=2, k=2
    trace = decode_trace(tokens, 6)
    odd = simulate(trace, "lru", scope="layer", budget_slots=9)
    assert odd.warnings == ("9 slots over 2 layers: 4 per layer, 1 left unused",)
    assert (odd.hits, odd.budget_slots) == (simulate(trace, "lru", scope="layer", budget_slots=8).hits, 9)
    assert not simulate(trace, "lru", scope="layer", budget_slots=8).warnings


def test_recommends_the_smallest_budget_reaching_the_fraction():
    rng = np.random.default_rng(0)
    hot = rng.integers(0, 4, (200, 2, 1))
    tokens = np.concatenate([hot, (hot + 1 + rng.integers(0, 3, hot.shape)) % 8], axis=2)  # k=2, E=8
    trace = decode_trace(tokens, 8)
    advice = recommend_budget(trace, "lru", fraction=0.9)
    assert advice.hit_rate >= 0.9 * advice.best_hit_rate
    smaller = simulate(trace, "lru", budget_x=advice.budget_x - 0.01)
    assert smaller.hit_rate < 0.9 * advice.best_hit_rate
    cold = len(np.unique(build_stream(trace).keys))  # an unlimited cache misses only first uses
    assert advice.best_hit_rate == pytest.approx(1 - cold / smaller.lookups)
    with pytest.raises(ExpertcacheError):
        recommend_budget(trace, fraction=1.5)


def test_a_layer_prefix_is_advised_and_labelled_as_the_per_layer_scope():
    tokens = [[[t % 3, 3 + t % 2], [(t + 1) % 3, 3 + t % 2]] for t in range(24)]  # L=2, k=2
    trace = decode_trace(tokens, 6)
    prefixed = recommend_budget(trace, "layer-lru")
    assert (prefixed.policy, prefixed.scope) == ("lru", "layer")
    assert prefixed == recommend_budget(trace, "lru", scope="layer")


@pytest.mark.parametrize("experts, k", [(4, 2), (1, 1)])
def test_advice_never_goes_below_one_expert(experts, k):
    # One layer, two tokens: one expert already reaches the target. Before, the advice bisected
    # towards a budget holding no expert (4 experts), or refused half an expert it tried itself (1).
    trace = decode_trace([[list(range(k))], [list(range(k))]], experts, expert_bytes=(100,))
    advice = recommend_budget(trace, "lru")
    assert advice.budget_bytes == 100 and advice.budget_x == pytest.approx(1 / k)
