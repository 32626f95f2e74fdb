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

__all__ = ["Conditioning", "resolve_seed", "initial_noise", "sample", "autocast_for",
           "v2v_start_step"]

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


def v2v_start_step(steps: int, strength: float) -> int:
    """The step video-to-video starts at: ``steps - int(steps * strength)`` (diffusers' rule).

    ``strength`` in (0, 1] is the share of the ``steps`` that run: 1.0 runs them
    all (start 0, plain text-to-video), 0.5 of 50 runs the last 25 (start 25).
    Raises ValueError for a strength outside (0, 1] or one too small to run a step.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sampling steps must be an integer >= 1, got {steps!r}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    if not 0.0 < strength <= 1.0:  # also rejects NaN
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    run = min(int(steps * strength), steps)
    if run < 1:
        raise ValueError(f"strength {strength} runs no step of {steps}: it must be at least "
                         f"1/{steps} = {1 / steps:.4g}")
    return steps - run


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
           progress: bool = True, on_step: Callable[[int, int], None] | None = None,
           start_step: int = 0, init_latent: torch.Tensor | None = None) -> torch.Tensor:
    """Run the sampler from ``noise`` and return the final latent ``[16, F, H, W]`` (fp32).

    Each step evaluates the DiT on the conditional and unconditional branch
    (one batch of two when ``batch_cfg``; two calls otherwise, which needs less
    memory) and combines them as ``uncond + guide_scale * (cond - uncond)``.
    ``on_step(done, total)`` is called after every step (progress bars of the demos),
    with ``total = steps - start_step``.

    Video-to-video: ``start_step = k > 0`` (see :func:`v2v_start_step`) enters
    the grid of ``steps`` at step ``k`` from ``x_k = sigma_k * noise + (1 - sigma_k)
    * init_latent`` (``sigma_k`` the float32 noise level of that step, ``init_latent``
    the VAE latent of the source video) and runs the remaining ``steps - k``
    steps; the solver's history starts empty at ``k``. ``start_step = 0`` is
    plain generation from ``noise`` (``init_latent`` must then be None).
    """
    device = noise.device
    sampler = make_sampler(solver, steps, shift, num_train_timesteps, device=device)
    sampler.reset(start_step)  # validates start_step
    if start_step == 0:
        if init_latent is not None:
            raise ValueError("init_latent is only used with start_step > 0")
        latent = noise
    else:
        if init_latent is None or init_latent.shape != noise.shape:
            raise ValueError(f"start_step {start_step} needs an init_latent of the noise's shape "
                             f"{tuple(noise.shape)}, got "
                             f"{None if init_latent is None else tuple(init_latent.shape)}")
        sigma = sampler.sigmas[start_step].to(device)
        latent = (1 - sigma) * init_latent.to(device, noise.dtype) + sigma * noise
    timesteps = sampler.timesteps.to(device)
    total = len(timesteps) - start_step
    both, only_c, only_u = _batched([cond, uncond]), _batched([cond]), _batched([uncond])
    bar = tqdm(total=total, desc="denoising", disable=not progress, leave=False)
    with autocast_for(device, param_dtype), cached_context(model):
        for i in range(start_step, len(timesteps)):
            t = timesteps[i].view(1)
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
                on_step(i + 1 - start_step, total)
    bar.close()
    return latent
