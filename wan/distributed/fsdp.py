"""FSDP sharding of the DiT and of the umT5 encoder.

Each transformer block is its own FSDP unit and the rest of the model (embeddings,
head) forms the root unit, as in the official code. Sharding uses PyTorch's
per-parameter FSDP (``fully_shard``), which keeps every tensor in the dtype the
loader gave it: an fp32 config stays fp32, and under bf16 mixed precision the
matmul weights stay bf16 while norms and modulation stay fp32, exactly as in the
single-process model. A sharded model therefore computes the same numbers as an
unsharded one; only the storage is split, each rank keeping about ``1/world`` of
every tensor and gathering a block's full weights just for that block's forward.
"""

from __future__ import annotations

import gc
import logging
from functools import lru_cache

import torch
import torch.distributed as dist
import torch.nn as nn

from ..utils.device import resolve_device

__all__ = ["shard_model", "is_sharded", "resident_parameter_numel"]

log = logging.getLogger(__name__)


def _fsdp_api():
    """``(fully_shard, FSDPModule)`` from this PyTorch (public since 2.6, private in 2.4/2.5)."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:  # torch 2.4 / 2.5
        from torch.distributed._composable.fsdp import FSDPModule, fully_shard
    return fully_shard, FSDPModule


@lru_cache(maxsize=None)
def _mesh(device_type: str, world_size: int):
    """A one-dimensional device mesh over all ranks (created once per device type)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world_size,))


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"shard_model expects a model with a 'blocks' ModuleList (WanModel, "
                        f"T5Encoder), got {type(model).__name__}")
    return blocks


def shard_model(model: nn.Module, device_id: int | str | torch.device | None = None,
                sync_module_states: bool = False, reshard_after_forward: bool = True,
                **_official_kwargs) -> nn.Module:
    """Shard ``model`` (a :class:`~wan.modules.model.WanModel` or umT5 encoder) over all ranks.

    Args:
        model: a module with a ``blocks`` ModuleList, loaded on every rank (CPU is fine).
        device_id: where the shards live (CUDA index, device or ``'cpu'``).
        sync_module_states: broadcast rank 0's tensors first. Not needed when every
            rank read the same checkpoint, which is how the pipelines load.
        reshard_after_forward: free the gathered weights after each unit's forward
            (lowest memory; the next call gathers them again).
        _official_kwargs: ``param_dtype`` etc. of the official signature are accepted
            and ignored: tensors keep the dtypes the loader chose.

    Returns the same module object, now sharded (parameters are ``DTensor`` shards).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("FSDP needs torch.distributed: launch with torchrun --nproc_per_node=N")
    fully_shard, _ = _fsdp_api()
    device = resolve_device(device_id)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if sync_module_states:
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)
    mesh = _mesh(device.type, dist.get_world_size())
    # one unit per transformer block (the VACE model's vace_blocks too), then the rest
    for block in (*_blocks(model), *getattr(model, "vace_blocks", ())):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    gc.collect()
    total = sum(p.numel() for p in model.parameters())
    log.info("%s sharded over %d ranks: %d of %d parameters on this rank (%s)",
             type(model).__name__, dist.get_world_size(), resident_parameter_numel(model), total,
             device)
    return model


def is_sharded(module: nn.Module) -> bool:
    """True if ``module`` was sharded by :func:`shard_model` (it then owns its placement)."""
    if not dist.is_available():
        return False
    try:
        _, fsdp_module = _fsdp_api()
    except ImportError:
        return False
    return isinstance(module, fsdp_module) or hasattr(module, "_fsdp_wrapped_module")


def resident_parameter_numel(model: nn.Module) -> int:
    """Number of parameter elements this rank stores (its shards, or everything if unsharded)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel()
    return total

