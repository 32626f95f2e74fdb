"""The Wan2.2 video VAE: 48 latent channels, 4x temporal and 16x spatial compression.

A video of ``T = 4n + 1`` frames of ``H x W`` pixels (multiples of 16) becomes
``1 + n`` latent frames of ``H/16 x W/16`` with 48 channels. Compared with the
Wan2.1 VAE (:mod:`wan.modules.vae`) the network

* folds 2x2 pixel patches into channels before the encoder (3 -> 12 channels)
  and unfolds the decoder's 12 output channels back into pixels, so its three
  downsampling levels reach 16x with the same 8x of convolutions;
* groups each level's residual blocks and resampler into one block with a
  parameter-free shortcut around them: :class:`AvgDown` (the encoder: averages
  groups of space-time neighbours folded into channels) and :class:`DupUp`
  (the decoder: repeats channels and unfolds them into space-time neighbours);
* keeps the width through its upsamplers (Wan2.1 halves it) and has a wider
  decoder than encoder (official: base 160 in, 256 out).

Everything else is the Wan2.1 machinery, shared rather than copied: causal
convolutions with a per-layer :class:`~wan.modules.vae.CausalCache`, the RMS
norm, residual and attention blocks, the temporal resamplers, the chunk loop
(first frame, then 4 frames; one latent frame at a time when decoding), spatial
tiling, and the :class:`~wan.modules.vae.WanVAE` list wrapper with its checks.

Parameter names follow the official ``Wan2.2_VAE.pth`` (Wan-Video/Wan2.2,
``wan/modules/vae2_2.py``), so that file loads as it is.

Differences from diffusers' ``AutoencoderKLWan`` (``is_residual=True``, ``patch_size=2``),
with which the default schedule agrees to fp32 rounding (tests/test_vae22.py):

* chunk lengths are options (``chunk_frames``, a multiple of 4, and
  ``chunk_latents``); diffusers and the official code fix them at 4 and 1. The
  first-chunk rules (the first latent frame becomes one frame; ``DupUp`` keeps the
  last of its first frame's copies) are kept per module in the cache, so any
  chunking gives the same result;
* spatial tiling runs the decoder's latent-resolution stage (``conv1`` and the
  middle blocks with their attention) on whole frames and only the upsampling
  levels on tiles, blended in pixel space (diffusers tiles the whole decoder, with
  its own tile sizes and blend); untiled passes are the same computation;
* no ``clip_output`` option: ``Wan2_2_VAE.decode`` always clamps to [-1, 1] as the
  official one (diffusers 0.42.1 has no such config key either and also clamps);
* the encoder width ``c_dim`` and the decoder width are read from the file (the
  official hard-codes the decoder's 256), so miniature files load through the
  same code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vae import (KNOWN_KINDS, CausalCache, CausalConv3d, CausalVAE, Decoder3d, Downsample,
                  Encoder3d, ResidualBlock, Streaming, TilingConfig, Upsample, VAEKind, WanVAE,
                  load_into_network, middle_blocks, output_head, read_vae_file, run_layers)

__all__ = ["Wan2_2_VAE", "VideoVAE22", "LATENT_MEAN_22", "LATENT_STD_22", "SPATIAL_STRIDE_22",
           "PATCH_SIZE", "WAN22", "load_video_vae22", "patchify", "unpatchify"]

log = logging.getLogger(__name__)

#: Per-channel statistics of the latents of the released Wan2.2 VAE, as listed in
#: ``Wan2_2_VAE.__init__`` of Wan-Video/Wan2.2 ``wan/modules/vae2_2.py`` (the same
#: values as ``latents_mean`` / ``latents_std`` of ``vae22_diffusers_config`` in
#: diffusers' ``scripts/convert_wan_to_diffusers.py``).
LATENT_MEAN_22 = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
LATENT_STD_22 = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)

PATCH_SIZE = 2
SPATIAL_STRIDE_22 = 16
RGB_PATCH_CHANNELS = 3 * PATCH_SIZE * PATCH_SIZE  # 12

WAN22 = VAEKind("Wan2.2", "Wan2.2_VAE.pth", RGB_PATCH_CHANNELS, LATENT_MEAN_22, LATENT_STD_22,
                SPATIAL_STRIDE_22)
KNOWN_KINDS[(WAN22.in_channels, WAN22.z_dim)] = WAN22


# --------------------------------------------------------------------- patches
def patchify(x: torch.Tensor, p: int = PATCH_SIZE) -> torch.Tensor:
    """``[B, C, T, pH, pW]`` -> ``[B, C p p, T, H, W]``.

    Channel ``(c, j, i)`` (row-major) holds the pixel at column offset ``j`` and
    row offset ``i`` of each patch: the official order (einops ``(c r q)`` with
    ``r`` the column and ``q`` the row offset).
    """
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p)          # b c t H i W j
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int = PATCH_SIZE) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``[B, C p p, T, H, W]`` -> ``[B, C, T, pH, pW]``."""
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w)       # b c j i t H W
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


