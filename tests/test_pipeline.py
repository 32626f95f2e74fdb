"""End-to-end: WanT2V / WanI2V against diffusers' WanPipeline and the official recipe."""

from types import MethodType

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fp32_config, rel_err
from wan.configs import WAN_CONFIGS
from wan.image2video import first_frame_mask, i2v_latent_size
from wan.sampling import initial_noise




def diffusers_pipeline(ckpt, steps, shift):
    """diffusers' WanPipeline assembled from the same official-format files."""
    from diffusers import WanPipeline

    return WanPipeline(**diffusers_components(ckpt, shift, "t2v"))


def diffusers_components(ckpt, shift, model_type):
    """Tokenizer, umT5, DiT, VAE and the official UniPC grid for a diffusers Wan pipeline
    (``model_type`` None: no transformer, for the two-expert folders)."""
    from diffusers import UniPCMultistepScheduler
    from transformers import AutoTokenizer

    from test_model import diffusers_model
    from test_samplers import official_grid
    from test_t5 import hf_reference, to_hf_names
    from test_vae import diffusers_vae

    cfg = WAN_CONFIGS["t2v-1.3B"]
    t5_sd = torch.load(ckpt / cfg.t5_checkpoint, weights_only=True)
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction",
        predict_x0=True, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero",
        use_flow_sigmas=True, flow_shift=1.0)
    original = scheduler.set_timesteps

    def set_official_grid(self, num_inference_steps=None, device=None, **kwargs):
        # WanPipeline passes only the step count; install the official shifted grid instead.
        return original(sigmas=official_grid("unipc", num_inference_steps, shift), device=device)

    scheduler.set_timesteps = MethodType(set_official_grid, scheduler)
    return dict(tokenizer=AutoTokenizer.from_pretrained(ckpt / cfg.t5_tokenizer),
                text_encoder=hf_reference(to_hf_names(t5_sd)),
                transformer=diffusers_model(ckpt, model_type) if model_type else None,
                vae=diffusers_vae(ckpt / cfg.vae_checkpoint, 8), scheduler=scheduler)


