"""First-last-frame-to-video with Wan2.1-FLF2V-14B-720P.

The model is the I2V-14B DiT plus a learned position table over the CLIP
tokens of two images (``img_emb.emb_pos``); the pipeline is the i2v one
conditioned on a first and a last frame (see :class:`WanFLF2V`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .image2video import WanI2V, image_to_tensor

__all__ = ["WanFLF2V", "fit_to_size"]

log = logging.getLogger(__name__)


def fit_to_size(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``image [3, H, W]`` (in [-1, 1]) to cover ``height x width``, then centre-crop it.

    The scale is the smaller one that makes both sides at least the target
    (``max(height / H, width / W)``), so the aspect ratio is kept and nothing
    is padded. Bicubic with antialiasing (as an image resize), clamped to
    [-1, 1]. The crop offsets are rounded as torchvision's ``center_crop``.
    An image of the target size is returned unchanged.
    """
    _, h, w = image.shape
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bicubic",
                            align_corners=False, antialias=True)[0].clamp_(-1, 1)
    top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
    return resized[:, top:top + height, left:left + width]


def _frame(img, name: str) -> torch.Tensor:
    try:
        return image_to_tensor(img)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


class WanFLF2V(WanI2V):
    """First-last-frame-to-video pipeline with the official constructor and ``generate``.

    Loads the same files as :class:`WanI2V` (T5, VAE, CLIP, DiT) from an FLF2V
    checkpoint folder; a DiT of another type (e.g. an I2V folder) is refused
    with a :class:`~wan.utils.checkpoint.CheckpointError`.
    """

    model_type = "flf2v"

    def generate(self, input_prompt: str, first_frame, last_frame, max_area: int = 720 * 1280,
                 frame_num: int = 81, shift: float = 16, sample_solver: str = "unipc",
                 sampling_steps: int = 50, guide_scale: float = 5.5, n_prompt: str = "",
                 seed: int = -1, offload_model: bool = True, on_step=None) -> torch.Tensor | None:
        """A video ``[3, frame_num, H, W]`` in [-1, 1] from ``first_frame`` to ``last_frame``.

        As the official pipeline: the output size comes from ``max_area`` and
        the first frame's aspect ratio; the mask marks the first and the last
        latent frame; ``y`` is the VAE encoding of [first frame, zeros for
        ``frame_num - 2`` frames, last frame], both frames resized bicubically to
        the output size; the CLIP features of the first frame then the last
        frame are concatenated into ``[1, 514, clip_dim]`` tokens.

        Two deviations from the official code, both fixes; with two frames of
        the same size and 81 frames the result is the official one:

        * the mask follows ``frame_num`` (the official one is built for 81
          frames whatever ``frame_num`` is, which breaks other lengths);
        * a last frame of another size than the first is first resized to
          cover the first frame's size and centre-cropped to it
          (:func:`fit_to_size`). The official code computes such a size but
          never resizes, and passes PIL's (width, height) to
          ``TF.center_crop``, which takes (height, width).

        Images are PIL images (also HWC uint8 arrays or CHW tensors in [0, 1]);
        anything else raises a ValueError.
        """
        self.check_sampling_args(frame_num, sample_solver, sampling_steps, guide_scale, shift)
        if frame_num < 5:
            raise ValueError(f"frame_num must be at least 5 to hold a first and a last frame, "
                             f"got {frame_num}")
        first, last = _frame(first_frame, "first_frame"), _frame(last_frame, "last_frame")
        last = fit_to_size(last, first.shape[1], first.shape[2])
        return self._generate_from_frames(
            input_prompt, [first, last], max_area, frame_num, shift, sample_solver,
            sampling_steps, guide_scale, n_prompt, seed, offload_model, on_step)
