"""The locality commands from a user's seat, `analyze`'s tables, and a real recorded trace."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from expertcache import ExpertcacheError, Trace, open_trace
from expertcache.locality import analyze, curves, srp

from . import reference
from .helpers import assert_curves_match_reference, random_trace


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "expertcache", *map(str, args)], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace")
    trace = random_trace(np.random.default_rng(3), sequences=(3, 3), tokens=(10, 20), layers=(2, 2), experts=(6, 6),
                         k=2, domains=("a", "b"))
    trace.save(path / "t")
    return path, trace


def test_curves_and_srp_json(saved):
    path, trace = saved
    result = run("curves", "t", "--policy", "fsf", "--m", 3, "--json", cwd=path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == json.loads(json.dumps(curves(trace, "fsf", 3).to_json()))
    assert len(out["per_layer"]) == 2 and len(out["per_layer"][0]) == 6 and len(out["model_level"]) == 12
    result = run("curves", "t", "--policy", "lfu", "--max-multiple", 1.5, "--json", cwd=path)
    capped = json.loads(result.stdout)["model_level"]
    assert capped[:6] == curves(trace, "lfu").to_json()["model_level"][:6] and capped[6:] == [None] * 6
    result = run("srp", "t", "--m", "2,4", "--by", "expert", "--by", "domain,position", "--json", cwd=path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = srp(trace, (2, 4), ("expert", "domain", "position")).to_json()
    assert out == json.loads(json.dumps(expected))
    assert set(out["4"]) == {"model", "per_layer", "per_expert", "per_domain", "per_position"}
    assert run("srp", "t", "--json", cwd=path).returncode == 0
    once, twice = (run("srp", "t", "--m", "2", "--by", by, cwd=path).stdout for by in ("expert", "expert,expert"))
    assert twice == once  # printed the per-expert table twice


@pytest.mark.parametrize("args,message", [
    (("curves", "t", "--policy", "arc"), "error: unknown policy 'arc'"),
    (("curves", "t", "--policy", "fsf"), "error: policy fsf needs a segment length"),
    (("curves", "t", "--policy", "fsf", "--m", 0), "error: segment length m must be an integer >= 1"),
    (("curves", "t", "--policy", "lru", "--domain", "zz"), "error: no domain 'zz'"),
    (("curves", "t", "--policy", "lru", "--max-multiple", 0), "error: max_multiple must be a number > 0"),
    (("srp", "t", "--m", "4,x"), "error: --m takes integers"),
    (("srp", "t", "--by", "vocab"), "error: unknown SRP breakdown"),
    (("srp", "t", "--seed", "-1"), "error: seed must be an integer in 0..9223372036854775807"),
    (("analyze", "t", "--out", "o", "--m", "-1"), "error: segment length m must be an integer >= 1"),
    (("srp", "t", "--resamples", "99999999999999999999"), "error: resamples must be in 0..100,000"),  # a traceback
    (("analyze", "t", "--out", "o", "--permutations", "99999999999999999999"),  # ran on for ever
     "error: permutations must be an integer in 0..1000"),
    (("srp", "t", "--seed", "99999999999999999999"), "error: seed must be an integer in 0.."),
    (("curves", "missing", "--policy", "lru"), "error: missing: no such trace"),
    (("analyze", "missing", "--out", "o"), "error: missing: no such trace"),
])
def test_user_mistakes_give_one_line(saved, args, message):
    result = run(*args, cwd=saved[0])
    assert result.returncode == 2
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_analyze_writes_tidy_tables(saved, tmp_path):
    path, trace = saved
    result = run("analyze", "t", "--out", tmp_path / "out", "--m", "2,4", "--permutations", 2, "--resamples", 50, cwd=path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary)[0] == "locality_excess_over_chance"
    for name in ("curves", "srp", "overlap", "balance"):
        table = pq.read_table(tmp_path / "out" / f"{name}.parquet").to_pylist()
        assert (tmp_path / "out" / f"{name}.csv").read_text().count("\n") == len(table) + 1
    # no token ids and one domain (b): no tables of NaNs, and the user is told why
    assert not list((tmp_path / "out").glob("vocabulary.*")) and not list((tmp_path / "out").glob("domains.*"))
    assert summary["skipped"] == {"vocabulary": "the trace records no token ids (its recorder kept only the routing)",
                                  "domains": "the trace holds one domain (b), so there is nothing to compare"}
    assert "skipped vocabulary: the trace records no token ids" in result.stderr
    assert "skipped domains: the trace holds one domain (b)" in result.stderr
    assert "Warning" not in result.stderr
    rows = pq.read_table(tmp_path / "out" / "curves.parquet").to_pylist()
    fsf = [r for r in rows if r["policy"] == "fsf" and r["m"] == 2 and r["scope"] == "layer" and r["layer"] == 1]
    np.testing.assert_allclose([r["observed"] for r in fsf], curves(trace, "fsf", 2).per_layer[1])
    for r in rows:
        assert r["excess"] == pytest.approx(r["observed"] - r["chance"])
    at_2x = [r for r in rows if r["policy"] == "fsf" and r["m"] == 4 and r["scope"] == "model" and r["cache_multiple"] == 2]
    assert summary["locality_excess_over_chance"]["sch_2x"]["fsf_m4"] == pytest.approx(at_2x[0]["excess"])


def test_analyze_keeps_an_existing_folder_unless_overwrite_and_leaves_no_stale_table(saved, tmp_path):
    path, trace = saved
    experts = np.asarray(trace.experts)[:36].reshape(2, 18, *trace.experts.shape[1:])
    tokens = np.zeros((2, 18), int)  # one token id, 36 occurrences (a share needs 20)
    Trace.from_arrays(experts, trace.num_experts, tokens=tokens, domains=["a", "b"]).save(path / "with-tokens")
    assert run("analyze", "with-tokens", "--out", tmp_path / "o", "--m", 2, "--resamples", 0, cwd=path).returncode == 0
    assert (tmp_path / "o" / "vocabulary.parquet").is_file()
    refused = run("analyze", "t", "--out", tmp_path / "o", "--m", 2, cwd=path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"error: {tmp_path / 'o'} already exists; choose another --out or pass --overwrite"
    assert (tmp_path / "o" / "vocabulary.parquet").is_file()
    replaced = run("analyze", "t", "--out", tmp_path / "o", "--m", 2, "--resamples", 0, "--overwrite", cwd=path)
    assert replaced.returncode == 0, replaced.stderr
    assert not list((tmp_path / "o").glob("vocabulary.*"))  # this trace has no token ids


def test_analyze_without_chance(tmp_path):
    trace = random_trace(np.random.default_rng(9), sequences=(2, 2), tokens=(6, 8))
    summary = analyze(trace, tmp_path, m=3, permutations=0, resamples=0)
    assert summary["srp"]["3"]["excess"] is None and summary["srp"]["3"]["observed"] is not None


@pytest.mark.parametrize("kwargs", [{"resamples": -1}, {"m": ()}, {"permutations": -1}, {"seed": -1}])
def test_analyze_rejects_bad_settings_before_any_work(tmp_path, kwargs):
    trace = random_trace(np.random.default_rng(5), sequences=(2, 2), tokens=(6, 8))
    started = []
    with pytest.raises(ExpertcacheError):
        analyze(trace, tmp_path / "out", progress=lambda description, advance: started.append(description), **kwargs)
    assert started == []


def test_the_domains_table_has_rows_only_for_a_layers_own_experts(tmp_path):
    from expertcache.trace import ModelInfo, Trace

    model = ModelInfo(name="m", architecture="t", num_layers=2, moe_layers=(0, 1), num_experts=(4, 2), top_k=1)
    trace = Trace.from_arrays([np.array([[[0], [1]], [[3], [0]]]), np.array([[[1], [0]], [[2], [1]]])], model=model,
                              domains=["x", "y"])
    analyze(trace, tmp_path, m=2, permutations=0, resamples=0)
    rows = pq.read_table(tmp_path / "domains.parquet").to_pylist()
    assert sorted({(r["layer"], r["expert"]) for r in rows}) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]


def test_repeated_segment_length_counts_once(tmp_path):
    trace = random_trace(np.random.default_rng(5), sequences=(2, 2), tokens=(6, 8))
    summary = analyze(trace, tmp_path, m=(3, 3), permutations=1, resamples=0)
    assert summary["settings"]["m"] == [3]
    rows = pq.read_table(tmp_path / "curves.parquet").to_pylist()
    assert len(rows) == len({(r["policy"], r["m"], r["layer"], r["cache_size"]) for r in rows})


def test_real_qwen_trace_matches_reference():
    real = open_trace("example:qwen3-30b-a3b")  # 156 tokens, 48 layers x 128 experts, k = 6; last layer pads prefill tokens
    experts = np.asarray(real.experts)[:30, [0, 47], :].astype(np.int64)
    experts[experts == real.pad_id] = -1
    trace = Trace.from_arrays(experts[None], 128)
    for policy, m in (("lru", None), ("fsf", 16)):
        assert_curves_match_reference(trace, policy, m)
    full = srp(real, (4, 16), resamples=0).results[16]["per_layer"][47]
    expected = reference.srp_value(reference.srp_windows(real, 16, layers=[47]), 16)
    assert (full.srp, full.threshold) == (pytest.approx(expected[0], abs=1e-9), expected[1])


def test_sharded_trace_and_small_blocks_give_the_same_results(tmp_path, monkeypatch):
    from expertcache import TraceWriter
    from expertcache.locality import _streams

    memory = random_trace(np.random.default_rng(21), sequences=(5, 5), tokens=(4, 12), domains=("a", "b", "c"))
    with TraceWriter(tmp_path / "t", memory.model, domains=memory.domains, shard_tokens=15) as writer:
        for i in range(memory.num_sequences):
            s = memory.sequence(i)
            writer.add_sequence(memory.experts[s], domain=memory.domains[memory.seq_domain[i]])
    disk = Trace.load(tmp_path / "t")
    assert len(disk._shards) > 1  # noqa: SLF001
    expected = {p: curves(memory, p, m).to_json() for p, m in (("lru", None), ("fsf", 3))}
    expected_srp = srp(memory, (2, 5), ("expert", "domain", "position"), resamples=30).to_json()
    monkeypatch.setattr(_streams, "DEFAULT_BLOCK_REQUESTS", 1)  # one sequence per block
    for trace in (disk, memory):
        assert {p: curves(trace, p, m).to_json() for p, m in (("lru", None), ("fsf", 3))} == expected
        assert srp(trace, (2, 5), ("expert", "domain", "position"), resamples=30).to_json() == expected_srp


def test_an_interrupted_overwrite_keeps_the_earlier_analysis_whole(tmp_path, monkeypatch):
    # Old tables used to be deleted before the new ones were written: a Ctrl-C left a new table
    # beside the old summary, read as one finished analysis.
    module = sys.modules["expertcache.locality.analyze"]  # the package exports the function by that name
    trace = random_trace(np.random.default_rng(3), sequences=(2, 2), tokens=(6, 8))
    out = tmp_path / "o"
    analyze(trace, out, m=3, permutations=0, resamples=0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = []

    def write_then_stop(stem, rows):
        if written:
            raise KeyboardInterrupt
        written.append(original(stem, rows))

    original = module._write_table
    monkeypatch.setattr(module, "_write_table", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        analyze(trace, out, m=2, permutations=0, resamples=0, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
