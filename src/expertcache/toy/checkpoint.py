"""Resumable training state, committed atomically: DIR/checkpoint/ appears whole or not at all.

A checkpoint is a folder: the model (`save_pretrained`: it loads with `from_pretrained` as it
is) and state.pt (optimizer state, RNG states, step, tokens and seconds trained), written as a
durable `atomic_folder`: every file on disk before the swap, and a kill during the swap undone
when `latest` looks for it. The data position is the
step (toy.data draws batch i from (seed, i)), so model + optimizer + RNG + step resume exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_folder, recover_folder
from ..errors import ExpertcacheError

__all__ = ["TrainState", "commit", "latest", "restore_rng"]

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
    with atomic_folder(out / NAME, durable=True) as stage:
        model.save_pretrained(stage)
        torch.save({"optimizer": optimizer.state_dict(), "rng": _rng_states(), **state.to_dict()}, stage / "state.pt")
    return out / NAME


def latest(out: Path) -> tuple[Path, dict] | None:
    """The committed checkpoint folder and its state.pt contents, or None before the first commit
    (what a killed commit left is cleared first, and a checkpoint it had moved aside put back)."""
    recover_folder(out / NAME)
    state = out / NAME / "state.pt"
    if not state.is_file():
        return None
    try:
        saved = torch.load(state, weights_only=False)
    except Exception as e:  # a damaged file raises whatever its bytes lead the unpickler to
        raise ExpertcacheError(f"{state} is damaged ({type(e).__name__}); remove {out / NAME} to train from "
                               "the start") from None
    if not isinstance(saved, dict) or "step" not in saved:
        raise ExpertcacheError(f"{state} holds no training step; remove {out / NAME} to train from the start")
    return out / NAME, saved


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

