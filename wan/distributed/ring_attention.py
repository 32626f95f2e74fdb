"""Exact ring attention over a process group, with key-length masks.

Every rank of the ring holds one contiguous block of the sequence (queries, keys
and values). The key/value blocks travel around the ring; at each step a rank
attends its queries to the block it holds, obtaining the block's output *and*
its log-sum-exp, and merges it into a running result:

    lse = logaddexp(lse_a, lse_b)
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

which is the softmax over the union of the keys, exactly. Keys past a sample's
length are dropped before the kernel runs (a block with no valid key is skipped),
so padding never enters the softmax.

The per-block kernel returns the log-sum-exp: on the CPU PyTorch's
``_scaled_dot_product_flash_attention_for_cpu``; on CUDA PyTorch's flash (half
precision) or memory-efficient kernel; anywhere else, or if those refuse the
inputs, a plain PyTorch computation in fp32.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist

__all__ = ["attention_with_lse", "merge_attention", "ring_attention"]

log = logging.getLogger(__name__)

_HALF = (torch.float16, torch.bfloat16)


def _math_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference kernel in fp32 on ``[B, N, L, D]`` tensors, queries in chunks to bound memory."""
    outs, lses = [], []
    kf, vf = k.float(), v.float()
    for qc in q.float().split(chunk, dim=2):
        s = torch.matmul(qc, kf.transpose(-1, -2)) * scale
        lse = torch.logsumexp(s, dim=-1)
        outs.append(torch.matmul(torch.exp(s - lse[..., None]), vf))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _kernel_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     force_math: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, N, L, D]`` attention -> (output ``[B, N, Lq, D]``, fp32 lse ``[B, N, Lq]``)."""
    if force_math:
        return _math_with_lse(q, k, v, scale)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, scale=scale)[:2]
        return out, lse
    if q.device.type == "cuda":
        try:
            if q.dtype in _HALF:
                out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
                    q, k, v, 0.0, False, False, scale=scale)[:2]
            else:
                out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                    q, k, v, None, True, 0.0, False, scale=scale)[:2]
            return out, lse[..., :q.size(2)].float()
        except RuntimeError as e:  # unsupported GPU / head size: fall back, once noisily
            _warn_fallback(str(e))
    return _math_with_lse(q, k, v, scale)


_warned = False


def _warn_fallback(reason: str) -> None:
    global _warned
    if not _warned:
        log.warning("Ring attention: the fused kernel refused the inputs (%s); using the "
                    "PyTorch fp32 fallback.", reason.splitlines()[0])
        _warned = True


def _rows(idx: list[int]) -> slice | list[int]:
    """Index for the batch rows ``idx``: a slice (a view, no copy) when they are contiguous."""
    contiguous = idx == list(range(idx[0], idx[-1] + 1))
    return slice(idx[0], idx[-1] + 1) if contiguous else idx


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       k_lens: torch.Tensor | None = None, softmax_scale: float | None = None,
                       force_math: bool = False
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Attention of ``[B, Lq, N, D]`` queries to keys/values, with its log-sum-exp.

    Keys at positions ``>= k_lens[b]`` are ignored. Returns the output
    ``[B, Lq, N, D]`` in the dtype of ``v`` and the fp32 lse ``[B, Lq, N, 1]``; a
    sample with no valid key gets a zero output and an lse of ``-inf``. Returns
    ``(None, None)`` when no sample has a valid key.
    """
    b, lq, n, _ = q.shape
    lk = k.size(1)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.size(-1))
    lens = [lk] * b if k_lens is None else [max(0, min(lk, int(x))) for x in k_lens.tolist()]
    if max(lens) == 0:
        return None, None
    out = q.new_zeros(b, lq, n, v.size(-1), dtype=v.dtype)
    lse = q.new_full((b, lq, n, 1), float("-inf"), dtype=torch.float32)
    # Samples sharing a key length run together (the usual case: one video, two CFG branches).
    for length in sorted(set(lens) - {0}):
        sel = _rows([i for i, x in enumerate(lens) if x == length])
        o, s = _kernel_with_lse(q[sel].transpose(1, 2), k[sel, :length].transpose(1, 2),
                                v[sel, :length].transpose(1, 2), scale, force_math)
        out[sel] = o.transpose(1, 2).to(v.dtype)
        lse[sel] = s.transpose(1, 2).unsqueeze(-1)
    return out, lse


def merge_attention(out: torch.Tensor | None, lse: torch.Tensor | None,
                    block_out: torch.Tensor | None, block_lse: torch.Tensor | None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Combine two partial attentions over disjoint key sets (fp32 running result)."""
    if block_out is None:
        return out, lse
    if out is None:
        return block_out.float(), block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    # A sample absent from both halves keeps lse -inf; guard the 0 * nan.
    finite = torch.isfinite(new_lse)
    w_a = torch.where(finite, torch.exp(lse - new_lse), torch.zeros_like(lse))
    w_b = torch.where(finite, torch.exp(block_lse - new_lse), torch.zeros_like(lse))
    return out * w_a + block_out.float() * w_b, new_lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: dist.ProcessGroup,
                   k_lens: torch.Tensor | None = None, softmax_scale: float | None = None,
                   force_math: bool = False) -> torch.Tensor:
    """Exact attention over the keys of every rank of ``group``.

    Args:
        q, k, v: this rank's block ``[B, L, N, D]``; ring rank ``r`` holds the
            global positions ``[r * L, (r + 1) * L)``.
        group: the ring process group.
        k_lens: ``[B]`` global key lengths (keys at positions ``>= k_lens`` are masked).
    Returns:
        ``[B, L, N, D]`` in the dtype of ``v``.
    """
    from yunchang.ring.utils import RingComm

    comm = RingComm(group)
    world, rank = comm.world_size, comm.rank
    block_len = k.size(1)
    k_lens_cpu = None if k_lens is None else k_lens.detach().to("cpu", torch.long)
    out = lse = None
    for step in range(world):
        source = (rank - step) % world  # the ring rank whose keys we hold now
        if step + 1 < world:
            next_k, next_v = comm.send_recv(k.contiguous()), comm.send_recv(v.contiguous())
            comm.commit()
        if k_lens_cpu is None:
            local_lens = None
        else:
            local_lens = (k_lens_cpu - source * block_len).clamp(0, block_len)
        block_out, block_lse = attention_with_lse(q, k, v, local_lens, softmax_scale, force_math)
        out, lse = merge_attention(out, lse, block_out, block_lse)
        if step + 1 < world:
            comm.wait()
            k, v = next_k, next_v
    if out is None:  # no valid key anywhere: the single-process kernel would give NaN too
        return torch.full_like(q, float("nan"), dtype=v.dtype)
    return out.to(v.dtype)
