"""The CLI's transient progress bar: on stderr, and only where stderr is a terminal (in a pipe or a
log it would leave a blank line before the command's output or error)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["transient_bar"]


def transient_bar(description_width: int = 0) -> Progress:
    """A bar showing its task's description (padded to `description_width`), done of total and time."""
    console = Console(stderr=True)
    return Progress(TextColumn(f"{{task.description:<{description_width}}}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)
