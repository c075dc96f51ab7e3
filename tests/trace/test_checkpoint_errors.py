"""A damaged checkpoint, a missing shard and an unreachable hub are one-line errors, at once."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from expertcache.errors import ExpertcacheError
from expertcache.trace import Trace
from expertcache.trace.capture import load_model

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def _copy(tiny_model, tmp_path, name="model"):
    folder = tmp_path / name
    shutil.copytree(tiny_model("olmoe"), folder)
    return folder


def _cli(*args, env=None, cwd=None):
    base = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith(("HF_", "TRANSFORMERS_"))}
    return subprocess.run([sys.executable, "-m", "expertcache", *map(str, args)], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=300)


def test_a_truncated_safetensors_file_is_one_line_from_the_command_line(tiny_model, tmp_path):
    folder = _copy(tiny_model, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    run = _cli("trace", folder, "--corpus", "demo:math", "-n", "1", "-T", "16", "--out", tmp_path / "t")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"error: {weights} is truncated: tensor ") and "Traceback" not in run.stderr


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.write_bytes(b"\xff" * 8 + f.read_bytes()[8:]), "is not a readable safetensors file"),
    (lambda f: f.write_bytes(f.read_bytes()[:8] + b"{garbage" + f.read_bytes()[16:]), "is not a readable safetensors"),
])
def test_a_damaged_header_is_refused_before_loading(tiny_model, tmp_path, damage, message):
    folder = _copy(tiny_model, tmp_path)
    damage(folder / "model.safetensors")
    with pytest.raises(ExpertcacheError, match=message) as error:
        load_model(folder, need_tokenizer=False)
    assert "\n" not in str(error.value)


def test_a_missing_shard_is_named(tiny_model, tmp_path):
    folder = _copy(tiny_model, tmp_path)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ExpertcacheError, match=r"model-00002-of-00002\.safetensors is missing \(1 of the 2 shards"):
        load_model(folder, need_tokenizer=False)


@pytest.mark.parametrize("env, reason", [
    ({"HF_ENDPOINT": UNREACHABLE}, f"the hub \\({UNREACHABLE}\\) is unreachable from this machine"),
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
])
def test_an_uncached_hub_id_offline_fails_at_once_with_the_reason(tmp_path, env, reason):
    """No retries: the reason names the check that decided (the retrying path ends in another message)."""
    run = _cli("trace", "some-org/some-model", "--corpus", "demo:math", "--out", tmp_path / "t",
               env={"HF_HUB_CACHE": str(tmp_path / "hub"), **env})
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert re.match(f"error: cannot load some-org/some-model: {reason}, and some-org/some-model is not in the "
                    "local Hugging Face cache", run.stderr), run.stderr


def test_a_cached_hub_model_still_loads_when_the_hub_is_unreachable(tiny_model, tmp_path):
    repo, commit = tmp_path / "hub" / "models--some-org--tiny", "0" * 40  # the hub cache's layout
    shutil.copytree(tiny_model("olmoe"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    run = _cli("trace", "some-org/tiny", "--corpus", "demo:math", "-n", "1", "-T", "16", "--out", tmp_path / "t",
               env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": UNREACHABLE})
    assert run.returncode == 0, run.stderr
    assert Trace.load(tmp_path / "t").num_sequences == 1
