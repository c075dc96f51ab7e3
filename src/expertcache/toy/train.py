"""Train a toy MoE on the demo corpus: seeded, resumable to the same weights, locality logged.

DIR after a run:
    toy.json          the config and seed (a rerun with other ones is refused)
    config.json, model.safetensors, tokenizer files   the model, loadable by `from_pretrained`
                      and every expertcache command (written whenever a run ends)
    checkpoint/       the resumable state (see toy.checkpoint), itself a loadable model folder
    heldout/D.txt     each domain's held-out text, never trained on
    log.jsonl         one record per probe: training and held-out loss, locality against chance

Rerunning the same command resumes from the checkpoint; `steps` and `minutes` are totals over
all runs, so a finished run is extended by asking for more.

Shape key: B sequences, T tokens, V vocabulary.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from ..atomic import atomic_path
from ..checks import check_seed
from ..devices import torch_device
from ..errors import ExpertcacheError
from .checkpoint import TrainState, commit, latest, restore_rng
from .config import ToyConfig, hf_config
from .data import load_corpus
from .outdir import claim
from .probe import Probe
from .zoo import save_model
from .routing import balance_loss, router_logits, z_loss

__all__ = ["TrainResult", "train"]

PROBE_WINDOWS = 4  # held-out windows per domain in each probe


@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int
    tokens: int
    seconds: float  # training time over all runs
    resumed_from: int  # the step this run started at
    last_probe: dict


def train(config: ToyConfig, out: str | os.PathLike, *, steps: int | None = None, minutes: float | None = None,
          seed: int = 0, device: str = "cpu", checkpoint_every: float = 60.0, progress: bool = False) -> TrainResult:
    """Train (or resume) the model of `config` in `out` until `steps` steps or `minutes` of training.

    With neither, `config.steps`; with 0, the initialised model is saved untrained. A checkpoint is committed every `checkpoint_every` seconds
    (0: after every step), at the end, and on Ctrl-C.
    """
    import transformers

    from ..trace.corpus import demo_tokenizer

    if steps is not None and minutes is not None:
        raise ExpertcacheError("give --steps or --minutes, not both")
    if (steps is not None and steps < 0) or (minutes is not None and not 0 <= minutes < math.inf):
        raise ExpertcacheError("--steps and --minutes must be non-negative (and --minutes finite)")
    check_seed(seed, "--seed")
    if not 0 <= checkpoint_every < math.inf:
        raise ExpertcacheError(f"--checkpoint-every must be a non-negative number of seconds, got {checkpoint_every}")
    if steps is None and minutes is None:
        steps = config.steps
    out = Path(out)
    device = torch_device(device)
    unstarted = out.is_dir() and latest(out) is None and not (out / "config.json").exists()  # e.g. a run that crashed
    claim(out, "toy.json", {"config": config.to_dict(), "seed": seed}, "toy training", unstarted)
    tokenizer = demo_tokenizer()
    corpus = load_corpus(tokenizer, config.corpus_chars, config.heldout_fraction, config.seq_len, out / "heldout")
    found = latest(out)
    if found is None:
        torch.manual_seed(seed)
        with warnings.catch_warnings():  # DeepSeek-V3 without shared experts initialises an empty shared MLP
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            model = transformers.AutoModelForCausalLM.from_config(hf_config(config, len(tokenizer), tokenizer.eos_token_id))
        state = TrainState()
    else:
        with _resuming(found[0]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            model = transformers.AutoModelForCausalLM.from_pretrained(found[0], dtype=torch.float32)
            state = TrainState.from_dict(found[1])
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    if found is not None:
        with _resuming(found[0]):
            optimizer.load_state_dict(found[1]["optimizer"])
            restore_rng(found[1]["rng"])
    _truncate_log(out / "log.jsonl", state.step)
    rows, names = corpus.probe_batch(PROBE_WINDOWS, config.seq_len)
    probe = Probe(torch.from_numpy(rows).to(device), names, config.experts, config.top_k)
    loop = _Loop(config, model, optimizer, corpus, seed, device, probe, out)
    start = state.step
    last = loop.run(state, steps, None if minutes is None else minutes * 60, checkpoint_every, progress)
    save_model(model, out)
    tokenizer.save_pretrained(out)
    return TrainResult(out, state.step, state.tokens, state.seconds, start, last)


@contextmanager
def _resuming(checkpoint: Path) -> Iterator[None]:
    """A damaged or incomplete checkpoint, whatever it trips on, as a one-line error."""
    try:
        yield
    except Exception as e:
        detail = f": {str(e).splitlines()[0]}" if str(e).strip() else ""
        raise ExpertcacheError(f"{checkpoint} cannot be resumed ({type(e).__name__}{detail}); remove it to train "
                               "from the start") from None


def _truncate_log(log: Path, step: int) -> None:
    """Drop records past the checkpoint (a killed run logged them; the resumed run logs them again)."""
    if not log.is_file():
        return
    kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    with atomic_path(log) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))


def _last_record(log: Path) -> dict:
    lines = log.read_text().splitlines() if log.is_file() else []
    return json.loads(lines[-1]) if lines else {}


class _Loop:
    """The step, the probes and the checkpoints of one run."""

    def __init__(self, config: ToyConfig, model, optimizer, corpus, seed, device, probe, out: Path):
        self.c, self.model, self.optimizer, self.corpus = config, model, optimizer, corpus
        self.seed, self.device, self.probe, self.out = seed, device, probe, out
        self.sigmoid = config.family == "deepseek_v3"

    def run(self, state: TrainState, steps, seconds, checkpoint_every, progress) -> dict:
        last = self._log(state) if state.step == 0 else _last_record(self.out / "log.jsonl")
        tokens_per_step = self.c.batch_size * self.c.seq_len
        start = state.step
        with _Bar(progress, steps, seconds, state) as bar:
            saved = time.monotonic()
            try:
                while (steps is None or state.step < steps) and (seconds is None or state.seconds < seconds):
                    t0 = time.perf_counter()
                    loss = self._step(state)
                    state.step += 1
                    state.tokens += tokens_per_step
                    state.seconds += time.perf_counter() - t0
                    if state.step % self.c.probe_every == 0:
                        last = self._log(state)
                    bar(state, loss, tokens_per_step / max(time.perf_counter() - t0, 1e-9))
                    if time.monotonic() - saved >= checkpoint_every:
                        commit(self.out, self.model, self.optimizer, state)
                        saved = time.monotonic()
                if state.step > start and state.step % self.c.probe_every:  # the end of training is always probed,
                    last = self._log(state, restart_means=False)  # and a longer run's records stay the same
            finally:  # the end, Ctrl-C or an error: what was trained is kept
                if state.step > start:
                    commit(self.out, self.model, self.optimizer, state)
        return last

    def _step(self, state: TrainState) -> float:
        step = state.step
        for group in self.optimizer.param_groups:
            group["lr"] = self.c.lr * min(1.0, (step + 1) / max(self.c.warmup_steps, 1))
        ids = torch.from_numpy(self.corpus.batch(self.seed, step, self.c.batch_size, self.c.seq_len)).to(self.device)  # [B, T]
        output = self.model(input_ids=ids, output_router_logits=True)
        ce = F.cross_entropy(output.logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        logits = router_logits(output, len(ids))
        balance = balance_loss(logits, self.c.top_k, self.c.balance_scope, self.sigmoid)
        z = z_loss(logits)
        loss = ce + self.c.balance_weight * balance + self.c.z_loss_weight * z
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.loss_sums = [total + part.item() for total, part in zip(state.loss_sums, (ce, balance, z))]
        state.loss_steps += 1
        return ce.item()

    def _log(self, state: TrainState, restart_means: bool = True) -> dict:
        """Append a record: the mean losses since the last regular record, and the probe."""
        means = [total / state.loss_steps for total in state.loss_sums] if state.loss_steps else [None] * 3
        record = {"step": state.step, "tokens": state.tokens, "seconds": round(state.seconds, 3),
                  "train_loss": means[0], "balance_loss": means[1], "z_loss": means[2], **self.probe(self.model)}
        if restart_means:
            state.loss_sums, state.loss_steps = [0.0, 0.0, 0.0], 0
        with open(self.out / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        return record


class _Bar:
    """A rich progress bar over steps (or training seconds) with loss and tokens/s; or nothing."""

    def __init__(self, enabled: bool, steps, seconds, state: TrainState):
        self.enabled, self.steps, self.seconds, self.state = enabled, steps, seconds, state

    def __enter__(self):
        if not self.enabled:
            return lambda state, loss, rate: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        by_steps = self.steps is not None
        self._bar = Progress(TextColumn("training"), BarColumn(), TextColumn("{task.fields[where]}"),
                             TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                             TimeRemainingColumn())
        self._bar.start()
        task = self._bar.add_task("training", total=self.steps if by_steps else self.seconds, loss="-", rate="", where="",
                                  completed=self.state.step if by_steps else self.state.seconds)

        def update(state, loss, rate):
            self._bar.update(task, completed=state.step if by_steps else state.seconds, loss=f"{loss:.3f}",
                             rate=f"{rate:,.0f} tok/s", where=f"step {state.step}")

        return update

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.stop()
