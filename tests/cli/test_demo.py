"""`expertcache demo` as a newcomer sees it: real models first, then the tiny model said plainly
to be random. One bundled example and a few tokens keep it fast; the full demo is .ci/run's."""

import subprocess
import sys

from typer.testing import CliRunner

import expertcache.trace.examples as examples
from expertcache.cli import _register_all, app


def test_demo_leads_with_real_models_and_says_the_tiny_model_is_random(tmp_path, monkeypatch):
    monkeypatch.setattr(examples, "example_names", lambda: ["gpt-oss-120b"])
    _register_all()
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--samples", "1", "--length", "32"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    real, tiny = out.index("1. Real models"), out.index("2. The pipeline on a tiny model")
    assert real < out.index("gpt-oss-120b") < tiny
    assert "suits offloading" in out[real:tiny] and "excess = SCH - chance" in out[real:tiny]
    assert (tmp_path / "report" / "report.html").is_file() and str(tmp_path / "report" / "report.html") in out
    assert "random weights" in out[tiny:] and "not real locality" in out[tiny:]
    assert "verdict by the same rule as for the real models: does not suit offloading" in out
    assert "the same as the plain model's" in out and "MISMATCH" not in out


def test_demo_checks_its_arguments_before_writing_anything(tmp_path):
    (tmp_path / "afile").write_text("mine")
    cases = [(["--out", str(tmp_path / "afile")], "afile is a file; --out names a folder to write into"),  # leaked a temp path
             (["--out", str(tmp_path / "d"), "--samples", "0"], "samples (windows per demo domain) must be at least 1"),
             (["--out", str(tmp_path / "d"), "--length", "1"], "length (tokens per window) must be in 2..4096"),
             # was refused only after part 1 and the model were written
             (["--out", str(tmp_path / "d"), "--length", "99999999999999999999"], "must be in 2..4096")]
    for args, message in cases:
        result = subprocess.run([sys.executable, "-m", "expertcache", "demo", *args], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.startswith("error: ")
        assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # part 1's report was written before the check
