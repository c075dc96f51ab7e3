"""Trace storage: bytes per (token, layer) for ids + weights, write / load / one-layer read speed,
and what validation adds to the first read of the ids.

Goals: at most 2 bytes per id plus 2 per weight (issue 3); checking the ids on first read (crc32
and the id scan, issue 9) costs a fraction of an LRU replay of the same trace, the least any
analysis does with them. Run: python benchmarks/bench_storage.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from expertcache import ModelInfo, Trace, TraceWriter
from expertcache.cache import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    S, T, L, K, E = args.sequences, args.length, args.layers, args.k, args.experts
    model = ModelInfo.synthetic(L, E, K)
    experts = np.argsort(rng.random((T, L, E)), axis=2)[:, :, :K]  # distinct ids per (token, layer)
    weights = rng.random((T, L, K)).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace"
        start = time.perf_counter()
        with TraceWriter(path, model) as writer:
            for i in range(S):
                writer.add_sequence(np.roll(experts, i, axis=0), weights, key=str(i))
        write_s = time.perf_counter() - start
        shard_bytes = {name: sum(f.stat().st_size for f in path.glob(f"shards/*/{name}.npy"))
                       for name in ("experts", "weights", "tokens", "positions", "phase", "seq_lengths")}
        start = time.perf_counter()
        trace = Trace.load(path)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        trace.shard_arrays("experts")  # first use: checksum and id scan of every shard's ids
        check_s = time.perf_counter() - start
        start = time.perf_counter()
        layer = trace.layer_experts(L // 2)
        layer_s = time.perf_counter() - start
        assert layer.shape == (S * T, K)
        start = time.perf_counter()
        simulate(trace, "lru", budget_x=4.0)
        replay_s = time.perf_counter() - start
    n = S * T * L
    requests = n * K
    print(f"trace: {S} sequences x {T} tokens x {L} MoE layers x k={K} ({requests / 1e6:.0f} M ids), E={E}")
    print(f"ids:      {shard_bytes['experts'] / requests:.3f} bytes per id      (goal <= 2)")
    print(f"weights:  {shard_bytes['weights'] / requests:.3f} bytes per weight  (goal <= 2)")
    print(f"all files: {sum(shard_bytes.values()) / n:.2f} bytes per (token, layer) for k={K}")
    print(f"write {requests / write_s / 1e6:.0f} M ids/s, open {load_s * 1e3:.1f} ms, "
          f"read one layer {layer.nbytes / layer_s / 2**30:.2f} GiB/s")
    print(f"check of all ids on first use (crc32 + id scan): {check_s:.3f} s, {requests / check_s / 1e9:.2f} G ids/s, "
          f"{check_s / replay_s:.1%} of one LRU replay of the trace ({replay_s:.2f} s)")


if __name__ == "__main__":
    main()
