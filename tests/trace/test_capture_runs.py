"""Capture as a long job: resume after kill -9 and Ctrl-C, model description, user mistakes, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from expertcache.errors import CaptureInterrupted, ExpertcacheError
from expertcache.trace import Trace
from expertcache.trace.capture import capture_corpus, load_model

SMALL = dict(samples=3, length=16, batch_tokens=16, shard_tokens=32)  # 6 windows, one per forward, 2 per shard


def test_kill_9_after_the_first_shard_leaves_a_valid_trace_and_the_rerun_resumes(tiny_model, text_corpus, tmp_path):
    folder, out = tiny_model("olmoe"), tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        from expertcache.trace import writer
        commit = writer.TraceWriter.flush
        def flush_then_die(self):
            commit(self)
            if self._next_shard == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        writer.TraceWriter.flush = flush_then_die
        from expertcache.trace.capture import capture_corpus
        capture_corpus({folder!r}, {text_corpus!r}, {str(out)!r}, **{SMALL!r})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    partial = Trace.load(out)
    assert partial.num_sequences == 2

    resumed = capture_corpus(folder, text_corpus, out, **SMALL)
    assert resumed.skipped_sequences == 2 and resumed.new_tokens == 4 * 16
    fresh = capture_corpus(folder, text_corpus, tmp_path / "fresh", **SMALL)
    a, b = Trace.load(out), fresh.load()
    assert a.num_sequences == 6
    np.testing.assert_array_equal(a.experts, b.experts)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert [a.domains[i] for i in a.seq_domain] == [b.domains[i] for i in b.seq_domain]


def test_ctrl_c_commits_the_finished_sequences(tiny_model, text_corpus, tmp_path, monkeypatch):
    from expertcache.trace import recorder

    folder, out = tiny_model("olmoe"), tmp_path / "interrupted"
    take, calls = recorder.RoutingRecorder.take, []

    def take_then_interrupt(self, stack="decoder"):
        calls.append(stack)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return take(self, stack)

    monkeypatch.setattr(recorder.RoutingRecorder, "take", take_then_interrupt)
    with pytest.raises(CaptureInterrupted) as stop:
        capture_corpus(folder, text_corpus, out, **{**SMALL, "shard_tokens": 1000})
    assert (stop.value.saved, stop.value.total) == (3, 6)
    assert Trace.load(out).num_sequences == 3  # nothing was flushed before the interrupt
    monkeypatch.undo()
    assert capture_corpus(folder, text_corpus, out, **SMALL).skipped_sequences == 3
    assert Trace.load(out).num_sequences == 6


def test_other_settings_on_the_same_output_are_refused(tiny_model, text_corpus, tmp_path):
    folder = tiny_model("olmoe")
    capture_corpus(folder, text_corpus, tmp_path / "t", **SMALL)
    with pytest.raises(ExpertcacheError, match="other settings"):
        capture_corpus(folder, text_corpus, tmp_path / "t", **{**SMALL, "seed": 1})
    assert capture_corpus(folder, text_corpus, tmp_path / "t", **{**SMALL, "seed": 1}, overwrite=True).skipped_sequences == 0


def test_model_description_counts_expert_bytes_in_the_checkpoint_dtype(tiny_model, tmp_path):
    import torch
    import transformers

    # OLMoE: gate, up, down of [I=32, H=32] per expert; GPT-OSS adds the biases (2I + H).
    olmoe = load_model(tiny_model("olmoe"), need_tokenizer=False)
    assert olmoe.infos["decoder"].expert_bytes == (3 * 32 * 32 * 4,) * 2
    layer = olmoe.model.model.layers[0]
    rest = sum(p.numel() for n, p in layer.named_parameters() if not n.startswith("mlp.experts."))
    assert olmoe.infos["decoder"].dense_bytes == (rest * 4,) * 2
    gpt = load_model(tiny_model("gpt_oss"), need_tokenizer=False).infos["decoder"]
    assert gpt.expert_bytes == ((3 * 32 * 32 + 2 * 32 + 32) * 4,) * 2 and gpt.dtype == "float32"
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model("qwen3_moe"), dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    info = load_model(tmp_path / "bf16", need_tokenizer=False, dtype="float32").infos["decoder"]
    assert info.dtype == "bfloat16" and info.expert_bytes == (3 * 16 * 32 * 2,) * 2
    assert info.num_layers == 4 and info.num_experts == (16, 16) and info.top_k == 4
    assert info.extra["family"] == "Qwen3-MoE" and info.extra["capture_source"] == "experts registry"


@pytest.fixture
def dense_model(tmp_path_factory, tokenizer):
    import transformers

    folder = tmp_path_factory.mktemp("dense")
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return str(folder)


def test_user_mistakes_are_one_line_errors(tiny_model, text_corpus, tmp_path, dense_model):
    folder = tiny_model("olmoe")
    cases = [
        (dict(model=str(tmp_path / "nowhere")), "does not exist"),
        (dict(model=str(_folder_with(tmp_path / "alien", {"model_type": "no_such_family"}))), "unknown architecture"),
        (dict(model=dense_model), "no MoE layers"),
        (dict(corpus=[str(_folder_with(tmp_path / "empty", None))]), "empty|no text"),
        (dict(length=2048), "fewer than one window"),  # the tiny model's whole context
        (dict(batch_tokens=0), "batch_tokens"),
        (dict(length=10**6), "windows of 1000000 tokens exceed .* context of"),
    ]
    for change, message in cases:
        args = {"model": folder, "corpus": text_corpus, "out": tmp_path / "o", "samples": 1, "length": 16, **change}
        with pytest.raises(ExpertcacheError, match=message) as error:
            capture_corpus(args.pop("model"), args.pop("corpus"), args.pop("out"), **args)
        assert "\n" not in str(error.value)


def test_generation_and_placement_mistakes_are_one_line_errors(tiny_model, tmp_path):
    import torch

    from expertcache.trace.generate import capture_generation

    for temperature in (0.0, float("inf")):  # inf was a traceback in the sampler
        with pytest.raises(ExpertcacheError, match="temperature must be a finite number > 0"):
            capture_generation("never-loaded", "a b", tmp_path / "g", sample=True, temperature=temperature)
    with pytest.raises(ExpertcacheError, match="--seed must be an integer in 0.."):  # overflowed torch.manual_seed
        capture_generation("never-loaded", "a b", tmp_path / "g", sample=True, seed=2**64)
    if not torch.cuda.is_available():
        with pytest.raises(ExpertcacheError, match="cannot move .* to cuda") as error:
            load_model(tiny_model("olmoe"), device_map="cuda", need_tokenizer=False)
        assert "\n" not in str(error.value)


def _folder_with(folder, config):
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _cli(capsys, monkeypatch, *args) -> tuple[int, str]:
    """Run the CLI in this process: (exit status, stderr)."""
    from expertcache.cli import main

    monkeypatch.setattr(sys, "argv", ["expertcache", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_cli_entry_point_runs_a_capture(tiny_model, text_corpus, tmp_path):
    run = subprocess.run([sys.executable, "-c", "from expertcache.cli import main; main()", "trace", tiny_model("qwen3_moe"),
                          "--corpus", text_corpus[0], "--samples", "2", "--length", "16", "--out", str(tmp_path / "p")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "tokens/s" in run.stderr and Trace.load(tmp_path / "p").num_sequences == 2


def test_cli_trace_prefill_then_generate_and_errors(tiny_model, text_corpus, tmp_path, capsys, monkeypatch):
    folder = tiny_model("qwen3_moe")
    code, err = _cli(capsys, monkeypatch, "trace", folder, "--corpus", text_corpus[0], "--corpus", text_corpus[1],
                     "--samples", "2", "--length", "16", "--out", str(tmp_path / "p"), "--logits")
    assert code == 0, err
    trace = Trace.load(tmp_path / "p")
    assert trace.num_sequences == 4 and trace.logits is not None and trace.capture["mode"] == "prefill"

    code, err = _cli(capsys, monkeypatch, "trace", folder, "--prompt", "import os", "--generate", "3", "--out", str(tmp_path / "g"))
    assert code == 0, err
    assert "generated:" in err and (Trace.load(tmp_path / "g").phase == 1).sum() == 3

    for args in (("trace", str(tmp_path / "missing"), "--corpus", text_corpus[0], "--out", str(tmp_path / "x")),
                 ("trace", folder, "--out", str(tmp_path / "x")),
                 ("trace", folder, "--prompt", "hi", "--out", str(tmp_path / "x")),
                 ("trace", folder, "--corpus", text_corpus[0], "--prompt", "hi", "--generate", "2", "--out", str(tmp_path / "x"))):
        code, err = _cli(capsys, monkeypatch, *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


def test_demo_builds_its_model_once_and_captures_every_demo_domain(tmp_path):
    from expertcache.trace.demo import run_demo

    result = run_demo(tmp_path / "demo", samples=1, length=32)
    trace = result.load()
    assert trace.num_sequences == len(trace.domains) >= 4
    assert trace.model.architecture == "Qwen3MoeForCausalLM" and trace.model.num_moe_layers == 4
    assert (trace.tokens >= 0).all() and trace.capture["mode"] == "prefill"
    weights = (tmp_path / "demo" / "model" / "model.safetensors").stat().st_mtime_ns
    again = run_demo(tmp_path / "demo", samples=1, length=32)
    assert again.skipped_sequences == trace.num_sequences and again.new_tokens == 0
    assert (tmp_path / "demo" / "model" / "model.safetensors").stat().st_mtime_ns == weights


def test_seq2seq_generation_prefills_the_encoder_and_decodes_the_decoder(tiny_model, tmp_path):
    from expertcache.trace.generate import capture_generation

    result = capture_generation(tiny_model("switch_transformers"), "a b c d", tmp_path / "g", new_tokens=5)
    encoder, decoder = result.load("encoder"), result.load("decoder")
    assert (encoder.phase == 0).all() and encoder.num_tokens == len(encoder.tokens) > 0
    assert (decoder.phase == 1).all() and decoder.num_tokens == 5 and decoder.tokens[0] == 0  # decoder start


def test_ids_from_an_unsorted_top_k_are_put_in_descending_weight_order_unless_the_router_order_is_the_score():
    import torch

    from expertcache.trace.recorder import _Tap

    ids, weights = torch.tensor([[3, 1, 7], [0, 5, 2]]), torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.5]])
    tap = _Tap(block=None, slot=0, sort_by_weight=True)
    tap.note(ids, weights)
    assert tap.ids[0].tolist() == [[1, 7, 3], [2, 0, 5]]  # ties keep the router's order
    assert torch.equal(tap.weights[0], torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.2, 0.2]]))
    keep = _Tap(block=None, slot=0, sort_by_weight=False)  # PhiMoE: pick order is the score order
    keep.note(ids, weights)
    assert keep.ids[0].tolist() == ids.tolist()


def test_a_second_recorder_on_the_same_model_is_refused_and_the_first_keeps_recording(tiny_model):
    import torch

    loaded = load_model(tiny_model("olmoe"), need_tokenizer=False)
    with loaded.recorder() as first:
        with pytest.raises(ExpertcacheError, match="already recording"):
            with loaded.recorder():
                pass
        with torch.no_grad():
            loaded.model(torch.zeros((1, 5), dtype=torch.long))
        assert first.take()["experts"].shape == (5, 2, 2)
