"""VACE end to end: WanVace against diffusers' WanVACEPipeline, the pipeline's own promises,
and the command line on miniature VACE checkpoints (1.3B and 14B layouts).

Parity (``WanVace.generate`` in fp32 vs ``WanVACEPipeline`` on the same weights -- the
converted VACE transformer of test_vace_model, the tokenizer/umT5/VAE of
test_pipeline.diffusers_components --, the same noise, the official UniPC grid) holds
where the two preprocess alike. The differences, and how the tests deal with them:

1. Several reference images: the official (and WanVace) order in latent time is
   ``[ref1, ref2, ..., video]``; diffusers' ``prepare_video_latents`` prepends one
   image at a time and so gives ``[refN, ..., ref1, video]``. The end-to-end parity
   uses one reference; the order is tested on its own
   (:func:`test_several_references_keep_the_official_order_in_the_context`).
2. Reference images: both fit the image into a white canvas of the video's size
   (``scale = min(H / h, W / w)``, ``int()`` sizes, bilinear, ``align_corners=False``,
   centred with ``//``) and normalise ``x / 255`` to [-1, 1]; but diffusers'
   ``video_processor.preprocess(image, None, None)`` first resizes the image (PIL
   LANCZOS) to multiples of 8, and it always interpolates (the official skips an image
   already at the canvas size: bilinear at the same size is the identity anyway).
   With sides in multiples of 16 that resize is a no-op, so diffusers gets the same
   PIL image as WanVace gets its file.
3. The source clip and mask: the official ``VaceVideoProcessor(keep_last=True)``
   picks the frames and the size from the clip (evenly spaced frames, the clip's aspect
   at the task's area, bicubic antialiased on uint8, ``x / 127.5 - 1``); diffusers
   resizes the frames it is given (PIL LANCZOS, size floored to 16) and normalises
   ``2 x / 255 - 1``. Both are given the same [-1, 1] tensors here: WanVace through
   ``prepare_source`` (tensors are used as given), diffusers with
   ``video_processor.preprocess_video`` monkeypatched to return the tensor (the mask
   as ``2 m - 1``, which diffusers maps back with ``clamp((m + 1) / 2)`` as the official).
4. Reference frames in the output: both generate them (the noise has ``1 + refs``
   extra latent frames at the front: diffusers' ``latents`` argument) and drop them
   before decoding (diffusers: ``latents[:, :, num_reference_images:]``), so the
   video has the source's frame count.
5. Without a source video both use zeros and an all-ones mask of ``height x width``
   (``size`` for WanVace); a mask without a video is refused by WanVace (the official
   silently ignores it).
6. Mask without reference images: diffusers' ``preprocess_conditions`` turns
   ``reference_images=None`` into ``[[]]`` in the full pipeline, so nothing is padded
   (as the official); only its lower-level ``prepare_masks(ref=None)`` pads a frame.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fp32_config, rel_err
from test_generate import frames, probe, run
from test_tasks import write_clip, write_picture
from wan.sampling import initial_noise
from wan.vace_conditioning import fit_reference_image, load_reference_image

PROMPT, NEGATIVE = "A girl plays with a green snake in a festive street.", "blurry, static"
W, H = 64, 48  # the pipeline API takes any multiple of 16 (the CLI only the VACE sizes)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def vace_pipe(vace_ckpt):
    import wan

    return wan.WanVace(fp32_config("vace-1.3B"), vace_ckpt, device_id="cpu")


@pytest.fixture(scope="module")
def diffusers_vace(vace_ckpt, vace_pipe):
    """diffusers' WanVACEPipeline on the same files (shift is set per call: see _grid)."""
    from diffusers import WanVACEPipeline

    from test_pipeline import diffusers_components
    from test_vace_model import diffusers_vace_model

    def make(shift):
        parts = diffusers_components(vace_ckpt, shift, None)
        parts["transformer"] = diffusers_vace_model(vace_ckpt, vace_pipe.model.vace_layers)
        return WanVACEPipeline(**parts)
    return make


