"""The study end to end on the smallest grid (untrained and trained base, seconds of training):
it writes the report with its figures, and a rerun skips the finished variants.
benchmarks/bench_toy_study.py runs the full grid."""

import json

from expertcache.toy.study import run_study


def test_tiny_study_writes_its_report_and_resumes(tmp_path):
    lines = []
    report = run_study(tmp_path, minutes_per_model=0.01, variants=["base"], samples=2, length=32, resamples=50,
                       suitability=False, progress=lines.append)
    text = report.read_text()
    for figure in ("locality", "training", "balance", "specialization"):
        assert (tmp_path / "figures" / f"{figure}.png").stat().st_size > 1000
        assert f"(figures/{figure}.png)" in text
    assert "| untrained |" in text and "| base |" in text
    assert "nan" not in text  # an undefined measure is a dash, explained under the table
    assert "-0.000" not in text and "held-out loss (nats/token)" in text
    assert "minutes per model 0.01, device cpu, samples 2, length 32" in text  # was a Python dict
    steps = json.loads((tmp_path / "results" / "base.json").read_text())["training"]["steps"]
    assert steps < 50 and f"**Stopped inside the learning-rate warmup:** base ({steps} of 50) steps." in text
    assert "Shared experts increase locality.** Not tested in this run" in text
    assert (tmp_path / "analysis" / "base" / "summary.json").is_file()

    lines.clear()
    run_study(tmp_path, minutes_per_model=0.01, variants=["base"], samples=2, length=32, resamples=50,
              suitability=False, progress=lines.append)
    assert lines == ["untrained: done before, skipped", "base: done before, skipped"]