# --------------------------------------------------------------------- shortcuts
class _Fold(nn.Module):
    """Shared by the two shortcuts: ``factor_t x factor_s x factor_s`` space-time
    neighbourhoods folded into channels, ``ratio`` folded channels per narrow channel."""

    def __init__(self, wide: int, narrow: int, out_dim: int, factor_t: int,
                 factor_s: int) -> None:
        super().__init__()
        folded = wide * factor_t * factor_s * factor_s
        if folded % narrow:
            raise ValueError(f"{type(self).__name__}: {wide} x {factor_t * factor_s ** 2} "
                             f"folded channels do not group evenly by {narrow}")
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.ratio = folded // narrow


class AvgDown(_Fold):
    """The parameter-free shortcut of an encoder level (official ``AvgDown3D``).

    Each space-time neighbourhood is folded into the channels (channel-major), and
    groups of ``ratio`` consecutive folded channels are averaged down to ``out_dim``.
    A chunk with a frame count that is not a multiple of ``factor_t`` gets zero
    frames in front: the first frame of a video (encoded alone) is averaged with a
    zero frame, as in the official code.
    """

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__(in_dim, out_dim, out_dim, factor_t, factor_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        if ft == fs == self.ratio == 1:
            return x
        if x.shape[2] % ft:
            x = F.pad(x, (0, 0, 0, 0, ft - x.shape[2] % ft, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)                # b c ft fs fs T H W
        return x.reshape(b, self.out_dim, self.ratio, t // ft, h // fs, w // fs).mean(dim=2)


class DupUp(_Fold, Streaming):
    """The parameter-free shortcut of a decoder level (official ``DupUp3D``): the inverse
    fold of :class:`AvgDown`, each input channel repeated into ``ratio`` folded channels.

    The first chunk of a video keeps only the last of the ``factor_t`` frames its
    first frame unfolds into, as the main path turns that frame into one.
    """

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__(out_dim, in_dim, out_dim, factor_t, factor_s)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        y = x.repeat_interleave(self.ratio, dim=1)
        y = y.reshape(b, self.out_dim, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        y = y.reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        if self not in cache.started:
            cache.started.add(self)
            y = y[:, :, ft - 1:]
        return y


# --------------------------------------------------------------------- levels
class DownLevel(nn.Module, Streaming):
    """One encoder level (official ``Down_ResidualBlock``): residual blocks and an optional
    downsampler, plus an :class:`AvgDown` shortcut around them all."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool,
                 spatial: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown(in_dim, out_dim, 2 if temporal else 1, 2 if spatial else 1)
        blocks: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim)
                                   for i in range(num_res_blocks)]
        if spatial:
            blocks.append(Downsample(out_dim, temporal))
        self.downsamples = nn.Sequential(*blocks)  # the checkpoint's name

    @property
    def main_path(self) -> nn.Sequential:
        return self.downsamples

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return run_layers(self.downsamples, x, cache).add_(self.avg_shortcut(x))


class UpLevel(nn.Module, Streaming):
    """One decoder level (official ``Up_ResidualBlock``): residual blocks and an optional
    upsampler that keeps the width, plus a :class:`DupUp` shortcut when it upsamples."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool,
                 spatial: bool) -> None:
        super().__init__()
        self.avg_shortcut = (DupUp(in_dim, out_dim, 2 if temporal else 1, 2) if spatial
                             else None)
        blocks: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim)
                                   for i in range(num_res_blocks)]
        if spatial:
            blocks.append(Upsample(out_dim, temporal, out_dim=out_dim))
        self.upsamples = nn.Sequential(*blocks)  # the checkpoint's name

    @property
    def main_path(self) -> nn.Sequential:
        return self.upsamples

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        out = run_layers(self.upsamples, x, cache)
        return out if self.avg_shortcut is None else out.add_(self.avg_shortcut(x, cache))


def _flag(flags: Sequence[bool], level: int) -> bool:
    return bool(flags[level]) if level < len(flags) else False


class Encoder22(Encoder3d):
    """Video ``[B, 3, T, H, W]`` -> ``[B, out_dim, 1 + (T-1)/4, H/16, W/16]`` (2x2 patches in)."""

    patch_size = PATCH_SIZE

    def __init__(self, dim: int, out_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temporal_downsample: Sequence[bool]) -> None:
        nn.Module.__init__(self)
        widths = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(RGB_PATCH_CHANNELS, widths[0], 3)
        last = len(dim_mult) - 1
        self.downsamples = nn.Sequential(*(
            DownLevel(w_in, w_out, num_res_blocks, _flag(temporal_downsample, level),
                      spatial=level != last)
            for level, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:]))))
        self.middle = middle_blocks(widths[-1])
        self.head = output_head(widths[-1], out_dim)

    def to_patches(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x)


