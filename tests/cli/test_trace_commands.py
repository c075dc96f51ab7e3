"""The trace commands from a user's seat: outputs, and one-line errors for mistakes."""

import json
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "expertcache", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def test_import_info_export(distinct_ids, tmp_path):
    ids = distinct_ids((2, 6, 3, 2), 8)
    np.save(tmp_path / "e.npy", ids)
    assert run("import", "arrays", "e.npy", "--num-experts", 8, "--out", "t", cwd=tmp_path).returncode == 0
    info = run("info", "t", "--json", cwd=tmp_path)
    summary = json.loads(info.stdout)
    assert (summary["sequences"], summary["tokens"], summary["experts"], summary["top_k"]) == (2, 12, 8, 2)
    top = summary["top_experts"][0]
    assert top["requests"] == np.bincount(ids[:, :, top["layer"]].ravel(), minlength=8).max()
    assert run("export", "arrays", "t", "--out", "back.npy", cwd=tmp_path).returncode == 0
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), ids)


@pytest.mark.parametrize(
    "args, message",
    [
        (("info", "missing"), "error: missing: no such trace"),
        (("import", "arrays", "missing.npy", "--num-experts", 4, "--out", "t"), "error: missing.npy: no such file"),
        (("import", "arrays", "e.npy", "--num-experts", 1, "--out", "t"), "error: top-k 2 is larger than the number of experts 1"),
        (("import", "bigmoe", "e.npy", "--out", "t"), "not a route_trace v1 file"),
    ],
)
def test_user_mistakes_give_one_line(tmp_path, args, message):
    np.save(tmp_path / "e.npy", np.zeros((1, 2, 1, 2), int))
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_default_segment_lengths_match_the_api():
    from expertcache.cli.locality_commands import DEFAULT_M as cli_default
    from expertcache.locality.srp import DEFAULT_M

    assert cli_default == ",".join(map(str, DEFAULT_M))


@pytest.mark.parametrize("args", [("bogus",), ("curves",), ("import", "arrays", "e.npy", "--out", "t")])
def test_usage_errors_are_not_tracebacks(tmp_path, args):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Usage:" in result.stderr
