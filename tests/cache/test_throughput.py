"""Throughput model (SPEC §7) by hand, and against the per-step figures measured on a phone."""

import numpy as np
import pytest

from expertcache import ExpertcacheError
from expertcache.cache import HardwareProfile, fit_link, predict_throughput, simulate
from expertcache.trace.format import DECODE

from .helpers import BIGMOE, decode_trace, make_trace, real_trace


def test_decode_bound_by_hand():
    # 1 layer, k=1, 10-byte experts; tokens 0 1 0 1 with 1 slot: every lookup misses
    trace = decode_trace([[[e]] for e in [0, 1, 0, 1]], 2, expert_bytes=(10,))
    r = simulate(trace, "lru", budget_slots=1)
    overlap = HardwareProfile(link_bandwidth=100.0, expert_time=0.05, dense_time=0.2, overlap=True)
    # compute 0.25 s/token, transfer 10/100 = 0.1 s -> max 0.25 -> 4 tok/s
    t = predict_throughput(r, overlap)
    assert t.decode_tokens_per_s == pytest.approx(4.0) and t.bound == "compute"
    serial = HardwareProfile(link_bandwidth=100.0, expert_time=0.05, dense_time=0.2, overlap=False)
    assert predict_throughput(r, serial).decode_tokens_per_s == pytest.approx(1 / 0.35)
    slow = HardwareProfile(link_bandwidth=20.0, expert_time=0.05, dense_time=0.2, source_bandwidth=200.0)
    assert predict_throughput(r, slow).bound == "transfer"
    assert predict_throughput(r, slow).decode_tokens_per_s == pytest.approx(2.0)  # 10/20 = 0.5 s
    assert predict_throughput(r, slow, misses_at_source=True).decode_tokens_per_s == pytest.approx(4.0)


def test_misses_kept_at_the_source_cost_their_bytes_over_its_bandwidth():
    # the same 4 decode misses of 10 bytes, computed where they live (1 token each < 2): nothing moves
    trace = decode_trace([[[e]] for e in [0, 1, 0, 1]], 2, expert_bytes=(10,))
    hw = HardwareProfile(link_bandwidth=20.0, expert_time=0.01, dense_time=0.0, source_bandwidth=100.0)
    kept = simulate(trace, "lru", budget_slots=1, misses_on_cpu_below=2)
    assert (kept.bytes_read, kept.misses_on_cpu) == (0, 4)
    # per token: compute 0.01 s, 10 bytes / 100 = 0.1 s at the source -> 10 tok/s (moving them: 10/20 = 0.5 s)
    assert predict_throughput(kept, hw).decode_tokens_per_s == pytest.approx(10.0)
    moved = simulate(trace, "lru", budget_slots=1)
    assert predict_throughput(moved, hw).decode_tokens_per_s == pytest.approx(2.0)
    assert predict_throughput(moved, hw, misses_at_source=True).decode_tokens_per_s == pytest.approx(10.0)
    with pytest.raises(ExpertcacheError, match="source_bandwidth"):
        predict_throughput(kept, HardwareProfile(link_bandwidth=20.0, expert_time=0.01))


def test_prefill_bound_by_hand():
    trace = make_trace([[[[0]], [[1]], [[0]]]], 2, phase=[[0, 0, 1]], expert_bytes=(10,))
    r = simulate(trace, "lru", budget_slots=4)
    hw = HardwareProfile(link_bandwidth=10.0, expert_time=0.1, dense_time=0.1, overlap=False)
    # prefill: 2 tokens x (0.1 + 1 x 0.1) compute + 20 bytes / 10 = 2 s  -> 0.4 + 2 = 2.4 s
    assert predict_throughput(r, hw).prefill_tokens_per_s == pytest.approx(2 / 2.4)


