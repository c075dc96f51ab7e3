"""Peer test: on single-expert (k = 1) traces our engine accounting reduces to a classic
request-by-request cache, so miss counts must equal libCacheSim's (GPL: test extra only)."""

import numpy as np
import pytest

from expertcache.cache import simulate

from .helpers import decode_trace

lcs = pytest.importorskip("libcachesim")

ORACLE = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access", "<i8")])


def libcachesim_misses(objects: np.ndarray, algorithm: str, size: int, path) -> int:
    """Misses of libCacheSim's native `algorithm` over unit-size objects (oracleGeneral trace)."""
    records = np.zeros(len(objects), ORACLE)
    records["time"] = np.arange(len(objects))
    records["obj_id"] = objects + 1
    records["obj_size"] = 1
    order = np.argsort(objects, kind="stable")
    nxt = np.full(len(objects), -1, np.int64)
    same = objects[order[1:]] == objects[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    records["next_access"] = nxt
    records.tofile(path)
    reader = lcs.TraceReader(str(path), lcs.TraceType.ORACLE_GENERAL_TRACE)
    miss_ratio, _ = getattr(lcs, algorithm)(cache_size=size).process_trace(reader)
    return round(miss_ratio * len(objects))


@pytest.mark.parametrize("ours, theirs", [("lru", "LRU"), ("fifo", "FIFO"), ("belady", "Belady")])
@pytest.mark.parametrize("layers", [1, 3])
def test_single_expert_trace_miss_counts_equal_libcachesim(ours, theirs, layers, tmp_path):
    rng = np.random.default_rng(7)
    E, T = 40, 3000
    tokens = (rng.zipf(1.3, (T, layers, 1)) - 1) % E  # [T, L, 1]
    trace = decode_trace(tokens, E)
    objects = (np.arange(layers)[None, :] * E + tokens[:, :, 0]).reshape(-1)  # stream order, key ids
    for size in (3, 10, 25):
        ours_misses = simulate(trace, ours, budget_slots=size).misses
        assert ours_misses == libcachesim_misses(objects, theirs, size, tmp_path / "trace.oracleGeneral")
