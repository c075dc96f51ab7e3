"""Every number a report shows for one trace, computed once through the public metrics and the
simulator and kept, so that the verdict, the figures and report.json read the same values.

Study accounting (hit-rate curves, SRP) runs on the whole trace, one cache per MoE layer; the
engine replays (simulate, sweep, recommend_budget) run on the trace's first MAX_LOOKUPS
lookups (sample.head), every token served as a decode step, the regime where offloading costs
tokens/s. Chance levels shuffle token order inside each sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..trace import ModelInfo, Trace
from ..units import size_text
from .sample import head

__all__ = ["Choice", "Evidence", "STEPS", "gather"]

OPERATING_POINT = 2  # cache size as a multiple of the active experts: the study's headline
M = 16  # segment length of the headline SRP and SCH
M_VALUES = (4, 16, 64, 256)  # segment lengths of the SRP figure
ENGINE_POLICIES = ("lru", "lfu", "belady")  # belady knows the future: the bound, never a choice
CHOICES = ("lru", "lfu")  # policies a runtime can use, simplest first
PREFETCHERS = (None, "previous", "frequency")  # plus "stale-gate" when the trace recorded it
BIG_TRACE_TOKENS = 100_000  # from here one shuffle gives the chance level (its spread is tiny)
ROUTING_TOKENS = 96  # tokens in the routing picture
VOCABULARY_KINDS = ("input", "next")  # the token at a position, and the one after it
STEPS = ("SRP", "SRP by chance", "LRU curves", "LFU curves", "Belady curves", "SCH curves", "SCH by chance",
         "engine replays", "cache choices", "load balance", "specialization", "gating")


@dataclass(frozen=True)
class Choice:
    """One cache configuration replayed at one budget (engine accounting)."""

    policy: str
    prefetch: str | None
    budget_x: float
    budget_bytes: int | None
    hit_rate: float
    tokens_per_s: float | None  # decode bound on the hardware profile; None without one or without expert sizes
    bound: str | None  # what limits decode: "compute" or "transfer"


@dataclass
class Evidence:
    label: str
    model: ModelInfo
    tokens: int
    sequences: int
    m: int
    permutations: int
    srp: object  # locality.SRPReport over m_values, intervals when there are 2+ sequences
    srp_chance: dict  # {m: (model SRP, per-layer SRP [L])}
    study: dict  # policy ("lru", "lfu", "belady", "fsf") -> HitCurves, per layer
    sch_chance: object  # HitCurves of fsf(m) on shuffled tokens
    engine_tokens: int
    engine: list[dict]  # sweep rows, budgets as multiples of the active experts
    advice: object  # cache.Advice: smallest LRU budget reaching 90 % of LRU's best
    choices: list[Choice]  # at the advised budget, the recommended one first
    layer_hits: dict  # configuration -> [L] engine hit rate per layer at the advised budget, recommended first
    at_budget: Choice | None  # the recommended configuration at the user's --budget-mib
    balance: np.ndarray  # [L, 2] global (balance, cv)
    local_balance: np.ndarray  # [L, 2] over windows of m tokens
    vocabulary: list[dict] | None  # locality.vocabulary_specialization rows
    domains: tuple | None  # locality.domain_specialization (rate, specialization)
    weights: np.ndarray | None  # [L, K] mean weight share by rank
    usage: np.ndarray  # [L, E] requests per expert
    focus_layer: int  # the layer of the routing picture and the co-firing map
    routing: np.ndarray  # [T, K] expert ids of the focus layer, first tokens of sequence 0
    co_firing: tuple  # ([E, E] pair counts, [E, E] lift) in the focus layer
    notes: dict = field(default_factory=dict)  # figure -> why it is absent
    budget_note: str | None = None  # why --budget-mib could not be applied

    # -------------------------------------------------------------- headline figures
    def at_operating_point(self, curves) -> float:
        """Mean over layers of a per-layer hit-rate curve at a cache of 2x the active experts."""
        size = min(OPERATING_POINT * self.model.top_k, curves.per_layer.shape[1])
        return float(np.nanmean(curves.per_layer[:, size - 1]))

    @property
    def sch(self) -> float:
        return self.at_operating_point(self.study["fsf"])

    @property
    def sch_chance_2x(self) -> float:
        return self.at_operating_point(self.sch_chance)

    @property
    def sch_excess(self) -> float:
        return self.sch - self.sch_chance_2x

    @property
    def srp_model(self):
        return self.srp.results[self.m]["model"]

    @property
    def srp_excess(self) -> float:
        return self.srp_model.srp - self.srp_chance[self.m][0]

    def engine_hit_rate(self, policy: str, budget_x: float) -> float:
        """Engine hit rate of `policy` at the swept budget closest to budget_x."""
        rows = [r for r in self.engine if r["policy"] == policy]
        return min(rows, key=lambda r: abs(r["budget"] - budget_x))["hit_rate"]

    def expert_share(self, budget_x: float) -> float:
        """Share of all experts of all MoE layers that a cache of budget_x active experts holds."""
        return min(1.0, budget_x * self.model.top_k * self.model.num_moe_layers / sum(self.model.num_experts))

    @property
    def recommended(self) -> Choice:
        return self.choices[0]

    @property
    def rare(self) -> np.ndarray:
        """[L, E] rarely used experts (locality.gating.RARE): pruning candidates."""
        from ..locality import rarely_used

        return rarely_used(self.usage, self.model.num_experts)

    @property
    def top_share(self) -> np.ndarray:
        """[L] share of each layer's requests taken by its most used 10 % of experts."""
        from ..locality import top_share

        return top_share(self.usage, self.model.num_experts)


