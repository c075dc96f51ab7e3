"""What a trace must satisfy before any compiled kernel reads it (docs/trace-format.md).

Kernels index per-expert state by id without bounds checks, so routing is checked where it
enters: when a sequence is written and when a shard's array is first read. Expert ids lie in
0..E_l-1 of their MoE layer or are the pad id, no id appears twice in one token's list for a
layer, and a shard routes at least one id. A crc32 per array file, recorded in shard.json,
finds damage that keeps the file's size; traces written before checksums load without it.
"""

from __future__ import annotations

import json
import mmap
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ExpertcacheError
from .format import DECODE, PREFILL, SHARD_META

__all__ = ["Deferred", "check_expert_ids", "check_phase", "file_crc32", "shard_array_check"]


def file_crc32(path: Path) -> int:
    """crc32 of a file's bytes, read through the page cache (about 3 GB/s)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return zlib.crc32(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return zlib.crc32(data)


def check_expert_ids(ids: np.ndarray, num_experts: Sequence[int], pad: int, where: str) -> int:
    """Raise on an id outside its layer's range (other than `pad`) or repeated within one
    token's list; return how many ids are routed. ids [N, L, K], any integer type."""
    from ._id_scan import scan_ids

    ids = np.asarray(ids)
    limits = np.asarray(num_experts, np.int64)
    t, layer, problem, value, routed = scan_ids(ids, limits, np.int64(pad))
    if problem == 1:
        raise ExpertcacheError(f"{where}: token {t}, MoE layer {layer}: expert id {value} outside "
                               f"0..{limits[layer] - 1}")
    if problem == 2:
        raise ExpertcacheError(f"{where}: token {t}, MoE layer {layer}: expert {value} twice in one token's k")
    return int(routed)


def _check_routed(ids, num_experts, pad, where):
    if check_expert_ids(ids, num_experts, pad, where) == 0:
        raise ExpertcacheError(f"{where}: no token is routed to any expert (every id is the pad id)")


def check_phase(phase: np.ndarray, where: str) -> None:
    """Raise unless every phase is PREFILL or DECODE."""
    bad = np.flatnonzero((phase != PREFILL) & (phase != DECODE))
    if len(bad):
        raise ExpertcacheError(f"{where}: token {bad[0]} has phase {phase[bad[0]]} (0 prefill or 1 decode)")


def shard_array_check(file: Path, name: str, crc32: int | None, *, num_experts: Sequence[int], pad: int,
                      num_domains: int) -> Callable[[np.ndarray], None]:
    """The check of one shard array as read from `file`: its recorded checksum (if any), then
    the values kernels index with. Errors name the file."""
    content = {
        "experts": lambda a: _check_routed(a, num_experts, pad, str(file)),
        "phase": lambda a: check_phase(a, str(file)),
        "seq_lengths": lambda a: _check_nonnegative(a, "sequence length", str(file)),
        "seq_domain": lambda a: _check_index(a, num_domains, "domain index", str(file)),
    }.get(name)

    def check(array: np.ndarray) -> None:
        if crc32 is not None:
            replaced = ExpertcacheError(f"{file}: replaced since the trace was opened (a trace still being written "
                                        "changes); open it again")  # a run's saved progress
            try:
                actual = file_crc32(file)
            except FileNotFoundError:
                raise replaced from None
            if actual != crc32 and _recorded_crc32(file, name) == actual:
                raise replaced
            if actual != crc32:
                raise ExpertcacheError(f"{file}: damaged (crc32 {actual:08x}, shard.json records {crc32:08x})")
        if content is not None:
            content(array)

    return check


def _recorded_crc32(file: Path, name: str) -> int | None:
    """The checksum the shard's description records for array `name` now (None if unreadable)."""
    try:
        return json.loads((file.parent / SHARD_META).read_text())["arrays"][name]["crc32"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_nonnegative(values, what, where):
    bad = np.flatnonzero(values < 0)
    if len(bad):
        raise ExpertcacheError(f"{where}: {what} {values[bad[0]]} at entry {bad[0]} is negative")


def _check_index(values, size, what, where):
    bad = np.flatnonzero((values < 0) | (values >= size))
    if len(bad):
        raise ExpertcacheError(f"{where}: {what} out of range ({values[bad[0]]} at entry {bad[0]}, not in 0..{size - 1})")


class Deferred:
    """A memory-mapped shard array whose check runs on first use: opening a trace stays as
    cheap as mapping its files, and a command reads (and checks) only the arrays it uses."""

    __slots__ = ("_array", "_check")

    def __init__(self, array: np.ndarray, check: Callable[[np.ndarray], None]):
        self._array, self._check = array, check

    def get(self) -> np.ndarray:
        if self._check is not None:
            self._check(self._array)
            self._check = None
        return self._array
