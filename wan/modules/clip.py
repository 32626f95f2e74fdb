"""CLIP image encoder of Wan2.1 image-to-video.

I2V conditions the DiT on image features from the ViT-H/14 image tower of
open-clip's XLM-RoBERTa-Large CLIP (``models_clip_open-clip-xlm-roberta-large-
vit-huge-14.pth``). Only the token features are used: the output of every
transformer block except the last, for all 257 tokens (class token + 16x16
patches), without the final norm, pooling or projection.

That checkpoint also stores the text tower (``textual.*``), the logit scale and
the image head; none of them is needed for the features above, so none of them
is built or kept in memory. The tensors that are used keep their official names
(``visual.transformer.N.attn.to_qkv.weight`` and so on), so the official file
loads unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.checkpoint import CheckpointError, cast_state_dict, load_into_meta_module, load_pth
from .attention import attention
from .linear import Linear

__all__ = ["CLIPModel", "CLIPImageEncoder", "VisionTransformer", "VisionTowerSpec",
           "load_image_encoder", "CLIP_MEAN", "CLIP_STD"]

log = logging.getLogger(__name__)

# Normalisation constants of OpenAI CLIP, used by open-clip for this model.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

HEAD_DIM = 80  # ViT-H/14: 1280 wide, 16 heads
LAYER_NORM_EPS = 1e-5

WHAT = "CLIP image encoder checkpoint"

# Checkpoint entries that the I2V image features never read.
_TEXT_PREFIXES = ("textual.", "log_scale")
_UNUSED_VISUAL_PREFIXES = ("visual.post_norm.", "visual.head")
_BLOCK_KEY = re.compile(r"^visual\.transformer\.(\d+)\.")


@dataclass(frozen=True)
class VisionTowerSpec:
    """Sizes of the ViT image tower.

    ``num_layers`` is the number of blocks that are built and run; the
    checkpoint holds one more (its last block is not used by Wan I2V).
    """
    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    num_layers: int = 31
    mlp_dim: int = 5120
    num_heads: int = 16
    eps: float = LAYER_NORM_EPS

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Class token plus one token per patch."""
        return 1 + self.grid ** 2

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], source: str) -> VisionTowerSpec:
        """Read the sizes from the tensor shapes of an open-clip checkpoint."""
        def need(name: str, ndim: int) -> torch.Tensor:
            if name not in sd:
                raise CheckpointError(f"{source} does not hold a CLIP image tower: "
                                      f"tensor '{name}' is missing.")
            t = sd[name]
            if t.dim() != ndim:
                raise CheckpointError(f"{source}: '{name}' has shape {tuple(t.shape)}, "
                                      f"expected {ndim} dimensions.")
            return t

        patch = need("visual.patch_embedding.weight", 4)
        width, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
        if channels != 3 or patch.shape[3] != patch_size:
            raise CheckpointError(f"{source}: 'visual.patch_embedding.weight' has shape "
                                  f"{tuple(patch.shape)}, expected [width, 3, p, p].")
        pos_len = need("visual.pos_embedding", 3).shape[1]
        grid = math.isqrt(pos_len - 1)
        if grid * grid != pos_len - 1:
            raise CheckpointError(f"{source}: 'visual.pos_embedding' has {pos_len} positions, "
                                  f"expected a class token plus a square grid of patches.")
        if width % HEAD_DIM:
            raise CheckpointError(f"{source}: image tower width {width} is not a multiple of "
                                  f"the head width {HEAD_DIM}.")
        blocks = {int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))}
        if len(blocks) < 2 or blocks != set(range(len(blocks))):
            raise CheckpointError(f"{source}: expected blocks visual.transformer.0..N-1 with "
                                  f"N >= 2, found indices {sorted(blocks)}.")
        mlp_dim = need("visual.transformer.0.mlp.0.weight", 2).shape[0]
        return cls(image_size=grid * patch_size, patch_size=patch_size, width=width,
                   num_layers=len(blocks) - 1, mlp_dim=mlp_dim, num_heads=width // HEAD_DIM)


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with a fused q/k/v projection."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = Linear(width, 3 * width)
        self.proj = Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).unbind(2)
        return self.proj(attention(q, k, v).reshape(b, n, c))


