"""CLI commands of the trace import, export and info (placeholder until they land)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
