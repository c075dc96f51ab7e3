"""--misses-on-cpu: when computing a missed expert where its weights live beats moving it.

A moved miss costs its bytes over the link before the fast device computes it; a miss computed
at the source costs at least its bytes over that memory's bandwidth (SPEC §7), plus a little per
token. For a layer call in which n tokens use the expert, the CPU takes t_1 + (n - 1) t_row
(t_1: one token, bound by reading the weights; t_row: each further token) and the move takes
bytes / link (the GPU's own compute is small beside either). So the rule is a token threshold,
fixed when the model loads: compute at the source when n < `below`. Counters then depend on
routing alone, and `simulate --misses-on-cpu-below` replays a run exactly.
"""

from __future__ import annotations

import math
import time

import torch

from ..cache.engine import EVERY_MISS
from ..errors import ExpertcacheError
from .experts import Pools

__all__ = ["RULES", "ALWAYS", "threshold", "misses_on_cpu_below"]

RULES = ("never", "auto", "always")
ALWAYS = EVERY_MISS  # every miss, whatever its token count


def threshold(expert_bytes: int, link_bandwidth: float, one_token_s: float, per_token_s: float) -> int:
    """The least token count at which moving the expert is no slower than computing it in place."""
    move = expert_bytes / link_bandwidth
    if one_token_s >= move:
        return 0
    if per_token_s <= 0:
        return ALWAYS
    return min(ALWAYS, math.ceil(1 + (move - one_token_s) / per_token_s))


def misses_on_cpu_below(rule: str | int, fast: torch.device, host: Pools | None, expert_bytes: int) -> int:
    """The token threshold for `rule` (a rule name, or the threshold itself); "auto" measures this
    machine once (about a second on a GPU)."""
    if str(rule).isdigit():
        rule = int(rule)
    elif rule not in RULES:
        raise ExpertcacheError(f"unknown --misses-on-cpu {rule!r}; choose {', '.join(RULES)} or a number of tokens")
    if rule in ("never", 0):
        return 0
    if host is None:
        raise ExpertcacheError("--misses-on-cpu computes missed experts from their copy in RAM: use --slow-tier ram")
    if isinstance(rule, int):
        return min(rule, ALWAYS)
    if rule == "always" or fast.type == "cpu":  # on the CPU a copy from RAM to RAM never pays
        return ALWAYS
    from ..cache.hwbench import host_to_device_bandwidth

    link = host_to_device_bandwidth(str(fast), mib=64)
    return threshold(expert_bytes, link, _cpu_time(host, 1), (_cpu_time(host, 33) - _cpu_time(host, 1)) / 32)


def _cpu_time(host: Pools, tokens: int, repeats: int = 5) -> float:
    """Best time of the matmuls of one expert (each matrix parameter) for `tokens` tokens, on the CPU."""
    weights = [pool[0].reshape(pool.shape[1], -1) for pool in host.tensors.values() if pool.dim() >= 3]
    inputs = [torch.ones((tokens, w.shape[0]), dtype=w.dtype) for w in weights]

    def run():
        for x, w in zip(inputs, weights):
            torch.mm(x, w)

    run()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best
