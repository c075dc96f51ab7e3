"""Chance levels: shuffles stay inside sequences, are seeded, and remove order effects only."""

import numpy as np
import pytest

from expertcache import ExpertcacheError, Trace
from expertcache.locality import chance_curves, chance_overlap, chance_srp, consecutive_overlap, curves, srp
from expertcache.locality._streams import blocks

from .helpers import random_trace


def test_shuffle_permutes_within_sequences_and_is_seeded():
    trace = random_trace(np.random.default_rng(1), sequences=(4, 4), tokens=(5, 12))
    whole = np.asarray(trace.experts)
    a = np.concatenate([b.experts for b in blocks(trace, shuffle=(3, 0))])
    b = np.concatenate([b.experts for b in blocks(trace, shuffle=(3, 0), max_requests=1)])  # other block split
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, whole)
    for i in range(trace.num_sequences):
        s = trace.sequence(i)
        assert sorted(map(bytes, a[s])) == sorted(map(bytes, whole[s]))  # same tokens, all layers together


def test_chance_overlap_averages_the_shuffles_that_define_it():
    sparse = np.full((4, 1, 1), -1)
    sparse[:2] = 0  # two routed tokens, adjacent: one shuffle of the three ([3, 0, 2, 1]) separates them
    trace = Trace.from_arrays([sparse], 2)
    assert consecutive_overlap(trace)[0] == 1.0
    assert chance_overlap(trace, permutations=3, seed=0)[0] == 1.0  # was NaN


def test_order_free_trace_has_no_excess():
    # Every token of a sequence uses the same experts: any order gives the same metrics.
    seqs = [np.tile(np.array([[0, 1], [2, 3]]), (6, 1, 1)), np.tile(np.array([[1, 2], [0, 3]]), (4, 1, 1))]
    trace = Trace.from_arrays(seqs, 4)
    for policy, m in (("lru", None), ("fsf", 2)):
        np.testing.assert_allclose(chance_curves(trace, policy, m).model_level, curves(trace, policy, m).model_level)
    assert chance_srp(trace, (3,))[3][0] == pytest.approx(srp(trace, 3, resamples=0).results[3]["model"].srp)
    assert chance_overlap(trace)[0] == consecutive_overlap(trace)[0] == 1.0


def test_local_trace_beats_chance():
    # Long runs of the same experts: real locality, which shuffling destroys.
    rng = np.random.default_rng(0)
    seq = np.repeat(np.stack([rng.choice(16, 2, replace=False) for _ in range(8)])[:, None, :], 8, axis=0)
    trace = Trace.from_arrays([seq], 16)
    assert curves(trace, "lru").model_level[1] > chance_curves(trace, "lru").model_level[1] + 0.2
    assert srp(trace, 8, resamples=0).results[8]["model"].srp > chance_srp(trace, (8,))[8][0] + 0.2
    assert consecutive_overlap(trace)[0] > chance_overlap(trace)[0] + 0.3


def test_seeded_and_invalid():
    trace = random_trace(np.random.default_rng(2), sequences=(3, 3), tokens=(8, 12))
    a = chance_curves(trace, "lfu", permutations=2, seed=5).per_layer
    np.testing.assert_array_equal(a, chance_curves(trace, "lfu", permutations=2, seed=5).per_layer)
    for permutations in (0, 2.5, True):  # a fraction or a bool is not a number of shuffles
        with pytest.raises(ExpertcacheError, match="permutations must be an integer in 1..1000"):
            chance_curves(trace, "lru", permutations=permutations)
    for chance in (lambda: chance_curves(trace, "lru", seed=-1), lambda: chance_srp(trace, (2,), seed=-1),
                   lambda: chance_overlap(trace, seed=-1)):
        with pytest.raises(ExpertcacheError, match="seed must be an integer in 0.."):
            chance()


def test_bad_request_fails_before_the_first_shuffled_pass(monkeypatch):
    from expertcache.locality import chance

    trace = random_trace(np.random.default_rng(2), sequences=(2, 2), tokens=(4, 6), domains=("a",))
    monkeypatch.setattr(chance, "hit_counts", lambda *a, **k: pytest.fail("a pass ran before validation"))
    with pytest.raises(ExpertcacheError, match="no domain 'zz'"):
        chance_curves(trace, "lru", domain="zz")
    with pytest.raises(ExpertcacheError, match="applies only to fsf"):
        chance_curves(trace, "lru", 4)
