"""Hand-worked cases, one per rule of the engine accounting (SPEC §4)."""

import numpy as np
import pytest

from expertcache import ExpertcacheError
from expertcache.cache import build_stream, simulate

from .helpers import decode_trace, make_trace


def per_batch(result):
    return list(zip(result.batch_hits.tolist(), result.batch_misses.tolist()))


def test_cold_start_first_uses_miss_and_sequences_share_the_cache():
    trace = make_trace([[[[0]], [[1]]], [[[0]], [[1]]]], 4)  # 2 sequences, L=1, k=1
    r = simulate(trace, "lru", budget_slots=4)
    assert per_batch(r) == [(0, 1), (0, 1), (1, 0), (1, 0)]  # the 2nd sequence finds them cached


def test_prefill_batch_is_per_layer_token_major_and_distinct_keys_are_looked_up_once():
    # 3 prefill tokens, 2 layers, k=2; then one decode token
    tokens = [[[0, 1], [2, 3]], [[1, 0], [3, 4]], [[0, 5], [2, 6]], [[5, 1], [4, 3]]]
    trace = make_trace([tokens], 8, phase=[[0, 0, 0, 1]])
    stream = build_stream(trace)
    batches = [stream.keys[a:b].tolist() for a, b in zip(stream.batch_start[:-1], stream.batch_start[1:])]
    assert batches == [[0, 1, 1, 0, 0, 5], [10, 11, 11, 12, 10, 14], [5, 1], [12, 11]]
    assert stream.batch_phase.tolist() == [0, 0, 1, 1]
    r = simulate(trace, "lru", budget_slots=100)
    assert per_batch(r) == [(0, 3), (0, 4), (2, 0), (2, 0)]
    assert (r.lookups, r.decode_lookups, r.decode_hits) == (11, 4, 4)


def test_repeat_in_batch_refreshes_recency():
    # prefill batch [A, B, A] makes B the least recent; a budget of 2 then evicts B, not A.
    trace = make_trace([[[[0]], [[1]], [[0]], [[2]], [[0]], [[1]]]], 4, phase=[[0, 0, 0, 1, 1, 1]])
    r = simulate(trace, "lru", budget_slots=2)
    # [0,1,0] -> 2 misses; [2] miss, evicts 1 (older than the repeated 0); [0] hit; [1] miss
    assert per_batch(r) == [(0, 2), (0, 1), (1, 0), (0, 1)]


def test_admission_at_end_of_batch_lets_a_batch_exceed_the_budget():
    # budget 1 slot; batch [0, 1] admits both (both in flight, over budget); [0, 2]: 0 hits,
    # then 1 (not in flight) is evicted and {0, 2} stay over budget; [1, 0]: 1 misses, 0 hits.
    trace = make_trace([[[[0, 1]], [[0, 2]], [[1, 0]]]], 4, phase=[[1, 1, 1]])
    r = simulate(trace, "lru", budget_slots=1)
    assert per_batch(r) == [(0, 2), (1, 1), (1, 1)]


def test_in_flight_experts_are_never_evicted():
    # FIFO would evict 0 (admitted first), but batch 3 uses 0: expert 1 goes instead.
    trace = make_trace([[[[0, 1]], [[0, 2]], [[0, 3]], [[1, 0]]]], 8)
    r = simulate(trace, "fifo", budget_slots=2)
    # after b0: {0,1}; b1 [0,2]: 2 misses, over by 1: FIFO order 0,1,2 -> 0 busy -> evict 1
    # b2 [0,3]: 0 hit, 3 miss -> evict 2 (0 busy); b3 [1,0]: 1 miss, 0 hit
    assert per_batch(r) == [(0, 2), (1, 1), (1, 1), (1, 1)]


