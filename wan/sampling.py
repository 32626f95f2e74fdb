"""The denoising loop shared by every task (t2v, t2i, i2v).

Task pipelines only prepare their conditioning (text context, and for i2v the
CLIP features and the masked first-frame latents ``y``); this module turns
initial noise into a clean latent with classifier-free guidance and one of the
flow-matching solvers of :mod:`wan.utils.fm_solvers`.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .modules.model import cached_context
from .utils.fm_solvers import make_sampler

__all__ = ["Conditioning", "resolve_seed", "initial_noise", "sample", "autocast_for"]

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    """What the DiT is conditioned on for one branch of classifier-free guidance."""
    context: torch.Tensor                 # [L, text_dim] text embedding
    clip_fea: torch.Tensor | None = None  # [1, 257, clip_dim] (i2v)
    y: torch.Tensor | None = None         # [4 + 16, F, H, W] mask + first-frame latents (i2v)
    extra: dict = field(default_factory=dict)


def resolve_seed(seed: int) -> int:
    """``seed`` itself, or a random one for ``seed < 0`` (as the official: 0..sys.maxsize)."""
    return int(seed) if seed is not None and seed >= 0 else random.randint(0, sys.maxsize)


def initial_noise(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    """The official recipe: fp32 ``randn`` from a generator on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float32, device=device, generator=g)


def autocast_for(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context for ``dtype`` (bf16/fp16) on ``device``; nothing for fp32."""
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type=device.type, dtype=dtype)
    return nullcontext()


def _batched(branches: list[Conditioning]) -> dict:
    kwargs: dict = {"context": [b.context for b in branches]}
    if branches[0].clip_fea is not None:
        kwargs["clip_fea"] = torch.cat([b.clip_fea for b in branches])
    if branches[0].y is not None:
        kwargs["y"] = [b.y for b in branches]
    return kwargs


@torch.no_grad()
def sample(model: Callable, noise: torch.Tensor, cond: Conditioning, uncond: Conditioning,
           seq_len: int, solver: str = "unipc", steps: int = 50, shift: float = 5.0,
           guide_scale: float = 5.0, num_train_timesteps: int = 1000,
           param_dtype: torch.dtype = torch.float32, batch_cfg: bool = True,
           progress: bool = True, on_step: Callable[[int, int], None] | None = None
           ) -> torch.Tensor:
    """Run the sampler from ``noise`` and return the final latent ``[16, F, H, W]`` (fp32).

    Each step evaluates the DiT on the conditional and unconditional branch
    (one batch of two when ``batch_cfg``; two calls otherwise, which needs less
    memory) and combines them as ``uncond + guide_scale * (cond - uncond)``.
    ``on_step(i, steps)`` is called after every step (progress bars of the demos).
    """
    device = noise.device
    sampler = make_sampler(solver, steps, shift, num_train_timesteps, device=device)
    latent = noise
    timesteps = sampler.timesteps.to(device)
    both, only_c, only_u = _batched([cond, uncond]), _batched([cond]), _batched([uncond])
    bar = tqdm(total=len(timesteps), desc="denoising", disable=not progress, leave=False)
    with autocast_for(device, param_dtype), cached_context(model):
        for i, t in enumerate(timesteps):
            t = t.view(1)
            if batch_cfg and guide_scale != 1.0:
                out = model([latent, latent], t=t.expand(2), seq_len=seq_len, **both)
                flow_c, flow_u = out[0], out[1]
            else:
                flow_c = model([latent], t=t, seq_len=seq_len, **only_c)[0]
                flow_u = flow_c if guide_scale == 1.0 else \
                    model([latent], t=t, seq_len=seq_len, **only_u)[0]
            flow = flow_u + guide_scale * (flow_c - flow_u)
            latent = sampler.step(flow.float(), i, latent)
            bar.update(1)
            if on_step is not None:
                on_step(i + 1, len(timesteps))
    bar.close()
    return latent
