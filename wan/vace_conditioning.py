"""VACE conditioning: the source video, mask and reference images, and their 96-channel latent.

As the official ``WanVace`` (``prepare_source``, ``vace_encode_frames``,
``vace_encode_masks``, ``vace_latent``); the DiT is not needed here.

* :func:`prepare_source` turns per-sample paths (or tensors, or None) into a
  video ``[3, F, H, W]`` in [-1, 1], a mask ``[1, F, H, W]`` in [0, 1]
  (1 = regenerate) and a list of reference images ``[3, 1, H, W]`` in [-1, 1].
* :func:`vace_encode_frames` VAE-encodes ``video * (1 - mask)`` ("inactive") and
  ``video * mask`` ("reactive") into 32 channels and prepends one latent frame
  per reference image (its reactive half zeros), in the order given.
* :func:`vace_encode_masks` folds each 8x8 pixel cell of the mask into 64
  channels, resizes it in time to the latent frame count ('nearest-exact') and
  prepends a zero frame per reference image.
* :func:`vace_latent` concatenates the two: 32 + 64 = 96 channels (``vace_in_dim``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .utils.vace_processor import VaceVideoProcessor

__all__ = ["SourceInfo", "PreparedSource", "prepare_source", "load_reference_image",
           "fit_reference_image", "vace_encode_frames", "vace_encode_masks", "vace_latent"]

PathLike = (str, os.PathLike)


@dataclass(frozen=True)
class SourceInfo:
    """What was used for one sample: frames, size ``(width, height)``, the clip's frame ids."""
    frame_num: int
    size: tuple[int, int]
    frame_ids: list[int] | None = None
    fps: float | None = None


class PreparedSource(tuple):
    """``(src_video, src_mask, src_ref_images)`` as the official returns, plus ``.info``."""

    def __new__(cls, videos, masks, refs, info):
        self = super().__new__(cls, (videos, masks, refs))
        self.info = info
        return self

    @property
    def frame_nums(self) -> list[int]:
        return [i.frame_num for i in self.info]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [i.size for i in self.info]


# --------------------------------------------------------------------- reference images
def load_reference_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> ``[3, 1, H, W]`` float32 in [-1, 1] (``PIL .convert('RGB')``, as official)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference image not found: '{path}'")
    try:
        with Image.open(path) as img:
            arr = np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read '{path}' as an image ({type(e).__name__})") from None
    x = torch.from_numpy(arr).permute(2, 0, 1).float().div(255)
    return x.sub_(0.5).div_(0.5).unsqueeze(1)


