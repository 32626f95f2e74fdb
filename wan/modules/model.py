"""The Wan2.1 diffusion transformer (DiT) for text-, image- and first-last-frame-to-video.

Structure (parameter names are those of the official checkpoints):

* ``patch_embedding``: Conv3d with a (1, 2, 2) patch over the latent video;
* ``text_embedding``: MLP (GELU tanh) from the umT5 width to the model width;
* ``time_embedding`` -> ``time_projection``: sinusoidal embedding -> MLP (SiLU) ->
  one projection to six modulation vectors, shared by all blocks; each block
  adds its own learned ``modulation`` bias;
* ``blocks``: modulated self-attention (RMSNorm on q/k, 3-axis RoPE),
  cross-attention on the text (and, for i2v, a second key/value pair over the
  257 CLIP image tokens; for flf2v over the 2 x 257 tokens of the first and the
  last frame), modulated GELU-tanh feed-forward;
* ``head``: two-vector modulated projection back to patches, then unpatchify.

Modulation and the residual stream are computed in fp32, as in the official
code, also when the matmuls run in bf16 under autocast.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .linear import Linear

__all__ = ["WanModel", "cached_context", "sinusoidal_embedding_1d", "rope_tables", "apply_rope",
           "is_matmul_weight", "dit_dtype_rule", "MODEL_TYPES"]

log = logging.getLogger(__name__)

CLIP_TOKENS = 257
MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")  # ti2v: Wan2.2 TI2V-5B, a t2v DiT over 48 channels
IMAGE_MODEL_TYPES = ("i2v", "flf2v")  # the types with CLIP image tokens (img_emb, k_img/v_img)
VACE_PREFIXES = ("vace_blocks.", "vace_patch_embedding.")  # the VACE model's own tensors

# Linear/Conv tensors that the official code runs under bf16 autocast. Storing exactly
# these in bf16 gives the same arithmetic as autocast (which rounds them the same way at
# every call) at half the memory. Norms, modulation, the time MLP and the head stay fp32.
# The VACE model (wan.modules.vace_model) adds ``vace_patch_embedding`` and ``vace_blocks.N``,
# whose Linear layers (and ``before_proj`` / ``after_proj``) also run under autocast.
_MATMUL_WEIGHT = re.compile(
    r"^((vace_)?patch_embedding|text_embedding\.[02]|img_emb\.proj\.[13]|"
    r"(vace_)?blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.([qkvo]|k_img|v_img)|ffn\.[02]|"
    r"before_proj|after_proj))"
    r"\.(weight|bias)$")


def is_matmul_weight(name: str) -> bool:
    """True for the DiT tensors that run in the autocast dtype under mixed precision."""
    return _MATMUL_WEIGHT.match(name) is not None


def dit_dtype_rule(torch_dtype: torch.dtype | None = None,
                   matmul_dtype: torch.dtype | None = None):
    """The DiT's dtype policy: ``matmul_dtype`` for the autocast-region Linear/Conv
    tensors (when given), ``torch_dtype`` (default fp32) for everything else."""
    rest = torch_dtype or torch.float32

    def dtype_for(name: str) -> torch.dtype:
        if matmul_dtype is not None and is_matmul_weight(name):
            return matmul_dtype
        return rest
    return dtype_for


def _dtype_note(torch_dtype: torch.dtype | None, matmul_dtype: torch.dtype | None) -> str:
    if matmul_dtype is None:
        return ""
    if torch_dtype is not None and torch_dtype != torch.float32:
        return f"the whole DiT in {str(torch_dtype).replace('torch.', '')} (convert_model_dtype)"
    rest = str(torch_dtype or torch.float32).replace("torch.", "")
    return (f"norms, modulation, embeddings and the head in {rest} as the official computes "
            f"them; matmul weights in {str(matmul_dtype).replace('torch.', '')}")


# ----------------------------------------------------------------- math
def _no_autocast(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """``[B] -> [B, dim]`` embedding ``[cos(p w), sin(p w)]`` computed in fp64."""
    if dim % 2:
        raise ValueError(f"frequency dimension must be even, got {dim}")
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Widths of a head given to the frame, height and width rotary axes (official split)."""
    return head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)


