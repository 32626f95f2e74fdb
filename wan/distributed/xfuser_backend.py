"""Optional: xDiT's ``xFuserLongContextAttention`` as the sequence-parallel attention (CUDA only).

Opt in with ``WAN_SP_ATTENTION=xfuser`` after ``pip install -e '.[xfuser]'``.
xfuser initialises CUDA and imports diffusers, so it is imported here, lazily,
and only when asked for on a CUDA machine. It attends padded keys, so the
sequence-parallel layer uses it only for sequences that need no padding; the
native path (exact, masked) handles the rest. Without flash-attn it runs
PyTorch's attention kernels.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache

import torch

__all__ = ["init_xfuser", "xfuser_attention"]

log = logging.getLogger(__name__)


def init_xfuser(ulysses_size: int, ring_size: int) -> None:
    """Set up xfuser's own parallel state (it keeps groups of its own)."""
    if not torch.cuda.is_available():
        raise ValueError("WAN_SP_ATTENTION=xfuser needs CUDA GPUs; unset it to use the "
                         "native sequence-parallel attention")
    if importlib.util.find_spec("xfuser") is None:
        raise ImportError("WAN_SP_ATTENTION=xfuser needs xfuser: pip install -e '.[xfuser]'")
    import torch.distributed as dist
    from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel

    init_distributed_environment(rank=dist.get_rank(), world_size=dist.get_world_size())
    initialize_model_parallel(sequence_parallel_degree=dist.get_world_size(),
                              ring_degree=ring_size, ulysses_degree=ulysses_size)


@lru_cache(maxsize=1)
def _layer():
    from xfuser.core.long_ctx_attention import xFuserLongContextAttention
    from yunchang.kernels import AttnType

    has_flash = importlib.util.find_spec("flash_attn") is not None
    attn_type = AttnType.FA if has_flash else AttnType.TORCH_EFFICIENT
    log.info("xfuser attention with kernel %s", attn_type.value)
    return xFuserLongContextAttention(attn_type=attn_type)


def xfuser_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     window_size=(-1, -1)) -> torch.Tensor:
    """Unmasked sequence-parallel attention of ``[B, L/P, N, D]`` slices through xfuser."""
    half = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    return _layer()(None, query=q.to(half), key=k.to(half), value=v.to(half),
                    window_size=window_size)