class Decoder22(Decoder3d):
    """Latents ``[B, z_dim, t, h, w]`` -> video ``[B, 3, 1 + 4(t-1), 16h, 16w]`` (unclamped;
    2x2 patches out)."""

    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temporal_upsample: Sequence[bool]) -> None:
        nn.Module.__init__(self)
        widths = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, widths[0], 3)
        self.middle = middle_blocks(widths[0])
        last = len(dim_mult) - 1
        self.upsamples = nn.Sequential(*(
            UpLevel(w_in, w_out, num_res_blocks + 1, _flag(temporal_upsample, level),
                    spatial=level != last)
            for level, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:]))))
        self.head = output_head(widths[-1], RGB_PATCH_CHANNELS)

    def from_patches(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x)


class VideoVAE22(CausalVAE):
    """The Wan2.2 autoencoder network (official name ``WanVAE_`` in ``vae2_2.py``).

    The real model has ``dim=160`` (encoder) and ``dec_dim=256`` (decoder: the
    official ``Wan2_2_VAE`` passes ``c_dim`` as the encoder width only and keeps
    ``WanVAE_``'s default ``dec_dim=256``; diffusers calls them ``base_dim`` and
    ``decoder_base_dim``).
    """

    spatial_stride = SPATIAL_STRIDE_22

    def __init__(self, dim: int = 160, dec_dim: int = 256, z_dim: int = 48,
                 dim_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 temporal_downsample: Sequence[bool] = (False, True, True)) -> None:
        super().__init__()
        self.dim, self.dec_dim, self.z_dim = dim, dec_dim, z_dim
        self.encoder = Encoder22(dim, 2 * z_dim, dim_mult, num_res_blocks, temporal_downsample)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder22(dec_dim, z_dim, dim_mult, num_res_blocks,
                                 tuple(reversed(temporal_downsample)))


def load_video_vae22(path: str | os.PathLike, z_dim: int = 48,
                     dim_mult: Sequence[int] = (1, 2, 4, 4),
                     temporal_downsample: Sequence[bool] = (False, True, True),
                     device: torch.device | str = "cpu") -> VideoVAE22:
    """Build the Wan2.2 network on the meta device and give it the (fp32) weights of ``path``;
    the encoder and decoder widths are read from the file."""
    sd, source = read_vae_file(path, WAN22, z_dim)
    dim = sd["encoder.conv1.weight"].shape[0]
    dec = sd.get("decoder.conv1.weight")
    dec_dim = dec.shape[0] // dim_mult[-1] if dec is not None else dim  # missing: reported below
    build = partial(VideoVAE22, dim=dim, dec_dim=dec_dim, z_dim=z_dim, dim_mult=tuple(dim_mult),
                    temporal_downsample=tuple(temporal_downsample))
    model = load_into_network(build, sd, source, WAN22, device)
    log.info("Loaded the Wan2.2 VAE (base widths %d / %d) from %s", dim, dec_dim, path)
    return model


class Wan2_2_VAE(WanVAE):
    """Encode videos to normalised 48-channel latents and back, as the official ``Wan2_2_VAE``.

    Same constructor as the official one (``device`` may also be ``"cpu"``), plus
    ``tiling`` and the chunk attributes of :class:`~wan.modules.vae.WanVAE`, whose
    ``encode`` / ``decode`` it uses: videos ``[3, T, H, W]`` in [-1, 1] with
    ``T = 4n + 1`` and H, W multiples of 16 become latents
    ``[48, 1 + (T-1)/4, H/16, W/16]``; decoding clamps to [-1, 1].

    The widths come from the file; ``c_dim`` (the official encoder width, 160)
    is only compared with it (a miniature file logs the difference).
    """

    kind = WAN22

    def __init__(self, z_dim: int = 48, c_dim: int = 160,
                 vae_pth: str | os.PathLike | None = None,
                 dim_mult: Sequence[int] = (1, 2, 4, 4),
                 temperal_downsample: Sequence[bool] = (False, True, True),
                 dtype: torch.dtype = torch.float, device: torch.device | str = "cuda",
                 tiling: TilingConfig | str = "auto") -> None:
        if vae_pth is None:
            raise ValueError("Wan2_2_VAE needs vae_pth, the path of Wan2.2_VAE.pth.")
        self._setup(z_dim, dtype, device, tiling)
        self.model = load_video_vae22(vae_pth, z_dim, dim_mult, temperal_downsample, self.device)
        if self.model.dim != c_dim:
            log.info("Wan2.2 VAE %s: encoder width %d (c_dim=%d is the released model's)",
                     vae_pth, self.model.dim, c_dim)
