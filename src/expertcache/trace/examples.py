"""Real routing traces shipped with expertcache, opened as `example:NAME` wherever a trace goes.

They let anyone see real locality offline in the first minute, and let the tests check the
simulator against numbers published on these very traces. Each is a trace directory under
data/examples (third-party data under Apache-2.0: see the NOTICE there), rebuilt from the
original files by scripts/make_examples.py.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ExpertcacheError
from .format import MANIFEST
from .trace import Trace

__all__ = ["EXAMPLE_PREFIX", "describe_examples", "example_names", "open_example"]

EXAMPLE_PREFIX = "example:"
# plain files, not importlib.resources: traces are memory-mapped, which needs a real path
_ROOT = Path(__file__).resolve().parents[1] / "data" / "examples"


def example_names() -> list[str]:
    """Names of the bundled traces, sorted."""
    return sorted(p.name for p in _ROOT.iterdir() if (p / MANIFEST).is_file())


def open_example(name: str) -> Trace:
    """The bundled trace called `name` (memory-mapped, read-only)."""
    names = example_names()
    if name not in names:
        raise ExpertcacheError(f"no example trace {name!r}; the examples are {', '.join(names)}")
    return Trace.load(_ROOT / name)


def describe_examples() -> list[dict]:
    """One row per example: what `expertcache examples` lists."""
    rows = []
    for name in example_names():
        trace = open_example(name)
        provenance = trace.capture["provenance"]
        rows.append({"name": name, "model": trace.model.name, "experts": trace.num_experts, "k": trace.top_k,
                     "tokens": trace.num_tokens, "source": provenance["source"], "license": provenance["license"]})
    return rows
