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
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.checkpoint import CheckpointError, cast_state_dict, load_into_meta_module, load_pth
from .attention import attention

__all__ = ["WanVAE", "VideoVAE", "CausalCache", "TilingConfig", "LATENT_MEAN", "LATENT_STD",
           "TEMPORAL_STRIDE", "SPATIAL_STRIDE", "init_random_weights", "load_video_vae",
           "tiled_decode", "tiled_encode", "estimate_decode_bytes", "estimate_encode_bytes",
           "free_memory_bytes", "choose_tile", "CausalVAE", "Encoder3d", "Decoder3d", "VAEKind",
           "WAN21", "KNOWN_KINDS", "read_vae_file", "load_into_network"]

log = logging.getLogger(__name__)

#: Per-channel statistics of the latents of the released VAE; ``encode`` returns
#: ``(mean - LATENT_MEAN) / LATENT_STD`` and ``decode`` undoes it.
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8

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


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` ([B, C, T, H, W]) stored channels-last, the layout every layer here computes in.

    oneDNN (CPU) and cuDNN convolve channels-last tensors without reordering
    them, and the norm over channels becomes a reduction over contiguous memory.
    """
    return x.contiguous(memory_format=torch.channels_last_3d)


def per_frame(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D function to every frame of ``[B, C, T, H, W]`` (a view for channels-last input)."""
    b, c, t, h, w = x.shape
    if t == 1:  # reshape would give the size-1 batch a stride that hides the channels-last layout
        return fn(x[:, :, 0]).unsqueeze(2)
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


# --------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
    """Normalise over channels (dim 1) to unit RMS, then scale per channel by ``gamma``.

    Same result as ``F.normalize(x, dim=1) * sqrt(dim) * gamma`` up to rounding,
    computed as one reduction and in-place products.
    """

    eps = 1e-12  # the eps of F.normalize

    def __init__(self, dim: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.write(x, torch.empty_like(x))

    def write(self, x: torch.Tensor, out: torch.Tensor, silu: bool = False) -> torch.Tensor:
        """Write ``norm(x)`` (then SiLU with ``silu``) into ``out``, a tensor shaped like ``x``."""
        torch.mul(x, self._inverse_rms(x), out=out)
        out.mul_(self.gamma)
        return F.silu(out, inplace=True) if silu else out

    def _inverse_rms(self, x: torch.Tensor) -> torch.Tensor:
        """``sqrt(dim) / max(||x||, eps)`` over channels, accumulated in fp32; ``[B, 1, ...]``."""
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)
        return norm.clamp_min_(self.eps).reciprocal_().mul_(self.scale).to(x.dtype)


class CausalConv3d(nn.Conv3d, Streaming):
    """3D convolution that pads space symmetrically and time on the past side only.

    The ``kernel_t - 1`` frames before a chunk are the cached tail of the
    previous chunk, or zeros at the start of the video. A causal pass is split
    in two so that callers can write the chunk straight after its past:
    :meth:`causal_input` builds ``[past | x]`` (optionally normalised on the
    way) and :meth:`convolve` runs the convolution and stores the new tail.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int]) -> None:
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        super().__init__(in_dim, out_dim, (kt, kh, kw), padding=(0, kh // 2, kw // 2))

    @property
    def past_frames(self) -> int:
        return self.kernel_size[0] - 1

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.past_frames == 0:
            return super().forward(x)
        return self.convolve(self.causal_input(x, cache), cache)

    def causal_input(self, x: torch.Tensor, cache: CausalCache | None,
                     norm: RMSNorm | None = None) -> torch.Tensor:
        """``[past | x]`` along time as one channels-last buffer (with ``norm``: ``[past | SiLU(norm(x))]``).

        At the start of the video (no cached past) the buffer is ``x`` alone;
        :meth:`convolve` then treats the missing past as zeros.
        """
        past = self._past(cache)
        n = 0 if past is None else past.shape[2]
        b, c, t, h, w = x.shape
        buf = torch.empty((b, c, n + t, h, w), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last_3d)
        if past is not None:
            buf[:, :, :n].copy_(past)
        body = buf[:, :, n:]
        if norm is None:
            body.copy_(x)
        else:
            norm.write(x, body, silu=True)
        return buf

    def convolve(self, buf: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        """Convolve a buffer from :meth:`causal_input` and keep its last frames for the next chunk."""
        n = self.past_frames
        if self._past(cache) is not None:
            out = super().forward(buf)
        elif buf.shape[2] == 1:
            # Only the last temporal tap sees a real frame; the others multiply zeros.
            out = F.conv3d(buf, self.weight[:, :, n:], self.bias, padding=self.padding)
        else:
            out = super().forward(F.pad(buf, (0, 0, 0, 0, n, 0)))
        if cache is not None:
            cache.tails[self] = self._tail(buf, cache)
        return out

    def _past(self, cache: CausalCache | None) -> torch.Tensor | None:
        return cache.tails.get(self) if cache is not None else None

    def _tail(self, buf: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The last ``past_frames`` frames of ``[past | buf]`` (zeros standing in for a missing past)."""
        n = self.past_frames
        if buf.shape[2] < n and self._past(cache) is None:
            buf = F.pad(buf, (0, 0, 0, 0, n - buf.shape[2], 0))
        return buf[:, :, -n:].clone()


def norm_silu_conv(norm: RMSNorm, conv: CausalConv3d, x: torch.Tensor,
                   cache: CausalCache) -> torch.Tensor:
    """``conv(SiLU(norm(x)))`` with the causal past, without an intermediate copy of ``x``."""
    return conv.convolve(conv.causal_input(x, cache, norm), cache)


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x spatial upsampling, computed in fp32 (bf16 is not supported everywhere).

    Kept as the first step of :class:`Upsample`'s ``resample`` (the checkpoint
    layout); the decoder folds it into the following convolution.
    """

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
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = norm_silu_conv(norm1, conv1, x, cache)
        buf = conv2.causal_input(h, cache, norm2)
        del h  # free the first conv's output before the second one allocates its own
        h = conv2.convolve(buf, cache)
        del buf
        return h.add_(self.shortcut(x))


class AttentionBlock(nn.Module, Streaming):
    """Single-head self-attention over the pixels of each frame (frames do not mix)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return per_frame(self._attend, x).add_(x)

    def _attend(self, frames: torch.Tensor) -> torch.Tensor:
        n, c, h, w = frames.shape
        qkv = self.to_qkv(self.norm(frames))                                 # [N, 3C, H, W]
        # token-major (a view if channels-last): SDPA then takes its memory-efficient kernel
        qkv = qkv.permute(0, 2, 3, 1).reshape(n, h * w, 1, 3 * c).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)                                       # [N, H*W, 1, C]
        out = attention(q, k, v)                                             # [N, H*W, 1, C]
        return self.proj(out.reshape(n, h, w, c).permute(0, 3, 1, 2))


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


def _fold_taps(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-tap kernel (along ``dim``) applied after nearest 2x upsampling, as two 2-tap kernels.

    Output pixel ``2i`` reads input pixels ``i-1, i, i`` (taps 0, 1, 2) and
    ``2i+1`` reads ``i, i, i+1``: so phase 0 is ``[w0, w1+w2]`` on ``(i-1, i)``
    and phase 1 is ``[w0+w1, w2]`` on ``(i, i+1)``.
    """
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def upsample_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(nearest_2x(x))`` for a 3x3 ``conv`` (padding 1), without building the upsampled input.

    The four output phases (even/odd row x even/odd column) are 2x2
    convolutions of ``x`` with summed taps: one convolution with four times
    the output channels and 4/9 of the multiply-adds, then an interleave.
    """
    n, _, h, w = x.shape
    out_dim = conv.out_channels
    kernels = [k for rows in _fold_taps(conv.weight, 2) for k in _fold_taps(rows, 3)]
    phases = F.conv2d(x, torch.cat(kernels), conv.bias.repeat(4), padding=1)  # [N, 4C, H+1, W+1]
    out = torch.empty((n, out_dim, 2 * h, 2 * w), dtype=phases.dtype, device=phases.device,
                      memory_format=torch.channels_last)
    grid = out.view(n, out_dim, h, 2, w, 2)
    for p, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        grid[:, :, :, a, :, b].copy_(phases[:, p * out_dim:(p + 1) * out_dim, a:a + h, b:b + w])
    return out


class Upsample(nn.Module, Streaming):
    """Double height and width and halve the channels (or give ``out_dim``); with ``temporal``
    also double the frames.

    In time the first frame of the video passes through unchanged; each later
    frame becomes two, read from the two channel halves of a causal temporal
    convolution that starts at the second frame (the first one is not in its past).
    """

    def __init__(self, dim: int, temporal: bool, out_dim: int | None = None) -> None:
        super().__init__()
        out_dim = dim // 2 if out_dim is None else out_dim  # Wan2.1 halves, Wan2.2 keeps the width
        self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, out_dim, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.time_conv is not None:
            x = self._split_frames(x, cache)
        return per_frame(partial(upsample_conv2d, conv=self.resample[1]), x)

    def _split_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        first = self not in cache.started       # the first frame of the video passes through
        cache.started.add(self)
        later = x[:, :, 1:] if first else x
        if later.shape[2] == 0:
            return x
        y = self.time_conv(later, cache)                             # [B, 2C, T, H, W]
        b, c2, t, h, w = y.shape
        c = c2 // 2
        out = torch.empty((b, c, int(first) + 2 * t, h, w), dtype=y.dtype, device=y.device,
                          memory_format=torch.channels_last_3d)
        if first:
            out[:, :, :1].copy_(x[:, :, :1])
        # frame 2k+s of the output is channel half s of frame k
        out[:, :, int(first):].unflatten(2, (t, 2)).copy_(
            y.unflatten(1, (2, c)).permute(0, 2, 3, 1, 4, 5))
        return out


def middle_blocks(dim: int) -> nn.Sequential:
    """Residual block, attention, residual block: the bottleneck of encoder and decoder."""
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def output_head(in_dim: int, out_dim: int) -> nn.Sequential:
    """Norm, SiLU and a causal 3x3x3 convolution (names head.0 and head.2)."""
    return nn.Sequential(RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3))


def run_head(head: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    norm, _, conv = head
    return norm_silu_conv(norm, conv, x, cache)


# --------------------------------------------------------------------- encoder / decoder
def _holds(block: nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in block.modules())


class Encoder3d(nn.Module):
    """Video ``[B, 3, T, H, W]`` -> ``[B, out_dim, 1 + (T-1)/4, H/8, W/8]``.

    Subclasses (the Wan2.2 encoder) build other ``downsamples`` and may turn pixels
    into patches first (:meth:`to_patches`); the two stages below serve both.
    """

    #: pixels per side folded into the channels before the first convolution
    patch_size = 1

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

    def to_patches(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.latent_stage(self.pixel_stage(x, cache), cache)

    def pixel_stage(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Pixels to features at latent resolution: every layer up to the last downsampler.

        Each output pixel sees a bounded neighbourhood, so this stage can run on tiles.
        """
        x = self.conv1(channels_last(self.to_patches(x)), cache)
        return run_layers(self.downsamples[:self._split], x, cache)

    def latent_stage(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The rest, at latent resolution (its attention sees whole frames)."""
        x = run_layers(self.downsamples[self._split:], x, cache)
        x = run_layers(self.middle, x, cache)
        return run_head(self.head, x, cache)

    def stream_units(self) -> list[nn.Module]:
        """The layers in the order they run, residual blocks and resamplers one by one."""
        return [self.conv1, *_flat_blocks(self.downsamples), *self.middle, self.head]

    @property
    def _split(self) -> int:
        return 1 + max(i for i, m in enumerate(self.downsamples) if _holds(m, Downsample))


class Decoder3d(nn.Module):
    """Latents ``[B, z_dim, t, h, w]`` -> video ``[B, 3, 1 + 4(t-1), 8h, 8w]`` (unclamped).

    Subclasses (the Wan2.2 decoder) build other ``upsamples`` and may turn patches back
    into pixels last (:meth:`from_patches`).
    """

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

    def from_patches(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        return self.pixel_stage(self.latent_stage(x, cache), cache)

    def latent_stage(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Every layer before the first upsampler, at latent resolution (its attention sees
        whole frames)."""
        x = self.conv1(channels_last(x), cache)
        x = run_layers(self.middle, x, cache)
        return run_layers(self.upsamples[:self._split], x, cache)

    def pixel_stage(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """The upsampling levels and the head. Each output pixel sees a bounded neighbourhood
        of the input features, so this stage (where nearly all memory and time go) can run
        on tiles."""
        x = run_layers(self.upsamples[self._split:], x, cache)
        return self.from_patches(run_head(self.head, x, cache))

    def stream_units(self) -> list[nn.Module]:
        """The layers in the order they run, residual blocks and resamplers one by one."""
        return [self.conv1, *self.middle, *_flat_blocks(self.upsamples), self.head]

    @property
    def _split(self) -> int:
        return min(i for i, m in enumerate(self.upsamples) if _holds(m, Upsample))


def _flat_blocks(blocks: nn.Sequential) -> Iterator[nn.Module]:
    """``blocks`` with every container of residual blocks and resamplers (a Wan2.2 level)
    replaced by its main-path layers."""
    for block in blocks:
        inner = getattr(block, "main_path", None)
        if inner is None:
            yield block
        else:
            yield from _flat_blocks(inner)


def _chunks(length: int, size: int, start: int = 0) -> Iterator[slice]:
    """Slices ``[start, start+size)``, ``[start+size, ...)``, ... covering ``[start, length)``."""
    for i in range(start, length, size):
        yield slice(i, min(i + size, length))


def _check_chunk(name: str, value: int, multiple: int = 1) -> None:
    if not isinstance(value, int) or value <= 0 or value % multiple:
        need = f"a positive multiple of {multiple}" if multiple > 1 else "a positive integer"
        raise ValueError(f"{name} must be {need}, got {value!r}.")


class CausalVAE(nn.Module):
    """What the Wan2.1 and Wan2.2 networks share: an ``encoder`` and a ``decoder`` run chunk
    by chunk over one :class:`CausalCache`, with the 1x1x1 ``conv1`` (posterior) and
    ``conv2`` (latents in) between them. Works on raw, unnormalised latents."""

    #: pixels per latent along height and width
    spatial_stride = SPATIAL_STRIDE
    encoder: Encoder3d
    decoder: Decoder3d
    conv1: CausalConv3d
    conv2: CausalConv3d

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
        return mean.contiguous()

    def decode(self, z: torch.Tensor, chunk_latents: int = 1) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` (unclamped) from raw latents, ``chunk_latents`` frames at a time."""
        _check_chunk("chunk_latents", chunk_latents)
        x = self.conv2(z)
        cache = CausalCache()
        return torch.cat([self.decoder(x[:, :, s], cache)
                          for s in _chunks(x.shape[2], chunk_latents)], dim=2).contiguous()


class VideoVAE(CausalVAE):
    """The Wan2.1 autoencoder network (official name ``WanVAE_``).

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


