"""The headline figures of a trace's evidence, the answer in numbers before the figures.

Locality (SRP and the segment cache's hit rate SCH at the study's 2x operating point, each
against its chance level), the hit rate of LRU at 2x (study and engine accounting), and the
smallest LRU cache reaching 90 % of LRU's best hit rate. Locality is led by the excess over
chance: popularity skew alone raises the raw figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..trace import Trace
from ..units import count_text, signed_text
from .evidence import OPERATING_POINT, Evidence, gather

__all__ = ["Outlook", "outlook", "outlook_rows"]


@dataclass(frozen=True)
class Outlook:
    m: int
    srp: float
    srp_ci: tuple[float, float] | None  # basic bootstrap 95 % interval over sequences (None: one sequence)
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

    @classmethod
    def of(cls, ev: Evidence) -> "Outlook":
        """The headline figures of gathered evidence."""
        value = ev.srp_model
        return cls(ev.m, value.srp, value.ci, ev.srp_chance[ev.m][0], ev.sch, ev.sch_chance_2x,
                   ev.at_operating_point(ev.study["lru"]), ev.engine_hit_rate("lru", OPERATING_POINT),
                   ev.advice.budget_x, ev.advice.hit_rate)


def outlook(trace: Trace, m: int = 16, permutations: int | None = None, seed: int = 0) -> Outlook:
    """Headline locality and caching figures of `trace` (see the module docstring)."""
    return Outlook.of(gather(trace, trace.model.name, m=m, permutations=permutations, seed=seed))


def outlook_rows(o: Outlook) -> list[tuple[str, str, str, str]]:
    """(figure, measured, chance, excess) in words, locality first: the demo's and the report's table."""
    interval = "" if o.srp_ci is None else f" [{o.srp_ci[0]:.3f}, {o.srp_ci[1]:.3f}]"
    return [
        (f"SCH({o.m}): hit rate of a 2x cache that knows the next {count_text(o.m, 'token')} (study accounting)", f"{o.sch:.1%}",
         f"{o.sch_chance:.1%}", f"{signed_text(100 * o.sch_excess)} points"),
        (f"SRP({o.m}): how well {o.m}-token stretches predict their experts (0..1)"
         + (", 95% interval" if interval else ""), f"{o.srp:.3f}{interval}", f"{o.srp_chance:.3f}", f"{o.srp_excess:+.3f}"),
        ("LRU hit rate with a 2x cache, one per layer (study accounting)", f"{o.lru_study:.1%}", "", ""),
        ("LRU hit rate with a 2x cache shared by all layers, decode (engine accounting)", f"{o.lru_engine:.1%}", "", ""),
        ("smallest shared LRU cache reaching 90% of LRU's best hit rate",
         f"{o.recommended_x:.1f}x ({o.recommended_hit_rate:.1%} LRU hits)", "", ""),
    ]
