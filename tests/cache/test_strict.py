"""Strict capacity (SPEC §4b) against published accounting (§4): hand-worked cases, equality
where every batch fits, and a plain Python reference of §4b for LRU."""

import json

import numpy as np
import pytest

from expertcache.cache import POLICIES, PrefetchConfig, simulate

from .helpers import make_trace
from .test_cli import cli
from .test_golden import TRACE

PREFILL, DECODE = 0, 1


def per_batch(result):
    return list(zip(result.batch_hits.tolist(), result.batch_misses.tolist()))


# ------------------------------------------------------------------------ hand-worked cases
# One layer, E = 6, k = 2, LRU, a budget of 2 slots. A prefill pass of 2 tokens, [0, 1] and
# [2, 3], is one batch looking up 0, 1, 2, 3 (positions r0..r3): 4 misses under both rules.
#   published: all four are admitted at the batch end; all are in flight, none is evicted:
#              the pool holds {0, 1, 2, 3}, twice its budget.
#   strict:    load 0, load 1 (pool full); 2 has no room and nothing is unpinned: compute
#              {0, 1}, unpin them, evict the LRU one, 0, load 2; 3 has no room: 1 is unpinned
#              (computed) -> evict 1, load 3. The pool holds {2, 3}, never more than 2.
# Decode [0, 1] then shows the difference:
#   published: 2 hits; after it the pool is over budget, 2 and 3 (unused) go: {0, 1}.
#   strict:    2 misses; admitted {2, 3, 0, 1}, 2 and 3 evicted: {0, 1}.
# Decode [2, 3] instead hits twice under both (strict kept exactly {2, 3}).
# A last decode [0, 4]: both hold {0, 1} -> 0 hits, 4 misses; 1 (LRU) goes: equal again.
@pytest.mark.parametrize("first_decode, published, strict", [
    ([0, 1], [(0, 4), (2, 0), (1, 1)], [(0, 4), (0, 2), (1, 1)]),
    ([2, 3], [(0, 4), (2, 0), (0, 2)], [(0, 4), (2, 0), (0, 2)]),
])
def test_a_prefill_batch_larger_than_the_budget(first_decode, published, strict):
    tokens = [[[0, 1]], [[2, 3]], [first_decode], [[0, 4]]]  # [T, L=1, k=2]
    trace = make_trace([tokens], 6, phase=[[PREFILL, PREFILL, DECODE, DECODE]])
    p = simulate(trace, "lru", budget_slots=2)
    s = simulate(trace, "lru", budget_slots=2, accounting="strict")
    assert (p.accounting, s.accounting) == ("published", "strict")
    assert per_batch(p) == published
    assert per_batch(s) == strict


def test_a_hit_is_pinned_until_its_chunk_is_computed():
    # k = 1, budget 2. Sequence 1 decodes [5]. Sequence 2: a prefill pass [0], [5], [1], [2]
    # (one batch, 5 a hit), then decodes [5] and [0].
    #   strict, batch 1: resident {5}; load 0 -> {5, 0}; 1 has no room, nothing unpinned:
    #     compute {5, 0}, unpin; evict the LRU, 0 (r1; 5 was used at r2), load 1 -> {5, 1};
    #     2 has no room: 5 is unpinned -> evict it, load 2 -> {1, 2}.
    #     decode [5]: miss; {1, 2, 5} -> evict 1 -> {2, 5}. decode [0]: miss.
    #   published: batch 1 leaves {5, 0, 1, 2}; decode [5] hits, then 0, 1 go -> {5, 2};
    #     decode [0]: miss.
    tokens = [[[0]], [[5]], [[1]], [[2]], [[5]], [[0]]]
    trace = make_trace([[[[5]]], tokens], 6, phase=[[DECODE], [PREFILL] * 4 + [DECODE] * 2])
    assert per_batch(simulate(trace, "lru", budget_slots=2)) == [(0, 1), (1, 3), (1, 0), (0, 1)]
    assert per_batch(simulate(trace, "lru", budget_slots=2, accounting="strict")) == [(0, 1), (1, 3), (0, 1), (0, 1)]


def test_an_unknown_accounting_is_a_user_error():
    from expertcache import ExpertcacheError
    from expertcache.cache import recommend_budget, sweep

    trace = make_trace([[[[0, 1]]]], 4)
    for call in (lambda: simulate(trace, "lru", budget_slots=2, accounting="lazy"),
                 lambda: sweep(trace, ["lru"], [2], unit="slots", workers=1, accounting="lazy"),
                 lambda: recommend_budget(trace, accounting="lazy")):
        with pytest.raises(ExpertcacheError, match="unknown accounting"):
            call()


