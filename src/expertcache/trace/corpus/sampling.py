"""Domains -> seeded windows of exactly ``length`` tokens.

The rule (documented in docs/corpus.md):
1. A domain's documents are tokenized in order and concatenated, with the tokenizer's EOS
   (else SEP, else the tokens of a blank line) between consecutive documents.
2. Reading stops once READ_FACTOR * samples * length tokens are in hand (or the domain ends),
   so a huge source costs only what the windows need, with room to place them at random.
3. With T tokens and n windows of length L: if T >= n * L the windows do not overlap; their
   starts are ``sort(g.integers(0, T - n*L + 1, n)) + arange(n) * L`` (the free tokens are
   spread at random between and around the windows). Otherwise starts are distinct random
   positions (overlapping), repeated only if there are fewer than n positions at all.
4. ``g`` is ``numpy.random.default_rng([seed, crc32(domain name)])``: a domain's windows do not
   depend on which other domains are sampled with it. Sample keys are ``"NAME/i"`` in start order.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ...errors import ExpertcacheError
from .domain import Domain, chunk_by_chars

__all__ = ["READ_FACTOR", "Sample", "sample_windows"]

READ_FACTOR = 4
# Documents are tokenized in batches of about this many characters (fast tokenizers batch well).
_BATCH_CHARS = 1 << 16


@dataclass(frozen=True)
class Sample:
    """One window of a domain's token stream; ``key`` is stable, so a capture can resume by it."""

    domain: str
    key: str
    token_ids: np.ndarray  # [length] int64


def sample_windows(
    domains: list[Domain], tokenizer, samples: int, length: int, seed: int = 0
) -> Iterator[Sample]:
    """``samples`` windows of exactly ``length`` tokens per domain, domain after domain.

    Every domain is tokenized and checked before the first sample is yielded, so a domain too
    short for one window fails at once rather than after the others were captured.
    """
    if samples < 1 or length < 1:
        raise ExpertcacheError(f"samples and length must be positive (got {samples}, {length})")
    if seed < 0:
        raise ExpertcacheError(f"the seed must be a non-negative integer (got {seed})")
    separator = _separator_ids(tokenizer)
    windows = []
    for domain in domains:
        tokens = _read_tokens(domain, tokenizer, separator, READ_FACTOR * samples * length)
        if tokens.size < length:
            raise ExpertcacheError(
                f"corpus domain {domain.name!r} has only {tokens.size} tokens, "
                f"fewer than one window of {length}"
            )
        rng = np.random.default_rng([seed, zlib.crc32(domain.name.encode())])
        starts = _window_starts(tokens.size, samples, length, rng)  # [n]
        windows.append(tokens[starts[:, None] + np.arange(length)])  # [n, length]
    for domain, block in zip(domains, windows):
        for i, token_ids in enumerate(block):
            yield Sample(domain.name, f"{domain.name}/{i}", token_ids)


def _separator_ids(tokenizer) -> list[int]:
    for special in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if special is not None:
            return [int(special)]
    return list(tokenizer(["\n\n"], add_special_tokens=False)["input_ids"][0])


def _read_tokens(domain: Domain, tokenizer, separator: list[int], budget: int) -> np.ndarray:
    """The domain's token stream, stopping at the first document boundary past ``budget``."""
    pieces: list[list[int]] = []
    count = 0
    for batch in chunk_by_chars(domain.texts(), _BATCH_CHARS):
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            if pieces:
                pieces.append(separator)
                count += len(separator)
            pieces.append(ids)
            count += len(ids)
            if count >= budget:
                return _concatenate(pieces)
    return _concatenate(pieces)


def _concatenate(pieces: list[list[int]]) -> np.ndarray:
    if not pieces:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])


def _window_starts(total: int, samples: int, length: int, rng: np.random.Generator) -> np.ndarray:
    slack = total - samples * length
    if slack >= 0:
        gaps = np.sort(rng.integers(0, slack + 1, size=samples))
        return gaps + np.arange(samples) * length
    positions = total - length + 1
    if positions >= samples:
        return np.sort(rng.choice(positions, size=samples, replace=False))
    return np.sort(rng.integers(0, positions, size=samples))
