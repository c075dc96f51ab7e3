"""`expertcache report` from a user's seat: the files, the embedded figures, and figures that
show the same numbers `sweep` and `analyze` print for the same trace."""

import base64
import csv
import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from expertcache import ExpertcacheError, Trace
from expertcache.trace import ModelInfo
from expertcache.cache import budget_ladder, sweep
from expertcache.report.build import write_report

from .helpers import E, K, L, local_routing

PNG = b"\x89PNG\r\n\x1a\n"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "expertcache", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A saved trace with everything a figure can use: weights, token ids, two domains."""
    rng = np.random.default_rng(1)
    experts = local_routing(rng)  # [4, 240, 2, 2]
    weights = np.sort(rng.random(experts.shape), axis=-1)[..., ::-1]
    tokens = rng.integers(0, 8, experts.shape[:2])  # 8 token ids: each occurs ~120 times
    path = tmp_path_factory.mktemp("report") / "t"
    Trace.from_arrays(experts, E, weights=weights, tokens=tokens, domains=["prose", "code", "prose", "code"]).save(path)
    return path


@pytest.fixture(scope="module")
def report(traced):
    out = traced.parent / "out"
    result = cli("report", traced, "example:gpt-oss-120b", "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_report_writes_html_markdown_json_and_one_png_per_figure(report):
    out, result = report
    assert {p.name for p in out.iterdir()} == {"report.html", "report.md", "report.json", "figures"}
    data = json.loads((out / "report.json").read_text())
    labels = [t["label"] for t in data["traces"]]
    assert labels == ["synthetic", "gpt-oss-120b"]
    for t in data["traces"]:
        assert f"{t['label']}: {t['verdict']['kind']}" in result.stdout
    pngs = sorted(p.name for p in (out / "figures").iterdir())
    # the full trace has every figure; the example has no token ids or domains (no specialization)
    assert pngs == sorted(["comparison.png"] + [f"synthetic-{n}.png" for n in (
        "locality", "hit-rates", "layers", "routing", "balance", "specialization", "gating")] + [
        f"gpt-oss-120b-{n}.png" for n in ("locality", "hit-rates", "layers", "routing", "balance", "gating")])
    markdown = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(f"figures/{p}" for p in pngs)
    assert "No vocabulary specialization figure: the trace records no token ids" in markdown
    assert "No domain specialization figure: the trace holds one domain" in markdown


def test_every_figure_of_the_html_is_an_embedded_png_and_nothing_is_fetched(report):
    out, _ = report
    html = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(list((out / "figures").iterdir()))
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:8] == PNG
    assert not re.search(r'(src|href)="(?!data:)', html)  # no external image, script, style or link
    assert html.count("<figcaption>") == len(sources)


def test_engine_figure_shows_what_sweep_prints(report, traced, tmp_path):
    out, _ = report
    ours = json.loads((out / "report.json").read_text())["traces"][0]
    decode = Trace.load(traced).as_decode()
    rows = sweep(decode, ["lru", "lfu", "belady"], budget_ladder(decode), unit="x", workers=1)
    assert [(r["policy"], r["budget"], r["hit_rate"]) for r in ours["engine"]] == [
        (r["policy"], r["budget"], r["hit_rate"]) for r in rows]
    result = cli("sweep", traced, "--policies", "lru", "--budgets", "2", "--unit", "x", "--as-decode", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "sweep.csv") as f:
        printed = float(next(csv.DictReader(f))["hit_rate"])
    assert ours["outlook"]["lru_engine"] == pytest.approx(printed, abs=1e-12)


def test_locality_figure_shows_what_analyze_writes(report, traced, tmp_path):
    out, _ = report
    ours = json.loads((out / "report.json").read_text())["traces"][0]
    result = cli("analyze", traced, "--out", tmp_path / "a", "--m", "16")
    assert result.returncode == 0, result.stderr
    curves = pq.read_table(tmp_path / "a" / "curves.parquet").to_pylist()
    at_2x = [r for r in curves if r["policy"] == "fsf" and r["scope"] == "layer" and r["cache_size"] == 2 * 2]
    assert ours["outlook"]["sch"] == pytest.approx(np.mean([r["observed"] for r in at_2x]), abs=1e-12)
    assert ours["outlook"]["sch_chance"] == pytest.approx(np.mean([r["chance"] for r in at_2x]), abs=1e-12)
    srp = [r for r in pq.read_table(tmp_path / "a" / "srp.parquet").to_pylist() if r["breakdown"] == "model"]
    assert ours["srp"]["16"]["measured"] == pytest.approx(srp[0]["observed"], abs=1e-12)


def test_an_existing_report_is_kept_without_overwrite(report, traced):
    out, _ = report
    before = (out / "report.html").read_bytes()
    result = cli("report", "example:olmoe-1b-7b", "--out", out)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {out} already exists; choose another --out or pass --overwrite"]
    assert (out / "report.html").read_bytes() == before


def test_overwrite_replaces_a_report_folder_and_nothing_else(tmp_path):
    out = tmp_path / "r"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "stale.png").write_text("old")  # a figure an earlier report had
    (out / "report.md").write_text("![old](figures/stale.png)")
    write_report(["example:olmoe-1b-7b"], out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "report.json", "report.md"]
    assert not (out / "figures" / "stale.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no temporary folder left behind
    for mine in (out / "notes.txt", out / "figures" / "my-annotated.png"):  # the second was deleted before
        mine.write_text("mine")
        with pytest.raises(ExpertcacheError, match="not a report's"):
            write_report(["example:olmoe-1b-7b"], out, overwrite=True)
        assert mine.read_text() == "mine"
        mine.unlink()


@pytest.mark.parametrize("args, message", [
    (("missing", "--out", "o"), "error: missing: no such trace"),
    (("example:nope", "--out", "o"), "error: no example trace 'nope'"),
    (("example:olmoe-1b-7b", "--out", "o", "--profile", "hw.json"), "error: hw.json: no such hardware profile"),
    (("example:olmoe-1b-7b", "--out", "o", "--budget-mib", "-1"), "error: budget must be positive and finite"),
    (("example:kimi-linear-48b", "--out", "o", "--budget-mib", "nan"), "error: budget must be positive and finite"),
])
def test_user_mistakes_give_one_line(tmp_path, args, message):
    result = cli("report", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1  # no blank line before it
    assert not (tmp_path / "o").exists()


def test_profile_and_budget_add_speed_and_the_users_budget(tmp_path):
    from expertcache import open_trace
    from expertcache.cache import HardwareProfile, predict_throughput, simulate

    profile = HardwareProfile(link_bandwidth=2e9, expert_time=2e-4, dense_time=1e-3)
    findings = write_report(["example:olmoe-1b-7b"], tmp_path / "r", profile=profile, budget_mib=4000)
    ev, verdict = findings[0].evidence, findings[0].verdict
    c = ev.recommended
    assert all(x.tokens_per_s is not None for x in ev.choices)
    assert c.tokens_per_s >= 0.99 * max(x.tokens_per_s for x in ev.choices)  # the simplest within 1 % of the best
    decode = open_trace("example:olmoe-1b-7b").as_decode()
    again = simulate(decode, c.policy, budget_x=c.budget_x, prefetch=c.prefetch)
    assert c.tokens_per_s == pytest.approx(predict_throughput(again, profile).decode_tokens_per_s)
    assert f"at most {c.tokens_per_s:.2f} tokens/s on the hardware profile" in verdict.advice[3]
    b = ev.at_budget
    assert b.budget_bytes == 4000 * 2**20
    assert b.hit_rate == pytest.approx(simulate(decode, c.policy, budget_mib=4000, prefetch=c.prefetch).hit_rate)
    assert verdict.advice[4].startswith(f"at your budget (4000 MiB = {b.budget_x:.1f}x the active experts)")


def test_a_budget_below_one_expert_is_said_to_hold_none(tmp_path):
    # OLMoE's experts are about 24 MiB: 1 MiB holds none, though published accounting counts hits.
    findings = write_report(["example:olmoe-1b-7b"], tmp_path / "r", budget_mib=1)
    ev, verdict = findings[0].evidence, findings[0].verdict
    largest = max(ev.model.expert_bytes) / 2**20
    assert ev.at_budget is None and largest > 1
    assert f"your budget: 1 MiB holds no expert (the largest is {largest:.1f} MiB)" in verdict.advice


def test_experts_under_a_mebibyte_are_sized_in_kibibytes(tmp_path, rng):
    # 10 KiB experts and a budget of 1 KiB: "0.0 MiB" would say nothing.
    model = ModelInfo(name="small", architecture="synthetic", num_layers=L, moe_layers=tuple(range(L)),
                      num_experts=(E,) * L, top_k=K, expert_bytes=(10 * 1024,) * L)
    trace = tmp_path / "t"
    Trace.from_arrays(local_routing(rng), model=model).save(trace)
    verdict = write_report([trace], tmp_path / "r", budget_mib=1 / 1024)[0].verdict
    assert "your budget: 0.000976562 MiB holds no expert (the largest is 10.0 KiB)" in verdict.advice


def test_a_layer_axis_is_ticked_at_whole_layers_even_for_one_layer():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from expertcache.report.plots import _layer_axis

    fig, ax = plt.subplots()
    ax.imshow(np.zeros((3, 1)), aspect="auto")  # one MoE layer: x runs from -0.5 to 0.5
    _layer_axis(ax)
    assert [t for t in ax.get_xticks() if -0.5 <= t <= 0.5] == [0]  # was -0.4, -0.2, 0.0, 0.2, 0.4
    plt.close(fig)


def test_traces_of_one_model_are_told_apart_by_their_folders():
    # two corpora of one model read "synthetic" and "synthetic (2)": which was which?
    from expertcache.report.build import _labels

    same_model = Trace.from_arrays(np.zeros((1, 3, 1, 1), int), 4)  # model "synthetic"
    sources = ["runs/prose", "runs/code", "runs/prose", "example:olmoe-1b-7b", same_model]
    assert _labels(sources, [same_model] * 5) == ["synthetic (prose) (1)", "synthetic (code)", "synthetic (prose) (2)",
                                                  "olmoe-1b-7b", "synthetic"]
