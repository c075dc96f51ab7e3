"""A domain: one corpus source, read as a deterministic stream of documents."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

__all__ = ["Domain", "corpus_description"]


@dataclass(frozen=True)
class Domain:
    """One corpus source; every source is its own domain label in a trace.

    ``description`` is JSON-able (kind, path/field/dataset, license where known) and goes into
    the trace manifest. ``reader`` is called afresh by each :meth:`texts` so a domain can be
    read any number of times, always in the same order.
    """

    name: str
    description: dict
    reader: Callable[[], Iterable[str]] = field(repr=False, compare=False)

    def texts(self) -> Iterator[str]:
        """The domain's non-blank documents, in a deterministic order."""
        for text in self.reader():
            if text and not text.isspace():
                yield text


def corpus_description(domains: Iterable[Domain]) -> dict:
    """The corpus part of a trace manifest: each domain's name and description, in order."""
    return {"domains": [{"name": d.name, **d.description} for d in domains]}


def chunk_by_chars(texts: Iterable[str], limit: int) -> Iterator[list[str]]:
    """Consecutive groups of ``texts``, each closed as soon as it holds ``limit`` characters."""
    group: list[str] = []
    size = 0
    for text in texts:
        group.append(text)
        size += len(text)
        if size >= limit:
            yield group
            group, size = [], 0
    if group:
        yield group