# --------------------------------------------------------------------- spatial tiling
TILING_MODES = ("auto", "on", "off")

#: Auto mode tiles when the estimated activation memory of an untiled pass exceeds
#: this fraction of the device's free memory (CUDA: free memory; CPU: MemAvailable).
AUTO_TILING_MEMORY_FRACTION = 0.5


@dataclass
class TilingConfig:
    """Spatial tiling of :class:`WanVAE` passes; sizes are in latents (x8 pixels).

    ``mode``: ``"off"`` never tiles, ``"on"`` always tiles frames larger than
    one tile, ``"auto"`` tiles when :func:`estimate_decode_bytes` (or
    :func:`estimate_encode_bytes`) exceeds ``memory_fraction`` of
    :func:`free_memory_bytes`, then with the largest tile (``tile``, growing in
    steps of 8 latents) whose estimate fits. Neighbouring tiles share at least
    ``overlap`` latents and are blended linearly across the overlap.
    """
    mode: str = "auto"
    tile: int = 32
    overlap: int = 8
    memory_fraction: float = AUTO_TILING_MEMORY_FRACTION

    def __post_init__(self) -> None:
        if self.mode not in TILING_MODES:
            raise ValueError(f"VAE tiling must be one of {', '.join(TILING_MODES)}, got {self.mode!r}.")
        if not 0 <= self.overlap < self.tile / 2 or self.tile < 2:
            raise ValueError(f"VAE tiles need 0 <= overlap < tile / 2, got tile={self.tile}, "
                             f"overlap={self.overlap}.")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced starts of the fewest ``tile``-long windows covering ``[0, length)``
    with at least ``overlap`` shared between neighbours."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [i * (length - tile) // (count - 1) for i in range(count)]


