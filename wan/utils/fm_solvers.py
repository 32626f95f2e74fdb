"""Flow-matching samplers: UniPC (the default), DPM-Solver++ 2M and Euler.

The model predicts the flow ``v = noise - x0`` of the path ``x_s = (1 - s) x0 + s noise``,
so ``x0 = x - s v``. Each sampler walks a fixed grid of ``N`` noise levels
(plus a final 0) and shows the model the integer timestep ``int64(1000 s)``.

The grids, the order schedule and the floating-point operations follow the
official Wan2.1 schedulers, so trajectories agree with them (and with diffusers'
``UniPCMultistepScheduler`` / ``DPMSolverMultistepScheduler`` set up the same
way) to fp32 rounding. Per-step coefficients are computed on 0-dim float32 CPU
tensors, as the reference does, which keeps them bit-identical.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SOLVERS", "FlowSampler", "UniPCSampler", "DPMPP2MSampler", "EulerSampler",
    "StepDistillSampler", "make_sampler", "sampling_sigmas", "shift_sigmas",
    "get_sampling_sigmas", "distill_sigmas", "check_denoising_steps"
]

SOLVERS = ('unipc', 'dpm++', 'euler')


# --------------------------------------------------------------------------- grids


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Time shift ``s' = shift * s / (1 + (shift - 1) * s)`` (float64)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _check(solver: str, steps: int, shift: float) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown sample solver {solver!r}; "
                         f"choose one of: {', '.join(SOLVERS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"sampling steps must be an integer >= 1, got {steps!r}")
    if not shift > 0:  # also rejects NaN
        raise ValueError(f"shift must be > 0, got {shift!r}")


def sampling_sigmas(solver: str,
                    steps: int,
                    shift: float,
                    num_train_timesteps: int = 1000) -> Tensor:
    """The ``steps`` shifted noise levels of the official grid, float64 [steps].

    * ``unipc``: evenly spaced from the largest training sigma ``float32(1 - 1/T)``
      (0.999 for T = 1000) down to 0, end excluded.
    * ``dpm++`` and ``euler``: evenly spaced from 1.0 down to 0, end excluded.

    Both are then shifted. The values stay float64, as in the reference: the
    model's timesteps are ``int64(T * sigma)`` of exactly these numbers, while the
    solver arithmetic uses them rounded to float32 (``FlowSampler.sigmas``).
    """
    _check(solver, steps, shift)
    if solver == 'unipc':
        start = float(np.float32(1.0 - 1.0 / num_train_timesteps))
    else:
        start = 1.0
    grid = np.linspace(start, 0.0, steps + 1)[:-1]
    return torch.from_numpy(shift_sigmas(grid, shift))


def get_sampling_sigmas(sampling_steps: int, shift: float) -> np.ndarray:
    """Official helper: the DPM++ grid as a float64 numpy array."""
    return sampling_sigmas('dpm++', sampling_steps, shift).numpy()


def _log_snr(sigma: Tensor) -> Tensor:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma (0-dim float32)."""
    return torch.log(1 - sigma) - torch.log(sigma)


# --------------------------------------------------------------------------- samplers


class FlowSampler:
    """Base class: holds the grid and checks that steps come in order.

    Attributes:
        timesteps: int64 [N], what the model sees at each step (on ``device``).
        sigmas: float32 [N + 1] on the CPU, ending with 0.
    """

    def __init__(self,
                 sigmas: Tensor,
                 num_train_timesteps: int = 1000,
                 device: str | torch.device = 'cpu'):
        self.timesteps = (sigmas * num_train_timesteps).to(device=device, dtype=torch.int64)
        self.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).float()
        self.num_steps = len(sigmas)
        self.reset()

    def reset(self, start: int = 0) -> None:
        """Forget the history, ready for a new trajectory that begins at step ``start``.

        ``start > 0`` (video-to-video) enters the grid part-way: the history is
        empty there, so the first step taken is first order, exactly as a
        multistep scheduler of diffusers that first steps at ``timesteps[start]``.
        """
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) \
                or not 0 <= start < self.num_steps:
            raise ValueError(f"start step must be an integer in [0, {self.num_steps - 1}], "
                             f"got {start!r}")
        self.start = int(start)
        self._next = self.start

    def step(self, flow: Tensor, index: int, x: Tensor) -> Tensor:
        """Advance ``x`` from ``sigmas[index]`` to ``sigmas[index + 1]``.

        ``flow`` is the model's prediction at ``timesteps[index]``. Steps must be
        taken in order; ``index == 0`` starts a new trajectory, and so does
        ``index == self.start`` (the step given to :meth:`reset`).
        """
        if index == 0 or index == self.start:
            self.reset(index)
        if index != self._next or index >= self.num_steps:
            raise ValueError(f"step index {index} is out of order: expected {self._next} "
                             f"(of {self.num_steps} steps)")
        self._next += 1
        return self._update(flow, index, x)

    def _update(self, flow: Tensor, i: int, x: Tensor) -> Tensor:
        raise NotImplementedError


