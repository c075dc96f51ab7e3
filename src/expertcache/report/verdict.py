"""Does a model suit expert offloading? A fixed rule over a trace's evidence, led by locality in
excess of chance (docs/report.md states it for users):

1. Locality: SCH(16), the hit rate of a cache of 2x the active experts that knows the next 16
   tokens, minus the same on the trace with token order shuffled inside each sequence. At
   least LOCAL (5 points) means consecutive tokens reuse experts beyond what popularity explains.
2. Size: the smallest LRU cache reaching 90 % of LRU's best hit rate (engine replay, decode),
   as a share of all experts of all MoE layers. At most SMALL (a third) is a small cache.

Suits offloading: a small cache is enough (said to come from popularity when routing is not
local). Suits only with a large cache: local routing, but the cache must hold more than a third
of the experts. Does not suit: routing no more local than chance, and no small cache is enough.
Too short to judge: sequences shorter than the 16 tokens SCH looks ahead, or a trace so short
that even a cache of every expert hits less than JUDGEABLE (most lookups are first uses), where
both tests above would pass or fail by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..units import count_text, signed_text, size_text
from .evidence import M, Evidence

__all__ = ["JUDGEABLE", "KINDS", "LOCAL", "SMALL", "Verdict", "judge"]

LOCAL = 0.05
SMALL = 1 / 3
JUDGEABLE = 0.5
SUITS, LARGE, NOT = "suits offloading", "suits offloading only with a large cache", "does not suit offloading"
TOO_SHORT = "too short to judge"
KINDS = (SUITS, LARGE, NOT, TOO_SHORT)


@dataclass(frozen=True)
class Verdict:
    kind: str  # one of KINDS
    reason: str  # one sentence: the locality figure, then the cache size it takes
    advice: tuple[str, ...]  # the recommended configuration and what to expect from it
    caveats: tuple[str, ...]  # what limits the figures (short trace, one sequence, sampled replay)

    @property
    def headline(self) -> str:
        return f"{self.kind}: {self.reason}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "reason": self.reason, "advice": list(self.advice), "caveats": list(self.caveats)}


def judge(ev: Evidence) -> Verdict:
    """Apply the rule (module docstring) to one trace's evidence."""
    local = ev.sch_excess >= LOCAL
    share = ev.expert_share(ev.advice.budget_x)
    locality = (f"a cache of 2x the active experts that knows the next {count_text(ev.m, 'token')} hits {ev.sch:.1%}, "
                f"{signed_text(100 * ev.sch_excess)} points over shuffled tokens")
    size = f"reaching 90% of the best hit rate takes a cache of {share:.0%} of the experts"
    if ev.m < M:
        kind, reason = TOO_SHORT, (f"the longest sequence has {count_text(ev.m, 'token')}, fewer than the {M} "
                                   "that locality is judged over")
    elif ev.advice.best_hit_rate < JUDGEABLE:
        kind, reason = TOO_SHORT, (f"even a cache of every expert hits only {ev.advice.best_hit_rate:.1%}: most lookups "
                                   "are an expert's first use, so the trace shows too little reuse to size a cache")
    elif share <= SMALL:
        kind = SUITS
        reason = (f"consecutive tokens reuse experts ({locality}), and {size}" if local else
                  f"a few experts take most of the traffic, not locality ({locality}); {size}, "
                  "and a fixed cache of the most used experts would do about as well")
    elif local:
        kind, reason = LARGE, f"routing is local ({locality}), but {size}"
    else:
        kind, reason = NOT, f"routing is no more local than chance ({locality}), and {size}"
    return Verdict(kind, reason, _advice(ev), _caveats(ev))


def _advice(ev: Evidence) -> tuple[str, ...]:
    c = ev.recommended
    k, L = ev.model.top_k, ev.model.num_moe_layers
    slots = math.floor(c.budget_x * k * L + 1e-9)  # whole experts that fit
    gib = "size unknown (the trace records no expert sizes)" if c.budget_bytes is None else size_text(c.budget_bytes)
    lines = [f"cache {count_text(slots, 'expert')} = {c.budget_x:.1f}x the {k * L} active experts of a token ({k} per MoE layer) = {gib}",
             f"policy {c.policy.upper()}, " + ("no prefetching" if c.prefetch is None else f"{c.prefetch} prefetching"),
             f"expected hit rate {c.hit_rate:.1%} (engine replay, every token a decode step"
             + ("" if (c.policy, c.prefetch) == ("lru", None) else f"; LRU alone: {ev.advice.hit_rate:.1%}") + ")",
             _speed(c)]
    if ev.at_budget is not None:
        b = ev.at_budget
        lines.append(f"at your budget ({b.budget_bytes / 2**20:.0f} MiB = {b.budget_x:.1f}x the active experts): "
                     f"hit rate {b.hit_rate:.1%}" + ("" if b.tokens_per_s is None else f", {b.tokens_per_s:.2f} decode tokens/s"))
    elif ev.budget_note:
        lines.append(f"your budget: {ev.budget_note}")
    return tuple(lines)


def _speed(c) -> str:
    if c.tokens_per_s is not None:
        return f"expected decode speed at most {c.tokens_per_s:.2f} tokens/s on the hardware profile ({c.bound}-bound)"
    if c.budget_bytes is None:
        return "decode speed unknown: the trace records no expert sizes"
    return "decode speed: give --profile (made by `expertcache bench-hw --out hw.json`) for a tokens/s estimate"


def _caveats(ev: Evidence) -> tuple[str, ...]:
    out = []
    if ev.advice.best_hit_rate < 0.9:
        out.append(f"short trace ({count_text(ev.tokens, 'token')}): even a cache of every expert hits only {ev.advice.best_hit_rate:.1%}, "
                   "because each expert's first use is a miss, so the cache sizes above are rough")
    if ev.sequences == 1:
        out.append("one sequence: no confidence interval (intervals resample whole sequences)")
    native = ev.model.extra.get("native_top_k")
    if native and native != ev.model.top_k:
        out.append(f"the routing was recorded with k = {ev.model.top_k}, but the model routes each token to {native} "
                   "experts per MoE layer: the stock model looks up more experts per token than these figures count")
    if ev.engine_tokens < ev.tokens:
        out.append(f"engine replays use the first {ev.engine_tokens} of {ev.tokens} tokens")
    return tuple(out)