def fit_reference_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Fit ``[3, 1, h, w]`` into a white ``[3, 1, height, width]`` canvas (official math).

    Unless already at the size: ``scale = min(height / h, width / w)``, size
    ``(int(h * scale), int(w * scale))``, bilinear (``align_corners=False``, no
    antialias), placed at ``((height - nh) // 2, (width - nw) // 2)`` on ones.
    """
    if image.dim() == 3:
        image = image.unsqueeze(1)
    if image.dim() != 4 or image.size(0) != 3 or image.size(1) != 1:
        raise ValueError(f"a reference image must be [3, 1, H, W], got {tuple(image.shape)}")
    image = image.float()
    h, w = image.shape[-2:]
    if (h, w) == (height, width):
        return image
    scale = min(height / h, width / w)
    nh, nw = int(h * scale), int(w * scale)
    resized = F.interpolate(image[:, 0][None], size=(nh, nw), mode="bilinear",
                            align_corners=False)[0]
    canvas = torch.ones(3, 1, height, width, dtype=image.dtype, device=image.device)
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas[:, 0, top:top + nh, left:left + nw] = resized
    return canvas


# --------------------------------------------------------------------- sources
def _check_video_tensor(video: torch.Tensor, i: int) -> torch.Tensor:
    if not video.is_floating_point() or video.dim() != 4 or video.size(0) != 3:
        raise ValueError(f"src_video[{i}] must be a float tensor [3, F, H, W] in [-1, 1], got "
                         f"{video.dtype} {tuple(video.shape)}")
    return video.float()


def _check_mask_tensor(mask: torch.Tensor, video: torch.Tensor, i: int) -> torch.Tensor:
    if not mask.is_floating_point() or mask.dim() != 4 or mask.size(0) not in (1, 3):
        raise ValueError(f"src_mask[{i}] must be a float tensor [1, F, H, W] in [0, 1], got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    if mask.shape[1:] != video.shape[1:]:
        raise ValueError(f"src_mask[{i}] is {tuple(mask.shape[1:])} (F, H, W) but src_video[{i}] "
                         f"is {tuple(video.shape[1:])}: they must have the same frames and size")
    return mask[:1].float()


def _check_shape(video: torch.Tensor, i: int, multiple: int) -> None:
    _, f, h, w = video.shape
    if (f - 1) % 4 or h % multiple or w % multiple:
        raise ValueError(f"src_video[{i}] is {f} frames of {w}x{h}: VACE needs 4n+1 frames and "
                         f"a size in multiples of {multiple}")


def prepare_source(src_video: Sequence, src_mask: Sequence, src_ref_images: Sequence,
                   num_frames: int, image_size: tuple[int, int],
                   device: torch.device | str = "cpu", *, seq_len: int | None = None
                   ) -> PreparedSource:
    """Per-sample sources as the official ``WanVace.prepare_source``.

    ``src_video``, ``src_mask``: one entry per sample, a path, a tensor or None.
    ``src_ref_images``: one entry per sample, None or a list of paths/tensors.
    ``image_size`` is ``(width, height)`` (the official order); ``num_frames``
    is used only where there is no source video.

    * video and mask paths: read as a pair by :class:`VaceVideoProcessor`
      (cut to the shorter clip; frames and size chosen from the clip, its aspect
      at the task's area); the mask's first channel is mapped ``(m + 1) / 2``
      and clamped to [0, 1];
    * a video path alone: read the same way, mask all ones;
    * no video: zeros ``[3, num_frames, height, width]``, mask all ones;
    * tensors: a video ``[3, F, H, W]`` in [-1, 1] and a mask ``[1, F, H, W]``
      in [0, 1] are used as given (same F, H, W required);
    * reference images: read with PIL (RGB) and fitted into a white canvas of
      the sample's video size (aspect kept, centred, bilinear).

    Returns ``(videos, masks, refs)`` (masks ``[1, F, H, W]``; refs a list of
    ``[3, 1, H, W]`` or None per sample) with ``.info`` (:class:`SourceInfo` per
    sample). ``seq_len`` overrides the token budget of the area (see
    :func:`wan.utils.vace_processor.vace_seq_len`).
    """
    width, height = image_size
    if width <= 0 or height <= 0 or num_frames < 1:
        raise ValueError(f"bad image_size {width}*{height} or num_frames {num_frames}")
    src_video, src_mask = list(src_video), list(src_mask)
    src_ref_images = [None] * len(src_video) if src_ref_images is None else list(src_ref_images)
    if not (len(src_video) == len(src_mask) == len(src_ref_images)):
        raise ValueError(f"src_video, src_mask and src_ref_images need one entry per sample, got "
                         f"{len(src_video)}, {len(src_mask)} and {len(src_ref_images)}")
    proc = VaceVideoProcessor(area=width * height, seq_len=seq_len)
    multiple = proc.downsample[1]
    videos, masks, refs_out, info = [], [], [], []
    for i, (video, mask) in enumerate(zip(src_video, src_mask)):
        if video is None and mask is not None:
            raise ValueError(f"src_mask[{i}] is given without a src_video[{i}]")
        plan = None
        if video is None:
            video = torch.zeros(3, num_frames, height, width)
            mask = torch.ones(1, num_frames, height, width)
        elif isinstance(video, PathLike):
            if isinstance(mask, PathLike):
                video, mask, plan = proc.load_video_pair(video, mask)
                mask = torch.clamp((mask[:1] + 1) / 2, min=0, max=1)
            elif mask is None:
                video, plan = proc.load_video(video)
                mask = torch.ones_like(video[:1])
            else:
                raise ValueError(f"src_mask[{i}] must be a path when src_video[{i}] is a path")
        elif isinstance(video, torch.Tensor):
            video = _check_video_tensor(video, i)
            if mask is None:
                mask = torch.ones_like(video[:1])
            elif isinstance(mask, torch.Tensor):
                mask = _check_mask_tensor(mask, video, i)
            else:
                raise ValueError(f"src_mask[{i}] must be a tensor when src_video[{i}] is a tensor")
            _check_shape(video, i, multiple)
        else:
            raise ValueError(f"src_video[{i}] must be a path, a tensor or None, "
                             f"got {type(video).__name__}")
        videos.append(video.to(device))
        masks.append(mask.to(device))
        f, h, w = video.shape[1:]
        info.append(SourceInfo(f, (w, h), plan.frame_ids if plan else None,
                               plan.fps if plan else None))

    for i, refs in enumerate(src_ref_images):
        if refs is None:
            refs_out.append(None)
            continue
        if isinstance(refs, (*PathLike, torch.Tensor)):
            refs = [refs]
        h, w = videos[i].shape[2:]
        fitted = []
        for ref in refs:
            if ref is None:
                continue
            img = load_reference_image(ref) if isinstance(ref, PathLike) else ref
            fitted.append(fit_reference_image(img, h, w).to(device))
        refs_out.append(fitted or None)
    return PreparedSource(videos, masks, refs_out, info)


# --------------------------------------------------------------------- latents
def vace_encode_frames(vae, frames: Sequence[torch.Tensor], ref_images: Sequence | None,
                       masks: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """VAE latents of the frames (inactive/reactive halves with masks) after the references.

    With masks (binarised at 0.5): ``cat(E(f * (1 - m)), E(f * m))`` = 32 channels;
    each reference image is encoded alone as one latent frame, ``cat(E(ref), 0)``,
    and prepended in latent time in the given order ``[ref1, ref2, ..., video]``.
    Without masks: 16 channels ``E(f)``, references ``E(ref)``.
    """
    frames = list(frames)
    ref_images = [None] * len(frames) if ref_images is None else list(ref_images)
    if len(ref_images) != len(frames):
        raise ValueError(f"ref_images needs one entry per video, got {len(ref_images)} for "
                         f"{len(frames)}")
    if masks is None:
        latents = vae.encode(frames)
    else:
        masks = list(masks)
        if len(masks) != len(frames):
            raise ValueError(f"masks needs one entry per video, got {len(masks)} for {len(frames)}")
        masks = [torch.where(m > 0.5, 1.0, 0.0).to(f.dtype) for f, m in zip(frames, masks)]
        inactive = vae.encode([f * (1 - m) for f, m in zip(frames, masks)])
        reactive = vae.encode([f * m for f, m in zip(frames, masks)])
        latents = [torch.cat((u, c), dim=0) for u, c in zip(inactive, reactive)]

    out = []
    for latent, refs in zip(latents, ref_images):
        if refs:
            ref_latents = vae.encode(list(refs))
            if any(r.shape[1] != 1 for r in ref_latents):
                raise ValueError("each reference image must be a single frame [3, 1, H, W]")
            if masks is not None:
                ref_latents = [torch.cat((r, torch.zeros_like(r)), dim=0) for r in ref_latents]
            latent = torch.cat([*ref_latents, latent], dim=1)
        out.append(latent)
    return out


def vace_encode_masks(masks: Sequence[torch.Tensor], ref_images: Sequence | None = None,
                      vae_stride: tuple[int, int, int] = (4, 8, 8)) -> list[torch.Tensor]:
    """Masks ``[C, F, H, W]`` (channel 0 used) -> ``[64, refs + (F + 3) // 4, H / 8, W / 8]``.

    Pixel ``(8y + a, 8x + b)`` goes to channel ``8a + b`` at ``(y, x)``; time is
    resized to ``(F + 3) // 4`` frames with 'nearest-exact'; one zero frame is
    prepended per reference image. Values are not binarised (as official).
    """
    masks = list(masks)
    ref_images = [None] * len(masks) if ref_images is None else list(ref_images)
    if len(ref_images) != len(masks):
        raise ValueError(f"ref_images needs one entry per mask, got {len(ref_images)} for "
                         f"{len(masks)}")
    st, sh, sw = vae_stride
    out = []
    for mask, refs in zip(masks, ref_images):
        _, depth, height, width = mask.shape
        if height % (2 * sh) or width % (2 * sw):
            raise ValueError(f"mask size {width}x{height} must be a multiple of "
                             f"{2 * sw}x{2 * sh}")
        new_depth = (depth + 3) // st
        h, w = height // sh, width // sw
        m = mask[0].reshape(depth, h, sh, w, sw).permute(2, 4, 0, 1, 3)
        m = m.reshape(sh * sw, depth, h, w)
        m = F.interpolate(m[None], size=(new_depth, h, w), mode="nearest-exact")[0]
        if refs:
            m = torch.cat((m.new_zeros(m.size(0), len(refs), h, w), m), dim=1)
        out.append(m)
    return out


def vace_latent(z: Sequence[torch.Tensor], m: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``cat(z, m)`` per sample along channels (32 + 64 = 96)."""
    return [torch.cat([zz, mm], dim=0) for zz, mm in zip(z, m)]
