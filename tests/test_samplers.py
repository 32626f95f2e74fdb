"""Samplers of wan.utils.fm_solvers against diffusers' reference schedulers.

diffusers is a test-only dependency: the runtime package never imports it.
The official grids are rebuilt here from their formulas (independently of the
code under test) and handed to diffusers; whole trajectories must agree to
1e-6 in fp32.
"""

import itertools

import numpy as np
import pytest
import torch

from wan.utils.fm_solvers import (
    SOLVERS,
    get_sampling_sigmas,
    make_sampler,
    sampling_sigmas,
)

diffusers = pytest.importorskip("diffusers")

STEPS = [1, 2, 3, 5, 10, 50]
SHIFTS = [1.0, 3.0, 5.0, 8.0]
TOL = 1e-6


def official_grid(solver: str, steps: int, shift: float) -> np.ndarray:
    """The official shifted grid (float64), written out from the reference."""
    if solver == 'unipc':
        # FlowUniPCMultistepScheduler(shift=1): sigma_max is its largest
        # training sigma, stored in float32; then set_timesteps(N, shift=shift).
        alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
        train = torch.from_numpy(1.0 - alphas).to(torch.float32)
        grid = np.linspace(train[0].item(), train[-1].item(), steps + 1)[:-1]
    else:  # get_sampling_sigmas
        grid = np.linspace(1, 0, steps + 1)[:steps]
    return shift * grid / (1 + (shift - 1) * grid)


def fake_flow(x: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    """Deterministic stand-in for the DiT: smooth in x and t plus seeded noise."""
    g = torch.Generator().manual_seed(100 + k)
    return 0.8 * torch.tanh(x) * (t.float() / 1000) + torch.randn(x.shape, generator=g)


def start_latent(steps: int) -> torch.Tensor:
    return torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(steps))


def run_ours(solver: str, steps: int, shift: float, x: torch.Tensor):
    sampler = make_sampler(solver, steps, shift)
    states = []
    for i, t in enumerate(sampler.timesteps):
        x = sampler.step(fake_flow(x, t, i), i, x)
        states.append(x)
    return sampler, states


def run_reference(scheduler, x: torch.Tensor):
    scheduler.set_begin_index(0)
    states = []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(fake_flow(x, t, i), t, x, return_dict=False)[0]
        states.append(x)
    return states


def max_diff(a, b) -> float:
    assert len(a) == len(b)
    return max((p - q).abs().max().item() for p, q in zip(a, b))


def diffusers_unipc(steps: int, shift: float):
    s = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
        predict_x0=True, solver_type="bh2", lower_order_final=True,
        final_sigmas_type="zero", use_flow_sigmas=True, flow_shift=1.0)
    s.set_timesteps(sigmas=official_grid('unipc', steps, shift))
    return s


def diffusers_dpmpp(steps: int, shift: float):
    s = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
        algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero", use_flow_sigmas=True, flow_shift=1.0)
    s.set_timesteps(steps)  # takes no sigmas here: install the official grid by hand
    grid = official_grid('dpm++', steps, shift)
    s.sigmas = torch.from_numpy(np.append(grid, 0.0).astype(np.float32))
    s.timesteps = torch.from_numpy(grid * 1000).to(torch.int64)
    return s


@pytest.mark.parametrize("solver,make_ref", [('unipc', diffusers_unipc),
                                             ('dpm++', diffusers_dpmpp)])
def test_matches_diffusers(solver, make_ref):
    worst = 0.0
    for steps, shift in itertools.product(STEPS, SHIFTS):
        x = start_latent(steps)
        ref = make_ref(steps, shift)
        sampler, ours = run_ours(solver, steps, shift, x)
        assert torch.equal(sampler.timesteps, ref.timesteps), (steps, shift)
        assert torch.equal(sampler.sigmas, ref.sigmas), (steps, shift)
        d = max_diff(ours, run_reference(ref, x))
        assert d <= TOL, f"{solver} steps={steps} shift={shift}: max diff {d}"
        worst = max(worst, d)
    print(f"{solver}: worst max abs diff vs diffusers {worst:.3g}")


def test_euler_matches_hand_written_update():
    steps, shift = 8, 5.0
    x = start_latent(steps)
    sampler, ours = run_ours('euler', steps, shift, x)
    sig = torch.from_numpy(official_grid('dpm++', steps, shift)).float().tolist() + [0.0]
    ref = []
    for i in range(steps):
        t = torch.tensor(int(official_grid('dpm++', steps, shift)[i] * 1000))
        x = x + (sig[i + 1] - sig[i]) * fake_flow(x, t, i)
        ref.append(x)
    assert max_diff(ours, ref) <= TOL


def test_grids():
    # the default: UniPC, 50 steps, shift 5
    uni = make_sampler('unipc', 50, 5.0)
    assert uni.timesteps.dtype == torch.int64 and uni.timesteps.shape == (50,)
    assert uni.timesteps[0].item() == 999 and uni.timesteps[-1].item() == 92
    assert uni.sigmas.dtype == torch.float32 and uni.sigmas.shape == (51,)
    assert uni.sigmas[-1].item() == 0.0
    assert make_sampler('unipc', 5, 5.0).timesteps.tolist() == [999, 952, 882, 768, 555]

    dpm = make_sampler('dpm++', 5, 5.0)
    assert dpm.sigmas[0].item() == 1.0 and dpm.timesteps[0].item() == 1000
    assert dpm.timesteps.tolist() == [1000, 952, 882, 769, 555]
    # int64(1000 * sigma) truncates: 0.4 * 1000 is 399.99999999999994 in float64
    assert make_sampler('dpm++', 10, 1.0).timesteps.tolist() == [
        1000, 900, 800, 700, 600, 500, 399, 299, 199, 99]

    for solver, steps, shift in itertools.product(SOLVERS, [1, 7, 50], [1.0, 5.0]):
        sig = sampling_sigmas(solver, steps, shift)
        grid = official_grid('unipc' if solver == 'unipc' else 'dpm++', steps, shift)
        assert sig.dtype == torch.float64 and np.array_equal(sig.numpy(), grid)
        s = make_sampler(solver, steps, shift)
        assert s.timesteps.tolist() == (grid * 1000).astype(np.int64).tolist()
        assert torch.equal(s.sigmas, torch.from_numpy(np.append(grid, 0).astype(np.float32)))

    assert np.array_equal(get_sampling_sigmas(20, 3.0), official_grid('dpm++', 20, 3.0))


@pytest.mark.parametrize("solver", SOLVERS)
def test_fresh_trajectory_and_order(solver):
    x = start_latent(4)
    sampler, first = run_ours(solver, 4, 5.0, x)
    again = []  # index 0 restarts the same sampler
    y = x
    for i, t in enumerate(sampler.timesteps):
        y = sampler.step(fake_flow(y, t, i), i, y)
        again.append(y)
    assert max_diff(first, again) == 0.0
    sampler.reset()
    with pytest.raises(ValueError, match="out of order"):
        sampler.step(x, 1, x)


def test_errors():
    with pytest.raises(ValueError, match=r"unknown sample solver 'ddim'.*unipc, dpm\+\+, euler"):
        make_sampler('ddim', 10, 5.0)
    with pytest.raises(ValueError, match="sampling steps must be an integer >= 1, got 0"):
        make_sampler('unipc', 0, 5.0)
    with pytest.raises(ValueError, match="shift must be > 0, got -1.0"):
        make_sampler('dpm++', 10, -1.0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        sampling_sigmas('euler', 10, 0.0)