def blend_ramps(starts: list[int], size: int, scale: int, device: torch.device) -> list[torch.Tensor]:
    """Per-tile 1D weights (``size * scale`` long) for blending tiles along one axis.

    Across the overlap of two neighbours one weight falls linearly from 1 to 0
    while the other rises, so they sum to 1. The ramp spans the central half
    of the overlap: in its outer quarters a tile's pixels near its own border
    (the least accurate: the network saw zeros beyond it) get weight 0.
    Weights are 1 elsewhere, also at the frame's borders.
    """
    ramps = []
    pos = torch.arange(size * scale, dtype=torch.float32, device=device) + 0.5
    for i, start in enumerate(starts):
        w = torch.ones(size * scale, device=device)
        if i > 0:
            w = torch.minimum(w, _ramp(pos, (starts[i - 1] + size - start) * scale))
        if i + 1 < len(starts):
            w = torch.minimum(w, _ramp(size * scale - pos, (start + size - starts[i + 1]) * scale))
        ramps.append(w)
    return ramps


def _ramp(distance: torch.Tensor, overlap: int) -> torch.Tensor:
    """0 for the first quarter of ``overlap`` from a tile's border, 1 after three quarters,
    linear in between."""
    return ((distance - overlap / 4) / (overlap / 2)).clamp_(0, 1)


