"""The gating network's habits, on routing small enough to count by hand."""

import numpy as np
import pytest

from expertcache import Trace
from expertcache.locality import co_firing, rarely_used, top_share, weight_by_rank


def test_weight_by_rank_sorts_each_token_and_normalizes_it():
    experts = np.array([[[[0, 1]], [[2, 3]]]])  # 1 sequence, 2 tokens, 1 layer, k = 2
    weights = np.array([[[[0.2, 0.6]], [[1.0, 1.0]]]])  # sums 0.8 and 2: shares (.75, .25) and (.5, .5)
    trace = Trace.from_arrays(experts, 4, weights=weights)
    np.testing.assert_allclose(weight_by_rank(trace), [[0.625, 0.375]], atol=1e-3)


def test_weight_by_rank_is_none_without_weights():
    assert weight_by_rank(Trace.from_arrays(np.zeros((1, 3, 2, 1), int), 4)) is None


def test_rarely_used_and_top_share():
    counts = np.array([[50, 30, 15, 4, 1, 0, 0, 0],   # even share 100 / 8 = 12.5: rare below 1.25
                       [10, 10, 10, 10, 0, 0, 0, 0]])  # a layer of 4 experts: even share 10, rare below 1
    rare = rarely_used(counts, [8, 4])
    assert rare[0].tolist() == [False, False, False, False, True, True, True, True]
    assert rare[1].tolist() == [False] * 8  # columns past the layer's 4 experts do not exist
    np.testing.assert_allclose(top_share(counts, [8, 4], fraction=0.25), [0.8, 0.25])  # top 2 of 8, top 1 of 4


def test_co_firing_counts_pairs_within_a_token_and_their_lift():
    # 4 tokens in one layer, k = 2: {0,1} twice, {2,3}, {0,2}
    experts = np.array([[[[0, 1]], [[1, 0]], [[2, 3]], [[0, 2]]]])
    pairs, lift = co_firing(Trace.from_arrays(experts, 5), 0)
    assert pairs[0, 1] == pairs[1, 0] == 2 and pairs[2, 3] == 1 and pairs[0, 2] == 1 and pairs[1, 2] == 0
    # P(0) = 3/4, P(1) = 2/4, P(0 and 1) = 2/4: lift = 0.5 / 0.375
    assert lift[0, 1] == pytest.approx(0.5 / (0.75 * 0.5))
    assert np.isnan(lift[0, 0]) and np.isnan(lift[4]).all()  # the diagonal, and expert 4 never used


def test_weight_by_rank_is_the_same_read_in_small_chunks(rng):
    experts = np.stack([rng.permutation(6)[:3] for _ in range(2 * 7 * 2)]).reshape(2, 7, 2, 3)
    weights = rng.random(experts.shape)
    trace = Trace.from_arrays(experts, 6, weights=weights)
    np.testing.assert_allclose(weight_by_rank(trace, chunk=3), weight_by_rank(trace), atol=1e-12)
    w = np.sort(weights.astype(np.float16).astype(np.float32), axis=-1)[..., ::-1]
    expected = (w / w.sum(axis=-1, keepdims=True)).reshape(-1, 2, 3).mean(axis=0)  # [L, K]
    np.testing.assert_allclose(weight_by_rank(trace), expected, atol=1e-6)


def test_co_firing_is_the_same_counted_in_small_chunks(rng):
    experts = np.stack([rng.permutation(6)[:3] for _ in range(3 * 9)]).reshape(3, 9, 1, 3)
    trace = Trace.from_arrays(experts, 6)
    whole, chunked = co_firing(trace, 0), co_firing(trace, 0, chunk=4)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_allclose(whole[1], chunked[1], equal_nan=True)


def test_misuse_is_a_one_line_error_not_a_silent_answer():
    from expertcache import ExpertcacheError, Trace
    from expertcache.locality import co_firing, rarely_used, top_share, weight_by_rank

    trace = Trace.from_arrays(np.array([[[[0, 1]], [[1, 2]]]]), 4, weights=np.full((1, 2, 1, 2), 0.5))
    counts = np.array([[4, 0, 2, 2], [1, 1, 1, 1]])
    bad = [
        (lambda: co_firing(trace, 0, chunk=-1), "chunk must be"),  # all-zero counts
        (lambda: weight_by_rank(trace, chunk=-3), "chunk must be"),  # None, read as "no weights recorded"
        (lambda: co_firing(trace, 1), "layer must be an MoE layer index in 0..0"),  # IndexError
        (lambda: rarely_used(counts, [4]), "num_experts must give each of the 2 layers"),  # broadcast to both
        (lambda: rarely_used(counts, [8, 8]), "in 1..4"),  # an even share of 8 columns it has not
        (lambda: rarely_used(counts, [3.5, 4]), "whole number of experts"),
        (lambda: top_share(-counts, [4, 4]), "requests >= 0"),  # a share of -1.0
        (lambda: top_share(counts, [4, 4], fraction=float("nan")), "fraction must be in \\(0, 1\\]"),
        (lambda: top_share(counts[None], [4, 4]), "counts must be \\[MoE layers, experts\\]"),
    ]
    for call, message in bad:
        with pytest.raises(ExpertcacheError, match=message):
            call()
    assert rarely_used(counts, [4, 3]).tolist() == [[False, True, False, False], [False, False, False, False]]
