"""Turn a trace into the engine's lookup stream, once, with numpy.

A prefill pass (a run of consecutive prefill tokens of one sequence) gives one batch per MoE
layer holding all its tokens' experts, token-major and in score order; each decode token gives
one batch per layer, layers in order. Sequences follow each other. Pad ids (a layer that did
not route a token) are dropped. Keys number (layer, expert) pairs densely: key_offset[l] + e.

Shape key: R requests, B batches, N tokens, L MoE layers, K keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import ExpertcacheError
from ..trace.format import PREFILL

__all__ = ["LookupStream", "build_stream", "key_layers", "key_offsets", "stream_for"]

NEVER = np.iinfo(np.int64).max // 4  # "next use" of a key never used again


@dataclass(frozen=True)
class LookupStream:
    keys: np.ndarray  # [R] int64 key of each request, stream order
    batch_start: np.ndarray  # [B + 1] int64 request offsets of the batches
    batch_layer: np.ndarray  # [B] int64 MoE layer of each batch
    batch_phase: np.ndarray  # [B] uint8 0 prefill, 1 decode
    batch_token: np.ndarray  # [B] int64 first token of the batch (global token index)
    key_offset: np.ndarray  # [L + 1] int64 first key of each layer
    num_tokens: int

    @property
    def num_batches(self) -> int:
        return len(self.batch_layer)

    @property
    def num_keys(self) -> int:
        return int(self.key_offset[-1])

    @cached_property
    def key_layer(self) -> np.ndarray:
        """[K] MoE layer of each key."""
        return key_layers(self.key_offset)

    @cached_property
    def request_batch(self) -> np.ndarray:
        """[R] batch of each request."""
        return np.repeat(np.arange(self.num_batches), np.diff(self.batch_start))

    @cached_property
    def next_use(self) -> np.ndarray:
        """[R] batch of the key's next request (same batch for a repeat not last in its batch),
        NEVER when none follows: what Belady reads from the future, computed in one pass."""
        order = np.argsort(self.keys, kind="stable")
        nxt = np.full(len(self.keys), NEVER, np.int64)
        same = self.keys[order[1:]] == self.keys[order[:-1]]
        nxt[order[:-1][same]] = self.request_batch[order[1:][same]]
        return nxt

    @cached_property
    def max_batch(self) -> int:
        """Requests in the largest batch (sizes the engine's plan); 0 for an empty stream."""
        return int(np.diff(self.batch_start).max()) if self.num_batches else 0

    @cached_property
    def key_counts(self) -> np.ndarray:
        """[K] requests per key over the stream (the frequency profile)."""
        return np.bincount(self.keys, minlength=self.num_keys)


def key_offsets(model) -> np.ndarray:
    """[L + 1] int64 first key of each MoE layer (keys number (layer, expert) pairs densely)."""
    return np.concatenate([[0], np.cumsum(model.num_experts)]).astype(np.int64)


def key_layers(key_offset: np.ndarray) -> np.ndarray:
    """[K] the layer of each key, from key_offsets' [L + 1] (its expert: key - key_offset[layer])."""
    return np.repeat(np.arange(len(key_offset) - 1), np.diff(key_offset))


def stream_for(trace, stream: LookupStream | None) -> LookupStream:
    """`stream` when it was built from a trace of this shape (else a one-line error: another
    trace's keys or tokens would be read out of this one's bounds), or a new one."""
    if stream is None:
        return build_stream(trace)
    if not isinstance(stream, LookupStream):
        raise ExpertcacheError(f"stream must be build_stream(trace), got {type(stream).__name__}")
    if stream.num_tokens != trace.num_tokens or not np.array_equal(stream.key_offset, key_offsets(trace.model)):
        raise ExpertcacheError("the stream was built from another trace (its tokens or experts differ); "
                               "pass build_stream(trace) of this one")
    return stream


def build_stream(trace) -> LookupStream:
    """The lookup stream of a whole trace (sequences back to back)."""
    experts = np.asarray(trace.experts)  # [N, L, K]
    phase = np.asarray(trace.phase)  # [N]
    key_offset = key_offsets(trace.model)

    if not (phase == PREFILL).any() and not (experts == trace.pad_id).any():
        return _decode_only(experts, phase, key_offset)
    return _batched(experts, phase, np.asarray(trace.seq_offsets[:-1], np.int64), trace.pad_id, key_offset)


def _batched(experts, phase, seq_starts, pad, key_offset) -> LookupStream:
    """General path: gather each prefill run's tokens per layer, drop pad ids."""
    N, L, K = experts.shape
    # Each token's group: itself when decoding; the first token of its prefill run otherwise.
    is_prefill = phase == PREFILL
    run_start = ~is_prefill | np.concatenate([[True], ~is_prefill[:-1]])
    run_start[seq_starts] = True  # a sequence starts a new run
    group = np.maximum.accumulate(np.where(run_start, np.arange(N), 0))  # [N]
    layer = np.broadcast_to(np.arange(L)[None, :, None], experts.shape)
    batch_key = group[:, None, None] * L + layer  # [N, L, K] increasing per batch
    flat_key = batch_key.reshape(-1)
    ids = experts.reshape(-1).astype(np.int64)
    if is_prefill.any():  # prefill batches gather a run's tokens per layer: reorder
        order = np.argsort(flat_key, kind="stable")
        flat_key, ids = flat_key[order], ids[order]
    valid = ids != pad
    flat_key, ids = flat_key[valid], ids[valid]
    layer_of = flat_key % L
    new_batch = np.concatenate([[True], flat_key[1:] != flat_key[:-1]])
    starts_at = np.flatnonzero(new_batch)
    batch_start = np.append(starts_at, len(ids)).astype(np.int64)
    batch_token = flat_key[starts_at] // L
    return LookupStream(
        keys=key_offset[layer_of] + ids,
        batch_start=batch_start,
        batch_layer=layer_of[starts_at],
        batch_phase=phase[batch_token].astype(np.uint8),
        batch_token=batch_token,
        key_offset=key_offset,
        num_tokens=N,
    )


def _decode_only(experts: np.ndarray, phase: np.ndarray, key_offset: np.ndarray) -> LookupStream:
    """Fast path: every (token, layer) is one full batch of k requests, already in order."""
    N, L, K = experts.shape
    keys = (experts.astype(np.int64) + key_offset[:-1][None, :, None]).reshape(-1)  # [R]
    batch_token = np.arange(N * L, dtype=np.int64) // L  # [B]
    return LookupStream(
        keys=keys,
        batch_start=np.arange(0, N * L * K + 1, K, dtype=np.int64),
        batch_layer=np.tile(np.arange(L, dtype=np.int64), N),
        batch_phase=phase.astype(np.uint8)[batch_token],
        batch_token=batch_token,
        key_offset=key_offset,
        num_tokens=N,
    )
