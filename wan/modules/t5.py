"""The umT5-XXL text encoder used by Wan2.1 (encoder half only).

Architecture (T5 v1.1 / umT5):

* token embedding without scaling;
* pre-norm blocks of self-attention and a gated-GELU feed-forward, with T5's
  RMS layer norm (no mean, no bias; variance computed in fp32);
* attention without the ``1/sqrt(head_dim)`` factor and with an additive
  relative-position bias from bidirectional log-spaced buckets. umT5 gives every
  block its own bias table (``blocks.N.pos_embedding``); classic T5 shares one
  table (``pos_embedding``), selected here by ``shared_pos``;
* a final RMS norm.

Attribute names follow the official code, so ``models_t5_umt5-xxl-enc-bf16.pth``
loads as is. Its sizes are read from the tensor shapes, so miniature checkpoints
(see :mod:`wan.utils.tiny_checkpoint`) load through the same path.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..utils.checkpoint import CheckpointError, cast_state_dict, load_into_meta_module, load_pth
from .tokenizers import HuggingfaceTokenizer
from .linear import Linear

__all__ = ["T5Sizes", "UMT5_XXL", "T5LayerNorm", "T5Attention", "T5FeedForward",
           "T5RelativeEmbedding", "TanhGELU", "T5SelfAttention", "T5Encoder", "T5EncoderModel",
           "relative_position_bucket", "sizes_from_state_dict", "load_t5_encoder"]

log = logging.getLogger(__name__)

WHAT = "umT5 text encoder"


@dataclass(frozen=True)
class T5Sizes:
    """Hyper-parameters of a T5 encoder."""
    vocab: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int
    shared_pos: bool = False


UMT5_XXL = T5Sizes(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64,
                   num_layers=24, num_buckets=32, shared_pos=False)


def fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """Pull fp16 activations that overflowed back into range (as T5 does); other dtypes pass."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


# --------------------------------------------------------------------- layers
class T5LayerNorm(nn.Module):
    """RMS norm with a learned scale; the mean square is taken in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv_rms = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        x = x * inv_rms
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int, bidirectional: bool,
                             max_dist: int) -> torch.Tensor:
    """Map relative positions ``key - query`` to bucket indices (T5's scheme).

    Half the buckets hold exact small distances, the other half log-spaced
    distances up to ``max_dist`` (farther ones share the last bucket). When
    bidirectional, positive and negative offsets use separate halves.
    """
    if bidirectional:
        num_buckets //= 2
        offset = (rel_pos > 0).long() * num_buckets
        dist = rel_pos.abs()
    else:
        offset = torch.zeros_like(rel_pos)
        dist = (-rel_pos).clamp(min=0)
    max_exact = num_buckets // 2
    # Distances below max_exact are not read from `far`; clamp them so log() stays finite.
    ratio = dist.clamp(min=1).float() / max_exact
    far = max_exact + (torch.log(ratio) / math.log(max_dist / max_exact)
                       * (num_buckets - max_exact)).long()
    far = far.clamp(max=num_buckets - 1)
    return offset + torch.where(dist < max_exact, dist, far)


class T5RelativeEmbedding(nn.Module):
    """Learned per-head bias for each relative-position bucket."""

    def __init__(self, num_buckets: int, num_heads: int, bidirectional: bool = True,
                 max_dist: int = 128) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.num_heads = num_heads
        self.bidirectional = bidirectional
        self.max_dist = max_dist
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        """The bias ``[1, heads, lq, lk]`` for ``lq`` queries and ``lk`` keys."""
        device = self.embedding.weight.device
        keys, queries = torch.arange(lk, device=device), torch.arange(lq, device=device)
        rel_pos = keys[None, :] - queries[:, None]
        buckets = relative_position_bucket(rel_pos, self.num_buckets, self.bidirectional,
                                           self.max_dist)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0).contiguous()


class T5Attention(nn.Module):
    """Multi-head self-attention with an additive bias and no score scaling."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        if dim_attn % num_heads:
            raise ValueError(f"dim_attn {dim_attn} is not divisible by num_heads {num_heads}")
        super().__init__()
        self.dim = dim
        self.dim_attn = dim_attn
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = Linear(dim, dim_attn, bias=False)
        self.k = Linear(dim, dim_attn, bias=False)
        self.v = Linear(dim, dim_attn, bias=False)
        self.o = Linear(dim_attn, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, heads*hd]`` -> ``[B, heads, L, hd]``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B, L, dim]``; ``mask``: ``[B, L]``, nonzero for real tokens;
        ``pos_bias``: ``[1 or B, heads, L, L]``."""
        b, length = x.shape[:2]
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))

        bias = x.new_zeros(b, self.num_heads, length, length)
        if pos_bias is not None:
            bias = bias + pos_bias.to(x.dtype)
        if mask is not None:
            if mask.shape != (b, length):
                raise ValueError(f"mask must be [B, L] = {(b, length)}, got {tuple(mask.shape)}")
            padded_key = (mask == 0)[:, None, None, :]
            bias = bias.masked_fill(padded_key, torch.finfo(x.dtype).min)

        scores = q @ k.transpose(-1, -2) + bias  # T5 folds the 1/sqrt(d) into its init
        weights = scores.float().softmax(dim=-1).to(scores.dtype)
        out = (weights @ v).transpose(1, 2).flatten(2)
        return self.o(out)


class TanhGELU(nn.Module):
    """GELU with the tanh approximation, written out op by op.

    Kept explicit (rather than ``nn.GELU(approximate='tanh')``) so that bf16 runs
    round exactly like the released model's code.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))
        return 0.5 * x * (1.0 + torch.tanh(inner))


