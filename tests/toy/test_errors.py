"""Mistakes with `expertcache toy` end in one line `error: ...` and status 2, never a traceback."""

import json
import sys

import pytest
import torch

from expertcache.cli import main


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["expertcache", "toy", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("content, says", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"experts": 4, "top_k": 8}', "top_k (8) cannot exceed experts (4)"),
    ('{"expertz": 4}', "unknown config fields expertz"),
    ('{"preset": "nope"}', "unknown preset 'nope'"),
    ('{"family": "mixtral"}', "unknown family 'mixtral'"),
    ('{"family": "qwen3_moe", "shared_experts": 1}', "need family deepseek_v3"),
    ('{"layers": 0}', "layers must be a positive integer"),
    ('{"preset": "smoke", "hidden_size": 6, "heads": 2}', "head's width hidden_size / heads = 3 must be a multiple"),
    ('{"hidden_size": 8, "heads": 4}', "= 2 must be a multiple of 4 for deepseek_v3"),  # was a ZeroDivisionError
    ('{"preset": "smoke", "lr": NaN}', "lr must be a finite non-negative number, got nan"),
    ('{"balance_weight": Infinity}', "balance_weight must be a finite non-negative number, got inf"),
    ('{"seq_len": 1}', "seq_len must be at least 2"),  # trained to a loss of nan
])
def test_bad_config_file(tmp_path, monkeypatch, capsys, content, says):
    config = tmp_path / "toy.json"
    config.write_text(content)
    assert says in run(monkeypatch, capsys, "train", "--config", str(config), "--out", str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, says", [
    (["train", "--preset", "nope"], "unknown preset 'nope'; known: smoke, "),
    (["train"], "give --preset NAME or --config FILE"),
    (["train", "--preset", "smoke", "--config", "x.json"], "give --preset NAME or --config FILE (not both)"),
    (["train", "--preset", "smoke", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["study", "--threads", "-2"], "--threads must be at least 1, got -2"),
    (["train", "--config", "missing.json"], "config file not found"),
    (["train", "--preset", "smoke", "--steps", "3", "--minutes", "1"], "not both"),
    (["train", "--preset", "smoke", "--device", "tpu"], "unknown device 'tpu'"),
    (["study", "--variants", "base,nope"], "unknown variants nope"),
    (["study", "--minutes-per-model", "0"], "must be positive"),
    (["study", "--minutes-per-model", "nan"], "must be positive"),  # trained every variant for 0 steps
    (["study", "--device", "tpu"], "unknown device 'tpu'"),  # was refused after the first variant started
    (["train", "--preset", "smoke", "--minutes", "nan"], "--minutes finite"),
    (["train", "--preset", "smoke", "--seed", str(2**64)], "--seed must be an integer in 0.."),  # a traceback
    (["train", "--preset", "smoke", "--checkpoint-every", "-1"], "--checkpoint-every must be a non-negative"),
    (["train", "--preset", "smoke", "--checkpoint-every", "nan"], "--checkpoint-every must be a non-negative"),
])
def test_bad_arguments(tmp_path, monkeypatch, capsys, args, says):
    assert says in run(monkeypatch, capsys, *args, "--out", str(tmp_path / "m"))
    assert not (tmp_path / "m").exists()  # refused before anything is written


@pytest.mark.parametrize("command", ["train", "study"])
def test_out_holding_something_else(tmp_path, monkeypatch, capsys, command):
    (tmp_path / "notes.txt").write_text("mine")
    extra = ["--preset", "smoke"] if command == "train" else []
    assert "is not a toy" in run(monkeypatch, capsys, command, *extra, "--out", str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_out_holding_another_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "toy.json").write_text(json.dumps({"config": {}, "seed": 0}))
    (tmp_path / "checkpoint").mkdir()
    torch.save({"step": 3}, tmp_path / "checkpoint" / "state.pt")  # another run's progress: kept
    assert "holds a toy training with other settings" in run(monkeypatch, capsys, "train", "--preset", "smoke", "--out", str(tmp_path))


def test_a_run_that_stopped_before_its_first_checkpoint_may_start_again_with_other_settings(tmp_path):
    from expertcache.toy import preset, train

    (tmp_path / "toy.json").write_text(json.dumps({"config": {"hidden_size": 6}, "seed": 0}))  # crashed, nothing kept
    (tmp_path / "heldout").mkdir()
    result = train(preset("smoke"), tmp_path, steps=0)
    assert result.steps == 0 and json.loads((tmp_path / "toy.json").read_text())["config"] == preset("smoke").to_dict()


def test_ctrl_c_says_which_step_was_kept(tmp_path, monkeypatch, capsys):
    import expertcache.toy as toy

    real = toy.train

    def trained_then_interrupted(config, out, **kwargs):
        real(config, out, steps=2)
        raise KeyboardInterrupt

    def interrupted_at_once(config, out, **kwargs):
        raise KeyboardInterrupt

    for fake, folder, says in [
            (trained_then_interrupted, "m", f"checkpoint of step 2 kept in {tmp_path / 'm'}; run the same command to resume"),
            (interrupted_at_once, "n", "nothing was trained yet")]:
        monkeypatch.setattr(toy, "train", fake)
        monkeypatch.setattr(sys, "argv", ["expertcache", "toy", "train", "--preset", "smoke", "--out", str(tmp_path / folder)])
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code == 130 and capsys.readouterr().err.strip().endswith(says)  # was "interrupted" alone
