"""Wan2.2: the two-expert A14B models (T2V and I2V) against diffusers and the official rule.

The official Wan2.2 code (Wan-Video/Wan2.2 at 42bf4cf, ``text2video.py`` / ``image2video.py``)
runs the high-noise expert while the step's timestep ``t >= boundary * 1000`` and the
low-noise one after, each with its guide scale from the ``(low, high)`` pair. diffusers'
``WanPipeline`` / ``WanImageToVideoPipeline`` take ``transformer`` (high noise),
``transformer_2`` (low noise) and ``boundary_ratio``; there ``guidance_scale`` drives the
high-noise expert and ``guidance_scale_2`` the low-noise one.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import fp32_config, rel_err
from wan.configs import WAN_CONFIGS
from wan.image2video import i2v_latent_size, image_to_tensor
from wan.sampling import initial_noise
from wan.utils.checkpoint import CheckpointError
from wan.utils.fm_solvers import make_sampler

PROMPT, NEGATIVE = "A red fox runs across a snowy field at dawn.", "blurry, static"
# 6 steps at shift 3: timesteps 999, 937, 856, 749, 599, 374 -> the switch falls after step 1
STEPS, SHIFT, SEED = 6, 3.0, 77
LOW, HIGH = 2.0, 6.5  # distinct guide scales, so a swapped pair would show


def expected_experts(boundary: float) -> list[str]:
    ts = make_sampler("unipc", STEPS, SHIFT, 1000, device="cpu").timesteps.tolist()
    return ["high" if t >= boundary * 1000 else "low" for t in ts]


def random_image(h, w, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def experts_for_diffusers(ckpt):
    from test_model import diffusers_model

    return diffusers_model(ckpt / "high_noise_model"), diffusers_model(ckpt / "low_noise_model")


# ------------------------------------------------------------------ T2V-A14B
@pytest.fixture(scope="module")
def t2v_pipe(t2v_a14b_ckpt):
    import wan
    return wan.WanT2V(fp32_config("t2v-A14B"), t2v_a14b_ckpt, device_id="cpu")


def test_t2v_a14b_loads_two_experts(t2v_pipe):
    assert t2v_pipe.is_moe and t2v_pipe.model is None
    assert t2v_pipe.high_noise_model is not t2v_pipe.low_noise_model
    h, lo = t2v_pipe.high_noise_model.state_dict(), t2v_pipe.low_noise_model.state_dict()
    assert not torch.equal(h["blocks.0.self_attn.q.weight"], lo["blocks.0.self_attn.q.weight"])
    assert len(list((t2v_pipe.checkpoint_dir / "high_noise_model").glob("*.safetensors"))) == 6


def test_t2v_a14b_matches_diffusers_with_transformer_2(t2v_pipe, t2v_a14b_ckpt):
    from diffusers import WanPipeline

    from test_pipeline import diffusers_components

    width, height, frames = 64, 48, 5
    ours = t2v_pipe.generate(PROMPT, size=(width, height), frame_num=frames, shift=SHIFT,
                             sampling_steps=STEPS, guide_scale=(LOW, HIGH), n_prompt=NEGATIVE,
                             seed=SEED)
    assert t2v_pipe.last_experts == expected_experts(0.875) == ["high"] * 2 + ["low"] * 4

    high, low = experts_for_diffusers(t2v_a14b_ckpt)
    parts = diffusers_components(t2v_a14b_ckpt, SHIFT, None)
    parts.update(transformer=high, transformer_2=low, boundary_ratio=0.875)
    ref = WanPipeline(**parts)
    noise = initial_noise((16, 2, height // 8, width // 8), SEED, torch.device("cpu"))
    with torch.no_grad():
        out = ref(prompt=PROMPT, negative_prompt=NEGATIVE, height=height, width=width,
                  num_frames=frames, num_inference_steps=STEPS, guidance_scale=HIGH,
                  guidance_scale_2=LOW, latents=noise[None], output_type="pt",
                  max_sequence_length=512).frames[0]
    ref_video = out.permute(1, 0, 2, 3) * 2 - 1
    err = rel_err(ours, ref_video)
    # the pair the other way round is a different video: the mapping is tested
    swapped = t2v_pipe.generate(PROMPT, size=(width, height), frame_num=frames, shift=SHIFT,
                                sampling_steps=STEPS, guide_scale=(HIGH, LOW),
                                n_prompt=NEGATIVE, seed=SEED)
    print(f"t2v-A14B end-to-end relative error vs diffusers WanPipeline(transformer_2): "
          f"{err:.2e}; with the guide pair swapped: {rel_err(swapped, ref_video):.2e}")
    assert err <= 1e-4
    assert rel_err(swapped, ref_video) > 100 * err


def test_expert_choice_follows_the_timestep_rule(t2v_pipe, monkeypatch):
    calls = []
    for name in ("high", "low"):
        model = t2v_pipe.dits[name]
        real = model.forward

        def spy(x, t, *a, _name=name, _real=real, **k):
            calls.append((_name, int(t[0])))
            return _real(x, t, *a, **k)
        monkeypatch.setattr(model, "forward", spy)
    t2v_pipe.generate("p", size=(32, 32), frame_num=1, shift=SHIFT, sampling_steps=STEPS,
                      guide_scale=(LOW, HIGH), seed=1)
    ts = make_sampler("unipc", STEPS, SHIFT, 1000, device="cpu").timesteps.tolist()
    assert calls == [("high" if t >= 875 else "low", t) for t in ts]  # one batched-CFG call each


def test_one_guide_scale_serves_both_experts(t2v_pipe):
    a = t2v_pipe.generate("p", size=(32, 32), frame_num=1, shift=SHIFT, sampling_steps=2,
                          guide_scale=4.0, seed=3)
    b = t2v_pipe.generate("p", size=(32, 32), frame_num=1, shift=SHIFT, sampling_steps=2,
                          guide_scale=(4.0, 4.0), seed=3)
    assert torch.equal(a, b)


# ------------------------------------------------------------------ I2V-A14B
@pytest.fixture(scope="module")
def i2v_pipe(i2v_a14b_ckpt):
    import wan
    return wan.WanI2V(fp32_config("i2v-A14B"), i2v_a14b_ckpt, device_id="cpu")


def test_i2v_a14b_has_no_clip_and_no_image_tokens(i2v_pipe, i2v_a14b_ckpt):
    assert i2v_pipe.clip is None
    for dit in (i2v_pipe.high_noise_model, i2v_pipe.low_noise_model):
        assert dit.model_type == "i2v" and dit.in_dim == 36 and not dit.image_tokens
        assert not hasattr(dit, "img_emb") and not hasattr(dit.blocks[0].cross_attn, "k_img")
    assert not list(i2v_a14b_ckpt.glob("models_clip*"))


def official_resize(image, height, width, **_):
    """The official bicubic resize of the [-1, 1] tensor, for diffusers' video_processor."""
    return F.interpolate(image_to_tensor(image)[None], size=(height, width), mode="bicubic")


