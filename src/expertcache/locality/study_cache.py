"""Hit rates of LRU, LFU, Belady and FSF(m) at every cache size, study accounting.

One pass per policy gives every size C = 1..E per MoE layer and C = 1..sum(E) for the
model-level cache, or C = 1..cap there with `max_multiple`: the priority policies' cost per
request then stops growing with the number of keys (see _stack). Each sequence starts with
an empty cache; results pool hits and requests over sequences, and are kept per domain so
one pass also answers every domain.

Shape key: L MoE layers, E experts (largest layer), I = sum of the layers' experts, D domains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from ..checks import is_whole
from ..errors import ExpertcacheError
from ..trace import Trace, open_trace
from . import _stack
from ._streams import blocks, layer_offsets, layer_stream, model_stream, parallel_map, split

__all__ = ["POLICIES", "HitCurves", "curves", "hit_counts"]

POLICIES = tuple(_stack.POLICY_CODES)


@dataclass(frozen=True)
class HitCounts:
    """Raw tallies of one pass: hits per size, per domain, for every layer and the model."""

    per_layer: np.ndarray  # [D, L, E] hits at C = 1..E
    per_layer_requests: np.ndarray  # [D, L]
    model_level: np.ndarray  # [D, I] hits at C = 1..I (NaN above the cap)
    model_requests: np.ndarray  # [D]


@dataclass(frozen=True)
class HitCurves:
    """Hit rate for every cache size of one policy; `per_layer[l, C-1]`, `model_level[C-1]`.

    Sizes beyond a layer's own expert count (layers with fewer than E experts) hit always.
    Rates are NaN where there were no requests, and at model-level sizes above a cap.
    """

    policy: str
    m: int | None
    num_experts: int
    top_k: int
    per_layer: np.ndarray  # [L, E]
    model_level: np.ndarray  # [I]
    requests_per_layer: np.ndarray = field(repr=False)  # [L]
    domain: str | None = None

    def to_json(self) -> dict:
        """The CLI's JSON contract: policy, m, num_experts, per_layer, model_level."""
        return {
            "policy": self.policy,
            "m": self.m,
            "num_experts": self.num_experts,
            "per_layer": [_floats(row) for row in self.per_layer],
            "model_level": _floats(self.model_level),
        }


