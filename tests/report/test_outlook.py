"""The outlook chains locality and simulation; checked on traces whose answers are known."""

import numpy as np
import pytest

from expertcache import Trace, curves, simulate
from expertcache.report import outlook
from expertcache.trace import DECODE, PREFILL


def test_constant_routing_is_perfectly_local_and_no_better_than_chance():
    experts = np.broadcast_to(np.array([0, 1]), (3, 40, 2, 2))  # every token uses experts 0 and 1
    o = outlook(Trace.from_arrays(experts, 8), m=4, permutations=1)
    assert o.srp == pytest.approx(1.0) and o.srp_chance == pytest.approx(1.0)
    assert o.srp_excess == pytest.approx(0.0)
    # 2 first uses per sequence and layer, both hits by the empty-slot rule (C = 4 > 0, 1 distinct)
    assert o.sch == pytest.approx(1.0) and o.lru_study == pytest.approx(1.0)
    # engine accounting: cold start, 2 layers x 2 experts miss once, sequences share the cache
    assert o.lru_engine == pytest.approx(1 - 4 / (3 * 40 * 2 * 2))


def test_outlook_is_the_public_metrics_at_the_operating_point(rng):
    experts = np.stack([rng.permutation(16)[:2] for _ in range(4 * 64 * 3)]).reshape(4, 64, 3, 2)
    trace = Trace.from_arrays(experts, 16, phase=np.full((4, 64), PREFILL))
    o = outlook(trace, m=8, permutations=2)
    assert o.sch == pytest.approx(np.mean(curves(trace, "fsf", 8).per_layer[:, 3]))
    assert o.lru_study == pytest.approx(np.mean(curves(trace, "lru").per_layer[:, 3]))
    assert o.lru_engine == pytest.approx(simulate(trace.as_decode(), "lru", budget_x=2).hit_rate)
    best = simulate(trace.as_decode(), "lru", budget_x=8).hit_rate  # every expert fits: cold misses only
    assert 0 < o.recommended_x <= 8 and o.recommended_hit_rate >= 0.9 * best


def test_as_decode_keeps_routing_and_marks_every_token_decode(rng):
    trace = Trace.from_arrays(rng.integers(0, 4, (2, 5, 1, 1)), 4, phase=np.full((2, 5), PREFILL))
    decode = trace.as_decode()
    assert (decode.phase == DECODE).all() and (trace.phase == PREFILL).all()
    np.testing.assert_array_equal(decode.experts, trace.experts)
