"""Whether to ask the Hugging Face hub at all, decided once and within seconds.

Without a network, huggingface_hub retries every request for about half a minute before it
gives up. A process that is offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, or the hub's
endpoint, or the HTTPS proxy, not reachable within a few seconds) reads the local cache only,
so a model that is cached still loads and one that is not fails at once with a clear message.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ExpertcacheError

__all__ = ["local_model_folder", "not_cached", "offline_reason"]

PROBE_SECONDS = 3.0


def local_model_folder(name: str | os.PathLike) -> Path | None:
    """The local model folder MODEL names, or None for a hub id. A file, a folder without
    config.json, and a missing path that no hub id could be are one-line errors."""
    name = str(name)
    path = Path(name).expanduser()
    if path.is_file():
        raise ExpertcacheError(f"{name} is a file; give the model's folder")
    if path.exists():
        if not (path / "config.json").is_file():
            raise ExpertcacheError(f"{name} has no config.json; not a transformers model folder")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        raise ExpertcacheError(f"model folder {name} does not exist")
    return None


@cache
def offline_reason() -> str | None:
    """Why the hub cannot be asked ("HF_HUB_OFFLINE is set", "... is unreachable"), or None."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    target = urlsplit(proxy) if proxy and not urllib.request.proxy_bypass(endpoint.hostname or "") else endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    if not _connects(target.hostname or "", port):
        return f"the hub ({constants.ENDPOINT}) is unreachable from this machine"
    return None


def _connects(host: str, port: int) -> bool:
    """A TCP connection within PROBE_SECONDS, name lookup included (which has no timeout of
    its own, hence the thread)."""
    result = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    return bool(result and result[0])


def not_cached(name: str, reason: str) -> str:
    """The error for a hub id asked for offline and absent from the local cache."""
    return f"cannot load {name}: {reason}, and {name} is not in the local Hugging Face cache"
