"""`expertcache trace`: capture routing from a transformers MoE model."""

from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import CaptureInterrupted, ExpertcacheError
from . import Interrupted

_err = Console(stderr=True)


def trace(
    model: Annotated[str, typer.Argument(help="Hub id or local folder of a transformers MoE model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Trace directory to write (seq2seq: one per stack inside).")],
    corpus: Annotated[Optional[list[str]], typer.Option(
        "--corpus", help="Corpus source, one domain each (file, folder, file.jsonl:FIELD, hf:..., demo). Repeatable.")] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", help="Windows per corpus source.")] = 16,
    length: Annotated[int, typer.Option("--length", "-T", help="Tokens per window (teacher-forced prefill).")] = 512,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="Generation mode: the prompt text.")] = None,
    generate: Annotated[Optional[int], typer.Option("--generate", help="Generation mode: decode steps after the prompt.")] = None,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Sample the decode (seeded) or take the argmax.")] = False,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (with --sample).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the corpus windows and of sampling.")] = 0,
    device_map: Annotated[Optional[str], typer.Option("--device-map", help="Where the model runs: cpu, cuda, cuda:1, auto (needs accelerate).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="Weights dtype: auto (the checkpoint's), float32, bfloat16, float16.")] = "auto",
    logits: Annotated[bool, typer.Option("--logits", help="Also store the full router logits [tokens, layers, E].")] = False,
    stale_gate: Annotated[bool, typer.Option("--stale-gate", help="Also store each router applied one MoE layer early.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out instead of resuming it.")] = False,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="Tokenizer to use if not the model's.")] = None,
    batch_tokens: Annotated[int, typer.Option("--batch-tokens", help="Tokens per forward pass in prefill.")] = 8192,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model's own code.")] = False,
    commit_every: Annotated[float, typer.Option(
        "--commit-every", help="Commit finished sequences at least this often (seconds): what a kill can lose.")] = 60.0,
    shard_tokens: Annotated[Optional[int], typer.Option("--shard-tokens", hidden=True)] = None,
) -> None:
    """Record which experts every token uses, over a corpus (prefill) or while generating."""
    from ..trace.capture import capture_corpus
    from ..trace.generate import capture_generation

    quiet_transformers()
    common = dict(device_map=device_map, dtype=dtype, logits=logits, stale_gate=stale_gate, overwrite=overwrite,
                  tokenizer=tokenizer, trust_remote_code=trust_remote_code, progress=True)
    if prompt is not None or generate is not None:
        if corpus:
            raise ExpertcacheError("give either --corpus (prefill) or --prompt with --generate, not both")
        if prompt is None or generate is None:
            raise ExpertcacheError("generation needs both --prompt TEXT and --generate N")
        with resumable():
            result = capture_generation(model, prompt, out, new_tokens=generate, sample=sample,
                                        temperature=temperature, seed=seed, **common)
    else:
        if not corpus:
            raise ExpertcacheError("give --corpus SOURCE (repeatable), or --prompt TEXT --generate N")
        with resumable():
            result = capture_corpus(model, corpus, out, samples=samples, length=length, seed=seed,
                                    batch_tokens=batch_tokens, shard_tokens=shard_tokens, commit_every=commit_every,
                                    **common)
    report_capture(result)
    if "text" in result.details:
        _err.print(f"generated: {result.details['text']!r}")


@contextmanager
def resumable():
    """Ctrl-C during a capture ends with what is saved and the command that resumes (status 130)."""
    try:
        yield
    except CaptureInterrupted as stop:
        same = shlex.join(["expertcache", *(arg for arg in sys.argv[1:] if arg != "--overwrite")])
        raise Interrupted(f"{stop}; resume with: {same}") from None


def quiet_transformers() -> None:
    """Our own progress bar replaces transformers' loading chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def report_capture(result) -> None:
    where = ", ".join(f"{stack}: {path}" for stack, path in result.traces.items()) if len(result.traces) > 1 else str(result.path)
    resumed = f" ({result.skipped_sequences} sequences already done)" if result.skipped_sequences else ""
    _err.print(f"wrote {where}: {result.new_tokens:,} tokens at {result.tokens_per_second:,.0f} tokens/s{resumed}")


def register(app: typer.Typer) -> None:
    """Add `trace`."""
    app.command("trace")(trace)
