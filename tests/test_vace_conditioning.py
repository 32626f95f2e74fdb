"""VACE conditioning: source preparation, the 96-channel vace_context, the vace_inputs helper.

Parity: ``vace_encode_frames`` / ``vace_encode_masks`` / ``vace_latent`` against
diffusers' ``WanVACEPipeline.prepare_video_latents`` / ``prepare_masks`` on the
same tensors and the same miniature VAE (converted for diffusers).

Where diffusers' preprocessing differs from the official ``WanVace`` the
official algorithm is written here independently. The differences:

1. Several reference images: the official order in latent time is
   ``[ref1, ref2, ..., video]``; diffusers prepends one at a time, giving
   ``[refN, ..., ref1, video]`` (so diffusers is given the list reversed here).
2. Reference placement: both fit the image into a white canvas of the video's
   size (``scale = min(H / h, W / w)``, ``int()`` sizes, bilinear with
   ``align_corners=False``, centred with ``//``), but diffusers' ``preprocess``
   first LANCZOS-resizes the image to multiples of 8 (``VideoProcessor.
   preprocess(image, None, None)``), and it always interpolates (the official
   skips an image already at the canvas size). The canvases are built here with
   the official algorithm and given to both.
3. The source clip: the official ``VaceVideoProcessor(keep_last=True)`` takes
   the largest ``4n + 1 <= N`` frames that fit the token budget, evenly spaced
   over the clip's whole duration, at a size from the clip's aspect ratio and the
   task's area (bicubic antialiased on uint8 frames, centre crop,
   ``x / 127.5 - 1``). diffusers uses the frames it is given as they are, at the
   clip's size floored to 16 (shrunk by ``min(W / w, H / h)`` only when larger
   than the requested area), resized by PIL (LANCZOS) and normalised as
   ``2 * x / 255 - 1``.
4. A mask without reference images: diffusers' ``prepare_masks`` with
   ``reference_images=None`` still pads one zero frame (``[[None]]`` has length
   1) and ``prepare_video_latents`` fails on it; the official pads nothing. Here
   diffusers is given ``[[]]`` in that case.
5. A mask video given without a source video: the official silently uses zeros
   and an all-ones mask; we raise a ValueError.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, rel_err
from wan.modules.vae import WanVAE
from wan.utils.io import read_video, save_video
from wan.utils.tiny_checkpoint import TinySizes, write_vae
from wan.utils.vace_processor import VaceVideoProcessor, plan_clip, vace_seq_len
from wan.vace_conditioning import (fit_reference_image, prepare_source, vace_encode_frames,
                                   vace_encode_masks, vace_latent)

SIZES = TinySizes()
TOL = 1e-5


# --------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    return write_vae(tmp_path_factory.mktemp("vace_vae") / "Wan2.1_VAE.pth", SIZES, seed=7)


@pytest.fixture(scope="module")
def vae(vae_file):
    return WanVAE(vae_pth=vae_file, device="cpu")


@pytest.fixture(scope="module")
def diffusers_stub(vae_file):
    """What ``prepare_video_latents`` / ``prepare_masks`` read from ``self``, nothing more."""
    from test_vae import diffusers_vae

    return SimpleNamespace(
        vae=diffusers_vae(vae_file, SIZES.vae_dim), vae_scale_factor_temporal=4,
        vae_scale_factor_spatial=8, transformer=SimpleNamespace(
            config=SimpleNamespace(patch_size=(1, 2, 2))), transformer_2=None,
        _execution_device=torch.device("cpu"))


def diffusers_context(stub, video, mask, refs):
    """diffusers' conditioning latents ``cat(prepare_video_latents, prepare_masks)``."""
    from diffusers import WanVACEPipeline

    refs = [[r[:, 0] for r in refs]]
    with torch.no_grad():
        lat = WanVACEPipeline.prepare_video_latents(stub, video[None], mask[None], refs, None,
                                                    torch.device("cpu"))
        msk = WanVACEPipeline.prepare_masks(stub, mask[None], refs, None)
    return torch.cat([lat, msk], dim=1)[0]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A 30-frame 24 fps 80x48 (5:3) clip and a 25-frame mask clip (left half white)."""
    d = tmp_path_factory.mktemp("vace_clips")
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(-1, 1, 30).view(1, 30, 1, 1)
    video = (torch.rand(3, 1, 48, 80, generator=g) * 2 - 1) * 0.5 + 0.5 * t
    save_video(video, d / "video.mp4", fps=24)
    mask = -torch.ones(3, 25, 48, 80)
    mask[:, :, :, :40] = 1
    save_video(mask, d / "mask.mp4", fps=24)
    save_video(mask[:, :, :32], d / "mask_small.mp4", fps=24)
    return d


def random_image(path, w, h, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------- the official algorithms
def official_plan(n, fps, h, w, area, seq_len, downsample=(4, 16, 16)):
    """VaceVideoProcessor._get_frameid_bbox_adjust_last, from its description, with loops."""
    df, dh, dw = downsample
    starts = [np.float32(i / fps) for i in range(n)]
    ends = [np.float32((i + 1) / fps) for i in range(n)]
    duration = np.float32((starts[-1] + ends[-1]) / np.float32(2))
    tokens = min(seq_len, area / (dh * dw), (h // dh) * (w // dw))
    latent_frames = min((n - 1) // df + 1, int(seq_len / tokens))
    tokens = min(tokens, int(seq_len / latent_frames))
    oh = round(float(np.sqrt(tokens * h / w)))
    ow = int(tokens / oh)
    frames = (latent_frames - 1) * df + 1
    ids = []
    for t in np.linspace(0.0, duration, frames):
        hits = [i for i in range(n) if starts[i] <= t <= ends[i]]
        ids.append(hits[0] if hits else 0)
    return ids, oh * dh, ow * dw


def official_read(path, ids, oh, ow, length=None):
    """Decode, pick ``ids``, resize the uint8 clip at once (bicubic, antialias), crop, normalise."""
    frames, _ = read_video(path)
    frames = frames[:length][ids].permute(0, 3, 1, 2)
    ih, iw = frames.shape[2:]
    if (ih, iw) != (oh, ow):
        s = max(ow / iw, oh / ih)
        frames = F.interpolate(frames, size=(round(s * ih), round(s * iw)), mode="bicubic",
                               antialias=True)
        y, x = (frames.size(2) - oh) // 2, (frames.size(3) - ow) // 2
        frames = frames[:, :, y:y + oh, x:x + ow]
    return frames.transpose(0, 1).float() / 127.5 - 1


def official_reference(path, canvas_h, canvas_w):
    """WanVace.prepare_source's reference image: RGB, [-1, 1], bilinear into a white canvas."""
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    img = (torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5
    h, w = img.shape[1:]
    if (h, w) == (canvas_h, canvas_w):
        return img[:, None]
    s = min(canvas_h / h, canvas_w / w)
    nh, nw = int(h * s), int(w * s)
    small = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, canvas_h, canvas_w)
    top, left = (canvas_h - nh) // 2, (canvas_w - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = small
    return canvas[:, None]


