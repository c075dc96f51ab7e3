"""Corpora for capture: sources become domains, domains become fixed-length token windows.

A *source* is a spec string (a file, a folder, ``file.jsonl:FIELD``, ``hf:...`` or ``demo``);
each one opens as a :class:`Domain`, which yields documents. :func:`sample_windows` tokenizes a
domain's documents and cuts seeded, non-overlapping windows of exactly ``length`` tokens.
The syntax, the sampling rule and the demo domains are documented in ``docs/corpus.md``.
"""

from .demo import DEMO_DOMAINS, demo_tokenizer
from .sampling import Sample, sample_windows
from .domain import Domain, corpus_description
from .sources import open_sources

__all__ = [
    "DEMO_DOMAINS",
    "Domain",
    "Sample",
    "corpus_description",
    "demo_tokenizer",
    "open_sources",
    "sample_windows",
]
