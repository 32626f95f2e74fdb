"""Choosing devices and releasing accelerator memory (CUDA is only touched when asked)."""

from __future__ import annotations

import gc

import torch

__all__ = ["resolve_device", "empty_cache"]


def resolve_device(device_id: int | str | torch.device | None) -> torch.device:
    """``device_id`` as a device: an int is a CUDA index (or MPS/CPU when CUDA is absent)."""
    if isinstance(device_id, torch.device):
        return device_id
    if isinstance(device_id, str):
        return torch.device(device_id)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{device_id or 0}")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def empty_cache(device: torch.device) -> None:
    """Release cached accelerator memory (no-op on the CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
