"""Sequence parallelism of the DiT (xDiT's Ulysses x ring layout).

The ``ulysses_size * ring_size`` ranks split the padded token sequence into
equal contiguous slices, slice ``i`` on rank ``i``. Everything in a DiT block
except self-attention is per token, so each rank runs the blocks on its slice
alone; self-attention needs every key:

1. **Ulysses** (all-to-all within a group of ``ulysses_size`` consecutive ranks):
   each rank trades its slice of all heads for the group's slices of
   ``heads / ulysses_size`` heads, i.e. it then holds a contiguous block of
   ``ulysses_size`` slices for a subset of heads.
2. **Ring** (over the ``ring_size`` ranks ``j, j + ulysses_size, ...``): the
   blocks circulate and the partial results are merged through their
   log-sum-exp (:mod:`wan.distributed.ring_attention`). Without ring
   parallelism the block is the whole sequence and the project's attention
   entry point (:func:`wan.modules.attention.attention`) runs on it.
3. The all-to-all is inverted, giving back the rank's slice with all heads.

The process groups come from yunchang (``set_seq_parallel_pg``) and the
all-to-all is yunchang's; the attention itself is this project's, with the
true sequence length as key mask, so padded tokens never change the result:
the multi-process video equals the single-process one.

On CUDA, ``WAN_SP_ATTENTION=xfuser`` opts into xDiT's
``xFuserLongContextAttention`` (optional ``xfuser`` install) for sequences that
need no padding; padded ones keep the exact path above.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..modules.attention import attention as local_attention
from .ring_attention import ring_attention

__all__ = ["SequenceParallel", "init_sequence_parallel", "get_sequence_parallel",
           "enable_sequence_parallel", "check_parallel_sizes"]

log = logging.getLogger(__name__)

_ACTIVE: dict[tuple[int, int], "SequenceParallel"] = {}
_CURRENT: "SequenceParallel | None" = None


def check_parallel_sizes(ulysses_size: int, ring_size: int, world_size: int,
                         num_heads: int | None = None) -> None:
    """Raise ValueError with one clear sentence if the sizes cannot work together."""
    if ulysses_size < 1 or ring_size < 1:
        raise ValueError(f"ulysses_size and ring_size must be at least 1, got {ulysses_size} "
                         f"and {ring_size}")
    if ulysses_size * ring_size != world_size:
        raise ValueError(f"ulysses_size x ring_size ({ulysses_size} x {ring_size}) must equal "
                         f"the number of processes ({world_size})")
    if num_heads is not None and num_heads % ulysses_size:
        raise ValueError(f"the model has {num_heads} attention heads, which ulysses_size "
                         f"{ulysses_size} does not divide")


def _yunchang():
    try:
        import yunchang  # noqa: F401 - registers the process-group singleton
        from yunchang.comm.all_to_all import all_to_all_4D
        from yunchang.globals import PROCESS_GROUP, set_seq_parallel_pg
    except ImportError as e:
        raise ImportError("sequence parallelism (--ulysses_size / --ring_size) needs yunchang: "
                          "pip install 'yunchang>=0.6.4' (or pip install -e '.[multigpu]')") from e
    return set_seq_parallel_pg, PROCESS_GROUP, all_to_all_4D


@dataclass
class SequenceParallel:
    """One rank's view of the sequence-parallel layout and its collectives."""

    ulysses_size: int
    ring_size: int
    rank: int
    ulysses_group: dist.ProcessGroup | None
    ring_group: dist.ProcessGroup | None
    backend: str = "native"

    @property
    def world_size(self) -> int:
        return self.ulysses_size * self.ring_size

    # ---------------------------------------------------------------- sequence
    def local_range(self, seq_len: int) -> tuple[int, int]:
        """``[start, end)`` of this rank's slice of a ``seq_len``-token sequence."""
        if seq_len % self.world_size:
            raise ValueError(f"seq_len {seq_len} is not a multiple of the sequence-parallel size "
                             f"{self.world_size}; round it up (the pipelines do)")
        n = seq_len // self.world_size
        return self.rank * n, (self.rank + 1) * n

    def scatter(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's slice of ``x`` along ``dim`` (no communication: every rank has ``x``)."""
        start, end = self.local_range(x.size(dim))
        return x.narrow(dim, start, end - start)

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Concatenate every rank's slice along ``dim`` (all-gather, rank order)."""
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)

    # ---------------------------------------------------------------- attention
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  k_lens: torch.Tensor | None = None, window_size=(-1, -1),
                  softmax_scale: float | None = None) -> torch.Tensor:
        """Self-attention of this rank's ``[B, L/P, N, D]`` slices over the whole sequence.

        ``k_lens`` are the true (unpadded) lengths of the full sequence. Returns
        ``[B, L/P, N, D]`` in the dtype of ``q``, as the single-process entry point.
        """
        if self.ring_size > 1 and tuple(window_size) != (-1, -1):
            raise NotImplementedError("ring attention supports global attention only "
                                      "(window_size (-1, -1), as in the released models)")
        out_dtype = q.dtype
        q, k = q.to(v.dtype), k.to(v.dtype)  # what the single-process entry point does first
        if self.backend == "xfuser" and self._unpadded(k_lens, k.size(1)):
            from .xfuser_backend import xfuser_attention
            return xfuser_attention(q, k, v, window_size).to(out_dtype)
        _, _, all_to_all_4d = _yunchang()
        if self.ulysses_size > 1:  # [B, L/P, N, D] -> [B, U*L/P, N/U, D]
            q, k, v = (all_to_all_4d(t.contiguous(), 2, 1, group=self.ulysses_group)
                       for t in (q, k, v))
        if self.ring_size > 1:
            out = ring_attention(q, k, v, self.ring_group, k_lens=k_lens,
                                 softmax_scale=softmax_scale)
        else:
            out = local_attention(q, k, v, k_lens=k_lens, softmax_scale=softmax_scale,
                                  window_size=window_size)
        if self.ulysses_size > 1:  # back to [B, L/P, N, D]
            out = all_to_all_4d(out.contiguous(), 1, 2, group=self.ulysses_group)
        return out.to(out_dtype)

    def _unpadded(self, k_lens: torch.Tensor | None, local_len: int) -> bool:
        return k_lens is None or bool((k_lens >= local_len * self.world_size).all())


