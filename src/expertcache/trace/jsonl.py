"""Import routing written as JSON Lines, one token a line (docs/trace-format.md, "JSONL routing").

The simplest format a recorder can append to while it runs: one object per token,
`{"layers": [[k expert ids] per MoE layer]}`, optionally with routing weights, token id,
position (`tok`), phase, sequence key and domain. Every line is checked as it is read and a
bad one is reported as `FILE:LINE: what is wrong`.

Shape key: T tokens of a sequence, L MoE layers, K top-k.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ExpertcacheError
from .format import DECODE, PREFILL
from .model_info import ModelInfo
from .trace import Trace

__all__ = ["import_jsonl"]

FIELDS = ("layers", "weights", "tok", "token_id", "phase", "seq", "domain")
_PHASES = {"prefill": PREFILL, "decode": DECODE}


@dataclass
class _Sequence:
    """The tokens of one sequence, in file order."""

    key: object
    domain: str | None
    experts: list = field(default_factory=list)  # T x [L, K] int64, -1 = not routed
    weights: list = field(default_factory=list)  # T x [L, K] float32, or empty
    tokens: list = field(default_factory=list)
    positions: list = field(default_factory=list)
    phase: list = field(default_factory=list)


def import_jsonl(
    path: str | os.PathLike,
    num_experts: int | None = None,
    *,
    model: ModelInfo | None = None,
    ids_sorted: bool = False,
) -> Trace:
    """Read a JSONL routing file into an in-memory Trace (save it with `trace.save`).

    Give `num_experts` (all layers MoE with that many experts, L and k taken from the first
    line, the model named after the file) or a full `model` description. `ids_sorted` says
    the recorder sorted each layer's ids rather than keeping the score order; the trace's
    capture records it, since the format promises score order otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpertcacheError(f"{path}: no such file")
    if (num_experts is None) == (model is None):
        raise ExpertcacheError("give the number of experts per layer or a model description (one of the two)")
    model, sequences = _read(path, model, num_experts)
    has_weights = bool(sequences[0].weights)
    capture = {"source": "jsonl", "file": path.name}
    if ids_sorted:
        capture["id_order"] = "ascending"
    return Trace.from_arrays(
        [np.stack(s.experts) for s in sequences], model=model,
        weights=[np.stack(s.weights) for s in sequences] if has_weights else None,
        tokens=[np.asarray(s.tokens) for s in sequences], positions=[np.asarray(s.positions) for s in sequences],
        phase=[np.asarray(s.phase) for s in sequences], domains=[s.domain or "default" for s in sequences],
        capture=capture,
    )


def _read(path: Path, model: ModelInfo | None, num_experts: int | None) -> tuple[ModelInfo, list[_Sequence]]:
    """The model (synthetic ones from the first line) and the file's sequences, every line checked."""
    sequences: list[_Sequence] = []
    keys: set = set()  # of the sequences read so far
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                record = _record(line, where)
                if model is None:
                    model = _synthetic_model(record["layers"], where, num_experts, path.name.split(".")[0])
                fast = "true" not in line and "false" not in line  # numpy would read a boolean as 1 or 0
                experts = _ids(record["layers"], where, model, fast)  # [L, K]
                if sequences and bool(sequences[0].weights) != ("weights" in record):
                    raise ExpertcacheError(f"{where}: weights given on some lines only (give them on every line or none)")
                _append(_sequence_of(sequences, keys, record, where), record, experts, where, fast)
    except UnicodeDecodeError:
        raise ExpertcacheError(f"{path}: not a JSONL routing file (not UTF-8 text)") from None
    if not sequences:
        raise ExpertcacheError(f"{path}: no tokens (expected one JSON object a line)")
    return model, sequences


