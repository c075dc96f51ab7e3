"""Peak resident memory of `expertcache run`, measured from outside the process (its VmHWM in
/proc, polled until it exits), against non-expert weights + cache budget + the documented fixed
cost of the libraries. The checkpoint's experts are 6x the larger budget, so a runtime that
materialized them (or let the page cache of a memory map count) would be far over."""

import json
import subprocess
import sys
import time

import pytest
import torch
import transformers

from expertcache.trace.corpus import demo_tokenizer

FIXED = 256 * 2**20  # docs/runtime.md: library code loaded on first use (transformers modeling, torch kernels, numba)
SLACK = 24 * 2**20  # activations, KV cache, allocator rounding

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")


@pytest.fixture(scope="module")
def big_experts(tmp_path_factory):
    """bf16, 4 MoE layers x 64 experts x 1.5 MiB = 384 MiB of experts, 14 MiB of the rest."""
    tokenizer = demo_tokenizer()
    config = transformers.Qwen3MoeConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1024,
                                         moe_intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                                         num_key_value_heads=4, head_dim=64, num_experts=64, num_experts_per_tok=4)
    path = tmp_path_factory.mktemp("big") / "model"
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def peak_rss(args, out_path) -> int:
    """The child's high-water resident set (VmHWM), read from /proc while it runs."""
    with open(out_path, "w") as out:
        child = subprocess.Popen([sys.executable, *map(str, args)], stdout=out, stderr=subprocess.DEVNULL)
        peak = 0
        while child.poll() is None:
            try:
                with open(f"/proc/{child.pid}/status") as status:
                    peak = max([peak] + [int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")])
            except OSError:
                pass
            time.sleep(0.005)
    assert child.returncode == 0
    return peak


def test_peak_memory_follows_the_budget_not_the_checkpoint(big_experts, tmp_path):
    out = tmp_path / "out.json"
    base = peak_rss(["-c", "import time, torch, transformers, numba, expertcache.cli, expertcache.runtime; "
                     "time.sleep(0.2)"], out)
    # once unmeasured: a cold numba cache compiles the engine in the child (LLVM's memory is not the runtime's)
    peak_rss(["-m", "expertcache", "run", big_experts, "--prompt", "def f(x):", "--generate", 1, "--budget-mib", 24,
              "--raw", "--json"], out)
    runs = {}
    for mib in (24, 96):
        peak = peak_rss(["-m", "expertcache", "run", big_experts, "--prompt", "def f(x):", "--generate", 8,
                         "--budget-mib", mib, "--raw", "--json"], out)
        runs[mib] = peak, json.loads(out.read_text())["memory"]
    for mib, (peak, memory) in runs.items():
        assert memory["slow_tier_bytes"] >= 4 * memory["cache_bytes"]
        assert peak - base <= memory["non_expert_bytes"] + memory["cache_bytes"] + FIXED + SLACK, mib
    (small, m_small), (large, m_large) = runs[24], runs[96]
    grown = m_large["cache_bytes"] - m_small["cache_bytes"]
    assert abs((large - small) - grown) <= SLACK  # a bigger budget costs its size, nothing more
