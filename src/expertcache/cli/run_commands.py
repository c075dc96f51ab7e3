"""`expertcache run`: generate text with the experts in a bounded cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ExpertcacheError
from . import Interrupted
from ..runtime.placement import ALWAYS
from .arguments import ScopeOption
from ..units import size_text
from .cache_commands import _percent


def run_command(
    model: Annotated[str, typer.Argument(help="Hub id or local model folder (safetensors weights).")],
    prompt: Annotated[Optional[str], typer.Option(help="Prompt text.")] = None,
    prompt_file: Annotated[Optional[Path], typer.Option(help="Read the prompt from this UTF-8 file, as is (a final newline is part of it).")] = None,
    generate: Annotated[int, typer.Option(help="Most tokens to generate: fewer where the model ends its text (its end-of-sequence token), unless --ignore-eos.")] = 32,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Generate exactly --generate tokens, past any end-of-sequence token (for measurements).")] = False,
    budget_mib: Annotated[Optional[float], typer.Option(help="Expert cache budget in MiB.")] = None,
    budget_slots: Annotated[Optional[int], typer.Option(help="Expert cache budget in experts.")] = None,
    budget_x: Annotated[Optional[float], typer.Option(help="Budget as a multiple of the active experts (L x k: k per MoE layer).")] = None,
    policy: Annotated[str, typer.Option(help="Cache policy: lru, fifo, lfu, lfu-decay, gdsf, hyperbolic or random.")] = "lru",
    scope: ScopeOption = None,
    prefetch: Annotated[Optional[str], typer.Option(help="Prefetcher: previous, frequency or stale-gate.")] = None,
    device: Annotated[str, typer.Option(help="Where the cache lives and experts compute: cpu or cuda.")] = "cpu",
    slow_tier: Annotated[Optional[str], typer.Option(help="Where uncached experts live: disk or ram (default: disk on cpu, ram on cuda).")] = None,
    experts_implementation: Annotated[Optional[str], typer.Option(help="Experts implementation, grouped_mm or eager (default: the one transformers picks for the plain model).")] = None,
    misses_on_cpu: Annotated[str, typer.Option(help="Compute a missed expert on the CPU from its copy in RAM instead of moving it: never, always, auto (when that is cheaper for the tokens using it, measured at load), or N (when fewer than N tokens of the layer call use it). Needs --slow-tier ram.")] = "never",
    trace: Annotated[Optional[Path], typer.Option(help="Record the run's routing here (replay it with simulate --accounting strict); replaces an earlier run's trace, never anything else.")] = None,
    sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the model's chat template.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Generate with the routed experts in a bounded cache (exact outputs; counters equal `simulate`'s)."""
    from ..runtime.run import run
    from .capture_commands import quiet_transformers

    if (prompt is None) == (prompt_file is None):
        raise ExpertcacheError("give exactly one of --prompt and --prompt-file")
    if prompt_file is not None:
        try:
            prompt = prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ExpertcacheError(f"{prompt_file} is not UTF-8 text") from None
    quiet_transformers()
    result = run(model, prompt, generate, sample=sample, temperature=temperature, seed=seed, chat=not raw,
                 ignore_eos=ignore_eos,
                 budget_mib=budget_mib, budget_slots=budget_slots, budget_x=budget_x, policy=policy, scope=scope,
                 prefetch=prefetch, device=device, slow_tier=slow_tier, trace=trace,
                 experts_implementation=experts_implementation, misses_on_cpu=misses_on_cpu)
    if as_json:
        print(json.dumps(result.to_json()))
    else:
        print(result.text)
        print_run_summary(result.stats, trace)
    if result.interrupted:
        raise Interrupted("the tokens so far are shown" + (f"; the trace in {trace} is complete up to them" if trace else ""),
                          result.stop_signal)


def print_run_summary(s, trace: Optional[Path] = None) -> None:
    t, m = s.timings, s.memory
    table = Table("", "value", title="offloaded run", title_justify="left")
    budget = size_text(s.budget_bytes) if s.budget_bytes is not None else f"{s.budget_slots} experts"
    slots = f"{m['slots']} slots" + (", one per expert" if m["cache_bytes"] >= m["slow_tier_bytes"] else "")
    table.add_row("cache", f"{s.policy} ({s.scope}), budget {budget} = {slots} on {m['fast_device']}")
    table.add_row("experts computed with", s.experts_implementation)
    for phase in ("prefill", "decode"):
        rate = t[f"{phase}_tokens_per_s"]
        table.add_row(f"{phase} tokens/s", "-" if rate is None else f"{rate:.1f} ({t[phase + '_tokens']} tokens)")
    table.add_row("hit rate", f"{s.hit_rate:.1%} ({s.hits}/{s.lookups}); decode {_percent(s.decode_hit_rate, 1)}")
    table.add_row("bytes read", size_text(s.bytes_read))
    if s.misses_on_cpu_below:
        rule = "every miss" if s.misses_on_cpu_below >= ALWAYS else f"misses fewer than {s.misses_on_cpu_below} tokens use"
        table.add_row("computed on the CPU", f"{s.misses_on_cpu} misses ({rule}), not moved")
    if s.prefetch is not None:
        p = s.prefetch
        used = f" ({p.used / p.issued:.0%} used)" if p.issued else ""
        table.add_row("prefetch", f"{p.name}: issued {p.issued}, used {p.used}{used}, wasted {p.wasted}")
        if p.used * 2 < p.issued:  # it read more experts for nothing than for use
            table.add_row("", "most prefetched experts went unused: each was read for nothing and displaced a "
                              "cached one; compare with --prefetch none")
    table.add_row("fast tier", f"{size_text(m['non_expert_bytes'])} non-expert weights + {size_text(m['cache_bytes'])} expert cache")
    table.add_row("slow tier", f"{size_text(m['slow_tier_bytes'])} of experts ({m['slow_tier']})")
    table.add_row("peak RSS", size_text(m["peak_rss_bytes"]))
    if "peak_gpu_bytes" in m:
        table.add_row("peak GPU memory", size_text(m["peak_gpu_bytes"]))
    console = Console(stderr=True)
    console.print(table)
    if trace is not None:
        below = f" --misses-on-cpu-below {s.misses_on_cpu_below}" if s.misses_on_cpu_below else ""
        console.print(f"routing -> {trace} (check: expertcache simulate {trace} --accounting strict --policy {s.policy}"
                      f"{below} ...)")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
