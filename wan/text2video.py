"""Text-to-video (and text-to-image, one frame) with the Wan2.1 T2V models."""

from __future__ import annotations

import logging

import torch

from .pipeline import WanPipelineBase, stage
from .sampling import Conditioning

__all__ = ["WanT2V"]

log = logging.getLogger(__name__)


class WanT2V(WanPipelineBase):
    """Text-to-video pipeline with the official constructor and ``generate`` signature.

    Args:
        config: an entry of :data:`wan.configs.WAN_CONFIGS`.
        checkpoint_dir: the downloaded model folder (e.g. ``./Wan2.1-T2V-1.3B``).
        device_id: CUDA index, or a ``torch.device`` / ``'cpu'`` / ``'mps'``.
        rank: process rank (multi-GPU).
        t5_fsdp, dit_fsdp: shard T5 / the DiT with FSDP (multi-GPU).
        use_usp: sequence-parallel attention (multi-GPU).
        t5_cpu: keep the text encoder on the CPU.
    """

    model_type = "t2v"

    def generate(self, input_prompt: str, size: tuple[int, int] = (1280, 720),
                 frame_num: int = 81, shift: float = 5.0, sample_solver: str = "unipc",
                 sampling_steps: int = 50, guide_scale: float = 5.0, n_prompt: str = "",
                 seed: int = -1, offload_model: bool = True, on_step=None) -> torch.Tensor | None:
        """Generate a video ``[3, frame_num, height, width]`` in [-1, 1] for ``size=(width, height)``.

        ``frame_num=1`` gives an image. An empty ``n_prompt`` uses the official
        negative prompt; ``seed=-1`` draws one (kept as ``self.last_seed``).
        Returns None on ranks other than 0 in multi-GPU runs.
        """
        self.check_sampling_args(frame_num, sample_solver, sampling_steps, guide_scale, shift)
        width, height = size
        multiple = self.vae_stride[1] * self.patch_size[1]
        if width % multiple or height % multiple or width <= 0 or height <= 0:
            raise ValueError(f"size {width}*{height} must be positive multiples of {multiple}")
        shape = self.latent_shape(frame_num, height, width)
        seq_len = self.seq_len(shape)
        n_prompt = n_prompt or self.sample_neg_prompt

        noise = self.prepare_noise(shape, seed)
        context, context_null = self.encode_text([input_prompt, n_prompt], offload_model)
        latent = self.denoise(noise, Conditioning(context), Conditioning(context_null), seq_len,
                              sample_solver, sampling_steps, shift, guide_scale, offload_model,
                              on_step=on_step)
        video = self.decode(latent, offload_model) if self.rank == 0 else None
        self._finish()
        return video
