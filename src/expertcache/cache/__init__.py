"""Cache simulation: policies, the engine replay loop, prefetchers, sizing and the throughput model.

The policy kernels (`kernels.on_access / on_insert / on_evict / victim` over a `PolicyState`)
are what the offloading runtime drives too; `simulate` drives them over a whole trace at once.
"""

from .budget import MIB, cycle_size
from .hwbench import bench_hw
from .policies import POLICIES, Policy, get_policy, register
from .prefetch import PREFETCHERS, PrefetchConfig, Prefetcher, PrefetchReport, register_prefetcher
from .simulate import SimulationResult, simulate
from .sizing import Advice, budget_ladder, recommend_budget
from .state import PolicyState
from .stream import LookupStream, build_stream
from .sweep import sweep, write_sweep
from .throughput import HardwareProfile, ThroughputEstimate, fit_link, predict_throughput

__all__ = [
    "MIB", "POLICIES", "PREFETCHERS", "Advice", "HardwareProfile", "LookupStream", "Policy", "PolicyState",
    "PrefetchConfig", "PrefetchReport", "Prefetcher", "SimulationResult", "ThroughputEstimate", "bench_hw",
    "budget_ladder", "build_stream", "cycle_size", "fit_link", "get_policy", "predict_throughput", "recommend_budget", "register",
    "register_prefetcher", "simulate", "sweep", "write_sweep",
]