# --------------------------------------------------- where every batch fits, nothing differs
def decode_only_trace(seed, S=2, T=15, L=3, K=2, E=7):
    rng = np.random.default_rng(seed)
    p = np.arange(E, 0, -1) / (E * (E + 1) / 2)  # skewed: some reuse, some evictions
    seqs = [[[rng.choice(E, K, replace=False, p=p) for _ in range(L)] for _ in range(T)] for _ in range(S)]
    return make_trace(seqs, E, expert_bytes=(3, 1, 2))


PREFETCH = [None, ("previous", 0), ("previous", 2), ("frequency", 0), ("frequency", 3)]


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_strict_equals_published_when_every_batch_fits(name, scope):
    """Budgets of at least 2k slots per pool: a decode batch (k keys) plus the prefetches
    pinned for it (up to k, reserve 0) always fit, so §4b evicts exactly what §4 evicts."""
    K, L = 2, 3
    issued = dict.fromkeys(PREFETCH[1:], 0)
    for seed in range(3):
        trace = decode_only_trace(seed, L=L, K=K)
        for prefetch in PREFETCH:
            reserve = 0 if prefetch is None else prefetch[1]
            config = None if prefetch is None else PrefetchConfig.of(prefetch[0])
            config = None if config is None else PrefetchConfig(config.prefetcher, reserve=reserve)
            per_pool = 2 * K + seed  # seed 0 is exactly 2k
            slots = reserve + (per_pool if scope == "global" else L * per_pool)
            p, s = (simulate(trace, name, scope, budget_slots=slots, prefetch=config, accounting=a)
                    for a in ("published", "strict"))
            assert per_batch(s) == per_batch(p), (seed, prefetch)
            assert s.bytes_read == p.bytes_read and s.misses > 0
            assert (s.prefetch is None) == (p.prefetch is None)
            if p.prefetch is not None:
                issued[prefetch] += p.prefetch.issued
                assert json.dumps(s.prefetch.to_json()) == json.dumps(p.prefetch.to_json())
    # every prefetch setting was exercised, except "previous" per layer: a pool of 2k slots always
    # still holds the previous token's k experts of its layer, so nothing is ever issued
    assert all(n > 0 for (prefetcher, _), n in issued.items() if scope == "global" or prefetcher != "previous")


# --------------------------------------------- a plain reference of §4b for LRU (no engine)
def lookup_batches(sequences, phases, L):
    """SPEC §4 batches as lists of (layer, expert): per sequence, a run of prefill tokens gives one
    batch per layer (token-major), each decode token one batch per layer."""
    batches = []
    for tokens, phase in zip(sequences, phases):
        t = 0
        while t < len(tokens):
            if phase[t] == PREFILL:
                end = t
                while end < len(tokens) and phase[end] == PREFILL:
                    end += 1
                run = tokens[t:end]
                t = end
            else:
                run = tokens[t:t + 1]
                t += 1
            batches += [[(layer, e) for tok in run for e in tok[layer]] for layer in range(L)]
    return batches


def strict_lru_reference(batches, budget, scope, L):
    """SPEC §4b with LRU, request by request: returns per-batch (hits, misses).

    Lookups refresh last use (request position) for every request; misses are loaded in lookup
    order; before each load, while the pool is full, the least recent unpinned entry is evicted;
    when nothing is evictable, everything resolved so far is computed and unpinned."""
    share = budget if scope == "global" else budget // L
    assert share >= 1
    pool_of = (lambda key: 0) if scope == "global" else (lambda key: key[0])
    resident, last_use, counts, t = set(), {}, [], 0
    for requests in batches:
        pool = pool_of(requests[0])
        order = list(dict.fromkeys(requests))
        loads = [k for k in order if k not in resident]
        for k in requests:
            last_use[k] = t
            t += 1
        pinned = set(order)
        for i, k in enumerate(loads):
            in_pool = {v for v in resident if pool_of(v) == pool}
            while len(in_pool) >= share:
                evictable = in_pool - pinned
                if not evictable and pinned != set(loads[i:]):
                    pinned = set(loads[i:])  # compute every hit and loads[:i]; unpin them
                    evictable = in_pool - pinned
                v = min(evictable, key=last_use.__getitem__)
                resident.remove(v)
                in_pool.remove(v)
            resident.add(k)
            assert len(in_pool) + 1 <= share  # never over budget, not even inside a batch
        counts.append((len(order) - len(loads), len(loads)))
    return counts