def _blend_tiles(process: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int,
                 overlap: int, in_scale: int, out_scale: int) -> torch.Tensor:
    """Run ``process`` on overlapping spatial tiles of ``x`` and blend the results.

    Tiles are ``tile`` x ``tile`` units; a unit is ``in_scale`` pixels of ``x``
    and ``out_scale`` pixels of the output (decode: 1 -> 8, encode: 8 -> 1).
    """
    h, w = x.shape[-2] // in_scale, x.shape[-1] // in_scale
    th, tw = min(tile, h), min(tile, w)
    rows, cols = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    row_w = blend_ramps(rows, th, out_scale, x.device)
    col_w = blend_ramps(cols, tw, out_scale, x.device)
    if len(rows) == len(cols) == 1:
        return process(x)
    log.debug("VAE tiling: %d x %d tiles of %d x %d units", len(rows), len(cols), th, tw)
    out = norm = None
    for r, wr in zip(rows, row_w):
        for c, wc in zip(cols, col_w):
            y = process(x[..., r * in_scale:(r + th) * in_scale, c * in_scale:(c + tw) * in_scale])
            if out is None:
                out = y.new_zeros((*y.shape[:-2], h * out_scale, w * out_scale))
                norm = torch.zeros(h * out_scale, w * out_scale, device=y.device)
            weight = wr[:, None] * wc[None, :]
            region = (..., slice(r * out_scale, (r + th) * out_scale),
                      slice(c * out_scale, (c + tw) * out_scale))
            out[region].add_(y.mul_(weight.to(y.dtype)))
            norm[region[1:]].add_(weight)
            del y
    return out.div_(norm.to(out.dtype))


