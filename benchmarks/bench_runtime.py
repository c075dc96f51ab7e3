"""Offloading runtime: greedy decode tokens/s at several budgets against the plain model and
against the SPEC §7 bound measured on the same machine in the same run.

The checkpoint is a randomly initialised Qwen3-MoE-style model saved as bf16 safetensors to a
temporary folder (size set by --hidden/--layers/--experts). Between runs the checkpoint's pages
are dropped from the page cache (posix_fadvise DONTNEED), and the runtime's disk tier drops
every range it reads, so misses are real disk reads.

Figures:
- everything cached vs plain transformers model (same eager experts implementation): ratio;
- offloaded at 1x, 2x, 4x the active experts: tokens/s, hit rate, MiB read per token, and the
  ratio to the §7 bound 1 / max(compute time per token, missed bytes per token / disk bandwidth)
  with loads overlapping compute (disk bandwidth from `bench_hw`'s cold read test);
- peak RSS per budget (each budget in its own process) against non-expert weights + budget.

Run: python benchmarks/bench_runtime.py [--hidden 512 --layers 8 --experts 64 --k 8 --tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(folder: Path, args) -> Path:
    import transformers

    config = transformers.Qwen3MoeConfig(
        vocab_size=4096, hidden_size=args.hidden, intermediate_size=args.hidden * 2,
        moe_intermediate_size=args.hidden // 2, num_hidden_layers=args.layers, num_attention_heads=8,
        num_key_value_heads=4, head_dim=args.hidden // 8, num_experts=args.experts,
        num_experts_per_tok=args.k, max_position_embeddings=4096)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    return folder


def drop_page_cache(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


PROMPT = list(range(10, 42))


def one_run(folder: str, budget_x: float | None, tokens: int) -> dict:
    """In a fresh process: decode tokens/s and counters of one configuration (None = plain model)."""
    import transformers

    import expertcache.runtime as rt

    ids = torch.tensor([PROMPT])
    if budget_x is None:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, experts_implementation="eager").eval()
        for p in model.parameters():
            p.data = p.data.clone()
    else:
        model = rt.offload(folder, budget_x=budget_x)
    def timed(n):
        drop_page_cache(Path(folder))
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out, time.perf_counter() - start

    with torch.no_grad():
        timed(2)  # warm-up (and numba)
        _, first = timed(1)  # prefill + one token: taken off, so the figure is decode alone
        out, seconds = timed(tokens + 1)
    result = {"tokens": out[0, len(PROMPT):].tolist(), "seconds": seconds - first}
    if budget_x is not None:
        s = rt.stats(model)
        result.update(s.to_json())
        rt.close(model)
    import resource

    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def run_in_process(folder: Path, budget_x, tokens: int) -> dict:
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_runtime as b; " \
           f"print(json.dumps(b.one_run({str(folder)!r}, {budget_x!r}, {tokens})))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--budgets", default="1,2,4")
    args = ap.parse_args()
    from expertcache.cache.hwbench import bench_hw

    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = build(Path(tmp) / "model", args)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        _, raw = bench_hw(args.hidden, args.hidden // 2, "bfloat16", args.layers, 256, tmp, "disk", 256, "cpu")
        disk = raw["disk_read_bytes_per_s"]
        plain = run_in_process(folder, None, args.tokens)
        plain_tps = args.tokens / plain["seconds"]
        compute_s = 1 / plain_tps
        everything = args.experts / args.k
        print(f"checkpoint {size / 2**30:.2f} GiB bf16; disk {disk / 2**30:.2f} GiB/s (cold); "
              f"plain model {plain_tps:.1f} tok/s")
        print(f"{'budget':>10} {'tok/s':>8} {'vs plain':>9} {'hit rate':>9} {'MiB/token':>10} {'bound':>8} "
              f"{'vs bound':>9} {'peak RSS':>10} {'non-expert+budget':>18} {'same tokens':>12}")
        for x in [float(b) for b in args.budgets.split(",")] + [everything]:
            r = run_in_process(folder, x, args.tokens)
            tps = args.tokens / r["seconds"]
            expert_bytes = r["memory"]["slow_tier_bytes"] / (args.layers * args.experts)
            decode_tokens = r["decode_lookups"] / (args.layers * args.k)
            decode_bytes = (r["decode_lookups"] - r["decode_hits"]) * expert_bytes / decode_tokens
            bound = 1 / max(compute_s, decode_bytes / disk)
            limit = r["memory"]["non_expert_bytes"] + r["memory"]["cache_bytes"]
            label = "all" if x == everything else f"{x:g}x"
            print(f"{label:>10} {tps:8.2f} {tps / plain_tps:9.3f} {r['hit_rate']:9.1%} {decode_bytes / 2**20:10.1f} "
                  f"{bound:8.2f} {tps / bound:9.3f} {r['peak_rss'] / 2**20:9.0f}M {limit / 2**20:17.0f}M "
                  f"{str(r['tokens'] == plain['tokens']):>12}")


if __name__ == "__main__":
    main()
