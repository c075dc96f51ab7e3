"""Contract tests run on every registered policy, and a differential test of the compiled
loop against the plain reference engine (tests/cache/reference.py), request by request."""

import numpy as np
import pytest

from expertcache.cache import POLICIES, build_stream, simulate
from expertcache.cache.budget import resolve_budget
from expertcache.cache.engine import EVICTED, N_EVICTED, PIN, RESIDENT, WORK, engine_batch, new_engine, new_plan
from expertcache.cache.kernels import ANY, victim
from expertcache.cache.policies import LFUDecay, get_policy

from .helpers import make_trace
from .reference import reference_replay

ALL = sorted(POLICIES)


def random_trace(seed, S=2, T=12, L=3, K=2, E=6, sizes=(3, 1, 2)):
    rng = np.random.default_rng(seed)
    seqs, phases = [], []
    for _ in range(S):
        # skewed choice without repeats inside a token: locality like real routing
        tok = np.stack([[rng.choice(E, K, replace=False, p=np.arange(E, 0, -1) / (E * (E + 1) / 2))
                         for _ in range(L)] for _ in range(T)])
        seqs.append(tok)
        phases.append([0] * 3 + [1] * (T - 3))
    return make_trace(seqs, E, phase=phases, expert_bytes=sizes)


def drive_engine_per_call(trace, policy, accounting="published", **budget_kw):
    """What the runtime does: one engine step per layer call, from Python; victim() is asked
    before every eviction and must leave the policy state untouched."""
    stream = build_stream(trace)
    budget = resolve_budget(trace.model, stream.key_layer, **budget_kw)
    I, F = policy.new_state(budget, trace.num_moe_layers, stream)
    K = stream.num_keys
    X = new_engine(K, len(budget.pool_budget))
    plan = new_plan(int(np.diff(stream.batch_start).max()), K)
    hint, key_bytes = stream.next_use, np.zeros(K, np.int64)
    result = []
    for b in range(stream.num_batches):
        s, e = stream.batch_start[b], stream.batch_start[b + 1]
        pool = int(budget.key_pool[stream.keys[s]])
        before = (I.copy(), F.copy())
        v = victim(ANY, I, F, pool, X[PIN], b + 1, X[WORK])
        assert np.array_equal(I, before[0]) and np.array_equal(F, before[1]), "victim() changed the policy state"
        assert v == victim(ANY, I, F, pool, X[PIN], b + 1, X[WORK])
        assert v < 0 or (X[RESIDENT, v] and budget.key_pool[v] == pool)
        hits, misses, _, _ = engine_batch(ANY, I, F, X, stream.keys[s:e], 0, e - s, s, b,
                                          hint[s:e] if policy.uses_future else hint[:0], budget.key_cost, key_bytes,
                                          budget.pool_budget, accounting == "strict", 0, plan.rows, plan.counts)
        result.append((hits, misses))
        evicted = plan.rows[EVICTED, :plan.counts[N_EVICTED]]
        assert not X[RESIDENT, evicted].any()
    return result


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("accounting", ["published", "strict"])
def test_compiled_loop_equals_per_call_engine(name, scope, accounting):
    """The simulator's compiled loop (LRU's compiled with its kind as a constant, the others'
    reading it from the state) and a runtime-style per-call driver agree exactly;
    victim() is side-effect free, deterministic, and only offers evictable keys."""
    trace = random_trace(3)
    policy = get_policy(name)
    for slots in (4, 9):
        r = simulate(trace, policy, scope=scope, budget_slots=slots, accounting=accounting)
        assert list(zip(r.batch_hits.tolist(), r.batch_misses.tolist())) == \
            drive_engine_per_call(trace, policy, accounting, scope=scope, budget_slots=slots)


