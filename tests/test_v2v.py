"""Video-to-video with the T2V models: the start step, WanT2V.generate(src_video, strength),
parity with diffusers' WanVideoToVideoPipeline, and reading source clips."""

import hashlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import rel_err
from test_pipeline import diffusers_pipeline, fp32_config
from test_samplers import diffusers_dpmpp, diffusers_unipc, fake_flow, start_latent
from wan.sampling import initial_noise, v2v_start_step
from wan.utils.fm_solvers import make_sampler
from wan.utils.io import default_v2v_frames, fit_video, read_video, save_video, sha256_file

W, H = 64, 48


@pytest.fixture(scope="module")
def pipe(t2v_ckpt):
    import wan
    return wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu")


def source_frames(n=9, h=H, w=W, seed=0) -> np.ndarray:
    """A moving smooth pattern plus a little noise, uint8 [n, h, w, 3]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    out = []
    for f in range(n):
        r = 0.5 + 0.5 * np.sin(xx / 7 + f / 2)
        g = 0.5 + 0.5 * np.cos(yy / 5 - f / 3)
        b = (xx + yy + 4 * f) / (w + h + 4 * n)
        img = np.stack([r, g, b], -1) * 230 + rng.uniform(0, 25, (h, w, 3))
        out.append(img.clip(0, 255).astype(np.uint8))
    return np.stack(out)


# ---------------------------------------------------------------------- the start step
def test_v2v_start_step_rule():
    assert v2v_start_step(50, 1.0) == 0
    assert v2v_start_step(50, 0.8) == 10
    assert v2v_start_step(50, 0.5) == 25
    assert v2v_start_step(10, 0.55) == 5      # int(5.5) = 5 steps run
    assert v2v_start_step(3, 0.5) == 2        # int(1.5) = 1 step runs
    assert v2v_start_step(50, 0.02) == 49
    for bad in (0, 0.0, -0.1, 1.01, 2, math.nan, True, "0.5", None):
        with pytest.raises(ValueError, match="strength"):
            v2v_start_step(50, bad)
    with pytest.raises(ValueError, match="runs no step of 50"):
        v2v_start_step(50, 0.01)
    with pytest.raises(ValueError, match="steps must be an integer"):
        v2v_start_step(0, 0.5)


def run_ours_from(solver, steps, shift, start, x):
    sampler = make_sampler(solver, steps, shift)
    sampler.reset(start)
    states = []
    for i in range(start, steps):
        x = sampler.step(fake_flow(x, sampler.timesteps[i], i), i, x)
        states.append(x)
    return states


@pytest.mark.parametrize("solver,make_ref", [('unipc', diffusers_unipc),
                                             ('dpm++', diffusers_dpmpp)])
@pytest.mark.parametrize("begin_index", [False, True])
def test_sampler_entered_mid_grid_matches_diffusers(solver, make_ref, begin_index):
    """From step k the history is empty (first-order step, no corrector, lower order at the end).

    diffusers' WanVideoToVideoPipeline steps ``timesteps[k:]`` without
    ``set_begin_index`` (the scheduler finds k from the timestep); both ways agree.
    """
    worst = 0.0
    for steps, shift in [(2, 5.0), (3, 5.0), (5, 3.0), (6, 5.0), (10, 5.0), (50, 5.0)]:
        for start in sorted({1, 2, steps // 2, steps - 2, steps - 1} & set(range(1, steps))):
            x = start_latent(steps)
            ours = run_ours_from(solver, steps, shift, start, x)
            ref = make_ref(steps, shift)
            if begin_index:
                ref.set_begin_index(start)
            states, y = [], x
            for i, t in enumerate(ref.timesteps[start:], start):
                y = ref.step(fake_flow(y, t, i), t, y, return_dict=False)[0]
                states.append(y)
            d = max((p - q).abs().max().item() for p, q in zip(ours, states, strict=True))
            assert d <= 1e-6, f"{solver} steps={steps} start={start}: {d}"
            worst = max(worst, d)
    print(f"{solver} entered mid-grid: worst max abs diff vs diffusers {worst:.3g}")


def test_sampler_restart_and_bad_start():
    x = start_latent(6)
    a = run_ours_from('unipc', 6, 5.0, 3, x)
    sampler = make_sampler('unipc', 6, 5.0)
    sampler.reset(3)
    y = x
    for _ in range(2):  # stepping index == start again restarts the same trajectory
        b = []
        y = x
        for i in range(3, 6):
            y = sampler.step(fake_flow(y, sampler.timesteps[i], i), i, y)
            b.append(y)
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="out of order"):
        sampler.reset(3)
        sampler.step(x, 4, x)
    for bad in (-1, 6, 2.0):
        with pytest.raises(ValueError, match="start step"):
            sampler.reset(bad)


def test_sample_start_step_arguments():
    """sample(): x_k = (1 - sigma_k) z + sigma_k noise, then the remaining steps only."""
    from wan.sampling import Conditioning, sample

    seen = []

    def model(xs, t, context, seq_len):
        seen.append((xs[0].clone(), int(t[0])))
        return [torch.zeros_like(x) for x in xs]

    noise, z = torch.randn(16, 1, 2, 2), torch.randn(16, 1, 2, 2)
    cond = uncond = Conditioning(torch.zeros(3, 8))
    kw = dict(seq_len=1, steps=5, progress=False)
    sample(model, noise, cond, uncond, start_step=3, init_latent=z, **kw)
    sampler = make_sampler('unipc', 5, 5.0)
    s3 = sampler.sigmas[3]
    assert torch.equal(seen[0][0], (1 - s3) * z + s3 * noise)
    assert [t for _, t in seen] == sampler.timesteps[3:].tolist()
    with pytest.raises(ValueError, match="only used with start_step > 0"):
        sample(model, noise, cond, uncond, init_latent=z, **kw)
    with pytest.raises(ValueError, match="needs an init_latent"):
        sample(model, noise, cond, uncond, start_step=2, **kw)
    with pytest.raises(ValueError, match="needs an init_latent"):
        sample(model, noise, cond, uncond, start_step=2, init_latent=z[:, :, :1], **kw)
    with pytest.raises(ValueError, match="start step must be an integer in \\[0, 4\\]"):
        sample(model, noise, cond, uncond, start_step=5, init_latent=z, **kw)


# ---------------------------------------------------------------------- WanT2V
def count_calls(monkeypatch, obj, name):
    calls = []
    real = getattr(obj, name)

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, spy)
    return calls


def test_strength_1_is_plain_t2v(pipe, monkeypatch):
    kw = dict(size=(W, H), frame_num=5, sampling_steps=3, seed=21, n_prompt="blurry")
    plain = pipe.generate("a lighthouse at night", **kw)
    encodes = count_calls(monkeypatch, pipe.vae, "encode")
    src = fit_video(source_frames(9), W, H)
    v2v = pipe.generate("a lighthouse at night", src_video=src, strength=1.0, **kw)
    assert torch.equal(v2v, plain)
    assert encodes == []
    # strength < 1 does encode the source (its first frame_num frames) and changes the result
    partial = pipe.generate("a lighthouse at night", src_video=src, strength=0.7, **kw)
    assert len(encodes) == 1 and encodes[0][0][0][0].shape == (3, 5, H, W)
    assert torch.equal(encodes[0][0][0][0], src[:, :5])
    assert not torch.equal(partial, plain)


def test_strength_half_runs_half_the_steps(pipe, monkeypatch):
    calls = count_calls(monkeypatch, pipe.model, "forward")
    steps = []
    video = pipe.generate("x", size=(32, 32), frame_num=1, sampling_steps=50, seed=2,
                          src_video=torch.zeros(3, 1, 32, 32), strength=0.5,
                          on_step=lambda i, n: steps.append((i, n)))
    assert video.shape == (3, 1, 32, 32)
    assert len(calls) == 25
    assert all(len(args[0]) == 2 for args, _ in calls)  # cond + uncond in one batch
    ts = [int(kwargs["t"][0]) for _, kwargs in calls]
    assert ts == make_sampler('unipc', 50, 5.0).timesteps[25:].tolist()
    assert steps == [(i, 25) for i in range(1, 26)]


@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_v2v_matches_diffusers_video_to_video_pipeline(pipe, t2v_ckpt, strength):
    """WanT2V(src_video, strength) against diffusers' WanVideoToVideoPipeline.

    Same files, same official UniPC grid (its scheduler's ``set_timesteps``,
    which ``retrieve_timesteps`` calls with the step count, is patched to install
    it), same prompts. Differences and how they are bridged:

    * source: diffusers takes PIL frames and runs its VideoProcessor (resize to
      height x width, ``2 * (x / 255) - 1``); the frames are given at the output
      size, so PIL's resize is a copy and its tensor equals ``fit_video``'s
      exactly (asserted). Only the first ``frame_num`` frames are given to it.
    * noise: diffusers draws it with ``randn_tensor`` from ``generator``; a CPU
      generator seeded with our seed yields exactly ``initial_noise`` (asserted).
      (Passing ``latents=`` would skip the source altogether in diffusers.)
    * encoding: diffusers takes ``latent_dist.mode()`` (the mean), normalised as
      ``(mean - latents_mean) / latents_std``: the official encode; no sampling.
    * start: diffusers mixes ``add_noise`` = ``(1 - sigma_k) z + sigma_k noise`` at
      ``timesteps[k]``, k = steps - int(steps * strength); so do we.
    * not compared: strength 1.0. There WanT2V skips the source (plain T2V, see
      ``test_strength_1_is_plain_t2v``) while diffusers still starts from
      ``sigma_0 noise + (1 - sigma_0) z`` with ``sigma_0 = 0.9998`` (shift 5).
    """
    from diffusers import WanVideoToVideoPipeline
    from diffusers.utils.torch_utils import randn_tensor

    prompt, negative = "A paper boat drifts down a rainy street.", "blurry, static"
    steps, shift, guide, seed, frames = 6, 5.0, 5.0, 4321, 5
    raw = source_frames(9)
    src = fit_video(raw, W, H)
    ours = pipe.generate(prompt, size=(W, H), frame_num=frames, shift=shift,
                         sampling_steps=steps, guide_scale=guide, n_prompt=negative, seed=seed,
                         src_video=src, strength=strength)

    t2v = diffusers_pipeline(t2v_ckpt, steps, shift)
    ref = WanVideoToVideoPipeline(tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder,
                                  transformer=t2v.transformer, vae=t2v.vae,
                                  scheduler=t2v.scheduler)
    pil = [Image.fromarray(f) for f in raw[:frames]]
    assert torch.equal(ref.video_processor.preprocess_video(pil, height=H, width=W)[0],
                       src[:, :frames])
    shape = (1, 16, (frames - 1) // 4 + 1, H // 8, W // 8)
    assert torch.equal(randn_tensor(shape, generator=torch.Generator().manual_seed(seed))[0],
                       initial_noise(shape[1:], seed, torch.device("cpu")))
    with torch.no_grad():
        out = ref(video=pil, prompt=prompt, negative_prompt=negative, height=H, width=W,
                  num_inference_steps=steps, guidance_scale=guide, strength=strength,
                  generator=torch.Generator().manual_seed(seed), output_type="pt",
                  max_sequence_length=512).frames[0]
    assert ref.scheduler.step_index == steps  # it ran timesteps[k:] to the end
    ref_video = out.permute(1, 0, 2, 3) * 2 - 1  # [F, C, H, W] in [0, 1] -> [C, F, H, W]
    err = rel_err(ours, ref_video)
    print(f"v2v strength {strength} ({steps} steps, start {v2v_start_step(steps, strength)}): "
          f"relative error vs diffusers WanVideoToVideoPipeline: {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("src,kw,match", [
    (torch.zeros(3, 3, 32, 32), dict(frame_num=5), "3 frames, fewer than frame_num=5"),
    (torch.zeros(3, 5, 32, 48), dict(frame_num=5), "is 48\\*32 but the output size is 32\\*32"),
    (torch.zeros(5, 32, 32), dict(frame_num=5), "\\[3, F, H, W\\]"),
    (torch.zeros(3, 5, 32, 32, dtype=torch.uint8), dict(frame_num=5), "float tensor"),
    (np.zeros((3, 5, 32, 32), np.float32), dict(frame_num=5), "float tensor.*ndarray"),
    (torch.full((3, 5, 32, 32), 255.0), dict(frame_num=5), "in \\[-1, 1\\]"),
    (torch.zeros(3, 5, 32, 32), dict(frame_num=5, strength=0.0), "strength must be in"),
    (torch.zeros(3, 5, 32, 32), dict(frame_num=5, strength=1.5), "strength must be in"),
    (torch.zeros(3, 5, 32, 32), dict(frame_num=5, strength=math.nan), "strength must be in"),
    (torch.zeros(3, 5, 32, 32), dict(frame_num=5, strength=0.1), "runs no step of 2"),
])
def test_v2v_bad_arguments(pipe, monkeypatch, src, kw, match):
    calls = count_calls(monkeypatch, pipe.model, "forward")
    with pytest.raises(ValueError, match=match):
        pipe.generate("x", size=(32, 32), sampling_steps=2, seed=1, src_video=src, **kw)
    assert calls == []  # rejected before any work


# ---------------------------------------------------------------------- source clips
def test_read_and_fit_a_saved_clip(tmp_path):
    raw = source_frames(9, 32, 48)
    video = torch.from_numpy(raw).permute(3, 0, 1, 2).float().div(255).mul(2).sub(1)
    path = save_video(video, tmp_path / "clip.mp4", fps=12)
    frames, fps = read_video(path)
    assert frames.dtype == torch.uint8 and frames.shape == (9, 32, 48, 3) and fps == 12.0
    assert (frames.float() - torch.from_numpy(raw).float()).abs().mean() < 12  # lossy H.264
    assert read_video(path, max_frames=4)[0].shape == (4, 32, 48, 3)
    assert torch.equal(read_video(path, max_frames=4)[0], frames[:4])

    same = fit_video(frames, 48, 32)  # no resampling at the output size
    assert same.dtype == torch.float32 and same.shape == (3, 9, 32, 48)
    assert torch.equal(same, frames.permute(3, 0, 1, 2).float() / 255 * 2 - 1)
    assert fit_video(frames.numpy(), 32, 32).shape == (3, 9, 32, 32)     # crop the sides
    assert fit_video(frames, 64, 64).shape == (3, 9, 64, 64)             # upscale, crop
    assert fit_video(frames, 96, 32).shape == (3, 9, 32, 96)             # crop top/bottom
    big = fit_video(frames, 96, 64)                                      # exact 2x
    assert big.min() >= -1 and big.max() <= 1
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_video_centre_crop_keeps_aspect():
    frames = torch.zeros(1, 30, 90, 3, dtype=torch.uint8)  # red | green | blue thirds
    frames[:, :, :30, 0] = frames[:, :, 30:60, 1] = frames[:, :, 60:, 2] = 255
    out = fit_video(frames, 16, 16)  # 3:1 -> 1:1 keeps the middle third: green
    assert out.shape == (3, 1, 16, 16)
    assert torch.allclose(out[:, 0, 4:12, 6:10].mean((1, 2)), torch.tensor([-1.0, 1.0, -1.0]),
                          atol=1e-3)
    tall = fit_video(frames.transpose(1, 2).contiguous(), 32, 16)  # 1:3 -> 2:1: scale, crop
    assert tall.shape == (3, 1, 16, 32)
    with pytest.raises(ValueError, match="uint8"):
        fit_video(frames.float(), 16, 16)


def test_read_video_errors(tmp_path):
    bad = tmp_path / "not_a_video.mp4"
    bad.write_bytes(b"this is not an mp4 file")
    with pytest.raises(ValueError, match="not_a_video.mp4") as e:
        read_video(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")


def test_default_v2v_frames():
    assert [default_v2v_frames(n) for n in (1, 4, 5, 8, 9, 80, 81, 82, 500)] == \
        [1, 1, 5, 5, 9, 77, 81, 81, 81]
    with pytest.raises(ValueError, match="at least 1 frame"):
        default_v2v_frames(0)