def _floats(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


def check_policy(policy: str, m: int | None) -> int | None:
    """Validate a policy name and its segment length; returns m as used (None unless fsf)."""
    if policy not in _stack.POLICY_CODES:
        raise ExpertcacheError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "fsf":
        if m is None:
            raise ExpertcacheError("policy fsf needs a segment length m (e.g. m=16)")
        return check_m(m)
    if m is not None:
        raise ExpertcacheError(f"segment length m applies only to fsf, not to {policy}")
    return None


def check_m(m) -> int:
    if not is_whole(m) or m < 1:
        raise ExpertcacheError(f"segment length m must be an integer >= 1, got {m!r}")
    return int(m)


def model_cap(trace: Trace, max_multiple: float | None) -> int:
    """Largest model-level size computed: max_multiple x the active experts (L * k), or all."""
    I = int(sum(trace.model.num_experts))
    if max_multiple is None:
        return I
    if isinstance(max_multiple, bool) or not isinstance(max_multiple, (int, float, np.integer, np.floating)) \
            or not max_multiple > 0:
        raise ExpertcacheError(f"max_multiple must be a number > 0, got {max_multiple!r}")
    active = trace.num_moe_layers * trace.top_k
    if max_multiple * active < 1:
        raise ExpertcacheError(f"max_multiple {max_multiple} x {active} active experts is less than one expert")
    return int(min(I, np.floor(max_multiple * active)))


def segment_lengths(m) -> tuple[int, ...]:
    """One segment length or several, as distinct validated ints in the order given."""
    if isinstance(m, (str, bytes)) or not hasattr(m, "__iter__"):
        return (check_m(m),)  # one value: an int, or a one-line error (2.0, "16")
    values = tuple(m)
    if not values:
        raise ExpertcacheError("give at least one segment length m")
    return tuple(dict.fromkeys(check_m(v) for v in values))


def hit_counts(trace: Trace, policy: str, m: int | None = None, *, model_level: bool = True,
               max_multiple: float | None = None, shuffle: tuple[int, ...] | None = None,
               progress=None) -> HitCounts:
    """One pass over the trace: hits at every size, per domain, layer and model level.

    `max_multiple` caps the model-level sizes (see `model_cap`); `shuffle` permutes tokens
    within sequences (see `_streams.blocks`); `progress(n)` is called with the number of
    sequences done after each block.
    """
    m = check_policy(policy, m)
    cap = model_cap(trace, max_multiple)
    code = _stack.POLICY_CODES[policy]
    L, D = trace.num_moe_layers, len(trace.domains)
    sizes = np.asarray(trace.model.num_experts, np.int64)
    E = int(sizes.max())
    offsets = layer_offsets(trace)
    I = int(offsets[-1])
    pad = trace.pad_id
    seq_domain = np.asarray(trace.seq_domain, np.int64)
    layer_hist = np.zeros((L, D, E + 1), np.int64)  # [L, D, depth 0..E]
    model_hist = np.zeros((D, I + 2), np.int64)
    layer_requests = np.zeros((D, L), np.int64)
    model_requests = np.zeros(D, np.int64)
    # A window reaching past a sequence's end sees all of its future, so FSF(m) for m beyond the
    # longest sequence equals FSF(longest); clamping also keeps a huge m inside the kernel's int64.
    longest = int(np.max(trace.seq_lengths))
    fsf_m = max(1, min(m or 1, longest))
    most = longest * L * trace.top_k
    if most > _stack.MAX_SEQUENCE_REQUESTS:  # keys carry a request's index in their low 32 bits
        raise ExpertcacheError(f"a sequence of {most:,} expert requests (tokens x layers x k) is more than the "
                               f"curves can number ({_stack.MAX_SEQUENCE_REQUESTS:,}); split the sequences")
    for block in blocks(trace, shuffle=shuffle):
        domain = seq_domain[block.seq_start:block.seq_stop]  # [s]

        def one_layer(l):
            ids, tok = layer_stream(block.experts[:, l, :], pad)
            hist = np.zeros((D, sizes[l] + 2), np.int64)  # [D, E_l + 2], last column: never hits
            _stack.stream_hists(ids, tok, block.seq_offsets, domain, int(sizes[l]), code, fsf_m, int(sizes[l]), hist)
            layer_hist[l, :, :sizes[l] + 1] += hist[:, :-1]

        def some_sequences(span):
            a, b = span
            ids, tok = model_stream(block.experts[block.seq_offsets[a]:block.seq_offsets[b]], pad, offsets)
            hist = np.zeros((D, I + 2), np.int64)
            _stack.stream_hists(ids, tok, block.seq_offsets[a:b + 1] - block.seq_offsets[a], domain[a:b], I, code,
                                fsf_m, cap, hist)
            return hist

        parallel_map(one_layer, range(L))  # each layer adds into its own rows
        routed = (block.experts != pad).sum(axis=2)  # [n, L]
        per_seq = np.add.reduceat(routed, block.seq_offsets[:-1], axis=0)  # [s, L]
        np.add.at(layer_requests, domain, per_seq)
        if model_level:
            model_hist += sum(parallel_map(some_sequences, split(len(domain), numba.get_num_threads())))
            np.add.at(model_requests, domain, per_seq.sum(axis=1))
        if progress is not None:
            progress(block.seq_stop)
    per_layer = np.cumsum(layer_hist[:, :, 1:E + 1], axis=2).transpose(1, 0, 2)  # [D, L, E]
    model = np.cumsum(model_hist[:, 1:I + 1], axis=1).astype(float)  # [D, I]
    model[:, cap:] = np.nan
    return HitCounts(per_layer, layer_requests, model, model_requests)


def check_request(trace: Trace, policy: str, m: int | None, domain: str | None) -> int | None:
    """Validate a curves request before its pass over the trace; returns m as used."""
    m = check_policy(policy, m)
    _domain_index(trace, domain)
    return m


def _domain_index(trace: Trace, domain: str | None) -> slice | list[int]:
    if domain is None:
        return slice(None)
    if domain not in trace.domains:
        raise ExpertcacheError(f"no domain {domain!r} in this trace; it has {', '.join(trace.domains)}")
    return [trace.domains.index(domain)]


def rates(trace: Trace, counts: HitCounts, policy: str, m: int | None, domain: str | None = None) -> HitCurves:
    """Turn pooled tallies (all domains, or one) into hit-rate curves."""
    pick = _domain_index(trace, domain)
    with np.errstate(invalid="ignore", divide="ignore"):
        layer_requests = counts.per_layer_requests[pick].sum(axis=0)  # [L]
        per_layer = counts.per_layer[pick].sum(axis=0) / layer_requests[:, None]  # [L, E]
        model_level = counts.model_level[pick].sum(axis=0) / counts.model_requests[pick].sum()  # [I]
    return HitCurves(policy, m, trace.num_experts, trace.top_k, per_layer, model_level, layer_requests, domain)


def curves(trace: Trace, policy: str, m: int | None = None, domain: str | None = None, *,
           model_level: bool = True, max_multiple: float | None = None, progress=None) -> HitCurves:
    """Hit rate at every cache size of `policy` ("lru", "lfu", "belady" or "fsf" with m).

    SCH(m, C) is `curves(trace, "fsf", m).per_layer[:, C-1]` (per layer) or `.model_level`.
    `domain` restricts the pooling to one domain's sequences. `max_multiple` computes the
    model-level curve only up to max_multiple x the active experts (NaN above): exact there, at
    a cost per request that no longer grows with the model's number of experts.
    """
    trace = open_trace(trace)
    m = check_request(trace, policy, m, domain)
    counts = hit_counts(trace, policy, m, model_level=model_level, max_multiple=max_multiple, progress=progress)
    return rates(trace, counts, policy, m, domain)