def test_profile_round_trip_and_errors(tmp_path):
    hw = HardwareProfile(link_bandwidth=1e9, expert_time=1e-4, dense_time=1e-3, name="x")
    hw.save(tmp_path / "hw.json")
    assert HardwareProfile.load(tmp_path / "hw.json") == hw
    with pytest.raises(ExpertcacheError):
        HardwareProfile.load(tmp_path / "missing.json")
    with pytest.raises(ExpertcacheError):
        HardwareProfile(link_bandwidth=0, expert_time=1)
    for bad in (dict(link_bandwidth=float("nan"), expert_time=1), dict(link_bandwidth=1, expert_time=1, source_bandwidth=-1)):
        with pytest.raises(ExpertcacheError):
            HardwareProfile(**bad)
    # accepted before, and predicted 0.00 tokens/s (or wrote Infinity into JSON)
    for bad in (dict(expert_time=float("inf")), dict(link_bandwidth=1e-300), dict(link_bandwidth=True),
                dict(dense_time="0.1"), dict(source_bandwidth=float("inf"))):
        with pytest.raises(ExpertcacheError, match="finite numbers"):
            HardwareProfile(**(dict(link_bandwidth=1e9, expert_time=1e-4) | bad))
    for bad in (dict(overlap="no"), dict(name=5)):  # "no" read as true
        with pytest.raises(ExpertcacheError, match="overlap must be true or false, and name a string"):
            HardwareProfile(link_bandwidth=1e9, expert_time=1e-4, **bad)
    with pytest.raises(ExpertcacheError, match="is a folder; give a hardware profile's JSON file"):
        HardwareProfile.load(tmp_path)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ExpertcacheError, match="not a JSON hardware profile"):
        HardwareProfile.load(tmp_path / "binary.json")
    no_sizes = simulate(decode_trace([[[0]]], 2), "lru", budget_slots=1)
    with pytest.raises(ExpertcacheError, match="no expert sizes"):
        predict_throughput(no_sizes, hw)


def _metrics(name):
    return np.genfromtxt(BIGMOE / f"{name}.metrics.csv", delimiter=",", names=True, comments="#")


@pytest.mark.parametrize("name, budget", [("qwen", 4000), ("gptoss", 3000)])
def test_model_against_the_phone(name, budget):
    """Per decode step, our simulated bytes read plus the measured compute time explain the
    measured wall time. Calibrate the link on the first half of the steps, predict the second.
    Measured on these logs (documented in docs/simulator.md): the phone's steps fit
    compute + transfer (no overlap) to about 2 % median error; a perfect-overlap bound is
    optimistic by 10-25 %."""
    m = _metrics(name)
    trace = real_trace(name)
    r = simulate(trace, "lru", budget_mib=budget)
    decode = np.flatnonzero(np.asarray(trace.phase) == DECODE)
    ours = r.per_step()["bytes_read"][decode].astype(float)  # [T_decode]
    assert np.abs(ours - m["read_bytes"]).sum() / m["read_bytes"].sum() < 0.01  # same reads, within 1 %
    wall, compute = m["wall_ms"] / 1e3, m["compute_ms"] / 1e3
    half = len(wall) // 2
    bandwidth, overlap, train_err = fit_link(ours[:half], wall[:half], compute[:half])
    assert not overlap and 1e9 < bandwidth < 4e9  # flash reads at 1-4 GB/s, not overlapped
    from expertcache.cache.throughput import step_times

    predicted = step_times(compute[half:], ours[half:], bandwidth, overlap)
    err = np.median(np.abs(predicted - wall[half:]) / wall[half:])
    assert err < 0.06
    # the SPEC §7 bound (perfect overlap) on the same machine is never slower than the phone
    bound = step_times(compute, ours, bandwidth, True).sum()
    assert bound <= wall.sum()


def test_bench_hw_measures_a_usable_profile(tmp_path):
    from expertcache.cache import bench_hw
    from expertcache.cache.hwbench import expert_times

    profile, raw = bench_hw(hidden=64, intermediate=32, layers=2, disk_mib=4, copy_mib=8, directory=str(tmp_path))
    assert raw["expert_bytes"] == (2 * 32 * 64 + 64 * 32) * 4
    assert profile.link_bandwidth == raw["disk_read_bytes_per_s"] > 0 and profile.source_bandwidth > 0
    assert profile.expert_time > 0 and profile.dense_time == pytest.approx(2 * raw["dense_layer_s"])
    assert list(tmp_path.iterdir()) == []  # the disk test cleans up
    with pytest.raises(ExpertcacheError):
        bench_hw(hidden=0)
    with pytest.raises(ExpertcacheError, match="CUDA"):
        bench_hw(link="device")
    with pytest.raises(ExpertcacheError, match="missing: no such directory"):
        bench_hw(directory=str(tmp_path / "missing"))  # was Python's "[Errno 2] ..." text
    (tmp_path / "file").write_text("")
    with pytest.raises(ExpertcacheError, match="file: is not a directory"):
        bench_hw(directory=str(tmp_path / "file"))
    with pytest.raises(ExpertcacheError, match="above 65536 are no model's"):
        bench_hw(hidden=10**20)  # a traceback from torch.randn
    with pytest.raises(ExpertcacheError, match="--copy-mib .* of memory"):
        bench_hw(copy_mib=2**40)  # two buffers of a mebibyte each 2^40 times: killed for memory
    with pytest.raises(ExpertcacheError, match="--disk-mib .* on disk"):
        bench_hw(disk_mib=2**40, directory=str(tmp_path))
    for dtype in ("int8", "nn", "nope"):  # an integer dtype, a torch attribute that is no dtype, no attribute
        with pytest.raises(ExpertcacheError, match="floating-point torch dtype"):
            expert_times(64, 32, dtype)