def tiled_decode(model: CausalVAE, z: torch.Tensor, tile: int = 32, overlap: int = 8,
                 chunk_latents: int = 1) -> torch.Tensor:
    """:meth:`CausalVAE.decode` in bounded memory: overlapping spatial tiles, blended in pixel space.

    The decoder's latent-resolution stage (up to its first upsampler, with the
    per-frame attention) runs on whole frames, which keeps the attention exact
    and costs little memory; its output is cut into ``tile`` x ``tile``-latent
    tiles sharing ``overlap`` latents, each decoded to pixels on its own (all
    frames, one causal cache per tile) and blended linearly across the overlaps.
    """
    decoder = model.decoder
    _check_chunk("chunk_latents", chunk_latents)
    x = model.conv2(z)
    cache = CausalCache()
    features = torch.cat([decoder.latent_stage(x[:, :, s], cache)
                          for s in _chunks(x.shape[2], chunk_latents)], dim=2)
    del cache, x

    def decode_tile(f: torch.Tensor) -> torch.Tensor:
        tile_cache = CausalCache()
        return torch.cat([decoder.pixel_stage(f[:, :, s], tile_cache)
                          for s in _chunks(f.shape[2], chunk_latents)], dim=2).contiguous()

    return _blend_tiles(decode_tile, features, tile, overlap, in_scale=1,
                        out_scale=model.spatial_stride)


def tiled_encode(model: CausalVAE, x: torch.Tensor, tile: int = 32, overlap: int = 8,
                 chunk_frames: int = TEMPORAL_STRIDE) -> torch.Tensor:
    """:meth:`CausalVAE.encode` in bounded memory: the encoder's pixel stage on overlapping tiles
    of ``tile * spatial_stride`` pixels, blended at latent resolution, then its latent stage on whole frames."""
    encoder = model.encoder
    _check_chunk("chunk_frames", chunk_frames, TEMPORAL_STRIDE)

    def encode_tile(v: torch.Tensor) -> torch.Tensor:
        tile_cache = CausalCache()
        parts = [encoder.pixel_stage(v[:, :, :1], tile_cache)]
        parts += [encoder.pixel_stage(v[:, :, s], tile_cache)
                  for s in _chunks(v.shape[2], chunk_frames, 1)]
        return torch.cat(parts, dim=2)

    features = _blend_tiles(encode_tile, x, tile, overlap, in_scale=model.spatial_stride,
                            out_scale=1)
    cache = CausalCache()
    latents = torch.cat([encoder.latent_stage(features[:, :, s], cache)
                         for s in _chunks(features.shape[2], 1)], dim=2)
    mean, _log_var = model.conv1(latents).chunk(2, dim=1)
    return mean.contiguous()


def _causal_tails(module: nn.Module) -> int:
    """Channel-frames a module keeps in a :class:`CausalCache` per pixel of its input."""
    return sum(m.past_frames * m.in_channels for m in module.modules()
               if isinstance(m, CausalConv3d)) + sum(
        m.time_conv.in_channels for m in module.modules()
        if isinstance(m, Downsample) and m.time_conv is not None)


def _working_set(block: nn.Module, frames: int) -> int:
    """Channel-frames per pixel alive inside a residual block: input, padded input, output."""
    if not isinstance(block, ResidualBlock):
        return 0
    return (3 * frames + 2) * max(block.residual[2].in_channels, block.residual[2].out_channels)


