"""Contract tests run on every registered policy, and a differential test of the compiled
loop against the plain reference engine (tests/cache/reference.py), request by request."""

import numpy as np
import pytest

from expertcache.cache import POLICIES, build_stream, simulate
from expertcache.cache.budget import resolve_budget
from expertcache.cache.kernels import on_access, on_evict, on_insert, victim
from expertcache.cache.policies import LFUDecay, get_policy
from expertcache.cache.state import SCRATCH

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


def drive_kernels_per_call(trace, policy, **budget_kw):
    """What the runtime will do: call the policy kernels once per layer call from Python."""
    stream = build_stream(trace)
    budget = resolve_budget(trace.model, stream.key_layer, **budget_kw)
    state = policy.new_state(budget.key_pool, budget.key_cost, len(budget.pool_budget), stream)
    I, F = state
    K = stream.num_keys
    resident, busy, used = np.zeros(K, bool), np.full(K, -1, np.int64), np.zeros(len(budget.pool_budget), np.int64)
    hint = stream.next_use
    out = []
    for b in range(stream.num_batches):
        s, e = stream.batch_start[b], stream.batch_start[b + 1]
        seen, admit, hits = set(), [], 0
        for r in range(s, e):
            k = int(stream.keys[r])
            repeat = k in seen
            if not repeat:
                seen.add(k)
                busy[k] = b
                if resident[k]:
                    hits += 1
                else:
                    admit.append(k)
            on_access(I, F, k, r, b, int(hint[r]), repeat)
        pool = int(budget.key_pool[stream.keys[s]])
        for k in admit:
            resident[k] = True
            used[pool] += budget.key_cost[k]
            on_insert(I, F, k, e - 1, False)
        while used[pool] > budget.pool_budget[pool]:
            before = (np.delete(I, SCRATCH, axis=0), F.copy())
            v = victim(I, F, pool, busy, b)
            assert np.array_equal(np.delete(I, SCRATCH, axis=0), before[0]) and np.array_equal(F, before[1]), \
                "victim() changed the state (beyond its scratch row)"
            assert v == victim(I, F, pool, busy, b)
            if v < 0:
                break
            assert resident[v] and busy[v] < b and budget.key_pool[v] == pool
            resident[v] = False
            used[pool] -= budget.key_cost[v]
            on_evict(I, F, v)
        out.append((hits, len(admit)))
    return out


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_compiled_loop_equals_per_call_kernels(name, scope):
    """The simulator's one compiled loop and a runtime-style per-call driver agree exactly;
    victim() is side-effect free, deterministic, and only offers evictable keys."""
    trace = random_trace(3)
    policy = get_policy(name)
    for slots in (4, 9):
        r = simulate(trace, policy, scope=scope, budget_slots=slots)
        assert list(zip(r.batch_hits.tolist(), r.batch_misses.tolist())) == \
            drive_kernels_per_call(trace, policy, scope=scope, budget_slots=slots)


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
