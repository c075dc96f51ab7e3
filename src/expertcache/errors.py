"""The one exception type that means "the user asked for something wrong".

The CLI prints such errors as a single line and exits with status 2; any other
exception is a bug and keeps its traceback.
"""

__all__ = ["ExpertcacheError"]


class ExpertcacheError(Exception):
    """A user mistake or unusable input, explained in one line."""
