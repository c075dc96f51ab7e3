"""Import the `route_trace v1` CSV format recorded by an on-device offloading engine.

Format (see the real traces' README): `#` header lines (`route_trace v1`, a `model=… arch=…
n_layer=… n_expert=… n_expert_used=…` line, one `layer=L expert_bytes=B dense_bytes=D` line
per layer), then a table `turn,phase,step,layer,slot,expert,weight,residency,expert_bytes`.
The table's `expert_bytes` column is what the recording engine read for that row (0 on a hit);
expert sizes come from the header. Each turn becomes one sequence, tokens ordered by (phase, step); a (token, layer) the engine
did not route (the last layer skips all prompt tokens but the final one) gets the pad id.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import ExpertcacheError
from .format import DECODE, PREFILL
from .model_info import ModelInfo
from .trace import Trace

__all__ = ["import_bigmoe"]

_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight", "residency", "expert_bytes")


def import_bigmoe(path: str | os.PathLike) -> Trace:
    """Read a route-trace CSV into an in-memory Trace (save it with `trace.save`)."""
    path = Path(path)
    if not path.is_file():
        raise ExpertcacheError(f"{path}: no such file")
    header, rows = _read_rows(path)
    model = _model_info(path, header)
    table = _table(path, rows)
    L, K = model.num_moe_layers, model.top_k
    if table["layer"].max() >= L or table["slot"].max() >= K or table["expert"].max() >= model.max_experts:
        raise ExpertcacheError(f"{path}: a layer, slot or expert id exceeds the header's n_layer/n_expert_used/n_expert")
    if min(table[c].min() for c in ("layer", "slot", "expert")) < 0:  # would index from the end
        raise ExpertcacheError(f"{path}: a layer, slot or expert id is negative")
    if table["phase"].min() < PREFILL or table["phase"].max() > DECODE:
        raise ExpertcacheError(f"{path}: phase must be 0 (prefill) or 1 (decode)")

    sequences, weights, phases, positions, turns = [], [], [], [], []
    for turn in np.unique(table["turn"]):
        rows_of_turn = table[table["turn"] == turn]
        token_keys = np.unique(rows_of_turn[["phase", "step"]])  # sorted by (phase, step)
        token_of_row = np.searchsorted(token_keys, rows_of_turn[["phase", "step"]])
        T = len(token_keys)
        experts = np.full((T, L, K), -1, np.int64)  # [T, L, K]
        routed_weights = np.zeros((T, L, K), np.float32)
        experts[token_of_row, rows_of_turn["layer"], rows_of_turn["slot"]] = rows_of_turn["expert"]
        routed_weights[token_of_row, rows_of_turn["layer"], rows_of_turn["slot"]] = rows_of_turn["weight"]
        _check_complete(path, turn, experts)
        sequences.append(experts)
        weights.append(routed_weights)
        phases.append(token_keys["phase"].astype(np.uint8))
        positions.append(token_keys["step"])
        turns.append(int(turn))

    capture = {
        "source": "route_trace v1",
        "file": path.name,
        "recorded_residency": {name: int((table["residency"] == code).sum())
                               for code, name in ((0, "miss"), (1, "hit"), (2, "prefetch_hit"))},
        "recorded_read_bytes": int(table["expert_bytes"].sum()),
    }
    return Trace.from_arrays(sequences, model=model, weights=weights, phase=phases, positions=positions,
                             turns=turns, domains="bigmoe", capture=capture)


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    header, body = [], []
    try:
        with open(path, newline="") as f:
            for line in f:
                (header if line.startswith("#") else body).append(line)
    except UnicodeDecodeError:
        raise ExpertcacheError(f"{path}: not a route_trace v1 file (not text)") from None
    if not header or header[0].strip("# \n") != "route_trace v1":
        raise ExpertcacheError(f"{path}: not a route_trace v1 file (first line must be '# route_trace v1')")
    rows = list(csv.reader(body))
    if not rows or tuple(c.strip() for c in rows[0]) != _COLUMNS:
        raise ExpertcacheError(f"{path}: the table header must be {','.join(_COLUMNS)}")
    if len(rows) == 1:
        raise ExpertcacheError(f"{path}: the table has no rows")
    return [h.strip("# \n") for h in header[1:]], rows[1:]


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def _model_info(path: Path, header: list[str]) -> ModelInfo:
    model_line = next((_fields(h) for h in header if h.startswith("model=")), None)
    if model_line is None:
        raise ExpertcacheError(f"{path}: header lacks the 'model=… n_layer=… n_expert=… n_expert_used=…' line")
    try:
        n_layer, n_expert, k = (int(model_line[key]) for key in ("n_layer", "n_expert", "n_expert_used"))
    except (KeyError, ValueError) as e:
        raise ExpertcacheError(f"{path}: header model line lacks or garbles {e}") from None
    expert_bytes, dense_bytes = [0] * n_layer, [0] * n_layer
    for h in header:
        if h.startswith("layer="):
            fields = _fields(h)
            try:
                layer, layer_expert_bytes, layer_dense_bytes = (
                    int(fields.get(key, 0)) for key in ("layer", "expert_bytes", "dense_bytes"))
            except ValueError as e:
                raise ExpertcacheError(f"{path}: header line '{h}' garbles a number ({e})") from None
            if not 0 <= layer < n_layer:
                raise ExpertcacheError(f"{path}: header names layer {layer} of {n_layer}")
            expert_bytes[layer] = layer_expert_bytes
            dense_bytes[layer] = layer_dense_bytes
    name = Path(model_line.get("model", "unknown")).name
    return ModelInfo(
        name=name, architecture=model_line.get("arch", "unknown"), num_layers=n_layer,
        moe_layers=tuple(range(n_layer)), num_experts=(n_expert,) * n_layer, top_k=k,
        expert_bytes=tuple(expert_bytes) if all(expert_bytes) else (),
        dense_bytes=tuple(dense_bytes) if all(dense_bytes) else (),
        dtype=name.rsplit("-", 1)[-1].removesuffix(".gguf") if name.endswith(".gguf") else "unknown",
    )


def _table(path: Path, rows: list[list[str]]) -> np.ndarray:
    dtype = [(c, np.float64 if c == "weight" else np.int64) for c in _COLUMNS]
    try:
        return np.array([tuple(float(v) if c == "weight" else int(v) for c, v in zip(_COLUMNS, row, strict=True))
                         for row in rows], dtype=dtype)
    except ValueError as e:
        raise ExpertcacheError(f"{path}: malformed table row ({e})") from None


def _check_complete(path: Path, turn: int, experts: np.ndarray) -> None:
    """A routed (token, layer) must have all k slots."""
    routed = (experts >= 0).any(axis=2)  # [T, L]
    partial = routed & (experts < 0).any(axis=2)
    if partial.any():
        t, layer = np.argwhere(partial)[0]
        raise ExpertcacheError(f"{path}: turn {turn}, token {t}, layer {layer} lacks some of its k slots")
