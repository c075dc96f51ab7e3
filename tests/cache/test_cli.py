"""The CLI's public JSON contract, outputs and error handling."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from .test_golden import TRACE

KEYS = ["policy", "scope", "accounting", "budget_bytes", "budget_slots", "lookups", "hits", "hit_rate", "decode_lookups", "decode_hits",
        "decode_hit_rate", "bytes_read", "misses_on_cpu", "prefetch"]


def cli(*args):
    return subprocess.run([sys.executable, "-c", "from expertcache.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True)


def test_simulate_json_contract():
    p = cli("simulate", TRACE, "--policy", "lfu", "--scope", "layer", "--budget-slots", 8, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert list(out) == KEYS
    assert (out["policy"], out["scope"], out["prefetch"]) == ("lfu", "layer", None)
    assert (out["budget_bytes"], out["budget_slots"]) == (None, 8)
    assert json.loads(cli("simulate", TRACE, "--policy", "layer-lfu", "--budget-slots", 8, "--json").stdout) == out
    assert out["hit_rate"] == out["hits"] / out["lookups"]
    p = cli("simulate", TRACE, "--policy", "lru", "--budget-x", 1, "--prefetch", "previous", "--json")
    pf = json.loads(p.stdout)["prefetch"]
    assert {"issued", "used", "wasted", "bytes", "bytes_wasted", "precision", "recall"} <= set(pf)


def test_simulate_writes_breakdowns(tmp_path):
    p = cli("simulate", TRACE, "--budget-slots", 8, "--breakdown", tmp_path, "--json")
    out = json.loads(p.stdout)
    layers = (tmp_path / "layers.csv").read_text().splitlines()
    assert layers[0] == "layer,lookups,hits,bytes_read,hit_rate" and len(layers) == 1 + 4
    assert sum(int(line.split(",")[2]) for line in layers[1:]) == out["hits"]
    phases = (tmp_path / "phases.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in phases] == ["phase", "prefill", "decode"]  # were 0 and 1
    steps = [line.split(",") for line in (tmp_path / "steps.csv").read_text().splitlines()[1:]]
    assert sum(int(row[1]) for row in steps) == out["lookups"]
    assert {row[4] for row in steps if row[1] == "0"} == {""}  # no lookup: no hit rate (was 0.0)


def test_simulate_a_bundled_example_by_name():
    out = json.loads(cli("simulate", "example:gpt-oss-120b", "--budget-mib", 3000, "--json").stdout)
    assert round(100 * out["hit_rate"], 1) == 32.4  # what the phone recorded (test_published_curves)


@pytest.mark.parametrize("args, message", [  # the other mistakes are checked through the API
    (["--budget-slots", 4, "--prefetch", "stale-gate"], "no stale-gate scores"),
    (["--budget-slots", 4, "--profile", "/nonexistent.json"], "no such hardware profile"),
    (["--budget-slots", 4, "--prefetch-count", 2], "apply only with --prefetch"),  # was ignored
    (["--budget-slots", 4, "--shares", "bytes"], "applies only with scope layer, not global"),  # was ignored
    (["--budget-slots", 4, "--policy", "layer-lru", "--scope", "global"], "is per-layer; drop the global scope"),  # was layer
])
def test_user_mistakes_exit_2_with_one_line(args, message):
    p = cli("simulate", TRACE, *args)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_option_names_in_any_case_and_a_file_where_a_folder_goes(tmp_path):
    lower = cli("simulate", TRACE, "--scope", "layer", "--accounting", "strict", "--budget-slots", 8, "--json").stdout
    assert cli("simulate", TRACE, "--scope", "Layer", "--accounting", "STRICT", "--budget-slots", 8, "--json").stdout \
        == lower  # --policy LRU was taken, --scope Layer refused
    (tmp_path / "file").write_text("x")
    for args, option in [(["simulate", TRACE, "--budget-slots", 8, "--breakdown"], "--breakdown"),
                         (["sweep", TRACE, "--out"], "--out")]:
        p = cli(*args, tmp_path / "file")
        assert p.returncode == 2 and p.stderr == f"error: {tmp_path / 'file'} is a file; {option} names a folder to write into\n"


def test_sweep_writes_table_parquet_and_plot(tmp_path):
    p = cli("sweep", TRACE, "--out", tmp_path, "--policies", "lru,belady,layer-lfu", "--budgets", "4,8",
            "--unit", "slots", "--workers", 2)
    assert p.returncode == 0, p.stderr
    table = pq.read_table(tmp_path / "sweep.parquet").to_pylist()
    assert len(table) == 6 and (tmp_path / "sweep.png").stat().st_size > 0
    assert (tmp_path / "sweep.csv").read_text().count("\n") == 7
    layer = [r for r in table if r["policy"] == "lfu"]
    assert {r["scope"] for r in layer} == {"layer"}
    assert cli("sweep", TRACE, "--out", tmp_path, "--budgets", "a,b").returncode == 2


def test_bench_hw_writes_a_profile_simulate_can_use(tmp_path):
    hw = tmp_path / "hw.json"
    p = cli("bench-hw", "--hidden", 64, "--intermediate", 32, "--layers", 2, "--disk-mib", 4, "--copy-mib", 8,
            "--directory", tmp_path, "--out", hw, "--json")
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)) == {"profile", "measured"}
    p = cli("simulate", TRACE, "--budget-x", 1, "--profile", hw, "--json")
    assert json.loads(p.stdout)["throughput"]["decode_tokens_per_s"] > 0


def test_advise_json():
    p = cli("advise", TRACE, "--fraction", 0.8, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["hit_rate"] >= 0.8 * out["best_hit_rate"] and out["budget_x"] > 0


def test_advise_notes_the_token_cycle_only_for_a_global_lru_cache():
    lru = cli("advise", "example:gpt-oss-120b", "--fraction", 1e-9).stdout
    # 0.99x the active experts still gets 4.9 %: the note no longer says "no LRU hits"
    assert "target 1e-07 % of it" in lru and "reaches 4.9 %" in lru
    assert "one token cycle (36 layers x k=2) needs 907.7 MiB: a global LRU cache below it evicts most experts" in lru
    assert "token cycle" not in cli("advise", "example:gpt-oss-120b", "--policy", "belady", "--scope", "layer").stdout


def test_a_trace_without_decode_steps_has_no_decode_hit_rate(tmp_path):
    from expertcache.trace import PREFILL

    from .helpers import make_trace

    trace = make_trace([np.array([[[0, 1]], [[1, 2]], [[0, 2]]])], 4, phase=[np.full(3, PREFILL)])
    trace.save(tmp_path / "t")
    out = json.loads(cli("simulate", tmp_path / "t", "--budget-slots", 2, "--json").stdout)
    assert (out["decode_lookups"], out["decode_hit_rate"]) == (0, None)  # was 0.0, as if every lookup missed
    assert out["lookups"] == 3  # one prefill batch: its three distinct experts
    printed = cli("simulate", tmp_path / "t", "--budget-slots", 2).stdout
    assert f"hit rate {out['hit_rate']:.2%} ({out['hits']}/3), decode n/a" in printed


def test_simulate_text_says_n_a_for_an_undefined_precision_and_gives_both_bounds(tmp_path):
    from expertcache.cache import HardwareProfile

    from .helpers import make_trace

    make_trace([[[[e]] for e in range(8)]], 8, expert_bytes=(100,), phase=[[0, 0] + [1] * 6]).save(tmp_path / "t")
    printed = cli("simulate", tmp_path / "t", "--budget-slots", 4, "--prefetch", "previous").stdout
    # precision was "nan"; a recall beside "issued 0" read as a contradiction until it said it counts predictions
    assert "issued 0, used 0, wasted 0, precision n/a; predictions, resident ones included: precision 0.000, " \
           "recall 0.000" in printed
    HardwareProfile(link_bandwidth=1000.0, expert_time=0.01, dense_time=0.1).save(tmp_path / "hw.json")
    printed = cli("simulate", tmp_path / "t", "--budget-slots", 4, "--profile", tmp_path / "hw.json").stdout
    # overlapped: decode, per token max(0.1 + 0.01 s compute, 100 bytes / 1000 B/s) = 0.11 s; prefill, the two
    # tokens together max(0.22 s, 0.2 s)
    assert "bound: decode 9.09 tok/s (compute-bound), prefill 9.09 tok/s" in printed
