"""Routing traces: the format, reading and writing, model adapters, capture and corpora."""

from .format import DECODE, PREFILL
from .model_info import ModelInfo
from .opening import open_trace
from .trace import Trace
from .writer import TraceWriter

__all__ = ["DECODE", "PREFILL", "ModelInfo", "Trace", "TraceWriter", "open_trace"]
