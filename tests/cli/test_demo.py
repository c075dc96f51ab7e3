"""`expertcache demo` as a newcomer sees it: real models first, then the tiny model said plainly
to be random. One bundled example and a few tokens keep it fast; the full demo is .ci/run's."""

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
