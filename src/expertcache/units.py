"""Sizes and counts in words people read: one formatter each for the CLI, warnings and reports."""

from __future__ import annotations

__all__ = ["count_text", "size_text", "signed_text"]


def size_text(n: int | float) -> str:
    """Bytes in the largest binary unit they reach: "1.5 GiB", "24.0 MiB", "512 B"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def signed_text(value: float, digits: int = 1) -> str:
    """A difference with its sign, "+1.5" or "-0.3", never "-0.0" for a value that rounds to zero."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def count_text(n: int, noun: str) -> str:
    """ "1 token", "2 tokens": a count with its noun in the right number (nouns taking a plain -s)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
