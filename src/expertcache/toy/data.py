"""Training text from the built-in demo corpus, with each domain's tail held out.

Each domain's documents are joined (blank line between) up to `corpus_chars` characters; the
last `heldout_fraction` of that text, cut at a line end, is held out: it is written to
DIR/heldout/DOMAIN.txt for probes and for tracing (`expertcache trace --corpus prose=DIR/heldout/prose.txt`)
and never trained on. Training sequences are windows of one domain each (context matters:
code stays code), drawn by a generator seeded with (seed, step): batch i is a function of
the step alone, so the data position of a checkpoint is its step.

Shape key: B sequences, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import ExpertcacheError
from ..trace.corpus import DEMO_DOMAINS
from ..trace.corpus.demo import demo_domain

__all__ = ["ToyCorpus", "load_corpus"]


@dataclass(frozen=True)
class ToyCorpus:
    domains: tuple[str, ...]
    train: tuple[np.ndarray, ...]  # per domain: token ids [n_d]
    heldout: tuple[np.ndarray, ...]  # per domain: token ids [h_d]

    def batch(self, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        """[B, T] training windows of step `step`: domain uniform, start uniform within it."""
        rng = np.random.default_rng([seed, step])
        domains = rng.integers(0, len(self.domains), size=batch_size)
        rows = []
        for d in domains:
            tokens = self.train[d]
            start = int(rng.integers(0, len(tokens) - seq_len + 1))
            rows.append(tokens[start:start + seq_len])
        return np.stack(rows)

    def probe_batch(self, per_domain: int, seq_len: int) -> tuple[np.ndarray, list[str]]:
        """[B, T] fixed held-out windows (evenly spaced, `per_domain` per domain) and their domains."""
        rows, names = [], []
        for name, tokens in zip(self.domains, self.heldout):
            count = min(per_domain, len(tokens) // seq_len)
            for start in np.linspace(0, len(tokens) - seq_len, count).astype(int):
                rows.append(tokens[start:start + seq_len])
                names.append(name)
        return np.stack(rows), names


def load_corpus(tokenizer, corpus_chars: int, heldout_fraction: float, seq_len: int,
                heldout_dir: Path | None = None) -> ToyCorpus:
    """Split and tokenize every demo domain; write the held-out texts to `heldout_dir` if given."""
    train, heldout = [], []
    for name in DEMO_DOMAINS:
        text = _domain_text(name, corpus_chars)
        cut = text.rfind("\n", 0, int(len(text) * (1 - heldout_fraction))) + 1 or int(len(text) * (1 - heldout_fraction))
        held = text[cut:]
        if heldout_dir is not None:
            with atomic_path(heldout_dir / f"{name}.txt") as tmp:
                tmp.write_text(held, encoding="utf-8")
        ids = tokenizer([text[:cut], held], add_special_tokens=False)["input_ids"]
        train.append(np.asarray(ids[0], np.int64))
        heldout.append(np.asarray(ids[1], np.int64))
        if min(len(train[-1]), len(heldout[-1])) < seq_len:
            raise ExpertcacheError(f"corpus domain {name!r} leaves fewer than seq_len={seq_len} tokens for training or "
                                   f"held-out text at corpus_chars={corpus_chars}; raise corpus_chars")
    return ToyCorpus(tuple(DEMO_DOMAINS), tuple(train), tuple(heldout))


def _domain_text(name: str, limit: int) -> str:
    parts, size = [], 0
    for doc in demo_domain(name).texts():
        parts.append(doc)
        size += len(doc) + 2
        if size >= limit:
            break
    return "\n\n".join(parts)[:limit]
