"""A capture killed at a random moment and run again equals one that was never interrupted.

The command commits finished sequences every --commit-every seconds (here: after each one), so
SIGKILL loses at most that; Ctrl-C says how many sequences are saved and prints the command
that resumes. Each window is its own forward pass (--batch-tokens = --length), so a resumed
run computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from expertcache.trace import Trace
from expertcache.trace.capture import capture_corpus

SAMPLES, LENGTH = 100, 16  # per corpus source; 200 windows: a capture long enough to interrupt


def _command(model, corpus, out):
    return ["trace", model, *(a for c in corpus for a in ("--corpus", c)), "--samples", str(SAMPLES),
            "--length", str(LENGTH), "--batch-tokens", str(LENGTH), "--commit-every", "0", "--out", str(out)]


def _start(args):
    # Ctrl-C's default action for the child, even when this test runs where SIGINT is ignored (a
    # background job of a non-interactive shell): Python leaves an inherited SIG_IGN alone
    return subprocess.Popen([sys.executable, "-m", "expertcache", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_first_shard(process, out):
    deadline = time.monotonic() + 240
    while not any(p.name.isdigit() for p in (out / "shards").glob("*")) if (out / "shards").is_dir() else True:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, text_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "t"
    capture_corpus(tiny_model("olmoe"), text_corpus, out, samples=SAMPLES, length=LENGTH, batch_tokens=LENGTH)
    return Trace.load(out)


def _assert_same(trace, expected):
    assert trace.domains == expected.domains
    for name in ("experts", "weights", "tokens", "positions", "phase", "seq_lengths", "seq_domain"):
        np.testing.assert_array_equal(getattr(trace, name), getattr(expected, name), err_msg=name)


def test_sigkill_at_a_random_moment_then_the_same_command_equals_an_uninterrupted_capture(
        tiny_model, text_corpus, tmp_path, uninterrupted):
    out = tmp_path / "t"
    args = _command(tiny_model("olmoe"), text_corpus, out)
    process = _start(args)
    _wait_for_first_shard(process, out)
    time.sleep(np.random.default_rng(9).uniform(0, 0.2))  # somewhere in the capture, mid-forward or mid-commit
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    saved = Trace.load(out).num_sequences  # whatever the moment, what is on disk is a valid trace
    assert 1 <= saved < 2 * SAMPLES
    rerun = subprocess.run([sys.executable, "-m", "expertcache", *args], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({saved} sequences already done)" in rerun.stderr
    _assert_same(Trace.load(out), uninterrupted)


def test_ctrl_c_says_what_is_saved_and_the_command_that_resumes(tiny_model, text_corpus, tmp_path, uninterrupted):
    out = tmp_path / "t"
    args = _command(tiny_model("olmoe"), text_corpus, out) + ["--overwrite"]
    process = _start(args)
    _wait_for_first_shard(process, out)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    saved = Trace.load(out).num_sequences
    prefix = f"interrupted: {saved} of {2 * SAMPLES} sequences saved in {out}; resume with: "
    assert last.startswith(prefix), stderr[-2000:]
    resume = shlex.split(last[len(prefix):])
    assert resume[0] == "expertcache" and resume[1:] == args[:-1]  # the same command, less --overwrite
    rerun = subprocess.run([sys.executable, "-m", "expertcache", *resume[1:]], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert rerun.returncode == 0, rerun.stderr
    _assert_same(Trace.load(out), uninterrupted)
