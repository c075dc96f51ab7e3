"""Capture routing during generation: the prompt's prefill, then N decode steps.

A decoder-only model runs N + 1 forward passes: one over the P prompt tokens (phase PREFILL)
and N over one token each (phase DECODE); the trace holds those P + N tokens, each with the
token id the model was fed. An encoder-decoder runs its encoder once over the prompt
(encoder trace, PREFILL) and its decoder N times from the decoder start token (decoder
trace, DECODE).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..checks import check_sampling
from ..errors import ExpertcacheError
from .capture import (CaptureResult, LoadedModel, ProgressBar, committing, ensure_loaded, open_writers, optional_arrays,
                      trace_paths)
from .format import DECODE, PREFILL

__all__ = ["capture_generation"]

KEY = "generate/0"


def capture_generation(
    model: str | os.PathLike | LoadedModel,
    prompt: str,
    out: str | os.PathLike,
    *,
    new_tokens: int = 64,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    device_map: str | None = None,
    dtype: str = "auto",
    logits: bool = False,
    stale_gate: bool = False,
    overwrite: bool = False,
    tokenizer: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> CaptureResult:
    """Generate `new_tokens` decode steps after `prompt` (greedy, or sampled with `seed`)."""
    if new_tokens < 1:
        raise ExpertcacheError(f"--generate must be at least 1, got {new_tokens}")
    if not prompt:
        raise ExpertcacheError("the prompt is empty")
    check_sampling(sample, temperature, seed)
    loaded = ensure_loaded(model, device_map=device_map, dtype=dtype, trust_remote_code=trust_remote_code,
                           tokenizer=tokenizer)
    prompt_ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids  # [1, P]
    if prompt_ids.numel() == 0:
        raise ExpertcacheError("the prompt encodes to no tokens")
    settings = {"mode": "generate", "prompt": prompt, "new_tokens": new_tokens, "seed": seed,
                "sampling": f"sample(temperature={temperature})" if sample else "greedy", "dtype": dtype,
                "model": loaded.name}
    optional = optional_arrays(logits, stale_gate)
    writers = open_writers(loaded, out, capture=settings, corpus={"prompt": prompt}, domains=["prompt"],
                           optional=optional, overwrite=overwrite)
    result = CaptureResult(Path(out), trace_paths(out), 0, 0.0)
    with committing(writers, [KEY], out):
        if all(KEY in w.done_keys for w in writers.values()):
            result.skipped_sequences = 1
            return result
        P = prompt_ids.shape[1]
        steps = new_tokens if loaded.is_seq2seq else new_tokens + 1  # forward passes = tokens generated
        eos = loaded.tokenizer.eos_token_id
        options = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=sample,
                       pad_token_id=eos if eos is not None else 0)
        if sample:
            options.update(temperature=temperature, top_k=None, top_p=None)
        torch.manual_seed(seed)
        with loaded.recorder(logits=logits, stale_gate=stale_gate) as recorder, \
                ProgressBar(progress, steps + loaded.is_seq2seq, "generating", "forward passes") as bar:  # + the encoder
            t0 = time.perf_counter()
            with torch.inference_mode():
                sequences = loaded.model.generate(
                    prompt_ids.to(loaded.input_device), streamer=_Ticker(bar, t0, skip_first=not loaded.is_seq2seq),
                    **options)[0].cpu().numpy()  # [P + steps] or [1 + steps] (seq2seq)
            result.seconds = time.perf_counter() - t0
            routed = {stack: recorder.take(stack) for stack in writers}
        if loaded.is_seq2seq:
            fed = {"encoder": (prompt_ids[0].numpy(), PREFILL), "decoder": (sequences[:new_tokens], DECODE)}
        else:
            phase = np.r_[np.full(P, PREFILL), np.full(new_tokens, DECODE)].astype(np.uint8)
            fed = {"decoder": (sequences[:P + new_tokens], phase)}
        for stack, writer in writers.items():
            tokens, phase = fed[stack]
            arrays = routed[stack]
            if len(arrays["experts"]) != len(tokens):
                raise ExpertcacheError(f"the {stack} recorded {len(arrays['experts'])} tokens for {len(tokens)} fed; "
                                       "generation did not run one forward pass per token")
            writer.add_sequence(arrays["experts"], arrays["weights"], tokens=tokens, phase=phase, domain="prompt",
                                key=KEY, **{n: arrays[n] for n in optional})
        result.new_tokens = int(sum(len(fed[s][0]) for s in writers))
        generated = sequences[P:] if not loaded.is_seq2seq else sequences[1:]
        result.details["text"] = loaded.tokenizer.decode(generated[:new_tokens])
        return result


class _Ticker:
    """A generation streamer that only advances the progress bar."""

    def __init__(self, bar, t0: float, skip_first: bool):
        self.bar, self.t0, self.skip, self.count = bar, t0, skip_first, 0

    def put(self, value) -> None:
        if self.skip:  # decoder-only generate first streams the prompt itself
            self.skip = False
            return
        self.count += 1
        self.bar(1, self.count / max(time.perf_counter() - self.t0, 1e-9))

    def end(self) -> None:
        pass
