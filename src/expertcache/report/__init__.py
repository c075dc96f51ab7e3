"""Answers for people: does a model suit offloading, and with which cache."""

from .outlook import Outlook, outlook

__all__ = ["Outlook", "outlook"]
