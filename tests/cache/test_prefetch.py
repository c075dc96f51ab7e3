"""Prefetchers (SPEC §5): predictions, the loop's prefetch accounting, and user errors."""

import json
import math

import numpy as np
import pytest

from expertcache import ExpertcacheError
from expertcache.cache import PREFETCHERS, PrefetchConfig, build_stream, simulate
from expertcache.cache.prefetch import Frequency, Learned, Oracle, PreviousToken, StaleGate, plan_prefetch, top_scoring

from .helpers import decode_trace, make_trace


def cycling_trace(T=40, L=2, E=6):
    """Layer l of token t uses experts (t + l) % E and (t + l + 1) % E: nothing repeats soon."""
    tokens = np.array([[[(t + l) % E, (t + l + 1) % E] for l in range(L)] for t in range(T)])
    return decode_trace(tokens, E)


def test_previous_token_predicts_the_last_tokens_experts_within_a_sequence():
    trace = make_trace([[[[0, 1]], [[2, 3]]], [[[4, 5]], [[0, 1]]]], 6)
    pred = PreviousToken().predict(trace, 2, 1)
    assert pred[:, 0].tolist() == [[-1, -1], [0, 1], [-1, -1], [4, 5]]  # no carry-over across sequences


def test_frequency_predicts_the_most_used_so_far_ties_to_lower_id():
    trace = decode_trace([[[3]], [[1]], [[1]], [[3]], [[3]]], 4)
    assert Frequency().predict(trace, 1, 1)[:, 0, 0].tolist() == [-1, 3, 1, 1, 1]


def test_oracle_prefetch_makes_every_decode_lookup_hit():
    trace = cycling_trace()
    plain = simulate(trace, "lru", budget_slots=8)
    with_oracle = simulate(trace, "lru", budget_slots=8, prefetch="oracle")
    assert plain.decode_hit_rate < 0.6
    # only the very first batch misses: every later one was prefetched one layer ahead
    assert with_oracle.misses == 2 and with_oracle.lookups == plain.lookups
    p = with_oracle.prefetch
    assert p.precision == 1.0 and p.prediction_precision == 1.0 and p.recall == 1.0
    assert p.wasted == 0 and p.bytes is None  # no sizes in this trace


def test_prefetch_accounting_in_a_reserved_buffer():
    # one layer, k=1; previous-token prefetch predicts the last expert, which is already cached:
    # nothing is issued. Oracle with a 1-slot buffer: the buffer holds exactly the next expert.
    trace = decode_trace([[[e]] for e in [0, 1, 2, 3, 0, 1, 2, 3]], 4, expert_bytes=(10,))
    r = simulate(trace, "lru", budget_mib=30 / 2**20, prefetch=PrefetchConfig(Oracle(), reserve=1))
    # main budget 30 - 10 reserved = 20 bytes = 2 experts; every batch after the first is a buffer hit
    assert r.budget_bytes == 20
    assert (r.hits, r.misses) == (7, 1)
    assert (r.prefetch.issued, r.prefetch.used, r.prefetch.wasted) == (7, 7, 0)
    assert r.bytes_read == 8 * 10  # 1 miss + 7 prefetches


def test_wasted_prefetches_are_counted_with_their_bytes():
    # predict expert 3 for every batch: never used
    class Always3:
        name = "always-3"

        def predict(self, trace, count, distance):
            return np.full((trace.num_tokens, trace.num_moe_layers, 1), 3)

    trace = decode_trace([[[e]] for e in [0, 1, 0, 1]], 4, expert_bytes=(5,))
    r = simulate(trace, "lru", budget_slots=3, prefetch=PrefetchConfig(Always3()))
    assert (r.prefetch.issued, r.prefetch.used, r.prefetch.wasted) == (1, 0, 1)  # issued once, stays cached
    assert r.prefetch.bytes_wasted == 5 and r.prefetch.precision == 0.0


