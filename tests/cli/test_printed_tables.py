"""What `srp --by` and `sweep` print: the breakdowns and the table they computed, the same numbers
as their JSON and CSV."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from expertcache import Trace


def cli(*args):
    return subprocess.run([sys.executable, "-m", "expertcache", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250"})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(4)
    experts = np.stack([rng.permutation(8)[:2] for _ in range(4 * 40 * 2)]).reshape(4, 40, 2, 2)
    path = tmp_path_factory.mktemp("printed") / "t"
    Trace.from_arrays(experts, 8, domains=["prose", "code", "prose", "code"]).save(path)
    return path


def test_srp_prints_every_breakdown_it_computed(saved):
    printed = cli("srp", saved, "--m", "4", "--by", "domain,expert", "--by", "position", "--resamples", 20)
    assert printed.returncode == 0, printed.stderr
    out = printed.stdout
    for title in ("SRP by domain", "SRP by expert", "SRP by window start position"):
        assert title in out
    data = json.loads(cli("srp", saved, "--m", "4", "--by", "domain,expert,position", "--resamples", 20, "--json").stdout)
    for domain in ("prose", "code"):
        value = data["4"]["per_domain"][domain]
        assert f"{value['srp']:.3f} [{value['ci'][0]:.3f}, {value['ci'][1]:.3f}]" in out
    experts = sorted(v["srp"] for layer in data["4"]["per_expert"] for v in layer)
    assert f"{experts[0]:.3f}" in out and f"{experts[-1]:.3f}" in out
    assert f"{data['4']['per_position'][0]['srp']:.3f}" in out
    assert "SRP by domain" not in cli("srp", saved, "--m", "4", "--resamples", 0).stdout  # only what was asked


def test_sweep_prints_its_table(saved, tmp_path):
    printed = cli("sweep", saved, "--out", tmp_path, "--unit", "slots", "--budgets", "4,8", "--policies", "lru,layer-lfu",
                  "--workers", 1)
    assert printed.returncode == 0, printed.stderr
    with open(tmp_path / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    lines = [line for line in printed.stdout.splitlines() if line.startswith("│")]
    assert len(lines) == len(rows) == 4
    for line, row in zip(lines, rows):
        cells = [c.strip() for c in line.strip("│").split("│")]
        assert cells[0] == ("lru" if row["scope"] == "global" else "lfu (per layer)")
        assert cells[1:4] == [row["budget"].removesuffix(".0"), f"{float(row['hit_rate']):.2%}",
                              f"{float(row['decode_hit_rate']):.2%}"]