class T5FeedForward(nn.Module):
    """Gated-GELU MLP: ``fc2(fc1(x) * gelu_tanh(gate(x)))``."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        self.dim = dim
        self.dim_ffn = dim_ffn
        self.gate = nn.Sequential(Linear(dim, dim_ffn, bias=False), TanhGELU())
        self.fc1 = Linear(dim, dim_ffn, bias=False)
        self.fc2 = Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5SelfAttention(nn.Module):
    """One encoder block: pre-norm self-attention, then pre-norm feed-forward."""

    def __init__(self, dim: int, dim_attn: int, dim_ffn: int, num_heads: int,
                 num_buckets: int, shared_pos: bool = True) -> None:
        super().__init__()
        self.shared_pos = shared_pos
        self.norm1 = T5LayerNorm(dim)
        self.attn = T5Attention(dim, dim_attn, num_heads)
        self.norm2 = T5LayerNorm(dim)
        self.ffn = T5FeedForward(dim, dim_ffn)
        self.pos_embedding = None if shared_pos else \
            T5RelativeEmbedding(num_buckets, num_heads, bidirectional=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.pos_embedding is not None:
            pos_bias = self.pos_embedding(x.size(1), x.size(1))
        x = fp16_clamp(x + self.attn(self.norm1(x), mask=mask, pos_bias=pos_bias))
        return fp16_clamp(x + self.ffn(self.norm2(x)))


class T5Encoder(nn.Module):
    """T5 encoder stack: ids ``[B, L]`` (+ mask ``[B, L]``) -> hidden states ``[B, L, dim]``.

    With ``shared_pos=False`` (umT5) each block owns its relative-position table.
    """

    def __init__(self, vocab: int, dim: int, dim_attn: int, dim_ffn: int, num_heads: int,
                 num_layers: int, num_buckets: int, shared_pos: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.dim_attn = dim_attn
        self.dim_ffn = dim_ffn
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.num_buckets = num_buckets
        self.shared_pos = shared_pos
        self.token_embedding = nn.Embedding(vocab, dim)
        self.pos_embedding = T5RelativeEmbedding(num_buckets, num_heads, bidirectional=True) \
            if shared_pos else None
        self.blocks = nn.ModuleList([
            T5SelfAttention(dim, dim_attn, dim_ffn, num_heads, num_buckets, shared_pos)
            for _ in range(num_layers)])
        self.norm = T5LayerNorm(dim)

    @classmethod
    def from_sizes(cls, sizes: T5Sizes) -> T5Encoder:
        return cls(sizes.vocab, sizes.dim, sizes.dim_attn, sizes.dim_ffn, sizes.num_heads,
                   sizes.num_layers, sizes.num_buckets, sizes.shared_pos)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_embedding(ids)
        shared_bias = self.pos_embedding(x.size(1), x.size(1)) if self.shared_pos else None
        for block in self.blocks:
            x = block(x, mask, pos_bias=shared_bias)
        return self.norm(x)


# --------------------------------------------------------------------- loading
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")


def _shape(sd: Mapping[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(
            f"{source} is not a {WHAT} checkpoint: tensor '{key}' is missing "
            f"(it has {len(sd)} tensors, e.g. {', '.join(list(sd)[:3]) or 'none'}).")
    return tuple(sd[key].shape)


def sizes_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> T5Sizes:
    """Read the encoder sizes from the tensor shapes of an official-layout state dict."""
    vocab, dim = _shape(sd, "token_embedding.weight", source)
    layers = sorted({int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))})
    if not layers:
        raise CheckpointError(
            f"{source} is not a {WHAT} checkpoint: it has no 'blocks.N.' tensors.")
    if layers != list(range(len(layers))):
        raise CheckpointError(f"{source}: encoder block numbers are not contiguous ({layers}).")
    shared_pos = "pos_embedding.embedding.weight" in sd
    table = "pos_embedding.embedding.weight" if shared_pos else \
        "blocks.0.pos_embedding.embedding.weight"
    num_buckets, num_heads = _shape(sd, table, source)
    dim_attn = _shape(sd, "blocks.0.attn.q.weight", source)[0]
    dim_ffn = _shape(sd, "blocks.0.ffn.fc1.weight", source)[0]
    if dim_attn % num_heads:
        raise CheckpointError(
            f"{source}: attention width {dim_attn} is not a multiple of {num_heads} heads.")
    return T5Sizes(vocab=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn, num_heads=num_heads,
                   num_layers=len(layers), num_buckets=num_buckets, shared_pos=shared_pos)


def load_t5_encoder(checkpoint_path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                    device: torch.device | str = "cpu") -> T5Encoder:
    """Build the encoder on the meta device and give it the checkpoint's tensors.

    Returns an eval-mode module without gradients, in ``dtype`` on ``device``.
    """
    source = f"'{checkpoint_path}'"
    sd = cast_state_dict(load_pth(checkpoint_path, f"{WHAT} checkpoint"), dtype, WHAT, source)
    sizes = sizes_from_state_dict(sd, source)
    log.info("%s: %d layers, width %d, %d heads, vocab %d", WHAT, sizes.num_layers, sizes.dim,
             sizes.num_heads, sizes.vocab)
    with torch.device("meta"):
        model = T5Encoder.from_sizes(sizes)
    model = load_into_meta_module(model, sd, source, WHAT, device=device)
    return model.to(dtype).eval().requires_grad_(False)


# --------------------------------------------------------------------- wrapper
class T5EncoderModel:
    """Tokenizer + umT5 encoder: prompts -> per-prompt embeddings (official interface).

    Args:
        text_len: prompts are padded/truncated to this many tokens (512 for Wan2.1).
        dtype: dtype of the weights and activations.
        device: where the encoder lives (ignored when ``shard_fn`` is given).
        checkpoint_path: ``models_t5_umt5-xxl-enc-bf16.pth``.
        tokenizer_path: the tokenizer folder (``<ckpt_dir>/google/umt5-xxl``).
        shard_fn: optional ``shard_fn(module, sync_module_states=False)`` wrapping the
            encoder for FSDP; it then owns device placement.
    """

    def __init__(self, text_len: int, dtype: torch.dtype = torch.bfloat16,
                 device: torch.device | str = "cpu",
                 checkpoint_path: str | os.PathLike | None = None,
                 tokenizer_path: str | os.PathLike | None = None,
                 shard_fn: Callable[..., nn.Module] | None = None) -> None:
        if checkpoint_path is None or tokenizer_path is None:
            raise ValueError("T5EncoderModel needs both checkpoint_path and tokenizer_path.")
        self.text_len = text_len
        self.dtype = dtype
        self.device = device
        self.checkpoint_path = checkpoint_path
        self.tokenizer_path = tokenizer_path

        log.info("Loading %s from %s", WHAT, checkpoint_path)
        # Fail on a bad tokenizer folder before reading gigabytes of weights.
        self.tokenizer = HuggingfaceTokenizer(name=tokenizer_path, seq_len=text_len,
                                              clean="whitespace")
        model = load_t5_encoder(checkpoint_path, dtype, device="cpu" if shard_fn else device)
        self.model = shard_fn(model, sync_module_states=False) if shard_fn else model

    @torch.no_grad()
    def __call__(self, texts: str | list[str], device: torch.device | str) -> list[torch.Tensor]:
        """Encode prompts; returns one ``[L_i, dim]`` tensor per prompt, ``L_i`` its token count."""
        ids, mask = self.tokenizer(texts, return_mask=True, add_special_tokens=True)
        ids, mask = ids.to(device), mask.to(device)
        lengths = mask.gt(0).sum(dim=1).tolist()
        hidden = self.model(ids, mask)
        return [h[:n] for h, n in zip(hidden, lengths)]
