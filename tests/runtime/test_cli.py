"""`expertcache run` from the command line: text, summary, JSON contract, trace, errors."""

import json
import os
import subprocess
import sys

import pytest

from expertcache.trace.corpus import demo_tokenizer
from expertcache.toy.zoo import build_tiny_model


def cli(*args):
    return subprocess.run([sys.executable, "-c", "from expertcache.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tokenizer = demo_tokenizer()
    return build_tiny_model("qwen3_moe", tmp_path_factory.mktemp("m") / "model", vocab_size=len(tokenizer),
                            tokenizer=tokenizer)


def test_run_json_counters_equal_simulate_json(model, tmp_path):
    trace = tmp_path / "run.trace"
    p = cli("run", model, "--prompt", "def main():\n    return", "--generate", 8, "--ignore-eos", "--budget-slots", 8,
            "--scope", "layer", "--prefetch", "frequency", "--trace", trace, "--json")
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)
    assert isinstance(run["text"], str) and run["timings"]["decode_tokens"] == 7
    q = cli("simulate", trace, "--budget-slots", 8, "--scope", "layer", "--prefetch", "frequency",
            "--accounting", "strict", "--json")
    assert q.returncode == 0, q.stderr
    sim = json.loads(q.stdout)
    assert {k: run[k] for k in sim} == sim  # every field of simulate's JSON, the prefetch report's too


def test_run_with_misses_on_cpu_replays_with_its_threshold(model, tmp_path):
    trace = tmp_path / "run.trace"
    p = cli("run", model, "--prompt", "def main():\n    return", "--generate", 8, "--budget-x", 1, "--slow-tier", "ram",
            "--misses-on-cpu", 3, "--trace", trace)
    assert p.returncode == 0, p.stderr
    assert "computed on the CPU" in p.stderr and "--misses-on-cpu-below 3" in p.stderr
    p = cli("run", model, "--prompt", "def main():\n    return", "--generate", 8, "--budget-x", 1, "--slow-tier", "ram",
            "--misses-on-cpu", 3, "--json")
    run = json.loads(p.stdout)
    q = cli("simulate", trace, "--budget-x", 1, "--accounting", "strict", "--misses-on-cpu-below", 3, "--json")
    sim = json.loads(q.stdout)
    assert run["misses_on_cpu_below"] == 3 and 0 < run["misses_on_cpu"] < run["lookups"] - run["hits"]
    assert {k: run[k] for k in sim} == sim
    assert "misses computed where the weights live" in cli("simulate", trace, "--budget-x", 1,
                                                           "--misses-on-cpu-below", 3).stdout


def test_run_prints_text_and_summary(model, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The cache")
    p = cli("run", model, "--prompt-file", prompt, "--generate", 4, "--budget-x", 1)
    assert p.returncode == 0, p.stderr
    assert "hit rate" in p.stderr and "peak RSS" in p.stderr
    assert "slots on cpu" in p.stderr and "one per expert" not in p.stderr
    p = cli("run", model, "--prompt-file", prompt, "--generate", 2, "--budget-mib", 1e12)
    assert "GiB = 32 slots, one per expert on cpu" in p.stderr  # capped, and says so


def test_the_summary_says_when_most_prefetches_go_unused(model):
    """At 1x the previous-token prefetcher mostly fetches experts that leave before use (9 of 56 used
    here): the summary says so, in numbers and in words."""
    p = cli("run", model, "--prompt", "def main():\n    return", "--generate", 8, "--ignore-eos", "--budget-x", 1,
            "--prefetch", "previous", "--json")
    pf = json.loads(p.stdout)["prefetch"]
    assert pf["issued"] > 2 * pf["used"] > 0  # the case this test is about
    p = cli("run", model, "--prompt", "def main():\n    return", "--generate", 8, "--ignore-eos", "--budget-x", 1,
            "--prefetch", "previous")
    assert f"issued {pf['issued']}, used {pf['used']} ({pf['used'] / pf['issued']:.0%} used)" in p.stderr
    assert "most prefetched experts went unused" in p.stderr
    p = cli("run", model, "--prompt", "def main():\n    return", "--generate", 8, "--budget-slots", 8)
    assert p.returncode == 0 and "prefetch" not in p.stderr


@pytest.mark.parametrize("args,message", [
    (["--prompt", "x", "--generate", 4, "--budget-slots", 2], "gives a pool 2 expert slots; one layer call needs 4 "
                                                               "experts: raise the budget"),
    (["--prompt", "x", "--generate", 4, "--budget-slots", 1], "gives a pool 1 expert slot;"),
    (["--generate", 4, "--budget-slots", 8], "exactly one of --prompt"),
    (["--prompt", "x", "--generate", 0, "--budget-slots", 8], "--generate must be"),
    (["--prompt", "x", "--generate", 10**9, "--budget-slots", 8], "exceed the model's context of"),  # ran for hours
    (["--prompt", "x", "--budget-slots", 8, "--policy", "nope"], "'nope' (no such policy)"),
    (["--prompt", "x", "--budget-slots", 8, "--misses-on-cpu", "auto"], "use --slow-tier ram"),
    (["--prompt", "x", "--budget-slots", 8, "--seed", 2**64], "--seed must be an integer in 0.."),  # a traceback
    (["--prompt", "x", "--budget-slots", 8, "--seed", -1], "--seed must be an integer in 0.."),
    (["--prompt", "x", "--budget-slots", 8, "--sample", "--temperature", "inf"], "a finite number > 0"),  # exit 0
])
def test_run_errors_are_one_line(model, args, message):
    p = cli("run", model, *args)
    assert p.returncode == 2
    assert p.stderr.startswith("error:") and message in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_file_or_a_broken_config_given_as_the_model_is_named_as_such(model, tmp_path):
    """A file as MODEL was a traceback in `trace`; a config.json that is not JSON was blamed on the tokenizer."""
    for command, extra in (("run", ["--budget-slots", 8]), ("trace", ["--out", tmp_path / "t"])):
        p = cli(command, model / "config.json", "--prompt", "x", "--generate", 2, *extra)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert p.stderr.startswith("error:") and "config.json is a file; give the model's folder" in p.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).symlink_to(f)
    (broken / "config.json").unlink()
    (broken / "config.json").write_text('{"model_type": ')
    p = cli("run", broken, "--prompt", "x", "--generate", 2, "--budget-slots", 8)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert p.stderr.startswith(f"error: {broken / 'config.json'}:") and "tokenizer" not in p.stderr


def test_a_prompt_beyond_the_context_is_refused_before_the_model_loads(model, tmp_path):
    p = cli("run", model, "--prompt", "x", "--generate", 10**9, "--budget-slots", 8, "--trace", tmp_path / "t")
    assert p.returncode == 2 and "exceed the model's context of" in p.stderr
    assert not (tmp_path / "t").exists()  # was left behind, unfinished


def test_a_folder_without_tokenizer_files_is_a_one_line_error(tmp_path):
    """transformers builds an empty tokenizer from the config alone; the error says so."""
    path = build_tiny_model("qwen3_moe", tmp_path / "model", seed=1)
    p = cli("run", path, "--prompt", "def f(x):", "--generate", 2, "--budget-slots", 8)
    assert p.returncode == 2
    assert p.stderr.startswith("error:") and "tokenizer files missing" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_tokenizer_larger_than_the_models_vocabulary_is_a_one_line_error(tmp_path):
    """A tokenizer of 4 096 tokens beside a model of 512 embeddings: the embedding raised an
    IndexError (a traceback)."""
    path = build_tiny_model("qwen3_moe", tmp_path / "model", seed=1, tokenizer=demo_tokenizer())
    p = cli("run", path, "--prompt", "def f(x): return x", "--generate", 2, "--budget-slots", 8)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "has 512 embeddings: its tokenizer and its model disagree" in p.stderr


@pytest.mark.parametrize("stop, status, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_ctrl_c_stops_after_the_current_token_with_counters_and_trace_consistent(model, tmp_path, stop, status, said):
    # SIGTERM (a scheduler's stop) used to kill the process: the routing recorded so far was lost.
    import signal
    import time

    trace = tmp_path / "run.trace"
    child = subprocess.Popen([sys.executable, "-c", "from expertcache.cli import main; main()", "run", str(model),
                              "--prompt", "x = 1", "--generate", "1500", "--ignore-eos", "--budget-slots", "8", "--prefetch",
                              "previous", "--trace", str(trace), "--json", "--raw"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not trace.exists() and child.poll() is None:  # the trace folder appears once the model is loaded
        time.sleep(0.05)
    time.sleep(1.5)  # well into generation
    child.send_signal(getattr(signal, stop))
    out, err = child.communicate(timeout=120)
    assert child.returncode == status, err
    assert "Traceback" not in err and f"{said}: the tokens so far are shown" in err
    run = json.loads(out)
    assert run["interrupted"] and 0 < run["timings"]["decode_tokens"] < 1499
    q = cli("simulate", trace, "--budget-slots", 8, "--prefetch", "previous", "--accounting", "strict", "--json")
    assert q.returncode == 0, q.stderr
    sim = json.loads(q.stdout)
    for key in ("lookups", "hits", "decode_lookups", "bytes_read"):
        assert run[key] == sim[key], key


def test_generation_stops_at_the_models_end_of_sequence_token_unless_told_not_to(model, tmp_path):
    import shutil

    import transformers

    args = ("--prompt", "def main():", "--raw", "--generate", 8, "--budget-x", 1, "--json")
    first = json.loads(cli("run", model, *args).stdout)
    assert first["timings"]["decode_tokens"] == 7  # no end-of-sequence token among these 8
    tokenizer = transformers.AutoTokenizer.from_pretrained(model)
    third = tokenizer(first["text"], add_special_tokens=False)["input_ids"][2]
    ended = tmp_path / "ended"
    shutil.copytree(model, ended)
    config = transformers.GenerationConfig.from_pretrained(ended)
    config.eos_token_id = [third]  # the model's own stop token, as a chat model's end of turn
    config.save_pretrained(ended)
    assert json.loads(cli("run", ended, *args).stdout)["timings"]["decode_tokens"] == 2  # was 7: ran past it
    assert json.loads(cli("run", ended, *args, "--ignore-eos").stdout)["timings"]["decode_tokens"] == 7


def test_a_double_ctrl_c_while_loading_exits_130_without_a_traceback(model):
    import signal
    import time

    child = subprocess.Popen([sys.executable, "-c", "from expertcache.cli import main; main()", "run", str(model),
                              "--prompt", "x", "--generate", "50", "--budget-slots", "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)  # importing and loading
    child.send_signal(signal.SIGINT)
    time.sleep(0.05)  # the second one came while the first was unwinding: a death by SIGINT (-2) before
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")


def test_run_trace_never_replaces_what_is_not_an_earlier_runs_trace(model, tmp_path):
    """A run's trace replaces the trace of an earlier run, and refuses every other existing path."""
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "thesis.txt").write_text("mine")
    args = ("run", model, "--prompt", "def f():", "--generate", 2, "--budget-x", 1)
    for out in (keep, keep / "thesis.txt", ".", ""):
        p = subprocess.run([sys.executable, "-c", "from expertcache.cli import main; main()", *map(str, args),
                            "--trace", str(out)], capture_output=True, text=True, cwd=keep)
        assert p.returncode == 2 and "is not a trace of `expertcache run`" in p.stderr, (out, p.stderr)
        assert (keep / "thesis.txt").read_text() == "mine"
    trace = tmp_path / "run.trace"
    assert cli(*args, "--trace", trace).returncode == 0
    assert cli(*args, "--generate", 3, "--trace", trace).returncode == 0  # its own earlier trace: replaced
    assert json.loads(cli("simulate", trace, "--budget-x", 1, "--json").stdout)["lookups"] > 0
    captured = json.loads((trace / "manifest.json").read_text())
    captured["capture"]["source"] = "capture"  # as if another command had written it
    (trace / "manifest.json").write_text(json.dumps(captured))
    p = cli(*args, "--trace", trace)
    assert p.returncode == 2 and "is not a trace of `expertcache run`" in p.stderr
