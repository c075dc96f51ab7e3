"""An --out folder that belongs to one toy run or study: reused by the same settings only."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import output_folder, write_json_atomic
from ..errors import ExpertcacheError

__all__ = ["claim"]


def claim(out: Path, marker_name: str, wanted: dict, what: str, unstarted: bool = False) -> None:
    """Mark `out` as holding `what` made with `wanted` settings (JSON in `marker_name`), or refuse
    it: a file, a folder holding something else, or one made with other settings, unless the
    caller knows it `unstarted` (nothing made yet that other settings would lose)."""
    output_folder(out)
    marker = out / marker_name
    if marker.is_file():
        try:
            held = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise ExpertcacheError(f"{marker} is damaged; choose another --out") from None
        if held != wanted and not unstarted:
            raise ExpertcacheError(f"{out} holds a {what} with other settings ({marker}); choose another --out")
        if held == wanted:
            return
    elif out.exists() and any(out.iterdir()):
        raise ExpertcacheError(f"{out} exists and is not a {what} folder; choose another --out")
    write_json_atomic(marker, wanted)
