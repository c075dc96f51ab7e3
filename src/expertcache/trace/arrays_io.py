"""Import and export traces as plain `.npy` arrays [sequences, tokens, layers, k].

The array form lets any tool produce or consume routing: ids are signed integers with -1
where a layer did not route a token, and the exported token ids let anyone re-run the model
on the same inputs to check the routing.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import ExpertcacheError
from .format import save_array
from .trace import Trace

__all__ = ["export_arrays", "import_arrays"]


def import_arrays(
    experts_path: str | os.PathLike,
    num_experts: int,
    *,
    weights_path: str | os.PathLike | None = None,
    tokens_path: str | os.PathLike | None = None,
) -> Trace:
    """Trace from EXPERTS.npy [S, T, L, K] (all layers MoE with `num_experts` each)."""
    experts = _load(experts_path, "expert ids")
    if experts.ndim != 4:
        raise ExpertcacheError(f"{experts_path}: expert ids must be [sequences, tokens, layers, k], got shape {experts.shape}")
    if not np.issubdtype(experts.dtype, np.integer):
        raise ExpertcacheError(f"{experts_path}: expert ids must be integers, got {experts.dtype}")
    if experts.size and experts.dtype.kind == "u" and experts.max() >= num_experts:  # before int64 wraps them
        raise ExpertcacheError(f"{experts_path}: expert id {experts.max()} outside 0..{num_experts - 1}")
    below = np.argwhere(experts < -1)
    if len(below):
        s, t, layer, slot = below[0]
        raise ExpertcacheError(f"{experts_path}: sequence {s}: token {t}, MoE layer {layer}: expert id "
                               f"{experts[s, t, layer, slot]} (only -1 means not routed)")
    weights = tokens = None
    if weights_path is not None:
        weights = _load(weights_path, "routing weights")
        if weights.shape != experts.shape:
            raise ExpertcacheError(f"{weights_path}: shape {weights.shape} differs from the expert ids' {experts.shape}")
    if tokens_path is not None:
        tokens = _load(tokens_path, "token ids")
        if tokens.shape != experts.shape[:2]:
            raise ExpertcacheError(f"{tokens_path}: shape {tokens.shape}, expected {experts.shape[:2]}")
    return Trace.from_arrays(experts, num_experts, weights=weights, tokens=tokens)


def export_arrays(
    trace: Trace,
    experts_path: str | os.PathLike,
    *,
    weights_path: str | os.PathLike | None = None,
    tokens_path: str | os.PathLike | None = None,
) -> None:
    """Write a fixed-length trace's ids (and optionally weights and token ids) as .npy files."""
    outputs = [Path(p).resolve() for p in (experts_path, weights_path, tokens_path) if p is not None]
    if len(set(outputs)) < len(outputs):
        raise ExpertcacheError("two outputs name the same file; give each array its own")
    for path in outputs:
        _check_replaceable(path)
    experts, weights, tokens = trace.to_arrays()
    with ExitStack() as renames:  # every array written before any is renamed into place
        for path, array in ((experts_path, experts), (weights_path, weights), (tokens_path, tokens)):
            if path is not None:
                with open(renames.enter_context(atomic_path(path)), "wb") as f:
                    save_array(f, array)


def _load(path, what: str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ExpertcacheError(f"{path}: no such file ({what})")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        why = e if "allow_pickle" not in str(e) else "an array of Python objects; save numbers" if _is_npy(path) \
            else "not .npy data"
        raise ExpertcacheError(f"{path}: not a readable .npy array ({why})") from None


def _check_replaceable(path: Path) -> None:
    """An output is new, or an earlier .npy array (replaced); never a folder or another file."""
    if path.is_dir():
        raise ExpertcacheError(f"{path} is a folder; give a .npy file name")
    if path.exists() and not _is_npy(path):
        raise ExpertcacheError(f"{path} exists and is not a .npy array; choose another output")


def _is_npy(path: Path) -> bool:
    """Whether the file begins as numpy's .npy format does."""
    with open(path, "rb") as f:
        return f.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX

