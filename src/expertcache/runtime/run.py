"""`run`: load a model offloaded, generate from one prompt, and say what the cache did.

The whole run in one call for the command line and the demo: the model's own tokenizer and
chat template, greedy or sampled decoding, a clean stop on Ctrl-C: the token being computed is
finished, generation stops there, and the text, the counters and the trace all end at that
token (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..checks import check_sampling
from ..errors import ExpertcacheError
from ..trace.capture import context_length
from .loading import read_config
from .offload import OffloadStats, close, local_folder, offload, stats

__all__ = ["RunResult", "run"]


@dataclass
class RunResult:
    text: str  # the generated continuation
    token_ids: list[int]  # prompt + generated
    stats: OffloadStats
    interrupted: bool = False
    stop_signal: int = 0  # the signal that ended generation early (SIGINT or SIGTERM), else 0

    def to_json(self) -> dict:
        return {"text": self.text, "interrupted": self.interrupted, **self.stats.to_json()}


def run(model: str | os.PathLike, prompt: str, generate: int, *, sample: bool = False, temperature: float = 1.0,
        seed: int = 0, chat: bool = True, ignore_eos: bool = False, **offload_options) -> RunResult:
    """Generate up to `generate` tokens after `prompt` with the experts offloaded (see `offload`):
    fewer where the model ends its text (an end-of-sequence token of its generation config), or
    exactly `generate` with `ignore_eos` (for measurements)."""
    import transformers

    if generate < 1:
        raise ExpertcacheError(f"--generate must be >= 1, got {generate}")
    check_sampling(sample, temperature, seed)
    # the prompt is checked before the model loads (and before a --trace folder is made)
    folder = local_folder(model)
    config = read_config(folder)  # a broken config.json is named as such, not as a tokenizer problem
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExpertcacheError(f"no usable tokenizer in {model}: {str(e).splitlines()[0]}") from None
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        hint = f" (the tokenizer of {model} knows {len(tokenizer)} tokens: are its tokenizer files missing?)" \
            if len(tokenizer) < 256 else ""
        raise ExpertcacheError("the prompt is empty after tokenization" + hint)
    vocab = getattr(config.get_text_config(), "vocab_size", None)
    if vocab and int(ids.max()) >= vocab:  # the embedding would index past its rows
        raise ExpertcacheError(f"the prompt holds token {int(ids.max())}, but {model} has {vocab} embeddings: "
                               "its tokenizer and its model disagree")
    context = context_length(config)
    if context and ids.shape[1] + generate > context:
        raise ExpertcacheError(f"the prompt ({ids.shape[1]} tokens) and --generate {generate} exceed the model's "
                               f"context of {context} tokens")
    offloaded = offload(folder, **offload_options)
    try:
        torch.manual_seed(seed)
        options = dict(max_new_tokens=generate, min_new_tokens=generate if ignore_eos else None, do_sample=sample,
                       pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        if sample:
            options["temperature"] = temperature
        stop = _StopOnSignal()
        with stop.installed(), torch.no_grad():
            out = offloaded.generate(ids, stopping_criteria=[stop], **options)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return RunResult(text, out[0].tolist(), stats(offloaded), stop.signum != 0, stop.signum)
    finally:
        close(offloaded)


class _StopOnSignal:
    """A stopping criterion that ends generation after the token in progress once Ctrl-C (or
    SIGTERM, a scheduler's stop) came; a second one stops at once."""

    STOPS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = 0

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.signum != 0, dtype=torch.bool, device=input_ids.device)

    def __deepcopy__(self, memo):  # generate() copies its criteria; the flag must stay shared
        return self

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_stop(signum, frame):
            if self.signum:  # the second one: stop now
                raise KeyboardInterrupt
            self.signum = signum

        previous = {s: signal.signal(s, on_stop) for s in self.STOPS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@dataclass
class Verification:
    """An offloaded run checked against the plain model and against the simulator."""

    tokens: int
    same_tokens: bool
    measured_hit_rate: float
    simulated_hit_rate: float
    stats: OffloadStats


def verify(model: str | os.PathLike, prompt_ids: list[int], generate: int, trace: str | os.PathLike,
           **offload_options) -> Verification:
    """Greedy-generate with the experts offloaded and with the plain model (same experts
    implementation), then replay the run's trace in `simulate` under strict accounting."""
    import transformers

    from ..cache.simulate import simulate

    ids = torch.tensor([prompt_ids])
    plain = transformers.AutoModelForCausalLM.from_pretrained(
        model, experts_implementation=offload_options.get("experts_implementation")).eval()
    with torch.no_grad():
        want = plain.generate(ids, max_new_tokens=generate, min_new_tokens=generate, do_sample=False)
    del plain
    offloaded = offload(model, trace=trace, **offload_options)
    try:
        with torch.no_grad():
            got = offloaded.generate(ids, max_new_tokens=generate, min_new_tokens=generate, do_sample=False)
        s = stats(offloaded)
    finally:
        close(offloaded)
    budget = {k: offload_options[k] for k in ("budget_mib", "budget_slots", "budget_x") if offload_options.get(k) is not None}
    replay = simulate(trace, offload_options.get("policy", "lru"), offload_options.get("scope"),
                      prefetch=offload_options.get("prefetch"), accounting="strict", **budget)
    return Verification(generate, got.tolist() == want.tolist(), s.hit_rate, replay.hit_rate, s)
