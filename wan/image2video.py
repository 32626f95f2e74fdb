"""Image-to-video with the Wan2.1 I2V-14B models (480P and 720P)."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .modules.clip import CLIPModel
from .pipeline import WanPipelineBase, stage
from .sampling import Conditioning

__all__ = ["WanI2V", "i2v_latent_size", "first_frame_mask", "frame_mask", "image_to_tensor"]

log = logging.getLogger(__name__)


def i2v_latent_size(img_h: int, img_w: int, max_area: int, vae_stride: tuple[int, ...],
                    patch_size: tuple[int, ...]) -> tuple[int, int]:
    """Latent height/width keeping the image's aspect ratio within ``max_area`` pixels.

    Rounded down to the patch grid, exactly as the official pipeline computes it.
    """
    aspect = img_h / img_w
    lat_h = round(np.sqrt(max_area * aspect) // vae_stride[1] // patch_size[1] * patch_size[1])
    lat_w = round(np.sqrt(max_area / aspect) // vae_stride[2] // patch_size[2] * patch_size[2])
    if lat_h < patch_size[1] or lat_w < patch_size[2]:
        raise ValueError(f"max_area {max_area} is too small for an image of {img_w}x{img_h}")
    return lat_h, lat_w


def frame_mask(frame_num: int, lat_h: int, lat_w: int, device: torch.device,
               last: bool = False) -> torch.Tensor:
    """``[4, (F-1)/4+1, lat_h, lat_w]`` mask: 1 on the given frames (the first, and the last
    with ``last``), 0 elsewhere.

    The per-video-frame mask has its first frame repeated four times so that
    the F+3 frames fold into groups of four, one group per latent frame (the
    official recipe); the last video frame is the last of the last group.
    """
    per_frame = torch.zeros(frame_num + 3, lat_h, lat_w, device=device)
    per_frame[:4] = 1
    if last:
        per_frame[-1] = 1
    return per_frame.view(-1, 4, lat_h, lat_w).transpose(0, 1).contiguous()


def first_frame_mask(frame_num: int, lat_h: int, lat_w: int, device: torch.device) -> torch.Tensor:
    """The i2v mask: 1 on the (4x repeated) first frame, 0 elsewhere (see :func:`frame_mask`)."""
    return frame_mask(frame_num, lat_h, lat_w, device)


def image_to_tensor(img) -> torch.Tensor:
    """PIL image / HWC uint8 array / CHW tensor in [0, 1] -> ``[3, H, W]`` float in [-1, 1]."""
    if isinstance(img, Image.Image):
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1)
    elif isinstance(img, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(img)).float().permute(2, 0, 1) / 255.0
    elif isinstance(img, torch.Tensor):
        t = img.float()
    else:
        raise TypeError(f"img must be a PIL image, a numpy array or a tensor, got {type(img).__name__}")
    if t.dim() != 3 or t.size(0) != 3:
        raise ValueError(f"the input image must have 3 channels (RGB), got shape {tuple(t.shape)}")
    return t.sub(0.5).div(0.5)


class WanI2V(WanPipelineBase):
    """Image-to-video pipeline with the official constructor and ``generate`` signature.

    Runs Wan2.1 I2V-14B (CLIP image tokens + the first-frame latents) and Wan2.2
    I2V-A14B (two experts, the first-frame latents only): a config without a CLIP
    checkpoint loads no image encoder, and its DiT has no image tokens.
    """

    model_type = "i2v"

    def __init__(self, config, checkpoint_dir, device_id=0, rank=0, t5_fsdp=False, dit_fsdp=False,
                 use_usp=False, t5_cpu=False, init_on_cpu=True, dit_offload_blocks=0,
                 use_sp=None, convert_model_dtype=False):
        super().__init__(config, checkpoint_dir, device_id, rank, t5_fsdp, dit_fsdp, use_usp,
                         t5_cpu, dit_offload_blocks, use_sp=use_sp, init_on_cpu=init_on_cpu,
                         convert_model_dtype=convert_model_dtype)

    def _load_extra_encoders(self, config) -> None:
        self.clip = None
        if not config.get("clip_checkpoint"):
            return  # Wan2.2 I2V-A14B: the image reaches the DiT through y only
        with stage("loading the image encoder"):
            self.clip = CLIPModel(dtype=config.clip_dtype, device=torch.device("cpu"),
                                  checkpoint_path=self.checkpoint_dir / config.clip_checkpoint,
                                  tokenizer_path=self.checkpoint_dir / config.clip_tokenizer)

    def generate(self, input_prompt: str, img, max_area: int = 720 * 1280, frame_num: int = 81,
                 shift: float = 5.0, sample_solver: str = "unipc", sampling_steps: int = 40,
                 guide_scale: float = 5.0, n_prompt: str = "", seed: int = -1,
                 offload_model: bool = True, on_step=None) -> torch.Tensor | None:
        """Animate ``img`` (PIL image) into ``[3, frame_num, H, W]`` in [-1, 1].

        The output keeps the image's aspect ratio with about ``max_area`` pixels.
        """
        self.check_sampling_args(frame_num, sample_solver, sampling_steps, guide_scale, shift)
        return self._generate_from_frames(
            input_prompt, [image_to_tensor(img)], max_area, frame_num, shift, sample_solver,
            sampling_steps, guide_scale, n_prompt, seed, offload_model, on_step)

    def _generate_from_frames(self, input_prompt: str, images: list[torch.Tensor], max_area: int,
                              frame_num: int, shift: float, sample_solver: str,
                              sampling_steps: int, guide_scale: float, n_prompt: str, seed: int,
                              offload_model: bool, on_step) -> torch.Tensor | None:
        """Generate conditioned on the first frame (i2v) or on the first and the last (flf2v).

        ``images`` are ``[3, H, W]`` tensors in [-1, 1]; the output size follows
        the first one's aspect ratio. The CLIP features of all of them are
        concatenated along tokens (``[1, 257 * len(images), clip_dim]``) and
        ``y`` holds the mask and the VAE latents of the frames placed first and
        last among zeros (the official recipe of both tasks).
        """
        image = images[0].to(self.device)
        lat_h, lat_w = i2v_latent_size(image.shape[1], image.shape[2], max_area, self.vae_stride,
                                       self.patch_size)
        h, w = lat_h * self.vae_stride[1], lat_w * self.vae_stride[2]
        shape = (16, (frame_num - 1) // self.vae_stride[0] + 1, lat_h, lat_w)
        seq_len = self.seq_len(shape)
        n_prompt = n_prompt or self.sample_neg_prompt

        noise = self.prepare_noise(shape, seed)
        mask = frame_mask(frame_num, lat_h, lat_w, self.device, last=len(images) > 1)
        context, context_null = self.encode_text([input_prompt, n_prompt], offload_model)

        clip_fea = None
        with stage("image encoding"), torch.no_grad():
            if self.clip is not None:
                self._activate("clip", offload_model)
                # fp32 holds the half-precision features exactly (the DiT normalises them in fp32)
                clip_fea = self.clip.visual([u.to(self.device)[:, None] for u in images]).float()
                clip_fea = clip_fea.reshape(1, -1, clip_fea.size(-1))
            resized = [F.interpolate(u[None].cpu(), size=(h, w), mode="bicubic").transpose(0, 1)
                       for u in images]
            frames = torch.cat([resized[0], torch.zeros(3, frame_num - len(images), h, w),
                                *resized[1:]], dim=1)
            self._activate("vae", offload_model)
            y = torch.cat([mask, self.vae.encode([frames.to(self.device)])[0]])

        cond = Conditioning(context, clip_fea=clip_fea, y=y)
        uncond = Conditioning(context_null, clip_fea=clip_fea, y=y)
        latent = self.denoise(noise, cond, uncond, seq_len, sample_solver, sampling_steps, shift,
                              guide_scale, offload_model, on_step=on_step)
        video = self.decode(latent, offload_model) if self.rank == 0 else None
        self._finish()
        return video
