"""The built-in demo's capture: the whole pipeline offline.

`run_demo` builds a small Qwen3-MoE-style model (toy/zoo.py) over the shipped demo tokenizer,
saves it like a hub checkpoint, captures the demo corpus and returns the trace.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..atomic import output_folder
from ..toy.zoo import DEMO_CONTEXT
from ..errors import ExpertcacheError

__all__ = ["check_demo_args", "run_demo"]


def check_demo_args(out: str | os.PathLike, samples: int, length: int) -> Path:
    """The demo's output folder, once its arguments are known to be usable (before any work)."""
    out = output_folder(out)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ExpertcacheError(f"samples (windows per demo domain) must be at least 1, got {samples!r}")
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= DEMO_CONTEXT:
        raise ExpertcacheError(f"length (tokens per window) must be in 2..{DEMO_CONTEXT} (consecutive tokens, within "
                               f"the demo model's context), got {length!r}")
    return out


def run_demo(out: str | os.PathLike = "expertcache-demo", *, samples: int = 8, length: int = 256, seed: int = 0,
             overwrite: bool = False, progress: bool = False):
    """Build the demo model in OUT/model (once), capture the demo corpus into OUT/trace.

    Re-running resumes: the model is reused and finished sequences are skipped; `overwrite`
    captures the trace afresh (other settings on an existing trace need it).
    """
    from ..toy.zoo import build_demo_model
    from .capture import capture_corpus
    from .corpus import demo_tokenizer

    out = check_demo_args(out, samples, length)
    model_dir = out / "model"
    if not (model_dir / "config.json").is_file():  # built aside, then renamed: a kill never leaves half a model
        tokenizer = demo_tokenizer()
        partial = out / f".model.tmp-{os.getpid()}"
        build_demo_model(partial, tokenizer=tokenizer, seed=seed)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(partial, model_dir)
    return capture_corpus(model_dir, ["demo"], out / "trace", samples=samples, length=length, seed=seed,
                          overwrite=overwrite, progress=progress)