@pytest.mark.parametrize("args, message", [
    (([1e6, 2e6], [0.01], [0.001]), "same number"),  # fitted 221 MB/s to lengths that differ
    (([], [], []), "same number \\(at least one\\)"),  # (0.0, True, inf) with warnings
    (([1e6], [float("nan")], [0.001]), "finite values"),
    (([-1e6], [0.01], [0.001]), "bytes and compute seconds >= 0"),
    (([1e6], [0.0], [0.001]), "wall seconds > 0"),
    (("a", "b", "c"), "fit_link takes numbers"),
])
def test_fit_link_refuses_steps_it_cannot_fit(args, message):
    with pytest.raises(ExpertcacheError, match=message):
        fit_link(*args)


def test_disk_read_bandwidth_reads_past_the_page_cache(tmp_path, monkeypatch):
    """With O_DIRECT, as the runtime reads; where the file system refuses it, buffered with the
    page cache dropped first; both read the whole file, with several reads in flight."""
    import errno
    import os

    from expertcache.cache import hwbench

    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
    except (OSError, AttributeError):
        pytest.skip("no O_DIRECT here (the OS, or a tmpfs)")
    probe.unlink()
    opened, read = [], []
    real_open, real_preadv = os.open, os.preadv

    def recording_preadv(fd, buffers, offset):
        n = real_preadv(fd, buffers, offset)
        read.append(n)
        return n

    monkeypatch.setattr(os, "preadv", recording_preadv)
    monkeypatch.setattr(os, "open", lambda path, flags, *a: opened.append(flags) or real_open(path, flags, *a))
    rate, cold = hwbench.disk_read_bandwidth(mib=24, directory=str(tmp_path), readers=2)
    assert cold and rate > 0 and opened[-1] & os.O_DIRECT and sorted(read) == [8 << 20] * 3

    def refusing_open(path, flags, *a):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        opened.append(flags)
        return real_open(path, flags, *a)

    dropped = []
    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, start, length, advice: dropped.append(advice))
    read.clear()
    rate, cold = hwbench.disk_read_bandwidth(mib=20, directory=str(tmp_path))
    assert cold and rate > 0 and not opened[-1] & os.O_DIRECT and sorted(read) == [4 << 20, 8 << 20, 8 << 20]
    assert dropped == [os.POSIX_FADV_DONTNEED]


def test_disk_read_bandwidth_errors_are_not_taken_for_a_refusal(tmp_path, monkeypatch):
    """O_DIRECT refused at the first read (EINVAL) falls back to buffered; any other error is
    raised, not measured."""
    import errno
    import os

    from expertcache.cache import hwbench

    real_preadv, direct_fds = os.preadv, set()
    real_open = os.open

    def open_noting_direct(path, flags, *a):
        fd = real_open(path, flags, *a)
        (direct_fds.add if flags & getattr(os, "O_DIRECT", 0) else direct_fds.discard)(fd)  # numbers are reused
        return fd

    def refusing_direct_reads(fd, buffers, offset):
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "open", open_noting_direct)
    monkeypatch.setattr(os, "preadv", refusing_direct_reads)
    rate, cold = hwbench.disk_read_bandwidth(mib=8, directory=str(tmp_path), readers=2)
    assert rate > 0 and cold == hasattr(os, "posix_fadvise")

    def failing_reads(fd, buffers, offset):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing_reads)
    with pytest.raises(OSError, match="Input/output"):
        hwbench.disk_read_bandwidth(mib=8, directory=str(tmp_path))
    monkeypatch.setattr(os, "open", lambda *a: (_ for _ in ()).throw(OSError(errno.EMFILE, "Too many open files")))
    with pytest.raises(OSError, match="Too many open files"):
        hwbench.disk_read_bandwidth(mib=8, directory=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone either way