def estimate_decode_bytes(model: CausalVAE, height: int, width: int, chunk_latents: int = 1,
                          element_size: int = 4) -> int:
    """Estimated peak activation memory of an untiled decode of ``height`` x ``width`` latents.

    The sum, over the decoder's layers, of the frames every causal convolution
    caches (they all live until the end of the video) plus the largest working
    set of one residual block (its input, its past-padded input and its output
    for one chunk), at the resolution and frame count of the layer's level.
    Weights and the output video are not included, nor, for a tiled decode,
    the whole-frame latent-resolution features (about half the output's size).
    """
    dec = model.decoder
    area = height * width
    frames = chunk_latents
    total = work = 0
    for block in dec.stream_units():
        total += _causal_tails(block) * area
        work = max(work, _working_set(block, frames) * area)
        if isinstance(block, Upsample):
            area *= 4
            frames *= 2 if block.time_conv is not None else 1
    work = max(work, (2 * frames + 2) * dec.head[2].in_channels * area)
    return (total + work) * element_size


def estimate_encode_bytes(model: CausalVAE, height: int, width: int,
                          chunk_frames: int = TEMPORAL_STRIDE, element_size: int = 4) -> int:
    """Estimated peak activation memory of an untiled encode to ``height`` x ``width`` latents
    (``spatial_stride * height`` x ``spatial_stride * width`` pixels), counted as
    :func:`estimate_decode_bytes` does."""
    enc = model.encoder
    area = height * width * (model.spatial_stride // enc.patch_size) ** 2
    frames = chunk_frames
    total = 0
    work = (2 * frames + 2) * (enc.conv1.in_channels + enc.conv1.out_channels) * area
    for block in enc.stream_units():
        total += _causal_tails(block) * area
        work = max(work, _working_set(block, frames) * area)
        if isinstance(block, Downsample):
            area //= 4
            frames //= 2 if block.time_conv is not None else 1
    return (total + work) * element_size


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a pass on ``device`` may use: CUDA's free memory, else the host's available RAM
    (``MemAvailable`` of /proc/meminfo, or psutil); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return psutil.virtual_memory().available
    except ImportError:
        return None


def choose_tile(config: TilingConfig, size: tuple[int, int], estimate: Callable[[int, int], int],
                device: torch.device) -> int | None:
    """The tile (in latents) a pass over ``size`` latents should use, or None for no tiling."""
    h, w = size
    if config.mode == "off" or max(h, w) <= config.tile and config.mode == "on":
        return None
    if config.mode == "on":
        return config.tile
    free = free_memory_bytes(device)
    if free is None:
        return None
    budget = config.memory_fraction * free
    need = estimate(h, w)
    if need <= budget:
        return None
    tile = config.tile
    while tile + 8 < max(h, w) and estimate(min(tile + 8, h), min(tile + 8, w)) <= budget:
        tile += 8
    log.info("VAE: an untiled pass over %dx%d latents needs about %.1f GiB, more than %.0f%% of "
             "the %.1f GiB free; tiling it in %d-latent tiles", h, w, need / 2**30,
             100 * config.memory_fraction, free / 2**30, tile)
    return tile


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


@dataclass(frozen=True)
class VAEKind:
    """What tells the VAE generations apart: their files, input and latent channels, strides
    and latent statistics."""
    name: str                     # "Wan2.1"
    file_name: str                # "Wan2.1_VAE.pth"
    in_channels: int              # input channels of encoder.conv1 (3, or 12 for 2x2 patches)
    latent_mean: tuple[float, ...]
    latent_std: tuple[float, ...]
    spatial_stride: int

    @property
    def z_dim(self) -> int:
        return len(self.latent_mean)

    @property
    def what(self) -> str:
        return f"{self.name} VAE checkpoint"

    def describe(self) -> str:
        return f"{self.name} VAE ({self.z_dim} latent channels, {self.in_channels} input channels)"


WAN21 = VAEKind("Wan2.1", "Wan2.1_VAE.pth", 3, LATENT_MEAN, LATENT_STD, SPATIAL_STRIDE)
#: The kinds a file can be recognised as, by (input channels, latent channels); the Wan2.2
#: entry is registered by :mod:`wan.modules.vae2_2`.
KNOWN_KINDS: dict[tuple[int, int], VAEKind] = {(WAN21.in_channels, WAN21.z_dim): WAN21}


def read_vae_file(path: str | os.PathLike, kind: VAEKind,
                  z_dim: int | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The fp32 state dict of the ``kind`` VAE file ``path`` (and its name for messages).

    A file that is no VAE, or a VAE of another kind (or with other than ``z_dim``
    latent channels), gives one :class:`CheckpointError` saying what it holds.
    """
    source = f"'{path}'"
    sd = load_pth(path, kind.what)
    first, last = sd.get("encoder.conv1.weight"), sd.get("conv2.weight")
    if first is None or last is None or first.dim() != 5 or last.dim() != 5:
        raise CheckpointError(
            f"{source} does not hold a {kind.name} VAE (no 5-D 'encoder.conv1.weight' / "
            f"'conv2.weight'); pass the VAE file, e.g. {kind.file_name}.")
    found = (first.shape[1], last.shape[0])
    from . import vae2_2  # noqa: F401  (registers the Wan2.2 kind, to name such a file)
    other = KNOWN_KINDS.get(found)
    if other is not None and other is not kind:
        raise CheckpointError(
            f"{source} holds a {other.describe()}, not a {kind.describe()}: pass "
            f"{kind.file_name} (this file is {other.file_name}, for {other.name} models).")
    if found[0] != kind.in_channels:
        raise CheckpointError(
            f"{source} holds a VAE with {found[0]} input and {found[1]} latent channels, "
            f"not a {kind.describe()}; pass {kind.file_name}.")
    want = kind.z_dim if z_dim is None else z_dim
    if found[1] != want:
        raise CheckpointError(f"{source} holds a VAE with {found[1]} latent channels, "
                              f"but z_dim={want} was asked for.")
    sd = cast_state_dict(sd, torch.float32, "VAE", source, note="the VAE computes in fp32")
    return sd, source


def load_into_network(build: Callable[[], CausalVAE], sd: dict[str, torch.Tensor], source: str,
                      kind: VAEKind, device: torch.device | str) -> CausalVAE:
    """``build()`` on the meta device, given the tensors of ``sd``; in eval mode, frozen."""
    with torch.device("meta"):
        model = build()
    load_into_meta_module(model, sd, source, f"{kind.name} VAE", device)
    return model.eval().requires_grad_(False)


def load_video_vae(path: str | os.PathLike, z_dim: int = 16,
                   device: torch.device | str = "cpu") -> VideoVAE:
    """Build the Wan2.1 network on the meta device and give it the (fp32) weights of ``path``."""
    sd, source = read_vae_file(path, WAN21, z_dim)
    dim = sd["encoder.conv1.weight"].shape[0]
    model = load_into_network(partial(VideoVAE, dim=dim, z_dim=z_dim), sd, source, WAN21, device)
    log.info("Loaded the VAE (base width %d) from %s", dim, path)
    return model


# --------------------------------------------------------------------- public wrapper
class WanVAE:
    """Encode videos to normalised latents and back, as the official ``WanVAE``.

    ``dtype`` is the compute precision (autocast); the weights stay fp32.
    ``encode_chunk_frames`` and ``decode_chunk_latents`` set the default chunk
    lengths (official: 4 and 1); any valid value gives the same result.
    ``tiling`` (``"auto"``, ``"on"``, ``"off"`` or a :class:`TilingConfig`)
    sets spatial tiling; ``"auto"`` tiles only passes that would not fit in memory.

    Subclasses for other VAE generations (:class:`wan.modules.vae2_2.Wan2_2_VAE`) set
    ``kind`` and load their network; the list handling, checks, normalisation, chunking
    and tiling here serve them all.
    """

    kind: VAEKind = WAN21

    def __init__(self, z_dim: int = 16, vae_pth: str | os.PathLike = "cache/vae_step_411000.pth",
                 dtype: torch.dtype = torch.float, device: torch.device | str = "cuda",
                 tiling: TilingConfig | str = "auto") -> None:
        self._setup(z_dim, dtype, device, tiling)
        self.model = load_video_vae(vae_pth, z_dim, self.device)

    def _setup(self, z_dim: int, dtype: torch.dtype, device: torch.device | str,
               tiling: TilingConfig | str) -> None:
        """Everything but the network: the z_dim check, statistics, chunks and tiling."""
        kind = self.kind
        if z_dim != kind.z_dim:
            raise ValueError(f"z_dim must be {kind.z_dim} (the latent statistics of {kind.name} "
                             f"are defined for {kind.z_dim} channels), got {z_dim}.")
        self.dtype = dtype
        self.device = torch.device(device)
        self.mean = torch.tensor(kind.latent_mean, dtype=dtype, device=self.device)
        self.std = torch.tensor(kind.latent_std, dtype=dtype, device=self.device)
        self.scale = [self.mean, 1.0 / self.std]
        self.encode_chunk_frames = TEMPORAL_STRIDE
        self.decode_chunk_latents = 1
        self.tiling = tiling

    @property
    def z_dim(self) -> int:
        return self.model.z_dim

    @property
    def tiling(self) -> TilingConfig:
        """Spatial tiling of encodes and decodes; set a mode string or a :class:`TilingConfig`."""
        return self._tiling

    @tiling.setter
    def tiling(self, value: TilingConfig | str) -> None:
        self._tiling = value if isinstance(value, TilingConfig) else TilingConfig(mode=value)

    def to(self, device: torch.device | str) -> "WanVAE":
        """Move the network and the latent statistics to ``device``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)
        self.scale = [self.mean, 1.0 / self.std]
        return self

    def encode(self, videos: Sequence[torch.Tensor],
               chunk_frames: int | None = None) -> list[torch.Tensor]:
        """Videos ``[3, T, H, W]`` in [-1, 1] (T = 4n+1, H and W multiples of the spatial stride,
        8 for Wan2.1) -> latents ``[z_dim, 1 + (T-1)/4, H/stride, W/stride]``."""
        chunk_frames = self.encode_chunk_frames if chunk_frames is None else chunk_frames
        stride = self.kind.spatial_stride
        out = []
        for i, video in enumerate(self._as_list(videos, "videos")):
            _check_video(video, f"{type(self).__name__}.encode: video {i}", stride)
            with torch.no_grad(), self._autocast():
                x = self._prepare(video)
                tile = self._tile(x.shape[-2] // stride, x.shape[-1] // stride,
                                  partial(estimate_encode_bytes, self.model,
                                          chunk_frames=chunk_frames))
                mean = (self.model.encode(x, chunk_frames) if tile is None else
                        tiled_encode(self.model, x, tile, self.tiling.overlap, chunk_frames))
                out.append(self._normalise(mean).float().squeeze(0))
        return out

    def decode(self, zs: Sequence[torch.Tensor],
               chunk_latents: int | None = None) -> list[torch.Tensor]:
        """Normalised latents ``[z_dim, t, h, w]`` -> videos ``[3, 1 + 4(t-1), stride h, stride w]``
        clamped to [-1, 1]."""
        chunk_latents = self.decode_chunk_latents if chunk_latents is None else chunk_latents
        out = []
        for i, z in enumerate(self._as_list(zs, "zs")):
            _check_latent(z, f"{type(self).__name__}.decode: latent {i}", self.z_dim)
            with torch.no_grad(), self._autocast():
                z = self._denormalise(self._prepare(z))
                tile = self._tile(z.shape[-2], z.shape[-1],
                                  partial(estimate_decode_bytes, self.model,
                                          chunk_latents=chunk_latents))
                video = (self.model.decode(z, chunk_latents) if tile is None else
                         tiled_decode(self.model, z, tile, self.tiling.overlap, chunk_latents))
                out.append(video.float().clamp_(-1, 1).squeeze(0))
        return out

    def _as_list(self, items: Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
        if isinstance(items, torch.Tensor):
            raise ValueError(f"{type(self).__name__} expects a list of tensors for '{name}', got "
                             f"one tensor of shape {tuple(items.shape)}; wrap it in a list.")
        return list(items)

    def _tile(self, height: int, width: int, estimate: Callable[..., int]) -> int | None:
        """The tile size (latents) for a pass over ``height`` x ``width`` latents, or None."""
        element_size = torch.finfo(self.dtype).bits // 8
        return choose_tile(self.tiling, (height, width),
                           partial(estimate, element_size=element_size), self.device)

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


def _check_video(video: torch.Tensor, where: str, stride: int = SPATIAL_STRIDE) -> None:
    """One clear error for a video the VAE cannot encode."""
    if not isinstance(video, torch.Tensor) or video.dim() != 4:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{where} must be a [3, T, H, W] tensor, got {shape}.")
    c, t, h, w = video.shape
    if c != 3:
        raise ValueError(f"{where} has {c} channels; the VAE needs 3 (RGB) as [3, T, H, W].")
    if (t - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"{where} has {t} frames; the VAE needs 4n+1 frames (1, 5, 9, ..., 81): "
                         f"trim or pad the clip.")
    if h % stride or w % stride:
        raise ValueError(f"{where} is {h}x{w} pixels; height and width must be multiples of "
                         f"{stride}: resize or crop it.")


def _check_latent(z: torch.Tensor, where: str, z_dim: int) -> None:
    """One clear error for latents the VAE cannot decode."""
    if not isinstance(z, torch.Tensor) or z.dim() != 4:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"{where} must be a [{z_dim}, t, h, w] tensor, got {shape}.")
    if z.shape[0] != z_dim:
        raise ValueError(f"{where} has {z.shape[0]} channels; the VAE needs {z_dim} "
                         f"as [{z_dim}, t, h, w].")
