"""Streamed, crash-safe trace writing.

Sequences are buffered and committed as shards: each shard is written into a temporary
directory and renamed into place, so a kill at any moment leaves only whole shards. Re-opening
the same trace with the same settings resumes: `done_keys` tells the caller which sequences
are already stored. A writer whose sequences are long (a generation) can also commit its
progress (`save_progress`): the buffered sequences and the one in progress, as the next shard,
which the next commit replaces.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_folder, holds_working_directory, recover_folder, write_json_atomic
from ..errors import ExpertcacheError
from .format import (
    DECODE,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    OPTIONAL_ARRAYS,
    SEQUENCE_ARRAYS,
    SHARD_META,
    SHARDS,
    STACKS,
    TOKEN_ARRAYS,
    expert_dtype,
    pad_id,
    read_json,
    save_array,
)
from .model_info import ModelInfo
from .validate import check_expert_ids, check_phase, file_crc32

__all__ = ["TraceWriter", "check_replaceable", "remove_output", "trace_manifest"]


class TraceWriter:
    """Append sequences to a trace directory, one atomic shard per `shard_tokens` tokens, or
    sooner once `commit_seconds` have passed since the last commit (what a kill can lose).

    Use as a context manager: leaving the block (normally, on Ctrl-C or on an error) commits
    the sequences already added, so nothing finished is lost.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        model: ModelInfo,
        *,
        capture: dict | None = None,
        corpus: dict | None = None,
        domains: list[str] | None = None,
        optional: tuple[str, ...] = (),
        shard_tokens: int = 1 << 16,
        commit_seconds: float | None = None,
        overwrite: bool = False,
    ):
        unknown = set(optional) - set(OPTIONAL_ARRAYS)
        if unknown:
            raise ExpertcacheError(f"unknown optional arrays {sorted(unknown)}; known: {OPTIONAL_ARRAYS}")
        self.path = Path(path)
        self.model = model
        self.optional = tuple(optional)
        if commit_seconds is not None and not commit_seconds >= 0:
            raise ExpertcacheError(f"the commit interval must be >= 0 seconds, got {commit_seconds}")
        self.shard_tokens = shard_tokens
        self.commit_seconds = commit_seconds
        self._last_commit = time.monotonic()
        self.expert_dtype = expert_dtype(model.max_experts)
        self._buffer: list[dict] = []
        self._buffered_tokens = 0
        self._sequences = 0  # added by this writer, for naming one in an error
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model": model.to_json(),
            "capture": capture or {},
            "corpus": corpus or {},
            "domains": list(domains or []),
            "expert_dtype": self.expert_dtype.name,
            "optional_arrays": list(self.optional),
        }
        self.done_keys: set[str] = set()
        self._next_shard = 0
        self._provisional = False  # the next shard holds saved progress, to be replaced
        self._open(manifest, overwrite)

    def _open(self, manifest: dict, overwrite: bool) -> None:
        manifest_path = self.path / MANIFEST
        if self.path.exists() and overwrite:
            remove_output(self.path)
        if manifest_path.exists():
            existing = read_json(manifest_path, "trace manifest")
            if _settings(existing) != _settings(manifest):
                raise ExpertcacheError(
                    f"{self.path} holds a trace made with other settings; "
                    "choose another output or pass --overwrite"
                )
            self._resume()
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise ExpertcacheError(f"{self.path} exists and is not a trace; choose another output")
        (self.path / SHARDS).mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest_path, manifest)

    def _resume(self) -> None:
        shards = self.path / SHARDS
        shards.mkdir(exist_ok=True)
        for entry in sorted(shards.iterdir()):
            if entry.name.startswith(".") and ".old-" in entry.name:  # a replacement a kill caught mid-swap
                recover_folder(shards / entry.name[1:].partition(".")[0])
        for entry in sorted(shards.iterdir()):
            if not entry.name.isdigit():  # an interrupted shard write
                shutil.rmtree(entry, ignore_errors=True)
                continue
            meta = read_json(entry / SHARD_META, "shard description")
            self.done_keys.update(k for k in meta.get("keys", []) if k is not None)
            self._next_shard = max(self._next_shard, int(entry.name) + 1)

    def add_sequence(
        self,
        experts: np.ndarray,
        weights: np.ndarray | None = None,
        *,
        tokens: np.ndarray | None = None,
        positions: np.ndarray | None = None,
        phase: np.ndarray | int = DECODE,
        domain: str = "default",
        turn: int = 0,
        key: str | None = None,
        logits: np.ndarray | None = None,
        stale_gate: np.ndarray | None = None,
    ) -> None:
        """Buffer one sequence: experts [T, L, K] (pad id where a layer did not route)."""
        self._buffer.append(self._prepared(experts, weights, tokens, positions, phase, domain, turn, key, logits,
                                           stale_gate))
        self._buffered_tokens += len(self._buffer[-1]["arrays"]["phase"])
        self._sequences += 1
        overdue = self.commit_seconds is not None and time.monotonic() - self._last_commit >= self.commit_seconds
        if self._buffered_tokens >= self.shard_tokens or overdue:
            self.flush()

    def save_progress(self, experts: np.ndarray, weights: np.ndarray | None = None, **arrays) -> None:
        """Commit the buffered sequences and one still in progress (`add_sequence`'s arguments, its
        tokens so far) as the next shard, so that a kill keeps them; the next commit replaces
        that shard. The sequence is not added: add it whole once it ends. Its key is not
        recorded (a resumed writer must not take it as done)."""
        self._buffer.append(self._prepared(experts, weights, **{**arrays, "key": None}))
        self._provisional = True  # before the swap: an interruption after it must not keep the shard
        try:
            self._write_shard(self.path / SHARDS / f"{self._next_shard:05d}")
        finally:
            self._buffer.pop()

    def _prepared(self, experts, weights=None, tokens=None, positions=None, phase=DECODE, domain="default", turn=0,
                  key=None, logits=None, stale_gate=None) -> dict:
        """One sequence checked and laid out as a shard stores it."""
        experts = np.asarray(experts)
        if experts.ndim != 3:
            raise ExpertcacheError(f"experts of one sequence must be [tokens, layers, k], got shape {experts.shape}")
        T, L, K = experts.shape
        m = self.model
        if T == 0:  # a sequence of no tokens has no windows, no requests: every per-sequence measure would be 0/0
            raise ExpertcacheError(f"sequence {key or self._sequences} has no tokens")
        if L != m.num_moe_layers or K != m.top_k:
            raise ExpertcacheError(
                f"experts shape {experts.shape} does not match the model ({m.num_moe_layers} MoE layers, k={m.top_k})"
            )
        where = f"sequence {key or self._sequences}"
        ids, routed = _checked_ids(experts, m, self.expert_dtype, where)
        seq = {
            "experts": ids,  # [T, L, K]
            "weights": np.zeros((T, L, K), np.float16) if weights is None else _shaped(weights, (T, L, K), "weights", np.float16),
            "tokens": np.full(T, -1, np.int32) if tokens is None else _shaped(tokens, (T,), "tokens", np.int32),
            "positions": np.arange(T, dtype=np.int32) if positions is None else _shaped(positions, (T,), "positions", np.int32),
            "phase": _phases(phase, T, where),
        }
        extras = {"logits": logits, "stale_gate": stale_gate}
        for name in OPTIONAL_ARRAYS:
            if name in self.optional:
                if extras[name] is None:
                    raise ExpertcacheError(f"this trace stores {name}; the sequence has none")
                seq[name] = _shaped(extras[name], (T, L, m.max_experts), name, np.float16)
        return {"arrays": seq, "domain": domain, "turn": turn, "key": key, "routed": routed}

    def _pack(self) -> tuple[dict[str, np.ndarray], list[str]]:
        """The buffered sequences as one shard's arrays, and the domain names seq_domain indexes."""
        if not any(s["routed"] for s in self._buffer):
            raise ExpertcacheError("no token of these sequences is routed to any expert (every id is -1 or the pad id)")
        domains = list(dict.fromkeys(s["domain"] for s in self._buffer))
        arrays = {
            "seq_lengths": np.array([len(s["arrays"]["phase"]) for s in self._buffer], SEQUENCE_ARRAYS["seq_lengths"]),
            "seq_domain": np.array([domains.index(s["domain"]) for s in self._buffer], SEQUENCE_ARRAYS["seq_domain"]),
            "seq_turn": np.array([s["turn"] for s in self._buffer], SEQUENCE_ARRAYS["seq_turn"]),
        }
        for name in ("experts", *TOKEN_ARRAYS, *self.optional):
            arrays[name] = np.concatenate([s["arrays"][name] for s in self._buffer])
        return arrays, domains

    def flush(self) -> None:
        """Commit the buffered sequences as one shard (atomic rename).

        Safe to call again after an interruption (Ctrl-C) anywhere inside: a half-written
        shard is removed, and a shard already renamed into place is not written twice (saved
        progress there is replaced).
        """
        if not self._buffer:
            return
        final = self.path / SHARDS / f"{self._next_shard:05d}"
        if self._provisional or not final.exists():  # else a commit was interrupted after its rename
            self._write_shard(final)
        self._provisional = False
        self.done_keys.update(s["key"] for s in self._buffer if s["key"] is not None)
        self._next_shard += 1
        self._buffer.clear()
        self._buffered_tokens = 0
        self._last_commit = time.monotonic()

    def _write_shard(self, final: Path) -> None:
        """The buffered sequences as shard `final`, swapped in whole (over saved progress there)."""
        arrays, domains = self._pack()
        with atomic_folder(final) as tmp:
            files = {}
            for array_name, array in arrays.items():
                file = tmp / f"{array_name}.npy"
                with open(file, "wb") as f:
                    save_array(f, array)
                    f.flush()
                    os.fsync(f.fileno())
                files[array_name] = {"shape": list(array.shape), "dtype": array.dtype.name,
                                     "bytes": file.stat().st_size, "crc32": file_crc32(file)}
            meta = {
                "num_sequences": len(self._buffer),
                "num_tokens": int(arrays["seq_lengths"].sum()),
                "domains": domains,
                "keys": [s["key"] for s in self._buffer],
                "arrays": files,
            }
            write_json_atomic(tmp / SHARD_META, meta)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _settings(manifest: dict) -> dict:
    """The part of a manifest that must agree for a resume to continue the same trace (as JSON)."""
    keys = ("format", "version", "model", "capture", "corpus", "expert_dtype", "optional_arrays")
    return json.loads(json.dumps({k: manifest.get(k) for k in keys}))