# --------------------------------------------------------------------- parity with diffusers
def inputs(frames=9, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(3, frames, h, w, generator=g) * 2 - 1
    mask = torch.rand(1, frames, h, w, generator=g)  # not binary: both binarise at 0.5
    mask[:, :, : h // 2] = (mask[:, :, : h // 2] > 0.3).float()
    return video, mask


def ref_canvas(h, w, rh, rw, seed):
    g = torch.Generator().manual_seed(seed)
    return fit_reference_image(torch.rand(3, 1, rh, rw, generator=g) * 2 - 1, h, w)


def test_vace_context_matches_diffusers_with_one_reference(vae, diffusers_stub):
    video, mask = inputs()
    refs = [ref_canvas(32, 48, 20, 24, seed=1)]
    z = vace_encode_frames(vae, [video], [refs], masks=[mask])
    m = vace_encode_masks([mask], [refs])
    (ctx,) = vace_latent(z, m)
    assert z[0].shape == (32, 1 + 3, 4, 6) and m[0].shape == (64, 1 + 3, 4, 6)
    assert ctx.shape == (96, 4, 4, 6)
    ref = diffusers_context(diffusers_stub, video, mask.expand(3, -1, -1, -1), refs)
    assert rel_err(ctx, ref) <= TOL
    assert rel_err(ctx[:16], ref[:16]) <= TOL and rel_err(ctx[16:32, 1:], ref[16:32, 1:]) <= TOL
    assert torch.equal(ctx[32:], ref[32:])  # the folded mask: exact
    assert torch.equal(ctx[16:32, 0], torch.zeros_like(ctx[16:32, 0]))  # reference: no reactive


def test_vace_context_matches_diffusers_without_reference(vae, diffusers_stub):
    video, mask = inputs(frames=5, h=16, w=32, seed=2)
    (ctx,) = vace_latent(vace_encode_frames(vae, [video], None, masks=[mask]),
                         vace_encode_masks([mask]))
    ref = diffusers_context(diffusers_stub, video, mask, [])
    assert ctx.shape == (96, 2, 2, 4)
    assert rel_err(ctx, ref) <= TOL


def test_several_references_keep_the_official_order(vae, diffusers_stub):
    """Official [ref1, ref2, video]; diffusers (one prepend at a time) needs [ref2, ref1]."""
    video, mask = inputs(frames=5, h=32, w=32, seed=3)
    refs = [ref_canvas(32, 32, 32, 16, seed=4), ref_canvas(32, 32, 16, 32, seed=5)]
    (ctx,) = vace_latent(vace_encode_frames(vae, [video], [refs], masks=[mask]),
                         vace_encode_masks([mask], [refs]))
    assert ctx.shape == (96, 2 + 2, 4, 4)
    ref = diffusers_context(diffusers_stub, video, mask, refs[::-1])
    assert rel_err(ctx, ref) <= TOL
    (r1,), (r2,) = vae.encode([refs[0]]), vae.encode([refs[1]])
    assert rel_err(ctx[:16, :1], r1) <= TOL and rel_err(ctx[:16, 1:2], r2) <= TOL
    assert not torch.equal(ctx, diffusers_context(diffusers_stub, video, mask, refs))


def test_encode_frames_without_masks_is_plain_latents(vae):
    video, _ = inputs(frames=5, h=16, w=16, seed=6)
    ref = ref_canvas(16, 16, 8, 16, seed=7)
    (z,) = vace_encode_frames(vae, [video], [[ref]])
    assert z.shape == (16, 1 + 2, 2, 2)
    assert torch.equal(z[:, 1:], vae.encode([video])[0])
    assert torch.equal(z[:, :1], vae.encode([ref])[0])


def test_mask_folding_and_time_resize():
    """Pixel (8y + a, 8x + b) -> channel 8a + b at (y, x); time (F + 3) // 4 with nearest-exact."""
    mask = torch.rand(1, 9, 16, 32, generator=torch.Generator().manual_seed(8))
    (m,) = vace_encode_masks([mask], [[None, None]])
    assert m.shape == (64, 2 + 3, 2, 4)
    assert torch.equal(m[:, :2], torch.zeros(64, 2, 2, 4))
    frames = F.interpolate(torch.arange(9.0)[None, None, :, None, None], size=(3, 1, 1),
                           mode="nearest-exact").flatten().long().tolist()
    assert frames == [1, 4, 7]
    for k, f in enumerate(frames):
        for a, b, y, x in [(0, 0, 0, 0), (3, 5, 1, 2), (7, 7, 1, 3), (2, 6, 0, 1)]:
            assert m[8 * a + b, 2 + k, y, x] == mask[0, f, 8 * y + a, 8 * x + b]
    with pytest.raises(ValueError, match="multiple of 16x16"):
        vace_encode_masks([torch.ones(1, 5, 24, 32)])


# --------------------------------------------------------------------- source clips
def test_frames_and_size_follow_the_official_processor(clip_dir):
    path = clip_dir / "video.mp4"
    frames, fps = read_video(path)
    assert (len(frames), fps) == (30, 24.0)
    for size, seq_len in [((832, 480), None), ((480, 832), None), ((64, 32), None),
                          ((32, 64), None), ((64, 32), 24), ((48, 48), 10)]:
        area = size[0] * size[1]
        budget = vace_seq_len(area) if seq_len is None else seq_len
        ids, oh, ow = official_plan(30, 24.0, 48, 80, area, budget)
        video, mask, refs = out = prepare_source([str(path)], [None], [None], 81, size, "cpu",
                                                 seq_len=seq_len)
        assert video[0].shape == (3, len(ids), oh, ow), size
        assert out.info[0].frame_ids == ids and out.frame_nums == [len(ids)]
        assert out.sizes == [(ow, oh)]
        assert torch.equal(mask[0], torch.ones(1, len(ids), oh, ow)) and refs == [None]
        assert rel_err(video[0], official_read(path, ids, oh, ow)) <= 1e-6
    # the official sizes: the whole 5:3 clip (29 = 4*7 + 1 frames over 30) at its own size
    ids, oh, ow = official_plan(30, 24.0, 48, 80, 832 * 480, 32760)
    assert (len(ids), oh, ow) == (29, 48, 80) and ids == list(range(19)) + list(range(20, 30))
    # a smaller area: the clip's aspect (5:3 -> 2 x 4 tokens), not the requested shape
    assert official_plan(30, 24.0, 48, 80, 64 * 32, 168)[1:] == (32, 64)
    # a small token budget: fewer, evenly spaced frames
    ids, _, _ = official_plan(30, 24.0, 48, 80, 64 * 32, 24)
    assert ids == [0, 3, 7, 11, 14, 18, 22, 25, 29]  # k * 29.5 / 8 frames, floored


def test_video_and_mask_pair(clip_dir):
    video, mask, _ = out = prepare_source([str(clip_dir / "video.mp4")],
                                          [str(clip_dir / "mask.mp4")], [None], 81, (64, 32),
                                          "cpu")
    ids, oh, ow = official_plan(25, 24.0, 48, 80, 64 * 32, 168)  # cut to the 25-frame mask
    assert len(ids) == 25 and out.info[0].frame_ids == ids
    assert video[0].shape == (3, 25, oh, ow) and mask[0].shape == (1, 25, oh, ow)
    assert rel_err(video[0], official_read(clip_dir / "video.mp4", ids, oh, ow, 25)) <= 1e-6
    expect = torch.clamp((official_read(clip_dir / "mask.mp4", ids, oh, ow)[:1] + 1) / 2, 0, 1)
    assert torch.equal(mask[0], expect)
    assert mask[0].min() >= 0 and mask[0].max() <= 1
    assert (mask[0][..., : ow // 2 - 4] > 0.9).all() and (mask[0][..., ow // 2 + 4:] < 0.1).all()
    # a mask clip of another size is resized to the video's output size (official)
    _, small, _ = prepare_source([str(clip_dir / "video.mp4")],
                                 [str(clip_dir / "mask_small.mp4")], [None], 81, (64, 32), "cpu")
    assert small[0].shape == (1, 25, oh, ow)


def test_defaults_without_video_or_mask():
    video, mask, refs = out = prepare_source([None, None], [None, None], None, 9, (48, 32), "cpu")
    for v, m in zip(video, mask):
        assert torch.equal(v, torch.zeros(3, 9, 32, 48)) and torch.equal(m, torch.ones(1, 9, 32, 48))
    assert refs == [None, None] and out.frame_nums == [9, 9] and out.sizes == [(48, 32)] * 2
    t = torch.rand(3, 5, 32, 16) * 2 - 1
    video, mask, _ = prepare_source([t], [None], [None], 81, (832, 480), "cpu")
    assert torch.equal(video[0], t) and torch.equal(mask[0], torch.ones(1, 5, 32, 16))


def test_reference_images_in_a_white_canvas(tmp_path, clip_dir):
    wide = random_image(tmp_path / "wide.png", 30, 20, seed=1)
    tall = random_image(tmp_path / "tall.png", 10, 40, seed=2)
    same = random_image(tmp_path / "same.png", 64, 32, seed=3)
    _, _, refs = prepare_source([None], [None], [[str(wide), None, str(tall), str(same)]], 5,
                                (64, 32), "cpu")
    assert len(refs[0]) == 3 and all(r.shape == (3, 1, 32, 64) for r in refs[0])
    for r, p in zip(refs[0], [wide, tall, same]):
        assert rel_err(r, official_reference(p, 32, 64)) <= 1e-6
    # 30x20 -> 48x32 at left 8: white around it
    assert torch.equal(refs[0][0][..., :8], torch.ones(3, 1, 32, 8))
    assert torch.equal(refs[0][0][..., 56:], torch.ones(3, 1, 32, 8))
    assert refs[0][0][..., 8:56].min() < 0.9
    # the canvas is the video's size, read from the clip
    _, _, refs = prepare_source([str(clip_dir / "video.mp4")], [None], [[str(tall)]], 81,
                                (832, 480), "cpu")
    assert refs[0][0].shape == (3, 1, 48, 80)
    assert rel_err(refs[0][0], official_reference(tall, 48, 80)) <= 1e-6


def test_errors(tmp_path, clip_dir):
    video = str(clip_dir / "video.mp4")
    with pytest.raises(ValueError, match="without a src_video"):
        prepare_source([None], [video], [None], 9, (64, 32), "cpu")
    with pytest.raises(ValueError, match="same frames and size"):
        prepare_source([torch.zeros(3, 5, 32, 32)], [torch.ones(1, 5, 16, 32)], [None], 5,
                       (32, 32), "cpu")
    with pytest.raises(ValueError, match="same frames and size"):
        prepare_source([torch.zeros(3, 5, 32, 32)], [torch.ones(1, 9, 32, 32)], [None], 5,
                       (32, 32), "cpu")
    with pytest.raises(ValueError, match="4n\\+1 frames"):
        prepare_source([torch.zeros(3, 6, 32, 32)], [None], [None], 5, (32, 32), "cpu")
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(ValueError, match="bad.mp4"):
        prepare_source([str(bad)], [None], [None], 9, (64, 32), "cpu")
    with pytest.raises(ValueError, match="bad.mp4"):
        prepare_source([video], [str(bad)], [None], 9, (64, 32), "cpu")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        prepare_source([str(tmp_path / "missing.mp4")], [None], [None], 9, (64, 32), "cpu")
    img = tmp_path / "bad.png"
    img.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="bad.png"):
        prepare_source([None], [None], [[str(img)]], 9, (64, 32), "cpu")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        prepare_source([None], [None], [[str(tmp_path / "nope.png")]], 9, (64, 32), "cpu")
    with pytest.raises(ValueError, match="one entry per sample"):
        prepare_source([None, None], [None], [None], 9, (64, 32), "cpu")


def test_processor_constants():
    assert vace_seq_len(720 * 1280) == 75600 and vace_seq_len(480 * 832) == 32760
    assert VaceVideoProcessor(832 * 480).seq_len == 32760
    plan = plan_clip(np.array([[0, 0.0625]], dtype=np.float32), 480, 832, area=480 * 832,
                     seq_len=32760)
    assert (plan.frame_ids, plan.height, plan.width) == ([0], 480, 832)


# --------------------------------------------------------------------- the vace_inputs helper
def run_helper(*args):
    return subprocess.run([sys.executable, "-m", "wan.utils.vace_inputs", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_outpaint_helper(clip_dir, tmp_path):
    r = run_helper("outpaint", clip_dir / "video.mp4", "--to", "128*64", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    video_path, mask_path = (Path(p) for p in r.stdout.split())
    assert video_path == tmp_path / "src_video.mp4" and mask_path == tmp_path / "src_mask.mp4"
    video, fps = read_video(video_path)
    mask, _ = read_video(mask_path)
    src, _ = read_video(clip_dir / "video.mp4")
    assert video.shape == mask.shape == (30, 64, 128, 3) and fps == 24.0
    # 80x48 centred on 128x64: left 24, top 8
    m = mask.float()
    assert (m[:, :8] > 200).all() and (m[:, 56:] > 200).all()
    assert (m[:, :, :24] > 200).all() and (m[:, :, 104:] > 200).all()
    assert (m[:, 10:54, 26:102] < 50).all()
    inner = video[:, 8:56, 24:104].float()
    assert (inner - src.float()).abs().mean() < 8
    assert ((video[:, :6, :, :].float() - 128).abs() < 8).all()  # grey padding
    # a larger clip is scaled down to fit (aspect kept), then padded
    r = run_helper("outpaint", clip_dir / "video.mp4", "--to", "64*64", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    mask, _ = read_video(tmp_path / "s" / "src_mask.mp4")
    assert mask.shape == (30, 64, 64, 3)
    assert (mask[:, :10].float() > 200).all() and (mask[:, 24:40].float() < 50).all()


def test_inpaint_helper(clip_dir, tmp_path, capsys):
    from wan.utils.vace_inputs import main

    assert main(["inpaint", str(clip_dir / "video.mp4"), "--box", "16,8,48,40",
                 "--out", str(tmp_path)]) == 0
    video_path, mask_path = (Path(p) for p in capsys.readouterr().out.split())
    assert video_path.read_bytes() == (clip_dir / "video.mp4").read_bytes()
    mask, fps = read_video(mask_path)
    assert mask.shape == (30, 48, 80, 3) and fps == 24.0
    m = mask.float()
    assert (m[:, 10:38, 18:46] > 200).all()
    assert (m[:, :6] < 50).all() and (m[:, 42:] < 50).all() and (m[:, :, 50:] < 50).all()
    # read back as a VACE pair: 1 inside the box, 0 outside
    _, masks, _ = prepare_source([str(video_path)], [str(mask_path)], [None], 81, (832, 480),
                                 "cpu")
    assert (masks[0][:, :, 12:36, 20:44] > 0.9).all() and (masks[0][:, :, :, 52:] < 0.1).all()


@pytest.mark.parametrize("args,message", [
    (["outpaint", "{video}", "--to", "832x", "--out", "{out}"], "WIDTH*HEIGHT"),
    (["outpaint", "{video}", "--to", "81*48", "--out", "{out}"], "even"),
    (["outpaint", "{video}", "--to", "80*48", "--out", "{out}"], "nothing to outpaint"),
    (["outpaint", "{missing}", "--to", "832*480", "--out", "{out}"], "not found"),
    (["inpaint", "{video}", "--box", "1,2,3", "--out", "{out}"], "x0,y0,x1,y1"),
    (["inpaint", "{video}", "--box", "10,10,5,20", "--out", "{out}"], "x0 < x1"),
    (["inpaint", "{video}", "--box", "0,0,90,20", "--out", "{out}"], "outside"),
    (["inpaint", "{bad}", "--box", "0,0,8,8", "--out", "{out}"], "cannot read"),
])
def test_helper_errors(clip_dir, tmp_path, capsys, args, message):
    from wan.utils.vace_inputs import main

    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    fill = dict(video=clip_dir / "video.mp4", missing=tmp_path / "missing.mp4", bad=bad,
                out=tmp_path / "out")
    assert main([a.format(**fill) for a in args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
