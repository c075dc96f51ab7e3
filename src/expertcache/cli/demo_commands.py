"""`expertcache demo`: the whole pipeline on the built-in tiny model and corpus, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .capture_commands import quiet_transformers, report_capture


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
    result = run_demo(out, samples=samples, length=length, overwrite=overwrite, progress=True)
    report_capture(result)
    trace = result.load()
    print_summary(summarize(trace))
    print_outlook(outlook(trace))


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


def register(app: typer.Typer) -> None:
    """Add `demo`."""
    app.command("demo")(demo)