@pytest.mark.parametrize("name", ALL)
def test_contract(name):
    trace = random_trace(5)
    stream = build_stream(trace)
    distinct = sum(len(set(stream.keys[a:b].tolist())) for a, b in zip(stream.batch_start[:-1], stream.batch_start[1:]))
    small = simulate(trace, name, budget_slots=5, stream=stream)
    assert small.lookups == distinct
    again = simulate(trace, name, budget_slots=5, stream=stream)
    assert np.array_equal(small.batch_hits, again.batch_hits)  # deterministic
    unlimited = simulate(trace, name, budget_slots=10**6, stream=stream)
    assert unlimited.misses == len(np.unique(stream.keys))  # only cold misses
    assert 0 <= small.hits <= unlimited.hits


@pytest.mark.parametrize("name", [n for n in ALL if n != "random"])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_reference(name, scope, seed):
    trace = random_trace(seed)
    stream = build_stream(trace)
    budget = resolve_budget(trace.model, stream.key_layer, scope, budget_mib=11 / 2**20)
    batches = [stream.keys[a:b].tolist() for a, b in zip(stream.batch_start[:-1], stream.batch_start[1:])]
    half_life = LFUDecay().half_life * trace.num_moe_layers
    expected = reference_replay(batches, budget.key_pool.tolist(), budget.key_cost.tolist(), budget.pool_budget.tolist(),
                                name, half_life_batches=half_life, profile=stream.key_counts.tolist())
    r = simulate(trace, name, scope=scope, budget_mib=11 / 2**20, stream=stream)
    assert list(zip(r.batch_hits.tolist(), r.batch_misses.tolist())) == expected


@pytest.mark.parametrize("name", [n for n in ALL if n != "random"])
@pytest.mark.parametrize("accounting", ["published", "strict"])
def test_misses_computed_at_the_source_are_not_admitted(name, accounting):
    """cpu_below = 2: a miss one token of its batch uses (every decode miss) is computed where
    the weights live and never admitted; the plain reference says which, batch by batch."""
    trace = random_trace(1, T=16)
    stream = build_stream(trace)
    batches = [stream.keys[a:b].tolist() for a, b in zip(stream.batch_start[:-1], stream.batch_start[1:])]
    budget = resolve_budget(trace.model, stream.key_layer, "global", budget_slots=30)  # every batch fits
    half_life = LFUDecay().half_life * trace.num_moe_layers
    expected = reference_replay(batches, budget.key_pool.tolist(), budget.key_cost.tolist(), budget.pool_budget.tolist(),
                                name, half_life_batches=half_life, profile=stream.key_counts.tolist(), cpu_below=2)
    r = simulate(trace, name, budget_slots=30, stream=stream, accounting=accounting, misses_on_cpu_below=2)
    assert list(zip(r.batch_hits.tolist(), r.batch_misses.tolist())) == expected
    assert expected != reference_replay(batches, budget.key_pool.tolist(), budget.key_cost.tolist(),
                                        budget.pool_budget.tolist(), name, half_life_batches=half_life,
                                        profile=stream.key_counts.tolist())  # the rule changed something
    at_least_two = sum(1 for batch in batches for k in set(batch) if batch.count(k) >= 2)
    assert 0 < r.misses_on_cpu <= r.misses and r.misses - r.misses_on_cpu <= at_least_two
    never = simulate(trace, name, budget_slots=30, stream=stream, accounting=accounting, misses_on_cpu_below=10**9)
    assert (never.hits, never.bytes_read, never.misses_on_cpu) == (0, 0, never.lookups)  # nothing ever loaded


def test_random_is_seeded():
    trace = random_trace(4)
    a = simulate(trace, POLICIES["random"](seed=1), budget_slots=5)
    b = simulate(trace, POLICIES["random"](seed=1), budget_slots=5)
    assert np.array_equal(a.batch_hits, b.batch_hits)
    many = {simulate(trace, POLICIES["random"](seed=s), budget_slots=5).hits for s in range(8)}
    assert len(many) > 1  # the seed matters


def test_register_adds_a_named_policy():
    from expertcache.cache import register
    from expertcache.cache.policies import LFUDecay

    @register
    class SlowDecay(LFUDecay):
        name = "lfu-slow-decay"

    try:
        trace = random_trace(0)
        assert simulate(trace, "lfu-slow-decay", budget_slots=5).policy == "lfu-slow-decay"
    finally:
        POLICIES.pop("lfu-slow-decay")