def test_byte_budget_with_differing_sizes():
    # layer 0 experts cost 3 bytes, layer 1 experts 1 byte; budget 5 bytes global, k=1.
    tokens = [[[0], [0]], [[1], [0]], [[0], [1]], [[1], [1]]]
    trace = decode_trace(tokens, 2, expert_bytes=(3, 1))
    r = simulate(trace, "lru", budget_mib=5 / 2**20)
    assert r.budget_bytes == 5
    # t0: L0e0 (3) miss, L1e0 (1) miss -> 4 bytes
    # t1: L0e1 miss -> 7 > 5 -> evict LRU L0e0 -> 4; L1e0 hit
    # t2: L0e0 miss -> 7 -> evict LRU: L1e0 (used t1,l1) vs L0e1 (t1,l0): L0e1 older -> 4; L1e1 miss -> 5 ok
    # t3: L0e1 miss -> 8 -> evict L1e0 (1) -> 7 still > 5 -> evict L0e0 (3)... L0e0 used t2 l0, L1e1 t2 l1
    #     -> L0e0 is older -> 4; L1e1 hit
    assert per_batch(r) == [(0, 1), (0, 1), (0, 1), (1, 0), (0, 1), (0, 1), (0, 1), (1, 0)]
    assert r.bytes_read == 3 * 4 + 1 * 2


def test_per_layer_equal_shares_floor_budget_over_layers():
    # budget 5 slots over 2 layers -> 2 slots each; layer 0 cycles 3 experts (LRU: no hits),
    # layer 1 cycles 2 (all hits after the cold misses), which a global cache would mix.
    tokens = [[[e0], [e1]] for e0, e1 in zip([0, 1, 2, 0, 1, 2], [0, 1, 0, 1, 0, 1])]
    trace = decode_trace(tokens, 4)
    layer = simulate(trace, "lru", scope="layer", budget_slots=5).per_layer()
    assert layer["hits"].tolist() == [0, 4]
    assert simulate(trace, "lru", scope="global", budget_slots=5).hits == 4 + 3
    assert simulate(trace, "layer-lru", budget_slots=5).per_layer()["hits"].tolist() == [0, 4]
    assert simulate(trace, "layer-lru", scope="layer", budget_slots=5).hits == 4
    with pytest.raises(ExpertcacheError, match="layer-lru is per-layer; drop the global scope"):
        simulate(trace, "layer-lru", scope="global", budget_slots=5)  # ran per layer, silently


def test_per_layer_byte_shares():
    tokens = [[[0], [0]], [[1], [1]], [[0], [0]]]
    trace = decode_trace(tokens, 2, expert_bytes=(3, 1))
    # 7 bytes / 2 layers = 3 each: layer 0 holds one 3-byte expert, layer 1 holds both 1-byte ones
    r = simulate(trace, "lru", scope="layer", budget_mib=7 / 2**20)
    assert r.per_layer()["hits"].tolist() == [0, 1]
    # proportional shares: 7 * 3/4 = 5 and 7 * 1/4 = 1 -> layer 0 holds one (5 < 6), layer 1 one
    r = simulate(trace, "lru", scope="layer", budget_mib=7 / 2**20, shares="bytes")
    assert r.per_layer()["hits"].tolist() == [0, 0]
    assert simulate(trace, "layer-lru", budget_mib=7 / 2**20, shares="bytes").hits == r.hits  # scope from the name


def test_lfu_counts_persist_after_eviction_and_ties_go_to_lru():
    # k=1, 1 layer, budget 2. Sequence: 0 0 1 2 1 3 0 ...
    keys = [0, 0, 1, 2, 1, 3, 0, 2]
    trace = decode_trace([[[e]] for e in keys], 4)
    r = simulate(trace, "lfu", budget_slots=2)
    # t0 0 miss c0=1; t1 0 hit c0=2; t2 1 miss c1=1 {0,1}; t3 2 miss c2=1 -> evict min count: 1 (c=1, older than 2)
    # t4 1 miss c1=2 -> {0:2, 2:1, 1:2} evict 2; t5 3 miss c3=1 -> evict among 0(2),1(2),3 busy -> tie 0 vs 1:
    #   0 last used t1, 1 at t4 -> evict 0; t6 0 miss c0=3 (count kept) -> evict 3 (c=1);
    # t7 2 miss c2=2 -> {1:2, 0:3, 2 busy} evict 1.
    assert r.batch_misses.tolist() == [1, 0, 1, 1, 1, 1, 1, 1]
    # had counts been reset on eviction, t7 would evict 0 (count 1 since re-admission) instead of 1


