"""Text-to-video (and text-to-image, one frame) with the Wan2.1 T2V models."""

from __future__ import annotations

import logging

import torch

from .pipeline import WanPipelineBase, stage
from .sampling import Conditioning, v2v_start_step

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
        use_usp: sequence-parallel attention (multi-GPU); ``use_sp`` is Wan2.2's name.
        t5_cpu: keep the text encoder on the CPU.
        init_on_cpu: kept for the official signature (components start on the CPU).
        convert_model_dtype: store the whole DiT in the config's ``param_dtype``
            (Wan2.2's ``--convert_model_dtype``).

    A Wan2.2 A14B config (``t2v-A14B``) loads the two experts of the folder
    (``high_noise_model/``, ``low_noise_model/``); ``generate``'s ``guide_scale``
    may then be a ``(low, high)`` pair.
    """

    model_type = "t2v"

    def generate(self, input_prompt: str, size: tuple[int, int] = (1280, 720),
                 frame_num: int = 81, shift: float = 5.0, sample_solver: str = "unipc",
                 sampling_steps: int = 50, guide_scale: float = 5.0, n_prompt: str = "",
                 seed: int = -1, offload_model: bool = True, on_step=None,
                 src_video: torch.Tensor | None = None, strength: float = 0.8
                 ) -> torch.Tensor | None:
        """Generate a video ``[3, frame_num, height, width]`` in [-1, 1] for ``size=(width, height)``.

        ``frame_num=1`` gives an image. An empty ``n_prompt`` uses the official
        negative prompt; ``seed=-1`` draws one (kept as ``self.last_seed``).
        Returns None on ranks other than 0 in multi-GPU runs.

        Video-to-video: ``src_video`` is a float tensor ``[3, F, height, width]``
        in [-1, 1] already at the output size (see :func:`wan.utils.io.fit_video`)
        with ``F >= frame_num``; its first ``frame_num`` frames are VAE-encoded to
        ``z`` and sampling starts at step ``k = sampling_steps -
        int(sampling_steps * strength)`` from ``sigma_k * noise + (1 - sigma_k) * z``,
        running the last ``int(sampling_steps * strength)`` steps. The noise is
        the one plain text-to-video draws from ``seed``. ``strength`` in (0, 1]:
        1.0 ignores the source (no VAE encode) and gives exactly the text-to-video
        result (diffusers' WanVideoToVideoPipeline would still mix in
        ``1 - sigma_0`` = 2e-4 of the source at shift 5).
        """
        self.check_sampling_args(frame_num, sample_solver, sampling_steps, guide_scale, shift)
        width, height = size
        multiple = self.vae_stride[1] * self.patch_size[1]
        if width % multiple or height % multiple or width <= 0 or height <= 0:
            raise ValueError(f"size {width}*{height} must be positive multiples of {multiple}")
        start_step = 0
        if src_video is not None:
            src_video = self.check_src_video(src_video, frame_num, height, width)
            start_step = v2v_start_step(sampling_steps, strength)
        shape = self.latent_shape(frame_num, height, width)
        seq_len = self.seq_len(shape)
        n_prompt = n_prompt or self.sample_neg_prompt

        noise = self.prepare_noise(shape, seed)
        context, context_null = self.encode_text([input_prompt, n_prompt], offload_model)
        init_latent = None
        if start_step > 0:
            self._activate("vae", offload_model)
            with stage("source video encoding"), torch.no_grad():
                init_latent = self.vae.encode([src_video.to(self.device)])[0]
        latent = self.denoise(noise, Conditioning(context), Conditioning(context_null), seq_len,
                              sample_solver, sampling_steps, shift, guide_scale, offload_model,
                              on_step=on_step, start_step=start_step, init_latent=init_latent)
        video = self.decode(latent, offload_model) if self.rank == 0 else None
        self._finish()
        return video

    @staticmethod
    def check_src_video(src_video, frame_num: int, height: int, width: int) -> torch.Tensor:
        """The first ``frame_num`` frames of a source video ``[3, F, height, width]`` (fp32)."""
        if not isinstance(src_video, torch.Tensor) or not src_video.is_floating_point():
            got = (f"a {src_video.dtype} tensor" if isinstance(src_video, torch.Tensor)
                   else type(src_video).__name__)
            raise ValueError("src_video must be a float tensor [3, F, H, W] in [-1, 1] "
                             f"(wan.utils.io.fit_video makes one), got {got}")
        if src_video.dim() != 4 or src_video.size(0) != 3:
            raise ValueError(f"src_video must be [3, F, H, W], got shape {tuple(src_video.shape)}")
        _, f, h, w = src_video.shape
        if (h, w) != (height, width):
            raise ValueError(f"src_video is {w}*{h} but the output size is {width}*{height}: "
                             "resize it first (wan.utils.io.fit_video)")
        if f < frame_num:
            raise ValueError(f"src_video has {f} frames, fewer than frame_num={frame_num}")
        src_video = src_video[:, :frame_num].float()
        lo, hi = src_video.aminmax()
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"src_video values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]")
        return src_video
