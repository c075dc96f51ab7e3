"""Arguments that several command groups share, so they read the same in every --help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ExpertcacheError

TraceArg = Annotated[Path, typer.Argument(
    metavar="TRACE", help="Trace directory, route_trace v1 CSV, or example:NAME (a bundled real trace: expertcache examples).")]


def lower(value: str | None) -> str | None:
    """Option names are read as policy names are: in any case, spaces around ignored."""
    return value.strip().lower() if isinstance(value, str) else value


ScopeOption = Annotated[Optional[str], typer.Option(
    help="Scope: global (one pool, the default) or layer (one pool per MoE layer); a layer- policy name implies layer.",
    callback=lower)]


def scope_of(policy: str, scope: str | None) -> str:
    """The scope asked for: global unless given or implied by a "layer-" policy name, which an
    explicit --scope global contradicts."""
    if scope is None:
        return "global"
    if scope == "global" and policy.strip().lower().startswith("layer-"):
        raise ExpertcacheError(f"policy {policy} is per-layer; drop --scope global or the layer- prefix")
    return scope

