"""Locality benchmark: all-sizes hit-rate curves and SRP, against a study-style reference.

  python benchmarks/bench_locality.py            # sections 1-3 (a few minutes)
  python benchmarks/bench_locality.py --study    # + 4: study-scale run, 2 048 x 512 tokens x 16
                                                 #   layers x k = 8 (134 M requests), time, memory

Figures are rates measured in this run and ratios between them (the machine may be shared;
absolute rates vary between runs, ratios within one run much less). One thread unless noted.
1. Per layer (E = 64, k = 8, 512-token sequences) on random routing and on routing that keeps
   half of each token's experts from the previous token: a per-request reference that works the
   way the study's code does (`study_style_hist`: one cache state in Python lists updated
   request by request, a torch tensor per sequence read token by token, stack ranks recomputed
   once per token) against ours; results checked equal.
2. Ours per layer for E in {64, 128, 256}, both traces: requests/s.
2b. Per layer, the kernels `sequence_hist` chooses between: FSF's scan with and without the
   record branch and its skip to idle entries, Belady's scan with and without the branch.
3. Model level (one cache over all L x E keys): ns per request vs L x E, every size and with
   the size capped at 16x and 2x the active experts (`max_multiple`); then the kernels not
   chosen there: LRU's Fenwick tree and move to the front, the entry-by-entry scans that descending
   runs or the skip to idle entries replace, LFU's runs and use-count classes, and FSF's skip where
   the scan stays (same results). The last shape (k = 4, E / k = 64) is where LRU keeps the tree.
   Under each shape's every-size row: the same routing one layer at a time (ns per request), and
   the model-level cost as a multiple of it.
4. Study scale, in a child process with every core: all four curves (per layer and model
   level, every size) and SRP for four segment lengths with 1000-resample intervals.
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
import torch

from expertcache import ModelInfo, Trace, TraceWriter
from expertcache.locality import _stack, curves, srp
from expertcache.locality._streams import layer_stream, model_stream

POLICIES = (("lru", None), ("lfu", None), ("belady", None), ("fsf", 16))
_SHIFT = 1 << 32


def _name(policy: str, m: int | None) -> str:
    return policy + ("" if m is None else f"({m})")


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


def random_routing(S: int, T: int, E: int, K: int, seed: int = 0) -> np.ndarray:
    """[S, T, K] int32: k distinct experts per token, uniformly at random (no locality)."""
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((S, T, E)), axis=2)[:, :, :K].astype(np.int32)


def half_kept(S: int, T: int, E: int, K: int, seed: int = 0) -> np.ndarray:
    """[S, T, K] int32: each token keeps k/2 of the previous token's experts (at random) and
    draws the rest uniformly from the others."""
    rng = np.random.default_rng(seed)
    out = np.empty((S, T, K), np.int32)
    out[:, 0] = np.argsort(rng.random((S, E)), axis=1)[:, :K]
    for t in range(1, T):
        prev = out[:, t - 1]  # [S, K]
        out[:, t, :K // 2] = np.take_along_axis(prev, np.argsort(rng.random((S, K)), axis=1)[:, :K // 2], 1)
        score = rng.random((S, E))
        np.put_along_axis(score, prev, 2.0, axis=1)  # previous experts last
        out[:, t, K // 2:] = np.argsort(score, axis=1)[:, :K - K // 2]
    return out


TRACES = (("random", random_routing), ("half kept", half_kept))


# ----------------------------------------------------------------- the study-style reference
def study_style_hist(seq: torch.Tensor, n_ids: int, policy: str, m: int | None) -> list[int]:
    """One sequence [T, K] through one Mattson stack in Python lists, request by request.

    The study's structure: the routing is a tensor read with `.item()`, the state is Python
    lists, ranks are recomputed by one walk of the stack per token, integer keys pack
    (count or pending, use time) as count * 2^32 + time. Each request moves the runs of
    running minima above its depth with slice assignments. hist as in `_stack`.
    """
    T = seq.shape[0]
    flat = [e.item() for row in seq for e in row]
    nxt, upcoming = [0] * len(flat), {}
    for q in range(len(flat) - 1, -1, -1):
        nxt[q] = upcoming.get(flat[q], len(flat))
        upcoming[flat[q]] = q
    count, pending, used = [0] * n_ids, [0] * n_ids, [False] * n_ids
    stack, key = [], []
    hist = [0] * (n_ids + 2)
    if policy == "fsf":
        for row in seq[:max(0, min(m - 1, T))]:
            for e in row:
                pending[e.item()] += 1
    q = 0
    for t in range(T):
        if policy == "fsf" and t + m - 1 < T:
            for e in seq[t + m - 1]:
                y = e.item()
                pending[y] += 1
                if used[y]:
                    key[stack.index(y)] += _SHIFT
        row = [e.item() for e in seq[t]]
        rank = {x: i for i, x in enumerate(stack)}
        seen, new, firsts = len(stack), 0, set()
        for x in row:
            if x in rank:
                hist[rank[x] + 1] += 1
            elif x in firsts:
                hist[n_ids + 1] += 1
            else:
                firsts.add(x)
                new += 1
                hist[seen + new] += 1
        for x in row:
            if policy == "lfu":
                count[x] += 1
                kx = count[x] * _SHIFT + q
            elif policy == "fsf":
                pending[x] -= 1
                kx = pending[x] * _SHIFT + q
            else:
                kx = -nxt[q]
            if policy == "lru":  # the stack is the recency order: move to front
                if used[x]:
                    stack.remove(x)
                used[x] = True
                stack.insert(0, x)
                q += 1
                continue
            if used[x]:
                p = stack.index(x)
            else:
                used[x] = True
                p = len(stack)
                stack.append(x)
                key.append(kx)
            if p > 0:
                carry, carry_key, j = stack[0], key[0], 1
                while True:
                    while j < p and key[j] >= carry_key:
                        j += 1
                    if j >= p:
                        break
                    e = j  # records j..e, each below the one before: one slice moves them
                    while e + 1 < p and key[e + 1] < key[e]:
                        e += 1
                    last, last_key = stack[e], key[e]
                    stack[j + 1:e + 1], key[j + 1:e + 1] = stack[j:e], key[j:e]
                    stack[j], key[j] = carry, carry_key
                    carry, carry_key, j = last, last_key, e + 1
                stack[p], key[p] = carry, carry_key
            stack[0], key[0] = x, kx
            q += 1
    return hist


def _hist(ids, tok, n_ids, code, m, cap=None):
    hist = np.zeros(n_ids + 2, np.int64)
    _stack.sequence_hist(ids, tok, n_ids, code, m or 1, hist, n_ids if cap is None else cap)
    return hist


def _rate(fn, items, requests: int, repeats: int = 3) -> float:
    """Best requests/s of `repeats` passes of fn over items."""
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t)
    return requests / best


def versus_study_style(samples_python: int, samples_fast: int) -> dict:
    """Section 1; returns our rates {(trace, policy): req/s} for section 2's E = 64 row."""
    print("\n== 1. all sizes, one layer (E = 64, k = 8, 512-token sequences): study-style reference vs ours")
    print(f"{'trace':<11}{'policy':<9}{'reference req/s':>16}{'ours req/s':>14}{'ratio':>9}")
    ours = {}
    for trace_name, make in TRACES:
        data = make(max(samples_python, samples_fast), 512, 64, 8, seed=1)  # [S, T, K]
        streams = [layer_stream(seq, -1) for seq in data]
        tensors = [torch.from_numpy(seq) for seq in data[:samples_python]]
        for policy, m in POLICIES:
            code = _stack.POLICY_CODES[policy]
            slow = [study_style_hist(seq, 64, policy, m) for seq in tensors]
            for a, (ids, tok) in zip(slow, streams):
                assert np.array_equal(np.cumsum(a[1:65]), np.cumsum(_hist(ids, tok, 64, code, m)[1:65])), policy
            python_rate = _rate(lambda seq: study_style_hist(seq, 64, policy, m), tensors, samples_python * 4096, 2)
            _hist(*streams[0], 64, code, m)  # load the compiled kernel
            fast_rate = _rate(lambda s: _hist(*s, 64, code, m), streams[:samples_fast], samples_fast * 4096)
            ours[trace_name, policy] = fast_rate
            print(f"{trace_name:<11}{_name(policy, m):<9}{python_rate:>16,.0f}{fast_rate:>14,.0f}"
                  f"{fast_rate / python_rate:>8.0f}x")
    return ours


