"""Hit-rate curves (SPEC §2) against hand-worked cases and the brute-force reference."""

import numpy as np
import pytest

from expertcache import ExpertcacheError, Trace
from expertcache.locality import curves

from . import reference
from .helpers import assert_curves_match_reference, random_trace


def one_layer(tokens, num_experts, domains=None):
    """A trace with one sequence per item of `tokens`, one layer, each token a list of experts."""
    return Trace.from_arrays([np.array(seq)[:, None, :] for seq in tokens], num_experts, domains=domains)


def random_stream(rng, n_ids, K, T, concentration, empty_token=False):
    """One sequence's request stream: T tokens of K distinct ids drawn with Dirichlet popularity
    (small concentration: skewed), two repeats inside tokens, optionally a token without
    requests. Returns (ids int32, token offsets int64)."""
    popularity = rng.dirichlet(np.full(n_ids, concentration))
    ids = np.concatenate([rng.choice(n_ids, K, replace=False, p=0.9 * popularity + 0.1 / n_ids)
                          for _ in range(T)]).astype(np.int32)
    if len(ids) > 8:
        ids[1], ids[7] = ids[0], ids[5]
    tok = np.arange(0, T * K + 1, K, dtype=np.int64)
    if empty_token and T > 3:
        tok = np.sort(np.concatenate([tok, tok[2:3]]))
    return ids, tok


@pytest.mark.parametrize("policy,m,sequence,num_experts,expected", [
    # First uses hit while empty slots remain: C=1 keeps only expert 0's first use.
    ("lru", None, [[0, 1], [2, 0]], 4, [1 / 4, 3 / 4, 1, 1]),
    # Expert 0, admitted for token 0, is evicted by expert 1 of the same token at C=1.
    ("lru", None, [[0, 1], [1, 2]], 3, [2 / 4, 3 / 4, 1]),
    # k = E: every token asks for all experts.
    ("lru", None, [[0, 1, 2], [0, 1, 2]], 3, [1 / 3, 2 / 3, 1]),
    ("belady", None, [[0, 1, 2], [0, 1, 2]], 3, [1 / 3, 2 / 3, 1]),
    # FSF(2): when expert 2 is admitted at token 1, expert 0's request of that token is
    # already applied and no longer counts, so 0 (nothing pending) goes, not 1.
    ("fsf", 2, [[1, 0], [0, 2], [1, 2]], 3, [3 / 6, 5 / 6, 1]),
    # LFU keeps the frequent expert 0 over the recent expert 1.
    ("lfu", None, [[0], [0], [1], [2], [0]], 3, [2 / 5, 4 / 5, 1]),
    ("lru", None, [[0], [0], [1], [2], [0]], 3, [2 / 5, 3 / 5, 1]),
    # Belady evicts the expert used furthest in the future.
    ("belady", None, [[0], [1], [2], [0], [1]], 3, [1 / 5, 3 / 5, 1]),
    # A single token.
    ("fsf", 4, [[2, 0]], 3, [1 / 2, 1, 1]),
])
def test_hand_worked(policy, m, sequence, num_experts, expected):
    result = curves(one_layer([sequence], num_experts), policy, m)
    np.testing.assert_allclose(result.per_layer[0], expected, atol=1e-12)
    np.testing.assert_allclose(result.model_level, expected, atol=1e-12)
    assert reference.hit_rates([sequence], num_experts, policy, m) == pytest.approx(expected)


def test_sequences_start_afresh_and_pool():
    # Two copies of a sequence pool to the single sequence's rate; no carry-over between them.
    seq = [[0], [1], [0], [2]]
    once = curves(one_layer([seq], 3), "lru")
    twice = curves(one_layer([seq, seq], 3), "lru")
    np.testing.assert_allclose(once.per_layer, twice.per_layer)


@pytest.mark.parametrize("policy,m", [("lru", None), ("lfu", None), ("belady", None), ("fsf", 1), ("fsf", 3), ("fsf", 40)])
@pytest.mark.parametrize("seed", range(6))
def test_random_traces_match_reference(policy, m, seed):
    rng = np.random.default_rng([seed, len(policy), m or 0])
    trace = random_trace(rng, pad_share=0.15 if seed % 2 else 0.0, skew=seed % 3 != 0)
    fast = assert_curves_match_reference(trace, policy, m)
    assert fast.per_layer.shape == (trace.num_moe_layers, trace.num_experts)
    assert fast.model_level.shape == (trace.num_moe_layers * trace.num_experts,)