def _axis_angles(n: int, width: int, theta: float = 10000.0) -> torch.Tensor:
    """``[n, width/2]`` rotation angles of positions 0..n-1 for one axis (fp64)."""
    inv = 1.0 / torch.pow(theta, torch.arange(0, width, 2, dtype=torch.float64) / width)
    return torch.outer(torch.arange(n, dtype=torch.float64), inv)


@lru_cache(maxsize=32)
def _grid_angles(grid: tuple[int, int, int], head_dim: int) -> torch.Tensor:
    """``[f*h*w, head_dim/2]`` angles for a latent grid, frame-major order (fp64, CPU)."""
    f, h, w = grid
    df, dh, dw = rope_axis_dims(head_dim)
    af, ah, aw = _axis_angles(f, df), _axis_angles(h, dh), _axis_angles(w, dw)
    return torch.cat([
        af[:, None, None, :].expand(f, h, w, -1),
        ah[None, :, None, :].expand(f, h, w, -1),
        aw[None, None, :, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, -1)


def rope_tables(grids: Sequence[Sequence[int]], seq_len: int, head_dim: int,
                device: torch.device | str) -> torch.Tensor:
    """Rotations ``exp(i angle)`` as complex64 ``[B, seq_len, 1, head_dim/2]`` for a batch of grids.

    Angles are computed in fp64 (as the official complex table) and rounded once
    to fp32. Padding positions get the identity rotation. Tables are built once
    per shape and device and reused by every step.
    """
    key = tuple(tuple(int(g) for g in grid) for grid in grids)
    return _rope_tables(key, int(seq_len), int(head_dim), torch.device(device))


@lru_cache(maxsize=8)
def _rope_tables(grids: tuple[tuple[int, int, int], ...], seq_len: int, head_dim: int,
                 device: torch.device) -> torch.Tensor:
    cos = torch.ones(len(grids), seq_len, head_dim // 2, dtype=torch.float64)
    sin = torch.zeros(len(grids), seq_len, head_dim // 2, dtype=torch.float64)
    for i, grid in enumerate(grids):
        ang = _grid_angles(tuple(int(g) for g in grid), head_dim)
        cos[i, :ang.size(0)] = torch.cos(ang)
        sin[i, :ang.size(0)] = torch.sin(ang)
    return torch.complex(cos.float(), sin.float()).unsqueeze(2).to(device)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x [B, L, N, D]`` by ``rope`` (complex64) in fp32.

    One complex product per pair: ``(x0 + i x1) (cos + i sin)``, the official
    rotation in fp32 arithmetic; returns fp32.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rope).flatten(-2)


# ----------------------------------------------------------------- layers
class WanRMSNorm(nn.Module):
    """RMS norm over the last dimension, statistics in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # one fused kernel, same formula
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        normed = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps)
        return normed.type_as(x) * self.weight


def _layer_norm_fp32_params(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm of ``x`` with half-precision parameters upcast to fp32 (as CUDA autocast
    runs LayerNorm: in fp32), for DiTs stored wholly in bf16 (``convert_model_dtype``)."""
    w = None if norm.weight is None else norm.weight.float()
    b = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps)


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and self.weight.dtype != torch.float32:
            return _layer_norm_fp32_params(self, x).type_as(x)
        return super().forward(x.float()).type_as(x)


class ProjLayerNorm(nn.LayerNorm):
    """The plain LayerNorm of the image projection; half-precision parameters are upcast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None and self.weight.dtype != torch.float32:
            return _layer_norm_fp32_params(self, x)
        return super().forward(x)


def _split_modulation(m: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """``[B, n, C]`` -> n tensors ``[B, 1, C]`` (one vector for all tokens), or per-token
    ``[B, L, n, C]`` -> n tensors ``[B, L, C]``."""
    parts = m.chunk(n, dim=-2)
    return tuple(p.squeeze(-2) for p in parts) if m.dim() == 4 else parts


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` in fp32, as one fused operation."""
    return torch.addcmul(shift, x.float(), 1 + scale)


class FeedForward(nn.Sequential):
    """``Linear -> GELU (tanh) -> Linear`` (checkpoint keys ``ffn.0`` and ``ffn.2``).

    At inference the GELU runs in place on the first projection's output, the
    largest activation of a block, instead of allocating a second one like it.
    """

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__(Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), Linear(ffn_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, act, fc2 = self
        h = fc1(x)
        if torch.is_grad_enabled() and h.requires_grad:
            return fc2(act(h))
        return fc2(torch.ops.aten.gelu_(h, approximate=act.approximate))


class SelfAttention(nn.Module):
    """Multi-head self-attention with RMS-normalised q/k and 3-axis RoPE."""

    # Set by wan.distributed.sequence_parallel: attention of this rank's slice over all ranks.
    sp = None

    def __init__(self, dim: int, num_heads: int, window_size=(-1, -1), qk_norm: bool = True,
                 eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.window_size = tuple(window_size)
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.o = Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, seq_lens: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        q = apply_rope(self._heads(self.norm_q(self.q(x))), rope)
        k = apply_rope(self._heads(self.norm_k(self.k(x))), rope)
        v = self._heads(self.v(x))
        attend = attention if self.sp is None else self.sp.attention
        out = attend(q, k, v, k_lens=seq_lens, window_size=self.window_size)
        return self.o(out.flatten(2))


class CrossAttention(SelfAttention):
    """Attention from the video tokens to the text context (and, for i2v, the image context).

    The text context is padded to ``text_len`` with zeros and attended unmasked,
    as the released weights were trained. With ``image`` keys (i2v) the first
    ``context.size(1) - text_len`` tokens are the CLIP image tokens; their
    attention result is added to the text one before the output projection.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6,
                 image: bool = False, text_len: int = 512):
        super().__init__(dim, num_heads, (-1, -1), qk_norm, eps)
        self.text_len = text_len
        self.has_image = image
        if image:
            self.k_img = Linear(dim, dim)
            self.v_img = Linear(dim, dim)
            self.norm_k_img = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Keys and values of the context: ``(k, v)`` or ``(k, v, k_img, v_img)``."""
        n_img = context.size(1) - self.text_len
        text = context[:, n_img:]
        kv = (self._heads(self.norm_k(self.k(text))), self._heads(self.v(text)))
        if self.has_image:
            img = context[:, :n_img]
            kv += (self._heads(self.norm_k_img(self.k_img(img))), self._heads(self.v_img(img)))
        return kv

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``kv`` comes from :meth:`context_kv` (computed once per generation by the caller)."""
        q = self._heads(self.norm_q(self.q(x)))
        out = attention(q, kv[0], kv[1]).flatten(2)
        if self.has_image:
            out = out + attention(q, kv[2], kv[3]).flatten(2)
        return self.o(out)


class WanAttentionBlock(nn.Module):
    """One transformer block: modulated self-attention, cross-attention, modulated FFN."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, window_size=(-1, -1),
                 qk_norm: bool = True, cross_attn_norm: bool = True, eps: float = 1e-6,
                 image: bool = False, text_len: int = 512):
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, num_heads, window_size, qk_norm, eps)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm \
            else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, qk_norm, eps, image=image,
                                         text_len=text_len)
        self.norm2 = WanLayerNorm(dim, eps)
        self.ffn = FeedForward(dim, ffn_dim)
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, seq_lens: torch.Tensor,
                rope: torch.Tensor, context: torch.Tensor,
                kv_cache: dict | None = None) -> torch.Tensor:
        """``x [B, L, C]`` (fp32 residual stream), ``e`` the fp32 time modulation: ``[B, 6, C]``,
        or ``[B, L, 6, C]`` with per-token timesteps (Wan2.2 TI2V).

        ``kv_cache`` (a dict, optional) keeps this block's cross-attention keys and
        values of ``context`` for the next steps, which see the same context.
        """
        with _no_autocast(x.device.type):
            shift1, scale1, gate1, shift2, scale2, gate2 = _split_modulation(
                self.modulation.float() + e, 6)
        y = self.self_attn(_modulate(self.norm1(x), shift1, scale1), seq_lens, rope)
        x = torch.addcmul(x, y.float(), gate1)
        kv = None if kv_cache is None else kv_cache.get(self)
        if kv is None:
            kv = self.cross_attn.context_kv(context)
            if kv_cache is not None:
                kv_cache[self] = kv
        x = x + self.cross_attn(self.norm3(x), kv)
        y = self.ffn(_modulate(self.norm2(x), shift2, scale2))
        return torch.addcmul(x, y.float(), gate2)