def per_layer_rates(samples: int) -> None:
    print(f"\n== 2. ours per layer (k = 8, {samples} sequences of 512 tokens): M requests/s")
    print(f"{'E':>4} {'trace':<11}" + "".join(f"{_name(p, m):>10}" for p, m in POLICIES))
    for E in (64, 128, 256):
        for trace_name, make in TRACES:
            streams = [layer_stream(seq, -1) for seq in make(samples, 512, E, 8, seed=1)]
            cells = []
            for policy, m in POLICIES:
                code = _stack.POLICY_CODES[policy]
                _hist(*streams[0], E, code, m)
                cells.append(_rate(lambda s: _hist(*s, E, code, m), streams, samples * 4096) / 1e6)
            print(f"{E:>4} {trace_name:<11}" + "".join(f"{c:>10.1f}" for c in cells))


def _kernel(name: str):
    """One of the kernels sequence_hist chooses between, by name: (ids, tok, n_ids, m, cap) -> hist."""
    def run(ids, tok, n_ids, m, cap):
        hist = np.zeros(n_ids + 2, np.int64)
        if name == "lru tree":
            _stack.lru_hist(ids, tok, n_ids, hist, False)
        elif name == "lru front":
            _stack.lru_front_hist(ids, tok, n_ids, hist)
        elif name == "fsf idle":
            _stack.fsf_hist(ids, tok, n_ids, m, hist, cap)
        elif name == "lfu runs":
            _stack.segment_hist(ids, tok, n_ids, _stack.LFU, hist, cap)
        elif name == "lfu classes":
            _stack.lfu_class_hist(ids, tok, n_ids, hist, cap)
        else:  # "<policy> branch" / "select" / "lanes": the scan with or without the record branch
            policy, how = name.split()
            scan = {"branch": _stack.BRANCH, "select": _stack.SELECT, "lanes": _stack.LANES}[how]
            _stack.priority_hist(ids, tok, n_ids, _stack.POLICY_CODES[policy], m, hist, cap, scan)
        return hist
    return run