def test_many_experts_long_sequences_match_reference():
    rng = np.random.default_rng(7)
    trace = random_trace(rng, sequences=(2, 2), tokens=(30, 40), layers=(2, 2), experts=(12, 12), k=3)
    for policy, m in (("lru", None), ("lfu", None), ("belady", None), ("fsf", 4)):
        assert_curves_match_reference(trace, policy, m)


def test_fsf_window_longer_than_every_sequence():
    trace = random_trace(np.random.default_rng(8), sequences=(3, 3), tokens=(3, 9))
    longest = int(trace.seq_lengths.max())
    fast = assert_curves_match_reference(trace, "fsf", longest + 3)
    huge = curves(trace, "fsf", 10**30)
    np.testing.assert_array_equal(huge.per_layer, fast.per_layer)
    np.testing.assert_array_equal(huge.model_level, fast.model_level)
    assert huge.m == 10**30


def test_domains_pool_separately():
    rng = np.random.default_rng(3)
    trace = random_trace(rng, sequences=(4, 4), domains=("code", "prose", "math"))
    for domain in trace.domains:
        assert_curves_match_reference(trace, "fsf", 2, domain=domain)


def test_never_used_expert_and_full_cache():
    result = curves(one_layer([[[0, 1], [1, 2], [0, 2]]], 5), "lfu")
    assert result.per_layer[0, 2:].tolist() == [1.0, 1.0, 1.0]  # C >= distinct experts used: all hit


def test_to_json_contract():
    out = curves(one_layer([[[0, 1], [2, 0]]], 4), "fsf", 2).to_json()
    assert set(out) == {"policy", "m", "num_experts", "per_layer", "model_level"}
    assert out["policy"] == "fsf" and out["m"] == 2 and out["num_experts"] == 4
    assert len(out["per_layer"]) == 1 and len(out["per_layer"][0]) == 4 and len(out["model_level"]) == 4


@pytest.mark.parametrize("kwargs,message", [
    ({"policy": "arc"}, "unknown policy"),
    ({"policy": "fsf"}, "needs a segment length"),
    ({"policy": "fsf", "m": 0}, "m must be an integer >= 1"),
    ({"policy": "lru", "m": 4}, "applies only to fsf"),
    ({"policy": "lru", "domain": "nope"}, "no domain 'nope'"),
])
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ExpertcacheError, match=message):
        curves(one_layer([[[0, 1]]], 2), **kwargs)


@pytest.mark.parametrize("policy,m", [("lru", None), ("lfu", None), ("belady", None), ("fsf", 3)])
def test_one_pass_python_baseline_matches_brute_force(policy, m):
    # The benchmark's speed baseline must compute the same thing.
    rng = np.random.default_rng(4)
    tokens = [list(rng.choice(7, 3, replace=False)) for _ in range(25)]
    hits, total = reference.hit_counts_one_pass(tokens, 7, policy, m)
    np.testing.assert_allclose(hits / total, reference.hit_rates([tokens], 7, policy, m), atol=1e-12)


def test_layers_with_different_expert_counts():
    from expertcache import ModelInfo

    rng = np.random.default_rng(12)
    model = ModelInfo(name="mixed", architecture="test", num_layers=3, moe_layers=(0, 2), num_experts=(3, 6), top_k=2)
    seqs = [np.stack([np.stack([rng.choice(3, 2, replace=False), rng.choice(6, 2, replace=False)]) for _ in range(T)])
            for T in (9, 5)]
    trace = Trace.from_arrays(seqs, model=model)
    for policy, m in (("lru", None), ("fsf", 2)):
        fast = assert_curves_match_reference(trace, policy, m)
    assert fast.per_layer.shape == (2, 6) and fast.model_level.shape == (9,)


