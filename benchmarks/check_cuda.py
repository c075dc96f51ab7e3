"""The runtime's CUDA path in one short run, for a machine with a GPU (CI has none).

  python benchmarks/check_cuda.py            # exactness + counters on tiny models (~1 min)
  python benchmarks/check_cuda.py --bench    # then bench_runtime.py --device cuda --misses-on-cpu auto

For each family and experts implementation, at the minimum budget (chunked prefill), at 3k
experts per layer with prefetch, and with everything cached: the offloaded model on cuda
against the stock model on cuda with the same implementation (logits equal bit for bit, or the
largest difference), and the run's counters against `simulate --accounting strict` on its own
trace. Then --misses-on-cpu auto: the threshold it measured, and the tokens against the stock
model (rows computed on the CPU cannot be bit-identical to the GPU's; the tokens say whether
that matters). Prints one line per case and a summary; exit status 1 if a counter differs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers

import expertcache as ec
from expertcache.runtime import close, offload, stats
from expertcache.toy.zoo import build_tiny_model

FAMILIES = ["olmoe", "mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "deepseek_v2", "deepseek_v3", "glm4_moe",
            "gpt_oss", "phimoe", "granitemoe", "llama4_text"]
COUNTERS = ("lookups", "hits", "decode_lookups", "decode_hits", "bytes_read", "misses_on_cpu")


def stock(path: Path, implementation: str | None):
    options = {} if implementation is None else {"experts_implementation": implementation}
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **options).eval().to("cuda")


def check(path: Path, implementation: str | None, tmp: Path) -> list[bool]:
    ids = torch.randint(1, 500, (1, 20), generator=torch.Generator().manual_seed(0)).cuda()
    plain = stock(path, implementation)
    with torch.no_grad():
        want = plain(ids).logits
        steps = plain.generate(ids, max_new_tokens=8, do_sample=False)
    del plain
    model = offload(path, budget_x=1.0, device="cuda")
    info = model._expertcache_runtime.ckpt.info
    close(model)
    L, k, E = info.num_moe_layers, info.top_k, max(info.num_experts)
    ok = []
    for label, slots, prefetch, rule in (("min", k * L, None, "never"), ("3k", min(E, 3 * k) * L, "previous", "never"),
                                         ("all", E * L, None, "never"), ("min cpu:auto", k * L, None, "auto")):
        trace = tmp / f"{path.name}-{implementation}-{label}.trace"
        model = offload(path, budget_slots=slots, scope="layer", prefetch=prefetch, device="cuda", trace=trace,
                        experts_implementation=implementation, misses_on_cpu=rule)
        with torch.no_grad():
            got = model(ids).logits
            out = model.generate(ids, max_new_tokens=8, do_sample=False)
        s = stats(model)
        close(model)
        replay = ec.simulate(trace, "lru", "layer", budget_slots=slots, prefetch=prefetch, accounting="strict",
                             misses_on_cpu_below=s.misses_on_cpu_below).to_json()
        same = all(s.to_json()[key] == replay[key] for key in COUNTERS)
        ok.append(same)
        exact = "bit-identical" if torch.equal(got, want) else f"max |diff| {(got - want).abs().max().item():.3g}"
        print(f"{path.name:12} {implementation or 'dense':10} {label:13} logits {exact:22} "
              f"tokens {'same' if out.tolist() == steps.tolist() else 'DIFFER':6} counters {'= replay' if same else 'DIFFER'}"
              f"{f'  (cpu below {s.misses_on_cpu_below} tokens: {s.misses_on_cpu} misses)' if rule != 'never' else ''}",
              flush=True)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="store_true", help="then run bench_runtime.py --device cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("check_cuda: this machine has no CUDA device")
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, transformers {transformers.__version__}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for family in FAMILIES:
            path = tmp / family
            build_tiny_model(family, path, seed=1)
            transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).save_pretrained(path)
            for implementation in ((None,) if family == "llama4_text" else ("grouped_mm", "eager")):
                results += check(path, implementation, tmp)
    print(f"counters equal to the replay in {sum(results)}/{len(results)} runs")
    if args.bench:
        subprocess.run([sys.executable, str(Path(__file__).parent / "bench_runtime.py"), "--device", "cuda",
                        "--misses-on-cpu", "auto"], check=True)
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