class VisionBlock(nn.Module):
    """Pre-norm transformer block: attention then an exact-GELU MLP, both residual."""

    def __init__(self, spec: VisionTowerSpec):
        super().__init__()
        self.norm1 = Float32LayerNorm(spec.width, eps=spec.eps)
        self.attn = SelfAttention(spec.width, spec.num_heads)
        self.norm2 = Float32LayerNorm(spec.width, eps=spec.eps)
        # Indices 0 and 2 match the official names ``mlp.0`` and ``mlp.2``.
        self.mlp = nn.Sequential(Linear(spec.width, spec.mlp_dim), nn.GELU(),
                                 Linear(spec.mlp_dim, spec.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT trunk: patch embedding, class token, positions, pre-norm and blocks.

    ``forward`` returns the token features after the last built block,
    ``[B, num_tokens, width]``. There is no final norm and no head.
    """

    def __init__(self, spec: VisionTowerSpec):
        super().__init__()
        self.spec = spec
        self.patch_embedding = nn.Conv2d(3, spec.width, kernel_size=spec.patch_size,
                                         stride=spec.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.empty(1, 1, spec.width))
        self.pos_embedding = nn.Parameter(torch.empty(1, spec.num_tokens, spec.width))
        self.pre_norm = Float32LayerNorm(spec.width, eps=spec.eps)
        self.transformer = nn.ModuleList(VisionBlock(spec) for _ in range(spec.num_layers))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.cls_embedding.expand(x.size(0), -1, -1)
        x = self.pre_norm(torch.cat([cls, x], dim=1) + self.pos_embedding)
        for block in self.transformer:
            x = block(x)
        return x


class CLIPImageEncoder(nn.Module):
    """Holds the image tower as ``.visual``, so its tensors keep the ``visual.`` names."""

    def __init__(self, spec: VisionTowerSpec):
        super().__init__()
        self.visual = VisionTransformer(spec)

    @property
    def image_size(self) -> int:
        return self.visual.spec.image_size


def _split_checkpoint(sd: Mapping[str, torch.Tensor],
                      spec: VisionTowerSpec) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Separate the tensors the image features need from those they never read.

    Returns the kept tensors (including any unknown names, which the
    name/shape check then reports) and the number skipped per reason.
    """
    last_block = f"visual.transformer.{spec.num_layers}."
    kept: dict[str, torch.Tensor] = {}
    skipped = {"text tower and logit scale": 0, "image head and post-norm": 0,
               "last image block": 0}
    for name, tensor in sd.items():
        if name.startswith(_TEXT_PREFIXES):
            skipped["text tower and logit scale"] += 1
        elif name.startswith(_UNUSED_VISUAL_PREFIXES):
            skipped["image head and post-norm"] += 1
        elif name.startswith(last_block):
            skipped["last image block"] += 1
        else:
            kept[name] = tensor
    return kept, skipped


def load_image_encoder(checkpoint_path: str | os.PathLike, dtype: torch.dtype,
                       device: torch.device | str) -> CLIPImageEncoder:
    """Build the image tower from an open-clip XLM-RoBERTa ViT checkpoint."""
    sd = load_pth(checkpoint_path, WHAT)
    source = f"{WHAT} '{checkpoint_path}'"
    if not any(k.startswith("visual.") for k in sd):
        raise CheckpointError(
            f"{source} holds no image tower tensors ('visual.*'; found e.g. "
            f"{', '.join(list(sd)[:3]) or 'nothing'}): is this the open-clip "
            f"XLM-RoBERTa-Large ViT-H/14 file?")
    spec = VisionTowerSpec.from_state_dict(sd, source)
    kept, skipped = _split_checkpoint(sd, spec)
    log.debug("CLIP: skipped %d checkpoint tensors that the image features never use (%s).",
              sum(skipped.values()), ", ".join(f"{n} {w}" for w, n in skipped.items()))
    kept = cast_state_dict(kept, dtype, "CLIP", source)
    with torch.device("meta"):
        model = CLIPImageEncoder(spec)
    load_into_meta_module(model, kept, source, "CLIP image tower", device=device)
    return model.eval().requires_grad_(False)


class CLIPModel:
    """Image encoder of Wan I2V with the official constructor and ``visual`` call.

    Args:
        dtype: dtype of the weights and of the computation (LayerNorms run in
            float32 internally, as under the official autocast).
        device: where the model is placed.
        checkpoint_path: the open-clip ``.pth`` file.
        tokenizer_path: the ``xlm-roberta-large`` tokenizer folder. Kept for the
            official signature only: the text tower is not built, so the
            tokenizer is never loaded.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device | str,
                 checkpoint_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None):
        self.dtype = dtype
        self.device = torch.device(device)
        self.checkpoint_path = checkpoint_path
        self.tokenizer_path = tokenizer_path
        log.info("Loading CLIP image encoder from %s", checkpoint_path)
        self.model = load_image_encoder(checkpoint_path, dtype, self.device)
        spec = self.model.visual.spec
        self.size = (spec.image_size, spec.image_size)
        self.mean = list(CLIP_MEAN)
        self.std = list(CLIP_STD)

    def preprocess(self, videos: Sequence[torch.Tensor],
                   device: torch.device | str | None = None) -> torch.Tensor:
        """Turn ``[3, T, H, W]`` clips in [-1, 1] into normalised ``[sum T, 3, 224, 224]`` float32.

        Bicubic resize (``align_corners=False``), then [0, 1] scaling and the
        CLIP mean/std normalisation, on ``device`` (default: where the inputs are).
        """
        if isinstance(videos, torch.Tensor) or not isinstance(videos, Sequence) or not videos:
            raise ValueError("CLIPModel.visual expects a non-empty list of [3, T, H, W] tensors.")
        frames = []
        for i, u in enumerate(videos):
            if not isinstance(u, torch.Tensor) or u.dim() != 4 or u.size(0) != 3:
                shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
                raise ValueError(f"CLIPModel.visual: input {i} has shape {shape}; expected "
                                 f"[3, T, H, W] (3 RGB channels) with values in [-1, 1].")
            u = u.to(device=device, dtype=torch.float32)
            frames.append(F.interpolate(u.transpose(0, 1), size=self.size,
                                        mode="bicubic", align_corners=False))
        x = torch.cat(frames).mul(0.5).add(0.5)
        mean = x.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def visual(self, videos: Sequence[torch.Tensor]) -> torch.Tensor:
        """Image features ``[sum T, 257, width]`` in ``dtype`` for clips in [-1, 1]."""
        pixels = self.preprocess(videos, device=self.model.visual.pos_embedding.device)
        return self.model.visual(pixels.to(self.dtype))