class EulerSampler(FlowSampler):
    """First-order flow Euler: ``x + (sigma_next - sigma) * v`` in float32."""

    def _update(self, flow: Tensor, i: int, x: Tensor) -> Tensor:
        dt = self.sigmas[i + 1] - self.sigmas[i]
        return (x.float() + dt * flow.float()).to(x.dtype)


class DPMPP2MSampler(FlowSampler):
    """DPM-Solver++ 2M (data prediction, midpoint), final sigma 0.

    The first and the last step are first order (DDIM-like); the others use the
    previous x0 prediction. The update runs in float32 and returns the dtype of
    ``x - sigma * flow``.
    """

    def reset(self, start: int = 0) -> None:
        super().reset(start)
        self._prev_x0: Tensor | None = None

    def _update(self, flow: Tensor, i: int, x: Tensor) -> Tensor:
        s = self.sigmas
        x0 = x - s[i] * flow
        sigma_t, sigma_s = s[i + 1], s[i]
        lam_s = _log_snr(sigma_s)
        h = _log_snr(sigma_t) - lam_s
        coef = (1 - sigma_t) * (torch.exp(-h) - 1.0)
        x_next = (sigma_t / sigma_s) * x.float() - coef * x0
        if self.start < i < self.num_steps - 1:
            r = (lam_s - _log_snr(s[i - 1])) / h
            d1 = (1.0 / r) * (x0 - self._prev_x0)
            x_next = x_next - 0.5 * coef * d1
        self._prev_x0 = x0
        return x_next.to(x0.dtype)


class UniPCSampler(FlowSampler):
    """UniPC, order 2, B(h) = e^h - 1 (bh2), x0 prediction, corrector on.

    Each step first corrects the incoming sample with the new x0 prediction
    (UniC, using the order of the previous predictor), then predicts the next
    sample (UniP). The predictor is first order at the first and last step and
    second order otherwise. No upcast: arithmetic runs in the sample's dtype.
    """

    def reset(self, start: int = 0) -> None:
        super().reset(start)
        self._x0s: list[Tensor] = []  # x0 predictions of the last two steps
        self._last_x: Tensor | None = None  # sample fed to the last predictor
        self._last_order = 1

    def _update(self, flow: Tensor, i: int, x: Tensor) -> Tensor:
        x0 = x - self.sigmas[i] * flow
        if i > self.start:
            x = self._correct(x0, i)
        order = 1 if i in (self.start, self.num_steps - 1) else 2
        x_next = self._predict(x, x0, i, order)
        self._x0s = (self._x0s + [x0])[-2:]
        self._last_x, self._last_order = x, order
        return x_next

    def _predict(self, x: Tensor, x0: Tensor, i: int, order: int) -> Tensor:
        """UniP from sigmas[i] to sigmas[i + 1]."""
        s = self.sigmas
        sigma_t, sigma_s = s[i + 1], s[i]
        alpha_t = 1 - sigma_t
        lam_s = _log_snr(sigma_s)
        h = _log_snr(sigma_t) - lam_s
        b_h = torch.expm1(-h)
        x_next = sigma_t / sigma_s * x - alpha_t * b_h * x0
        if order == 2:
            r = (_log_snr(s[i - 1]) - lam_s) / h
            d1 = (self._x0s[-1] - x0) / r
            x_next = x_next - alpha_t * b_h * (0.5 * d1)
        return x_next.to(x.dtype)

    def _correct(self, x0_new: Tensor, i: int) -> Tensor:
        """UniC: refine the predictor's sample at sigmas[i] using x0_new."""
        s, x, x0 = self.sigmas, self._last_x, self._x0s[-1]
        sigma_t, sigma_s = s[i], s[i - 1]
        alpha_t = 1 - sigma_t
        lam_s = _log_snr(sigma_s)
        h = _log_snr(sigma_t) - lam_s
        hh = -h
        b_h = torch.expm1(hh)
        x_corr = sigma_t / sigma_s * x - alpha_t * b_h * x0
        d1_t = x0_new - x0
        if self._last_order == 1:
            res = 0.5 * d1_t
        else:
            r = (_log_snr(s[i - 2]) - lam_s) / h
            d1 = (self._x0s[-2] - x0) / r
            # phi_2, phi_3 of the exponential integrator, scaled by B(h)
            phi2 = b_h / hh - 1
            phi3 = phi2 / hh - 0.5
            b = torch.stack([phi2 / b_h, phi3 * 2 / b_h])
            R = torch.stack([torch.ones(2), torch.stack([r, torch.ones(())])])
            rho = torch.linalg.solve(R, b).to(x.dtype)
            res = rho[0] * d1 + rho[1] * d1_t
        return (x_corr - alpha_t * b_h * res).to(x.dtype)


