"""The in-memory view of a routing trace: dense integer arrays, loaded lazily from shards.

Shape key: S sequences, N tokens (all sequences concatenated), L MoE layers, K top-k,
E experts (the largest layer's count). Sequence i covers tokens seq_offsets[i]:seq_offsets[i+1].
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np

from ..atomic import atomic_folder
from ..checks import is_whole
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
    load_array,
    pad_id,
    read_json,
)
from .model_info import ModelInfo
from .validate import Deferred, shard_array_check
from .writer import TraceWriter, check_replaceable, refuse_existing

__all__ = ["Trace"]

_PER_TOKEN = ("experts", *TOKEN_ARRAYS, *OPTIONAL_ARRAYS)


class Trace:
    """Routing of every token in every MoE layer, as numpy arrays.

    Arrays of a trace loaded from disk are memory-mapped per shard; a property that spans
    shards concatenates them on first use. `layer_experts(l)` reads one layer only, which is
    what analyses that must stay within one layer's memory use.
    """

    def __init__(self, model: ModelInfo, shards: list[dict[str, np.ndarray]], domains: list[str],
                 capture: dict | None = None, corpus: dict | None = None, path: Path | None = None):
        self.model = model
        self.domains = domains
        self.capture = capture or {}
        self.corpus = corpus or {}
        self.path = path
        self._shards = shards

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_arrays(
        cls,
        experts,
        num_experts: int | None = None,
        *,
        weights=None,
        tokens=None,
        domains: list[str] | str | None = None,
        phase=None,
        positions=None,
        turns=None,
        model: ModelInfo | None = None,
        capture: dict | None = None,
    ) -> "Trace":
        """Build a trace from arrays [S, T, L, K] (or a list of [T_i, L, K] for ragged lengths).

        `domains` names each sequence's domain (or one name for all); `phase`, `tokens` and
        `positions` are [S, T] or lists like `experts` (defaults: all decode, unknown, 0..T-1);
        `weights` matches `experts`; `turns` gives one int per sequence. Negative ids mean "not routed". All layers are taken as MoE layers with
        `num_experts` experts each unless `model` is given.
        """
        seqs = _as_sequences(experts, "experts")
        if not seqs:
            raise ExpertcacheError("no sequences given")
        if any(s.ndim != 3 for s in seqs):
            raise ExpertcacheError("experts must be [sequences, tokens, MoE layers, k] (or a list of [tokens, MoE layers, k])")
        L, K = seqs[0].shape[1:]
        if any(s.shape[1:] != (L, K) for s in seqs):
            raise ExpertcacheError("every sequence needs the same number of layers and k")
        if model is None:
            if num_experts is None:
                raise ExpertcacheError("give num_experts (or a model description)")
            model = ModelInfo.synthetic(L, num_experts, K)
        elif not isinstance(model, ModelInfo):
            raise ExpertcacheError(f"model must be a ModelInfo, got {type(model).__name__}")
        per_seq = {name: _as_sequences(v, name) if v is not None else None
                   for name, v in (("weights", weights), ("tokens", tokens), ("phase", phase),
                                   ("positions", positions))}
        if isinstance(domains, str) or domains is None:
            domains = [domains or "default"] * len(seqs)
        if not isinstance(domains, (list, tuple)) or not all(isinstance(d, str) for d in domains):
            raise ExpertcacheError("domains must be one label or a list of labels (strings), one per sequence")
        if len(domains) != len(seqs):
            raise ExpertcacheError(f"{len(domains)} domain labels for {len(seqs)} sequences")
        turns = [0] * len(seqs) if turns is None else list(turns)
        for name, values in (*per_seq.items(), ("turns", turns)):
            if values is not None and len(values) != len(seqs):
                raise ExpertcacheError(f"{name} has {len(values)} sequences, experts has {len(seqs)}")
        writer = _MemoryWriter(model)
        for i, seq in enumerate(seqs):
            given = {name: None if values is None else values[i] for name, values in per_seq.items()}
            writer.add_sequence(
                seq, given["weights"], tokens=given["tokens"], positions=given["positions"],
                phase=DECODE if given["phase"] is None else given["phase"], domain=domains[i], turn=turns[i],
            )
        trace = writer.trace()
        trace.capture = capture or {}
        return trace

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trace":
        """Open a trace directory; arrays stay on disk until used."""
        path = Path(path)
        if not path.exists():
            raise ExpertcacheError(f"{path}: no such trace")
        if not path.is_dir():
            raise ExpertcacheError(f"{path}: a trace is a directory (or a route_trace v1 CSV, *.route.csv), "
                                   "this is another file")
        if (path / STACKS).is_file() and not (path / MANIFEST).exists():
            stacks = read_json(path / STACKS, "list of stacks").get("stacks", [])
            raise ExpertcacheError(
                f"{path} holds a seq2seq capture with one trace per stack: open "
                + " or ".join(str(path / s) for s in stacks)
            )
        manifest = read_json(path / MANIFEST, "trace manifest")
        if manifest.get("format") != FORMAT_NAME:
            raise ExpertcacheError(f"{path / MANIFEST}: not an expertcache trace")
        if manifest.get("version") != FORMAT_VERSION:
            raise ExpertcacheError(
                f"{path / MANIFEST}: trace format version {manifest.get('version')}, this expertcache reads {FORMAT_VERSION}"
            )
        try:
            model = ModelInfo.from_json(manifest["model"])
        except (KeyError, TypeError, ValueError, ExpertcacheError) as e:
            raise ExpertcacheError(f"{path / MANIFEST}: bad model description ({e})") from None
        ids = expert_dtype(model.max_experts)
        if manifest.get("expert_dtype") != ids.name:
            raise ExpertcacheError(f"{path / MANIFEST}: expert_dtype {manifest.get('expert_dtype')} does not fit the model")
        domains = list(manifest.get("domains", []))
        shards = []
        shard_dirs = sorted(p for p in (path / SHARDS).glob("*") if p.name.isdigit()) if (path / SHARDS).is_dir() else []
        for shard_dir in shard_dirs:
            shard = _load_shard(shard_dir, model, ids, manifest.get("optional_arrays", []))
            local = shard.pop("_domains")
            for name in local:
                if name not in domains:
                    domains.append(name)
            shard["seq_domain"] = np.array([domains.index(local[d]) for d in shard["seq_domain"]], np.int16)
            shards.append(shard)
        if not shards:
            raise ExpertcacheError(f"{path}: the trace holds no finished shard yet")
        return cls(model, shards, domains, manifest.get("capture"), manifest.get("corpus"), path)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write this trace as a directory (see docs/trace-format.md), whole or not at all: it is
        written beside `path` and swapped in, so an interruption leaves the earlier trace (or none)."""
        path = Path(path)
        if path.exists():
            if not overwrite:
                refuse_existing(path)
            check_replaceable(path)
        optional = tuple(n for n in OPTIONAL_ARRAYS if self._shards[0].get(n) is not None)
        with atomic_folder(path) as stage, TraceWriter(stage, self.model, capture=self.capture, corpus=self.corpus,
                                                       domains=self.domains, optional=optional) as writer:
            for i in range(self.num_sequences):
                s = self.sequence(i)
                writer.add_sequence(
                    self.experts[s], self.weights[s], tokens=self.tokens[s], positions=self.positions[s],
                    phase=self.phase[s], domain=self.domains[self.seq_domain[i]], turn=int(self.seq_turn[i]),
                    **{n: getattr(self, n)[s] for n in optional},
                )

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(experts [S, T, L, K] signed ints, -1 where not routed; weights [S, T, L, K] float16;
        tokens [S, T]) for a trace whose sequences all have the same length."""
        lengths = np.unique(self.seq_lengths)
        if len(lengths) != 1:
            raise ExpertcacheError(
                f"sequences have {len(lengths)} different lengths ({lengths.min()}..{lengths.max()}); "
                "array export needs one fixed length"
            )
        S, T = self.num_sequences, int(lengths[0])
        ids = np.int16 if self.num_experts < np.iinfo(np.int16).max else np.int32
        experts = self.experts.astype(ids)
        experts[self.experts == self.pad_id] = -1
        shape = (S, T, self.num_moe_layers, self.top_k)
        return experts.reshape(shape), np.asarray(self.weights).reshape(shape), np.asarray(self.tokens).reshape(S, T)

    # ----------------------------------------------------------------- shape
    @property
    def num_sequences(self) -> int:
        return len(self.seq_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.seq_offsets[-1])

    @property
    def num_moe_layers(self) -> int:
        return self.model.num_moe_layers

    @property
    def top_k(self) -> int:
        return self.model.top_k

    @property
    def num_experts(self) -> int:
        """Experts of the largest MoE layer (all layers have this many in most models)."""
        return self.model.max_experts

    @property
    def pad_id(self) -> int:
        """Id stored where a layer did not route a token."""
        return pad_id(expert_dtype(self.model.max_experts))

    @cached_property
    def seq_offsets(self) -> np.ndarray:
        """[S + 1] token offsets of the sequences."""
        return np.concatenate([[0], np.cumsum(self.seq_lengths)]).astype(np.int64)

    def sequence(self, i: int) -> slice:
        """Token slice of sequence i (negative i counts from the end), for indexing any per-token array."""
        S = self.num_sequences
        if not is_whole(i) or not -S <= i < S:
            raise ExpertcacheError(f"no sequence {i!r}: the trace has {S} (0..{S - 1})")
        i = int(i) % S
        return slice(int(self.seq_offsets[i]), int(self.seq_offsets[i + 1]))

    # ----------------------------------------------------------------- arrays
    def _concat(self, name: str) -> np.ndarray | None:
        parts = self._parts(name)
        if parts[0] is None:
            return None
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @cached_property
    def seq_lengths(self) -> np.ndarray:
        return self._concat("seq_lengths")  # [S]

    @cached_property
    def seq_domain(self) -> np.ndarray:
        return self._concat("seq_domain")  # [S] index into self.domains

    @cached_property
    def seq_turn(self) -> np.ndarray:
        return self._concat("seq_turn")  # [S]

    @cached_property
    def experts(self) -> np.ndarray:
        return self._concat("experts")  # [N, L, K], pad_id where not routed

    @cached_property
    def weights(self) -> np.ndarray:
        return self._concat("weights")  # [N, L, K] float16

    @cached_property
    def tokens(self) -> np.ndarray:
        return self._concat("tokens")  # [N] int32, -1 unknown

    @cached_property
    def positions(self) -> np.ndarray:
        return self._concat("positions")  # [N] int32

    @cached_property
    def phase(self) -> np.ndarray:
        return self._concat("phase")  # [N] uint8: 0 prefill, 1 decode

    @cached_property
    def logits(self) -> np.ndarray | None:
        return self._concat("logits")  # [N, L, E] float16 or None

    @cached_property
    def stale_gate(self) -> np.ndarray | None:
        """[N, L, E] float16: row l = MoE layer l's router applied to the hidden state entering
        MoE layer l-1 (known one layer ahead, for prefetch); row 0 is NaN. None if not captured."""
        return self._concat("stale_gate")

    def shard_arrays(self, name: str) -> list[np.ndarray]:
        """One array per shard, whole sequences each (memory-mapped for a loaded trace): for
        reading a big trace block by block without concatenating it."""
        if name not in (*_PER_TOKEN, *SEQUENCE_ARRAYS):
            raise ExpertcacheError(f"no trace array {name!r}")
        return self._parts(name)

    def _parts(self, name: str) -> list:
        """Each shard's array `name` (None where absent), checked on first use (validate.Deferred)."""
        return [part.get() if isinstance(part := s.get(name), Deferred) else part for s in self._shards]

    def layer_experts(self, layer: int) -> np.ndarray:
        """[N, K] expert ids of one MoE layer, read without loading the other layers."""
        if not 0 <= layer < self.num_moe_layers:
            raise ExpertcacheError(f"MoE layer {layer} outside 0..{self.num_moe_layers - 1}")
        return np.concatenate([np.ascontiguousarray(e[:, layer, :]) for e in self.shard_arrays("experts")])

    @cached_property
    def token_domain(self) -> np.ndarray:
        """[N] domain index of each token."""
        return np.repeat(self.seq_domain, self.seq_lengths)

    def select(self, sequences) -> "Trace":
        """A new in-memory trace holding only the given sequences (indices or a boolean mask)."""
        idx = np.arange(self.num_sequences)[sequences]
        if len(idx) == 0:
            raise ExpertcacheError("the selection holds no sequence")
        token_idx = np.concatenate([np.arange(self.seq_offsets[i], self.seq_offsets[i + 1]) for i in idx])
        shard = {name: getattr(self, name)[token_idx] for name in _PER_TOKEN if getattr(self, name) is not None}
        shard["seq_lengths"] = self.seq_lengths[idx]
        shard["seq_domain"] = self.seq_domain[idx]
        shard["seq_turn"] = self.seq_turn[idx]
        return Trace(self.model, [shard], self.domains, self.capture, self.corpus)

    def as_decode(self) -> "Trace":
        """The same routing with every token marked decode: replays a teacher-forced corpus
        trace (all prefill) as if each token had been generated one at a time."""
        shards = [{**s, "phase": np.full(int(s["seq_lengths"].sum()), DECODE, np.uint8)} for s in self._shards]
        return Trace(self.model, shards, self.domains, self.capture, self.corpus, self.path)

    def with_domain(self, domain: str) -> "Trace":
        """Only the sequences of one domain."""
        if domain not in self.domains:
            raise ExpertcacheError(f"no domain {domain!r} in this trace; it has {', '.join(self.domains)}")
        return self.select(self.seq_domain == self.domains.index(domain))

    def __repr__(self) -> str:
        return (f"Trace({self.model.name!r}, sequences={self.num_sequences}, tokens={self.num_tokens}, "
                f"moe_layers={self.num_moe_layers}, experts={self.num_experts}, k={self.top_k})")


