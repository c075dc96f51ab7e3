"""`expertcache toy train` and `expertcache toy study`: the toy-model lab (docs/toy.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..errors import ExpertcacheError
from ..units import signed_text
from . import Interrupted
from .capture_commands import quiet_transformers

_err = Console(stderr=True, highlight=False)

toy_app = typer.Typer(help="Train small MoE models that differ in one factor and measure their locality.",
                      no_args_is_help=True, rich_markup_mode=None)

Device = Annotated[str, typer.Option("--device", help="Where to train: cpu or cuda.")]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads torch computes with (default: one per core). On a busy machine one thread can be "
                      "many times faster; the same seed gives the same weights at the same thread count.")]


def _use_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise ExpertcacheError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


@toy_app.command("train")
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the model, its checkpoint and its log.")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="A named config (smoke, base, the study's variants).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="A JSON file of config fields; a \"preset\" field in it names the preset they change.")] = None,
    minutes: Annotated[Optional[float], typer.Option("--minutes", help="Train until this many minutes in all.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Train until this many steps in all.")] = None,
    device: Device = "cpu",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the initial weights and the training batches.")] = 0,
    checkpoint_every: Annotated[float, typer.Option(
        "--checkpoint-every", help="Commit a checkpoint at least this often (seconds): what a kill can lose.")] = 60.0,
    threads: Threads = None,
) -> None:
    """Train (or resume) a toy MoE on the demo corpus; rerun the same command to resume."""
    from ..toy import PRESETS, read_config_file
    from ..toy import preset as named
    from ..toy import train as run

    if (preset is None) == (config is None):
        given = "not both" if preset is not None else f"presets: {', '.join(PRESETS)}"
        raise ExpertcacheError(f"give --preset NAME or --config FILE ({given})")
    _use_threads(threads)
    chosen = named(preset) if preset is not None else read_config_file(config, PRESETS)
    quiet_transformers()
    try:
        result = run(chosen, out, steps=steps, minutes=minutes, seed=seed, device=device,
                     checkpoint_every=checkpoint_every, progress=True)
    except KeyboardInterrupt:
        from ..toy.checkpoint import latest

        found = latest(Path(out))
        raise Interrupted(f"checkpoint of step {found[1]['step']} kept in {out}; run the same command to resume"
                          if found else "nothing was trained yet") from None
    p = result.last_probe
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    _err.print(f"wrote {out}: {result.steps} steps, {result.tokens:,} tokens in {result.seconds:.0f} s{resumed}")
    if p:
        _err.print(f"held-out loss {p['heldout_loss']:.3f}; consecutive-token overlap {p['overlap']:.3f} vs chance "
                   f"{p['overlap_chance']:.3f} (excess {signed_text(p['overlap_excess'], 3)}); log: {out / 'log.jsonl'}")


@toy_app.command("study")
def study(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the models, traces, analyses and report.")],
    minutes_per_model: Annotated[float, typer.Option("--minutes-per-model", help="Training minutes of each variant.")] = 5.0,
    device: Device = "cpu",
    variants: Annotated[Optional[str], typer.Option(
        "--variants", help="Comma-separated grid variants to run (default: all; base is always included).")] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", help="Held-out windows per domain in each trace.")] = 8,
    length: Annotated[int, typer.Option("--length", "-T", help="Tokens per traced window.")] = 256,
    threads: Threads = None,
) -> None:
    """Train the preset grid, trace each model on held-out text, write report.md (rerun to resume)."""
    from ..toy.study import run_study

    _use_threads(threads)
    quiet_transformers()
    names = None if variants is None else [v.strip() for v in variants.split(",") if v.strip()]
    try:
        report = run_study(out, minutes_per_model=minutes_per_model, device=device, variants=names, samples=samples,
                           length=length, progress=lambda line: _err.print(line))
    except KeyboardInterrupt:
        if not (out / "study.json").is_file():
            raise
        raise Interrupted(f"what each variant finished is kept in {out}; run the same command to resume") from None
    _err.print(f"report: {report}")


def register(app: typer.Typer) -> None:
    """Add `toy train` and `toy study`."""
    app.add_typer(toy_app, name="toy")
