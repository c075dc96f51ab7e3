"""The exceptions the command line turns into one line.

`ExpertcacheError` means "the user asked for something wrong": the CLI prints it as a single
line and exits with status 2. `CaptureInterrupted` is Ctrl-C during a capture, raised once the
finished sequences are committed: the CLI says how many are stored and the command that
resumes. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["CaptureInterrupted", "ExpertcacheError"]


class ExpertcacheError(Exception):
    """A user mistake or unusable input, explained in one line."""


class CaptureInterrupted(KeyboardInterrupt):
    """Ctrl-C during a capture, after committing what finished: `saved` of `total` sequences
    are stored in `out`, and running the same capture again continues from there."""

    def __init__(self, out, saved: int, total: int):
        super().__init__(f"{saved} of {total} sequences saved in {out}")
        self.out, self.saved, self.total = out, saved, total