def test_belady_looks_ahead_in_batches():
    # budget 2, k=2 batches. After [0,1] comes [2,0]: 1 is used again only in the last batch,
    # 0 in the next -> evict 1. A per-request MIN would treat the batch's order differently.
    trace = make_trace([[[[0, 1]], [[2, 0]], [[0, 2]], [[1, 2]]]], 4)
    r = simulate(trace, "belady", budget_slots=2)
    assert per_batch(r) == [(0, 2), (1, 1), (2, 0), (1, 1)]
    assert simulate(trace, "lru", budget_slots=2).hits <= r.hits


def test_trace_without_phase_replays_as_decode():
    trace = decode_trace([[[0, 1]], [[1, 2]]], 4)
    r = simulate(trace, "lru", budget_slots=4)
    assert (r.decode_lookups, r.decode_hits) == (4, 1)


def test_budget_as_multiple_of_active_experts():
    trace = decode_trace([[[0, 1], [0, 1]]], 4, expert_bytes=(10, 20))
    assert simulate(trace, "lru", budget_x=2).budget_bytes == 2 * 2 * 30
    slots_only = decode_trace([[[0, 1], [0, 1]]], 4)
    r = simulate(slots_only, "lru", budget_x=1.5)
    assert (r.budget_bytes, r.budget_slots, r.bytes_read) == (None, 6, None)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one budget"),
    ({"budget_slots": 2, "budget_x": 1}, "exactly one budget"),
    ({"budget_mib": 1}, "no expert sizes"),
    ({"budget_slots": 0}, "positive"),
    ({"budget_x": float("nan")}, "positive"),
    ({"budget_x": float("inf")}, "positive"),
    ({"budget_slots": 2, "scope": "tile"}, "scope"),
    ({"budget_slots": 2, "policy": "lrux"}, "unknown policy"),
    ({"budget_slots": 2, "policy": None}, "policy name or a policy object"),
    ({"budget_x": "2"}, "must be a number, got '2'"),
    ({"budget_slots": True}, "must be a number"),
    ({"budget_slots": 4.7}, "whole experts, got 4.7"),
    ({"budget_slots": 2**62}, "beyond any machine"),
    ({"budget_x": 1e300}, "beyond any machine"),
])
def test_user_mistakes_raise_one_line_errors(kwargs, message):
    trace = decode_trace([[[0]]], 2)
    kwargs = {"policy": "lru", **kwargs}
    with pytest.raises(ExpertcacheError, match=message) as info:
        simulate(trace, **kwargs)
    assert "\n" not in str(info.value)


def test_breakdowns_add_up():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 6, (20, 3, 2))
    tokens[:, :, 1] = (tokens[:, :, 0] + 1) % 6
    trace = make_trace([tokens], 6, phase=[[0] * 5 + [1] * 15])
    r = simulate(trace, "lru", budget_slots=7)
    for part in (r.per_layer(), r.per_phase(), r.per_step()):
        assert part["lookups"].sum() == r.lookups and part["hits"].sum() == r.hits
    assert r.per_phase()["lookups"][1] == r.decode_lookups == 15 * 3 * 2


def test_decode_fast_path_equals_the_general_stream_builder(distinct_ids):
    from expertcache.cache.stream import _batched

    trace = make_trace([distinct_ids((7, 3, 2), 5), distinct_ids((4, 3, 2), 5)], 5)
    fast = build_stream(trace)
    general = _batched(np.asarray(trace.experts), np.asarray(trace.phase), trace.seq_offsets[:-1], trace.pad_id,
                       fast.key_offset)
    for name in ("keys", "batch_start", "batch_layer", "batch_phase", "batch_token"):
        assert np.array_equal(getattr(fast, name), getattr(general, name)), name
