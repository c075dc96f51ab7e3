"""expertcache: trace, measure, simulate and run expert offloading for MoE language models."""

from .errors import ExpertcacheError
from .trace import ModelInfo, Trace, TraceWriter

__all__ = ["ExpertcacheError", "ModelInfo", "Trace", "TraceWriter"]
__version__ = "0.1.0"
