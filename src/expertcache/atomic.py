"""Writing outputs safely: every file expertcache writes appears whole or not at all.

A writer fills a temporary file beside the target, which is flushed to disk and renamed onto
the target only when the writer finished: a kill, a full disk or an exception at any moment
leaves the previous file (or none), never half of one, and no temporary file behind. Outputs of
several files are written the same way as a whole: a folder staged beside its target and
swapped in (`atomic_folder`), or files staged inside a folder and renamed in together
(`staged_files`). What a SIGKILL leaves (staging names carry the writer's process id) is
cleared, or an interrupted swap undone, by the next writer of the same target.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import ExpertcacheError

__all__ = ["atomic_folder", "atomic_path", "holds_working_directory", "output_folder", "recover_folder",
           "staged_files", "write_json_atomic"]


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
        _fsync(tmp)
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


@contextmanager
def atomic_folder(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield an empty folder beside `path` to fill; when the block ends without an error it takes
    `path`'s place (a folder there before is removed after the swap). An interruption leaves the
    earlier folder, or none, never part of the new one. `durable`: the new folder's files are on
    disk before the swap, and the swap before the return (a power loss keeps one whole folder)."""
    path = Path(path)
    stage, old = _staging(path, "tmp"), _staging(path, "old")
    swapped = False
    try:
        recover_folder(path)
        stage.mkdir(parents=True)
        yield stage
        if durable:
            for file in [*stage.rglob("*"), stage]:
                _fsync(file)
        if path.exists():
            path.rename(old)
        stage.rename(path)
        swapped = True
        if durable:
            _fsync(path.parent)
    except OSError as e:
        raise ExpertcacheError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if not swapped and old.exists() and not path.exists():  # interrupted between the renames
            with suppress(OSError):  # else the next writer puts it back
                old.rename(path)
        shutil.rmtree(stage, ignore_errors=True)
        if swapped:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_files(folder: str | os.PathLike, replaces: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty folder inside `folder` to write files into; when the block ends without an
    error, the files named `replaces` (an earlier run's, in that order) are removed from `folder`
    and the staged files renamed into it. The slow writing comes before anything is removed, so
    an interruption leaves the earlier files; only a kill during the renames leaves a mixture."""
    folder = Path(folder)
    stage = folder / f".staged-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".staged-*"):
            if not _alive(leftover.name.rpartition("-")[2]):
                shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        yield stage
        for name in replaces:
            (folder / name).unlink(missing_ok=True)
        for file in sorted(stage.iterdir()):
            os.replace(file, folder / file.name)
    except OSError as e:
        raise ExpertcacheError(f"cannot write into {folder}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _staging(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def recover_folder(path: str | os.PathLike) -> None:
    """Remove what killed writers of folder `path` left; put back a folder a kill caught mid-swap."""
    path = Path(path)
    for kind in ("old", "tmp"):
        for leftover in path.parent.glob(f".{path.name}.{kind}-*"):
            if _alive(leftover.name.rpartition("-")[2]):
                continue
            if kind == "old" and not path.exists():
                leftover.rename(path)
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file to disk (an error raises), or a folder where the file system allows it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some file systems refuse fsync on a directory
            raise
    finally:
        os.close(fd)


def _alive(pid: str) -> bool:
    """Whether `pid` names a running process other than this one (a writer still at work)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
