"""Check that a local safetensors checkpoint is whole before anything loads it.

A truncated or damaged file would otherwise surface as a SafetensorError deep inside
`from_pretrained`, and a shard missing from a sharded checkpoint only after the others were
read. Reading each file's header (a few KB) finds both in milliseconds: every shard the index
names exists, each header parses, and every tensor ends inside its file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import ExpertcacheError

__all__ = ["INDEX", "safetensors_headers"]

INDEX = "model.safetensors.index.json"


def safetensors_headers(folder: Path) -> dict[str, tuple[int, dict]]:
    """file name -> (offset of its tensor data, header) for every safetensors file of the
    checkpoint in `folder` (the index's shards, else every *.safetensors); {} if none."""
    index = folder / INDEX
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ExpertcacheError(f"{index} is not a safetensors index ({type(e).__name__})") from None
        missing = [name for name in files if not (folder / name).is_file()]
        if missing:
            raise ExpertcacheError(f"{folder / missing[0]} is missing ({len(missing)} of the {len(files)} shards "
                                   f"named by {INDEX}); download the checkpoint again")
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    return {name: _header(folder / name) for name in files}


def _header(path: Path) -> tuple[int, dict]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        start = 8 + n
        for key, entry in header.items():
            if key != "__metadata__" and start + entry["data_offsets"][1] > size:
                raise ExpertcacheError(f"{path} is truncated: tensor {key} ends past the end of the file "
                                       "(download it again)")
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as e:
        raise ExpertcacheError(f"{path} is not a readable safetensors file ({e})") from None
    return start, header
