"""The verdict rule on routing whose answer is known by construction."""

import dataclasses
import math

import numpy as np
import pytest

from expertcache.report.evidence import gather
from expertcache import Trace
from expertcache.report.verdict import JUDGEABLE, LARGE, NOT, SMALL, SUITS, TOO_SHORT, judge

from .helpers import E, K, L, local_trace, popular_trace, random_trace, shuffled_trace


@pytest.fixture(scope="module")
def local():
    return gather(local_trace(np.random.default_rng(0)), "local")


def test_local_routing_suits_offloading_with_a_small_cache(local):
    v = judge(local)
    assert local.sch_excess > 0.3  # a segment's pair is reused for 30 tokens
    assert v.kind == SUITS and "reuse experts" in v.reason
    c = local.recommended
    assert local.expert_share(c.budget_x) <= SMALL
    assert v.advice[0].startswith(f"cache {math.floor(c.budget_x * K * L)} experts = {c.budget_x:.1f}x the {K * L} active")
    assert f"expected hit rate {c.hit_rate:.1%}" in v.advice[2]


@pytest.mark.parametrize("make", [shuffled_trace, random_trace], ids=["shuffled", "random"])
def test_routing_without_locality_does_not_suit(make):
    ev = gather(make(np.random.default_rng(0)), "no locality")
    assert abs(ev.sch_excess) < 0.02
    assert ev.expert_share(ev.advice.budget_x) > SMALL
    assert judge(ev).kind == NOT


def test_popular_experts_suit_without_locality_and_the_verdict_says_so():
    ev = gather(popular_trace(np.random.default_rng(0)), "popular")
    v = judge(ev)
    assert abs(ev.sch_excess) < 0.02 and ev.expert_share(ev.advice.budget_x) <= 4 / E
    assert v.kind == SUITS and "not locality" in v.reason


def test_the_size_threshold_separates_suits_from_large_cache(local):
    at = SMALL * E / K  # budget (x active experts) holding exactly a third of the experts
    exactly = dataclasses.replace(local, advice=dataclasses.replace(local.advice, budget_x=at))
    above = dataclasses.replace(local, advice=dataclasses.replace(local.advice, budget_x=at * 1.01))
    assert judge(exactly).kind == SUITS
    assert judge(above).kind == LARGE and "routing is local" in judge(above).reason


def test_a_cache_is_counted_in_whole_experts_that_fit(local):
    # 2.6875x of 4 active experts is 10.75 experts: 10 fit, not 11.
    half = dataclasses.replace(local.recommended, budget_x=2.6875)
    ev = dataclasses.replace(local, choices=[half, *local.choices[1:]])
    assert judge(ev).advice[0].startswith("cache 10 experts = 2.7x the 4 active experts")


def test_sequences_shorter_than_the_segment_are_too_short_to_judge():
    # 2 tokens per sequence: SCH(16) does not exist, and every lookup "hits" a cache of 2x.
    rng = np.random.default_rng(0)
    experts = np.stack([rng.choice(E, K, replace=False) for _ in range(6 * 2 * L)]).reshape(6, 2, L, K)
    v = judge(gather(Trace.from_arrays(experts, E), "short"))
    assert v.kind == TOO_SHORT and "the longest sequence has 2 tokens, fewer than the 16" in v.reason


def test_a_trace_of_mostly_first_uses_is_too_short_to_judge(local):
    below = dataclasses.replace(local, advice=dataclasses.replace(local.advice, best_hit_rate=JUDGEABLE - 0.01))
    at = dataclasses.replace(local, advice=dataclasses.replace(local.advice, best_hit_rate=JUDGEABLE))
    assert judge(below).kind == TOO_SHORT and "hits only 49.0%" in judge(below).reason
    assert judge(at).kind == SUITS


def test_routing_recorded_with_fewer_experts_than_the_model_routes_is_a_caveat(local):
    fewer = dataclasses.replace(local, model=dataclasses.replace(local.model, extra={"native_top_k": 2 * K}))
    assert any(f"recorded with k = {K}, but the model routes each token to {2 * K} experts" in c
               for c in judge(fewer).caveats)
    assert not any("recorded with k" in c for c in judge(local).caveats)


def test_a_recommendation_other_than_lru_says_what_lru_alone_hits(local):
    # The headline row gives LRU's hit rate at the same size; the advice must not read as contradicting it.
    def advice_with(policy, prefetch):
        c = dataclasses.replace(local.recommended, policy=policy, prefetch=prefetch)
        return judge(dataclasses.replace(local, choices=[c, *local.choices[1:]])).advice[2]

    assert advice_with("lfu", "previous").endswith(f"; LRU alone: {local.advice.hit_rate:.1%})")
    assert "LRU alone" not in advice_with("lru", None)
