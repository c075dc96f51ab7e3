"""The atomic-write helpers behind every file and folder expertcache writes."""

import json

import pytest

from expertcache.atomic import atomic_folder, atomic_path, staged_files, write_json_atomic
from expertcache.errors import ExpertcacheError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_the_temporary_keeps_the_suffix_and_replaces_the_target(tmp_path):
    target = tmp_path / "sub" / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_an_os_error_names_the_target_not_the_temporary(tmp_path):
    (tmp_path / "dir.json").mkdir()  # a directory where the file should go: the rename fails
    with pytest.raises(ExpertcacheError, match=r"cannot write .*dir\.json: ") as e:
        write_json_atomic(tmp_path / "dir.json", {})
    assert ".tmp-" not in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["dir.json"]


DEAD = 2**22 + 12345  # above Linux's largest process id: never a running writer


def test_an_interrupted_folder_keeps_the_earlier_one_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as stage:
        (stage / "a").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "a").read_text() == "old"
    with atomic_folder(out) as stage:
        (stage / "b").write_text("new")
    assert [p.name for p in out.iterdir()] == ["b"]  # replaced whole
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_what_a_killed_writer_left_is_cleared_and_a_half_swap_undone(tmp_path):
    out = tmp_path / "out"
    (tmp_path / f".out.old-{DEAD}").mkdir()  # killed between moving the old folder aside and the swap
    (tmp_path / f".out.old-{DEAD}" / "a").write_text("old")
    (tmp_path / f".out.tmp-{DEAD}").mkdir()
    with pytest.raises(KeyboardInterrupt), atomic_folder(out):
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "a").read_text() == "old"


def test_an_interruption_between_the_renames_puts_the_earlier_folder_back(tmp_path, monkeypatch):
    # Both folders used to be removed: a Ctrl-C there lost every toy checkpoint.
    from pathlib import Path

    out = tmp_path / "out"
    with atomic_folder(out) as stage:
        (stage / "a").write_text("old")
    rename = Path.rename

    def interrupted(self, target):
        if ".tmp-" in self.name:  # the new folder's rename, after the old one moved aside
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as stage:
        (stage / "b").write_text("new")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "a").read_text() == "old"


def test_staged_files_arrive_together_and_replace_the_named_ones(tmp_path):
    (tmp_path / "summary.json").write_text("old")
    (tmp_path / "table.csv").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / f".staged-{DEAD}").mkdir()
    with pytest.raises(KeyboardInterrupt), staged_files(tmp_path, replaces=["summary.json"]) as stage:
        (stage / "table.csv").write_text("new")
        raise KeyboardInterrupt
    assert (tmp_path / "table.csv").read_text() == "old" and (tmp_path / "summary.json").is_file()
    with staged_files(tmp_path, replaces=["summary.json"]) as stage:
        (stage / "table.csv").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "table.csv"]
    assert (tmp_path / "table.csv").read_text() == "new"
