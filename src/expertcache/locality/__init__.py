"""Locality metrics of a routing trace: hit-rate curves at every cache size (SPEC §2), SRP (§3),
load balance and specialization (§6), consecutive overlap, each with its chance level."""

from .analyze import analyze
from .balance import global_balance, local_balance
from .chance import chance_curves, chance_overlap, chance_srp
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
    "consecutive_overlap",
    "curves",
    "domain_specialization",
    "global_balance",
    "local_balance",
    "srp",
    "vocabulary_specialization",
]
