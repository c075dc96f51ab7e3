"""Overlap, load balance and specialization against direct, loop-by-loop computations."""

import math

import numpy as np
import pytest

from expertcache import ExpertcacheError, Trace
from expertcache.locality import (consecutive_overlap, domain_specialization, global_balance, local_balance,
                                  vocabulary_specialization)
from expertcache.trace import PREFILL, DECODE

from . import reference
from .helpers import random_trace


def entropy_cv(counts, E):
    total = sum(counts)
    p = [c / total for c in counts if c]
    h = -sum(x * math.log(x) for x in p) / math.log(E) if E > 1 else 1.0
    mean = total / E
    return h, math.sqrt(sum((c - mean) ** 2 for c in counts) / E) / mean


@pytest.mark.parametrize("seed", range(4))
def test_balance_matches_direct(seed):
    trace = random_trace(np.random.default_rng([seed, 5]), pad_share=0.1, tokens=(3, 20))
    seqs = reference.sequences(trace)
    glob = global_balance(trace)
    local = local_balance(trace, (1, 3))
    for l, E in enumerate(trace.model.num_experts):
        loads = [0] * E
        for s in seqs:
            for e in s[:, l].ravel():
                if e >= 0:
                    loads[e] += 1
        if sum(loads):
            np.testing.assert_allclose(glob[l], entropy_cv(loads, E), atol=1e-9)
        for m in (1, 3):
            values = [entropy_cv(c, E) for s in seqs for c in reference.window_counts(s, l, m, E) if sum(c)]
            expected = np.mean(values, axis=0) if values else [np.nan, np.nan]
            np.testing.assert_allclose(local[m][l], expected, atol=1e-9)


def test_balance_extremes():
    even = Trace.from_arrays(np.tile(np.arange(4), (1, 8, 1, 1)), 4)  # k = E
    np.testing.assert_allclose(global_balance(even)[0], [1.0, 0.0])
    np.testing.assert_allclose(local_balance(even, (2,))[2][0], [1.0, 0.0])
    one = Trace.from_arrays(np.zeros((1, 8, 1, 1), int), 4)  # always expert 0
    np.testing.assert_allclose(global_balance(one)[0], [0.0, math.sqrt(3)])


@pytest.mark.parametrize("seed", range(4))
def test_overlap_matches_direct(seed):
    trace = random_trace(np.random.default_rng([seed, 6]), pad_share=0.2)
    shared = [0] * trace.num_moe_layers
    total = [0] * trace.num_moe_layers
    for s in reference.sequences(trace):
        for t in range(1, len(s)):
            for l in range(trace.num_moe_layers):
                prev, cur = {e for e in s[t - 1, l] if e >= 0}, [e for e in s[t, l] if e >= 0]
                if prev and cur:
                    shared[l] += sum(e in prev for e in cur)
                    total[l] += len(cur)
    model, layers = consecutive_overlap(trace)
    expected = [a / b if b else np.nan for a, b in zip(shared, total)]
    np.testing.assert_allclose(layers, expected, atol=1e-12)
    assert model == pytest.approx(sum(shared) / sum(total) if sum(total) else np.nan, nan_ok=True)


def test_vocabulary_specialization_by_hand():
    # Token 7 appears 20 times: 15 routed to expert 0, 5 to expert 1 -> share 0.75 on expert 0.
    # Token 9 appears 19 times: too rare. Next tokens shift by one position inside the sequence.
    tokens = np.array([7] * 20 + [9] * 19)
    experts = np.array([0] * 15 + [1] * 5 + [2] * 19)[:, None, None]
    phase = np.array([PREFILL] * 30 + [DECODE] * 9)
    trace = Trace.from_arrays([experts], 4, tokens=[tokens], phase=[phase])
    rows = {(r["kind"], r["expert"]): r for r in vocabulary_specialization(trace)}
    assert rows[("input", 0)]["tokens"] == 1 and rows[("input", 0)]["share"] == 0.75
    assert rows[("input", 2)]["tokens"] == 0 and math.isnan(rows[("input", 2)]["share"])
    assert rows[("input", -1)]["share"] == 0.75
    # next token of positions 0..18 is 7 (19 positions: too rare), of 19..37 is 9 (19): none frequent
    assert rows[("next", -1)]["tokens"] == 0
    # predicted: only positions whose next position is a decode token (29..37)
    assert rows[("predicted", -1)]["tokens"] == 0


