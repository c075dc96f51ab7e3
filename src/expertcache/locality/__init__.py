"""Locality metrics of a routing trace: hit-rate curves at every cache size, SRP,
load balance and specialization, consecutive overlap, each with its chance level, and the
gating network's habits (weight spread, usage skew, experts picked together)."""

from .analyze import analyze
from .balance import global_balance, local_balance
from .chance import chance_curves, chance_overlap, chance_srp
from .gating import co_firing, rarely_used, top_share, weight_by_rank
from .overlap import consecutive_overlap
from .specialization import domain_specialization, vocabulary_specialization
from .srp import SRPReport, SRPValue, srp
from .study_cache import POLICIES, HitCurves, curves

__all__ = [
    "POLICIES",
    "HitCurves",
    "SRPReport",
    "SRPValue",
    "analyze",
    "chance_curves",
    "chance_overlap",
    "chance_srp",
    "co_firing",
    "consecutive_overlap",
    "curves",
    "domain_specialization",
    "global_balance",
    "local_balance",
    "rarely_used",
    "srp",
    "top_share",
    "vocabulary_specialization",
    "weight_by_rank",
]