def _backend_from_env() -> str:
    backend = os.environ.get("WAN_SP_ATTENTION", "native").strip().lower() or "native"
    if backend not in ("native", "xfuser"):
        raise ValueError(f"WAN_SP_ATTENTION must be 'native' or 'xfuser', got '{backend}'")
    return backend


def init_sequence_parallel(ulysses_size: int, ring_size: int) -> SequenceParallel:
    """Create (once) the Ulysses and ring process groups over all ranks and make them current.

    Every rank must call this with the same sizes (it creates process groups).
    """
    global _CURRENT
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sequence parallelism needs torch.distributed: launch with "
                           "torchrun --nproc_per_node=N")
    world, rank = dist.get_world_size(), dist.get_rank()
    check_parallel_sizes(ulysses_size, ring_size, world)
    key = (ulysses_size, ring_size)
    if key not in _ACTIVE:
        set_seq_parallel_pg, groups, _ = _yunchang()
        set_seq_parallel_pg(ulysses_size, ring_size, rank, world, use_ulysses_low=True)
        backend = _backend_from_env()
        if backend == "xfuser":
            from .xfuser_backend import init_xfuser
            init_xfuser(ulysses_size, ring_size)
        _ACTIVE[key] = SequenceParallel(ulysses_size, ring_size, rank, groups.ULYSSES_PG,
                                        groups.RING_PG, backend)
        log.info("Sequence parallel: %d ranks = ulysses %d x ring %d (%s attention)", world,
                 ulysses_size, ring_size, backend)
    _CURRENT = _ACTIVE[key]
    return _CURRENT


def get_sequence_parallel() -> SequenceParallel | None:
    """The layout set by :func:`init_sequence_parallel`, or None."""
    return _CURRENT


def enable_sequence_parallel(model: nn.Module, sp: SequenceParallel | None = None) -> int:
    """Make ``model`` (a :class:`~wan.modules.model.WanModel`, also the VACE one) run
    sequence-parallel.

    Uses ``sp``, or the layout of :func:`init_sequence_parallel` (``generate.py``
    sets it up from ``--ulysses_size`` / ``--ring_size``). Returns the
    sequence-parallel size, the multiple the token sequence must be padded to.
    """
    sp = sp or _CURRENT
    if sp is None:
        raise RuntimeError("sequence parallelism is not set up: call "
                           "wan.distributed.sequence_parallel.init_sequence_parallel("
                           "ulysses_size, ring_size) on every rank first")
    check_parallel_sizes(sp.ulysses_size, sp.ring_size, sp.world_size, model.num_heads)
    model.sp = sp
    # the VACE model's control blocks (vace_blocks) run on the same token slices
    for block in (*model.blocks, *getattr(model, "vace_blocks", ())):
        block.self_attn.sp = sp
    return sp.world_size
