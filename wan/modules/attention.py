"""The one attention entry point of the project.

``attention(q, k, v, k_lens=...)`` takes ``[B, L, heads, head_dim]`` tensors and
runs, in order of preference:

1. FlashAttention 3 (``flash_attn_interface``) when installed, on CUDA, for
   half-precision inputs;
2. FlashAttention 2 (``flash_attn``) likewise;
3. PyTorch's ``scaled_dot_product_attention`` everywhere else (CPU, MPS, CUDA
   without flash-attn, fp32 inputs).

Every path has the same semantics: keys at positions ``>= k_lens[b]`` of sample
``b`` are ignored. FlashAttention is optional; nothing here needs it.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["attention", "flash_attention", "available_backends", "key_padding_mask"]

log = logging.getLogger(__name__)

HALF_DTYPES = (torch.float16, torch.bfloat16)


@lru_cache(maxsize=None)
def _flash_module(version: int):
    """The flash-attn module of ``version`` (3 or 2), imported on first use, or None."""
    name = "flash_attn_interface" if version == 3 else "flash_attn"
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception as e:  # a broken install must not break generation
        log.warning("%s is installed but failed to import (%s); using PyTorch SDPA.", name, e)
        return None


def available_backends() -> list[str]:
    """Names of the attention backends usable in this environment (for logs and docs)."""
    names = [f"flash{v}" for v in (3, 2) if _flash_module(v) is not None]
    return names + ["sdpa"]


def key_padding_mask(k_lens: torch.Tensor, lk: int, device: torch.device) -> torch.Tensor:
    """Boolean mask ``[B, 1, 1, Lk]``, True where a key may be attended."""
    pos = torch.arange(lk, device=device)
    return (pos[None, :] < k_lens.to(device)[:, None])[:, None, None, :]


def _sdpa(q, k, v, k_lens, softmax_scale, causal):
    b, lq, lk = q.size(0), q.size(1), k.size(1)
    mask = None
    if k_lens is not None and bool((k_lens < lk).any()):
        mask = key_padding_mask(k_lens, lk, q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask, is_causal=causal and mask is None, scale=softmax_scale)
    return out.transpose(1, 2)


def _flash(mod, version, q, k, v, k_lens, softmax_scale, causal, window_size):
    b, lq, lk = q.size(0), q.size(1), k.size(1)
    q_lens = torch.full((b,), lq, dtype=torch.int32, device=q.device)
    if k_lens is None:
        k_lens = torch.full((b,), lk, dtype=torch.int32, device=q.device)
        k_flat, v_flat = k.flatten(0, 1), v.flatten(0, 1)
    else:
        k_lens = k_lens.to(device=q.device, dtype=torch.int32)
        k_flat = torch.cat([u[:n] for u, n in zip(k, k_lens.tolist())])
        v_flat = torch.cat([u[:n] for u, n in zip(v, k_lens.tolist())])
    zero = q_lens.new_zeros(1)
    cu_q = torch.cat([zero, q_lens]).cumsum(0, dtype=torch.int32)
    cu_k = torch.cat([zero, k_lens]).cumsum(0, dtype=torch.int32)
    kwargs = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=lq, max_seqlen_k=lk,
                  softmax_scale=softmax_scale, causal=causal)
    if version == 3:
        out = mod.flash_attn_varlen_func(q.flatten(0, 1), k_flat, v_flat, **kwargs)
        out = out[0] if isinstance(out, tuple) else out
    else:
        out = mod.flash_attn_varlen_func(q.flatten(0, 1), k_flat, v_flat,
                                         window_size=window_size, **kwargs)
    return out.unflatten(0, (b, lq))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              k_lens: torch.Tensor | None = None, softmax_scale: float | None = None,
              causal: bool = False, window_size: tuple[int, int] = (-1, -1),
              backend: str | None = None) -> torch.Tensor:
    """Multi-head attention over ``[B, L, N, D]`` tensors; returns ``[B, Lq, N, D]``.

    ``k_lens`` (``[B]``, optional) masks the keys past each sample's length.
    ``backend`` forces ``'flash3'``, ``'flash2'`` or ``'sdpa'`` (default: the best usable).
    The output has the dtype of ``q``.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects [B, L, heads, head_dim] tensors, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if tuple(window_size) != (-1, -1) and backend != "flash2":
        if _flash_module(2) is None or q.device.type != "cuda":
            raise NotImplementedError("sliding-window attention needs FlashAttention 2 on CUDA; "
                                      "the released Wan2.1 models use global attention (-1, -1).")
        backend = "flash2"
    out_dtype = q.dtype
    dtype = v.dtype
    q, k = q.to(dtype), k.to(dtype)

    usable_flash = q.device.type == "cuda" and dtype in HALF_DTYPES and q.size(-1) <= 256
    for version in (3, 2):
        name = f"flash{version}"
        if backend not in (None, name) or not usable_flash:
            continue
        mod = _flash_module(version)
        if mod is None:
            if backend == name:
                raise RuntimeError(f"attention backend '{name}' was requested but is not installed.")
            continue
        return _flash(mod, version, q, k, v, k_lens, softmax_scale, causal,
                      tuple(window_size)).to(out_dtype)
    if backend not in (None, "sdpa"):
        raise RuntimeError(f"attention backend '{backend}' cannot run here "
                           f"(device {q.device.type}, dtype {dtype}); use 'sdpa'.")
    return _sdpa(q, k, v, k_lens, softmax_scale, causal).to(out_dtype)


def flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None,
                    q_scale=None, causal=False, window_size=(-1, -1), deterministic=False,
                    dtype=torch.bfloat16, version=None):
    """Compatibility wrapper with the official ``flash_attention`` signature.

    Unlike the official function it works without flash-attn and on any device.
    Inputs in fp32 are cast to ``dtype`` first, as the official function does.
    """
    if q_lens is not None:
        raise NotImplementedError("q_lens is not supported; pad queries and drop their outputs.")
    if dropout_p:
        raise NotImplementedError("attention dropout is not supported at inference.")
    out_dtype = q.dtype
    if q_scale is not None:
        q = q * q_scale
    if q.device.type == "cuda" and q.dtype not in HALF_DTYPES:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    backend = None if version is None else f"flash{version}"
    if backend is not None and (_flash_module(version) is None or q.device.type != "cuda"):
        backend = None
    return attention(q, k, v, k_lens=k_lens, softmax_scale=softmax_scale, causal=causal,
                     window_size=window_size, backend=backend).to(out_dtype)