def test_i2v_a14b_matches_diffusers_without_image_encoder(i2v_pipe, i2v_a14b_ckpt, monkeypatch):
    """Same weights, noise and grid; diffusers' image preprocessing (PIL Lanczos on the 8-bit
    image) is replaced by the official bicubic resize of the tensor, and the output size is
    given as the official ``max_area`` rule computes it."""
    from diffusers import WanImageToVideoPipeline

    from test_pipeline import diffusers_components

    frames, max_area = 5, 64 * 48
    image = random_image(60, 80, 4)
    ours = i2v_pipe.generate(PROMPT, image, max_area=max_area, frame_num=frames, shift=SHIFT,
                             sampling_steps=STEPS, guide_scale=(LOW, HIGH), n_prompt=NEGATIVE,
                             seed=SEED)
    assert i2v_pipe.last_experts == expected_experts(0.900)
    lat_h, lat_w = i2v_latent_size(60, 80, max_area, (4, 8, 8), (1, 2, 2))

    high, low = experts_for_diffusers(i2v_a14b_ckpt)
    parts = diffusers_components(i2v_a14b_ckpt, SHIFT, None)
    parts.update(transformer=high, transformer_2=low, boundary_ratio=0.900, image_encoder=None,
                 image_processor=None)
    ref = WanImageToVideoPipeline(**parts)
    monkeypatch.setattr(ref.video_processor, "preprocess", official_resize)
    noise = initial_noise((16, 2, lat_h, lat_w), SEED, torch.device("cpu"))
    with torch.no_grad():
        out = ref(image=image, prompt=PROMPT, negative_prompt=NEGATIVE, height=lat_h * 8,
                  width=lat_w * 8, num_frames=frames, num_inference_steps=STEPS,
                  guidance_scale=HIGH, guidance_scale_2=LOW, latents=noise[None],
                  output_type="pt", max_sequence_length=512).frames[0]
    err = rel_err(ours, out.permute(1, 0, 2, 3) * 2 - 1)
    print(f"i2v-A14B end-to-end relative error vs diffusers WanImageToVideoPipeline "
          f"(transformer_2, no image encoder): {err:.2e}")
    assert err <= 1e-4


# ------------------------------------------------------------------ folders of the wrong kind
def test_wrong_folders(t2v_a14b_ckpt, t2v_ckpt, tmp_path):
    import wan

    with pytest.raises(CheckpointError, match="not a Wan2.2 A14B checkpoint folder.*"
                       "'high_noise_model/' is missing.*a Wan2.1 checkpoint"):
        wan.WanT2V(fp32_config("t2v-A14B"), t2v_ckpt, device_id="cpu")
    with pytest.raises(CheckpointError, match="holds the two experts of a Wan2.2 A14B model.*"
                       "--task t2v-A14B"):
        wan.WanT2V(fp32_config("t2v-14B"), t2v_a14b_ckpt, device_id="cpu")
    half = tmp_path / "half"
    shutil.copytree(t2v_a14b_ckpt, half)
    shutil.rmtree(half / "low_noise_model")
    with pytest.raises(CheckpointError, match="'low_noise_model/' is missing"):
        wan.WanT2V(fp32_config("t2v-A14B"), half, device_id="cpu")
    # experts of different shapes
    from wan.utils.tiny_checkpoint import TinySizes, write_dit

    odd = tmp_path / "odd"
    shutil.copytree(t2v_a14b_ckpt, odd)
    shutil.rmtree(odd / "low_noise_model")
    write_dit(odd / "low_noise_model", "t2v", TinySizes(ffn_dim=96), shards=2)
    with pytest.raises(CheckpointError, match="the two experts .* differ \\(ffn_dim: 128 in "
                       "high_noise_model/ vs 96 in low_noise_model/\\)"):
        wan.WanT2V(fp32_config("t2v-A14B"), odd, device_id="cpu")