def chance_permutations(trace: Trace) -> int:
    """Shuffles averaged for a chance level: 3, or 1 on a big trace."""
    return 1 if trace.num_tokens >= BIG_TRACE_TOKENS else 3


def gather(trace: Trace, label: str, *, m: int = M, permutations: int | None = None, profile=None,
           budget_mib: float | None = None, seed: int = 0, progress=None) -> Evidence:
    """Compute every figure's numbers for `trace`; `progress(step)` is called as each of STEPS
    ends. Permutations default to `chance_permutations(trace)`."""
    from ..locality import chance_curves, chance_srp, curves, srp

    done = progress or (lambda step: None)
    longest = int(trace.seq_lengths.max())
    m = min(m, longest)
    m_values = tuple(sorted({v for v in M_VALUES if v <= longest} | {m}))
    permutations = permutations or chance_permutations(trace)
    report = srp(trace, m_values, seed=seed, resamples=1000 if trace.num_sequences > 1 else 0)
    done("SRP")
    base = chance_srp(trace, m_values, permutations=permutations, seed=seed)
    done("SRP by chance")
    study = {}
    for policy, step in (("lru", "LRU curves"), ("lfu", "LFU curves"), ("belady", "Belady curves")):
        study[policy] = curves(trace, policy, model_level=False)
        done(step)
    study["fsf"] = curves(trace, "fsf", m, model_level=False)
    done("SCH curves")
    sch_chance = chance_curves(trace, "fsf", m, permutations=permutations, seed=seed, model_level=False)
    done("SCH by chance")
    engine = _engine(trace, profile, budget_mib, done)
    specialization, gating = _specialization(trace, done), _gating(trace, done)
    notes = {**specialization.pop("notes"), **gating.pop("notes")}
    return Evidence(label, trace.model, trace.num_tokens, trace.num_sequences, m, permutations, report, base, study,
                    sch_chance, **engine, **_balance(trace, m, done), **specialization, **gating, notes=notes)