def test_vocabulary_specialization_matches_direct():
    rng = np.random.default_rng(8)
    S, T, L, K, E = 3, 60, 2, 2, 6
    experts = np.stack([np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)]) for _ in range(T)])
                        for _ in range(S)])
    tokens = rng.integers(0, 4, (S, T))
    phase = np.where(np.arange(T) < 20, PREFILL, DECODE)[None].repeat(S, 0)
    trace = Trace.from_arrays(experts, E, tokens=tokens, phase=phase)
    rows = {(r["kind"], r["layer"], r["expert"]): r for r in vocabulary_specialization(trace)}
    for kind in ("input", "next", "predicted"):
        for l in range(L):
            counts = {}
            for s in range(S):
                for t in range(T):
                    if kind == "input":
                        v = tokens[s, t]
                    elif t + 1 >= T or (kind == "predicted" and phase[s, t + 1] != DECODE):
                        continue
                    else:
                        v = tokens[s, t + 1]
                    c = counts.setdefault(v, [0, [0] * E])
                    c[0] += 1
                    for e in experts[s, t, l]:
                        c[1][e] += 1
            shares = {e: [] for e in range(E)}
            for n, per_expert in counts.values():
                if n >= 20:
                    top = int(np.argmax(per_expert))
                    shares[top].append(per_expert[top] / n)
            for e in range(E):
                assert rows[(kind, l, e)]["tokens"] == len(shares[e])
                if shares[e]:
                    assert rows[(kind, l, e)]["share"] == pytest.approx(np.mean(shares[e]), abs=1e-12)


def test_domain_specialization():
    # Expert 0 serves only domain a, expert 1 both domains at the same rate.
    a = np.array([[[0, 1]]] * 4)
    b = np.array([[[2, 1]]] * 2)
    trace = Trace.from_arrays([a, b], 3, domains=["a", "b"])
    rate, spec = domain_specialization(trace)
    np.testing.assert_allclose(rate[0], [[1, 0], [1, 1], [0, 1]])
    np.testing.assert_allclose(spec[0], [1, 0, 1], atol=1e-12)
    single = Trace.from_arrays([a], 3)
    assert np.isnan(domain_specialization(single)[1]).all()


def test_domain_specialization_counts_only_domains_the_layer_routed_and_only_its_own_experts():
    from expertcache.trace import ModelInfo

    x = np.array([[[0], [1]], [[1], [1]]])  # layer 1 routes domain x only
    y = np.array([[[0], [-1]], [[2], [-1]]])
    rate, spec = domain_specialization(Trace.from_arrays([x, y], 3, domains=["x", "y"]))
    np.testing.assert_allclose(spec[0], [0, 1, 1], atol=1e-12)
    assert np.isnan(spec[1]).all()  # was [0, 1, nan]: "one domain only" of a layer that saw one domain
    model = ModelInfo(name="m", architecture="t", num_layers=2, moe_layers=(0, 1), num_experts=(4, 2), top_k=1)
    rate, spec = domain_specialization(Trace.from_arrays([np.array([[[0], [1]], [[3], [0]]]),
                                                          np.array([[[1], [0]], [[2], [1]]])], model=model,
                                                         domains=["x", "y"]))
    np.testing.assert_allclose(rate[1, :2], [[0.5, 0.5], [0.5, 0.5]])
    assert np.isnan(rate[1, 2:]).all() and np.isnan(spec[1, 2:]).all()  # layer 1 has no experts 2 and 3 (were 0.0)


@pytest.mark.parametrize("m", [0, -2, ()])
def test_local_balance_rejects_bad_segment_lengths(m):
    trace = random_trace(np.random.default_rng(1), sequences=(2, 2), tokens=(4, 6))
    with pytest.raises(ExpertcacheError, match="segment length"):
        local_balance(trace, m if m == () else (m,))


def test_the_public_measures_open_what_simulate_opens_and_refuse_the_rest():
    from expertcache.cache import budget_ladder, recommend_budget
    from expertcache.locality import curves, srp
    from expertcache.trace.examples import open_example

    name = "example:olmoe-1b-7b"  # simulate took it; these raised AttributeError
    trace = open_example("olmoe-1b-7b")
    np.testing.assert_array_equal(curves(name, "lru").per_layer, curves(trace, "lru").per_layer)
    assert srp(name, 4, resamples=0).results[4]["model"].srp == srp(trace, 4, resamples=0).results[4]["model"].srp
    assert budget_ladder(name) == budget_ladder(trace)
    for call, message in ((lambda: curves(None, "lru"), "a trace is a Trace, a trace folder"),
                          (lambda: srp(trace, 4, resamples=2.5), "resamples must be in 0..100,000"),
                          (lambda: recommend_budget(trace, "lru", "0.9"), "fraction must be a number")):
        with pytest.raises(ExpertcacheError, match=message):
            call()
