"""`expertcache demo`: the whole pipeline on the built-in tiny model and corpus, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ExpertcacheError
from .capture_commands import quiet_transformers, report_capture, resumable


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo model and its trace.")] = Path("expertcache-demo"),
    samples: Annotated[int, typer.Option("--samples", "-n", help="Windows per demo domain.")] = 8,
    length: Annotated[int, typer.Option("--length", "-T", help="Tokens per window.")] = 256,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Capture the demo trace afresh.")] = False,
) -> None:
    """Trace a tiny MoE model over the built-in corpus, measure locality, replay an expert cache.

    The main job of expertcache end to end, offline; re-running reuses the model and trace.
    """
    from ..report import outlook
    from ..trace.demo import run_demo
    from ..trace.summary import summarize
    from .trace_commands import print_summary

    quiet_transformers()
    with resumable():
        result = run_demo(out, samples=samples, length=length, overwrite=overwrite, progress=True)
    report_capture(result)
    trace = result.load()
    print_summary(summarize(trace))
    print_outlook(outlook(trace))
    print_offloaded_run(out, trace)


def print_outlook(o) -> None:
    """The outlook as a table: locality figures with their chance level and excess first."""
    table = Table("figure", "measured", "chance", "excess", title="offloading outlook", title_justify="left")
    table.add_row(f"SRP({o.m}) [95 % CI]", f"{o.srp:.3f} [{o.srp_ci[0]:.3f}, {o.srp_ci[1]:.3f}]", f"{o.srp_chance:.3f}",
                  f"{o.srp_excess:+.3f}")
    table.add_row(f"SCH({o.m}) hit rate at 2x", f"{o.sch:.1%}", f"{o.sch_chance:.1%}", f"{o.sch_excess:+.1%}")
    table.add_row("LRU hit rate at 2x (study)", f"{o.lru_study:.1%}", "", "")
    table.add_row("LRU hit rate at 2x (engine, decode)", f"{o.lru_engine:.1%}", "", "")
    console = Console()
    console.print(table)
    console.print(f"smallest global LRU cache reaching 90 % of the best hit rate: {o.recommended_x:g}x the active "
                  f"experts ({o.recommended_hit_rate:.1%} hits)")
    console.print("next: `expertcache analyze`, `expertcache sweep`, `expertcache trace YOUR_MODEL --corpus demo ...`")


def print_offloaded_run(out: Path, trace) -> None:
    """The runtime on the demo model at 1x the active experts: exact tokens, hit rate as simulated."""
    from ..runtime.run import verify

    prompt = [int(t) for t in np.asarray(trace.tokens[trace.sequence(0)])[:32]]
    v = verify(out / "model", prompt, 24, out / "offloaded-run.trace", budget_x=1.0, policy="lru", prefetch="previous")
    console = Console()
    s = v.stats
    console.print(f"offloaded run, experts cached at 1x the active experts ({s.memory['slots']} of "
                  f"{trace.model.num_moe_layers * max(trace.model.num_experts)} experts, LRU, previous-token prefetch):")
    console.print(f"  {v.tokens} tokens generated, {'the same' if v.same_tokens else 'NOT the same'} as the plain model's; "
                  f"hit rate {v.measured_hit_rate:.1%} measured, {v.simulated_hit_rate:.1%} simulated on the run's trace"
                  f"{'' if v.measured_hit_rate == v.simulated_hit_rate else ' (MISMATCH)'}")
    if not v.same_tokens or v.measured_hit_rate != v.simulated_hit_rate:
        raise ExpertcacheError("the offloaded run disagrees with the plain model or the simulator; please report it")
    console.print("  try: expertcache run " + str(out / "model") + " --prompt 'def main():' --budget-x 1 --generate 32")


def register(app: typer.Typer) -> None:
    """Add `demo`."""
    app.command("demo")(demo)
