"""Arguments that several command groups share, so they read the same in every --help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

TraceArg = Annotated[Path, typer.Argument(
    metavar="TRACE", help="Trace directory, route_trace v1 CSV, or example:NAME (a bundled real trace: expertcache examples).")]
