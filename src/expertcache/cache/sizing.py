"""Sizing advice: the smallest budget that is enough (warnings for too-small budgets live in
budget.py, so every simulation can carry them)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from ..errors import ExpertcacheError
from ..trace.opening import open_trace
from .policies import Policy, resolve_policy
from .simulate import check_accounting, simulate
from .stream import LookupStream, stream_for

__all__ = ["Advice", "budget_ladder", "recommend_budget"]

LADDER = (0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # budgets tried first, x active experts


def budget_ladder(trace) -> list[float]:
    """Budgets (multiples of the active experts) from half a token cycle to every expert of
    every layer, none below one expert: the points `recommend_budget` tries before it bisects,
    and a report plots."""
    trace = open_trace(trace)
    full_x = trace.num_experts / trace.top_k  # every expert of every layer fits
    one = one_expert_x(trace)
    return [x for x in LADDER if one <= x < full_x] + [full_x]


def one_expert_x(trace) -> float:
    """The smallest budget that holds the largest expert, as a multiple of the active experts
    (smaller ones hold nothing, though published accounting would still count hits)."""
    sizes = trace.model.expert_bytes
    if sizes:
        return max(sizes) / (trace.top_k * sum(sizes))
    return 1 / (trace.num_moe_layers * trace.top_k)


@dataclass(frozen=True)
class Advice:
    policy: str
    scope: str
    fraction: float
    best_hit_rate: float  # hit rate with an unlimited cache (only cold misses)
    budget_x: float  # recommended budget as a multiple of the active experts
    budget_bytes: int | None
    budget_slots: int | None
    hit_rate: float
    accounting: str  # "published" or "strict", as in simulate
    curve: list[tuple[float, float]] = field(default_factory=list)  # (budget_x, hit rate) explored

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def recommend_budget(trace, policy: "str | Policy" = "lru", fraction: float = 0.9, scope: str | None = None, *,
                     stream: LookupStream | None = None, accounting: str = "published") -> Advice:
    """Smallest budget (multiple of the active experts, to 1 % of a cycle) reaching `fraction`
    of the best achievable hit rate of `policy`, every replay under `accounting` (see `simulate`).
    Pass `stream=build_stream(trace)` to reuse one."""
    check_accounting(accounting)
    trace = open_trace(trace)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ExpertcacheError(f"fraction must be a number in (0, 1], got {fraction!r}")
    policy, scope = resolve_policy(policy, scope)
    stream = stream_for(trace, stream)
    ladder = budget_ladder(trace)
    best = simulate(trace, policy, scope, budget_x=ladder[-1], stream=stream, accounting=accounting).hit_rate
    target = fraction * best
    curve = {}

    def rate(x):
        if x not in curve:
            curve[x] = simulate(trace, policy, scope, budget_x=x, stream=stream, accounting=accounting).hit_rate
        return curve[x]

    hi = next(x for x in ladder if rate(x) >= target)
    lo = max([x for x in ladder if x < hi], default=one_expert_x(trace))
    if rate(lo) >= target:  # lo is one expert, and it is enough
        hi = lo
    while hi - lo > 0.01:  # bisection: hit rates rise with the budget for the policies we ship
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if rate(mid) >= target else (mid, hi)
    r = simulate(trace, policy, scope, budget_x=hi, stream=stream, accounting=accounting)
    return Advice(policy.name, scope, fraction, best, hi, r.budget_bytes, r.budget_slots, r.hit_rate,
                  accounting, sorted(curve.items()))
