"""Golden counts on a small committed trace, for every policy at several sizes. A change in
any count is a change in behaviour: regenerate on purpose only, with
`python -m tests.cache.test_golden --regenerate`, and say why in the commit."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from expertcache.cache import POLICIES, build_stream, simulate
from expertcache.trace import ModelInfo, Trace

DATA = Path(__file__).parent / "data"
TRACE, GOLDEN = DATA / "golden-trace", DATA / "golden-counts.json"
SIZES = (4, 8, 16)
CASES = [(p, scope, n) for p in sorted(POLICIES) for scope in ("global", "layer") for n in SIZES]


def _make_trace() -> Trace:
    rng = np.random.default_rng(2024)
    L, K, E = 4, 2, 8
    seqs, phases = [], []
    for T in (30, 24):
        base = rng.integers(0, E, (T, L))
        tokens = np.stack([base, (base + rng.integers(1, E, (T, L))) % E], axis=2)  # distinct pair
        seqs.append(tokens)
        phases.append([0] * 6 + [1] * (T - 6))
    model = ModelInfo(name="golden", architecture="test", num_layers=L, moe_layers=tuple(range(L)),
                      num_experts=(E,) * L, top_k=K, expert_bytes=(3, 1, 2, 2))
    return Trace.from_arrays(seqs, model=model, phase=phases)


def _counts(trace) -> dict:
    stream = build_stream(trace)
    out = {}
    for policy, scope, slots in CASES:
        r = simulate(trace, policy, scope=scope, budget_slots=slots, stream=stream)
        out[f"{policy}/{scope}/{slots}"] = [r.hits, r.lookups, r.decode_hits, r.bytes_read]
    return out


def test_golden_counts():
    if not TRACE.exists():
        pytest.fail("golden trace missing: run python -m tests.cache.test_golden --regenerate")
    expected = json.loads(GOLDEN.read_text())
    got = _counts(Trace.load(TRACE))
    assert set(got) == set(expected), "the registered policies changed: regenerate on purpose"
    for case, counts in expected.items():
        assert got[case] == counts, case


if __name__ == "__main__" and "--regenerate" in sys.argv:
    trace = _make_trace()
    DATA.mkdir(exist_ok=True)
    trace.save(TRACE, overwrite=True)
    GOLDEN.write_text(json.dumps(_counts(Trace.load(TRACE)), indent=0, sort_keys=True) + "\n")
    print(f"wrote {TRACE} and {GOLDEN}")
