"""Few-step distilled sampling: LightX2V's schedule and update, one DiT call per step.

LightX2V's ``WanStepDistillScheduler`` (ModelTC/LightX2V at f8aee98b) takes a list of
training timesteps (``denoising_step_list``): the noise levels are ``linspace(1, 0, 1001)``
without its last entry, shifted, read at the indices ``1000 - t``; the model sees
``1000 * sigma`` as floats; ``step_post`` is ``x - sigma * v + sigma_next * v``. The formula
is written again here, independently of wan/utils/fm_solvers.py.
"""

import json

import numpy as np
import pytest
import torch

from conftest import fp32_config, rel_err
from wan.sampling import initial_noise
from wan.utils.fm_solvers import StepDistillSampler, distill_sigmas

STEPS = [1000, 750, 500, 250]


def lightx2v_sigmas(steps, shift):
    base = np.linspace(1.0, 0.0, 1001)[:-1]
    shifted = shift * base / (1 + (shift - 1) * base)
    return np.array([shifted[1000 - t] for t in steps])


def test_schedule_is_lightx2v_formula():
    for shift in (1.0, 3.0, 5.0, 8.0):
        sig = distill_sigmas(STEPS, shift)
        assert np.array_equal(sig.numpy(), lightx2v_sigmas(STEPS, shift))
        sampler = StepDistillSampler(sig)
        assert torch.equal(sampler.timesteps, (sig * 1000).float())
    ts = StepDistillSampler(distill_sigmas(STEPS, 5.0)).timesteps
    assert torch.allclose(ts, torch.tensor([1000.0, 937.5, 833.3333, 625.0]))


@pytest.mark.parametrize("bad", [[1000, 1000, 500], [250, 500], [1001, 500], [500, 0], []])
def test_bad_schedules(bad):
    with pytest.raises(ValueError, match="denoising steps"):
        distill_sigmas(bad, 5.0)


def count_calls(model):
    calls = []
    real = model.forward

    def spy(x, t, *a, **k):
        calls.append((len(x), t.flatten()[0].item()))
        return real(x, t, *a, **k)
    model.forward = spy
    return calls


