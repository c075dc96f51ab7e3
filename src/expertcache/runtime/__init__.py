"""The offloading runtime: generate with routed experts in a bounded cache (strict capacity).

loading.py (experts indexed, not loaded) -> store.py (slow tier reads) -> cache.py (slots +
the engine step shared with the simulator) -> experts.py (stock experts forward on slots) ->
offload.py (the public `offload`, `stats`, `close`).
"""

from .offload import OffloadStats, close, offload, stats

__all__ = ["OffloadStats", "close", "offload", "stats"]
