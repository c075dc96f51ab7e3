"""`expertcache demo`: the answer for real models first, then the whole pipeline on a tiny model, offline.

Part 1 reads the routing recorded from real MoE models (the bundled examples), prints their
locality against chance and the verdict, and writes the report with figures. Part 2 runs every
stage on a tiny model built on the spot: its weights are random, so it shows the mechanics,
not locality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from ..errors import ExpertcacheError
from .capture_commands import quiet_transformers, report_capture, resumable


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the report, the tiny model and its trace.")] = Path(
        "expertcache-demo"),
    samples: Annotated[int, typer.Option("--samples", "-n", help="Windows per demo domain (tiny model).")] = 8,
    length: Annotated[int, typer.Option("--length", "-T", help="Tokens per window (tiny model).")] = 256,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Capture the tiny model's trace afresh.")] = False,
) -> None:
    """Real MoE models judged for expert offloading, then the whole pipeline on a tiny model.

    Offline. Re-running rewrites the report and reuses the tiny model and its trace.
    """
    from ..report.evidence import gather
    from ..trace.demo import check_demo_args, run_demo
    from ..trace.examples import EXAMPLE_PREFIX, example_names
    from .report_commands import make_report

    check_demo_args(out, samples, length)  # before part 1 writes anything
    console = Console(highlight=False)
    console.rule("[bold]1. Real models[/bold]: routing recorded from four released MoE models (bundled, offline)")
    findings = make_report([EXAMPLE_PREFIX + name for name in example_names()], out / "report", overwrite=True)
    print_findings(findings)
    console.print(f"report with figures and the evidence behind each verdict: [bold]{out / 'report' / 'report.html'}[/bold]")

    console.rule("[bold]2. The pipeline on a tiny model[/bold]")
    console.print("The tiny model is built here with [bold]random weights[/bold]: it shows "
                  "the mechanics (trace, locality, cache, offloaded run), not real locality, so expect its routing "
                  "to be barely more local than chance.")
    quiet_transformers()
    with resumable():
        result = run_demo(out, samples=samples, length=length, overwrite=overwrite, progress=True)
    report_capture(result)
    trace = result.load()
    console.print(f"traced {trace.num_tokens} tokens of the demo corpus ({', '.join(trace.domains)}) through "
                  f"{trace.num_moe_layers} MoE layers of {trace.num_experts} experts, k = {trace.top_k}")
    print_outlook(gather(trace, "tiny demo model"))
    print_offloaded_run(out, trace)


def print_findings(findings) -> None:
    """One row per model: locality against chance, the hit rate at 2x, the verdict; then the advice."""
    from ..report import Outlook

    console = Console(highlight=False)
    console.print("SCH = hit rate of a per-layer cache of 2x the active experts that keeps what the next 16 tokens "
                  "need; chance = the same with each sequence's tokens shuffled; excess = SCH - chance, what "
                  "locality adds. LRU = hit rate of a plain LRU cache of 2x the active experts shared by all layers.")
    table = Table("model", "experts, k", "SCH", "chance", "excess", "LRU", "verdict",
                  title="does expert offloading suit it?", title_justify="left")
    for f in findings:
        ev, o = f.evidence, Outlook.of(f.evidence)
        table.add_row(ev.model.name, f"{ev.model.max_experts}, {ev.model.top_k}", f"{o.sch:.1%}", f"{o.sch_chance:.1%}",
                      f"{100 * o.sch_excess:+.1f} points", f"{o.lru_engine:.1%}", f.verdict.kind)
    console.print(table)
    console.print("recommended cache (smallest LRU cache reaching 90% of LRU's best hit rate) and what it gets:")
    for f in findings:
        c = f.evidence.recommended
        size = "size unknown" if c.budget_bytes is None else f"{c.budget_bytes / 2**30:.1f} GiB"
        console.print(f"  {f.evidence.model.name}: {c.budget_x:.1f}x the active experts ({size}), {c.policy.upper()}"
                      f"{'' if c.prefetch is None else f' with {c.prefetch} prefetching'}: {c.hit_rate:.1%} hits")


def print_outlook(ev) -> None:
    """The tiny model's headline figures, locality against chance first, and its verdict."""
    from ..report import Outlook, judge, outlook_rows

    table = Table("figure", "measured", "chance level", "excess over chance", title="tiny model: offloading outlook",
                  title_justify="left")
    for row in outlook_rows(Outlook.of(ev)):
        table.add_row(*row)
    console = Console(highlight=False)
    console.print(table)
    console.print(f"verdict by the same rule as for the real models: {judge(ev).kind}")
    console.print("next: `expertcache report example:qwen3-30b-a3b --out r`, `expertcache trace YOUR_MODEL --corpus demo ...`")


def print_offloaded_run(out: Path, trace) -> None:
    """The runtime on the demo model at 1x the active experts: exact tokens, hit rate as simulated."""
    from ..runtime.run import verify

    prompt = [int(t) for t in np.asarray(trace.tokens[trace.sequence(0)])[:32]]
    v = verify(out / "model", prompt, 24, out / "offloaded-run.trace", budget_x=1.0, policy="lru", prefetch="previous")
    console = Console(highlight=False)
    s = v.stats
    console.print(f"offloaded run of the tiny model: its experts live on disk and a cache in memory holds "
                  f"{s.memory['slots']} of its {trace.model.num_moe_layers * max(trace.model.num_experts)} experts "
                  "(1x the active experts), LRU policy, previous-token prefetching:")
    console.print(f"  generated {v.tokens} tokens, {'the same' if v.same_tokens else 'NOT the same'} as the plain "
                  f"model's; cache hit rate {v.measured_hit_rate:.1%} measured in the run, {v.simulated_hit_rate:.1%} "
                  f"predicted by the simulator on the run's trace"
                  f"{'' if v.measured_hit_rate == v.simulated_hit_rate else ' (MISMATCH)'}")
    if not v.same_tokens or v.measured_hit_rate != v.simulated_hit_rate:
        raise ExpertcacheError("the offloaded run disagrees with the plain model or the simulator; please report it")
    console.print("  try: expertcache run " + str(out / "model") + " --prompt 'def main():' --budget-x 1 --generate 32")


def register(app: typer.Typer) -> None:
    """Add `demo`."""
    app.command("demo")(demo)
