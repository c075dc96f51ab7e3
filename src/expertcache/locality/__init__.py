"""Locality metrics: hit-rate curves (SPEC §2), SRP (§3), load balance and specialization (§6),
each against its chance level."""

from .srp import SRPReport, SRPValue, srp
from .study_cache import POLICIES, HitCurves, curves

__all__ = ["POLICIES", "HitCurves", "SRPReport", "SRPValue", "curves", "srp"]