def test_quality_is_undefined_when_nothing_is_predicted():
    class Never:
        name = "never"

        def predict(self, trace, count, distance):
            return np.full((trace.num_tokens, trace.num_moe_layers, 1), -1)

    r = simulate(decode_trace([[[e]] for e in [0, 1, 0, 1]], 4), "lru", budget_slots=3, prefetch=PrefetchConfig(Never()))
    p = r.prefetch
    assert p.issued == 0 and math.isnan(p.precision) and math.isnan(p.prediction_precision) and math.isnan(p.recall)
    assert {p.to_json()[k] for k in ("precision", "prediction_precision", "recall")} == {None}
    json.dumps(r.to_json(), allow_nan=False)


def test_stale_gate_needs_scores_in_the_trace():
    with pytest.raises(ExpertcacheError, match="no stale-gate scores"):
        simulate(cycling_trace(), "lru", budget_slots=4, prefetch="stale-gate")


@pytest.mark.parametrize("count", [0, 1, 3, 8, 12])
def test_top_scoring_is_a_stable_descending_sort_of_the_finite_scores_cut_to_count(count):
    rng = np.random.default_rng(count)
    scores = rng.choice(np.float32([-1.5, 0, 0.25, 2, np.nan, -np.inf, np.inf]), size=(300, 10))  # ties, non-finite
    got = np.empty((300, count), np.int64)
    top_scoring(scores, got)
    for row, top in zip(scores, got):
        finite = sorted((e for e in range(10) if np.isfinite(row[e])), key=lambda e: -row[e])  # sorted() is stable
        want = (finite + [-1] * count)[:count]
        assert top.tolist() == want


def test_stale_gate_takes_the_top_scores_and_skips_layer_zero():
    trace = cycling_trace(T=3, L=2, E=6)
    gate = np.zeros((3, 2, 6), np.float16)
    gate[:, 0] = np.nan
    gate[:, 1, 4], gate[:, 1, 2] = 3, 2
    trace.__dict__["stale_gate"] = gate  # what a capture with stale-gate scores provides
    pred = StaleGate().predict(trace, 2, 1)
    assert pred[:, 0].tolist() == [[-1, -1]] * 3 and pred[:, 1].tolist() == [[4, 2]] * 3
    with pytest.raises(ExpertcacheError, match="one layer ahead"):
        StaleGate().predict(trace, 2, 2)


def test_learned_predictor_trains_on_the_first_part_and_predicts_the_rest():
    trace = cycling_trace(T=60)
    pred = Learned(train_fraction=0.5).predict(trace, 2, 1)
    assert (pred[:30] == -1).all()  # nothing predicted on the training part
    truth = np.sort(np.asarray(trace.experts)[30:], axis=2)
    assert np.array_equal(np.sort(pred[30:], axis=2)[:, 1], truth[:, 1])  # the pattern is learnable
    r = simulate(trace, "lru", budget_slots=8, prefetch="learned")
    assert r.prefetch.recall > 0.9 and r.prefetch.prediction_precision > 0.9


def test_prefetch_distance_and_count_options():
    trace = cycling_trace()
    stream = build_stream(trace)
    keys = plan_prefetch(trace, stream, PrefetchConfig(Oracle(), count=1, distance=2))
    assert keys.shape == (stream.num_batches, 1)
    far = simulate(trace, "lru", budget_slots=8, prefetch=PrefetchConfig(PreviousToken(), distance=2))
    assert far.prefetch.distance == 2
    with pytest.raises(ExpertcacheError):
        simulate(trace, "lru", budget_slots=8, prefetch=PrefetchConfig(Oracle(), distance=0))
    with pytest.raises(ExpertcacheError, match="unknown prefetcher"):
        simulate(trace, "lru", budget_slots=8, prefetch="psychic")


def test_a_prediction_is_never_issued_before_the_routing_it_reads():
    # layer 1 routes only tokens 0 and 2, so the batches are (t0 L0) (t0 L1) (t1 L0) (t2 L0) (t2 L1) (t3 L0)
    trace = decode_trace([[[0], [0]], [[1], [-1]], [[2], [1]], [[3], [-1]]], 4)
    stream = build_stream(trace)
    assert stream.batch_layer.tolist() == [0, 1, 0, 0, 1, 0]
    near = plan_prefetch(trace, stream, PrefetchConfig(PreviousToken(), distance=1))[:, 0]
    assert near.tolist() == [-1, -1, 0, 1, -1, 2]  # the previous token's expert at the layer
    # two batches ahead, batch 3 (t2 L0) would be issued after batch 1 (t0 L1), before t1 L0 is routed
    far = plan_prefetch(trace, stream, PrefetchConfig(PreviousToken(), distance=2))[:, 0]
    assert far.tolist() == [-1, -1, 0, -1, -1, 2]
    oracle = plan_prefetch(trace, stream, PrefetchConfig(Oracle(), distance=2))[:, 0]
    assert oracle.tolist() == [0, 4, 1, 2, 5, 3]  # the bound reads the future by design


