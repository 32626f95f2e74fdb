"""Wan2.2 TI2V-5B: text-to-video and, with an image, image-to-video over the Wan2.2 VAE.

As the official ``WanTI2V`` (Wan-Video/Wan2.2, ``textimage2video.py``): the DiT sees
per-token timesteps, and with an image its first latent frame is the image's at
every step (its tokens get timestep 0). Both are inputs of the shared sampling loop
(``timestep_fn`` and ``constraint``), not a loop of their own.
"""

from __future__ import annotations

import logging

import torch
from PIL import Image

from .image2video import image_to_tensor
from .pipeline import WanPipelineBase, stage
from .sampling import Conditioning

__all__ = ["WanTI2V", "best_output_size", "fit_image"]

log = logging.getLogger(__name__)


def best_output_size(w: int, h: int, dw: int, dh: int, expected_area: int) -> tuple[int, int]:
    """The output ``(width, height)`` for a ``w x h`` image: multiples of ``dw`` / ``dh`` with
    at most ``expected_area`` pixels, rounding the width first or the height first,
    whichever keeps the aspect ratio better (the official rule)."""
    ratio = w / h
    ow = (expected_area * ratio) ** 0.5
    oh = expected_area / ow
    ow1 = int(ow // dw * dw)
    oh2 = int(oh // dh * dh)
    # (checked before dividing: an extreme aspect ratio rounds one side down to 0)
    oh1 = int(expected_area / ow1 // dh * dh) if ow1 >= dw else 0
    ow2 = int(expected_area / oh2 // dw * dw) if oh2 >= dh else 0
    if ow1 < dw or oh1 < dh or ow2 < dw or oh2 < dh:
        raise ValueError(f"an image of {w}x{h} does not fit {expected_area} pixels in blocks of "
                         f"{dw}x{dh}: use a less extreme aspect ratio")
    ratio1, ratio2 = ow1 / oh1, ow2 / oh2
    if max(ratio / ratio1, ratio1 / ratio) < max(ratio / ratio2, ratio2 / ratio):
        return ow1, oh1
    return ow2, oh2


def fit_image(img: Image.Image, width: int, height: int) -> Image.Image:
    """Resize (Lanczos, aspect kept) to cover ``width x height`` and centre-crop, as the
    official TI2V preprocessing."""
    iw, ih = img.size
    scale = max(width / iw, height / ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1, y1 = (img.width - width) // 2, (img.height - height) // 2
    return img.crop((x1, y1, x1 + width, y1 + height))


class WanTI2V(WanPipelineBase):
    """The TI2V-5B pipeline with the official Wan2.2 constructor and ``generate``."""

    model_type = "ti2v"

    def __init__(self, config, checkpoint_dir, device_id=0, rank=0, t5_fsdp=False,
                 dit_fsdp=False, use_sp=False, t5_cpu=False, init_on_cpu=True,
                 convert_model_dtype=False, use_usp=None, dit_offload_blocks=0):
        super().__init__(config, checkpoint_dir, device_id, rank, t5_fsdp, dit_fsdp,
                         bool(use_usp), t5_cpu, dit_offload_blocks, use_sp=use_sp,
                         init_on_cpu=init_on_cpu, convert_model_dtype=convert_model_dtype)

    def _load_vae(self, config):
        from .modules.vae2_2 import Wan2_2_VAE

        return Wan2_2_VAE(vae_pth=self._vae_file(config), device=torch.device("cpu"))

    def generate(self, input_prompt: str, img=None, size: tuple[int, int] = (1280, 704),
                 max_area: int = 704 * 1280, frame_num: int = 81, shift: float = 5.0,
                 sample_solver: str = "unipc", sampling_steps: int = 50, guide_scale: float = 5.0,
                 n_prompt: str = "", seed: int = -1, offload_model: bool = True, on_step=None
                 ) -> torch.Tensor | None:
        """Text-to-video at ``size=(width, height)``, or with ``img`` (PIL) image-to-video at
        about ``max_area`` pixels with the image's aspect ratio (the official rule)."""
        self.check_sampling_args(frame_num, sample_solver, sampling_steps, guide_scale, shift)
        dh = self.patch_size[1] * self.vae_stride[1]
        dw = self.patch_size[2] * self.vae_stride[2]
        if img is not None:
            if not isinstance(img, Image.Image):
                raise ValueError(f"img must be a PIL image, got {type(img).__name__}")
            width, height = best_output_size(img.width, img.height, dw, dh, max_area)
        else:
            width, height = size
            if width % dw or height % dh or width <= 0 or height <= 0:
                raise ValueError(f"size {width}*{height} must be positive multiples of "
                                 f"{dw}x{dh} (the Wan2.2 VAE's 16 x the 2x2 patch)")
        shape = self.latent_shape(frame_num, height, width)
        seq_len = self.seq_len(shape)
        n_prompt = n_prompt or self.sample_neg_prompt

        noise = self.prepare_noise(shape, seed)
        context, context_null = self.encode_text([input_prompt, n_prompt], offload_model)
        # 1 where the latent is generated, 0 on the image's first latent frame (i2v)
        keep = torch.ones(shape, device=self.device)
        constraint = None
        if img is not None:
            self._activate("vae", offload_model)
            with stage("image encoding"), torch.no_grad():
                image = image_to_tensor(fit_image(img.convert("RGB"), width, height))
                z = self.vae.encode([image[:, None].to(self.device)])[0]
            keep[:, 0] = 0

            def constraint(latent: torch.Tensor) -> torch.Tensor:
                return (1.0 - keep) * z + keep * latent

        token_t = keep[0, :, ::self.patch_size[1], ::self.patch_size[2]].flatten()

        def timestep_fn(t: torch.Tensor) -> torch.Tensor:
            """Per-token timesteps ``[1, seq_len]``: ``t``, 0 on the kept frame (official)."""
            per_token = token_t * t
            pad = per_token.new_ones(seq_len - per_token.numel()) * t
            return torch.cat([per_token, pad])[None]

        latent = self.denoise(noise, Conditioning(context), Conditioning(context_null), seq_len,
                              sample_solver, sampling_steps, shift, guide_scale, offload_model,
                              on_step=on_step, timestep_fn=timestep_fn, constraint=constraint)
        video = self.decode(latent, offload_model) if self.rank == 0 else None
        self._finish()
        return video
