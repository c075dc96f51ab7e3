"""A first answer to "does this model suit expert offloading?", from one trace.

It chains the three stages at their headline settings: locality (SRP and the segment cache's
hit rate SCH at the study's 2x operating point, each against its chance level), and an engine
replay of LRU at 2x with the smallest budget that reaches 90 % of LRU's best hit rate, every
token served as a decode step (the regime where offloading costs tokens/s).
Locality is led by the excess over chance: popularity skew alone raises the raw figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..trace import Trace

__all__ = ["Outlook", "outlook"]

OPERATING_POINT = 2  # cache size as a multiple of the active experts (the study's headline)


@dataclass(frozen=True)
class Outlook:
    m: int
    srp: float
    srp_ci: tuple[float, float]  # basic bootstrap 95 % interval over sequences
    srp_chance: float
    sch: float  # FSF(m) hit rate at C = 2k, per layer, averaged over layers
    sch_chance: float
    lru_study: float  # LRU hit rate at C = 2k (study accounting), averaged over layers
    lru_engine: float  # LRU engine replay as decode, global budget of 2x the active experts
    recommended_x: float  # smallest budget (x active experts) reaching 90 % of LRU's best
    recommended_hit_rate: float

    @property
    def srp_excess(self) -> float:
        return self.srp - self.srp_chance

    @property
    def sch_excess(self) -> float:
        return self.sch - self.sch_chance

    def to_json(self) -> dict:
        return {**asdict(self), "srp_excess": self.srp_excess, "sch_excess": self.sch_excess}


def outlook(trace: Trace, m: int = 16, permutations: int = 3, seed: int = 0) -> Outlook:
    """Headline locality and caching figures of `trace` (see the module docstring)."""
    from ..cache import build_stream, recommend_budget, simulate
    from ..locality import chance_curves, chance_srp, curves, srp

    size = OPERATING_POINT * trace.top_k  # C = 2k slots per layer

    def at_operating_point(hit_curves) -> float:
        return float(np.nanmean(hit_curves.per_layer[:, min(size, trace.num_experts) - 1]))

    srp_value = srp(trace, m=(m,), seed=seed).results[m]["model"]
    srp_chance = chance_srp(trace, (m,), permutations=permutations, seed=seed)[m][0]
    sch = at_operating_point(curves(trace, "fsf", m, model_level=False))
    sch_chance = at_operating_point(chance_curves(trace, "fsf", m, permutations=permutations, seed=seed,
                                                  model_level=False))
    lru_study = at_operating_point(curves(trace, "lru", model_level=False))
    decode = trace.as_decode()  # serve every token one at a time, as in generation
    stream = build_stream(decode)
    lru_engine = simulate(decode, "lru", budget_x=OPERATING_POINT, stream=stream).hit_rate
    advice = recommend_budget(decode, "lru", fraction=0.9, stream=stream)
    return Outlook(m, srp_value.srp, srp_value.ci, float(srp_chance), sch, sch_chance, lru_study, float(lru_engine),
                   float(advice.budget_x), float(advice.hit_rate))