def test_t2v_matches_diffusers_wan_pipeline(t2v_ckpt):
    import wan

    prompt, negative = "A red fox runs across a snowy field at dawn.", "blurry, static"
    width, height, frames, steps, shift, guide, seed = 64, 48, 5, 4, 5.0, 5.0, 1234
    pipe = wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu")
    ours = pipe.generate(prompt, size=(width, height), frame_num=frames, shift=shift,
                         sampling_steps=steps, guide_scale=guide, n_prompt=negative, seed=seed)
    assert ours.shape == (3, frames, height, width) and pipe.last_seed == seed

    noise = initial_noise((16, 2, height // 8, width // 8), seed, torch.device("cpu"))
    ref = diffusers_pipeline(t2v_ckpt, steps, shift)
    with torch.no_grad():
        out = ref(prompt=prompt, negative_prompt=negative, height=height, width=width,
                  num_frames=frames, num_inference_steps=steps, guidance_scale=guide,
                  latents=noise[None], output_type="pt", max_sequence_length=512).frames[0]
    ref_video = out.permute(1, 0, 2, 3) * 2 - 1  # [F, C, H, W] in [0, 1] -> [C, F, H, W]
    err = rel_err(ours, ref_video)
    print(f"t2v end-to-end relative error vs diffusers WanPipeline: {err:.2e}")
    assert err <= 1e-4


def test_t2v_same_seed_same_video_and_t2i(t2v_ckpt):
    import wan

    pipe = wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu")
    kw = dict(size=(48, 32), frame_num=1, sampling_steps=2)
    a = pipe.generate("a cat", seed=7, **kw)
    b = pipe.generate("a cat", seed=7, **kw)
    c = pipe.generate("a cat", seed=8, **kw)
    assert a.shape == (3, 1, 32, 48)
    assert torch.equal(a, b) and not torch.equal(a, c)
    pipe.generate("a cat", seed=-1, **kw)
    assert isinstance(pipe.last_seed, int) and pipe.last_seed >= 0


def test_t2v_bf16_close_to_fp32(t2v_ckpt):
    import wan

    kw = dict(size=(48, 32), frame_num=5, sampling_steps=3, seed=3)
    full = wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu").generate("a boat", **kw)
    mixed = wan.WanT2V(WAN_CONFIGS["t2v-1.3B"], t2v_ckpt, device_id="cpu").generate("a boat", **kw)
    assert rel_err(mixed, full) < 5e-2


@pytest.mark.parametrize("bad,match", [
    (dict(frame_num=4), "4n\\+1"), (dict(sampling_steps=0), "at least 1"),
    (dict(guide_scale=-1.0), ">= 0"), (dict(sample_solver="ddim"), "unknown sample_solver"),
    (dict(size=(50, 32)), "multiples of 16"), (dict(shift=0.0), "shift must be > 0")])
def test_t2v_bad_arguments(t2v_ckpt, bad, match):
    import wan

    pipe = wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu")
    kw = dict(size=(48, 32), frame_num=1, sampling_steps=1)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        pipe.generate("x", **kw)


# ---------------------------------------------------------------------- i2v
def test_i2v_latent_size_follows_aspect_ratio():
    stride, patch = (4, 8, 8), (1, 2, 2)
    assert i2v_latent_size(720, 1280, 832 * 480, stride, patch) == (58, 104)
    assert i2v_latent_size(1280, 720, 832 * 480, stride, patch) == (104, 58)
    assert i2v_latent_size(1000, 1000, 1280 * 720, stride, patch) == (120, 120)


@pytest.mark.parametrize("frames", [1, 5, 9, 81])
def test_first_frame_mask_matches_official_recipe(frames):
    h, w = 3, 5
    msk = torch.ones(1, frames, h, w)
    msk[:, 1:] = 0
    msk = torch.cat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, h, w).transpose(1, 2)[0]
    assert torch.equal(first_frame_mask(frames, h, w, torch.device("cpu")), msk)


def test_i2v_generates_with_image_aspect(i2v_ckpt):
    import wan

    pipe = wan.WanI2V(fp32_config("i2v-14B"), i2v_ckpt, device_id="cpu")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))
    video = pipe.generate("a cat surfing", img, max_area=64 * 48, frame_num=5, sampling_steps=2,
                          seed=5)
    lat_h, lat_w = i2v_latent_size(60, 100, 64 * 48, (4, 8, 8), (1, 2, 2))
    assert video.shape == (3, 5, lat_h * 8, lat_w * 8)
    assert lat_w > lat_h  # landscape in, landscape out
    again = pipe.generate("a cat surfing", img, max_area=64 * 48, frame_num=5, sampling_steps=2,
                          seed=5)
    assert torch.equal(video, again)
    with pytest.raises(ValueError, match="3 channels"):
        pipe.generate("x", torch.zeros(4, 32, 32), max_area=64 * 48, frame_num=1, sampling_steps=1)


def test_i2v_conditioning_reaches_the_model(i2v_ckpt, monkeypatch):
    """y = mask + VAE latents of [resized image, zeros]; clip features of the image (official)."""
    import wan

    pipe = wan.WanI2V(fp32_config("i2v-14B"), i2v_ckpt, device_id="cpu")
    seen = {}
    real_forward = pipe.model.forward

    def spy(x, t, context, seq_len, clip_fea=None, y=None):
        seen.update(y=y, clip_fea=clip_fea, context=context, seq_len=seq_len)
        return real_forward(x, t, context, seq_len, clip_fea=clip_fea, y=y)

    monkeypatch.setattr(pipe.model, "forward", spy)
    img = Image.fromarray(np.full((48, 64, 3), 200, dtype=np.uint8))
    pipe.generate("p", img, max_area=64 * 48, frame_num=9, sampling_steps=1, seed=1)
    y = seen["y"][0]
    assert y.shape == (4 + 16, 3, 6, 8)
    assert torch.equal(y[:4], first_frame_mask(9, 6, 8, torch.device("cpu")))
    image = torch.full((3, 48, 64), 200 / 255.0).sub(0.5).div(0.5)
    frames = torch.cat([image[:, None], torch.zeros(3, 8, 48, 64)], dim=1)
    expected = pipe.vae.encode([frames])[0]
    assert rel_err(y[4:], expected) < 1e-6
    clip = pipe.clip.visual([image[:, None]]).float()
    assert rel_err(seen["clip_fea"][:1], clip) < 1e-6
    assert seen["seq_len"] == 3 * 6 * 8 // 4
    assert len(seen["context"]) == 2  # conditional + unconditional in one batch