def test_lru_fenwick_count_front_and_scan_agree():
    # LRU counts up to LRU_COUNT_MAX_IDS ids; beyond (model level), it moves each token's ids to
    # the front, or uses a Fenwick tree where ids per request are many. All against the reference.
    from expertcache.locality import _stack

    rng = np.random.default_rng(13)
    for n_ids, T, K in ((5, 30, 2), (400, 120, 30), (300, 60, 1)):
        ids = np.concatenate([rng.choice(n_ids, K, replace=False) for _ in range(T)]).astype(np.int32)
        ids[5], ids[10 * K + 3] = ids[4], ids[10 * K + 2]  # repeats inside a token (at K = 1, of the one before)
        tok = np.arange(0, T * K + 1, K, dtype=np.int64)
        expected = reference.hit_counts_one_pass([ids[t * K:(t + 1) * K].tolist() for t in range(T)], n_ids, "lru")[0]
        scan, chosen = np.zeros(n_ids + 2, np.int64), np.zeros(n_ids + 2, np.int64)
        _stack.priority_hist(ids, tok, n_ids, _stack.LRU, 1, scan, n_ids)
        _stack.sequence_hist(ids, tok, n_ids, _stack.LRU, 1, chosen, n_ids)
        np.testing.assert_array_equal(np.cumsum(scan[1:n_ids + 1]), expected)
        np.testing.assert_array_equal(chosen, scan)
        for count in (True, False):
            hist = np.zeros(n_ids + 2, np.int64)
            _stack.lru_hist(ids, tok, n_ids, hist, count)
            np.testing.assert_array_equal(hist, scan)
        front = np.zeros(n_ids + 2, np.int64)
        _stack.lru_front_hist(ids, tok, n_ids, front)
        np.testing.assert_array_equal(front, scan)


@pytest.mark.parametrize("policy,m", [("lru", None), ("lfu", None), ("belady", None), ("fsf", 1), ("fsf", 3)])
@pytest.mark.parametrize("seed", range(4))
def test_capped_model_level_matches_reference_up_to_the_cap(policy, m, seed):
    rng = np.random.default_rng([seed, 99, len(policy)])
    trace = random_trace(rng, sequences=(1, 3), tokens=(5, 14), layers=(2, 3), experts=(4, 8), pad_share=0.1 * (seed % 2))
    per_layer, model = reference.trace_curves(trace, policy, m)
    active = trace.num_moe_layers * trace.top_k
    for multiple in (0.5, 1, 1.5, 1e9):
        cap = min(len(model), max(1, int(multiple * active)))
        fast = curves(trace, policy, m, max_multiple=multiple)
        np.testing.assert_allclose(fast.per_layer, per_layer, atol=1e-9, rtol=0)
        np.testing.assert_allclose(fast.model_level[:cap], model[:cap], atol=1e-9, rtol=0)
        assert np.isnan(fast.model_level[cap:]).all()


def test_capped_priority_stack_counts_deeper_requests_as_misses():
    # One sequence cycling through 6 ids, cap 2: every repeat lies deeper than the cap.
    from expertcache.locality import _stack

    ids = np.tile(np.arange(6, dtype=np.int32), 3)
    tok = np.arange(len(ids) + 1, dtype=np.int64)
    for code in (_stack.LFU, _stack.BELADY, _stack.FSF):
        full, capped = np.zeros(8, np.int64), np.zeros(8, np.int64)
        _stack.priority_hist(ids, tok, 6, code, 2, full, 6)
        _stack.priority_hist(ids, tok, 6, code, 2, capped, 2)
        np.testing.assert_array_equal(np.cumsum(capped[1:3]), np.cumsum(full[1:3]))


def test_invalid_max_multiple():
    with pytest.raises(ExpertcacheError, match="max_multiple"):
        curves(one_layer([[[0, 1]]], 2), "lru", max_multiple=0)
    with pytest.raises(ExpertcacheError, match="max_multiple 0.4 x 2 active experts is less than one expert"):
        curves(one_layer([[[0, 1]]], 2), "lru", max_multiple=0.4)  # was silently a cap of 1
    assert curves(one_layer([[[0, 1]]], 2), "lru", max_multiple=0.5).model_level.shape == (2,)


