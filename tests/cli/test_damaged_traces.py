"""Random byte-level damage to every array of a trace, against every command that reads one.

Each damaged copy (bytes overwritten in place, or the file cut short) goes through every
command: each must end with exit status 0 or a one-line error (status 1 or 2), never a signal
(a kernel reading out of bounds) or a traceback. Copies without checksums (a trace written
before them) reach the content checks, the last guard in front of the kernels.

The commands run through the real CLI entry point in one child process (a fresh interpreter
per command would take minutes); a crash is a signal on that child, and the last case it
announced names the culprit.
"""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import typer.main

from expertcache import ModelInfo, TraceWriter
from expertcache.cli import _register_all, app
from expertcache.trace import PREFILL

# Every command that takes a TRACE argument, with options that keep it quick.
COMMANDS = {
    "info": ["info", "{trace}"],
    "simulate": ["simulate", "{trace}", "--budget-slots", "8"],
    "simulate-stale-gate": ["simulate", "{trace}", "--budget-slots", "8", "--prefetch", "stale-gate"],
    "simulate-strict": ["simulate", "{trace}", "--budget-slots", "6", "--accounting", "strict", "--policy", "belady"],
    "curves": ["curves", "{trace}", "--policy", "lru"],
    "curves-fsf": ["curves", "{trace}", "--policy", "fsf", "--m", "4"],
    "srp": ["srp", "{trace}", "--resamples", "20", "--by", "expert,domain,position"],
    "analyze": ["analyze", "{trace}", "--out", "{out}/analysis", "--permutations", "1", "--resamples", "20"],
    "advise": ["advise", "{trace}"],
    "sweep": ["sweep", "{trace}", "--out", "{out}/sweep", "--budgets", "4,12", "--unit", "slots", "--workers", "1"],
    "export": ["export", "arrays", "{trace}", "--out", "{out}/e.npy"],
}

DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys, traceback
    from expertcache.cli import main

    cases, commands = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    for case in cases:
        for name, args in commands.items():
            print(json.dumps({"start": [case["name"], name]}), flush=True)
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                sys.argv = ["expertcache", *(a.format(**case) for a in args)]
                try:
                    main()
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else int(e.code is not None)
                except BaseException:
                    traceback.print_exc()
                    code = "traceback"
            print(json.dumps({"case": case["name"], "command": name, "code": code, "stderr": err.getvalue()}), flush=True)
""")


def test_every_command_taking_a_trace_is_covered():
    _register_all()
    group = typer.main.get_command(app)

    def takes_trace(command):
        return any(p.param_type_name == "argument" and p.name in ("trace", "trace_path") for p in command.params)

    covered = {args[0] if args[0] != "export" else "export arrays" for args in COMMANDS.values()}
    found = set()
    for name, command in group.commands.items():
        subcommands = getattr(command, "commands", {name: command})
        found |= {name if sub is command else f"{name} {sub_name}"
                  for sub_name, sub in subcommands.items() if takes_trace(sub)}
    assert found == covered


def _small_trace(path, rng):
    """Two shards of two sequences, two domains, prefill and decode, layers of 8 and 6 experts, stale-gate scores."""
    model = ModelInfo(name="damage", architecture="test", num_layers=3, moe_layers=(0, 1, 2), num_experts=(8, 6, 8),
                      top_k=2, expert_bytes=(100, 80, 100))
    with TraceWriter(path, model, optional=("stale_gate",), shard_tokens=30) as writer:
        for i, T in enumerate((14, 14, 14, 14)):  # one length: `export arrays` needs it
            ids = np.stack([np.argsort(rng.random((T, 6)), axis=1)[:, :2] + (l != 1) * rng.integers(0, 3, (T, 1))
                            for l in range(3)], axis=1)
            phase = np.where(np.arange(T) < T // 3, PREFILL, 1)
            gate = rng.standard_normal((T, 3, 8)).astype(np.float16)
            writer.add_sequence(ids, rng.random((T, 3, 2)), tokens=rng.integers(0, 50, T), phase=phase,
                                domain=("prose", "code")[i % 2], key=str(i), stale_gate=gate)


def _damage_cases(clean, root, rng):
    """(name, trace dir) for every array of the first shard: bytes overwritten (with and without
    the checksums recorded) and the file cut short."""
    cases = []
    for file in sorted((clean / "shards" / "00000").glob("*.npy")):
        for kind in ("overwrite", "overwrite-no-crc", "truncate"):
            name = f"{file.stem}-{kind}"
            copy = root / name
            shutil.copytree(clean, copy)
            target = copy / "shards" / "00000" / file.name
            data = bytearray(target.read_bytes())
            if kind == "truncate":
                data = data[:int(rng.integers(0, len(data)))]
            else:
                start = 128 if rng.random() < 0.8 else 0  # mostly the data, sometimes the header too
                for at in rng.integers(start, len(data), int(rng.integers(1, 16))):
                    data[at] = int(rng.integers(0, 256))
            target.write_bytes(bytes(data))
            if kind == "overwrite-no-crc":
                for meta_path in (copy / "shards").glob("*/shard.json"):
                    meta = json.loads(meta_path.read_text())
                    for entry in meta["arrays"].values():
                        entry.pop("crc32")
                    meta_path.write_text(json.dumps(meta))
            (root / f"{name}-out").mkdir()
            cases.append({"name": name, "trace": str(copy), "out": str(root / f"{name}-out")})
    return cases


@pytest.mark.parametrize("seed", [0, 1])
def test_random_damage_never_crashes_a_command(tmp_path, seed):
    rng = np.random.default_rng(seed)
    _small_trace(tmp_path / "clean", rng)
    cases = [{"name": "clean", "trace": str(tmp_path / "clean"), "out": str(tmp_path / "clean-out")}]
    (tmp_path / "clean-out").mkdir()
    cases += _damage_cases(tmp_path / "clean", tmp_path, rng)
    child = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases), json.dumps(COMMANDS)],
                           capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in child.stdout.splitlines()]
    last = lines[-1] if lines else None
    assert child.returncode == 0, f"the child died with status {child.returncode} during {last}: {child.stderr[-2000:]}"
    results = [r for r in lines if "code" in r]
    assert len(results) == len(cases) * len(COMMANDS)
    for r in results:
        where = f"{r['command']} on {r['case']}: {r['stderr']}"
        assert r["code"] in (0, 1, 2) and "Traceback" not in r["stderr"], where
        if r["case"] == "clean":
            assert r["code"] == 0, where
        if r["code"] != 0:  # one error line, the last thing printed (a progress bar may precede it)
            lines = [line for line in r["stderr"].splitlines() if line.strip()]
            assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, where
    refused = {r["case"] for r in results if r["code"] != 0}
    for case in cases[1:]:  # ids damaged with a checksum recorded: every command that reads ids refuses it
        if case["name"] in ("experts-overwrite", "experts-truncate", "seq_lengths-truncate"):
            assert case["name"] in refused
