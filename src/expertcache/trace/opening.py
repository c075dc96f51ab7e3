"""Open whatever a user points a command at: a trace directory, a route-trace CSV or a bundled example."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ExpertcacheError
from .bigmoe import import_bigmoe
from .examples import EXAMPLE_PREFIX, open_example
from .trace import Trace

__all__ = ["open_trace"]


def open_trace(path: str | os.PathLike | Trace) -> Trace:
    """A Trace as is, `example:NAME` (a bundled trace), a trace directory (memory-mapped), or a
    `*.csv` route trace (imported)."""
    if isinstance(path, Trace):
        return path
    if not isinstance(path, (str, os.PathLike)):
        raise ExpertcacheError(f"a trace is a Trace, a trace folder, a route CSV or example:NAME; got {type(path).__name__}")
    if str(path).startswith(EXAMPLE_PREFIX):
        return open_example(str(path).removeprefix(EXAMPLE_PREFIX))
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        return import_bigmoe(path)
    return Trace.load(path)
