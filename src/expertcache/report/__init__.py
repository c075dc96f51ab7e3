"""Answers for people: does a model suit offloading, with which cache, and the evidence as figures."""

from .build import Finding, assess, write_report
from .outlook import Outlook, outlook, outlook_rows
from .verdict import Verdict, judge

__all__ = ["Finding", "Outlook", "Verdict", "assess", "judge", "outlook", "outlook_rows", "write_report"]