def test_four_unguided_steps_four_calls_and_diffusers_euler(t2v_ckpt):
    """Equals diffusers' WanPipeline with FlowMatchEulerDiscreteScheduler given the same
    sigmas (its ``set_timesteps`` patched: the pipeline passes only the step count) and
    ``guidance_scale=1.0`` (no unconditional branch)."""
    from types import MethodType

    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    import wan
    from test_pipeline import diffusers_components

    pipe = wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu")
    pipe.set_schedule(STEPS)
    calls = count_calls(pipe.model)
    width, height, frames, seed, shift = 64, 48, 5, 11, 5.0
    ours = pipe.generate("a fox", size=(width, height), frame_num=frames, shift=shift,
                         guide_scale=1.0, seed=seed)
    assert len(calls) == 4 and all(n == 1 for n, _ in calls)  # one batch of one per step
    assert [round(t, 3) for _, t in calls] == [1000.0, 937.5, 833.333, 625.0]

    parts = diffusers_components(t2v_ckpt, shift, "t2v")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    original = scheduler.set_timesteps

    def set_distilled(self, num_inference_steps=None, device=None, **kwargs):
        return original(sigmas=list(lightx2v_sigmas(STEPS, shift)), device=device)
    scheduler.set_timesteps = MethodType(set_distilled, scheduler)
    parts["scheduler"] = scheduler
    ref = WanPipeline(**parts)
    noise = initial_noise((16, 2, height // 8, width // 8), seed, torch.device("cpu"))
    with torch.no_grad():
        out = ref(prompt="a fox", height=height, width=width, num_frames=frames,
                  num_inference_steps=4, guidance_scale=1.0, latents=noise[None],
                  output_type="pt", max_sequence_length=512).frames[0]
    err = rel_err(ours, out.permute(1, 0, 2, 3) * 2 - 1)
    print(f"4-step distilled schedule vs diffusers FlowMatchEulerDiscreteScheduler: {err:.2e}")
    assert err <= 1e-4
    pipe.set_schedule(None)  # back to the solver grid
    calls.clear()
    pipe.generate("a fox", size=(32, 32), frame_num=1, sampling_steps=3, seed=1)
    assert len(calls) == 3 and calls[0][0] == 2  # batched CFG again


def test_renoise_variant_equals_independent_implementation(t2v_ckpt, monkeypatch):
    import wan

    pipe = wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu")
    flows = []
    real = pipe.model.forward

    def spy(x, t, *a, **k):
        out = real(x, t, *a, **k)
        flows.append((x[0].clone(), out[0].clone()))
        return out
    monkeypatch.setattr(pipe.model, "forward", spy)
    pipe.set_schedule(STEPS, renoise=True)
    shape, seed = (16, 1, 4, 4), 21
    latent = pipe.denoise(*_branches(pipe, shape, seed), sample_solver="unipc",
                          sampling_steps=4, shift=5.0, guide_scale=1.0, offload_model=False)
    # independent: x0 = x - s v, then (1 - s') x0 + s' eps with eps from the run's generator
    sig = lightx2v_sigmas(STEPS, 5.0).astype(np.float32).tolist() + [0.0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    for i, (x_in, v) in enumerate(flows):
        assert torch.equal(x_in, x)
        x0 = x - sig[i] * v
        x = x0 if sig[i + 1] == 0 else (1 - sig[i + 1]) * x0 + sig[i + 1] * torch.randn(
            shape, generator=g)
    assert rel_err(latent, x) <= 1e-6 and len(flows) == 4


def _branches(pipe, shape, seed):
    from wan.sampling import Conditioning

    noise = pipe.prepare_noise(shape, seed)
    ctx, null = pipe.encode_text(["a fox", ""], offload_model=False)
    return noise, Conditioning(ctx), Conditioning(null), shape[1] * shape[2] * shape[3] // 4


def test_a14b_switch_and_boundary_step(t2v_a14b_ckpt):
    import wan

    pipe = wan.WanT2V(fp32_config("t2v-A14B"), t2v_a14b_ckpt, device_id="cpu")
    pipe.set_schedule(STEPS)
    pipe.generate("p", size=(32, 32), frame_num=1, shift=5.0, guide_scale=1.0, seed=1)
    assert pipe.last_experts == ["high", "high", "low", "low"]  # 1000, 937.5 >= 875
    pipe.set_schedule(STEPS, boundary_step=1)
    pipe.generate("p", size=(32, 32), frame_num=1, shift=5.0, guide_scale=1.0, seed=1)
    assert pipe.last_experts == ["high", "low", "low", "low"]


def test_cli_fewstep_t2v_and_a14b(t2v_ckpt, t2v_a14b_ckpt, tmp_path, capsys):
    from test_generate import frames, run

    out = tmp_path / "fast.mp4"
    common = ["--size", "832*480", "--frame_num", 1, "--sample_guide_scale", 1,
              "--denoising_steps", "1000,750,500,250", "--base_seed", 3]
    assert run("--task", "t2v-1.3B", "--ckpt_dir", t2v_ckpt, *common, "--save_file", out) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["denoising_steps"] == STEPS and side["sample_steps"] == 4
    assert side["sample_guide_scale"] == 1.0 and side["denoising_renoise"] is False
    again = tmp_path / "again.mp4"
    assert run("--replay", out.with_suffix(".json"), "--save_file", again) == 0
    assert np.array_equal(frames(again), frames(out))
    moe = tmp_path / "moe.mp4"
    assert run("--task", "t2v-A14B", "--ckpt_dir", t2v_a14b_ckpt, *common, "--boundary_step", 2,
               "--denoising_renoise", "--save_file", moe) == 0
    side = json.loads(moe.with_suffix(".json").read_text())
    assert side["boundary_step"] == 2 and side["denoising_renoise"] is True
    capsys.readouterr()
    bad = [
        (["--denoising_steps", "1000,1000,500"], "strictly decreasing"),
        (["--denoising_steps", "1200,500"], "in (0, 1000]"),
        (["--denoising_steps", "a,b"], "must be integers"),
        (["--boundary_step", "2"], "apply to --denoising_steps"),
        (["--denoising_steps", "1000,500", "--boundary_step", "1"], "two-expert Wan2.2 A14B"),
    ]
    for extra, message in bad:
        assert run("--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", t2v_ckpt, *extra,
                   "--save_file", tmp_path / "x.mp4") == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, err
        assert not (tmp_path / "x.mp4").exists()
