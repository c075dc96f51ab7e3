"""The one atomic-write helper behind every file expertcache writes."""

import json

import pytest

from expertcache.atomic import atomic_path, write_json_atomic
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
