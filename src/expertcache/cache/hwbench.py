"""`bench-hw`: measure this machine's profile for the throughput model.

Memory copy bandwidth (numpy), disk read bandwidth of a temporary file (O_DIRECT with 4 reads
in flight, like the runtime's disk tier; else with the page cache dropped where the OS allows,
else reported as cached), host-to-device bandwidth from pinned memory when a CUDA device is
used, and the time of one SwiGLU expert and of a dense block (attention projections) for one
token at given dimensions (torch, on the chosen device).
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..devices import torch_device
from ..errors import ExpertcacheError
from ..units import size_text
from .budget import MIB
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


def disk_read_bandwidth(mib: int = 256, directory: str | None = None, readers: int = 4) -> tuple[float, bool]:
    """(bytes/s, cold): cold is False when the page cache could not be bypassed or dropped.

    Read with O_DIRECT and `readers` reads in flight, like the runtime's disk tier (its read
    threads; it reads one expert at a time, at scattered offsets, where this test reads 8 MiB
    blocks in order). On a VM a buffered read of a file just written can come from the host's
    cache (0.95 and 2.56 GiB/s in two reads of one file, where O_DIRECT read 1.51 and 1.54), a
    speed no reader of experts sees. Buffered, with the page cache dropped, where the file
    system refuses O_DIRECT (tmpfs)."""
    block = np.random.default_rng(0).integers(0, 255, 1 << 20, dtype=np.uint8).tobytes()
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as f:
        path = f.name
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    try:
        measured = _read_through(path, readers, direct=True)
        cold = measured is not None
        if measured is None:
            cold = hasattr(os, "posix_fadvise")
            measured = _read_through(path, readers, direct=False, drop=cold)
    finally:
        os.unlink(path)
    nbytes, seconds = measured
    return nbytes / seconds, cold


def _read_through(path: str, readers: int, direct: bool, drop: bool = False) -> tuple[int, float] | None:
    """(bytes, seconds) reading the file in 8 MiB blocks, `readers` at a time, each into its own
    page-aligned buffer (as O_DIRECT needs); None where O_DIRECT is refused (EINVAL) or missing."""
    if direct and not hasattr(os, "O_DIRECT"):
        return None
    block, fd = 8 << 20, None

    def read(offsets) -> int:
        buffer = np.frombuffer(mmap.mmap(-1, block), np.uint8)
        return sum(os.preadv(fd, [buffer], offset) for offset in offsets)

    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        offsets = range(0, os.fstat(fd).st_size, block)
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with ThreadPoolExecutor(readers) as pool:
            t = time.perf_counter()
            nbytes = sum(pool.map(read, [offsets[r::readers] for r in range(readers)]))
            return nbytes, time.perf_counter() - t
    except OSError as e:
        if direct and e.errno == errno.EINVAL:
            return None
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _torch_device(device: str):
    import torch

    dev = torch_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    return dev, sync


def host_to_device_bandwidth(device: str, mib: int = 256, repeats: int = 5) -> float:
    """Bytes/s copying pinned host memory to the device."""
    import torch

    dev, sync = _torch_device(device)
    src = torch.empty(mib << 20, dtype=torch.uint8).pin_memory()
    dst = torch.empty(mib << 20, dtype=torch.uint8, device=dev)

    def copy():
        dst.copy_(src, non_blocking=True)
        sync()

    return src.numel() / _best(copy, repeats)


def expert_times(hidden: int, intermediate: int, dtype: str = "float32", repeats: int = 20,
                 device: str = "cpu") -> tuple[float, float, int]:
    """(one expert for one token, dense attention projections for one token, bytes of one expert)."""
    import torch

    dt = getattr(torch, dtype, None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ExpertcacheError(f"unknown or not a floating-point torch dtype {dtype!r}")
    dev, sync = _torch_device(device)
    try:  # some dtypes (float8, ...) exist but have no kernels here
        return _time_expert_and_dense(hidden, intermediate, dt, dev, sync, repeats)
    except (NotImplementedError, RuntimeError) as e:
        raise ExpertcacheError(f"cannot compute in {dtype} on {device} ({str(e).splitlines()[0]})") from None


def _time_expert_and_dense(hidden, intermediate, dt, dev, sync, repeats) -> tuple[float, float, int]:
    import torch

    x = torch.randn(1, hidden, dtype=dt, device=dev)
    gate_up = torch.randn(2 * intermediate, hidden, dtype=dt, device=dev)
    down = torch.randn(hidden, intermediate, dtype=dt, device=dev)
    attn = torch.randn(4 * hidden, hidden, dtype=dt, device=dev)

    def expert():
        g, u = (x @ gate_up.T).chunk(2, dim=-1)
        y = (torch.nn.functional.silu(g) * u) @ down.T
        sync()
        return y

    def dense():
        y = x @ attn.T
        sync()
        return y

    with torch.inference_mode():
        t_expert = _best(expert, repeats)
        t_dense = _best(dense, repeats)
    return t_expert, t_dense, (gate_up.numel() + down.numel()) * gate_up.element_size()


MAX_DIMENSION = 1 << 16


def _check_room(copy_mib: int, disk_mib: int, directory: str | None) -> None:
    """The copy test holds two buffers of copy_mib in memory, the disk test writes a file of
    disk_mib: refuse what this machine cannot hold rather than be killed half-way."""
    free_ram = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if 2 * copy_mib * MIB > free_ram:
        raise ExpertcacheError(f"--copy-mib {copy_mib} needs {size_text(2 * copy_mib * MIB)} of memory; "
                               f"{size_text(free_ram)} is free")
    free_disk = shutil.disk_usage(directory or tempfile.gettempdir()).free
    if disk_mib * MIB > free_disk:
        raise ExpertcacheError(f"--disk-mib {disk_mib} needs {size_text(disk_mib * MIB)} on disk; {size_text(free_disk)} is free")


def bench_hw(hidden: int = 2048, intermediate: int = 768, dtype: str = "float32", layers: int = 48,
             disk_mib: int = 256, directory: str | None = None, link: str = "disk",
             copy_mib: int = 256, device: str = "cpu") -> tuple[HardwareProfile, dict]:
    """Measure and return (profile, raw figures). Experts compute on `device`; `link` picks which
    bandwidth feeds the cache: "disk" (disk -> RAM offloading), "device" (pinned host memory ->
    the CUDA device) or "memory" (host memory copy, a stand-in for a fast tier)."""
    if link not in ("disk", "device", "memory"):
        raise ExpertcacheError(f"link must be disk, device or memory, got {link!r}")
    device = str(torch_device(device))  # "cpu", "cuda" or "cuda:N", checked before anything is measured
    if link == "device" and device == "cpu":
        raise ExpertcacheError("link device needs a CUDA device: give --device cuda")
    if min(hidden, intermediate, layers, disk_mib, copy_mib) <= 0:
        raise ExpertcacheError("dimensions, layers and sizes must be positive")
    if max(hidden, intermediate) > MAX_DIMENSION:
        raise ExpertcacheError(f"--hidden and --intermediate above {MAX_DIMENSION} are no model's (got {hidden}, {intermediate})")
    if directory is not None and not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "no such directory"
        raise ExpertcacheError(f"{directory}: {what} for the disk read test")
    _check_room(copy_mib, disk_mib, directory)
    mem = memcpy_bandwidth(copy_mib)
    disk, cold = disk_read_bandwidth(disk_mib, directory)
    t_expert, t_dense_layer, expert_bytes = expert_times(hidden, intermediate, dtype, device=device)
    h2d = host_to_device_bandwidth(device, copy_mib) if device != "cpu" else None
    raw = {"memcpy_bytes_per_s": mem, "disk_read_bytes_per_s": disk, "disk_cold": cold,
           "host_to_device_bytes_per_s": h2d, "device": device,
           "expert_s": t_expert, "dense_layer_s": t_dense_layer, "expert_bytes": expert_bytes,
           "hidden": hidden, "intermediate": intermediate, "dtype": dtype, "layers": layers}
    bandwidth = {"disk": disk, "device": h2d, "memory": mem}[link]
    profile = HardwareProfile(link_bandwidth=bandwidth, expert_time=t_expert,
                              dense_time=t_dense_layer * layers, overlap=True, source_bandwidth=mem,
                              name=f"{os.uname().nodename}-{link}")
    return profile, raw
