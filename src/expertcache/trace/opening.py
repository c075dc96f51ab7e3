"""Open whatever a user points a command at: a trace directory or a route-trace CSV."""

from __future__ import annotations

import os
from pathlib import Path

from .bigmoe import import_bigmoe
from .trace import Trace

__all__ = ["open_trace"]


def open_trace(path: str | os.PathLike | Trace) -> Trace:
    """A Trace as is, a trace directory (memory-mapped), or a `*.csv` route trace (imported)."""
    if isinstance(path, Trace):
        return path
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        return import_bigmoe(path)
    return Trace.load(path)
