"""Checks for routing read from text files: incomplete data is refused with the line it came from.

An importer lays what it read out as dense arrays, -1 where the file gave nothing, with the
line each id was read from; `check_imported_routing` then finds what a cut or hand-edited file
leaves: an id out of range, an expert twice in one token's list, a layer with fewer than k ids,
a token missing a layer that the format requires, a file that routes nothing. The route CSV
importer uses it (a token's rows are spread over many lines); a line-per-token format can too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ExpertcacheError

__all__ = ["check_imported_routing"]


def check_imported_routing(source: str, experts: np.ndarray, lines: np.ndarray, num_experts: Sequence[int],
                           optional: np.ndarray | None = None) -> None:
    """Raise, naming `source` and a line, unless the routing of one sequence is complete.

    experts [T, L, K] int64: the ids read, -1 where the file gave none; lines [T, L, K]: the
    line each id came from (one line per token in a JSONL file; any value where absent);
    optional [T, L] bool: (token, layer) pairs the format lets go unrouted (a route CSV's last
    layer for prompt tokens), None when every token must route every layer.
    """
    T, L, K = experts.shape
    present = experts >= 0  # [T, L, K]
    limits = np.asarray(num_experts, np.int64)[None, :, None]
    bad = (experts < -1) | (experts >= limits)
    if bad.any():
        t, layer, slot = np.argwhere(bad)[0]
        raise ExpertcacheError(f"{source}:{lines[t, layer, slot]}: expert id {experts[t, layer, slot]} of MoE layer "
                               f"{layer} outside 0..{limits[0, layer, 0] - 1}")
    ordered = np.sort(np.where(present, experts, -1 - np.arange(K)), axis=2)  # absent slots never equal
    repeated = (ordered[:, :, 1:] == ordered[:, :, :-1]).any(axis=2)  # [T, L]
    if repeated.any():
        t, layer = np.argwhere(repeated)[0]
        row = ordered[t, layer]
        expert = row[1:][row[1:] == row[:-1]][0]
        raise ExpertcacheError(f"{source}:{lines[t, layer][experts[t, layer] == expert].max()}: MoE layer {layer} "
                               f"lists expert {expert} twice for one token")
    count = present.sum(axis=2)  # [T, L]
    partial = (count > 0) & (count < K)
    if partial.any():
        t, layer = np.argwhere(partial)[0]
        raise ExpertcacheError(f"{source}:{lines[t, layer][present[t, layer]].max()}: MoE layer {layer} of this token "
                               f"has {count[t, layer]} of its k={K} experts (a cut or incomplete file?)")
    missing = (count == 0) & (count.sum(axis=1, keepdims=True) > 0)
    if optional is not None:
        missing &= ~optional
    if missing.any():
        t, layer = np.argwhere(missing)[0]
        raise ExpertcacheError(f"{source}:{lines[t][present[t]].max()}: the token read up to this line has no MoE "
                               f"layer {layer} (a cut or incomplete file?)")
    if not present.any():
        raise ExpertcacheError(f"{source}: no token is routed to any expert")