def kernel_alternatives(samples: int) -> None:
    names = ("fsf branch", "fsf select", "fsf lanes", "fsf idle", "belady branch", "belady select", "belady lanes")
    print("\n== 2b. per layer, the kernels the choice is between (k = 8, FSF m = 16): M requests/s")
    print(f"{'E':>4} {'trace':<11}" + "".join(f"{n:>15}" for n in names))
    for E in (64, 128, 256):
        for trace_name, make in TRACES:
            streams = [layer_stream(seq, -1) for seq in make(samples, 512, E, 8, seed=1)]
            cells = []
            for name in names:
                fn = _kernel(name)
                assert np.array_equal(fn(*streams[0], E, 16, E), _hist(*streams[0], E, _stack.POLICY_CODES[name.split()[0]], 16))
                cells.append(_rate(lambda s: fn(*s, E, 16, E), streams, samples * 4096) / 1e6)
            print(f"{E:>4} {trace_name:<11}" + "".join(f"{c:>15.1f}" for c in cells))


def model_level_costs(samples: int,
                      shapes=((16, 64, 8), (32, 128, 8), (48, 128, 8), (32, 256, 8), (58, 256, 8), (16, 256, 4))) -> None:
    """Section 3; besides each policy as sequence_hist runs it, the kernels it did not choose."""
    others = (("lru tree", None), ("lru front", None), ("lfu branch", None), ("lfu runs", None), ("lfu classes", None),
              ("belady branch", None), ("fsf branch", 16), ("fsf idle", 16))
    print(f"\n== 3. model level (one cache over L x E keys, {samples} sequences of 512 tokens, synthetic routing"
          f" with locality): ns per request; then the alternative kernels")
    print(f"{'L x E, k':>12}{'keys':>7}  {'sizes':<12}" + "".join(f"{_name(p, m):>10}" for p, m in POLICIES)
          + "".join(f"{n:>14}" for n, _ in others))
    for L, E, K in shapes:
        data = synthetic(samples, 512, L, E, K, seed=2)
        offsets = np.arange(L + 1, dtype=np.int64) * E
        streams = [model_stream(seq, -1, offsets) for seq in data]
        n = sum(len(ids) for ids, _ in streams)
        for label, multiple in (("all", None), ("<= 16x", 16), ("<= 2x", 2)):
            cap = L * E if multiple is None else min(L * E, multiple * L * K)
            cells = []
            for policy, m in POLICIES:
                code = _stack.POLICY_CODES[policy]
                _hist(streams[0][0][:64], np.array([0, 64]), L * E, code, m, cap)
                cells.append(1e9 / _rate(lambda s: _hist(*s, L * E, code, m, cap), streams, n, 3))
            for name, m in others:  # the first sequence's check also loads the compiled kernel
                fn = _kernel(name)
                assert np.array_equal(fn(*streams[0], L * E, m or 1, cap),
                                      _hist(*streams[0], L * E, _stack.POLICY_CODES[name.split()[0]], m, cap)), name
                cells.append(1e9 / _rate(lambda s: fn(*s, L * E, m or 1, cap), streams, n, 3))
            print(f"{f'{L}x{E}, {K}':>12}{L * E:>7}  {label + f' ({cap})':<12}" + "".join(f"{c:>10.0f}" for c in cells[:4])
                  + "".join(f"{c:>14.0f}" for c in cells[4:]))
            if multiple is None:  # the same routing one layer at a time: what "x the per-layer cost" compares with
                layers = [layer_stream(seq[:, l], -1) for seq in data for l in range(L)]
                per_layer = []
                for policy, m in POLICIES:
                    code = _stack.POLICY_CODES[policy]
                    _hist(*layers[0], E, code, m)
                    per_layer.append(1e9 / _rate(lambda s: _hist(*s, E, code, m), layers, n, 3))
                print(f"{'':>12}{'':>7}  {'per layer':<12}" + "".join(f"{c:>10.0f}" for c in per_layer))
                print(f"{'':>12}{'':>7}  {'ratio':<12}" + "".join(f"{a / b:>9.1f}x" for a, b in zip(cells, per_layer)))


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
    parser.add_argument("--fast-samples", type=int, default=32)
    parser.add_argument("--model-samples", type=int, default=1)
    parser.add_argument("--_study-child", dest="child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        study_run(args.child)
        return
    numba.set_num_threads(1)
    versus_study_style(args.python_samples, args.fast_samples)
    per_layer_rates(args.fast_samples)
    kernel_alternatives(args.fast_samples)
    model_level_costs(args.model_samples)
    if args.study:
        path = Path(args.trace or tempfile.mkdtemp(prefix="study-trace-")) / "trace"
        if not (path / "manifest.json").exists():
            t = time.perf_counter()
            write_study_trace(path)
            print(f"\n(wrote the study-scale trace in {time.perf_counter() - t:.0f} s)")
        print(f"\n== 4. study scale: {path}")
        subprocess.run([sys.executable, __file__, "--_study-child", str(path)], check=True,
                       env={**os.environ, "NUMBA_NUM_THREADS": str(os.cpu_count() or 2)})


if __name__ == "__main__":
    main()