def _engine(trace: Trace, profile, budget_mib, done) -> dict:
    """Sweep, advised size, the configurations at it, and the user's budget (engine accounting)."""
    from ..cache import build_stream, budget_ladder, recommend_budget, simulate, sweep

    sample = head(trace).as_decode()
    stream = build_stream(sample)
    rows = sweep(sample, ENGINE_POLICIES, budget_ladder(sample), unit="x")
    done("engine replays")
    advice = recommend_budget(sample, "lru", 0.9, stream=stream)
    prefetchers = PREFETCHERS + (("stale-gate",) if trace.stale_gate is not None else ())
    runs = {(p, f): simulate(sample, p, budget_x=advice.budget_x, prefetch=f, stream=stream)
            for p in CHOICES for f in prefetchers}
    choices = _rank([_choice(r, advice.budget_x, p, f, profile) for (p, f), r in runs.items()])
    best = choices[0]
    shown = [(best.policy, best.prefetch)] + [(p, None) for p in CHOICES if (p, None) != (best.policy, best.prefetch)]
    layer_hits = {_name(*c): runs[c].per_layer()["hit_rate"] for c in shown}
    layer_hits["belady"] = simulate(sample, "belady", budget_x=advice.budget_x, stream=stream).per_layer()["hit_rate"]
    at_budget, budget_note = None, None
    if budget_mib is not None:
        largest = max(trace.model.expert_bytes, default=0)
        if trace.model.expert_bytes and budget_mib * 2**20 < largest:  # published accounting would still count hits
            budget_note = f"{budget_mib:g} MiB holds no expert (the largest is {size_text(largest)})"
        elif trace.model.expert_bytes:
            r = simulate(sample, best.policy, budget_mib=budget_mib, prefetch=best.prefetch, stream=stream)
            cycle = trace.top_k * sum(trace.model.expert_bytes)
            at_budget = _choice(r, r.budget_bytes / cycle, best.policy, best.prefetch, profile)
        else:
            budget_note = "the trace records no expert sizes, so a budget in MiB cannot be turned into experts"
    done("cache choices")
    return {"engine_tokens": sample.num_tokens, "engine": rows, "advice": advice, "choices": choices,
            "layer_hits": layer_hits, "at_budget": at_budget, "budget_note": budget_note}


def _name(policy: str, prefetch: str | None) -> str:
    return policy if prefetch is None else f"{policy} + {prefetch} prefetch"


def _choice(result, budget_x, policy, prefetch, profile) -> Choice:
    from ..cache import predict_throughput

    estimate = None if profile is None or result.bytes_read is None else predict_throughput(result, profile)
    return Choice(policy, prefetch, float(budget_x), result.budget_bytes, result.hit_rate,
                  None if estimate is None else estimate.decode_tokens_per_s, None if estimate is None else estimate.bound)


def _rank(choices: list[Choice]) -> list[Choice]:
    """Recommended first: the simplest configuration (list order) within 1 % of the best
    tokens/s when known, else within half a point of the best hit rate."""
    def score(c):
        return c.tokens_per_s if c.tokens_per_s is not None else c.hit_rate

    best = max(score(c) for c in choices)
    slack = 0.01 * best if choices[0].tokens_per_s is not None else 0.005
    pick = next(c for c in choices if score(c) >= best - slack)
    return [pick] + sorted((c for c in choices if c is not pick), key=score, reverse=True)


def _balance(trace: Trace, m: int, done) -> dict:
    from ..locality import global_balance, local_balance

    out = {"balance": global_balance(trace), "local_balance": local_balance(trace, (m,))[m]}
    done("load balance")
    return out


def _specialization(trace: Trace, done) -> dict:
    """Vocabulary and domain specialization where the trace can show them, else a note why not."""
    from ..locality import domain_specialization, vocabulary_specialization
    from ..locality.specialization import NO_FREQUENT_TOKEN, missing_specialization

    notes = missing_specialization(trace)
    vocabulary = None if "vocabulary" in notes else vocabulary_specialization(trace, kinds=VOCABULARY_KINDS)
    if vocabulary is not None and all(r["tokens"] == 0 for r in vocabulary):
        vocabulary, notes["vocabulary"] = None, NO_FREQUENT_TOKEN
    domains = None if "domains" in notes else domain_specialization(trace)
    done("specialization")
    return {"vocabulary": vocabulary, "domains": domains, "notes": notes}


def _gating(trace: Trace, done) -> dict:
    from ..locality import co_firing, weight_by_rank
    from ..trace.summary import expert_counts

    focus = trace.num_moe_layers // 2
    first = trace.sequence(0)
    stop = min(first.stop, first.start + ROUTING_TOKENS)
    weights = weight_by_rank(trace)
    out = {"weights": weights, "usage": expert_counts(trace), "focus_layer": focus,
           "routing": np.asarray(trace.layer_experts(focus)[first.start:stop]), "co_firing": co_firing(trace, focus),
           "notes": {} if weights is not None else {"weights": "the trace records no routing weights (all zero)"}}
    done("gating")
    return out
