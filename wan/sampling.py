"""The denoising loop shared by every task.

Task pipelines only prepare their conditioning (text context, and for i2v the
CLIP features and the masked first-frame latents ``y``) and their per-step
choices; this module turns initial noise into a clean latent with
classifier-free guidance and one of the flow-matching solvers of
:mod:`wan.utils.fm_solvers`. What varies between tasks reaches the loop as data:

* the start step (video-to-video) and its initial latent;
* the model of each step (:class:`Experts`: Wan2.2 A14B's high- and low-noise
  experts) and its guide scale;
* the timesteps the model sees (``timestep_fn``: TI2V's per-token timesteps);
* a latent constraint applied before the first and after every step
  (``constraint``: TI2V keeps the image's first latent frame).
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .modules.model import cached_context
from .utils.fm_solvers import FlowSampler, make_sampler

__all__ = ["Conditioning", "Experts", "resolve_seed", "initial_noise", "sample", "autocast_for",
           "v2v_start_step", "guide_pair"]

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    """What the DiT is conditioned on for one branch of classifier-free guidance."""
    context: torch.Tensor                 # [L, text_dim] text embedding
    clip_fea: torch.Tensor | None = None  # [1, 257, clip_dim] (i2v)
    y: torch.Tensor | None = None         # [4 + 16, F, H, W] mask + first-frame latents (i2v)
    extra: dict = field(default_factory=dict)


GuideScale = float | tuple[float, float]


def guide_pair(guide_scale: GuideScale) -> tuple[float, float]:
    """``(low, high)`` guide scales: a pair as given (the official order), or one number twice."""
    if isinstance(guide_scale, (tuple, list)):
        if len(guide_scale) != 2:
            raise ValueError(f"guide_scale must be a number or a (low, high) pair, got "
                             f"{guide_scale!r}")
        low, high = (float(g) for g in guide_scale)
    else:
        low = high = float(guide_scale)
    for g in (low, high):
        if not g >= 0:  # also NaN
            raise ValueError(f"guide_scale must be >= 0, got {guide_scale!r}")
    return low, high


@dataclass
class Experts:
    """Wan2.2 A14B's two experts: ``high`` runs while ``t >= boundary`` (in timestep units,
    ``config.boundary * num_train_timesteps``), ``low`` after, as the official code.

    ``activate(name)`` (optional) is called when the loop switches to the expert
    ``'high'`` or ``'low'`` (the pipelines move it onto the accelerator there);
    ``history`` records the expert of every step that ran.
    """
    high: Callable
    low: Callable
    boundary: float
    activate: Callable[[str], None] | None = None
    history: list[str] = field(default_factory=list)
    switch_step: int | None = None  # if given: high for the steps before it (--boundary_step)

    def name_for(self, t: float, step: int | None = None) -> str:
        if self.switch_step is not None and step is not None:
            return "high" if step < self.switch_step else "low"
        return "high" if t >= self.boundary else "low"

    def pick(self, t: float, step: int | None = None) -> tuple[str, Callable]:
        name = self.name_for(t, step)
        if self.activate is not None and (not self.history or self.history[-1] != name):
            self.activate(name)
        self.history.append(name)
        return name, self.high if name == "high" else self.low


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
    for key, value in branches[0].extra.items():
        # per-sample tensors (e.g. VACE's context latents) go as a list; settings as they are
        kwargs[key] = [b.extra[key] for b in branches] if isinstance(value, torch.Tensor) \
            else value
    return kwargs


def _expand_batch(t: torch.Tensor, n: int) -> torch.Tensor:
    """The timesteps of one sample (``[1]`` or ``[1, L]``) for a batch of ``n``."""
    return t.expand(n, *t.shape[1:])


@torch.no_grad()
def sample(model: Callable | Experts, noise: torch.Tensor, cond: Conditioning,
           uncond: Conditioning, seq_len: int, solver: str = "unipc", steps: int = 50,
           shift: float = 5.0, guide_scale: GuideScale = 5.0, num_train_timesteps: int = 1000,
           param_dtype: torch.dtype = torch.float32, batch_cfg: bool = True,
           progress: bool = True, on_step: Callable[[int, int], None] | None = None,
           start_step: int = 0, init_latent: torch.Tensor | None = None,
           timestep_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
           constraint: Callable[[torch.Tensor], torch.Tensor] | None = None,
           sampler: FlowSampler | None = None) -> torch.Tensor:
    """Run the sampler from ``noise`` and return the final latent ``[C, F, H, W]`` (fp32).

    Each step evaluates the DiT on the conditional and unconditional branch
    (one batch of two when ``batch_cfg``; two calls otherwise, which needs less
    memory) and combines them as ``uncond + guide_scale * (cond - uncond)``; a
    guide scale of 1 evaluates the conditional branch only. ``on_step(done,
    total)`` is called after every step (progress bars of the demos), with
    ``total = steps - start_step``.

    ``model`` is one DiT, or :class:`Experts` choosing one per step; then
    ``guide_scale`` may be a ``(low, high)`` pair, used with its expert (a plain
    number serves both). ``timestep_fn`` maps the step's timestep ``[1]`` to what
    the model is given (TI2V: per-token timesteps ``[1, L]``). ``constraint``
    (optional) is applied to the latent before the first step and after every
    step (TI2V: the first latent frame is kept the image's).

    Video-to-video: ``start_step = k > 0`` (see :func:`v2v_start_step`) enters
    the grid of ``steps`` at step ``k`` from ``x_k = sigma_k * noise + (1 - sigma_k)
    * init_latent`` (``sigma_k`` the float32 noise level of that step, ``init_latent``
    the VAE latent of the source video) and runs the remaining ``steps - k``
    steps; the solver's history starts empty at ``k``. ``start_step = 0`` is
    plain generation from ``noise`` (``init_latent`` must then be None).

    ``sampler`` (optional) replaces the solver built from ``solver``/``steps``/
    ``shift``: e.g. a :class:`~wan.utils.fm_solvers.StepDistillSampler` for the few-step
    distilled models.
    """
    device = noise.device
    low_guide, high_guide = guide_pair(guide_scale)
    if not isinstance(model, Experts) and low_guide != high_guide:
        raise ValueError(f"a (low, high) guide scale pair needs two experts (Wan2.2 A14B); "
                         f"this model takes one guide scale, got {guide_scale!r}")
    if sampler is None:
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
    if constraint is not None:
        latent = constraint(latent)
    timesteps = sampler.timesteps.to(device)
    total = len(timesteps) - start_step
    both, only_c, only_u = _batched([cond, uncond]), _batched([cond]), _batched([uncond])
    models = [model.high, model.low] if isinstance(model, Experts) else [model]
    bar = tqdm(total=total, desc="denoising", disable=not progress, leave=False)
    with autocast_for(device, param_dtype), ExitStack() as stack:
        for m in models:
            stack.enter_context(cached_context(m))
        for i in range(start_step, len(timesteps)):
            t = timesteps[i].view(1)
            if isinstance(model, Experts):
                name, dit = model.pick(t.item(), i)
                guide = high_guide if name == "high" else low_guide
            else:
                dit, guide = model, high_guide
            t_in = timestep_fn(t) if timestep_fn is not None else t
            if batch_cfg and guide != 1.0:
                out = dit([latent, latent], t=_expand_batch(t_in, 2), seq_len=seq_len, **both)
                flow_c, flow_u = out[0], out[1]
            else:
                flow_c = dit([latent], t=t_in, seq_len=seq_len, **only_c)[0]
                flow_u = flow_c if guide == 1.0 else \
                    dit([latent], t=t_in, seq_len=seq_len, **only_u)[0]
            flow = flow_u + guide * (flow_c - flow_u)
            latent = sampler.step(flow.float(), i, latent)
            if constraint is not None:
                latent = constraint(latent)
            bar.update(1)
            if on_step is not None:
                on_step(i + 1 - start_step, total)
    bar.close()
    return latent
