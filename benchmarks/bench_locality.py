"""Locality benchmark: all-sizes hit-rate curves and SRP, against a pure-Python baseline.

  python benchmarks/bench_locality.py            # speed ratios + model-level scaling (~2 min)
  python benchmarks/bench_locality.py --study    # + study-scale run: 2048 x 512 tokens x 16
                                                 #   layers x k=8 (134 M requests), time and memory

Figures are ratios measured in this run (the machine may be shared; absolute rates vary):
- baseline: tests/locality/reference.py `hit_counts_one_pass`, the straightforward per-request
  Python one-pass method (what the study's code does), 64 experts, k = 8, 512-token samples;
- ours: the numba kernels on more samples of the same trace, one thread (per core), results
  checked equal to the baseline's on the samples both ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numba
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "locality"))

import reference  # noqa: E402

from expertcache import ModelInfo, Trace, TraceWriter  # noqa: E402
from expertcache.locality import _stack, curves, srp  # noqa: E402
from expertcache.locality._streams import layer_stream, model_stream  # noqa: E402

POLICIES = (("lru", None), ("lfu", None), ("belady", None), ("fsf", 16))


def synthetic(S: int, T: int, L: int, E: int, K: int, seed: int = 0, reuse: float = 0.6) -> np.ndarray:
    """[S, T, L, K] uint8 routing with skewed popularity and token-to-token reuse (locality)."""
    rng = np.random.default_rng(seed)
    log_pop = np.log(rng.dirichlet(np.ones(E), size=L))  # [L, E]
    out = np.empty((S, T, L, K), np.uint8)
    prev = None
    for t in range(T):
        score = rng.gumbel(size=(S, L, E)) + log_pop  # [S, L, E]
        if prev is not None:
            keep = 3.0 * (rng.random(prev.shape) < reuse)
            np.put_along_axis(score, prev, np.take_along_axis(score, prev, 2) + keep, axis=2)
        prev = np.argpartition(-score, K, axis=2)[:, :, :K]  # [S, L, K]
        out[:, t] = prev
    return out


def _hist(ids, tok, n_ids, code, m):
    hist = np.zeros(n_ids + 2, np.int64)
    _stack.sequence_hist(ids, tok, n_ids, code, m, hist, n_ids)
    return hist


def speed_ratios(samples_python: int, samples_fast: int) -> None:
    print(f"\n== all-sizes curves, one layer (64 experts, k=8, 512-token samples), 1 thread")
    data = synthetic(max(samples_python, samples_fast), 512, 1, 64, 8, seed=1)
    streams = [layer_stream(data[s, :, 0, :], 255) for s in range(len(data))]
    print(f"{'policy':<10}{'python req/s':>14}{'numba req/s':>14}{'ratio':>10}")
    for policy, m in POLICIES:
        code = _stack.POLICY_CODES[policy]
        _hist(*streams[0], 64, code, m or 1)  # compile / load cache
        t = time.perf_counter()
        slow = [reference.hit_counts_one_pass([list(ids[tok[i]:tok[i + 1]]) for i in range(len(tok) - 1)], 64, policy, m)[0]
                for ids, tok in streams[:samples_python]]
        python_rate = samples_python * 512 * 8 / (time.perf_counter() - t)
        t = time.perf_counter()
        fast = [_hist(ids, tok, 64, code, m or 1) for ids, tok in streams[:samples_fast]]
        fast_rate = samples_fast * 512 * 8 / (time.perf_counter() - t)
        for a, b in zip(slow, fast):
            assert np.array_equal(a, np.cumsum(b[1:65])), f"{policy}: fast and baseline disagree"
        print(f"{policy + ('' if m is None else f'({m})'):<10}{python_rate:>14,.0f}{fast_rate:>14,.0f}{fast_rate / python_rate:>9.0f}x")


def model_level_ratio(L: int = 16, E: int = 64) -> None:
    print(f"\n== all-sizes curves, model-level cache ({L} layers x {E} experts, k=8, one 512-token sample), 1 thread")
    data = synthetic(1, 512, L, E, 8, seed=3)
    ids, tok = model_stream(data[0], 255, np.arange(L + 1, dtype=np.int64) * E)
    tokens = [list(ids[tok[i]:tok[i + 1]]) for i in range(len(tok) - 1)]
    print(f"{'policy':<10}{'python req/s':>14}{'numba req/s':>14}{'ratio':>10}")
    for policy, m in POLICIES:
        code = _stack.POLICY_CODES[policy]
        _hist(ids[:64], np.array([0, 64]), L * E, code, m or 1)
        t = time.perf_counter()
        slow = reference.hit_counts_one_pass(tokens, L * E, policy, m)[0]
        python_rate = len(ids) / (time.perf_counter() - t)
        t = time.perf_counter()
        fast = _hist(ids, tok, L * E, code, m or 1)
        fast_rate = len(ids) / (time.perf_counter() - t)
        assert np.array_equal(slow, np.cumsum(fast[1:L * E + 1])), f"{policy}: fast and baseline disagree"
        print(f"{policy + ('' if m is None else f'({m})'):<10}{python_rate:>14,.0f}{fast_rate:>14,.0f}{fast_rate / python_rate:>9.0f}x")


def model_level_scaling(samples: int, shapes=((16, 64), (48, 128), (58, 256))) -> None:
    print(f"\n== model-level cache: cost per request vs L*E ({samples} samples of 512 tokens, k=8, 1 thread)")
    print(f"{'L x E':>9}{'L*E':>7}" + "".join(f"{p + ('' if m is None else f'({m})'):>11}" for p, m in POLICIES)
          + "   ns per request (mean depth of a hit)")
    for L, E in shapes:
        data = synthetic(samples, 512, L, E, 8, seed=2)
        offsets = np.arange(L + 1, dtype=np.int64) * E
        streams = [model_stream(data[s], 255, offsets) for s in range(samples)]
        n = sum(len(ids) for ids, _ in streams)
        cells = []
        for policy, m in POLICIES:
            code = _stack.POLICY_CODES[policy]
            _hist(streams[0][0][:64], np.array([0, 64]), L * E, code, m or 1)
            t = time.perf_counter()
            hist = sum(_hist(ids, tok, L * E, code, m or 1) for ids, tok in streams)
            cost = (time.perf_counter() - t) / n * 1e9
            depth = (hist[1:L * E + 1] * np.arange(L * E)).sum() / hist[1:L * E + 1].sum()
            cells.append(f"{cost:>6.0f} ({depth:>3.0f})")
        print(f"{f'{L}x{E}':>9}{L * E:>7}" + "".join(f"{c:>11}" for c in cells))


def write_study_trace(path: Path, S: int = 2048, T: int = 512, L: int = 16, E: int = 64, K: int = 8) -> None:
    model = ModelInfo.synthetic(L, E, K, name="study-scale synthetic")
    with TraceWriter(path, model, overwrite=True, shard_tokens=1 << 17) as writer:
        for start in range(0, S, 128):
            chunk = synthetic(128, T, L, E, K, seed=100 + start)
            for i, seq in enumerate(chunk):
                writer.add_sequence(seq, domain=("code", "prose", "math", "chat")[(start + i) % 4])


class MemorySampler:
    """Peak anonymous and file-backed resident memory, sampled every 10 ms from /proc.

    File-backed pages are the memory-mapped trace: page cache the kernel can drop, shared
    with other readers. Anonymous pages are what the analysis itself allocates.
    """

    def __init__(self):
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.base = self._read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _read() -> dict:
        values = {}
        with open("/proc/self/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("RssAnon", "RssFile"):
                    values[name] = int(rest.split()[0]) * 1024
        return values

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for name, value in self._read().items():
                self.peak[name] = max(self.peak[name], value)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {name: (self.peak[name] - self.base[name]) / 2**20 for name in self.peak}


def study_run(path: str) -> None:
    """Child process: all four curves + SRP for four m on the on-disk trace; time and memory."""
    tiny = Trace.from_arrays(np.zeros((1, 4, 2, 1), int), 2)
    curves(tiny, "lru")  # load the compiled kernels before measuring
    srp(tiny, 4)
    trace = Trace.load(path)
    memory = MemorySampler()
    timings = {}
    start = time.perf_counter()
    for policy, m in POLICIES:
        t = time.perf_counter()
        curves(trace, policy, m)
        timings[f"curves {policy}" + ("" if m is None else f" m={m}")] = time.perf_counter() - t
    t = time.perf_counter()
    srp(trace, (4, 16, 64, 256))
    timings["srp m=4,16,64,256 (+1000-resample CI)"] = time.perf_counter() - t
    total = time.perf_counter() - start
    grown = memory.stop()
    N, L, K = trace.num_tokens, trace.num_moe_layers, trace.top_k
    for name, seconds in timings.items():
        print(f"  {name:<40}{seconds:>8.1f} s")
    print(f"  {'total':<40}{total:>8.1f} s   ({N * L * K / 1e6:.0f} M requests per level, "
          f"{numba.get_num_threads()} threads)")
    print(f"  peak memory growth: {grown['RssAnon']:.0f} MiB allocated, {grown['RssFile']:.0f} MiB of the memory-mapped "
          f"trace resident; the routing is {N * L * K / 2**20:.0f} MiB as uint8 ({N * L * K * 4 / 2**20:.0f} MiB as "
          f"int32 ids), one layer {N * K / 2**20:.0f} MiB ({N * K * 4 / 2**20:.0f} MiB as int32)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", action="store_true", help="also run the study-scale trace")
    parser.add_argument("--trace", help="reuse this study-scale trace directory (written if missing)")
    parser.add_argument("--python-samples", type=int, default=2)
    parser.add_argument("--fast-samples", type=int, default=64)
    parser.add_argument("--_study-child", dest="child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        study_run(args.child)
        return
    numba.set_num_threads(1)
    speed_ratios(args.python_samples, args.fast_samples)
    model_level_ratio()
    model_level_scaling(4)
    if args.study:
        path = Path(args.trace or tempfile.mkdtemp(prefix="study-trace-")) / "trace"
        if not (path / "manifest.json").exists():
            t = time.perf_counter()
            write_study_trace(path)
            print(f"\n(wrote the study-scale trace in {time.perf_counter() - t:.0f} s)")
        print(f"\n== study scale: {path}")
        subprocess.run([sys.executable, __file__, "--_study-child", str(path)], check=True,
                       env={**os.environ, "NUMBA_NUM_THREADS": str(os.cpu_count() or 2)})


if __name__ == "__main__":
    main()
