"""The official helper names (``cache_video``, ``cache_image``, ``str2bool``).

Kept so that scripts written for the official package keep working; they write
through :mod:`wan.utils.io` (H.264 / yuv420p, atomic renames).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import uuid

import torch

from .io import save_image, save_video

__all__ = ["cache_video", "cache_image", "str2bool"]

log = logging.getLogger(__name__)


def _grid_frames(tensor: torch.Tensor, nrow: int) -> torch.Tensor:
    """``[B, 3, F, H, W]`` -> ``[3, F, H', W']`` with the batch laid out as a grid per frame."""
    import torchvision

    if tensor.dim() == 4:
        return tensor
    if tensor.size(0) == 1:
        return tensor[0]
    frames = [torchvision.utils.make_grid(f, nrow=nrow, padding=2, pad_value=-1.0)
              for f in tensor.unbind(2)]
    return torch.stack(frames, dim=1)


def cache_video(tensor: torch.Tensor, save_file: str | None = None, fps: int = 30,
                suffix: str = ".mp4", nrow: int = 8, normalize: bool = True,
                value_range=(-1, 1), retry: int = 5) -> str | None:
    """Write a ``[B, 3, F, H, W]`` (or ``[3, F, H, W]``) video; returns its path or None."""
    path = save_file or os.path.join(tempfile.gettempdir(), uuid.uuid4().hex[:16] + suffix)
    if not normalize:
        value_range = (0, 1)
    error = None
    for _ in range(max(1, retry)):
        try:
            return str(save_video(_grid_frames(tensor, nrow), path, fps=fps,
                                  value_range=tuple(value_range)))
        except (OSError, RuntimeError) as e:  # transient I/O errors: try again
            error = e
    log.error("cache_video failed: %s", error)
    return None


def cache_image(tensor: torch.Tensor, save_file: str, nrow: int = 8, normalize: bool = True,
                value_range=(-1, 1), retry: int = 5) -> str | None:
    """Write a ``[B, 3, H, W]`` (or ``[3, H, W]``) image; returns its path or None."""
    import torchvision

    if tensor.dim() == 4:
        tensor = tensor[0] if tensor.size(0) == 1 else torchvision.utils.make_grid(
            tensor, nrow=nrow, padding=2, pad_value=float(min(value_range)))
    if not normalize:
        value_range = (0, 1)
    error = None
    for _ in range(max(1, retry)):
        try:
            return str(save_image(tensor, save_file, value_range=tuple(value_range)))
        except (OSError, RuntimeError) as e:
            error = e
    log.error("cache_image failed: %s", error)
    return None


def str2bool(v) -> bool:
    """'yes/true/t/y/1' -> True, 'no/false/f/n/0' -> False (case-insensitive)."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got '{v}'")