@pytest.mark.parametrize("code", ["lfu", "belady", "fsf"])
def test_segment_kernel_equals_the_scan_on_random_streams(code):
    # Every size, caps, repeats inside a token, the scan with and without the record branch
    # (one entry or 8 keys at a time),
    # FSF's skip to idle entries (FSF has no segment kernel), LFU's use-count classes; the scan
    # is itself checked against the brute-force reference above.
    from expertcache.locality import _stack

    policy = _stack.POLICY_CODES[code]
    rng = np.random.default_rng([5, policy])
    for trial in range(600):
        n_ids = int(rng.integers(2, 40))
        K, T = int(rng.integers(1, min(n_ids, 4) + 1)), int(rng.integers(1, 60))
        popularity = rng.dirichlet(np.full(n_ids, 0.3 if trial % 2 else 3.0))  # skewed or near uniform
        popularity = 0.9 * popularity + 0.1 / n_ids
        ids = np.concatenate([rng.choice(n_ids, K, replace=False, p=popularity) for _ in range(T)]).astype(np.int32)
        if trial % 3 == 0 and len(ids) > 2:
            ids[1] = ids[0]  # a repeat inside one token
        tok = np.arange(0, T * K + 1, K, dtype=np.int64)
        cap = n_ids if trial % 2 else int(rng.integers(1, n_ids + 1))
        m = int(rng.integers(1, 8))
        scan = np.zeros(n_ids + 2, np.int64)
        _stack.priority_hist(ids, tok, n_ids, policy, m, scan, cap)
        for how in (_stack.SELECT, _stack.LANES):
            other = np.zeros(n_ids + 2, np.int64)
            _stack.priority_hist(ids, tok, n_ids, policy, m, other, cap, how)
            np.testing.assert_array_equal(other, scan, err_msg=f"scan {how}: {ids.tolist()} k={K} cap={cap} m={m}")
        if code == "fsf":  # the kernel that skips to the idle entries
            idle = np.zeros(n_ids + 2, np.int64)
            _stack.fsf_hist(ids, tok, n_ids, m, idle, cap)
            np.testing.assert_array_equal(idle, scan, err_msg=f"{ids.tolist()} k={K} cap={cap} m={m}")
        if code != "fsf":
            runs = np.zeros(n_ids + 2, np.int64)
            _stack.segment_hist(ids, tok, n_ids, policy, runs, cap)
            np.testing.assert_array_equal(runs, scan, err_msg=f"{ids.tolist()} k={K} cap={cap} m={m}")
        if code == "lfu":
            classes = np.zeros(n_ids + 2, np.int64)
            _stack.lfu_class_hist(ids, tok, n_ids, classes, cap)
            np.testing.assert_array_equal(classes, scan, err_msg=f"{ids.tolist()} k={K} cap={cap}")


def test_lfu_classes_equal_the_scan_across_bitset_blocks():
    # lfu_class_hist counts set bits per 512: stacks of up to 1 500 ids and classes that up to
    # 1 500 experts join span several blocks; caps, from 1 to every size, make the oldest member
    # of a class fall below the cap; repeats inside a token; tokens without requests.
    from expertcache.locality import _stack

    rng = np.random.default_rng(12)
    for trial in range(300):
        n_ids = int(rng.integers(2, 1500)) if trial % 3 else int(rng.integers(2, 80))
        K, T = int(rng.integers(1, min(n_ids, 9) + 1)), int(rng.integers(1, 400))
        ids, tok = random_stream(rng, n_ids, K, T, 0.1 if trial % 2 else 2.0, empty_token=trial % 4 == 0)
        cap = n_ids if trial % 2 else int(rng.integers(1, n_ids + 1))
        scan, classes = np.zeros(n_ids + 2, np.int64), np.zeros(n_ids + 2, np.int64)
        _stack.priority_hist(ids, tok, n_ids, _stack.LFU, 1, scan, cap)
        _stack.lfu_class_hist(ids, tok, n_ids, classes, cap)
        np.testing.assert_array_equal(classes, scan, err_msg=f"trial {trial}: n={n_ids} k={K} T={T} cap={cap}")


@pytest.mark.parametrize("n_ids, cap, tokens, requests, segments, classes", [
    (58 * 256, 58 * 256, 512, 512 * 58 * 8, True, True),  # model level of a 58 x 256, k = 8 model: 14 848 x 32
    (16 * 64, 16 * 64, 512, 512 * 16 * 8, True, False),  # 16 x 64, k = 8: 1 024 x 8 = 2^13
    (7000, 572, 10, 1000, True, True),  # 100 requests per token; 572 sizes x 70 ids per request = 40 040
    (7000, 571, 10, 1000, True, False),  # one size fewer: 39 970
    (4096, 4096, 512, 512 * 256, True, True),  # 4 096 keys at E / k = 16: 65 536
    (8 * 256, 8 * 256, 100, 100 * 64, True, True),  # 8 x 256 at k = 8: 64 requests per token, 2 048 x 32
    (8 * 256, 1000, 100, 100 * 64, True, False),  # capped at 1 000 sizes: 32 000
    (4 * 256, 4 * 256, 100, 100 * 32, False, False),  # 4 x 256 at k = 8: 32, the scan
    (512, 512, 100, 100, False, False),  # one layer of 512 experts, k = 1 (512 x 512): the scan
    (256, 256, 100, 100 * 64, False, False),  # 256 ids: the scan, whatever the rest
])
def test_lfu_moves_runs_or_classes_from_64_requests_per_token_and_classes_from_40_000(
        n_ids, cap, tokens, requests, segments, classes):
    from expertcache.locality import _stack

    assert _stack.lfu_takes_segments(n_ids, tokens, requests) is segments
    assert _stack.lfu_takes_classes(n_ids, cap, tokens, requests) is classes


