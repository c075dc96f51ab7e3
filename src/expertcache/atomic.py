"""Writing outputs safely: every file expertcache writes appears whole or not at all.

A writer fills a temporary file beside the target, which is flushed to disk and renamed onto
the target only when the writer finished: a kill, a full disk or an exception at any moment
leaves the previous file (or none), never half of one, and no temporary file behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import ExpertcacheError

__all__ = ["atomic_path", "holds_working_directory", "output_folder", "write_json_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s new content to (by any library, by name).

    The temporary name keeps the suffix, so writers that pick a format from it (matplotlib,
    pyarrow) still do. Errors name `path`, not the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise ExpertcacheError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def holds_working_directory(path: str | os.PathLike) -> bool:
    """Whether the working directory is `path` or lies inside it: a folder never to replace."""
    return Path.cwd().resolve().is_relative_to(Path(path).resolve())


def output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """A folder to write into, checked before any work: a file of that name is a one-line error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExpertcacheError(f"{path} is a file; {option} names a folder to write into")
    return path