class Head(nn.Module):
    """Final modulated LayerNorm and projection to ``prod(patch) * out_dim`` values per token."""

    def __init__(self, dim: int, out_dim: int, patch_size: Sequence[int], eps: float = 1e-6):
        super().__init__()
        self.norm = WanLayerNorm(dim, eps)
        self.head = Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # The official code runs the head in fp32 (autocast with dtype float32).
        with _no_autocast(x.device.type):
            shift, scale = _split_modulation(self.modulation.float() + e.unsqueeze(-2), 2)
            x = _modulate(self.norm(x.float()), shift, scale)
            return F.linear(x, self.head.weight.float(), self.head.bias.float())


class MLPProj(nn.Module):
    """Projection of the CLIP image tokens into the model width (i2v, flf2v).

    With ``emb_pos`` (the number of image tokens; flf2v: 2 x 257 for the first
    and the last frame) a learned position table ``emb_pos [1, emb_pos, in_dim]``
    is added to the tokens before the projection, as in the official model.
    """

    def __init__(self, in_dim: int, out_dim: int, emb_pos: int | None = None):
        super().__init__()
        self.proj = nn.Sequential(ProjLayerNorm(in_dim), Linear(in_dim, in_dim), nn.GELU(),
                                  Linear(in_dim, out_dim), ProjLayerNorm(out_dim))
        if emb_pos is not None:
            self.emb_pos = nn.Parameter(torch.zeros(1, emb_pos, in_dim))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        pos = getattr(self, "emb_pos", None)
        if pos is not None:
            if image_embeds.size(1) != pos.size(1):
                raise ValueError(f"the flf2v model takes {pos.size(1)} CLIP tokens per sample "
                                 f"(first then last frame), got {image_embeds.size(1)}")
            image_embeds = image_embeds + pos
        return self.proj(image_embeds)


