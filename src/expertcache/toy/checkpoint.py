"""Resumable training state, committed atomically: DIR/checkpoint/ appears whole or not at all.

A checkpoint is a folder: the model (`save_pretrained`: it loads with `from_pretrained` as it
is) and state.pt (optimizer state, RNG states, step, tokens and seconds trained). It is written
as DIR/.checkpoint.tmp-PID, every file fsynced, then swapped in with renames: the old one moves
to DIR/.checkpoint.old-PID, the new one takes its name, the old one is deleted. A kill between
the two renames leaves only the old one, which `latest` then finds. The data position is the
step (toy.data draws batch i from (seed, i)), so model + optimizer + RNG + step resume exactly.
"""

from __future__ import annotations

import os
import random
import shutil
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["TrainState", "clean", "commit", "latest", "restore_rng"]

NAME = "checkpoint"


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    # training, balance and z losses summed over the steps since the last log record, and how many:
    # kept in the checkpoint so that a resumed run logs the means an uninterrupted one logs
    loss_sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    loss_steps: int = 0

    def to_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens, "seconds": self.seconds, "loss_sums": list(self.loss_sums),
                "loss_steps": self.loss_steps}

    @classmethod
    def from_dict(cls, saved: dict) -> "TrainState":
        """From state.pt (a checkpoint written before the sums were kept starts them afresh)."""
        return cls(saved["step"], saved["tokens"], saved["seconds"], list(saved.get("loss_sums", [0.0, 0.0, 0.0])),
                   saved.get("loss_steps", 0))


def commit(out: Path, model, optimizer, state: TrainState) -> Path:
    """Write the checkpoint of `state` under `out` atomically; returns its folder."""
    tmp = out / f".{NAME}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "rng": _rng_states(), **state.to_dict()}, tmp / "state.pt")
    for file in tmp.iterdir():
        _fsync(file)
    _fsync(tmp)
    final, old = out / NAME, out / f".{NAME}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(out)
    shutil.rmtree(old, ignore_errors=True)
    return final


def latest(out: Path) -> tuple[Path, dict] | None:
    """The committed checkpoint folder and its state.pt contents, or None before the first commit."""
    candidates = [out / NAME] + sorted(out.glob(f".{NAME}.old-*"))
    for folder in candidates:
        if (folder / "state.pt").is_file():
            return folder, torch.load(folder / "state.pt", weights_only=False)
    return None


def clean(out: Path) -> None:
    """Remove what a killed commit left behind (after `latest` picked its checkpoint)."""
    leftovers = list(out.glob(f".{NAME}.tmp-*"))
    if (out / NAME / "state.pt").is_file():
        leftovers += out.glob(f".{NAME}.old-*")
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)


def _rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync(path: Path) -> None:
    with suppress(OSError):  # some filesystems refuse fsync on a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
