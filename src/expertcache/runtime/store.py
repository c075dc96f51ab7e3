"""The slow tier: where experts live when they are not cached, and the reads that fetch them.

- "disk": each expert is read from the checkpoint's safetensors files by byte range with
  O_DIRECT `os.preadv` (the range widened to the file system's block alignment) into a
  per-thread aligned bounce buffer, then copied into its cache slot: the disk itself, never a
  page-cache copy of the checkpoint, at about half the CPU time of a buffered read (which is
  what the compute competes with). Where the file system refuses O_DIRECT, a buffered read
  straight into the slot, its range then dropped from the page cache (POSIX_FADV_DONTNEED).
- "ram": every expert is read once into host memory (pinned when the cache is on a GPU), a
  read-only master copy laid out like the stock experts module (per layer and parameter,
  [E + 1, ...] with an all-zero last row); a fetch copies an expert into its slot, and a miss
  computed where the weights live (--misses-on-cpu) reads these pools directly.

Reads run on a few worker threads so that prefetches overlap compute, a layer call's misses
before queued prefetches (reads.py); counters never depend on their timing. With the cache on a
GPU, copies into slots go on a side stream: a copy first waits for the event saying the slot's
previous reader has finished (`ready`), and its future returns the event that says the copy is
done, which the compute stream waits for (GPU-side, no host synchronization).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from ..errors import ExpertcacheError
from .experts import Pools
from .loading import ExpertParam, ExpertPart, expert_zeros
from .reads import UrgentFirst

__all__ = ["ExpertStore", "TIERS"]

TIERS = ("disk", "ram")
ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses: a multiple of any common block size


class ExpertStore:
    """Fetches expert (layer, e) into a slot: `dest[param]` are that slot's per-expert tensors."""

    def __init__(self, folder: str | os.PathLike, parts: list[list[list[ExpertPart]]], tier: str,
                 params: dict[str, ExpertParam], layer_residues: dict[str, list[int]], *,
                 device: torch.device = torch.device("cpu"), workers: int = 4):
        if tier not in TIERS:
            raise ExpertcacheError(f"unknown slow tier {tier!r}; choose disk or ram")
        self.tier = tier
        self.parts = parts
        self._fds: dict[str, int] = {}
        self._direct_fds: dict[str, int] = {}  # disk tier, while the file system allows O_DIRECT
        self._opened: list[int] = []  # every descriptor, closed by close() (a refused O_DIRECT one too)
        folder = Path(folder)
        for file in {p.file for layer in parts for expert in layer for p in expert}:
            try:
                self._fds[file] = self._open(folder / file, os.O_RDONLY)
            except OSError as e:
                raise ExpertcacheError(f"cannot open {folder / file}: {e.strerror}") from None
            if tier == "disk" and hasattr(os, "O_DIRECT"):
                try:
                    self._direct_fds[file] = self._open(folder / file, os.O_RDONLY | os.O_DIRECT)
                except OSError:  # e.g. tmpfs: buffered reads, dropped from the page cache after
                    pass
        largest = max((p.nbytes for layer in parts for expert in layer for p in expert), default=0)
        self.bounce_bytes = largest + 2 * ALIGN  # per read thread, while O_DIRECT is in use
        self._local = threading.local()
        self._reads = UrgentFirst(workers, "expertcache-read")
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.host_pools: list[Pools] | None = None  # [L] the "ram" tier's master copy
        if tier == "ram":
            self.host_pools = [self._read_layer(layer, params, {name: r[i] for name, r in layer_residues.items()},
                                                pin=device.type == "cuda") for i, layer in enumerate(parts)]

    def _open(self, path: Path, flags: int) -> int:
        fd = os.open(path, flags)
        self._opened.append(fd)
        return fd

    def _read_layer(self, layer: list[list[ExpertPart]], params, residues: dict[str, int], pin: bool) -> Pools:
        """A layer's experts in host memory, laid out as the stock model keeps them."""
        E = len(layer)
        tensors = {name: expert_zeros(param, E + 1, torch.device("cpu"), pin, residues[name])
                   for name, param in params.items()}
        for e, parts in enumerate(layer):
            for p in parts:
                self._pread(p, _bytes(tensors[p.param][e], p))
        return Pools(tensors, E)

    def _pread(self, part: ExpertPart, target: torch.Tensor) -> None:
        """Read one part's bytes into `target` (uint8, on the CPU or a GPU)."""
        direct = self._direct_fds.get(part.file)
        if direct is not None:
            start = part.offset - part.offset % ALIGN
            end = -(-(part.offset + part.nbytes) // ALIGN) * ALIGN
            bounce = self._bounce()
            got = self._read(direct, part, bounce[:end - start], start, direct=True)
            if got >= 0:
                _check_length(part, got - (part.offset - start))
                _copy(target, torch.from_numpy(bounce[part.offset - start:part.offset - start + part.nbytes]))
                return
            self._direct_fds.pop(part.file, None)  # refused after all (alignment): buffered from now on
        host = target if target.device.type == "cpu" else torch.empty(part.nbytes, dtype=torch.uint8)
        fd = self._fds[part.file]
        _check_length(part, self._read(fd, part, host.numpy(), part.offset))
        if self.tier == "disk" and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, part.offset, part.nbytes, os.POSIX_FADV_DONTNEED)
        if host is not target:
            _copy(target, host)

    @staticmethod
    def _read(fd: int, part: ExpertPart, out: np.ndarray, offset: int, direct: bool = False) -> int:
        """Bytes read into `out` from `offset`; -1 when O_DIRECT refuses the request's alignment."""
        try:
            return os.preadv(fd, [out], offset)
        except OSError as e:
            if direct and e.errno == errno.EINVAL:
                return -1
            raise ExpertcacheError(f"reading {part.file} failed: {e.strerror}") from None

    def _bounce(self) -> np.ndarray:
        """This thread's page-aligned buffer for O_DIRECT reads (an anonymous map: aligned)."""
        buf = getattr(self._local, "buffer", None)
        if buf is None:
            buf = self._local.buffer = np.frombuffer(mmap.mmap(-1, self.bounce_bytes), np.uint8)
        return buf

    def fetch(self, layer: int, expert: int, dest: dict[str, torch.Tensor], urgent: bool, ready=None) -> Future:
        """Start fetching an expert into `dest` (param -> that slot's tensor); returns its future.
        `urgent`: a layer call needs it now (a miss), read before the prefetches queued.

        On a GPU, `ready` is the event after which the slot may be overwritten, and the future's
        result is the event that marks the copy done.
        """
        if self._stream is None:
            return self._reads.submit(urgent, self._fetch, layer, expert, dest)
        return self._reads.submit(urgent, self._fetch_on_stream, layer, expert, dest, ready)

    def hurry(self, fetch: Future) -> None:
        """A call is about to wait for `fetch`: if it has not started, read it before every queued
        prefetch (after the misses queued before it)."""
        self._reads.hurry(fetch)

    def _fetch_on_stream(self, layer: int, expert: int, dest: dict[str, torch.Tensor], ready):
        with torch.cuda.stream(self._stream):
            if ready is not None:
                self._stream.wait_event(ready)
            self._fetch(layer, expert, dest)
            done = torch.cuda.Event()
            done.record(self._stream)
        return done

    def _fetch(self, layer: int, expert: int, dest: dict[str, torch.Tensor]) -> None:
        parts = self.parts[layer][expert]
        if self.host_pools is not None:
            master = self.host_pools[layer].tensors
            for p in parts:
                _copy(_bytes(dest[p.param], p), _bytes(master[p.param][expert], p))
            return
        for p in parts:
            self._pread(p, _bytes(dest[p.param], p))
            if dest[p.param].is_cuda:
                self._stream.synchronize()  # the host buffer is reused or freed on return: the copy must have read it

    def close(self) -> None:
        self._reads.shutdown()
        for fd in self._opened:
            os.close(fd)
        self._opened.clear()
        self._fds.clear()
        self._direct_fds.clear()


def _check_length(part: ExpertPart, got: int) -> None:
    if got < part.nbytes:
        raise ExpertcacheError(f"{part.file} ended {part.nbytes - max(got, 0)} bytes early (truncated checkpoint)")


def _copy(target: torch.Tensor, source: torch.Tensor) -> None:
    """Copy host bytes into a slot. Into RAM with numpy: a torch copy on a read thread would start
    an OpenMP team for that thread, whose workers spin after each copy on the cores the model
    computes on (4 read threads, 4 more workers; a slower decode on 2 cores)."""
    if target.device.type == "cpu":
        np.copyto(target.numpy(), source.numpy())
    else:  # from pinned memory (the ram tier) the copy is asynchronous on the store's stream
        target.copy_(source, non_blocking=source.is_pinned())


def _bytes(expert: torch.Tensor, part: ExpertPart) -> torch.Tensor:
    """The bytes of one expert's parameter tensor that `part` fills."""
    return expert.view(-1).view(torch.uint8)[part.dest:part.dest + part.nbytes]
