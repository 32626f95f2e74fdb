"""Reading VACE source clips the way the official ``VaceVideoProcessor(keep_last=True)`` does.

The official ``WanVace`` builds its processor with ``downsample = vae_stride *
patch_size = (4, 16, 16)``, ``min_area = max_area = 720 * 1280``,
``min_fps = max_fps = sample_fps (16)``, ``zero_start=True``, ``seq_len=75600``
and ``keep_last=True``; ``prepare_source`` then sets the area to the task's
``width * height`` and the token budget to 75600 (720*1280) or 32760 (480*832).
With ``keep_last=True`` the fps settings and ``zero_start`` are not used: the
clip's whole duration is kept and ``of`` evenly spaced frames are taken from it.

For a clip of ``N`` frames of ``h x w`` pixels (``df, dh, dw = downsample``):

* ``area_z = min(seq_len, max_area / (dh * dw), (h // dh) * (w // dw))`` tokens per frame;
* ``of = min((N - 1) // df + 1, int(seq_len / area_z))`` latent frames;
* ``target_area_z = min(area_z, int(seq_len / of))``;
  ``oh = round(sqrt(target_area_z * h / w))``, ``ow = int(target_area_z / oh)``;
  output ``(of - 1) * df + 1`` frames of ``oh * dh`` x ``ow * dw`` pixels
  (the clip's own aspect ratio at the task's area, never upscaled past the clip's
  size floored to 16);
* frame ``k`` is the first frame ``i`` whose time interval ``[i / fps, (i + 1) / fps]``
  (float32, as decord's ``get_frame_timestamp``) holds ``linspace(0, d, of)[k]``,
  ``d`` the midpoint of the last frame's interval;
* each frame is scaled (bicubic, antialias, on the uint8 frames as the official
  does with decord's uint8 tensors) to cover the output size, centre-cropped, and
  normalised as ``x / 127.5 - 1``.

A video/mask pair is cut to the shorter of the two; the frame ids and the size
come from the video (the first of the pair).

Frames are decoded with imageio-ffmpeg (:func:`wan.utils.io.read_video`) rather
than decord; frame times are taken as ``i / fps`` (constant frame rate, first
frame at 0), which is what decord reports for such files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["VACE_DOWNSAMPLE", "VACE_SEQ_LEN", "VACE_MAX_AREA", "ClipPlan", "vace_seq_len",
           "plan_clip", "frame_timestamps", "resize_crop", "VaceVideoProcessor"]

#: ``vae_stride * patch_size`` of Wan2.1: (4, 8, 8) * (1, 2, 2).
VACE_DOWNSAMPLE = (4, 16, 16)
#: The token budgets the official ``WanVace.prepare_source`` sets per area.
VACE_SEQ_LEN = {720 * 1280: 75600, 480 * 832: 32760}
#: The processor's area before ``set_area`` (official ``min_area = max_area``).
VACE_MAX_AREA = 720 * 1280


def vace_seq_len(area: int, downsample: tuple[int, int, int] = VACE_DOWNSAMPLE) -> int:
    """The token budget of a task area: the official value for 720*1280 and 480*832.

    The official code supports only those two areas (NotImplementedError
    otherwise). Other areas (miniature test sizes) get the same budget the
    official values encode: 21 latent frames (81 frames) of ``area / (dh * dw)``
    tokens.
    """
    if area in VACE_SEQ_LEN:
        return VACE_SEQ_LEN[area]
    if area <= 0:
        raise ValueError(f"the area must be positive, got {area}")
    return 21 * max(1, area // (downsample[1] * downsample[2]))


@dataclass(frozen=True)
class ClipPlan:
    """What is read from a clip: the frame indices, the output size, the effective fps."""
    frame_ids: list[int]
    height: int
    width: int
    fps: float

    @property
    def frame_num(self) -> int:
        return len(self.frame_ids)


def frame_timestamps(frame_count: int, fps: float) -> np.ndarray:
    """``[frame_count, 2]`` float32 ``[start, end]`` seconds of each frame of a constant-rate clip."""
    if fps <= 0:
        raise ValueError(f"the clip's frame rate must be positive, got {fps}")
    i = np.arange(frame_count, dtype=np.float64)
    return np.stack([i / fps, (i + 1) / fps], axis=1).astype(np.float32)


def plan_clip(timestamps: np.ndarray, height: int, width: int, *, area: int, seq_len: int,
              downsample: tuple[int, int, int] = VACE_DOWNSAMPLE) -> ClipPlan:
    """The official ``keep_last=True`` choice of frames and size (see the module docstring)."""
    timestamps = np.asarray(timestamps)
    n = len(timestamps)
    if n < 1:
        raise ValueError("the clip holds no frame")
    df, dh, dw = downsample
    if height < dh or width < dw:
        raise ValueError(f"the clip is {width}x{height}, smaller than one {dw}x{dh} token")
    duration = timestamps[-1].mean()
    area_z = min(seq_len, area / (dh * dw), (height // dh) * (width // dw))
    of = min((n - 1) // df + 1, int(seq_len / area_z))
    target_area_z = min(area_z, int(seq_len / of))
    oh = round(np.sqrt(target_area_z * (height / width)))
    ow = int(target_area_z / oh)
    of = (of - 1) * df + 1
    t = np.linspace(0.0, duration, of)
    inside = (t[:, None] >= timestamps[None, :, 0]) & (t[:, None] <= timestamps[None, :, 1])
    frame_ids = np.argmax(inside, axis=1).tolist()
    return ClipPlan(frame_ids, oh * dh, ow * dw, float(of / duration))


def resize_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float32 ``[3, T, height, width]`` in [-1, 1] (official resize_crop).

    Scale ``max(width / W, height / H)`` to ``(round(scale * H), round(scale * W))``
    with bicubic antialiased interpolation on the uint8 frames (CPU), centre crop,
    then ``x / 127.5 - 1``. Frames already at the size are not resampled.
    """
    frames = torch.as_tensor(frames)
    if frames.dim() != 4 or frames.size(-1) != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    t, ih, iw, _ = frames.shape
    out = torch.empty(3, t, height, width, dtype=torch.float32)
    scale = max(width / iw, height / ih)
    size = (round(scale * ih), round(scale * iw))
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    for i in range(t):  # frame by frame: the same values as the whole clip at once
        x = frames[i].permute(2, 0, 1).cpu()
        if (ih, iw) != (height, width):
            x = F.interpolate(x[None], size=size, mode="bicubic", antialias=True)[0]
            x = x[:, top:top + height, left:left + width]
        out[:, i] = x.float().div_(127.5).sub_(1.0)
    return out


