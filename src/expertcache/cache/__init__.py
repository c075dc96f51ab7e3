"""Cache simulation: policies, the engine replay loop, prefetchers and the throughput model."""

from .policies import POLICIES, Policy, get_policy, register
from .prefetch import PREFETCHERS, PrefetchConfig, Prefetcher, register_prefetcher
from .simulate import SimulationResult, simulate
from .stream import LookupStream, build_stream

__all__ = ["POLICIES", "PREFETCHERS", "LookupStream", "Policy", "PrefetchConfig", "Prefetcher",
           "SimulationResult", "build_stream", "get_policy", "register", "register_prefetcher", "simulate"]