def _record(line: str, where: str) -> dict:
    try:
        record = json.loads(line, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ExpertcacheError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise ExpertcacheError(f"{where}: expected a JSON object, got {type(record).__name__}")
    unknown = [k for k in record if k not in FIELDS]
    if unknown:
        raise ExpertcacheError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    if "layers" not in record:
        raise ExpertcacheError(f"{where}: no field 'layers' (a list of k expert ids per MoE layer)")
    if isinstance(record["layers"], list) and record["layers"] and all(ids is None for ids in record["layers"]):
        raise ExpertcacheError(f"{where}: no layer routed this token (every entry of 'layers' is null)")
    return record


def _no_constant(name: str):
    """NaN and Infinity are not JSON (Python's parser accepts them by default)."""
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def _synthetic_model(layers, where: str, num_experts: int, name: str) -> ModelInfo:
    """All layers MoE with `num_experts` each; L and k as the first line has them."""
    first = next((ids for ids in layers if isinstance(ids, list)), None) if isinstance(layers, list) else None
    if first is None:
        raise ExpertcacheError(f"{where}: 'layers' must be a list of k expert ids per MoE layer")
    try:
        return ModelInfo.synthetic(len(layers), int(num_experts), len(first), name=name)
    except ExpertcacheError as e:
        raise ExpertcacheError(f"{where}: {e}") from None


def _ids(layers, where: str, model: ModelInfo, fast: bool = True) -> np.ndarray:
    """[L, K] int64 ids of one token; -1 for a layer given as null (it did not route the token).

    Whole lines of distinct in-range ids pass a vectorized check (`fast`: the line has no
    booleans); anything else (nulls, or a mistake to explain) goes through the line-by-line one.
    """
    try:
        ids = np.array(layers) if fast else None  # [L, K] when every layer is a list of k ints
    except (ValueError, TypeError):  # ragged, or nulls among lists
        ids = None
    if ids is not None and ids.dtype.kind == "i" and ids.shape == (model.num_moe_layers, model.top_k):
        ordered = np.sort(ids, axis=1)
        limits = np.asarray(model.num_experts)[:, None]  # [L, 1]
        if (ordered[:, 0] >= 0).all() and (ordered[:, -1:] < limits).all() and (ordered[:, 1:] != ordered[:, :-1]).all():
            return ids.astype(np.int64, copy=False)
    return _checked_ids(layers, where, model)


def _checked_ids(layers, where: str, model: ModelInfo) -> np.ndarray:
    """`_ids` layer by layer, naming the first thing wrong."""
    L, k = model.num_moe_layers, model.top_k
    if not isinstance(layers, list) or len(layers) != L:
        got = len(layers) if isinstance(layers, list) else type(layers).__name__
        raise ExpertcacheError(f"{where}: 'layers' must list {L} MoE layers, got {got}")
    for layer, ids in enumerate(layers):
        if ids is None:
            continue
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise ExpertcacheError(f"{where}: layer {layer} must be a list of integer expert ids or null")
        if len(ids) != k:
            raise ExpertcacheError(f"{where}: layer {layer} has {len(ids)} expert ids, expected k = {k}")
        if len(set(ids)) != k:
            raise ExpertcacheError(f"{where}: layer {layer} names an expert twice ({ids})")
        bad = next((i for i in ids if not 0 <= i < model.num_experts[layer]), None)
        if bad is not None:
            raise ExpertcacheError(f"{where}: expert id {bad} in layer {layer} is outside 0..{model.num_experts[layer] - 1}")
    return np.array([[-1] * k if ids is None else ids for ids in layers], np.int64)


def _sequence_of(sequences: list[_Sequence], keys: set, record: dict, where: str) -> _Sequence:
    """The sequence this line continues, or a new one when `seq` changes."""
    key, domain = record.get("seq"), record.get("domain")
    if key is not None and type(key) not in (str, int):
        raise ExpertcacheError(f"{where}: 'seq' must be text or an integer, got {key!r}")
    if domain is not None and not isinstance(domain, str):
        raise ExpertcacheError(f"{where}: 'domain' must be text, got {domain!r}")
    if sequences and sequences[-1].key == key:
        current = sequences[-1]
        if domain != current.domain:
            raise ExpertcacheError(f"{where}: domain {domain!r} differs from {current.domain!r} earlier in sequence {key!r}")
        return current
    if key in keys:
        raise ExpertcacheError(f"{where}: sequence {key!r} resumes after another one (a sequence's lines must be contiguous)")
    keys.add(key)
    sequences.append(_Sequence(key, domain))
    return sequences[-1]


def _append(sequence: _Sequence, record: dict, experts: np.ndarray, where: str, fast: bool = True) -> None:
    """Add one token with its weights, token id, position and phase, each checked."""
    previous = sequence.positions[-1] if sequence.positions else None
    position = _natural(record, "tok", where)
    if position is None:
        position = 0 if previous is None else previous + 1
    elif previous is not None and position != previous + 1:
        raise ExpertcacheError(f"{where}: tok {position} follows tok {previous} (one line per token: a line missing or repeated?)")
    phase = record.get("phase", "decode")
    if not isinstance(phase, str) or phase not in _PHASES:
        raise ExpertcacheError(f"{where}: phase must be \"prefill\" or \"decode\", got {phase!r}")
    if _PHASES[phase] == PREFILL and sequence.phase and sequence.phase[-1] == DECODE:
        raise ExpertcacheError(f"{where}: a prefill token after decode tokens (a new turn is a new sequence)")
    if "weights" in record:
        sequence.weights.append(_weights(record["weights"], experts, where, fast))
    token = _natural(record, "token_id", where)
    sequence.experts.append(experts)
    sequence.tokens.append(-1 if token is None else token)
    sequence.positions.append(position)
    sequence.phase.append(_PHASES[phase])


def _natural(record: dict, name: str, where: str) -> int | None:
    """An optional integer from 0 to 2^31 - 1, as traces store it (None when absent)."""
    value = record.get(name)
    if value is not None and (type(value) is not int or not 0 <= value < 2**31):
        raise ExpertcacheError(f"{where}: {name!r} must be an integer from 0 to 2^31 - 1, got {value!r}")
    return value


def _weights(weights, experts: np.ndarray, where: str, fast: bool = True) -> np.ndarray:
    """[L, K] float32 laid out like the ids: k numbers per layer, null exactly where the ids are."""
    try:
        array = np.array(weights) if fast else None  # [L, K] when every layer has k numbers
    except (ValueError, TypeError):
        array = None
    if array is not None and array.dtype.kind in "if" and array.shape == experts.shape and (experts[:, 0] >= 0).all():
        return _finite32(array, where)
    k = experts.shape[1]
    shaped = isinstance(weights, list) and len(weights) == len(experts) and all(
        w is None if row[0] < 0 else isinstance(w, list) and len(w) == k and all(type(x) in (int, float) for x in w)
        for w, row in zip(weights, experts))
    if not shaped:
        raise ExpertcacheError(f"{where}: 'weights' must match 'layers': k numbers per layer, null where the layer is null")
    return _finite32(np.array([[0.0] * k if w is None else w for w in weights], np.float64), where)


def _finite32(weights: np.ndarray, where: str) -> np.ndarray:
    """float32 weights; a number beyond float32 (it would become infinite) is refused."""
    if (np.abs(weights) > np.finfo(np.float32).max).any():
        raise ExpertcacheError(f"{where}: a weight is beyond float32's range ({np.abs(weights).max():g})")
    return weights.astype(np.float32)
