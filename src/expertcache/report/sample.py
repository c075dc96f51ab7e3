"""The first tokens of a trace as a trace of their own: the engine replays of a report run on
this prefix, because a replay holds its whole lookup stream in memory (about 40 bytes a lookup)
and a study-scale trace has hundreds of millions of lookups."""

from __future__ import annotations

import numpy as np

from ..trace import Trace
from ..trace.format import OPTIONAL_ARRAYS, SEQUENCE_ARRAYS, TOKEN_ARRAYS

__all__ = ["MAX_LOOKUPS", "head"]

MAX_LOOKUPS = 2_000_000  # about 80 MB of lookup stream, a fraction of one layer of a 1 M-token trace


def head(trace: Trace, max_lookups: int = MAX_LOOKUPS) -> Trace:
    """The first tokens of `trace` with at most `max_lookups` routed slots (at least one token),
    read shard by shard; a sequence cut at the end keeps its first tokens. The trace itself
    when it is small enough."""
    per_token = trace.num_moe_layers * trace.top_k
    n = max(1, min(trace.num_tokens, max_lookups // per_token))
    if n == trace.num_tokens:
        return trace
    lengths = np.diff(np.minimum(trace.seq_offsets, n))
    lengths = lengths[lengths > 0]
    kept = len(lengths)
    shard = {"seq_lengths": lengths.astype(SEQUENCE_ARRAYS["seq_lengths"])}
    for name in ("seq_domain", "seq_turn"):
        shard[name] = np.asarray(getattr(trace, name)[:kept])
    for name in ("experts", *TOKEN_ARRAYS, *OPTIONAL_ARRAYS):
        parts = trace.shard_arrays(name)
        if parts[0] is not None:
            shard[name] = _prefix(parts, n)
    return Trace(trace.model, [shard], trace.domains, trace.capture, trace.corpus)


def _prefix(parts: list[np.ndarray], n: int) -> np.ndarray:
    """The first n rows of arrays stored one after another."""
    out, taken = [], 0
    for part in parts:
        if taken == n:
            break
        out.append(np.asarray(part[:n - taken]))
        taken += len(out[-1])
    return np.concatenate(out)
