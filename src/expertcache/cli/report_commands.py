"""`expertcache report`: does a model suit expert offloading, with figures (report.html, report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .progress import transient_bar

_stderr = Console(stderr=True)


def report(
    traces: Annotated[list[str], typer.Argument(
        metavar="TRACE...", help="Trace directories, route_trace v1 CSVs or example:NAME (expertcache examples).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.html, report.md, figures/ and report.json.")],
    profile: Annotated[Optional[Path], typer.Option(
        help="Hardware profile JSON (expertcache bench-hw --out) for expected decode tokens/s.")] = None,
    budget_mib: Annotated[Optional[float], typer.Option(
        help="Your fast-memory budget for experts in MiB (2^20 bytes): the report adds the hit rate it gets.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report folder.")] = False,
) -> None:
    """Does each model suit expert offloading? A verdict, cache advice and figures.

    Writes report.html (self-contained, opens offline), report.md with figures/*.png, and
    report.json with every number behind the figures.
    """
    from .cache_commands import _profile

    for f in make_report(traces, out, profile=_profile(profile), budget_mib=budget_mib, overwrite=overwrite):
        Console().print(f"{f.evidence.label}: {f.verdict.headline}", highlight=False)
    _stderr.print(f"report: {out / 'report.html'} (also report.md, report.json)", highlight=False)


def make_report(sources, out: Path, **options):
    """write_report with a progress bar on stderr; returns the findings."""
    from ..report.build import progress_units, write_report

    with transient_bar(40) as bar:
        task = bar.add_task("report", total=progress_units(len(sources)))
        return write_report(sources, out, progress=lambda step: bar.update(task, advance=1, description=step), **options)


def register(app: typer.Typer) -> None:
    """Add `report`."""
    app.command("report")(report)
