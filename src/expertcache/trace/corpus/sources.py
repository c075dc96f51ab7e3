"""Source specs -> domains: text files, folders, JSONL, Hugging Face datasets, the demo.

Spec syntax (an optional ``NAME=`` prefix names the domain)::

    path/to/file.txt            one text file
    path/to/folder              every text file below it (TEXT_SUFFIXES), sorted by path
    path/to/data.jsonl:FIELD    one document per line, the text in FIELD (.jsonl.gz too)
    hf:DATASET[:CONFIG]:SPLIT:FIELD   a Hugging Face dataset available offline
    demo | demo:NAME            the built-in demo domains (see demo.py)

Every source is checked when opened (exists, not empty, first JSONL record has FIELD) so a
bad spec fails before any model is loaded.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

from ...errors import ExpertcacheError
from .demo import DEMO_DOMAINS, demo_domain
from .domain import Domain, chunk_by_chars

__all__ = ["TEXT_SUFFIXES", "open_sources"]

TEXT_SUFFIXES = frozenset(
    ".txt .text .md .markdown .rst .tex .bib .org .html .xml .csv "
    ".py .pyi .c .h .cc .cpp .hpp .cu .rs .go .java .js .ts .sh .toml .yaml .yml".split()
)
# Files larger than this are read as consecutive parts of about this size, cut at line ends,
# each part one document, so a multi-gigabyte file is never held in memory at once.
PART_CHARS = 1 << 20

_NAMED = re.compile(r"^([A-Za-z0-9_.+-]+)=(.+)$")
_JSONL = re.compile(r"^(.+\.jsonl(?:\.gz)?)(?::([^:/\\]+))?$")


def open_sources(specs: list[str]) -> list[Domain]:
    """Open every spec as a domain (in order), checking each one can be read and is not empty."""
    if not specs:
        raise ExpertcacheError("no corpus source given")
    domains: list[Domain] = []
    for spec in specs:
        domains.extend(_open_spec(spec))
    seen: set[str] = set()
    for domain in domains:
        if domain.name in seen:
            raise ExpertcacheError(
                f"two corpus sources are named {domain.name!r}; name them with NAME=SOURCE"
            )
        seen.add(domain.name)
    return domains


def _open_spec(spec: str) -> list[Domain]:
    name, body = None, spec
    named = _NAMED.match(spec)
    if named and not Path(spec).exists():
        name, body = named.groups()
    if body == "demo" or body.startswith("demo:"):
        domains = _open_demo(body, name)
    elif body.startswith("hf:"):
        domains = [_open_hf(body, name)]
    elif match := _JSONL.match(body):
        path, field = match.groups()
        domains = [_open_jsonl(Path(path).expanduser(), field or "text", name, spec)]
    else:
        domains = [_open_path(Path(body).expanduser(), name, spec)]
    for domain in domains:
        if next(domain.texts(), None) is None:
            raise ExpertcacheError(f"corpus source {spec!r} has no text")
    return domains


def _open_demo(body: str, name: str | None) -> list[Domain]:
    if body == "demo":
        if name is not None:
            raise ExpertcacheError("'demo' opens several domains; name one with NAME=demo:DOMAIN")
        return [demo_domain(n) for n in DEMO_DOMAINS]
    which = body.split(":", 1)[1]
    if which not in DEMO_DOMAINS:
        raise ExpertcacheError(
            f"unknown demo domain {which!r}; choose from: {', '.join(DEMO_DOMAINS)}"
        )
    domain = demo_domain(which)
    if name is not None:
        domain = Domain(name, domain.description, domain.reader)
    return [domain]


# --- files and folders ---------------------------------------------------------------------


def _open_path(path: Path, name: str | None, spec: str) -> Domain:
    if not path.exists():
        raise ExpertcacheError(f"corpus source not found: {path}")
    if path.is_file():
        description = {"kind": "file", "spec": spec, "path": str(path.resolve())}
        return Domain(name or path.stem, description, lambda: _read_text_file(path))
    files = _text_files(path)
    if not files:
        raise ExpertcacheError(
            f"folder {path} has no text files ({' '.join(sorted(TEXT_SUFFIXES))})"
        )
    description = {
        "kind": "folder", "spec": spec, "path": str(path.resolve()), "files": len(files),
    }
    return Domain(name or path.resolve().name, description, lambda: _read_files(files))


def _text_files(folder: Path) -> list[Path]:
    """Text files below ``folder`` in sorted relative-path order, skipping hidden entries."""
    found = []
    for file in folder.rglob("*"):
        relative = file.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        if file.suffix.lower() in TEXT_SUFFIXES and file.is_file():
            found.append(relative.as_posix())
    return [folder / relative for relative in sorted(found)]


def _read_files(files: list[Path]) -> Iterator[str]:
    for file in files:
        yield from _read_text_file(file)


def _read_text_file(path: Path) -> Iterator[str]:
    """The file as one document, or as ~PART_CHARS parts cut at line ends if it is larger."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lines in chunk_by_chars(handle, PART_CHARS):
            yield "".join(lines)


