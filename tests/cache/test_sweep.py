"""Sweep: parallel rows equal serial ones, in grid order, with throughput columns on request."""

import pytest

from expertcache.cache import HardwareProfile, simulate, sweep
from expertcache.errors import ExpertcacheError
from expertcache.trace import Trace

from .test_golden import TRACE


def test_parallel_sweep_equals_serial_and_simulate():
    trace = Trace.load(TRACE)
    grid = dict(unit="slots", scopes=("global", "layer"))
    serial = sweep(trace, ["lru", "belady", "gdsf"], [4, 8, 16], workers=1, **grid)
    parallel = sweep(trace, ["lru", "belady", "gdsf"], [4, 8, 16], workers=2, **grid)
    assert serial == parallel and len(serial) == 18
    row = serial[4]  # lru, layer, 8 slots (grid order: policy, scope, budget)
    assert (row["policy"], row["scope"], row["budget"]) == ("lru", "layer", 8)
    assert row["hits"] == simulate(trace, "lru", scope="layer", budget_slots=8).hits


def test_sweep_adds_throughput_with_a_profile():
    trace = Trace.load(TRACE)
    hw = HardwareProfile(link_bandwidth=100.0, expert_time=0.01, dense_time=0.1)
    rows = sweep(trace, ["lru"], [1, 2], unit="x", profile=hw, workers=1)
    assert all(r["decode_tokens_per_s"] > 0 for r in rows)
    assert rows[1]["decode_tokens_per_s"] >= rows[0]["decode_tokens_per_s"]  # more cache, fewer reads


def test_sweep_refuses_fractional_slots_and_bad_worker_counts():
    trace = Trace.load(TRACE)
    with pytest.raises(ExpertcacheError, match="whole experts"):
        sweep(trace, ["lru"], [1.5], unit="slots", workers=1)  # was truncated to 1 slot
    assert sweep(trace, ["lru"], [2.0], unit="slots", workers=1)[0]["budget"] == 2
    with pytest.raises(ExpertcacheError, match="at least one policy, one scope and one budget"):
        sweep(trace, ["lru"], [2], unit="slots", scopes=(), workers=1)  # was an IndexError
    for workers in (0, -1, 1.5, True):
        with pytest.raises(ExpertcacheError, match="workers"):
            sweep(trace, ["lru"], [2], unit="slots", workers=workers)


def test_a_configuration_named_twice_in_the_grid_gives_one_row():
    trace = Trace.load(TRACE)
    rows = sweep(trace, ["layer-lru", "lru", "LRU"], [4, 4.0, 8], unit="slots", scopes=("global", "layer"), workers=1)
    # layer-lru is per layer under either scope; lru twice; 4 and 4.0 slots are one budget
    assert [(r["policy"], r["scope"], r["budget"]) for r in rows] == [
        ("lru", "layer", 4), ("lru", "layer", 8), ("lru", "global", 4), ("lru", "global", 8)]


def test_an_interrupted_write_keeps_the_earlier_sweep_whole(tmp_path, monkeypatch):
    # The three files used to be replaced one by one: a Ctrl-C left a new CSV beside an old plot.
    import pyarrow.parquet as pq

    from expertcache.cache.sweep import write_sweep

    rows = sweep(Trace.load(TRACE), ["lru", "lfu"], [2, 4], unit="slots")
    write_sweep(rows, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["sweep.csv", "sweep.parquet", "sweep.png"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", interrupted)  # after the CSV, before the plot
    with pytest.raises(KeyboardInterrupt):
        write_sweep(rows[:1], tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_sweep_stopped_by_ctrl_c_writes_beside_a_complete_one(tmp_path, monkeypatch):
    # The finished rows of an interrupted sweep used to replace a complete sweep in the same folder.
    import sys

    from expertcache.cli import Interrupted
    from expertcache.cli.cache_commands import sweep_command

    options = dict(out=tmp_path, policies="lru,lfu", budgets="2,4", unit="slots", workers=1)
    sweeps = sys.modules["expertcache.cache.sweep"]  # the package's `sweep` is the function
    sweep_command(TRACE, **options)
    complete = (tmp_path / "sweep.csv").read_text()
    assert complete.count("\n") == 5  # header and 4 configurations
    grid = sweeps.sweep

    def stopped(*args, into, **kwargs):
        into.append(grid(*args, **kwargs)[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeps, "sweep", stopped)
    with pytest.raises(Interrupted, match="1 finished configurations written to .*sweep.partial.csv"):
        sweep_command(TRACE, **options)
    assert (tmp_path / "sweep.csv").read_text() == complete
    assert (tmp_path / "sweep.partial.csv").read_text().count("\n") == 2
    monkeypatch.setattr(sweeps, "sweep", grid)
    sweep_command(TRACE, **options)  # a complete sweep replaces both
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv", "sweep.parquet", "sweep.png"]


def test_one_policy_name_is_a_policy_not_its_letters():
    trace = Trace.load(TRACE)
    assert sweep(trace, "lru", [2], unit="slots") == sweep(trace, ["lru"], [2], unit="slots")  # was "unknown policy 'l'"
