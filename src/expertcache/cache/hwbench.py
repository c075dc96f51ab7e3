"""`bench-hw`: measure this machine's profile for the throughput model.

Memory copy bandwidth (numpy), disk read bandwidth of a temporary file (page cache dropped
with posix_fadvise where the OS allows, else reported as cached), and the time of one SwiGLU
expert and of a dense block (attention projections) for one token at given dimensions (torch).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from ..errors import ExpertcacheError
from .throughput import HardwareProfile

__all__ = ["bench_hw"]


def _best(fn, repeats: int) -> float:
    fn()
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def memcpy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    src = np.ones(mib << 20, np.uint8)
    dst = np.empty_like(src)
    return src.nbytes / _best(lambda: np.copyto(dst, src), repeats)


def disk_read_bandwidth(mib: int = 256, directory: str | None = None) -> tuple[float, bool]:
    """(bytes/s, cold): cold is False when the page cache could not be dropped."""
    block = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8).tobytes()
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as f:
        path = f.name
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    try:
        fd = os.open(path, os.O_RDONLY)
        cold = hasattr(os, "posix_fadvise")
        if cold:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        t = time.perf_counter()
        while os.readv(fd, [view]) > 0:
            pass
        elapsed = time.perf_counter() - t
        os.close(fd)
    finally:
        os.unlink(path)
    return (mib << 20) / elapsed, cold


def expert_times(hidden: int, intermediate: int, dtype: str = "float32", repeats: int = 20) -> tuple[float, float, int]:
    """(one expert for one token, dense attention projections for one token, bytes of one expert)."""
    import torch

    try:
        dt = getattr(torch, dtype)
    except AttributeError:
        raise ExpertcacheError(f"unknown torch dtype {dtype!r}") from None
    x = torch.randn(1, hidden, dtype=dt)
    gate_up = torch.randn(2 * intermediate, hidden, dtype=dt)
    down = torch.randn(hidden, intermediate, dtype=dt)
    attn = torch.randn(4 * hidden, hidden, dtype=dt)

    def expert():
        g, u = (x @ gate_up.T).chunk(2, dim=-1)
        return (torch.nn.functional.silu(g) * u) @ down.T

    with torch.inference_mode():
        t_expert = _best(expert, repeats)
        t_dense = _best(lambda: x @ attn.T, repeats)
    return t_expert, t_dense, (gate_up.numel() + down.numel()) * gate_up.element_size()


def bench_hw(hidden: int = 2048, intermediate: int = 768, dtype: str = "float32", layers: int = 48,
             disk_mib: int = 256, directory: str | None = None, link: str = "disk",
             copy_mib: int = 256) -> tuple[HardwareProfile, dict]:
    """Measure and return (profile, raw figures). `link` picks which bandwidth feeds the cache:
    "disk" (disk -> RAM offloading) or "memory" (RAM -> fast memory, host copy as a stand-in)."""
    if link not in ("disk", "memory"):
        raise ExpertcacheError(f"link must be disk or memory, got {link!r}")
    if min(hidden, intermediate, layers, disk_mib, copy_mib) <= 0:
        raise ExpertcacheError("dimensions, layers and sizes must be positive")
    mem = memcpy_bandwidth(copy_mib)
    disk, cold = disk_read_bandwidth(disk_mib, directory)
    t_expert, t_dense_layer, expert_bytes = expert_times(hidden, intermediate, dtype)
    raw = {"memcpy_bytes_per_s": mem, "disk_read_bytes_per_s": disk, "disk_cold": cold,
           "expert_s": t_expert, "dense_layer_s": t_dense_layer, "expert_bytes": expert_bytes,
           "hidden": hidden, "intermediate": intermediate, "dtype": dtype, "layers": layers}
    profile = HardwareProfile(link_bandwidth=disk if link == "disk" else mem, expert_time=t_expert,
                              dense_time=t_dense_layer * layers, overlap=True, source_bandwidth=mem,
                              name=f"{os.uname().nodename}-{link}")
    return profile, raw
