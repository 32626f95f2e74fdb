"""VACE: video creation and editing with Wan2.1-VACE-1.3B and -14B.

One model takes any mix of a source clip, a mask over it and reference images
(see :mod:`wan.vace_conditioning` for how they become its 96-channel context
latent); the denoising loop is the shared one, with ``vace_context`` and
``vace_context_scale`` added to the conditioning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .modules.vace_model import VaceWanModel
from .pipeline import stage
from .sampling import Conditioning
from .text2video import WanT2V
from .vace_conditioning import prepare_source, vace_encode_frames, vace_encode_masks, vace_latent

__all__ = ["WanVace"]

log = logging.getLogger(__name__)


class WanVace(WanT2V):
    """The VACE pipeline with the official constructor, ``prepare_source`` and ``generate``.

    Loads the T2V files of the folder and its VACE DiT (``"model_type": "vace"``;
    a DiT without ``vace_blocks`` is refused with a clear error).
    """

    model_type = "vace"

    @staticmethod
    def dit_class() -> type:
        return VaceWanModel

    def prepare_source(self, src_video: Sequence, src_mask: Sequence, src_ref_images: Sequence,
                       num_frames: int, image_size: tuple[int, int],
                       device: torch.device | str | int | None = None):
        """Per-sample lists (paths or None) -> ``(src_video, src_mask, src_ref_images)``
        tensors on ``device`` (default: the pipeline's), as the official; the returned tuple
        has ``.info`` with the frames and size each sample actually uses."""
        device = self.device if device is None or isinstance(device, int) else device
        return prepare_source(src_video, src_mask, src_ref_images, num_frames, image_size,
                              device)

    def prepare_cli_inputs(self, src_video: str | None = None, src_mask: str | None = None,
                           src_ref_images: list[str] | None = None, context_scale: float = 1.0,
                           frame_num: int = 81, size: tuple[int, int] = (1280, 720)
                           ) -> tuple[dict, dict]:
        """The task table's ``prepare`` hook: the command line's paths -> ``generate()``
        keywords, and the frames and size actually used (a source clip decides them)."""
        frames, masks, refs = src = self.prepare_source([src_video], [src_mask],
                                                         [src_ref_images], frame_num, size)
        info = src.info[0]
        if src_video is not None and (info.frame_num, info.size) != (frame_num, tuple(size)):
            log.warning("The source clip decides the output: %d frames of %dx%d (asked: "
                        "--frame_num %d, --size %dx%d), as the official VACE.", info.frame_num,
                        *info.size, frame_num, *size)
        log.info("VACE inputs: %d frames of %dx%d, %d reference image(s)", info.frame_num,
                 *info.size, len(refs[0] or []))
        kwargs = dict(input_frames=frames, input_masks=masks, input_ref_images=refs,
                      context_scale=context_scale)
        return kwargs, {"frame_num": info.frame_num, "size": info.size}

    def generate(self, input_prompt: str, input_frames: list[torch.Tensor],
                 input_masks: list[torch.Tensor], input_ref_images: list | None,
                 size: tuple[int, int] = (1280, 720), frame_num: int = 81,
                 context_scale: float = 1.0, shift: float = 5.0, sample_solver: str = "unipc",
                 sampling_steps: int = 50, guide_scale: float = 5.0, n_prompt: str = "",
                 seed: int = -1, offload_model: bool = True, on_step=None
                 ) -> torch.Tensor | None:
        """A video ``[3, F, H, W]`` in [-1, 1] from the prepared sources (one sample).

        The output has the frames and size of ``input_frames`` (``size`` and
        ``frame_num`` only matter in :meth:`prepare_source`, as the official);
        reference frames are generated with it and dropped before decoding.
        """
        self.check_sampling_args(frame_num, sample_solver, sampling_steps, guide_scale, shift)
        if context_scale is None or not context_scale >= 0:
            raise ValueError(f"context_scale must be >= 0, got {context_scale}")
        if len(input_frames) != 1 or len(input_masks) != 1:
            raise ValueError("WanVace.generate makes one video: pass one-entry lists "
                             "(as prepare_source returns for one sample)")
        refs = input_ref_images if input_ref_images is not None else [None]
        n_prompt = n_prompt or self.sample_neg_prompt

        context, context_null = self.encode_text([input_prompt, n_prompt], offload_model)
        self._activate("vae", offload_model)
        with stage("VACE encoding"), torch.no_grad():
            frames = [f.to(self.device) for f in input_frames]
            masks = [m.to(self.device) for m in input_masks]
            z0 = vace_encode_frames(self.vae, frames, refs, masks=masks)
            m0 = vace_encode_masks(masks, refs, self.vae_stride)
            z = vace_latent(z0, m0)[0]
        shape = (z0[0].shape[0] // 2, *z0[0].shape[1:])
        noise = self.prepare_noise(shape, seed)
        seq_len = self.seq_len(shape)
        extra = {"vace_context": z, "vace_context_scale": float(context_scale)}
        latent = self.denoise(noise, Conditioning(context, extra=extra),
                              Conditioning(context_null, extra=extra), seq_len, sample_solver,
                              sampling_steps, shift, guide_scale, offload_model, on_step=on_step)
        n_refs = len(refs[0] or [])
        video = self.decode(latent[:, n_refs:], offload_model) if self.rank == 0 else None
        self._finish()
        return video
