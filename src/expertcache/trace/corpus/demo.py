"""The built-in demo corpus (four domains that work offline) and the shipped demo tokenizer.

=======  =================================================  ==========================
domain   text                                               where it comes from
=======  =================================================  ==========================
prose    three Shakespeare plays (plain text)               shipped: data/demo/prose
code     CPython standard library sources                   the running Python
math     expository LaTeX mathematics                       shipped: data/demo/math
docs     Python language reference + builtin module docs    the running Python
=======  =================================================  ==========================

``code`` and ``docs`` are read at run time from the running interpreter, so they are identical
on machines with the same Python version. Licenses: data/demo/LICENSES.md and docs/corpus.md.
Retrain the tokenizer (only when the demo corpus changes) with
``python -m expertcache.trace.corpus.retrain_tokenizer``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from ...atomic import atomic_path
from .domain import Domain

__all__ = ["DEMO_DOMAINS", "demo_domain", "demo_tokenizer", "train_demo_tokenizer"]

EOS = "<|endoftext|>"
_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def _data(name: str):
    """An entry of the shipped demo data (``/`` joins work on every importlib.resources backend)."""
    return resources.files("expertcache") / "data" / "demo" / name


# --- code: the standard library ------------------------------------------------------------

# Tests, vendored or generated files, codec tables, and the parts Debian ships separately.
_CODE_SKIP_DIRS = frozenset(
    "test tests idle_test site-packages dist-packages __pycache__ lib-dynload pydoc_data "
    "encodings ensurepip tkinter idlelib turtledemo lib2to3 distutils".split()
)


def _stdlib_files() -> list[Path]:
    """Stdlib ``.py`` files ordered by a hash of their relative path: fixed, but well mixed,
    so the first few hundred kilobytes (all a small capture reads) span many packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _CODE_SKIP_DIRS and not d.startswith("config-")]
        for file in files:
            if file.endswith(".py") and not file.startswith("_sysconfigdata"):
                found.append((Path(folder) / file).relative_to(root).as_posix())
    found.sort(key=lambda relative: hashlib.sha256(relative.encode()).hexdigest())
    return [root / relative for relative in found]


def _read_code() -> Iterator[str]:
    for file in _stdlib_files():
        yield file.read_text(encoding="utf-8", errors="replace")


# --- prose and math: shipped text ----------------------------------------------------------


def _shipped(folder: str, suffix: str) -> Callable[[], Iterator[str]]:
    """A reader of the shipped documents data/demo/FOLDER/*SUFFIX, in name order."""

    def read() -> Iterator[str]:
        for entry in sorted(_data(folder).iterdir(), key=lambda e: e.name):
            if entry.name.endswith(suffix):
                yield entry.read_text(encoding="utf-8")

    return read


# --- docs: the language reference and builtin modules' documentation -----------------------


def _read_docs() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it; the module docs below remain
        topics = {}
    for key in sorted(topics):
        yield topics[key]
    for module_name in sorted(sys.builtin_module_names):
        yield _module_reference(importlib.import_module(module_name))


def _module_reference(module) -> str:
    """A plain-text reference page for a module built into the interpreter (no source file,
    so none of it overlaps the code domain)."""
    lines = [module.__name__, "=" * len(module.__name__), ""]
    if inspect.getdoc(module):
        lines += [inspect.getdoc(module), ""]
    for name, member in sorted(vars(module).items()):
        if name.startswith("_") or not (callable(member) or inspect.isclass(member)):
            continue
        doc = inspect.getdoc(member)
        if doc:
            lines += [f"{module.__name__}.{name}", _indent(doc), ""]
        if inspect.isclass(member):
            for method_name, method in sorted(vars(member).items()):
                method_doc = None if method_name.startswith("_") else inspect.getdoc(method)
                if method_doc:
                    lines += [f"{module.__name__}.{name}.{method_name}", _indent(method_doc), ""]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line if line else line for line in text.splitlines())


# --- the registry --------------------------------------------------------------------------

DEMO_DOMAINS: dict[str, tuple[dict, Callable[[], Iterator[str]]]] = {
    "prose": (
        {"source": "three Shakespeare plays shipped as plain text (data/demo/prose)",
         "license": "public domain"},
        _shipped("prose", ".txt"),
    ),
    "code": (
        {"source": f"CPython {_PYTHON} standard library sources (read at run time)",
         "license": "PSF-2.0 (Python Software Foundation License)"},
        _read_code,
    ),
    "math": (
        {"source": "expository LaTeX mathematics written for expertcache (data/demo/math)",
         "license": "Apache-2.0, part of expertcache"},
        _shipped("math", ".tex"),
    ),
    "docs": (
        {"source": f"Python {_PYTHON} language reference (pydoc_data) and builtin module "
                   "docstrings (read at run time)",
         "license": "PSF-2.0 (Python documentation)"},
        _read_docs,
    ),
}


def demo_domain(name: str) -> Domain:
    description, reader = DEMO_DOMAINS[name]
    return Domain(name, {"kind": "demo", "spec": f"demo:{name}", **description}, reader)


# --- the tokenizer -------------------------------------------------------------------------


def demo_tokenizer():
    """The shipped byte-level BPE tokenizer (4096 ids, EOS ``<|endoftext|>``), loaded offline."""
    from transformers import PreTrainedTokenizerFast

    with resources.as_file(_data("tokenizer.json")) as file:
        return PreTrainedTokenizerFast(
            tokenizer_file=str(file), eos_token=EOS, bos_token=EOS, pad_token=EOS,
            unk_token=None, model_max_length=1 << 20,
        )


def train_demo_tokenizer(out: Path, vocab_size: int = 4096, chars_per_domain: int = 1 << 20):
    """Train the demo tokenizer on ``chars_per_domain`` characters of each domain (a small
    domain is repeated), so every domain weighs the same in the learned merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def corpus() -> Iterator[str]:
        for name in DEMO_DOMAINS:
            remaining = chars_per_domain
            while remaining > 0:
                for text in demo_domain(name).texts():
                    yield text[:remaining]
                    remaining -= len(text)
                    if remaining <= 0:
                        break

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    with atomic_path(out) as tmp:
        tokenizer.save(str(tmp), pretty=False)
