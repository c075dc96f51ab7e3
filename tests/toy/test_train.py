"""Toy training: the smoke preset trains, loads everywhere, logs locality against chance, and a
run killed with SIGKILL resumes to exactly the weights of an uninterrupted run (CPU, same seed)."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from expertcache.cli import _register_all, app
from expertcache.toy import preset, train

STEPS = 100  # smoke steps of the resume test: long enough to be killed midway on a busy machine


def test_smoke_trains_and_every_command_loads_it(tmp_path):  # from_pretrained, trace, analyze, run
    import transformers

    out = tmp_path / "smoke"
    result = train(preset("smoke"), out)
    assert (result.steps, result.resumed_from) == (preset("smoke").steps, 0)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "qwen3_moe"
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # safetensors writes 0600
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 10, 20, 30]
    assert all(r["overlap_excess"] == r["overlap"] - r["overlap_chance"] for r in log)
    assert sorted(p.name for p in (out / "heldout").iterdir()) == ["code.txt", "docs.txt", "math.txt", "prose.txt"]
    again = train(preset("smoke"), out)  # done already: nothing trained, nothing logged twice
    assert (again.steps, again.resumed_from, again.last_probe) == (result.steps, result.steps, log[-1])
    assert len((out / "log.jsonl").read_text().splitlines()) == len(log)

    _register_all()
    runner = CliRunner()
    corpus = [arg for d in ("prose", "code") for arg in ("--corpus", f"{d}={out / 'heldout' / d}.txt")]
    traced = runner.invoke(app, ["trace", str(out), *corpus, "-n", "2", "-T", "32", "--out", str(tmp_path / "t")])
    assert traced.exit_code == 0, traced.output
    analyzed = runner.invoke(app, ["analyze", str(tmp_path / "t"), "--out", str(tmp_path / "a"), "--resamples", "20"])
    assert analyzed.exit_code == 0, analyzed.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["trace"]["experts"] == 8 and summary["trace"]["moe_layers"] == 2
    offloaded = runner.invoke(app, ["run", str(out), "--prompt", "def main():", "--generate", "4", "--budget-x", "1"])
    assert offloaded.exit_code == 0, offloaded.output


def _cli(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [sys.executable, "-m", "expertcache", "toy", "train", "--preset", "smoke", "--out", str(out), "--steps",
            str(STEPS), *extra], env


def test_kill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    command, env = _cli(whole)
    subprocess.run(command, env=env, check=True, capture_output=True)

    command, env = _cli(killed, "--checkpoint-every", "0")
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and any(json.loads(l)["step"] >= 10 for l in log.read_text().splitlines() if l)):
        assert child.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    stopped = torch.load(killed / "checkpoint" / "state.pt", weights_only=False)["step"]
    assert 0 < stopped < STEPS

    command, env = _cli(killed)
    resumed = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    assert f"resumed at step {stopped}" in " ".join(resumed.stderr.split())
    a, b = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS


def test_a_run_continued_later_logs_the_losses_of_an_uninterrupted_one(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(preset("smoke"), whole, steps=30)
    train(preset("smoke"), split, steps=15)  # its end record at step 15 averages steps 11-15
    train(preset("smoke"), split, steps=30)  # the step-20 record must still average 11-20, restored from state.pt
    one = {r["step"]: r for r in map(json.loads, (whole / "log.jsonl").read_text().splitlines())}
    two = {r["step"]: r for r in map(json.loads, (split / "log.jsonl").read_text().splitlines())}
    assert sorted(two) == [0, 10, 15, 20, 30]  # the extra record where the first part ended
    for step in (10, 20, 30):  # the step-20 losses were the mean of 16-20 only
        assert {k: v for k, v in two[step].items() if k != "seconds"} == {k: v for k, v in one[step].items()
                                                                         if k != "seconds"}, step


def test_threads_option_sets_the_threads_torch_trains_with(tmp_path, monkeypatch):
    import expertcache.toy as toy

    seen = []

    def fake_train(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return type("Result", (), {"last_probe": None, "resumed_from": 0, "steps": 0, "tokens": 0, "seconds": 0.0})()

    before = torch.get_num_threads()
    wanted = before + 1  # unlike the default, whatever the machine
    monkeypatch.setattr(toy, "train", fake_train)
    _register_all()
    try:
        result = CliRunner().invoke(app, ["toy", "train", "--preset", "smoke", "--threads", str(wanted), "--out", str(tmp_path / "m")])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert seen == [wanted]