class _MemoryWriter(TraceWriter):
    """A TraceWriter whose single shard stays in memory (for from_arrays)."""

    def __init__(self, model: ModelInfo):  # noqa: D107 - deliberately skips the directory set-up
        self.model = model
        self.optional = ()
        self.shard_tokens = float("inf")
        self.commit_seconds = None
        self.expert_dtype = expert_dtype(model.max_experts)
        self._buffer = []
        self._buffered_tokens = 0
        self._sequences = 0

    def trace(self) -> Trace:
        shard, domains = self._pack()
        return Trace(self.model, [shard], domains)


def _as_sequences(values, name: str) -> list[np.ndarray]:
    if isinstance(values, np.ndarray):
        if values.ndim == 0:
            raise ExpertcacheError(f"{name} must be an array, got a scalar")
        return list(values)
    if isinstance(values, (list, tuple)):
        return [np.asarray(v) for v in values]
    raise ExpertcacheError(f"{name} must be a numpy array or a list of arrays")


def _load_shard(shard_dir: Path, model: ModelInfo, ids: np.dtype, optional: list[str]) -> dict:
    """One shard's arrays: sizes, shapes and dtypes checked now (cheap), contents when first used
    (the per-sequence arrays at once: the trace's layout depends on them)."""
    meta = read_json(shard_dir / SHARD_META, "shard description")
    files = meta.get("arrays", {})
    L, K, E = model.num_moe_layers, model.top_k, model.max_experts
    S, N = meta.get("num_sequences"), meta.get("num_tokens")
    expected = {name: ((S,), dtype) for name, dtype in SEQUENCE_ARRAYS.items()}
    expected.update({name: ((N, L, K) if name == "weights" else (N,), dtype) for name, dtype in TOKEN_ARRAYS.items()})
    expected["experts"] = ((N, L, K), ids)
    expected.update({name: ((N, L, E), np.float16) for name in optional})
    shard = {"_domains": meta.get("domains", [])}
    for name, (shape, dtype) in expected.items():
        file = shard_dir / f"{name}.npy"
        entry = files.get(name) if isinstance(files, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
            raise ExpertcacheError(f"{file}: not recorded (with its size) in {shard_dir / SHARD_META}")
        array = load_array(file, entry["bytes"])
        if array.shape != shape or array.dtype != np.dtype(dtype):
            raise ExpertcacheError(
                f"{file}: shape {array.shape} {array.dtype}, the manifest implies {shape} {np.dtype(dtype)}"
            )
        crc = entry.get("crc32")
        check = shard_array_check(file, name, crc if isinstance(crc, int) else None, num_experts=model.num_experts,
                                  pad=pad_id(ids), num_domains=len(shard["_domains"]))
        shard[name] = Deferred(array, check)
    for name in SEQUENCE_ARRAYS:
        shard[name] = shard[name].get()
    if int(shard["seq_lengths"].sum()) != N:
        raise ExpertcacheError(f"{shard_dir / 'seq_lengths.npy'}: lengths add up to {shard['seq_lengths'].sum()}, not {N}")
    return shard
