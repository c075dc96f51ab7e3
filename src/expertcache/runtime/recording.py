"""The trace an offloaded model writes of its own run (`offload(..., trace=)`).

It holds nothing of the model, so that a model dropped without `close()` (once collected) or
still alive at exit has its trace finished by a finalizer, as `close()` would.
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path

import numpy as np

from ..trace.writer import TraceWriter

RUN_SOURCE = "expertcache run"  # a run's trace says so in its manifest: a later run may replace it
PROGRESS_SECONDS = 5.0  # a run's trace holds the sequence in progress up to this long ago (what a kill -9 loses)
PROGRESS_SHARE = 0.05  # and saving it takes at most this share of the run (a long sequence rewrites more)
PARTS = ("experts", "weights", "tokens", "stale", "phase")  # of a forward, as RunRecording.add_forward takes them


# The recording that writes each trace folder. A later offload to the same folder (a notebook cell
# run again before the earlier model was closed or collected) takes it over: the earlier recording
# writes nothing more, so its finalizer cannot put its routing into the later run's trace.
_WRITING: weakref.WeakValueDictionary[Path, RunRecording] = weakref.WeakValueDictionary()


class RunRecording:
    """The sequence in progress, forward by forward, and the trace it goes to when it ends."""

    def __init__(self, path, info, capture: dict, stale_gate: bool):
        self.stale_gate = stale_gate
        self._parts: dict[str, list] = {}
        self._next_progress = time.monotonic() + PROGRESS_SECONDS
        self.path = Path(path)
        folder = self.path.resolve()
        earlier = _WRITING.get(folder)
        if earlier is not None:
            earlier.writer = None
        self.writer: TraceWriter | None = TraceWriter(path, info, capture={"source": RUN_SOURCE, **capture},
                                                      optional=("stale_gate",) if stale_gate else (),
                                                      overwrite=True, shard_tokens=256)
        _WRITING[folder] = self

    def add_forward(self, forward: dict) -> None:
        """One forward's routing (PARTS, arrays over its tokens); saved as progress now and then."""
        if self.writer is None:  # closed, or taken over by a later recording
            return
        for name in PARTS:
            if name != "stale" or self.stale_gate:
                self._parts.setdefault(name, []).append(forward[name])
        if time.monotonic() >= self._next_progress:
            start = time.monotonic()
            self.writer.save_progress(**self._sequence_so_far())
            took = time.monotonic() - start
            self._next_progress = start + took + max(PROGRESS_SECONDS, took / PROGRESS_SHARE)

    def end_sequence(self) -> None:
        if self._parts and self.writer is not None:
            arrays = self._sequence_so_far()
            self._parts = {}
            self.writer.add_sequence(**arrays)

    def _sequence_so_far(self) -> dict:
        """The sequence's routing, as the trace writer takes it (its parts joined, once)."""
        joined = {name: np.concatenate(parts) for name, parts in self._parts.items()}
        self._parts = {name: [array] for name, array in joined.items()}
        return dict(experts=joined["experts"], weights=joined["weights"], tokens=joined["tokens"],
                    phase=joined["phase"], stale_gate=joined.get("stale"))

    def close(self) -> None:
        """Add the sequence in progress and finish the trace; later calls do nothing."""
        if self.writer is not None:
            try:
                self.end_sequence()
            finally:
                writer, self.writer = self.writer, None
                writer.close()
