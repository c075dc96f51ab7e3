"""The one reading of a --device option: "cpu" or "cuda" (optionally "cuda:N"), checked at once."""

from __future__ import annotations

from .errors import ExpertcacheError

__all__ = ["torch_device"]


def torch_device(device: str):
    """A torch.device for cpu or cuda[:N]; anything else, or CUDA where none is, is a one-line error."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ExpertcacheError(f"unknown device {device!r}; choose cpu or cuda (cuda:N for one GPU of several)")
    if dev.type == "cpu":
        return torch.device("cpu")  # "cpu:0" is the same memory; torch treats an indexed cpu as an accelerator
    if not torch.cuda.is_available():
        raise ExpertcacheError(f"--device {device} needs a CUDA build of torch and a GPU; this one has none")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ExpertcacheError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
