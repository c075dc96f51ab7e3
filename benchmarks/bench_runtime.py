"""Offloading runtime: greedy decode tokens/s at several budgets, against the plain model, the
SPEC §7 bound measured on the same machine, and accelerate's disk offload, all in one run.

The checkpoint is a randomly initialised Qwen3-MoE-style model saved as bf16 safetensors to a
temporary folder (shape set by --hidden/--layers/--experts/--k). The page cache is honest:
the checkpoint's pages are dropped before each measured generation, the runtime's disk tier
drops every range it reads, and accelerate's offload folder is dropped before every forward
(accelerate reads a layer's weights from it once per forward), so misses are disk reads.

Figures:
- everything cached (after one pass of the sequence, so every expert it uses is resident) vs
  the plain transformers model with the same (default) experts implementation, weights in
  RAM: ratio (target >= 0.95);
- offloaded at 1x, 2x, 4x the active experts, without prefetch and with the stale-gate
  prefetcher: tokens/s, hit rate, MiB read per token, and the ratio to the bound (target >=
  0.8). SPEC §7 per read: a miss is needed by the call that waits for it, so its read adds to
  the compute time; a prefetch can overlap compute; all reads share the disk. Per token, the
  bound is 1 / max(compute time + missed bytes / disk bandwidth, (missed + prefetched bytes) /
  disk bandwidth): without prefetch, compute + misses; with it, the misses it leaves still
  add. (Stops before 28 gave prefetch rows 1 / max(compute, all bytes / bandwidth), as if
  their misses overlapped compute too; the table prints that ratio as well.) Compute
  time per token is the plain model's, measured next to the runtime: one process holds both
  models and they decode the same sequence in lockstep, one token each in turn, `--rounds`
  sequences (this VM's speed drifts by 20-40 % within a minute, and between processes); each
  round's runtime rate is set against the plain rate of the same round, and the table gives
  medians and the range over rounds. The runtime's reads still in flight at the end of its
  token are waited for inside its time. Disk bandwidth is `bench_hw`'s cold read test
  (O_DIRECT, 4 reads in flight, like the runtime's reads); bytes per token are those of the
  measured rounds only;
- accelerate disk offload (device_map, offload folder) with the resident memory of the 1x run:
  tokens/s, and the runtime's speed-up over it (target >= 10x);
- peak RSS of each budget, from a run of the runtime alone in its own process, against
  non-expert weights + budget.

With --device cuda the cache is in GPU memory and the slow tier is pinned host RAM: the plain
model runs on the GPU, the link is `bench_hw`'s pinned host-to-device copy, and --misses-on-cpu
adds rows with that rule (missed experts computed on the CPU from RAM, not moved; their bytes are
not in the bound's transfer, so those rows' ratio is against compute alone). Tokens are
compared with the plain model on the same device.

Run: python benchmarks/bench_runtime.py [--hidden 1024 --layers 16 --experts 64 --k 8 --tokens 16 --rounds 4]
                                        [--device cuda --misses-on-cpu auto]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_capture import build

PROMPT = list(range(10, 42))


def drop_page_cache(folder: Path) -> None:
    for f in list(folder.glob("*.safetensors")) + list(folder.glob("**/*.dat")):
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def _load(kind: str, folder: str, budget_x: float | None, resident: int | None, prefetch: str | None,
          device: str = "cpu", misses_on_cpu: str = "never"):
    import transformers

    import expertcache.runtime as rt

    if kind == "runtime":
        return rt.offload(folder, budget_x=budget_x, prefetch=prefetch, device=device, misses_on_cpu=misses_on_cpu)
    if kind == "plain":
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        for p in model.parameters():  # out of the memory map, as the runtime's weights are
            p.data = p.data.clone()
        return model.to(device)
    offload_dir = Path(folder).parent / "accelerate-offload"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": resident}, offload_folder=str(offload_dir)).eval()
    model.register_forward_pre_hook(lambda *_: drop_page_cache(offload_dir))
    return model


class TokenClock:
    """A generate() streamer that notes when each token comes out (the first put is the prompt)."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def peak_rss() -> int:
    """This process's high-water resident set since exec (ru_maxrss would include the parent's)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


def _decode(model, tokens: int, device: str) -> tuple[float, list]:
    """Seconds from the first generated token (the prefill's) to the last of `tokens` more, and
    the generated tokens."""
    ids = torch.tensor([PROMPT], device=device)
    clock = TokenClock()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens + 1, min_new_tokens=tokens + 1, do_sample=False,
                             streamer=clock)
    return clock.times[-1] - clock.times[1], out[0, len(PROMPT):].tolist()


def one_run(kind: str, folder: str, budget_x: float | None, tokens: int, resident: int | None = None,
            prefetch: str | None = None, warm_tokens: int = 2, device: str = "cpu", misses_on_cpu: str = "never") -> dict:
    """In a fresh process: decode seconds for `tokens` tokens (and counters) of one configuration.

    A warm-up generation of `warm_tokens` runs first (numba, and for "everything cached" the
    whole sequence once, so that every expert it uses is resident: the steady state).
    """
    import expertcache.runtime as rt

    model = _load(kind, folder, budget_x, resident, prefetch, device, misses_on_cpu)
    ids = torch.tensor([PROMPT], device=device)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=warm_tokens, min_new_tokens=warm_tokens, do_sample=False)
    drop_page_cache(Path(folder))
    seconds, generated = _decode(model, tokens, device)
    result = {"tokens": generated, "seconds": seconds}
    if kind == "runtime":
        result.update(rt.stats(model).to_json())
        rt.close(model)
    result["peak_rss"] = peak_rss()
    if device != "cpu":
        result["peak_gpu"] = torch.cuda.max_memory_allocated()
    return result


def paired_rates(folder: str, budget_x: float, tokens: int, rounds: int, prefetch: str | None = None,
                 device: str = "cpu", misses_on_cpu: str = "never", steady: bool = False) -> dict:
    """In one fresh process: the plain model and the offloaded one decode the same sequence in
    lockstep, one token each in turn (ABBA order token by token), `rounds` sequences of `tokens`
    greedy tokens; seconds are summed per round, so every runtime token has a plain token
    measured next to it in time.

    The runtime's reads still in flight when its token is done are waited for inside its time
    (a real generation would overlap them with the next token), so they neither slow the plain
    model's turn nor hide in it. Decode counters are this function's rounds only (the warm-up's
    excluded). `steady`: the warm-up decodes the whole sequence once, so every expert it uses is
    resident (everything cached).
    """
    import expertcache.runtime as rt

    plain = _load("plain", folder, None, None, None, device)
    model = _load("runtime", folder, budget_x, None, prefetch, device, misses_on_cpu)
    _decode(plain, 2, device)
    _decode(model, tokens if steady else 2, device)
    cache = model._expertcache_runtime.cache
    before = rt.stats(model)
    plain_s, runtime_s, same = [0.0] * rounds, [0.0] * rounds, True
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    for r in range(rounds):
        drop_page_cache(Path(folder))
        state, generated = {}, {"plain": [], "runtime": []}
        with torch.no_grad():
            for name, m in (("plain", plain), ("runtime", model)):  # prefills, not timed
                out = m(torch.tensor([PROMPT], device=device), use_cache=True)
                state[name] = (out.cache, out.logits[:, -1:].argmax(-1))
            for step in range(tokens):
                for name in ("plain", "runtime") if step % 2 == 0 else ("runtime", "plain"):
                    m = plain if name == "plain" else model
                    cache_kv, token = state[name]
                    start = time.perf_counter()
                    out = m(token, cache=cache_kv, use_cache=True)
                    token = out.logits[:, -1:].argmax(-1)
                    if name == "runtime":
                        cache.drain()
                    sync()
                    (plain_s if name == "plain" else runtime_s)[r] += time.perf_counter() - start
                    state[name] = (out.cache, token)
                    generated[name].append(int(token))
        same = same and generated["plain"] == generated["runtime"]
    after = rt.stats(model)
    rt.close(model)
    pf = lambda s: s.prefetch.issued if s.prefetch else 0  # noqa: E731
    return {"plain_s": plain_s, "runtime_s": runtime_s, "same_tokens": same,
            "decode_lookups": after.decode_lookups - before.decode_lookups,
            "decode_misses": (after.decode_lookups - after.decode_hits - after.misses_on_cpu)
            - (before.decode_lookups - before.decode_hits - before.misses_on_cpu),
            "prefetched": pf(after) - pf(before)}


def run_in_process(*args, function: str = "one_run") -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_runtime as b; " \
           f"print(json.dumps(b.{function}(*{args!r})))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--budgets", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=4, help="plain/runtime pairs per row (medians reported)")
    ap.add_argument("--no-accelerate", action="store_true", help="skip the accelerate disk-offload peer")
    ap.add_argument("--device", default="cpu", help="cpu (disk tier) or cuda (pinned RAM tier)")
    ap.add_argument("--misses-on-cpu", default=None, help="also run every offloaded budget with this rule (cuda)")
    args = ap.parse_args()
    gpu = args.device != "cpu"
    from expertcache.cache.hwbench import bench_hw

    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = build(Path(tmp) / "model", args, torch.bfloat16)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        _, raw = bench_hw(args.hidden, args.hidden // 2, "bfloat16", args.layers, 256, tmp,
                          "device" if gpu else "disk", 256, args.device)
        link = raw["host_to_device_bytes_per_s"] if gpu else raw["disk_read_bytes_per_s"]
        everything = args.experts / args.k
        print(f"checkpoint {size / 2**30:.2f} GiB bf16 ({args.layers} layers x {args.experts} experts, k={args.k}); "
              f"{'host->device' if gpu else 'disk (cold)'} {link / 2**30:.2f} GiB/s")
        print(f"{'budget':>14} {'prefetch':>10} {'tok/s':>7} {'plain':>6} {'vs plain':>9} {'hit rate':>9} "
              f"{'MiB/token':>10} {'bound':>7} {'vs bound':>9} {'range':>10} {'misses overlapped':>18} "
              f"{'peak RSS':>9} {'non-expert+budget':>18} {'same tokens':>12}")
        plain = run_in_process("plain", str(folder), None, args.tokens, None, None, args.tokens + 1, args.device)
        plain_tokens = plain["tokens"]
        resident_1x = None
        rates = {}
        rules = ["never"] + ([args.misses_on_cpu] if args.misses_on_cpu else [])
        runs = [(float(b), p, rule) for b in args.budgets.split(",") if float(b) < everything
                for rule in rules for p in (None, "stale-gate")]
        for x, prefetch, rule in runs + [(everything, None, "never")]:
            steady = x == everything
            r = run_in_process("runtime", str(folder), x, args.tokens, None, prefetch,
                               args.tokens + 1 if steady else 2, args.device, rule)  # alone: its memory
            pair = run_in_process(str(folder), x, args.tokens, args.rounds, prefetch, args.device, rule, steady,
                                  function="paired_rates")
            expert_bytes = r["memory"]["slow_tier_bytes"] / (args.layers * args.experts)
            decode_tokens = pair["decode_lookups"] / (args.layers * args.k)
            misses = max(0, pair["decode_misses"])  # misses kept on the CPU move nothing
            decode_bytes = (misses + pair["prefetched"]) * expert_bytes / decode_tokens  # only in decode
            load_s, miss_s = decode_bytes / link, misses * expert_bytes / decode_tokens / link
            ratios, bounds, overlapped = [], [], []
            for plain_s, runtime_s in zip(pair["plain_s"], pair["runtime_s"]):
                compute = plain_s / args.tokens
                bound = 1 / max(compute + miss_s, load_s)
                bounds.append(bound)
                ratios.append(args.tokens / runtime_s / bound)
                overlapped.append(args.tokens / runtime_s * max(compute, load_s))  # the ratio before stop 28
            tps = statistics.median(args.tokens / t for t in pair["runtime_s"])
            plain_tps = statistics.median(args.tokens / t for t in pair["plain_s"])
            vs_plain = statistics.median(p / t for p, t in zip(pair["plain_s"], pair["runtime_s"]))
            rates.setdefault(x, tps)
            limit = r["memory"]["non_expert_bytes"] + r["memory"]["cache_bytes"]
            resident_1x = resident_1x or limit
            label = ("all" if steady else f"{x:g}x") + ("" if rule == "never" else f" cpu:{rule}")
            gpu_peak = f" peak GPU {r['peak_gpu'] / 2**20:.0f}M" if gpu else ""
            same = r["tokens"] == plain_tokens and pair["same_tokens"]
            print(f"{label:>14} {prefetch or '-':>10} {tps:7.2f} {plain_tps:6.2f} {vs_plain:9.3f} "
                  f"{r['hit_rate']:9.1%} {decode_bytes / 2**20:10.1f} {statistics.median(bounds):7.2f} "
                  f"{statistics.median(ratios):9.3f} {min(ratios):5.2f}-{max(ratios):4.2f} "
                  f"{f'{statistics.median(overlapped):.3f}' if prefetch else '-':>18} "
                  f"{r['peak_rss'] / 2**20:8.0f}M {limit / 2**20:17.0f}M {str(same):>12}{gpu_peak}", flush=True)
        print(f"plain model on {args.device}: peak RSS {plain['peak_rss'] / 2**20:.0f} MiB")
        if not args.no_accelerate and not gpu:
            a = run_in_process("accelerate", str(folder), None, args.tokens, resident_1x)
            a_tps = args.tokens / a["seconds"]
            first = float(args.budgets.split(",")[0])
            print(f"accelerate disk offload at {resident_1x / 2**20:.0f} MiB resident: {a_tps:.3f} tok/s, "
                  f"peak RSS {a['peak_rss'] / 2**20:.0f} MiB; runtime at {first:g}x is {rates[first] / a_tps:.1f}x "
                  f"faster; same tokens: {a['tokens'] == plain['tokens']}")


if __name__ == "__main__":
    main()
