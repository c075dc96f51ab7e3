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
from .format import DECODE, PREFILL, expert_dtype
from .import_checks import check_imported_routing
from .model_info import ModelInfo
from .trace import Trace

__all__ = ["import_bigmoe"]

_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight", "residency", "expert_bytes")


def import_bigmoe(path: str | os.PathLike) -> Trace:
    """Read a route-trace CSV into an in-memory Trace (save it with `trace.save`).

    Incomplete data is refused with its line number: a token missing a layer (only prompt
    tokens may skip the last one), a layer with fewer than k experts, an expert twice in one
    token's list, a row given twice, an `expert_bytes` value that is neither 0 nor the header's.
    """
    path = Path(path)
    if not path.is_file():
        raise ExpertcacheError(f"{path}: no such file")
    header, rows = _read_rows(path)
    model = _model_info(path, header, len(rows))
    table = _table(path, rows)
    _check_rows(path, table, model)

    sequences, weights, phases, positions, turns = [], [], [], [], []
    for turn in np.unique(table["turn"]):
        rows_of_turn = table[table["turn"] == turn]
        token_keys = np.unique(rows_of_turn[["phase", "step"]])  # sorted by (phase, step)
        token_of_row = np.searchsorted(token_keys, rows_of_turn[["phase", "step"]])
        T, L, K = len(token_keys), model.num_moe_layers, model.top_k
        experts = np.full((T, L, K), -1, np.int64)  # [T, L, K]
        lines = np.zeros((T, L, K), np.int64)
        routed_weights = np.zeros((T, L, K), np.float32)
        cell = (token_of_row, rows_of_turn["layer"], rows_of_turn["slot"])
        experts[cell], lines[cell], routed_weights[cell] = rows_of_turn["expert"], rows_of_turn["line"], rows_of_turn["weight"]
        prompt = token_keys["phase"] == PREFILL
        optional = np.zeros((T, L), bool)
        optional[prompt, L - 1] = True  # the last layer routes only the final prompt token
        check_imported_routing(str(path), experts, lines, model.num_experts, optional)
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


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header lines without '#', [(line number, fields)] of the table rows after its header)."""
    header, body = [], []
    try:
        with open(path, newline="") as f:
            for number, line in enumerate(f, 1):
                if line.startswith("#"):
                    header.append(line)
                elif line.strip():
                    body.append((number, next(csv.reader([line]))))
    except UnicodeDecodeError:
        raise ExpertcacheError(f"{path}: not a route_trace v1 file (not text)") from None
    if not header or header[0].strip("# \n") != "route_trace v1":
        raise ExpertcacheError(f"{path}: not a route_trace v1 file (first line must be '# route_trace v1')")
    if not body or tuple(c.strip() for c in body[0][1]) != _COLUMNS:
        raise ExpertcacheError(f"{path}: the table header must be {','.join(_COLUMNS)}")
    if len(body) == 1:
        raise ExpertcacheError(f"{path}: the table has no rows")
    return [h.strip("# \n") for h in header[1:]], body[1:]


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def _model_info(path: Path, header: list[str], rows: int) -> ModelInfo:
    model_line = next((_fields(h) for h in header if h.startswith("model=")), None)
    if model_line is None:
        raise ExpertcacheError(f"{path}: header lacks the 'model=… n_layer=… n_expert=… n_expert_used=…' line")
    try:
        n_layer, n_expert, k = (int(model_line[key]) for key in ("n_layer", "n_expert", "n_expert_used"))
    except (KeyError, ValueError) as e:
        raise ExpertcacheError(f"{path}: header model line lacks or garbles {e}") from None
    sizes = {}  # layer -> (expert bytes, dense bytes)
    for h in header:
        if h.startswith("layer="):
            fields = _fields(h)
            try:
                layer, expert, dense = (int(fields.get(key, 0)) for key in ("layer", "expert_bytes", "dense_bytes"))
            except ValueError as e:
                raise ExpertcacheError(f"{path}: header line '{h}' garbles a number ({e})") from None
            if not 0 <= layer < n_layer:
                raise ExpertcacheError(f"{path}: header names layer {layer} of {n_layer}")
            sizes[layer] = (expert, dense)
    if not 0 < n_layer <= rows:  # every layer has rows: a larger count is a damaged header, not a model
        raise ExpertcacheError(f"{path}: header says n_layer={n_layer}, but the table's {rows} rows cannot route that many")
    expert_dtype(n_expert)  # ids beyond any id type: one line, before any array is sized by it
    expert_bytes = [sizes.get(layer, (0, 0))[0] for layer in range(n_layer)]
    dense_bytes = [sizes.get(layer, (0, 0))[1] for layer in range(n_layer)]
    name = Path(model_line.get("model", "unknown")).name
    return ModelInfo(
        name=name, architecture=model_line.get("arch", "unknown"), num_layers=n_layer,
        moe_layers=tuple(range(n_layer)), num_experts=(n_expert,) * n_layer, top_k=k,
        expert_bytes=tuple(expert_bytes) if all(expert_bytes) else (),
        dense_bytes=tuple(dense_bytes) if all(dense_bytes) else (),
        dtype=name.rsplit("-", 1)[-1].removesuffix(".gguf") if name.endswith(".gguf") else "unknown",
    )


def _table(path: Path, rows: list[tuple[int, list[str]]]) -> np.ndarray:
    dtype = [(c, np.float64 if c == "weight" else np.int64) for c in ("line", *_COLUMNS)]
    values = []
    for number, row in rows:
        if len(row) != len(_COLUMNS):
            raise ExpertcacheError(f"{path}:{number}: {len(row)} fields, the table has {len(_COLUMNS)} (a cut line?)")
        try:
            values.append((number, *(float(v) if c == "weight" else _int64(v) for c, v in zip(_COLUMNS, row))))
        except ValueError as e:
            raise ExpertcacheError(f"{path}:{number}: malformed field ({e})") from None
    return np.array(values, dtype=dtype)


def _int64(text: str) -> int:
    value = int(text)
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{text} is beyond a 64-bit integer")
    return value


def _check_rows(path: Path, table: np.ndarray, model: ModelInfo) -> None:
    """Row by row: fields in range, no (token, layer, slot) twice, read bytes as the header says."""
    L, K = model.num_moe_layers, model.top_k
    checks = [
        ((table["layer"] < 0) | (table["layer"] >= L), f"layer outside 0..{L - 1} (header n_layer={L})"),
        ((table["slot"] < 0) | (table["slot"] >= K), f"slot outside 0..{K - 1} (header n_expert_used={K})"),
        ((table["expert"] < 0) | (table["expert"] >= model.max_experts),
         f"expert outside 0..{model.max_experts - 1} (header n_expert={model.max_experts})"),
        ((table["phase"] != PREFILL) & (table["phase"] != DECODE), "phase must be 0 (prefill) or 1 (decode)"),
        (~np.isfinite(table["weight"]), "weight must be a finite number"),
    ]
    if model.expert_bytes:
        size = np.asarray(model.expert_bytes, np.int64)[np.clip(table["layer"], 0, L - 1)]
        checks.append(((table["expert_bytes"] != 0) & (table["expert_bytes"] != size),
                       "expert_bytes is neither 0 (a hit) nor the header's size of an expert of this layer (a cut number?)"))
    key = table[["turn", "phase", "step", "layer", "slot"]]
    order = np.argsort(key, kind="stable")
    again = np.zeros(len(table), bool)
    again[order[1:]] = key[order[1:]] == key[order[:-1]]
    checks.append((again, "the same turn, phase, step, layer and slot as an earlier row"))
    bad_lines = [(table["line"][bad].min(), message) for bad, message in checks if bad.any()]
    if bad_lines:
        line, message = min(bad_lines)
        raise ExpertcacheError(f"{path}:{line}: {message}")