def picture(path: Path, w: int, h: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def run_diffusers(ref, monkeypatch, *, frames_n, steps, shift, guide, seed, n_refs,
                  video=None, mask=None, reference_images=None, scale=1.0):
    """diffusers' video ``[3, F, H, W]`` in [-1, 1] (tensors fed through preprocess_video)."""
    if video is not None:
        video, mask = video[None], (mask * 2 - 1)[None]  # a batch of one, as diffusers
        feed = {id(video): video, id(mask): mask}
        monkeypatch.setattr(ref.video_processor, "preprocess_video",
                            lambda v, h, w: feed[id(v)])
    noise = initial_noise((16, n_refs + (frames_n - 1) // 4 + 1, H // 8, W // 8), seed,
                          torch.device("cpu"))
    with torch.no_grad():
        out = ref(video=video, mask=mask, reference_images=reference_images, prompt=PROMPT,
                  negative_prompt=NEGATIVE, height=H, width=W, num_frames=frames_n,
                  num_inference_steps=steps, guidance_scale=guide, conditioning_scale=scale,
                  latents=noise[None], output_type="pt", max_sequence_length=512).frames[0]
    return out.permute(1, 0, 2, 3) * 2 - 1  # [F, C, H, W] in [0, 1] -> [C, F, H, W]


# ------------------------------------------------------------------ parity with diffusers
def test_reference_to_video_matches_diffusers(vace_pipe, diffusers_vace, tmp_path, monkeypatch):
    """(a) One reference image (32x48: another aspect, so the white canvas shows), no video."""
    ref_file = picture(tmp_path / "ref.png", 32, 48, seed=1)
    steps, shift, guide, seed, n = 3, 16.0, 5.0, 77, 5
    kwargs, used = vace_pipe.prepare_cli_inputs(src_ref_images=[str(ref_file)], frame_num=n,
                                                size=(W, H))
    assert used == {"frame_num": n, "size": (W, H)}
    ours = vace_pipe.generate(PROMPT, **kwargs, size=(W, H), frame_num=n, shift=shift,
                              sampling_steps=steps, guide_scale=guide, n_prompt=NEGATIVE,
                              seed=seed)
    assert ours.shape == (3, n, H, W)  # the reference frame is not in the output
    with Image.open(ref_file) as im:
        ref_video = run_diffusers(diffusers_vace(shift), monkeypatch, frames_n=n, steps=steps,
                                  shift=shift, guide=guide, seed=seed, n_refs=1,
                                  reference_images=[im.convert("RGB")])
    err = rel_err(ours, ref_video)
    print(f"VACE reference-to-video relative error vs diffusers WanVACEPipeline: {err:.2e}")
    assert err <= 1e-4


def test_video_and_mask_match_diffusers(vace_pipe, diffusers_vace, monkeypatch):
    """(b) A source video and a binary mask (tensors: see difference 3), no reference."""
    steps, shift, guide, seed, n = 3, 16.0, 4.0, 5, 9
    g = torch.Generator().manual_seed(3)
    video = torch.rand(3, n, H, W, generator=g) * 2 - 1
    mask = torch.zeros(1, n, H, W)
    mask[:, :, 8:40, 16:48] = 1  # regenerate a box, keep the rest
    kwargs = dict(zip(("input_frames", "input_masks", "input_ref_images"),
                      vace_pipe.prepare_source([video], [mask], [None], n, (W, H))))
    ours = vace_pipe.generate(PROMPT, **kwargs, size=(W, H), frame_num=n, shift=shift,
                              sampling_steps=steps, guide_scale=guide, n_prompt=NEGATIVE,
                              seed=seed)
    assert ours.shape == (3, n, H, W)
    ref_video = run_diffusers(diffusers_vace(shift), monkeypatch, frames_n=n, steps=steps,
                              shift=shift, guide=guide, seed=seed, n_refs=0, video=video,
                              mask=mask)
    err = rel_err(ours, ref_video)
    print(f"VACE video+mask relative error vs diffusers WanVACEPipeline: {err:.2e}")
    assert err <= 1e-4


# ------------------------------------------------------------------ the pipeline's promises
def spy_forward(pipe, monkeypatch):
    seen = []
    real = pipe.model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.model, "forward", spy)
    return seen


def test_several_references_keep_the_official_order_in_the_context(vace_pipe, tmp_path,
                                                                   monkeypatch):
    """[ref1, ref2, video] in latent time (diffusers would give [ref2, ref1, video])."""
    a, b = picture(tmp_path / "a.png", 48, 48, 2), picture(tmp_path / "b.png", 64, 32, 3)
    seen = spy_forward(vace_pipe, monkeypatch)
    kwargs, _ = vace_pipe.prepare_cli_inputs(src_ref_images=[str(a), str(b)], frame_num=5,
                                             size=(W, H))
    video = vace_pipe.generate("p", **kwargs, size=(W, H), frame_num=5, sampling_steps=1,
                               seed=1)
    assert video.shape == (3, 5, H, W)  # neither reference frame is in the output
    z = seen[0]["vace_context"][0]
    assert z.shape == (96, 2 + 2, H // 8, W // 8)
    enc = [vace_pipe.vae.encode([fit_reference_image(load_reference_image(p), H, W)])[0]
           for p in (a, b)]
    assert rel_err(z[:16, 0:1], enc[0]) <= 1e-5 and rel_err(z[:16, 1:2], enc[1]) <= 1e-5
    assert rel_err(z[:16, 0:1], enc[1]) > 1e-2  # the order matters
    assert not z[16:, :2].any()  # references: no reactive half, a zero mask
    assert bool((z[32:, 2:] == 1).all())  # no video: all regenerated
    assert seen[0]["vace_context_scale"] == 1.0


def test_context_scale_matters_and_is_checked(vace_pipe, tmp_path):
    ref = picture(tmp_path / "r.png", 64, 48, 4)
    kw = dict(size=(W, H), frame_num=5, sampling_steps=2, seed=3)
    inputs, _ = vace_pipe.prepare_cli_inputs(src_ref_images=[str(ref)], frame_num=5, size=(W, H))
    inputs.pop("context_scale")
    one = vace_pipe.generate("p", **inputs, context_scale=1.0, **kw)
    zero = vace_pipe.generate("p", **inputs, context_scale=0.0, **kw)
    assert rel_err(zero, one) > 1e-3  # (the same settings give the same video: see --replay)
    with pytest.raises(ValueError, match="context_scale must be >= 0"):
        vace_pipe.generate("p", **inputs, context_scale=-0.5, **kw)


# ------------------------------------------------------------------ the command line
# A source clip decides the frames and the size (official VaceVideoProcessor): a 96x64 clip of
# 5 (9) frames at --size 832*480 gives 5 (9) frames of 96x64 (its own aspect, never upscaled).
# Outpainting pads to 128*96 rather than the README's 832*480 only to keep the test fast on
# the CPU (one 832x480 VACE run costs about a minute here); the recipe is the same.
def vace_cli(ckpt, out, *extra, task="vace-1.3B", seed=3):
    return ["--task", task, "--size", "832*480", "--ckpt_dir", ckpt, "--sample_steps", 1,
            "--base_seed", seed, "--prompt", "a festive street", "--save_file", out, *extra]


def helper(*args):
    import subprocess
    import sys

    from conftest import ROOT
    r = subprocess.run([sys.executable, "-m", "wan.utils.vace_inputs", *map(str, args)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [Path(p) for p in r.stdout.split()]


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sidecar(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


def test_cli_inpainting_sidecar_and_replay(vace_ckpt, tmp_path):
    clip = write_clip(tmp_path / "in.mp4", n=9, size=(96, 64))
    video, mask = helper("inpaint", clip, "--box", "32,16,80,48", "--out", tmp_path / "inp")
    out = tmp_path / "inpaint.mp4"
    assert run(*vace_cli(vace_ckpt, out, "--src_video", video, "--src_mask", mask)) == 0
    assert probe(out)[:4] == ("h264", "yuv420p", 96, 64)
    fa = frames(out)
    assert fa.shape[0] == 9  # the clip's 9 frames, not --frame_num's default 81
    side = sidecar(out)
    assert side["frame_num"] == 9 and side["size_used"] == "96*64" and side["size"] == "832*480"
    assert side["src_video"] == str(video.resolve()) and side["src_video_sha256"] == sha(video)
    assert side["src_mask"] == str(mask.resolve()) and side["src_mask_sha256"] == sha(mask)
    assert side["src_ref_images"] is None and side["context_scale"] == 1.0
    again = tmp_path / "again.mp4"
    assert run("--replay", out.with_suffix(".json"), "--save_file", again) == 0
    assert np.array_equal(frames(again), fa)  # bit for bit


@pytest.mark.parametrize("recipe", ["outpaint", "first_frame", "control"])
def test_cli_recipes(vace_ckpt, tmp_path, recipe):
    from wan.utils.io import save_video

    if recipe == "outpaint":  # a 64x48 clip centred on a 128x96 canvas, the border masked
        clip = write_clip(tmp_path / "in.mp4", n=5, size=(64, 48))
        video, mask = helper("outpaint", clip, "--to", "128*96", "--out", tmp_path / "out")
        extra, size = ["--src_video", video, "--src_mask", mask], (128, 96)
    elif recipe == "first_frame":  # keep frame 0, generate the rest
        video = write_clip(tmp_path / "in.mp4", n=5, size=(96, 64))
        m = torch.ones(3, 5, 64, 96)
        m[:, 0] = -1
        mask = save_video(m, tmp_path / "mask.mp4", fps=16)
        extra, size = ["--src_video", video, "--src_mask", mask], (96, 64)
    else:  # control-to-video: a grey "depth" clip alone (mask: all regenerated)
        t = torch.linspace(-1, 1, 5).view(1, 5, 1, 1)
        depth = (torch.linspace(-1, 1, 80).view(1, 1, 1, 80) * 0.5 + 0.5 * t).expand(3, 5, 48, 80)
        video = save_video(depth.contiguous(), tmp_path / "depth.mp4", fps=16)
        extra, size = ["--src_video", video], (80, 48)
    out = tmp_path / f"{recipe}.mp4"
    assert run(*vace_cli(vace_ckpt, out, *extra)) == 0
    assert probe(out)[2:4] == size
    fa = frames(out)
    assert fa.shape[0] == 5
    side = sidecar(out)
    assert side["frame_num"] == 5 and side["size_used"] == "*".join(map(str, size))


def test_cli_reference_to_video_14B_layout(vace14_ckpt, tmp_path):
    """Two reference images only (the 14B layout: 7 shards): frames of --frame_num, not + 2."""
    a = write_picture(tmp_path / "girl.png", (64, 96), seed=1)
    b = write_picture(tmp_path / "snake.png", (80, 48), seed=2)
    out = tmp_path / "r2v.mp4"
    assert run(*vace_cli(vace14_ckpt, out, "--src_ref_images", f"{a},{b}", "--frame_num", 1,
                         task="vace-14B")) == 0
    assert probe(out)[2:4] == (832, 480)
    assert frames(out).shape[0] == 1
    side = sidecar(out)
    assert side["task"] == "vace-14B" and side["frame_num"] == 1
    assert side["size_used"] == "832*480" and side["src_video"] is None
    assert side["src_ref_images"] == f"{a.resolve()},{b.resolve()}"
    assert side["src_ref_images_sha256"] == [sha(a), sha(b)]


def test_cli_errors_one_line_no_file(vace_ckpt, t2v_ckpt, tmp_path, capsys):
    from wan.utils.io import save_video

    clip = write_clip(tmp_path / "five.mp4", n=5, size=(96, 64))
    nine = write_clip(tmp_path / "nine.mp4", n=9, size=(96, 64))
    small = write_clip(tmp_path / "small.mp4", n=5, size=(64, 48))
    mask = save_video(torch.ones(3, 5, 64, 96), tmp_path / "mask.mp4", fps=16)
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"not a video at all")
    bad_img = tmp_path / "bad.png"
    bad_img.write_bytes(b"not an image")
    img = write_picture(tmp_path / "img.png", (64, 48))
    out = tmp_path / "out.mp4"
    cases = [
        (["--src_mask", mask], "--src_mask needs --src_video"),
        (["--src_video", clip, "--src_mask", nine], "is 9 frames of 96x64 but --src_video"),
        (["--src_video", clip, "--src_mask", small], "is 5 frames of 64x48 but --src_video"),
        (["--src_video", bad_video], "--src_video: cannot read"),
        (["--src_video", bad_video, "--frame_num", 5], "cannot read '" + str(bad_video)),
        (["--src_video", clip, "--src_mask", bad_video], "--src_mask: cannot read"),
        (["--src_ref_images", f"{img},{bad_img}"], "cannot read the --src_ref_images image"),
        (["--src_ref_images", ",".join([str(img)] * 9)], "gives 9 files; at most 8"),
        (["--src_ref_images", img, "--context_scale", -0.5], "--context_scale must be in [0, inf)"),
        (["--src_ref_images", tmp_path / "none.png"], "--src_ref_images image not found"),
    ]
    argvs = [(vace_cli(vace_ckpt, out, *extra), msg) for extra, msg in cases]
    argvs += [
        (vace_cli(t2v_ckpt, out, "--frame_num", 5), "no vace_blocks"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", t2v_ckpt, "--save_file", out,
          "--src_ref_images", img], "task t2v-1.3B takes no --src_ref_images"),
    ]
    for argv, message in argvs:
        assert run(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, (argv, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert not out.exists() and not list(tmp_path.glob("*.part*"))