def test_guide_pair_needs_two_experts(t2v_ckpt):
    import wan

    pipe = wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu")
    with pytest.raises(ValueError, match="pair needs two experts"):
        pipe.generate("p", size=(32, 32), frame_num=1, sampling_steps=1, guide_scale=(3.0, 4.0))


# ------------------------------------------------------------------ the command line
def test_cli_t2v_a14b_and_i2v_a14b(t2v_a14b_ckpt, i2v_a14b_ckpt, tmp_path):
    from test_generate import frames, probe, run

    out = tmp_path / "t2v.mp4"
    assert run("--task", "t2v-A14B", "--size", "832*480", "--ckpt_dir", t2v_a14b_ckpt,
               "--frame_num", 5, "--sample_steps", 3, "--base_seed", 2, "--save_file", out) == 0
    assert probe(out)[2:] == (832, 480, 16.0)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["sample_guide_scale"] == [3.0, 4.0] and side["sample_shift"] == 12.0
    assert side["sample_steps"] == 3
    again = tmp_path / "again.mp4"
    assert run("--replay", out.with_suffix(".json"), "--save_file", again) == 0
    assert np.array_equal(frames(again), frames(out))
    pair = tmp_path / "pair.mp4"
    assert run("--task", "t2v-A14B", "--size", "832*480", "--ckpt_dir", t2v_a14b_ckpt,
               "--frame_num", 1, "--sample_steps", 2, "--sample_guide_scale", "2.5,5",
               "--convert_model_dtype", "--save_file", pair) == 0
    side = json.loads(pair.with_suffix(".json").read_text())
    assert side["sample_guide_scale"] == [2.5, 5.0] and side["convert_model_dtype"] is True

    img = tmp_path / "in.png"
    random_image(360, 640, 1).save(img)
    out = tmp_path / "i2v.mp4"
    assert run("--task", "i2v-A14B", "--size", "832*480", "--ckpt_dir", i2v_a14b_ckpt,
               "--image", img, "--frame_num", 5, "--sample_steps", 2, "--save_file", out) == 0
    assert probe(out)[2:4] == (832, 464)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["sample_guide_scale"] == [3.5, 3.5] and side["sample_shift"] == 5.0
    assert side["negative_prompt"] == WAN_CONFIGS["i2v-A14B"].sample_neg_prompt


def test_cli_errors(t2v_a14b_ckpt, t2v_ckpt, tmp_path, capsys):
    from test_generate import run

    out = tmp_path / "o.mp4"
    cases = [
        (["--task", "t2v-A14B", "--size", "832*480", "--ckpt_dir", t2v_ckpt],
         "is not a Wan2.2 A14B checkpoint folder"),
        (["--task", "t2v-14B", "--size", "832*480", "--ckpt_dir", t2v_a14b_ckpt],
         "holds the two experts of a Wan2.2 A14B model"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", t2v_ckpt,
          "--sample_guide_scale", "3,4"], "has one model: --sample_guide_scale takes one number"),
        (["--task", "t2v-A14B", "--size", "832*480", "--ckpt_dir", t2v_a14b_ckpt,
          "--sample_guide_scale", "3,-4"], "--sample_guide_scale must be >= 0"),
    ]
    for argv, message in cases:
        assert run(*argv, "--frame_num", 1, "--sample_steps", 1, "--save_file", out) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, err
        assert len(err.splitlines()) == 1 and not out.exists()


def test_convert_model_dtype_stores_the_whole_dit_in_bf16(t2v_a14b_ckpt):
    """Every official Wan2.2 command passes --convert_model_dtype: the DiT in param_dtype."""
    import wan

    pipe = wan.WanT2V(WAN_CONFIGS["t2v-A14B"], t2v_a14b_ckpt, device_id="cpu",
                      convert_model_dtype=True)
    for dit in (pipe.high_noise_model, pipe.low_noise_model):
        assert {p.dtype for p in dit.parameters()} == {torch.bfloat16}
    video = pipe.generate("p", size=(32, 32), frame_num=1, sampling_steps=2, seed=1)
    default = wan.WanT2V(WAN_CONFIGS["t2v-A14B"], t2v_a14b_ckpt, device_id="cpu")
    assert default.high_noise_model.blocks[0].modulation.dtype == torch.float32
    ref = default.generate("p", size=(32, 32), frame_num=1, sampling_steps=2, seed=1)
    assert torch.isfinite(video).all() and 0 < rel_err(video, ref) < 0.1
