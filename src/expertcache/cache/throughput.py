"""Throughput model: how fast a cache configuration can decode on given hardware.

Per decode token t, compute_t = dense_time + lookups_t * expert_time and transfer_t =
bytes_read_t / link_bandwidth; the step takes max(compute_t, transfer_t) when loads overlap
compute, compute_t + transfer_t when they do not. Misses computed where the weights live (e.g.
on the CPU, `simulate(..., misses_on_cpu_below=N)`) cost bytes / source_bandwidth instead of a
transfer, on the same path: transfer_t adds them. The result is a bound: measured
throughput divided by it says how close an engine comes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic
from ..errors import ExpertcacheError
from ..trace.format import DECODE, PREFILL

__all__ = ["HardwareProfile", "ThroughputEstimate", "step_times", "predict_throughput", "fit_link"]


@dataclass(frozen=True)
class HardwareProfile:
    """What the model needs to know about a machine (bytes per second, seconds)."""

    link_bandwidth: float  # bytes/s moving a missed expert into fast memory (host->device, disk->RAM)
    expert_time: float  # s to compute one expert for one token
    dense_time: float = 0.0  # s for the non-expert part of one token (all layers together)
    overlap: bool = True  # loads overlap compute
    source_bandwidth: float | None = None  # bytes/s of the memory holding all experts (compute-at-source misses)
    name: str = "custom"

    def __post_init__(self):
        bandwidths = [self.link_bandwidth] + ([] if self.source_bandwidth is None else [self.source_bandwidth])
        times = [self.expert_time, self.dense_time]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      for v in bandwidths + times)
        if not numbers or min(bandwidths) < 1 or min(times) < 0:  # below 1 byte/s: a damaged profile
            raise ExpertcacheError("hardware profile: bandwidths must be finite numbers of at least 1 byte/s, "
                                   "and times finite numbers >= 0")
        if not isinstance(self.overlap, bool) or not isinstance(self.name, str):
            raise ExpertcacheError("hardware profile: overlap must be true or false, and name a string")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "HardwareProfile":
        try:
            return cls(**data)
        except TypeError as e:
            raise ExpertcacheError(f"bad hardware profile ({e})") from None

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HardwareProfile":
        path = Path(path)
        if path.is_dir():
            raise ExpertcacheError(f"{path} is a folder; give a hardware profile's JSON file")
        if not path.is_file():
            raise ExpertcacheError(f"{path}: no such hardware profile (make one with `expertcache bench-hw --out`)")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ExpertcacheError(f"{path}: not a JSON hardware profile ({e})") from None


def step_times(compute_s, bytes_read, bandwidth: float, overlap: bool, source_s=0.0) -> np.ndarray:
    """The bound per step: max or sum of compute and transfer time (plus `source_s`, misses
    computed where the weights live)."""
    transfer = np.asarray(bytes_read, np.float64) / bandwidth + source_s
    compute = np.asarray(compute_s, np.float64)
    return np.maximum(compute, transfer) if overlap else compute + transfer


@dataclass(frozen=True)
class ThroughputEstimate:
    decode_tokens_per_s: float
    prefill_tokens_per_s: float | None
    decode_compute_s: float  # per decode token, mean
    decode_transfer_s: float  # per decode token, mean
    bound: str  # "compute" or "transfer": what limits decode

    def to_json(self) -> dict:
        return asdict(self)


def predict_throughput(result, profile: HardwareProfile, *, misses_at_source: bool = False) -> ThroughputEstimate:
    """Bound on decode and prefill tokens/s for one simulated configuration."""
    if result.bytes_read is None:
        raise ExpertcacheError("the trace records no expert sizes: bytes moved, hence throughput, are unknown")
    bandwidth = profile.link_bandwidth
    if misses_at_source:
        if not profile.source_bandwidth:
            raise ExpertcacheError("computing misses at the source needs the profile's source_bandwidth")
        bandwidth = profile.source_bandwidth
    stream = result.stream
    steps = result.per_step()
    decode = _decode_tokens(stream)  # [D] token ids
    at_source = result.batch_at_source_bytes.astype(np.float64)  # [B]
    if at_source.any() and not profile.source_bandwidth:
        raise ExpertcacheError("misses computed where the weights live need the profile's source_bandwidth")
    source_s = at_source / profile.source_bandwidth if at_source.any() else at_source  # [B]
    step_source = np.bincount(stream.batch_token, source_s, stream.num_tokens)[decode]
    compute = profile.dense_time + steps["lookups"][decode] * profile.expert_time
    times = step_times(compute, steps["bytes_read"][decode], bandwidth, profile.overlap, step_source)
    transfer = steps["bytes_read"][decode] / bandwidth + step_source
    prefill_rate = None
    prefill = stream.batch_phase == PREFILL
    if prefill.any():
        tokens = stream.num_tokens - len(decode)
        # every prompt token passes its L * k experts; batching on real hardware only does better
        p_compute = tokens * (profile.dense_time + _experts_per_token(stream, decode, tokens) * profile.expert_time)
        p_time = float(step_times(p_compute, result.batch_read[prefill].sum(), bandwidth, profile.overlap,
                                  source_s[prefill].sum()))
        prefill_rate = tokens / p_time if p_time > 0 else float("inf")
    total = float(times.sum())
    return ThroughputEstimate(
        decode_tokens_per_s=len(decode) / total if total > 0 else float("inf"),
        prefill_tokens_per_s=prefill_rate,
        decode_compute_s=float(compute.mean()) if len(decode) else 0.0,
        decode_transfer_s=float(transfer.mean()) if len(decode) else 0.0,
        bound="transfer" if transfer.sum() > compute.sum() else "compute",
    )


def _decode_tokens(stream) -> np.ndarray:
    """[D] the tokens served as decode steps (each with at least one lookup), ascending."""
    return np.unique(stream.batch_token[stream.batch_phase == DECODE])


def _experts_per_token(stream, decode_tokens: np.ndarray, prefill_tokens: int) -> float:
    """Routed experts per token over all layers (L * k), from the decode batches or prefill."""
    sizes = np.diff(stream.batch_start)
    if len(decode_tokens):
        return float(sizes[stream.batch_phase == DECODE].sum() / len(decode_tokens))
    return float(sizes.sum() / max(prefill_tokens, 1))


def fit_link(bytes_read, wall_s, compute_s) -> tuple[float, bool, float]:
    """Link bandwidth and overlap mode that best explain measured step times (median relative
    error, searched over a log grid): how to calibrate a profile on a real engine's log."""
    try:
        steps = [np.asarray(v, np.float64) for v in (bytes_read, wall_s, compute_s)]
    except (TypeError, ValueError):
        raise ExpertcacheError("fit_link takes numbers: bytes read, wall seconds and compute seconds per step") from None
    if any(v.ndim != 1 for v in steps) or len({len(v) for v in steps}) != 1 or not len(steps[0]):
        raise ExpertcacheError("fit_link needs the same number (at least one) of bytes, wall and compute times")
    bytes_read, wall, compute_s = steps
    if not (np.isfinite(np.concatenate(steps)).all() and (bytes_read >= 0).all() and (compute_s >= 0).all()
            and (wall > 0).all()):
        raise ExpertcacheError("fit_link needs finite values: bytes and compute seconds >= 0, wall seconds > 0")
    best = (0.0, True, np.inf)
    for overlap in (True, False):
        for bandwidth in np.logspace(6, 12, 1201):
            err = float(np.median(np.abs(step_times(compute_s, bytes_read, bandwidth, overlap) - wall) / wall))
            if err < best[2]:
                best = (float(bandwidth), overlap, err)
    return best
