"""On-disk layout of a routing trace (documented in docs/trace-format.md).

A trace is a directory: `manifest.json` plus `shards/NNNNN/`, each shard a self-contained
group of whole sequences stored as `.npy` arrays (memory-mappable) and a `shard.json` that
records their shapes and byte sizes, so truncation and mix-ups are caught on load.

Shape key: S sequences, N tokens (all sequences concatenated), L MoE layers, K top-k, E experts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ExpertcacheError

FORMAT_NAME = "expertcache-trace"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
SHARD_META = "shard.json"
STACKS = "stacks.json"  # in a seq2seq capture folder: names the stacks, each a trace of its own

PREFILL, DECODE = 0, 1

# name -> dtype; the shape is in the comment
SEQUENCE_ARRAYS = {
    "seq_lengths": np.dtype(np.int64),  # [S]
    "seq_domain": np.dtype(np.int16),  # [S] index into manifest["domains"]
    "seq_turn": np.dtype(np.int32),  # [S] conversation turn (0 when not a chat)
}
TOKEN_ARRAYS = {
    "tokens": np.dtype(np.int32),  # [N] token id the model saw, -1 when unknown
    "positions": np.dtype(np.int32),  # [N] position of the token in its sequence
    "phase": np.dtype(np.uint8),  # [N] PREFILL or DECODE
    "weights": np.dtype(np.float16),  # [N, L, K] routing weights, score order
}
OPTIONAL_ARRAYS = ("logits", "stale_gate")  # [N, L, E] float16 each


def expert_dtype(max_experts: int) -> np.dtype:
    """Smallest unsigned type holding ids 0..E-1 plus the pad id (its maximum value)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_experts <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ExpertcacheError(f"{max_experts} experts per layer is more than any id type holds")


def pad_id(dtype: np.dtype) -> int:
    """Id stored where a layer did not route a token (e.g. a prefill token the last layer skips)."""
    return int(np.iinfo(dtype).max)


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ExpertcacheError(f"{path}: missing {what}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExpertcacheError(f"{path}: corrupt {what} ({e})") from None
    if not isinstance(data, dict):
        raise ExpertcacheError(f"{path}: corrupt {what} (not a JSON object)")
    return data


def load_array(path: Path, expected_bytes: int) -> np.ndarray:
    """Memory-map one shard array, checking it is whole."""
    if not path.is_file():
        raise ExpertcacheError(f"{path}: missing array file")
    size = path.stat().st_size
    if size != expected_bytes:
        raise ExpertcacheError(
            f"{path}: truncated or replaced ({size} bytes on disk, {expected_bytes} recorded)"
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ExpertcacheError(f"{path}: unreadable array ({e})") from None


def save_array(f: BinaryIO, array: np.ndarray) -> None:
    """Write `array` to the open file `f` as .npy, the bytes np.save writes.

    np.save hands a real file to ndarray.tofile, which turns a Ctrl-C arriving during the
    write into a TypeError about the file object (numpy 2.x: 12 of 2 056 timed interrupts
    here), so an interrupted capture would end in a traceback instead of saving what it has.
    Here numpy writes only the header and Python writes the data, so the interrupt stays one.
    """
    array = np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
    f.write(memoryview(array.reshape(-1)).cast("B"))