def _shaped(array, shape: tuple, name: str, dtype) -> np.ndarray:
    """`array` in the stored type, refusing what that type would change: fractions or values out of
    range for integers, and (weights) values that are not finite or beyond float16's range."""
    array = np.asarray(array)
    if array.shape != shape:
        raise ExpertcacheError(f"{name} has shape {array.shape}, expected {shape}")
    if array.dtype.kind not in "biuf":
        raise ExpertcacheError(f"{name} must be numbers, got {array.dtype}")
    if array.size and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):  # NaN too
            raise ExpertcacheError(f"{name} must be whole numbers")
        if array.min() < info.min or array.max() > info.max:
            raise ExpertcacheError(f"{name} must lie in {info.min}..{info.max} ({np.dtype(dtype).name})")
    elif array.size and name == "weights" and not (np.abs(array) <= np.finfo(dtype).max).all():  # NaN too
        raise ExpertcacheError(f"weights must be finite numbers within +-{np.finfo(dtype).max:g} ({np.dtype(dtype).name})")
    return array.astype(dtype, copy=False)


def _phases(phase, T: int, where: str) -> np.ndarray:
    """[T] uint8 phases from one value or one per token; each PREFILL or DECODE."""
    phase = np.asarray(phase)
    if phase.shape not in ((), (T,)):
        raise ExpertcacheError(f"{where}: phase has shape {phase.shape}, expected one value or ({T},)")
    phase = np.broadcast_to(phase, (T,))
    check_phase(phase, where)
    return phase.astype(np.uint8)