# --------------------------------------------------------------------------- few-step
def check_denoising_steps(denoising_steps, num_train_timesteps: int = 1000) -> list[int]:
    """A distilled schedule: training timesteps, strictly decreasing, in (0, T]."""
    try:
        steps = [int(t) for t in denoising_steps]
    except (TypeError, ValueError):
        raise ValueError(f"denoising steps must be integers, got {denoising_steps!r}") from None
    if not steps:
        raise ValueError("denoising steps must list at least one timestep, e.g. 1000,750,500,250")
    if any(not 0 < t <= num_train_timesteps for t in steps):
        raise ValueError(f"denoising steps must be in (0, {num_train_timesteps}], got "
                         f"{','.join(map(str, steps))}")
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"denoising steps must be strictly decreasing, got "
                         f"{','.join(map(str, steps))}")
    return steps


def distill_sigmas(denoising_steps, shift: float, num_train_timesteps: int = 1000) -> Tensor:
    """The noise levels of a distilled schedule, as LightX2V's ``WanStepDistillScheduler``
    (ModelTC/LightX2V at f8aee98b): ``linspace(1, 0, T + 1)[:-1]`` shifted, taken at the
    indices ``T - t`` of the listed training timesteps ``t`` (float64)."""
    steps = check_denoising_steps(denoising_steps, num_train_timesteps)
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    grid = shift_sigmas(np.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1], shift)
    return torch.from_numpy(grid[[num_train_timesteps - t for t in steps]])


class StepDistillSampler(FlowSampler):
    """Few-step sampling with a step-distilled model (LightX2V's 4-step LoRAs, CausVid...).

    The model sees the shifted timesteps as floats (``1000 * sigma``: 1000, 937.5,
    833.3, 625 for 1000,750,500,250 at shift 5). The update is LightX2V's current
    ``step_post``: ``x - sigma * v + sigma_next * v`` (deterministic; ``x0`` at the
    last step). With ``renoise`` (older LightX2V, CausVid/DMD samplers) the step
    predicts ``x0 = x - sigma * v`` and noises it again to ``sigma_next`` with fresh
    noise from ``generator`` (seeded by the run: reproducible).
    """

    def __init__(self, sigmas: Tensor, num_train_timesteps: int = 1000,
                 device: str | torch.device = 'cpu', renoise: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__(sigmas, num_train_timesteps, device)
        self.timesteps = (sigmas * num_train_timesteps).to(device=device, dtype=torch.float32)
        self.renoise = renoise
        if renoise and generator is None:
            raise ValueError("the re-noising sampler needs a seeded generator")
        self.generator = generator

    def _update(self, flow: Tensor, i: int, x: Tensor) -> Tensor:
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        v = flow.float()
        if not self.renoise:
            return (x.float() - sigma * v + sigma_next * v).to(x.dtype)
        x0 = x.float() - sigma * v
        if float(sigma_next) == 0.0:
            return x0.to(x.dtype)
        noise = torch.randn(x.shape, dtype=torch.float32, device=x.device,
                            generator=self.generator)
        return ((1 - sigma_next) * x0 + sigma_next * noise).to(x.dtype)


def make_sampler(solver: str,
                 steps: int,
                 shift: float,
                 num_train_timesteps: int = 1000,
                 device: str | torch.device = 'cpu') -> FlowSampler:
    """Build the sampler for ``--sample_solver`` (``unipc``, ``dpm++`` or ``euler``)."""
    sigmas = sampling_sigmas(solver, steps, shift, num_train_timesteps)
    cls = {'unipc': UniPCSampler, 'dpm++': DPMPP2MSampler, 'euler': EulerSampler}[solver]
    return cls(sigmas, num_train_timesteps, device)
