"""The study: train every grid variant, trace it on held-out text, analyze it, write the report.

OUT/models/V      the trained model (toy.train's folder; resumes)
OUT/traces/V      its routing on held-out windows (`expertcache trace`; resumes)
OUT/analysis/V    `expertcache analyze` of that trace (SRP, SCH, overlap, balance, specialization)
OUT/results/V.json  the report's figures of V (toy.measures); written last, so a variant with
                  this file is done and a rerun skips it
OUT/report.md, OUT/figures/*.png   the comparison (toy.study_report), rewritten on every run
OUT/suitability/report.html   `expertcache report` over every variant's trace (verdicts, figures per model)
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable

from ..atomic import write_json_atomic
from ..devices import torch_device
from ..errors import ExpertcacheError
from .outdir import claim
from .presets import GRID, UNTRAINED, Variant
from .train import train

__all__ = ["ANALYZE_M", "run_study"]

ANALYZE_M = (4, 16, 64)


def run_study(out: str | os.PathLike, *, minutes_per_model: float = 5.0, device: str = "cpu",
              variants: list[str] | None = None, samples: int = 8, length: int = 256, seed: int = 0,
              resamples: int = 1000, suitability: bool = True, progress: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the grid and write OUT/report.md (and, with `suitability`, the suitability
    report of every variant's trace); returns report.md's path."""
    from .study_report import write_study_report

    say = progress or (lambda line: None)
    chosen = _variants(variants)
    if not 0 < minutes_per_model < math.inf or samples < 1 or length < 2:
        raise ExpertcacheError("--minutes-per-model, --samples and --length must be positive (length at least 2)")
    torch_device(device)  # before anything is written
    out = Path(out)
    settings = {"minutes_per_model": minutes_per_model, "device": device, "samples": samples, "length": length,
                "seed": seed, "resamples": resamples}
    claim(out, "study.json", settings, "toy study")
    results = {}
    for variant in chosen:
        done = out / "results" / f"{variant.name}.json"
        if done.is_file():
            say(f"{variant.name}: done before, skipped")
        else:
            started = time.monotonic()
            untrained = variant is UNTRAINED
            say(f"{variant.name}: {'initialising' if untrained else f'training {minutes_per_model:g} min'} ({variant.change})")
            model = out / "models" / variant.name
            train(variant.config, model, seed=seed, device=device,
                  **({"steps": 0} if untrained else {"minutes": minutes_per_model}))
            say(f"{variant.name}: tracing and analyzing held-out text")
            figures = _trace_and_measure(model, out, variant.name, samples, length, seed, resamples, device)
            write_json_atomic(done, {"variant": variant.name, "factor": variant.factor, "change": variant.change,
                                     "config": variant.config.to_dict(), "settings": settings,
                                     "wall_seconds": time.monotonic() - started, **figures})
        results[variant.name] = json.loads(done.read_text())
    if suitability:
        from ..report import write_report

        say("suitability report of every variant")
        write_report([out / "traces" / v.name for v in chosen], out / "suitability", overwrite=True)
    return write_study_report(out, results, settings, suitability)


def _variants(names: list[str] | None) -> list[Variant]:
    """The variants to run: always the untrained and the trained base, which the others are compared with."""
    if names is None:
        return [UNTRAINED, *GRID]
    known = {v.name: v for v in (UNTRAINED, *GRID)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ExpertcacheError(f"unknown variants {', '.join(unknown)}; known: {', '.join(known)}")
    return [UNTRAINED, known["base"]] + [known[n] for n in dict.fromkeys(names) if n not in ("base", "untrained")]


def _trace_and_measure(model: Path, out: Path, name: str, samples: int, length: int, seed: int, resamples: int,
                       device: str) -> dict:
    from ..locality import analyze
    from ..trace.capture import capture_corpus
    from .measures import measure

    corpus = sorted(f"{f.stem}={f}" for f in (model / "heldout").glob("*.txt"))
    with warnings.catch_warnings():  # DeepSeek-V3 without shared experts loads an empty shared MLP
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        trace = capture_corpus(model, corpus, out / "traces" / name, samples=samples, length=length, seed=seed,
                               device_map=None if device == "cpu" else device, commit_every=None).load()
    analysis = out / "analysis" / name
    analyze(trace, analysis, m=ANALYZE_M, seed=seed, resamples=resamples, overwrite=True)
    log = [json.loads(line) for line in (model / "log.jsonl").read_text().splitlines() if line]
    return {"training": {"steps": log[-1]["step"], "tokens": log[-1]["tokens"], "seconds": log[-1]["seconds"],
                         "heldout_loss": log[-1]["heldout_loss"], "log": log},
            **measure(trace, analysis, resamples)}
