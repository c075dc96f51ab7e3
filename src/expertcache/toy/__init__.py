"""Toy-model lab: train small MoE models that differ in one factor and measure what makes routing local.

`train` builds a Hugging Face MoE from a ToyConfig (a preset or a JSON file) and trains it on
the demo corpus, resumably, logging locality against chance; `run_study` trains the preset grid,
traces every model on held-out text and writes a report comparing the variants with the
local-routing-consistency study's findings. docs/toy.md describes both.
"""

from .config import ToyConfig, read_config_file
from .presets import GRID, PRESETS, preset
from .study import run_study
from .train import TrainResult, train

__all__ = ["GRID", "PRESETS", "ToyConfig", "TrainResult", "preset", "read_config_file", "run_study", "train"]
