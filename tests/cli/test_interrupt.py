"""Ctrl-C anywhere in a command: status 130 and one line on stderr, never a traceback."""

import importlib
import sys

import numpy as np
import pytest

import expertcache.cache
import expertcache.cli as cli
from expertcache import Trace


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["expertcache", *map(str, args)])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code, capsys.readouterr().err


def test_ctrl_c_while_the_commands_load(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_register_all", interrupted)
    assert run_main(monkeypatch, capsys, "--help") == (130, "interrupted\n")


def test_ctrl_c_inside_a_command_that_kept_nothing(monkeypatch, capsys, tmp_path):
    Trace.from_arrays([np.zeros((2, 1, 1), np.int64)], 4).save(tmp_path / "t")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(expertcache.cache, "simulate", interrupted)
    assert run_main(monkeypatch, capsys, "simulate", tmp_path / "t", "--budget-slots", 1) == (130, "interrupted\n")


def test_ctrl_c_before_any_sweep_configuration_finished_says_nothing_was_written(monkeypatch, capsys, tmp_path):
    Trace.from_arrays([np.zeros((2, 1, 1), np.int64)], 4).save(tmp_path / "t")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("expertcache.cache.sweep"), "sweep", interrupted)  # the module
    code, err = run_main(monkeypatch, capsys, "sweep", tmp_path / "t", "--out", tmp_path / "o", "--budgets", 1,
                         "--unit", "slots")
    assert (code, err) == (130, "interrupted: no configuration had finished; nothing was written\n")
    assert not (tmp_path / "o").exists()


def test_an_os_error_prints_path_and_reason_in_plain_words():
    from expertcache.cli import _plain

    assert _plain(FileNotFoundError(2, "No such file or directory", "x.npy")) == "x.npy: No such file or directory"
    assert _plain(OSError(28, "No space left on device")) == "No space left on device"
    assert _plain(OSError("no errno")) == "no errno"


def test_ctrl_c_in_a_toy_study_says_what_is_kept_and_how_to_resume(monkeypatch, capsys, tmp_path):
    import expertcache.toy.study as study

    def interrupted(out, **kwargs):
        out.mkdir()
        (out / "study.json").write_text("{}")  # the study had claimed its folder
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run_study", interrupted)
    code, err = run_main(monkeypatch, capsys, "toy", "study", "--out", tmp_path / "s")
    assert code == 130
    assert err == f"interrupted: what each variant finished is kept in {tmp_path / 's'}; run the same command to resume\n"


def test_sigterm_takes_the_way_out_of_ctrl_c_with_status_143(monkeypatch, capsys, tmp_path):
    import os
    import signal

    Trace.from_arrays([np.zeros((2, 1, 1), np.int64)], 4).save(tmp_path / "t")

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # main's handler turns it into a KeyboardInterrupt here
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(expertcache.cache, "simulate", terminated)
    assert run_main(monkeypatch, capsys, "simulate", tmp_path / "t", "--budget-slots", 1) == (143, "terminated\n")