# ----------------------------------------------------------------- model
class WanModel(nn.Module):
    """The Wan2.1 DiT (``model_type`` ``'t2v'``, ``'i2v'`` or ``'flf2v'``).

    ``'flf2v'`` is the i2v model plus the position table ``img_emb.emb_pos``
    over the CLIP tokens of two frames.
    """

    # Sequence-parallel layout (wan.distributed.sequence_parallel): each rank runs the
    # blocks on its slice of the padded tokens; the head outputs are gathered.
    sp = None
    # Set by ``cached_context``: per-context embeddings and cross-attention keys/values.
    _context_cache: dict | None = None

    def __init__(self, model_type: str = "t2v", patch_size: Sequence[int] = (1, 2, 2),
                 text_len: int = 512, in_dim: int = 16, dim: int = 2048, ffn_dim: int = 8192,
                 freq_dim: int = 256, text_dim: int = 4096, out_dim: int = 16,
                 num_heads: int = 16, num_layers: int = 32, window_size=(-1, -1),
                 qk_norm: bool = True, cross_attn_norm: bool = True, eps: float = 1e-6,
                 clip_dim: int | None = None, image_tokens: bool | None = None):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, "
                             f"got '{model_type}'")
        head_dim = dim // num_heads
        if dim % num_heads or head_dim % 2:
            raise ValueError(f"dim {dim} / num_heads {num_heads} must give an even head width")
        self.model_type = model_type
        self.patch_size = tuple(patch_size)
        self.text_len = text_len
        self.in_dim, self.dim, self.ffn_dim, self.freq_dim = in_dim, dim, ffn_dim, freq_dim
        self.text_dim, self.out_dim = text_dim, out_dim
        self.num_heads, self.num_layers = num_heads, num_layers
        self.window_size = tuple(window_size)
        self.qk_norm, self.cross_attn_norm, self.eps = qk_norm, cross_attn_norm, eps
        # CLIP image tokens: Wan2.1 i2v / flf2v; Wan2.2 I2V-A14B is an i2v model without them.
        image = model_type in IMAGE_MODEL_TYPES if image_tokens is None else bool(image_tokens)
        if image and model_type not in IMAGE_MODEL_TYPES:
            raise ValueError(f"a {model_type} model has no image tokens")
        if model_type == "flf2v" and not image:
            raise ValueError("the flf2v model needs its image tokens")
        self.image_tokens = image
        self.clip_dim = (clip_dim or 1280) if image else None

        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size,
                                         stride=self.patch_size)
        self.text_embedding = nn.Sequential(Linear(text_dim, dim), nn.GELU(approximate="tanh"),
                                            Linear(dim, dim))
        self.time_embedding = nn.Sequential(Linear(freq_dim, dim), nn.SiLU(),
                                            Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([
            WanAttentionBlock(dim, ffn_dim, num_heads, window_size, qk_norm, cross_attn_norm,
                              eps, image=image, text_len=text_len) for _ in range(num_layers)
        ])
        self.head = Head(dim, out_dim, self.patch_size, eps)
        if image:
            self.img_emb = MLPProj(self.clip_dim, dim,
                                   emb_pos=2 * CLIP_TOKENS if model_type == "flf2v" else None)

    # -------------------------------------------------------------- config
    @property
    def config(self) -> dict:
        return dict(model_type=self.model_type, patch_size=self.patch_size,
                    text_len=self.text_len, in_dim=self.in_dim, dim=self.dim,
                    ffn_dim=self.ffn_dim, freq_dim=self.freq_dim, text_dim=self.text_dim,
                    out_dim=self.out_dim, num_heads=self.num_heads, num_layers=self.num_layers,
                    window_size=self.window_size, qk_norm=self.qk_norm,
                    cross_attn_norm=self.cross_attn_norm, eps=self.eps, clip_dim=self.clip_dim,
                    image_tokens=self.image_tokens)

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    # -------------------------------------------------------------- pieces
    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``t [B]`` -> (``e [B, C]`` for the head, ``e0 [B, 6, C]`` for the blocks), fp32.

        Per-token timesteps ``t [B, L]`` (Wan2.2 TI2V: 0 on the image's tokens) give
        ``e [B, L, C]`` and ``e0 [B, L, 6, C]``, as the official Wan2.2 model.
        """
        with _no_autocast(self.device.type):
            emb = sinusoidal_embedding_1d(self.freq_dim, t.to(self.device).flatten()).float()
            e = _linear_seq_fp32(self.time_embedding, emb)
            e0 = _linear_seq_fp32(self.time_projection, e).unflatten(1, (6, self.dim))
        return e.unflatten(0, t.shape), e0.unflatten(0, t.shape)

    def embed_context(self, context: Sequence[torch.Tensor],
                      clip_fea: torch.Tensor | None = None) -> torch.Tensor:
        """Text (zero-padded to ``text_len``) and optional CLIP tokens -> ``[B, (n_img+)512, C]``.

        ``n_img`` is 257 for i2v and 514 for flf2v (first then last frame).
        """
        padded = []
        for u in context:
            if u.size(0) > self.text_len:
                raise ValueError(f"text context has {u.size(0)} tokens; at most {self.text_len}")
            padded.append(torch.cat([u, u.new_zeros(self.text_len - u.size(0), u.size(1))]))
        ctx = self.text_embedding(torch.stack(padded).to(self.device))
        if clip_fea is not None:
            ctx = torch.cat([self.img_emb(clip_fea.to(self.device)), ctx], dim=1)
        return ctx

    def patchify(self, x: Sequence[torch.Tensor], seq_len: int
                 ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
        """Latents -> zero-padded tokens ``[B, seq_len, C]``, their lengths and grid sizes."""
        tokens, grids = [], []
        for u in x:
            u = self.patch_embedding(u.unsqueeze(0).to(self.device))
            grids.append(tuple(u.shape[2:]))
            tokens.append(u.flatten(2).transpose(1, 2))
        lens = [t.size(1) for t in tokens]
        if max(lens) > seq_len:
            raise ValueError(f"the latent video has {max(lens)} tokens but seq_len is {seq_len}; "
                             f"pass seq_len >= the number of patches")
        out = torch.cat([F.pad(t, (0, 0, 0, seq_len - t.size(1))) for t in tokens])
        return out, torch.tensor(lens, dtype=torch.long), grids

    def unpatchify(self, x: torch.Tensor, grids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """``[B, L, prod(patch) * C]`` -> list of ``[C, F, H, W]`` latents."""
        c, (pt, ph, pw) = self.out_dim, self.patch_size
        out = []
        for u, (f, h, w) in zip(x, grids):
            u = u[:f * h * w].view(f, h, w, pt, ph, pw, c)
            u = torch.einsum("fhwpqrc->cfphqwr", u)
            out.append(u.reshape(c, f * pt, h * ph, w * pw))
        return out

    # -------------------------------------------------------------- forward
    def forward(self, x: list[torch.Tensor], t: torch.Tensor, context: list[torch.Tensor],
                seq_len: int, clip_fea: torch.Tensor | None = None,
                y: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Predict the flow for a batch of latent videos.

        Args:
            x: latents, each ``[C_in, F, H, W]``.
            t: timesteps ``[B]``.
            context: text embeddings, each ``[L_i, text_dim]`` (``L_i <= text_len``).
            seq_len: padded token length (at least the largest number of patches).
            clip_fea: i2v/flf2v only, CLIP image tokens ``[B, 257, clip_dim]`` (i2v) or
                ``[B, 514, clip_dim]`` (flf2v: the first frame's tokens, then the last's).
            y: i2v/flf2v only, conditioning latents concatenated to ``x`` along channels.
        Returns:
            list of ``[C_out, F, H, W]`` fp32 tensors.
        """
        if self.model_type in IMAGE_MODEL_TYPES and y is None:
            raise ValueError(f"the {self.model_type} model needs y")
        if self.image_tokens and clip_fea is None:
            raise ValueError(f"the {self.model_type} model needs clip_fea (CLIP image tokens)")
        if clip_fea is not None and not self.image_tokens:
            raise ValueError(f"this {self.model_type} DiT has no image tokens (e.g. Wan2.2 "
                             f"I2V-A14B): pass no clip_fea")
        if y is not None:
            x = [torch.cat([u, v.to(u)], dim=0) for u, v in zip(x, y)]
        state = self.prepare(x, t, context, seq_len, clip_fea)
        return self.finish(self.run_blocks(state), state)

    # The forward pass in three stages, shared by the models built on this one (VACE):
    # prepare (embeddings, RoPE, sequence-parallel split), the block stack, the head.
    def prepare(self, x: Sequence[torch.Tensor], t: torch.Tensor,
                context: Sequence[torch.Tensor], seq_len: int,
                clip_fea: torch.Tensor | None = None) -> dict:
        """Tokens, time modulation, context, RoPE of a batch (this rank's slice with
        sequence parallelism), as a dict for :meth:`run_blocks` and :meth:`finish`."""
        tokens, seq_lens, grids = self.patchify(x, seq_len)
        t = torch.as_tensor(t, device=self.device)
        if t.dim() == 0:
            t = t.expand(len(x))
        if t.dim() == 2 and t.shape[1] != seq_len:
            raise ValueError(f"per-token timesteps must be [B, seq_len={seq_len}], got "
                             f"{tuple(t.shape)}")
        e, e0 = self.embed_time(t)
        entry = self._cache_entry(context, clip_fea)
        ctx = entry.get("ctx") if entry is not None else None
        if ctx is None:
            ctx = self.embed_context(context, clip_fea)
            if entry is not None:
                entry["ctx"] = ctx
        rope = rope_tables(grids, seq_len, self.dim // self.num_heads, self.device)
        if self.sp is not None:
            tokens, rope = self.sp.scatter(tokens), self.sp.scatter(rope)
            if t.dim() == 2:  # per-token modulation goes with its tokens
                e, e0 = self.sp.scatter(e), self.sp.scatter(e0)
        return dict(tokens=tokens, seq_lens=seq_lens, grids=grids, e=e, e0=e0, ctx=ctx,
                    rope=rope, kv_cache=entry, seq_len=seq_len)

    def run_blocks(self, state: dict,
                   after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None
                   ) -> torch.Tensor:
        """The block stack on ``state['tokens']``; ``after_block(i, tokens)`` (optional)
        may change the output of block ``i`` (VACE adds its hints there)."""
        tokens = state["tokens"]
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, state["e0"], state["seq_lens"], state["rope"], state["ctx"],
                           kv_cache=state["kv_cache"])
            if after_block is not None:
                tokens = after_block(i, tokens)
        return tokens

    def finish(self, tokens: torch.Tensor, state: dict) -> list[torch.Tensor]:
        """The head, the gather of the sequence-parallel slices, and unpatchify (fp32)."""
        out = self.head(tokens, state["e"])
        if self.sp is not None:
            out = self.sp.gather(out)
        return [u.float() for u in self.unpatchify(out, state["grids"])]

    def _cache_entry(self, context: Sequence[torch.Tensor], clip_fea: torch.Tensor | None
                     ) -> dict | None:
        """The cache slot of this batch of contexts (None when caching is off).

        Contexts are told apart by the identity of their tensors, which the caller
        keeps alive for the whole ``cached_context`` block.
        """
        if self._context_cache is None:
            return None
        key = (tuple(id(u) for u in context), id(clip_fea), torch.is_autocast_enabled(
            self.device.type))
        return self._context_cache.setdefault(key, {})

    # -------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                        device: torch.device | str = "cpu", model_type: str | None = None,
                        matmul_dtype: torch.dtype | None = None, **_ignored) -> "WanModel":
        """Load ``config.json`` + safetensors (single file or index + shards) from a folder.

        The module is built on the meta device and receives the stored tensors
        (no random init, no second copy). Whatever dtype the file stores (fp32,
        bf16 or fp16), the tensors are converted while reading to
        ``torch_dtype`` (default fp32, the official parameter dtype), except,
        when ``matmul_dtype`` is given (e.g. bf16 for the official mixed
        precision), the Linear and Conv tensors that run under autocast (see
        :func:`is_matmul_weight`), which take ``matmul_dtype``: norms,
        modulation, the time MLP and the head stay in ``torch_dtype``.
        ``model_type``, if given, is checked against the checkpoint.
        """
        from ..utils.checkpoint import (find_safetensors, load_into_meta_module, load_safetensors,
                                        read_json, require_dir)

        folder = require_dir(checkpoint_dir, "DiT checkpoint")
        cfg = read_json(Path(folder) / "config.json", "DiT config")
        files = find_safetensors(folder, "diffusion_pytorch_model", "DiT")
        sd = load_safetensors(files, "DiT", dtype=dit_dtype_rule(torch_dtype, matmul_dtype),
                              device=device, note=_dtype_note(torch_dtype, matmul_dtype))
        source = f"'{files[0] if len(files) == 1 else folder}'"
        kwargs = cls.config_from_checkpoint(cfg, sd, source)
        check_model_type(kwargs, model_type, cfg, sd, source)
        with torch.device("meta"):
            model = cls(**kwargs)
        load_into_meta_module(model, sd, source, f"Wan2.1 {kwargs['model_type']} DiT", device)
        return model.eval().requires_grad_(False)

    @classmethod
    def config_from_checkpoint(cls, cfg: dict, sd: dict[str, torch.Tensor], source: str) -> dict:
        """Constructor arguments from ``config.json`` and the tensor shapes (a subclass with
        more parts, e.g. the VACE model, extends it)."""
        return infer_config(cfg, sd, source)


@contextmanager
def cached_context(model: nn.Module):
    """Within this block the DiT embeds each context and computes every block's
    cross-attention keys/values once, then reuses them at the following steps.

    The text (and image) context does not change during a generation, so this
    removes repeated work without changing a single number. Works through
    wrappers that expose ``.module`` (FSDP, DDP).
    """
    inner = model
    while not isinstance(inner, WanModel) and hasattr(inner, "module"):
        inner = inner.module
    if not isinstance(inner, WanModel):
        yield
        return
    inner._context_cache = {}
    try:
        yield
    finally:
        inner._context_cache = None


def _linear_seq_fp32(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a Sequential of Linear/activation layers with fp32 weights (the official fp32 region)."""
    for layer in seq:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, layer.weight.float(), layer.bias.float())
        else:
            x = layer(x)
    return x


def _found(cfg: dict, sd: dict[str, torch.Tensor], kwargs: dict) -> str:
    """What a checkpoint says about its type, for error messages."""
    said = f"config.json 'model_type' '{cfg['model_type']}'" if cfg.get("model_type") \
        else "no 'model_type' in config.json"
    pos = "with" if "img_emb.emb_pos" in sd else "no"
    return f"{said}, in_dim {kwargs['in_dim']}, {pos} 'img_emb.emb_pos' tensor"


def check_model_type(kwargs: dict, wanted: str | None, cfg: dict, sd: dict[str, torch.Tensor],
                     source: str) -> None:
    """Raise a CheckpointError when the checkpoint is not of the ``wanted`` model type."""
    from ..utils.checkpoint import CheckpointError

    if wanted is None or kwargs["model_type"] == wanted:
        return
    hint = ("the Wan2.1-FLF2V-14B-720P folder, whose DiT has 'img_emb.emb_pos'"
            if wanted == "flf2v" else "the matching Wan2.1 checkpoint folder")
    raise CheckpointError(
        f"{source} holds a {kwargs['model_type']} DiT ({_found(cfg, sd, kwargs)}) but a "
        f"{wanted} model is needed: pass {hint}.")


def infer_config(cfg: dict, sd: dict[str, torch.Tensor], source: str) -> dict:
    """Model arguments from ``config.json``, completed from tensor shapes."""
    from ..utils.checkpoint import CheckpointError

    def shape(name: str) -> tuple[int, ...]:
        if name not in sd:
            raise CheckpointError(f"{source} is not a Wan2.1 DiT checkpoint: tensor '{name}' "
                                  f"is missing.")
        return tuple(sd[name].shape)

    if cfg.get("model_type") == "vace" or any(k.startswith(VACE_PREFIXES) for k in sd):
        what = ("config.json 'model_type' 'vace'" if cfg.get("model_type") == "vace"
                else "'vace_blocks.N' / 'vace_patch_embedding' tensors")
        raise CheckpointError(
            f"{source} holds a Wan2.1 VACE DiT ({what}): load it with "
            f"wan.modules.vace_model.VaceWanModel (tasks vace-1.3B / vace-14B), not WanModel.")
    pe = shape("patch_embedding.weight")  # [dim, in_dim, pt, ph, pw]
    dim, in_dim, patch = pe[0], pe[1], pe[2:]
    num_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    has_pos = "img_emb.emb_pos" in sd
    model_type = cfg.get("model_type") or (
        "flf2v" if has_pos else "i2v" if "img_emb.proj.0.weight" in sd else "t2v")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{source}: model_type '{model_type}' is not supported "
                              f"(this project runs the t2v, i2v, flf2v and ti2v models).")
    if has_pos != (model_type == "flf2v"):
        raise CheckpointError(
            f"{source}: config.json says model_type '{model_type}' but the weights "
            f"{'have' if has_pos else 'lack'} the flf2v tensor 'img_emb.emb_pos': the folder "
            f"mixes files of different models.")
    if "num_heads" not in cfg:
        raise CheckpointError(f"{source}: config.json lacks 'num_heads'.")
    out_dim = shape("head.head.weight")[0] // math.prod(patch)
    kwargs = dict(
        model_type=model_type, patch_size=patch, text_len=int(cfg.get("text_len", 512)),
        in_dim=in_dim, dim=dim, ffn_dim=shape("blocks.0.ffn.0.weight")[0],
        freq_dim=shape("time_embedding.0.weight")[1], text_dim=shape("text_embedding.0.weight")[1],
        out_dim=out_dim, num_heads=int(cfg["num_heads"]), num_layers=num_layers,
        window_size=tuple(cfg.get("window_size", (-1, -1))),
        qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
        cross_attn_norm="blocks.0.norm3.weight" in sd, eps=float(cfg.get("eps", 1e-6)),
        image_tokens=model_type in IMAGE_MODEL_TYPES and "img_emb.proj.0.weight" in sd,
        clip_dim=shape("img_emb.proj.0.weight")[0]
        if model_type in IMAGE_MODEL_TYPES and "img_emb.proj.0.weight" in sd else None)
    for key in ("dim", "in_dim", "ffn_dim", "num_layers", "out_dim", "freq_dim"):
        if key in cfg and int(cfg[key]) != kwargs[key]:
            raise CheckpointError(f"{source}: config.json says {key}={cfg[key]} but the weights "
                                  f"have {kwargs[key]}; the folder mixes files of different models.")
    return kwargs
