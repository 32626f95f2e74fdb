"""Wan2.2 TI2V-5B against diffusers and the official code (Wan-Video/Wan2.2, textimage2video.py).

* The DiT over 48 latent channels with per-token timesteps ``[B, L]`` against diffusers'
  ``WanTransformer3DModel`` (which takes a 2-D timestep for Wan2.2's ``expand_timesteps``).
* ``WanTI2V.generate`` text-only against ``WanPipeline(expand_timesteps=True)`` and with an
  image against ``WanImageToVideoPipeline(expand_timesteps=True, image_encoder=None)``, both
  over the Wan2.2 VAE (diffusers' ``AutoencoderKLWan`` in its Wan2.2 configuration).
* ``best_output_size`` / ``fit_image`` against the official rule's results.
* The command line on the miniature checkpoint and its one-line errors.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fp32_config, rel_err
from wan.sampling import initial_noise
from wan.textimage2video import best_output_size, fit_image
from wan.utils.tiny_checkpoint import TinySizes, write_dit

SIZES = TinySizes()
PROMPT, NEGATIVE = "A red fox runs across a snowy field at dawn.", "blurry, static"
STEPS, SHIFT, GUIDE, SEED = 3, 5.0, 5.0, 123


def random_image(h, w, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------ 1. the DiT, per-token t
@pytest.fixture(scope="module")
def dit_pair(tmp_path_factory):
    from test_model import diffusers_model
    from wan.modules.model import WanModel

    folder = write_dit(tmp_path_factory.mktemp("dit_ti2v"), "ti2v", SIZES, seed=4, latent_dim=48)
    ours = WanModel.from_pretrained(folder, model_type="ti2v")
    ref = diffusers_model(folder)
    assert ours.in_dim == ours.out_dim == 48
    assert ref.config.in_channels == ref.config.out_channels == 48
    return ours, ref


def padded_text(ctx):
    return torch.cat([ctx, ctx.new_zeros(512 - ctx.size(0), ctx.size(1))])


def test_dit_per_token_timesteps_match_diffusers(dit_pair):
    """A batch of two with different per-token timesteps ``[2, L]``: one sample random in
    [0, 1000], one with the TI2V pattern (0 on the first latent frame's tokens, t after)."""
    ours, ref = dit_pair
    g = torch.Generator().manual_seed(0)
    f, h, w = 3, 6, 10  # 3 x 3 x 5 = 45 tokens
    tokens = f * (h // 2) * (w // 2)
    xs = [torch.randn(48, f, h, w, generator=g) for _ in range(2)]
    ctxs = [torch.randn(n, SIZES.t5_dim, generator=g) for n in (7, 12)]
    first = (h // 2) * (w // 2)
    t = torch.stack([torch.rand(tokens, generator=g) * 1000,
                     torch.cat([torch.zeros(first), torch.full((tokens - first,), 731.0)])])
    with torch.no_grad():
        a = ours(xs, t, ctxs, tokens)
        b = ref(torch.stack(xs), timestep=t, encoder_hidden_states=torch.stack(
            [padded_text(c) for c in ctxs]), return_dict=False)[0]
        # the image tokens' timestep matters: all tokens at 731 is another output
        flat = ours(xs[1:], torch.full((1, tokens), 731.0), ctxs[1:], tokens)[0]
    errs = [rel_err(a[i], b[i]) for i in range(2)]
    print(f"ti2v DiT per-token timesteps vs diffusers: relative errors {errs[0]:.2e}, "
          f"{errs[1]:.2e}")
    assert a[0].shape == (48, f, h, w)
    assert max(errs) <= 1e-5
    assert rel_err(flat, b[1]) > 1e-3


def test_dit_scalar_timestep_equals_filled_per_token(dit_pair):
    """``t [B]`` and ``t [B, L]`` filled with the same value: the same output to fp rounding;
    with padding (seq_len > tokens) the padded tokens' timesteps change nothing."""
    ours, _ = dit_pair
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(48, 2, 6, 6, generator=g) for _ in range(2)]  # 18 tokens
    ctxs = [torch.randn(5, SIZES.t5_dim, generator=g) for _ in range(2)]
    t = torch.tensor([999.0, 412.0])
    with torch.no_grad():
        a = ours(xs, t, ctxs, 18)
        b = ours(xs, t[:, None].expand(2, 18), ctxs, 18)
        pad = torch.cat([t[:, None].expand(2, 18), torch.tensor([[3.0] * 3, [777.0] * 3])], 1)
        c = ours(xs, pad, ctxs, 21)
    for i in range(2):
        print(f"[B] vs filled [B, L], sample {i}: {rel_err(a[i], b[i]):.1e}; "
              f"padded: {rel_err(c[i], a[i]):.1e}")
        assert rel_err(b[i], a[i]) <= 1e-6 and rel_err(c[i], a[i]) <= 1e-6
    with pytest.raises(ValueError, match=r"per-token timesteps must be \[B, seq_len=21\]"):
        ours(xs, t[:, None].expand(2, 18), ctxs, 21)


# ------------------------------------------------------------------ 3. output size and crop
# The official ``best_output_size(w, h, dw, dh, expected_area)`` (wan/utils/utils.py), worked
# by hand: e.g. 640x480 in 1280*704 = 901120 pixels: ow = sqrt(901120 * 4/3) = 1096.1,
# oh = 822.1; width first 1088 x (901120/1088 = 828.2 -> 800), ratio 1.36; height first
# (901120/800 = 1126.4 -> 1120) x 800, ratio 1.40 -> 1088 x 800. 1024x1024: 928 x 960 and
# 960 x 928 are equally far from 1:1 and the tie goes to height first (960 x 928).
OFFICIAL_SIZES = [  # (w, h, expected_area) -> (ow, oh), the official function's results
    ((1280, 720, 1280 * 704), (1248, 704)),
    ((720, 1280, 1280 * 704), (704, 1248)),
    ((1024, 1024, 1280 * 704), (960, 928)),
    ((640, 480, 1280 * 704), (1088, 800)),
    ((480, 640, 1280 * 704), (800, 1088)),
    ((1920, 800, 1280 * 704), (1472, 608)),
    ((90, 50, 1280 * 704), (1280, 704)),
    ((80, 60, 96 * 64), (96, 64)),
    ((60, 80, 96 * 64), (64, 96)),
]


@pytest.mark.parametrize("args, expected", OFFICIAL_SIZES)
def test_best_output_size_is_the_official_rule(args, expected):
    w, h, area = args
    ow, oh = best_output_size(w, h, 32, 32, area)
    assert (ow, oh) == expected
    assert ow % 32 == 0 and oh % 32 == 0 and ow * oh <= area


def test_best_output_size_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        best_output_size(2000, 10, 32, 32, 96 * 64)


def official_preprocess(img, ow, oh):
    """The official TI2V image preprocessing, written out: Lanczos resize by
    ``max(ow / iw, oh / ih)`` (rounded sizes), centre crop, to [-1, 1]."""
    iw, ih = img.width, img.height
    scale = max(ow / iw, oh / ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1, y1 = (img.width - ow) // 2, (img.height - oh) // 2
    img = img.crop((x1, y1, x1 + ow, y1 + oh))
    assert img.size == (ow, oh)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1) \
        .sub(0.5).div(0.5)


@pytest.mark.parametrize("shape, size", [((50, 90), (96, 64)), ((90, 50), (64, 96)),
                                         ((61, 61), (64, 64)), ((700, 1300), (1248, 704))])
def test_fit_image_covers_and_centre_crops(shape, size):
    from wan.image2video import image_to_tensor

    img = random_image(*shape, seed=sum(shape))
    out = fit_image(img, *size)
    assert out.size == size
    assert torch.equal(image_to_tensor(out), official_preprocess(img, *size))


# ------------------------------------------------------------------ 2. WanTI2V vs diffusers
@pytest.fixture(scope="module")
def ti2v_pipe(ti2v_ckpt):
    import wan
    return wan.WanTI2V(fp32_config("ti2v-5B"), ti2v_ckpt, device_id="cpu")


def diffusers_ti2v_parts(ckpt, monkeypatch):
    """Tokenizer, umT5, the official UniPC grid (tests/test_pipeline.py), the 48-channel DiT and
    the converted Wan2.2 VAE (tests/test_vae22.py) in place of the Wan2.1 one."""
    import test_vae
    from test_model import diffusers_model
    from test_pipeline import diffusers_components
    from test_vae22 import diffusers_vae22

    monkeypatch.setattr(test_vae, "diffusers_vae",
                        lambda path, *a: diffusers_vae22(ckpt / "Wan2.2_VAE.pth"))
    parts = diffusers_components(ckpt, SHIFT, None)
    parts.update(transformer=diffusers_model(ckpt))
    assert parts["vae"].config.z_dim == 48 and parts["vae"].config.scale_factor_spatial == 16
    return parts


def test_ti2v_text_matches_diffusers_wan_pipeline(ti2v_pipe, ti2v_ckpt, monkeypatch):
    """Text-only: the official ``t2v`` branch gives every token the step's timestep (a
    ``[1, L]`` tensor of t, as diffusers' ``expand_timesteps`` with its all-ones mask)."""
    from diffusers import WanPipeline

    width, height, frames = 96, 64, 5
    ours = ti2v_pipe.generate(PROMPT, size=(width, height), frame_num=frames, shift=SHIFT,
                              sampling_steps=STEPS, guide_scale=GUIDE, n_prompt=NEGATIVE,
                              seed=SEED)
    assert ours.shape == (3, frames, height, width)
    ref = WanPipeline(**diffusers_ti2v_parts(ti2v_ckpt, monkeypatch), expand_timesteps=True)
    noise = initial_noise((48, 2, height // 16, width // 16), SEED, torch.device("cpu"))
    with torch.no_grad():
        out = ref(prompt=PROMPT, negative_prompt=NEGATIVE, height=height, width=width,
                  num_frames=frames, num_inference_steps=STEPS, guidance_scale=GUIDE,
                  latents=noise[None], output_type="pt", max_sequence_length=512).frames[0]
    err = rel_err(ours, out.permute(1, 0, 2, 3) * 2 - 1)
    print(f"ti2v text-to-video relative error vs diffusers WanPipeline(expand_timesteps): "
          f"{err:.2e}")
    assert err <= 1e-4


def test_ti2v_image_matches_diffusers_i2v_pipeline(ti2v_pipe, ti2v_ckpt, monkeypatch):
    """With an image, against ``WanImageToVideoPipeline(expand_timesteps=True,
    image_encoder=None)``; same weights, noise and grid. Where diffusers differs from the
    official code:

    * output size: diffusers takes ``height``/``width``; they are given as the official
      ``best_output_size`` of the image within ``max_area`` computes them;
    * image preprocessing: diffusers' ``video_processor.preprocess`` resizes (stretches) to
      ``height x width``; the official cover-resizes (PIL Lanczos, aspect kept) and centre-crops.
      The official algorithm (``official_preprocess`` above) replaces diffusers' here;
    * first-frame condition: the official sets the first latent frame to the image's latent
      before the first step and after every step (the solver steps on the constrained
      latent); diffusers keeps its latent unconstrained, feeds the model
      ``(1 - mask) * condition + mask * latents`` and substitutes the condition only before
      decoding. UniPC acts elementwise, so the generated frames are the same; nothing is
      patched for this;
    * timestep of the image tokens: both give them 0 (diffusers ``mask[:, ::2, ::2] * t``, the
      official ``mask2`` likewise, padding tokens (none in one process) get t).
    """
    from diffusers import WanImageToVideoPipeline

    frames, max_area = 5, 96 * 64
    image = random_image(50, 90, 4)  # another aspect than the area's 3:2
    ours = ti2v_pipe.generate(PROMPT, image, max_area=max_area, frame_num=frames, shift=SHIFT,
                              sampling_steps=STEPS, guide_scale=GUIDE, n_prompt=NEGATIVE,
                              seed=SEED)
    width, height = best_output_size(90, 50, 32, 32, max_area)
    assert ours.shape == (3, frames, height, width) == (3, 5, 64, 96)

    parts = diffusers_ti2v_parts(ti2v_ckpt, monkeypatch)
    ref = WanImageToVideoPipeline(**parts, image_encoder=None, image_processor=None,
                                  expand_timesteps=True)
    # diffusers' own preprocessing (a stretch, not a crop) gives another first frame
    stretched = ref.video_processor.preprocess(image, height=height, width=width)[0]
    assert rel_err(stretched, official_preprocess(image, width, height)) > 0.1
    monkeypatch.setattr(ref.video_processor, "preprocess",
                        lambda img, height, width, **_: official_preprocess(img, width, height)[None])
    noise = initial_noise((48, 2, height // 16, width // 16), SEED, torch.device("cpu"))
    with torch.no_grad():
        out = ref(image=image, prompt=PROMPT, negative_prompt=NEGATIVE, height=height,
                  width=width, num_frames=frames, num_inference_steps=STEPS,
                  guidance_scale=GUIDE, latents=noise[None], output_type="pt",
                  max_sequence_length=512).frames[0]
    ref_video = out.permute(1, 0, 2, 3) * 2 - 1
    err = rel_err(ours, ref_video)
    print(f"ti2v image-to-video relative error vs diffusers WanImageToVideoPipeline"
          f"(expand_timesteps, no image encoder): {err:.2e}")
    assert err <= 1e-4


def test_ti2v_first_latent_frame_is_the_image_at_every_step(ti2v_pipe, monkeypatch):
    """Spy on the DiT input and the decoded latent: the first latent frame is the image's
    latent at every step (and at the end), its tokens get timestep 0, the others t."""
    from wan.image2video import image_to_tensor
    from wan.utils.fm_solvers import make_sampler

    image = random_image(70, 50, 5)
    width, height = best_output_size(50, 70, 32, 32, 64 * 96)
    with torch.no_grad():
        z = ti2v_pipe.vae.encode([image_to_tensor(fit_image(image, width, height))[:, None]])[0]
    calls, decoded = [], []
    model, real = ti2v_pipe.model, ti2v_pipe.model.forward

    def spy(x, t, *a, **k):
        calls.append(([u.clone() for u in x], t.clone()))
        return real(x, t, *a, **k)

    real_decode = ti2v_pipe.decode
    monkeypatch.setattr(model, "forward", spy)
    monkeypatch.setattr(ti2v_pipe, "decode",
                        lambda latent, *a: decoded.append(latent) or real_decode(latent, *a))
    ti2v_pipe.generate("p", image, max_area=64 * 96, frame_num=5, sampling_steps=STEPS,
                       shift=SHIFT, seed=2)
    ts = make_sampler("unipc", STEPS, SHIFT, 1000, device="cpu").timesteps
    assert len(calls) == STEPS  # one batched-CFG call per step
    first = (height // 32) * (width // 32)
    for (x, t), step_t in zip(calls, ts):
        assert len(x) == 2 and t.shape == (2, 2 * first)
        for u in x:
            assert torch.equal(u[:, :1], z)  # the image's latent, exactly
            assert not torch.equal(u[:, 1:], z.expand_as(u[:, 1:]))
        assert torch.all(t[:, :first] == 0) and torch.all(t[:, first:] == step_t)
    assert torch.equal(decoded[0][:, :1], z)


# ------------------------------------------------------------------ 4. the command line
def test_cli_ti2v_text_image_and_replay(ti2v_ckpt, tmp_path):
    """``--size 1280*704`` text-only, and with a 4:3 ``--image`` the size best_output_size
    gives within that area (1088 x 800); 24 fps; the sidecar; ``--replay`` bit for bit. (The
    image run makes one frame: the VAE decode of 1280 x 704 frames dominates on the CPU.)"""
    from test_generate import frames, probe, run

    out = tmp_path / "t.mp4"
    assert run("--task", "ti2v-5B", "--size", "1280*704", "--ckpt_dir", ti2v_ckpt,
               "--frame_num", 5, "--sample_steps", 2, "--base_seed", 3, "--save_file", out) == 0
    assert probe(out)[2:] == (1280, 704, 24.0)
    assert frames(out).shape == (5, 704, 1280, 3)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["task"] == "ti2v-5B" and side["fps"] == 24 and side["sample_guide_scale"] == 5.0
    assert side["sample_shift"] == 5.0 and side["image"] is None and side["image_sha256"] is None

    img = tmp_path / "in.png"
    random_image(300, 400, 1).save(img)
    out = tmp_path / "i.mp4"
    assert run("--task", "ti2v-5B", "--size", "1280*704", "--ckpt_dir", ti2v_ckpt, "--image",
               img, "--frame_num", 1, "--sample_steps", 2, "--save_file", out) == 0
    assert best_output_size(400, 300, 32, 32, 1280 * 704) == (1088, 800)
    assert probe(out)[2:] == (1088, 800, 24.0)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["image"] == str(img.resolve()) and side["fps"] == 24
    assert side["image_sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    again = tmp_path / "again.mp4"
    assert run("--replay", out.with_suffix(".json"), "--save_file", again) == 0
    assert np.array_equal(frames(again), frames(out))
    assert json.loads(again.with_suffix(".json").read_text())["base_seed"] == side["base_seed"]


def test_cli_ti2v_errors(ti2v_ckpt, t2v_ckpt, tmp_path, capsys):
    from test_generate import run
    from wan.utils.tiny_checkpoint import write_vae

    wrong_vae = tmp_path / "wrong_vae"
    shutil.copytree(ti2v_ckpt, wrong_vae)
    write_vae(wrong_vae / "Wan2.2_VAE.pth")  # a Wan2.1 VAE under the Wan2.2 name
    out = tmp_path / "o.mp4"
    cases = [
        (["--task", "ti2v-5B", "--size", "832*480", "--ckpt_dir", ti2v_ckpt],
         ["unsupported size 832*480 for task ti2v-5B", "704*1280, 1280*704"]),
        (["--task", "ti2v-5B", "--size", "1280*704", "--ckpt_dir", wrong_vae],
         ["holds a Wan2.1 VAE (16 latent channels", "not a Wan2.2 VAE (48 latent channels"]),
        (["--task", "ti2v-5B", "--size", "1280*704", "--ckpt_dir", t2v_ckpt],
         ["holds 'Wan2.1_VAE.pth'", "but not 'Wan2.2_VAE.pth'", "--task t2v-1.3B"]),
        (["--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", ti2v_ckpt],
         ["holds 'Wan2.2_VAE.pth'", "but not 'Wan2.1_VAE.pth'", "--task ti2v-5B"]),
    ]
    for argv, messages in cases:
        assert run(*argv, "--frame_num", 1, "--sample_steps", 1, "--save_file", out) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert all(m in err for m in messages), err
        assert not out.exists()