def _checked_ids(experts: np.ndarray, model: ModelInfo, dtype: np.dtype, where: str) -> tuple[np.ndarray, int]:
    """(ids in the trace's id type, how many are routed); negative ids mean "not routed"."""
    if not np.issubdtype(experts.dtype, np.integer):
        raise ExpertcacheError(f"expert ids must be integers, got {experts.dtype}")
    ids = np.where(experts < 0, pad_id(dtype), experts.astype(np.int64))
    routed = check_expert_ids(ids, model.num_experts, pad_id(dtype), where)
    return ids.astype(dtype), routed


def remove_output(path: Path) -> None:
    """--overwrite: remove an earlier trace (or seq2seq capture folder) at `path` (see `check_replaceable`)."""
    check_replaceable(path)
    shutil.rmtree(path)


def check_replaceable(path: Path) -> None:
    """Refuse to replace anything but an earlier trace (or seq2seq capture folder): a folder of
    other files, a file, the working directory or one above it."""
    path = Path(path)
    if not path.is_dir() or not _is_trace_output(path) and any(path.iterdir()):
        raise ExpertcacheError(f"{path} exists and is not a trace; choose another output")
    foreign = _foreign(path)
    if foreign is not None:
        raise ExpertcacheError(f"{path} holds {foreign.relative_to(path)}, which no trace writes; move it or choose "
                               "another output")
    if holds_working_directory(path):
        raise ExpertcacheError(f"{path} holds the working directory; choose another output")


def refuse_existing(path: Path) -> None:
    """An existing output given without --overwrite: say whether --overwrite would replace it."""
    if path.is_dir() and (_is_trace_output(path) or not any(path.iterdir())):
        raise ExpertcacheError(f"{path} already exists; choose another output or pass --overwrite")
    raise ExpertcacheError(f"{path} exists and is not a trace; choose another output")


def _is_trace_output(path: Path) -> bool:
    return (path / STACKS).is_file() or trace_manifest(path) is not None


def _foreign(path: Path) -> Path | None:
    """The first entry of a trace (or seq2seq capture) folder that no trace writes, or None.
    Hidden names are a writer's temporary files."""
    capture = (path / STACKS).is_file()
    for p in path.iterdir():
        if p.name.startswith(".") or p.name == (STACKS if capture else MANIFEST):
            continue
        if capture:
            found = _foreign(p) if p.is_dir() and trace_manifest(p) is not None else p
        elif p.name == SHARDS and p.is_dir():
            shards = (_foreign_in_shard(s) if s.is_dir() and s.name.isdigit() else s
                      for s in p.iterdir() if not s.name.startswith("."))
            found = next((f for f in shards if f is not None), None)
        else:
            found = p
        if found is not None:
            return found
    return None


def _foreign_in_shard(shard: Path) -> Path | None:
    """The first entry of a shard folder that is neither an array nor its shard.json."""
    return next((f for f in shard.iterdir() if not f.name.startswith(".")
                 and not (f.is_file() and (f.suffix == ".npy" or f.name == "shard.json"))), None)


def trace_manifest(path: Path) -> dict | None:
    """The manifest of the trace at `path`, or None where `path` holds no trace."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME else None