class VaceVideoProcessor:
    """The official ``VaceVideoProcessor`` with ``keep_last=True`` (imageio-ffmpeg decoding).

    ``area`` and ``seq_len`` are the values ``WanVace.prepare_source`` sets
    (``set_area``/``set_seq_len``); ``seq_len=None`` takes :func:`vace_seq_len`.
    """

    def __init__(self, area: int = VACE_MAX_AREA, seq_len: int | None = None,
                 downsample: tuple[int, int, int] = VACE_DOWNSAMPLE) -> None:
        self.downsample = tuple(downsample)
        self.area = int(area)
        self.seq_len = vace_seq_len(self.area, self.downsample) if seq_len is None else seq_len
        if self.seq_len < self.area / (self.downsample[1] * self.downsample[2]):
            raise ValueError(f"seq_len {self.seq_len} is below one frame of area {self.area}")

    def load_video(self, path: str | os.PathLike):
        """``(video [3, F, H, W] in [-1, 1], plan)`` of one clip."""
        video, plan = self.load_video_batch(path)
        return video, plan

    def load_video_pair(self, path: str | os.PathLike, mask_path: str | os.PathLike):
        """``(video, mask, plan)``: both ``[3, F, H, W]`` in [-1, 1], cut to the shorter clip."""
        video, mask, plan = self.load_video_batch(path, mask_path)
        return video, mask, plan

    def load_video_batch(self, *paths: str | os.PathLike):
        from .io import read_video

        clips = [read_video(p) for p in paths]
        length = min(len(frames) for frames, _ in clips)
        frames0, fps = clips[0]
        h, w = frames0.shape[1:3]
        plan = plan_clip(frame_timestamps(length, fps), h, w, area=self.area,
                         seq_len=self.seq_len, downsample=self.downsample)
        ids = torch.tensor(plan.frame_ids, dtype=torch.long)
        videos = [resize_crop(frames[:length][ids], plan.height, plan.width)
                  for frames, _ in clips]
        return (*videos, plan)