# --- JSONL ---------------------------------------------------------------------------------


def _open_jsonl(path: Path, field: str, name: str | None, spec: str) -> Domain:
    if not path.is_file():
        raise ExpertcacheError(f"corpus source not found: {path}")
    stem = path.name.split(".")[0]
    description = {"kind": "jsonl", "spec": spec, "path": str(path.resolve()), "field": field}
    return Domain(name or stem, description, lambda: _read_jsonl(path, field))


def _read_jsonl(path: Path, field: str) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ExpertcacheError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or field not in record:
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else "not an object"
                raise ExpertcacheError(f"{path}:{number}: no field {field!r} (has: {keys})")
            text = record[field]
            if not isinstance(text, str):
                raise ExpertcacheError(
                    f"{path}:{number}: field {field!r} is {type(text).__name__}, not text"
                )
            yield text


# --- Hugging Face datasets -----------------------------------------------------------------


def _open_hf(body: str, name: str | None) -> Domain:
    parts = body.split(":")[1:]
    if len(parts) not in (3, 4) or not all(parts):
        raise ExpertcacheError(f"expected hf:DATASET[:CONFIG]:SPLIT:FIELD, got {body!r}")
    dataset_id, config, split, field = parts if len(parts) == 4 else (parts[0], None, *parts[1:])
    dataset = _load_hf_split(dataset_id, config, split)
    columns = list(getattr(dataset, "column_names", None) or [])
    if columns and field not in columns:
        raise ExpertcacheError(
            f"dataset {dataset_id!r} split {split!r} has no field {field!r} "
            f"(has: {', '.join(columns)})"
        )
    description = {
        "kind": "hf", "spec": body, "dataset": dataset_id, "config": config,
        "split": split, "field": field,
    }

    def read() -> Iterator[str]:
        for row in dataset:
            text = row[field]
            if not isinstance(text, str):
                raise ExpertcacheError(
                    f"dataset {dataset_id!r}: field {field!r} is {type(text).__name__}, not text"
                )
            yield text

    return Domain(name or dataset_id.rstrip("/").split("/")[-1], description, read)


def _load_hf_split(dataset_id: str, config: str | None, split: str):
    try:
        import datasets
    except ImportError:
        raise ExpertcacheError(
            "hf: corpus sources need the `datasets` package (pip install datasets)"
        ) from None
    folder = Path(dataset_id)
    try:
        if (folder / "dataset_dict.json").is_file():  # a DatasetDict.save_to_disk folder
            return datasets.load_from_disk(dataset_id)[split]
        if (folder / "state.json").is_file():  # a Dataset.save_to_disk folder: one split
            return datasets.load_from_disk(dataset_id)
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as error:  # datasets raises many types; all mean "not usable here"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExpertcacheError(
            f"cannot load Hugging Face dataset {dataset_id!r} split {split!r} offline: {reason}"
        ) from None