def random_prefill_trace(seed, S=2, L=2, K=2, E=8):
    """Prompts of 3 to 7 tokens, a third of the routing drawn from 3 hot experts (repeats)."""
    rng = np.random.default_rng(seed)
    seqs, phases = [], []
    for _ in range(S):
        prompt, T = int(rng.integers(3, 8)), 12
        seqs.append([[rng.choice(E, K, replace=False) if rng.random() > 0.3 else rng.choice(3, K, replace=False)
                      for _ in range(L)] for _ in range(T)])
        phases.append([PREFILL] * prompt + [DECODE] * (T - prompt))
    return seqs, phases, make_trace(seqs, E, phase=phases)


L_REF = 2
BUDGETS = {"global": (1, 2, 3, 4, 5, 6), "layer": (2, 4, 6, 8)}  # per-layer shares 1 to 4


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_strict_lru_equals_a_plain_reference(scope):
    L = L_REF
    too_large = set()  # budgets where some batch did not fit (so chunks happened)
    for seed in range(12):
        seqs, phases, trace = random_prefill_trace(seed, L=L)
        batches = lookup_batches(seqs, phases, L)
        for budget in BUDGETS[scope]:
            expected = strict_lru_reference(batches, budget, scope, L)
            r = simulate(trace, "lru", scope, budget_slots=budget, accounting="strict")
            assert per_batch(r) == expected, (seed, budget)
            if max(len(set(b)) for b in batches) > budget // (L if scope == "layer" else 1):
                too_large.add(budget)
    assert too_large == set(BUDGETS[scope])


def test_spec_evicts_a_computed_entry_before_starting_a_new_chunk():
    # k = 1, budget 2. Sequence 1 decodes [0]. Sequence 2: a prefill pass [1], [2], [0], [3]
    # (one batch: 1, 2 misses, 0 a hit at r2, 3 a miss), then decodes [0] and [2].
    #   §4b: resident {0}; load 1 -> {0, 1}; 2: nothing unpinned -> compute {0, 1}, unpin, evict
    #   the LRU, 1 (r0), load 2 -> {0, 2}; 3: 0 is unpinned (computed) -> evict it, load 3 -> {2, 3}.
    #   decode [0]: miss, {2, 3, 0} -> evict 2 (r1); decode [2]: miss.
    #   Starting a new chunk at 3 instead would unpin 2 as well and evict it (r1 < r2): {0, 3},
    #   and decode [0] would hit.
    seqs = [[[[0]]], [[[1]], [[2]], [[0]], [[3]], [[0]], [[2]]]]
    phases = [[DECODE], [PREFILL] * 4 + [DECODE] * 2]
    expected = [(0, 1), (1, 3), (0, 1), (0, 1)]
    assert strict_lru_reference(lookup_batches(seqs, phases, 1), 2, "global", 1) == expected
    trace = make_trace(seqs, 6, phase=phases)
    assert per_batch(simulate(trace, "lru", budget_slots=2, accounting="strict")) == expected


# -------------------------------------------------------------------------------- the CLI flag
def test_cli_accounting_flag():
    p = cli("simulate", TRACE, "--budget-slots", 8, "--accounting", "strict", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["accounting"] == "strict"
    assert json.loads(cli("simulate", TRACE, "--budget-slots", 8, "--json").stdout)["accounting"] == "published"
    p = cli("simulate", TRACE, "--budget-slots", 8, "--accounting", "lazy")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["error: unknown accounting 'lazy'; choose published or strict"]


def test_cli_advise_and_sweep_carry_the_accounting(tmp_path):
    p = cli("advise", TRACE, "--accounting", "strict", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["accounting"] == "strict"
    p = cli("sweep", TRACE, "--out", tmp_path, "--budgets", "4,8", "--unit", "slots", "--workers", 1,
            "--accounting", "strict")
    assert p.returncode == 0, p.stderr
    header, *rows = (tmp_path / "sweep.csv").read_text().splitlines()
    column = header.split(",").index("accounting")
    assert [r.split(",")[column] for r in rows] == ["strict"] * 6
    for command in (["advise", TRACE], ["sweep", TRACE, "--out", tmp_path]):
        p = cli(*command, "--accounting", "lazy")
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


def test_strict_accounting_refuses_a_cache_smaller_than_one_expert():
    """Under strict capacity every expert is computed from the cache, so a pool must hold one."""
    from expertcache import ExpertcacheError, Trace

    trace = Trace.from_arrays([np.stack([np.zeros((5, 1)), np.ones((5, 1))], 1).astype(np.int64)], 4)
    with pytest.raises(ExpertcacheError, match="layer 0's cache holds 0 slots, less than one expert"):
        simulate(trace, "layer-lru", budget_slots=1, accounting="strict")  # 1 slot over 2 layers: 0 each
    assert simulate(trace, "lru", budget_slots=1, accounting="strict").hits == 0  # the layers take turns
    with pytest.raises(ExpertcacheError, match="holds nothing"):
        simulate(trace, "lru", budget_x=0.1)
