"""The verdict rule on routing whose answer is known by construction."""

import dataclasses

import numpy as np
import pytest

from expertcache.report.evidence import gather
from expertcache.report.verdict import LARGE, NOT, SMALL, SUITS, judge

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
    assert v.advice[0].startswith(f"cache {c.budget_x * K * L:.0f} experts = {c.budget_x:.1f}x the {K * L} active")
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
