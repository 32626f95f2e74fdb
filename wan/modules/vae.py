"""The Wan2.1 video VAE: a 3D causal autoencoder with 8x spatial and 4x temporal compression.

A video of ``T = 4n + 1`` frames of ``H x W`` pixels becomes ``1 + n`` latent
frames of ``H/8 x W/8`` with 16 channels: the first frame gets a latent frame of
its own (so a single image is a one-frame video) and every later group of four
frames shares one.

Everything in time is *causal*: a frame only sees itself and the frames before
it. That is what lets the VAE run on a long video piece by piece. Each layer
that looks back in time keeps the last frames it saw in a :class:`CausalCache`
and prepends them to the next chunk, so a chunked pass gives the same result as
a single pass over the whole video, whatever the chunk lengths. The defaults
reproduce the official schedule (encode the first frame, then 4 frames at a
time; decode one latent frame at a time); larger chunks trade memory for speed.

Layer and parameter names follow the official ``Wan2.1_VAE.pth``, so that file
loads as it is.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.checkpoint import CheckpointError, load_into_meta_module, load_pth
from .attention import attention

__all__ = ["WanVAE", "VideoVAE", "CausalCache", "LATENT_MEAN", "LATENT_STD",
           "TEMPORAL_STRIDE", "SPATIAL_STRIDE", "init_random_weights", "load_video_vae"]

log = logging.getLogger(__name__)

#: Per-channel statistics of the latents of the released VAE; ``encode`` returns
#: ``(mean - LATENT_MEAN) / LATENT_STD`` and ``decode`` undoes it.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8

VAE_WHAT = "Wan2.1 VAE checkpoint"


# --------------------------------------------------------------------- streaming state
@dataclass
class CausalCache:
    """What one chunked pass carries from a chunk to the next.

    ``tails`` holds, per layer, the trailing input frames it needs to see
    again; ``started`` holds the temporal upsamplers that have already passed
    the first frame through. Use a fresh cache for every video.
    """
    tails: dict[nn.Module, torch.Tensor] = field(default_factory=dict)
    started: set[nn.Module] = field(default_factory=set)


class Streaming:
    """Marker for layers whose ``forward(x, cache)`` takes a :class:`CausalCache`."""


def run_layers(layers: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    """Apply ``layers`` in order, giving the cache to those that stream."""
    for layer in layers:
        x = layer(x, cache) if isinstance(layer, Streaming) else layer(x)
    return x


def per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame of ``[B, C, T, H, W]``."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


# --------------------------------------------------------------------- layers
class CausalConv3d(nn.Conv3d, Streaming):
    """3D convolution that pads space symmetrically and time on the past side only.

    The ``kernel_t - 1`` frames before a chunk are the cached tail of the
    previous chunk, or zeros at the start of the video.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int]) -> None:
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        super().__init__(in_dim, out_dim, (kt, kh, kw), padding=(0, kh // 2, kw // 2))

    @property
    def past_frames(self) -> int:
        return self.kernel_size[0] - 1

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return super().forward(self._with_past(x, cache))

    def _with_past(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        n = self.past_frames
        if n == 0:
            return x
        past = cache.tails.get(self) if cache is not None else None
        if past is None:
            past = x.new_zeros(*x.shape[:2], n, *x.shape[3:])
        x = torch.cat([past.to(x.dtype), x], dim=2)
        if cache is not None:
            cache.tails[self] = x[:, :, -n:].clone()
        return x


class RMSNorm(nn.Module):
    """Normalise over channels (dim 1) to unit RMS, then scale per channel by ``gamma``."""

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x spatial upsampling, computed in fp32 (bf16 is not supported everywhere)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


class ResidualBlock(nn.Module, Streaming):
    """Two (norm, SiLU, causal 3x3x3 conv) steps plus a shortcut (1x1x1 conv if widths differ)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # The indices of this Sequential are the checkpoint's names (residual.0, .2, .3, .6).
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return run_layers(self.residual, x, cache) + self.shortcut(x)


class AttentionBlock(nn.Module, Streaming):
    """Single-head self-attention over the pixels of each frame (frames do not mix)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return x + per_frame(self._attend, x)

    def _attend(self, frames: torch.Tensor) -> torch.Tensor:
        n, c, h, w = frames.shape
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2)   # [N, H*W, 3C]
        q, k, v = qkv.unsqueeze(2).chunk(3, dim=-1)                          # [N, H*W, 1, C]
        out = attention(q, k, v).squeeze(2)                                  # [N, H*W, C]
        return self.proj(out.transpose(1, 2).reshape(n, c, h, w))


class Downsample(nn.Module, Streaming):
    """Halve height and width; with ``temporal`` also merge frames in pairs.

    In time the first frame of the video passes through unchanged; frames
    ``2k-1, 2k`` become one frame through a stride-2 convolution that also sees
    frame ``2k-2``. Every chunk after the first frame must therefore hold an
    even number of frames.
    """

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = per_frame(self.resample, x)
        return x if self.time_conv is None else self._merge_frames(x, cache)

    def _merge_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        out = []
        if self not in cache.tails:             # the first frame of the video
            out.append(x[:, :, :1])
            cache.tails[self] = x[:, :, :1].clone()
            x = x[:, :, 1:]
        if x.shape[2] > 0:
            if x.shape[2] % 2:
                raise ValueError(f"temporal downsampling needs an even number of frames per chunk "
                                 f"after the first frame, got {x.shape[2]}")
            out.append(self.time_conv(torch.cat([cache.tails[self], x], dim=2)))
            cache.tails[self] = x[:, :, -1:].clone()
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]


class Upsample(nn.Module, Streaming):
    """Double height and width and halve the channels; with ``temporal`` also double the frames.

    In time the first frame of the video passes through unchanged; each later
    frame becomes two, read from the two channel halves of a causal temporal
    convolution that starts at the second frame (the first one is not in its past).
    """

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.time_conv is not None:
            x = self._split_frames(x, cache)
        return per_frame(self.resample, x)

    def _split_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        out = []
        if self not in cache.started:           # the first frame of the video
            cache.started.add(self)
            out.append(x[:, :, :1])
            x = x[:, :, 1:]
        if x.shape[2] > 0:
            y = self.time_conv(x, cache)                        # [B, 2C, T, H, W]
            b, c2, t, h, w = y.shape
            y = y.unflatten(1, (2, c2 // 2)).permute(0, 2, 3, 1, 4, 5)   # [B, C, T, 2, H, W]
            out.append(y.reshape(b, c2 // 2, 2 * t, h, w))
        return torch.cat(out, dim=2) if len(out) > 1 else out[0]


def middle_blocks(dim: int) -> nn.Sequential:
    """Residual block, attention, residual block: the bottleneck of encoder and decoder."""
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def output_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """Norm, SiLU and a causal 3x3x3 convolution (names head.0 and head.2)."""
    return nn.Sequential(RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3))


# --------------------------------------------------------------------- encoder / decoder
class Encoder3d(nn.Module):
    """Video ``[B, 3, T, H, W]`` -> ``[B, out_dim, 1 + (T-1)/4, H/8, W/8]``."""

    def __init__(self, dim: int, out_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temporal_downsample: Sequence[bool]) -> None:
        super().__init__()
        widths = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, widths[0], 3)
        blocks: list[nn.Module] = []
        for level, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            for i in range(num_res_blocks):
                blocks.append(ResidualBlock(w_in if i == 0 else w_out, w_out))
            if level < len(dim_mult) - 1:
                blocks.append(Downsample(w_out, temporal_downsample[level]))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = middle_blocks(widths[-1])
        self.head = output_head(widths[-1], out_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layers in (self.downsamples, self.middle, self.head):
            x = run_layers(layers, x, cache)
        return x


class Decoder3d(nn.Module):
    """Latents ``[B, z_dim, t, h, w]`` -> video ``[B, 3, 1 + 4(t-1), 8h, 8w]`` (unclamped)."""

    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 temporal_upsample: Sequence[bool]) -> None:
        super().__init__()
        widths = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, widths[0], 3)
        self.middle = middle_blocks(widths[0])
        blocks: list[nn.Module] = []
        for level, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            if level > 0:
                w_in //= 2      # every upsampler halves the channels
            for i in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(w_in if i == 0 else w_out, w_out))
            if level < len(dim_mult) - 1:
                blocks.append(Upsample(w_out, temporal_upsample[level]))
        self.upsamples = nn.Sequential(*blocks)
        self.head = output_head(widths[-1], 3)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layers in (self.middle, self.upsamples, self.head):
            x = run_layers(layers, x, cache)
        return x


def _chunks(length: int, size: int, start: int = 0) -> Iterator[slice]:
    """Slices ``[start, start+size)``, ``[start+size, ...)``, ... covering ``[start, length)``."""
    for i in range(start, length, size):
        yield slice(i, min(i + size, length))


def _check_chunk(name: str, value: int, multiple: int = 1) -> None:
    if not isinstance(value, int) or value <= 0 or value % multiple:
        need = f"a positive multiple of {multiple}" if multiple > 1 else "a positive integer"
        raise ValueError(f"{name} must be {need}, got {value!r}.")


class VideoVAE(nn.Module):
    """The autoencoder network (official name ``WanVAE_``); works on raw, unnormalised latents.

    The real model has ``dim=96``; ``attn_scales`` is not supported (empty in Wan2.1).
    """

    def __init__(self, dim: int = 96, z_dim: int = 16, dim_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int = 2,
                 temporal_downsample: Sequence[bool] = (False, True, True)) -> None:
        super().__init__()
        self.dim = dim
        self.z_dim = z_dim
        self.encoder = Encoder3d(dim, 2 * z_dim, dim_mult, num_res_blocks, temporal_downsample)
        self.conv1 = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks,
                                 tuple(reversed(temporal_downsample)))

    def encode(self, x: torch.Tensor, chunk_frames: int = TEMPORAL_STRIDE) -> torch.Tensor:
        """Posterior mean ``[B, z_dim, t, h, w]`` of a video ``[B, 3, T, H, W]``.

        The first frame is encoded alone, the rest ``chunk_frames`` (a multiple
        of 4) at a time; the result does not depend on ``chunk_frames``.
        """
        _check_chunk("chunk_frames", chunk_frames, TEMPORAL_STRIDE)
        cache = CausalCache()
        parts = [self.encoder(x[:, :, :1], cache)]
        parts += [self.encoder(x[:, :, s], cache) for s in _chunks(x.shape[2], chunk_frames, 1)]
        mean, _log_var = self.conv1(torch.cat(parts, dim=2)).chunk(2, dim=1)
        return mean

    def decode(self, z: torch.Tensor, chunk_latents: int = 1) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` (unclamped) from raw latents, ``chunk_latents`` frames at a time."""
        _check_chunk("chunk_latents", chunk_latents)
        x = self.conv2(z)
        cache = CausalCache()
        return torch.cat([self.decoder(x[:, :, s], cache)
                          for s in _chunks(x.shape[2], chunk_latents)], dim=2)


# --------------------------------------------------------------------- weights
def init_random_weights(model: nn.Module, seed: int, bias_std: float = 0.02) -> None:
    """Fill ``model`` with deterministic random weights that keep activations in range.

    Convolutions get a fan-in scaled normal init, biases small noise and norm
    gains ``1 +- 0.1``; used for miniature test checkpoints.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(bias_std * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))


def _sizes_from_state_dict(sd: dict[str, torch.Tensor], source: str) -> tuple[int, int]:
    """Base width and latent channels of the VAE stored in ``sd``."""
    first, last = sd.get("encoder.conv1.weight"), sd.get("conv2.weight")
    if first is None or last is None or first.dim() != 5 or last.dim() != 5:
        raise CheckpointError(
            f"{source} does not hold a Wan2.1 VAE (no 5-D 'encoder.conv1.weight' / "
            f"'conv2.weight'); pass the VAE file, e.g. Wan2.1_VAE.pth.")
    return first.shape[0], last.shape[0]


def load_video_vae(path: str | os.PathLike, z_dim: int = 16,
                   device: torch.device | str = "cpu") -> VideoVAE:
    """Build the network on the meta device and give it the (fp32) weights of ``path``."""
    source = f"'{path}'"
    sd = load_pth(path, VAE_WHAT)
    dim, file_z_dim = _sizes_from_state_dict(sd, source)
    if file_z_dim != z_dim:
        raise CheckpointError(f"{source} holds a VAE with {file_z_dim} latent channels, "
                              f"but z_dim={z_dim} was asked for.")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    with torch.device("meta"):
        model = VideoVAE(dim=dim, z_dim=z_dim)
    load_into_meta_module(model, sd, source, "Wan2.1 VAE", device)
    log.info("Loaded the VAE (base width %d) from %s", dim, path)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------- public wrapper
class WanVAE:
    """Encode videos to normalised latents and back, as the official ``WanVAE``.

    ``dtype`` is the compute precision (autocast); the weights stay fp32.
    ``encode_chunk_frames`` and ``decode_chunk_latents`` set the default chunk
    lengths (official: 4 and 1); any valid value gives the same result.
    """

    def __init__(self, z_dim: int = 16, vae_pth: str | os.PathLike = "cache/vae_step_411000.pth",
                 dtype: torch.dtype = torch.float, device: torch.device | str = "cuda") -> None:
        if z_dim != len(LATENT_MEAN):
            raise ValueError(f"z_dim must be {len(LATENT_MEAN)} (the latent statistics of Wan2.1 "
                             f"are defined for {len(LATENT_MEAN)} channels), got {z_dim}.")
        self.dtype = dtype
        self.device = torch.device(device)
        self.mean = torch.tensor(LATENT_MEAN, dtype=dtype, device=self.device)
        self.std = torch.tensor(LATENT_STD, dtype=dtype, device=self.device)
        self.scale = [self.mean, 1.0 / self.std]
        self.encode_chunk_frames = TEMPORAL_STRIDE
        self.decode_chunk_latents = 1
        self.model = load_video_vae(vae_pth, z_dim, self.device)

    @property
    def z_dim(self) -> int:
        return self.model.z_dim

    def to(self, device: torch.device | str) -> "WanVAE":
        """Move the network and the latent statistics to ``device``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        self.scale = [self.mean, 1.0 / self.std]
        return self

    def encode(self, videos: Sequence[torch.Tensor],
               chunk_frames: int | None = None) -> list[torch.Tensor]:
        """Videos ``[3, T, H, W]`` in [-1, 1] (T = 4n+1, H and W multiples of 8) -> latents ``[16, t, h, w]``."""
        chunk_frames = self.encode_chunk_frames if chunk_frames is None else chunk_frames
        out = []
        for i, video in enumerate(_as_list(videos, "videos")):
            _check_video(video, i)
            with torch.no_grad(), self._autocast():
                mean = self.model.encode(self._prepare(video), chunk_frames)
                out.append(self._normalise(mean).float().squeeze(0))
        return out

    def decode(self, zs: Sequence[torch.Tensor],
               chunk_latents: int | None = None) -> list[torch.Tensor]:
        """Normalised latents ``[16, t, h, w]`` -> videos ``[3, 1 + 4(t-1), 8h, 8w]`` clamped to [-1, 1]."""
        chunk_latents = self.decode_chunk_latents if chunk_latents is None else chunk_latents
        out = []
        for i, z in enumerate(_as_list(zs, "zs")):
            _check_latent(z, i, self.z_dim)
            with torch.no_grad(), self._autocast():
                video = self.model.decode(self._denormalise(self._prepare(z)), chunk_latents)
                out.append(video.float().clamp_(-1, 1).squeeze(0))
        return out

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.device, dtype=torch.float32).unsqueeze(0)

    def _normalise(self, mean: torch.Tensor) -> torch.Tensor:
        return (mean - _channels(self.scale[0])) * _channels(self.scale[1])

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z / _channels(self.scale[1]) + _channels(self.scale[0])

    def _autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype,
                              enabled=self.dtype != torch.float32)


def _channels(v: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over ``[B, C, T, H, W]``."""
    return v.view(1, -1, 1, 1, 1)


def _as_list(items: Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    if isinstance(items, torch.Tensor):
        raise ValueError(f"WanVAE expects a list of tensors for '{name}', got one tensor of shape "
                         f"{tuple(items.shape)}; wrap it in a list.")
    return list(items)


def _check_video(video: torch.Tensor, i: int) -> None:
    """One clear error for a video the VAE cannot encode."""
    where = f"WanVAE.encode: video {i}"
    if not isinstance(video, torch.Tensor) or video.dim() != 4:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{where} must be a [3, T, H, W] tensor, got {shape}.")
    c, t, h, w = video.shape
    if c != 3:
        raise ValueError(f"{where} has {c} channels; the VAE needs 3 (RGB) as [3, T, H, W].")
    if (t - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"{where} has {t} frames; the VAE needs 4n+1 frames (1, 5, 9, ..., 81): "
                         f"trim or pad the clip.")
    if h % SPATIAL_STRIDE or w % SPATIAL_STRIDE:
        raise ValueError(f"{where} is {h}x{w} pixels; height and width must be multiples of "
                         f"{SPATIAL_STRIDE}: resize or crop it.")


def _check_latent(z: torch.Tensor, i: int, z_dim: int) -> None:
    """One clear error for latents the VAE cannot decode."""
    where = f"WanVAE.decode: latent {i}"
    if not isinstance(z, torch.Tensor) or z.dim() != 4:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{where} must be a [{z_dim}, t, h, w] tensor, got {shape}.")
    if z.shape[0] != z_dim:
        raise ValueError(f"{where} has {z.shape[0]} channels; the VAE needs {z_dim} "
                         f"as [{z_dim}, t, h, w].")
