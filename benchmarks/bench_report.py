"""`expertcache report` at study scale: time and peak memory on a synthetic 1 M-token trace.

  python benchmarks/bench_report.py                  # 2048 x 512 tokens, 48 layers, 128 experts, k = 8
  python benchmarks/bench_report.py --sequences 64   # a quick look at the same shape

The trace (written once into --cache, default a folder under the system temp dir) has skewed
expert popularity, token-to-token reuse, routing weights, token ids and two domains, so every
figure of the report is drawn. The report runs in a child process, sampled every 0.2 s: its
peak anonymous memory (what it allocates, summed with its worker processes) is compared with
one layer's arrays; file-backed memory is the memory-mapped trace, page cache the kernel can
drop. CPU time is the child's user + system time (the machine may be shared).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from expertcache import ModelInfo, TraceWriter

LAYERS, EXPERTS, K = 48, 128, 8


@numba.njit(cache=True)
def _routing(T, L, E, K, keep, cum_pop, seed):
    """[T, L, K] distinct ids per token and layer: each of the previous token's experts is kept
    with probability `keep`, the rest drawn from the layer's popularity (cumulative [L, E])."""
    np.random.seed(seed)
    out = np.empty((T, L, K), np.uint8)
    for t in range(T):
        for l in range(L):
            n = 0
            if t > 0:
                for i in range(K):
                    if np.random.random() < keep:
                        out[t, l, n] = out[t - 1, l, i]
                        n += 1
            while n < K:
                e = np.searchsorted(cum_pop[l], np.random.random() * cum_pop[l, E - 1])
                e = min(e, E - 1)
                for j in range(n):
                    if out[t, l, j] == e:
                        break
                else:
                    out[t, l, n] = e
                    n += 1
    return out


def build(path: Path, sequences: int, length: int) -> None:
    """Write the synthetic trace (skipped when a complete one is there)."""
    rng = np.random.default_rng(0)
    model = ModelInfo("synthetic-48x128-k8", "synthetic", LAYERS, tuple(range(LAYERS)), (EXPERTS,) * LAYERS, K,
                      expert_bytes=(3 << 20,) * LAYERS)
    cum_pop = np.cumsum(rng.dirichlet(np.full(EXPERTS, 0.5), size=LAYERS), axis=1)
    with TraceWriter(path, model, domains=["prose", "code"], shard_tokens=1 << 16) as writer:
        for s in range(sequences):
            key = f"s{s}"
            if key in writer.done_keys:
                continue
            experts = _routing(length, LAYERS, EXPERTS, K, 0.55, cum_pop, s)
            weights = np.sort(rng.dirichlet(np.ones(K), size=(length, LAYERS)), axis=-1)[..., ::-1]
            tokens = np.minimum(rng.zipf(1.3, length), 5000).astype(np.int32)
            writer.add_sequence(experts, weights, tokens=tokens, domain=("prose", "code")[s % 2], key=key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=2048)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "expertcache-bench-report")
    args = parser.parse_args()
    trace = args.cache / f"trace-{args.sequences}x{args.length}"
    t = time.perf_counter()
    build(trace, args.sequences, args.length)
    print(f"trace {trace}: {args.sequences * args.length:,} tokens ({time.perf_counter() - t:.0f} s to build or check)")
    out = args.cache / "report"
    t = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "expertcache", "report", str(trace), "--out", str(out), "--overwrite"])
    peak = {"process": 0, "with workers": 0, "mapped": 0}
    while child.poll() is None:
        own, workers, mapped = _memory(child.pid)
        for key, value in (("process", own), ("with workers", own + workers), ("mapped", mapped)):
            peak[key] = max(peak[key], value)
        time.sleep(0.2)
    if child.returncode:
        sys.exit(child.returncode)
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    tokens = args.sequences * args.length
    ids, weights = tokens * K, tokens * K * 2  # one layer's expert ids (uint8) and routing weights (float16)
    mib = 2**20
    print(f"report: {wall:.0f} s wall, {usage.ru_utime + usage.ru_stime:.0f} s CPU")
    print(f"peak memory allocated: {peak['process'] / mib:.0f} MiB by the report process, {peak['with workers'] / mib:.0f} "
          f"MiB with its sweep workers (forked: they share its pages, so this overcounts)")
    print(f"for scale: one layer's ids {ids / mib:.0f} MiB (as int64 {8 * ids / mib:.0f} MiB), its weights "
          f"{weights / mib:.0f} MiB; all layers' {LAYERS * (ids + weights) / mib:.0f} MiB; memory-mapped trace "
          f"resident at most {peak['mapped'] / mib:.0f} MiB (page cache)")


def _memory(pid: int) -> tuple[int, int, int]:
    """(anonymous resident bytes of the process, of its child processes, file-backed bytes of the
    process) from Linux /proc; zeros once it has ended."""
    def status(p):
        fields = {}
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
        return fields

    try:
        own = status(pid)
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0, 0
    workers = 0
    for c in children:
        try:
            workers += status(c).get("RssAnon", 0)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return own.get("RssAnon", 0), workers, own.get("RssFile", 0)


if __name__ == "__main__":
    main()
