"""SRP (SPEC §3) against a hand-worked case and a window-by-window reference."""

import numpy as np
import pytest

from expertcache import ExpertcacheError, Trace
from expertcache.locality import srp
from expertcache.locality.bootstrap import resample_counts

from . import reference
from .helpers import random_trace


def test_hand_worked():
    # Experts 0,0,1,1 (k=1, E=2), m=2: windows (2,0), (1,1), (0,2).
    # tau=0: F1 = 12/18; tau=1: 2*6/(8+6) = 6/7; tau=2: 2*4/(4+6) = 0.8.
    trace = Trace.from_arrays(np.array([[[[0]], [[0]], [[1]], [[1]]]]), 2)
    out = srp(trace, m=2, resamples=0).results[2]["model"]
    assert out.srp == pytest.approx(6 / 7, abs=1e-12)
    assert out.threshold == 1
    assert out.group_ratio == pytest.approx(8 / 6)
    assert out.activation_ratio == 0.5
    assert out.ci is None


def close(a, b):
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9


def check(value, windows, m):
    expected = reference.srp_value(windows, m)
    assert close(value.srp, expected[0]), (value, expected)
    assert value.threshold == expected[1]
    assert close(value.group_ratio, expected[2])


@pytest.mark.parametrize("seed", range(8))
def test_random_traces_match_reference(seed):
    rng = np.random.default_rng([seed, 99])
    trace = random_trace(rng, pad_share=0.1 if seed % 2 else 0.0, skew=seed % 3 != 0)
    ms = sorted({int(v) for v in rng.integers(1, 7, size=2)})
    report = srp(trace, m=ms, by=("expert", "domain", "position"), resamples=0)
    for m in ms:
        out = report.results[m]
        check(out["model"], reference.srp_windows(trace, m), m)
        for l, value in enumerate(out["per_layer"]):
            check(value, reference.srp_windows(trace, m, layers=[l]), m)
            for e, expert in enumerate(out["per_expert"][l]):
                check(expert, reference.srp_windows(trace, m, layers=[l], experts=[e]), m)
        for name, value in out["per_domain"].items():
            check(value, reference.srp_windows(trace, m, domain=name), m)
        for position, value in enumerate(out["per_position"]):
            check(value, reference.srp_windows(trace, m, position=position), m)


def test_bootstrap_interval_matches_reference():
    rng = np.random.default_rng(5)
    trace = random_trace(rng, sequences=(5, 5), tokens=(6, 10), layers=(2, 2))
    m, resamples, seed = 3, 40, 17
    out = srp(trace, m=m, resamples=resamples, seed=seed).results[m]
    counts = resample_counts(trace.num_sequences, resamples, [seed, m])
    for layers, value in [(None, out["model"]), ([0], out["per_layer"][0]), ([1], out["per_layer"][1])]:
        estimate = reference.srp_value(reference.srp_windows(trace, m, layers=layers), m)[0]
        replicates = []
        for row in counts:
            drawn = [i for i, c in enumerate(row) for _ in range(int(c))]
            replicates.append(reference.srp_value(reference.srp_windows(trace, m, layers=layers, sequences_idx=drawn), m)[0])
        lo, hi = np.quantile(replicates, [0.025, 0.975])
        assert value.ci == pytest.approx((2 * estimate - hi, 2 * estimate - lo), abs=1e-9)


def test_a_single_sequence_has_no_interval():
    # Every resample of one sequence is that sequence: [est, est] would pose as certainty.
    one = Trace.from_arrays(np.array([[[[0]], [[0]], [[1]], [[1]], [[0]]]]), 2)
    out = srp(one, m=2, resamples=50).results[2]
    assert out["model"].ci is None and out["per_layer"][0].ci is None and out["model"].srp > 0
    two = Trace.from_arrays(np.array([[[[0]], [[0]], [[1]]], [[[1]], [[0]], [[0]]], [[[1]], [[1]], [[1]]]]), 2,
                            domains=["a", "a", "b"])
    out = srp(two, m=2, by=("domain",), resamples=50).results[2]
    assert out["model"].ci is not None and out["per_domain"]["a"].ci is not None
    assert out["per_domain"]["b"].ci is None  # a domain of one sequence


def test_seeded_reruns_agree_and_seed_matters():
    trace = random_trace(np.random.default_rng(2), sequences=(6, 6), tokens=(8, 12))
    a = srp(trace, m=4, resamples=100, seed=1).to_json()
    assert a == srp(trace, m=4, resamples=100, seed=1).to_json()
    assert a != srp(trace, m=4, resamples=100, seed=2).to_json()


def test_short_sequences_never_used_expert_and_k_equals_e():
    # Sequences shorter than m have no window; an expert never routed has F1 = 0 at tau = 0.
    trace = Trace.from_arrays([np.zeros((2, 1, 1), int), np.array([[[0]], [[1]], [[0]]])], 3)
    out = srp(trace, m=3, by=("expert",), resamples=0).results[3]
    assert out["per_expert"][0][2].srp == 0.0 and out["per_expert"][0][2].threshold == 0
    assert np.isnan(out["per_expert"][0][2].group_ratio)
    empty = srp(trace, m=5, resamples=10).results[5]["model"]
    assert np.isnan(empty.srp) and empty.threshold is None
    assert srp(trace, m=5, resamples=10).to_json()["5"]["model"]["srp"] is None
    assert srp(trace, m=5, resamples=10).to_json()["5"]["model"]["ci"] is None  # was [null, null]
    huge = srp(trace, m=10**12, resamples=10).to_json()  # no window: nothing allocated (was a 7 TiB request)
    assert huge["1000000000000"]["model"] == {"srp": None, "ci": None, "threshold": None, "group_ratio": None,
                                              "activation_ratio": 1 / 3}
    full = Trace.from_arrays(np.tile(np.arange(3), (1, 6, 1, 1)), 3)  # k = E
    value = srp(full, m=2, resamples=0).results[2]["model"]
    assert value.srp == 1.0 and value.activation_ratio == 1.0


def test_json_contract():
    trace = random_trace(np.random.default_rng(4), sequences=(3, 3), tokens=(5, 9))
    out = srp(trace, m=(2, 4), by=("domain",), resamples=20).to_json()
    assert set(out) == {"2", "4"}
    assert set(out["2"]) == {"model", "per_layer", "per_domain"}
    assert set(out["2"]["model"]) == {"srp", "ci", "threshold", "group_ratio", "activation_ratio"}
    assert len(out["2"]["per_layer"]) == trace.num_moe_layers


@pytest.mark.parametrize("kwargs,message", [
    ({"m": 0}, "m must be an integer >= 1"),
    ({"m": 2.0}, "m must be an integer >= 1, got 2.0"),  # was a TypeError
    ({"m": "16"}, "m must be an integer >= 1, got '16'"),  # was refused as '1'
    ({"m": ()}, "at least one segment length"),
    ({"by": ("vocab",)}, "unknown SRP breakdown"),
])
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ExpertcacheError, match=message):
        srp(random_trace(np.random.default_rng(0)), **kwargs)
