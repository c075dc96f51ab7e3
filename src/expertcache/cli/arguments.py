"""Arguments that several command groups share, so they read the same in every --help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


TraceArg = Annotated[Path, typer.Argument(
    metavar="TRACE", help="Trace directory, route_trace v1 CSV, or example:NAME (a bundled real trace: expertcache examples).")]


def lower(value: str | None) -> str | None:
    """Option names are read as policy names are: in any case, spaces around ignored."""
    return value.strip().lower() if isinstance(value, str) else value


ScopeOption = Annotated[Optional[str], typer.Option(
    help="Scope: global (one pool, the default) or layer (one pool per MoE layer); a layer- policy name implies layer.",
    callback=lower)]


