"""expertcache: trace, measure, simulate and run expert offloading for MoE language models.

The public API, by stage:
- trace:    Trace, TraceWriter, ModelInfo, open_trace, capture_corpus, capture_generation,
            load_model, run_demo
- locality: curves, srp, analyze (more in expertcache.locality)
- cache:    simulate, sweep, recommend_budget, predict_throughput, bench_hw (more in
            expertcache.cache)
- runtime:  offload, stats, close
- report:   write_report (verdicts and figures; more in expertcache.report)

Names are imported on first use, so `import expertcache` (and every CLI command) does not pay
for torch or numba until it needs them.
"""

from importlib import import_module

from .errors import CaptureInterrupted, ExpertcacheError
from .trace import ModelInfo, Trace, TraceWriter, open_trace

_LAZY = {
    "capture_corpus": "expertcache.trace.capture",
    "load_model": "expertcache.trace.capture",
    "capture_generation": "expertcache.trace.generate",
    "run_demo": "expertcache.trace.demo",
    "HitCurves": "expertcache.locality",
    "SRPReport": "expertcache.locality",
    "analyze": "expertcache.locality",
    "curves": "expertcache.locality",
    "srp": "expertcache.locality",
    "POLICIES": "expertcache.cache",
    "PREFETCHERS": "expertcache.cache",
    "HardwareProfile": "expertcache.cache",
    "PrefetchConfig": "expertcache.cache",
    "SimulationResult": "expertcache.cache",
    "bench_hw": "expertcache.cache",
    "build_stream": "expertcache.cache",
    "get_policy": "expertcache.cache",
    "predict_throughput": "expertcache.cache",
    "recommend_budget": "expertcache.cache",
    "simulate": "expertcache.cache",
    "sweep": "expertcache.cache",
    "offload": "expertcache.runtime",
    "stats": "expertcache.runtime",
    "close": "expertcache.runtime",
    "write_report": "expertcache.report",
}
_RENAMED = {"register_policy": ("expertcache.cache", "register")}

__all__ = ["CaptureInterrupted", "ExpertcacheError", "ModelInfo", "Trace", "TraceWriter", "open_trace", *_LAZY, *_RENAMED]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
    elif name in _RENAMED:
        module, attribute = _RENAMED[name]
        value = getattr(import_module(module), attribute)
    else:
        raise AttributeError(f"module 'expertcache' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