def test_fsf_skipping_to_idle_entries_equals_the_scan_across_bitset_words():
    # fsf_hist keeps idle depths in 64-bit words: stacks of 60-200 ids span several, with caps,
    # repeats inside a token, tokens without requests, windows from 1 to 19 tokens.
    from expertcache.locality import _stack

    rng = np.random.default_rng(77)
    for trial in range(300):
        n_ids = int(rng.integers(60, 200))
        K, T = int(rng.integers(1, 7)), int(rng.integers(1, 80))
        ids, tok = random_stream(rng, n_ids, K, T, 0.3 if trial % 2 else 3.0, empty_token=trial % 4 == 0)
        cap = n_ids if trial % 2 else int(rng.integers(1, n_ids + 1))
        m = int(rng.integers(1, 20))
        scan, idle = np.zeros(n_ids + 2, np.int64), np.zeros(n_ids + 2, np.int64)
        _stack.priority_hist(ids, tok, n_ids, _stack.FSF, m, scan, cap)
        _stack.fsf_hist(ids, tok, n_ids, m, idle, cap)
        np.testing.assert_array_equal(idle, scan, err_msg=f"trial {trial}: n={n_ids} k={K} cap={cap} m={m}")


@pytest.mark.parametrize("layers, top_k, max_multiple", [(17, 4, None), (33, 2, None), (33, 2, 125), (17, 4, 9),
                                                         (9, 8, None), (9, 16, None),
                                                         (4, 8, None)])
def test_model_level_curves_where_segments_serve_them_match_single_size_simulations(layers, top_k, max_multiple):
    # 17 x 256 = 4 352 keys: Belady takes segment_hist, and LFU too with a cap of 9 x 68 = 612
    # (sizes x ids per request, 612 x 64, below 40 000); LFU keeps use-count classes (lfu_class_hist) at
    # 64 requests per token or more (k = 8, 4 and 2), every size or a cap of 125 x 66 = 8 250 of
    # 8 448 keys (the random-stream tests cover experts falling below a cap). LRU moves each
    # token's ids to the front at k = 16 (E / k = 16; at 32, 64 and 128, the Fenwick tree).
    # 4 x 256 = 1 024 keys at k = 8 (32 requests per token): LFU and Belady scan, FSF skips to
    # its idle entries (fsf_hist).
    from expertcache.locality import _stack

    rng = np.random.default_rng(layers)
    popularity = rng.dirichlet(np.full(256, 0.2))
    seqs = [np.array([[rng.choice(256, top_k, replace=False, p=popularity) for _ in range(layers)] for _ in range(T)])
            for T in (45, 30)]
    trace = Trace.from_arrays(seqs, 256)
    keys = layers * 256
    assert keys > _stack.LFU_SEGMENTS_MIN_IDS and (keys > _stack.BELADY_SEGMENTS_MIN_IDS or layers == 4)
    streams = [reference.model_tokens(s, trace.model.num_experts) for s in reference.sequences(trace)]
    cap = keys if max_multiple is None else max_multiple * layers * top_k
    for policy, m in (("lfu", None), ("belady", None), ("lru", None), ("fsf", 3)):
        fast = curves(trace, policy, m, max_multiple=max_multiple).model_level
        for size in (1, 3, layers * top_k, 200, cap):
            hits, requests = np.sum([reference.simulate(tokens, size, policy, m) for tokens in streams], axis=0)
            assert fast[size - 1] == pytest.approx(hits / requests, abs=1e-12), (policy, size)


def test_a_sequence_with_more_requests_than_keys_can_number_is_refused(monkeypatch):
    from expertcache.locality import _stack

    trace = one_layer([[[0, 1], [1, 2], [2, 3]]], 4)  # one sequence: 3 tokens x 1 layer x k = 2
    monkeypatch.setattr(_stack, "MAX_SEQUENCE_REQUESTS", 5)
    with pytest.raises(ExpertcacheError, match="a sequence of 6 expert requests .* more than the curves can number"):
        curves(trace, "lfu")
    monkeypatch.setattr(_stack, "MAX_SEQUENCE_REQUESTS", 6)
    assert curves(trace, "lfu").model_level.shape == (4,)