def test_a_distance_beyond_the_layers_is_refused_where_it_would_read_the_future():
    trace = decode_trace([[[e]] for e in range(8)], 8)  # one layer, no expert used twice
    for name in ("previous", "frequency", "learned"):
        with pytest.raises(ExpertcacheError, match="distance 2 is more than the trace's 1 MoE layers"):
            simulate(trace, "lru", budget_slots=4, prefetch=PrefetchConfig(PREFETCHERS[name](), distance=2))
    assert simulate(trace, "lru", budget_slots=4, prefetch=PrefetchConfig(PreviousToken(), distance=1)).hits == 0
    assert simulate(trace, "lru", budget_slots=4, prefetch=PrefetchConfig(Oracle(), distance=2)).hits == 6


def test_every_prefetcher_runs_on_a_prefill_trace():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 8, (30, 3, 2))
    tokens[:, :, 1] = (tokens[:, :, 0] + 1) % 8
    trace = make_trace([tokens], 8, phase=[[0] * 10 + [1] * 20])
    plain = simulate(trace, "lru", budget_slots=10)
    for name in sorted(set(PREFETCHERS) - {"stale-gate"}):
        r = simulate(trace, "lru", budget_slots=10, prefetch=name)
        assert r.lookups == plain.lookups  # prefetching never changes what is looked up
        assert r.prefetch.issued >= r.prefetch.used and r.prefetch.issued == r.prefetch.used + r.prefetch.wasted


class _Fixed:
    """A user's prefetcher that predicts `value` everywhere (or an array of its own shape)."""

    name, reads_the_future = "fixed", False

    def __init__(self, value, shape=None):
        self.value, self.shape = value, shape

    def predict(self, trace, count, distance):
        return np.full(self.shape or (trace.num_tokens, trace.num_moe_layers, count), self.value)


@pytest.mark.parametrize("prefetcher, message", [
    (_Fixed(100_000_000), "predicted an expert id outside -1..E-1"),  # a segfault in the replay
    (_Fixed(4), "predicted an expert id outside -1..E-1"),  # E = 4: layer 1's expert 0, silently
    (_Fixed(-2), "predicted an expert id outside -1..E-1"),
    (_Fixed(0.5), "must predict integer expert ids"),
    (_Fixed(0, shape=(3, 2)), "must predict integer expert ids \\[tokens, MoE layers, count\\]"),
])
def test_a_users_prefetcher_is_checked_before_its_ids_reach_the_replay(prefetcher, message):
    trace = decode_trace([[[0, 1], [2, 3]], [[1, 2], [3, 0]], [[0, 3], [1, 2]]], 4)
    with pytest.raises(ExpertcacheError, match=message):
        simulate(trace, "lru", budget_slots=2, prefetch=PrefetchConfig(prefetcher, count=2))
    simulate(trace, "lru", budget_slots=2, prefetch=PrefetchConfig(_Fixed(3), count=2))  # in range: runs


def test_a_stream_of_another_trace_is_refused(rng):
    # its keys and tokens were read out of this trace's bounds: wrong counts, or a segfault with a prefetcher
    small = decode_trace([[[0, 1], [2, 3]]] * 4, 4)
    big = decode_trace(np.argsort(rng.random((5, 2, 64)), -1)[..., :8].tolist(), 64)
    for trace, other in ((big, small), (small, big)):
        with pytest.raises(ExpertcacheError, match="the stream was built from another trace"):
            simulate(trace, "lru", budget_slots=4, stream=build_stream(other), prefetch="previous")
    with pytest.raises(ExpertcacheError, match="stream must be build_stream"):
        simulate(small, "lru", budget_slots=4, stream=5)
    assert simulate(small, "lru", budget_slots=4, stream=build_stream(small)).lookups == 16
