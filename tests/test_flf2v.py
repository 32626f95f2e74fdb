"""First-last-frame-to-video: the FLF2V DiT and WanFLF2V against diffusers and the official recipe."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import rel_err
from test_model import SIZES, diffusers_model, reference
from test_pipeline import diffusers_components, fp32_config
from wan.first_last_frame2video import fit_to_size
from wan.image2video import frame_mask, i2v_latent_size, image_to_tensor
from wan.modules.model import WanModel, is_matmul_weight
from wan.sampling import initial_noise
from wan.utils.checkpoint import CheckpointError
from wan.utils.tiny_checkpoint import write_dit


def random_image(h, w, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


# ------------------------------------------------------------------ DiT
@pytest.fixture(scope="module")
def dit_pair(tmp_path_factory):
    folder = write_dit(tmp_path_factory.mktemp("dit_flf2v"), "flf2v", SIZES, seed=4)
    # A position table as large as the CLIP features, so that its effect is well visible.
    weights = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(weights)
    sd["img_emb.emb_pos"] = torch.randn(sd["img_emb.emb_pos"].shape,
                                        generator=torch.Generator().manual_seed(0))
    save_file(sd, weights)
    return WanModel.from_pretrained(folder), diffusers_model(folder, "flf2v")


def diffusers_image_tokens(clip_fea):
    """diffusers' WanImageEmbedding takes ``[2, 257, d]`` per sample and views it as ``[1, 514, d]``."""
    return clip_fea.reshape(2, 257, clip_fea.size(-1))


@pytest.mark.parametrize("shape", [(1, 4, 6), (3, 6, 4)])
def test_dit_parity_with_diffusers(dit_pair, shape):
    ours, ref = dit_pair
    assert ours.model_type == "flf2v" and ours.img_emb.emb_pos.shape == (1, 514, SIZES.clip_width)
    assert ref.condition_embedder.image_embedder.pos_embed.shape == (1, 514, SIZES.clip_width)
    g = torch.Generator().manual_seed(sum(shape))
    f, h, w = shape
    x, y = torch.randn(16, f, h, w, generator=g), torch.randn(20, f, h, w, generator=g)
    ctx = torch.randn(9, SIZES.t5_dim, generator=g)
    clip = torch.randn(1, 514, SIZES.clip_width, generator=g)
    t = torch.tensor([640])
    with torch.no_grad():
        a = ours([x], t, [ctx], f * h * w // 4, clip_fea=clip, y=[y])[0]
        b = reference(ref, "flf2v", x, t, ctx, diffusers_image_tokens(clip), y)
        # The position table matters: without it the output changes.
        pos = ours.img_emb.emb_pos.clone()
        ours.img_emb.emb_pos.zero_()
        c = ours([x], t, [ctx], f * h * w // 4, clip_fea=clip, y=[y])[0]
        ours.img_emb.emb_pos.copy_(pos)
        emb = ours.img_emb(clip)
        emb_ref = ref.condition_embedder.image_embedder(diffusers_image_tokens(clip))
    err = rel_err(a, b)
    print(f"flf2v DiT fp32 relative error vs diffusers: {err:.2e}, without emb_pos: "
          f"{rel_err(c, b):.2e}; image embedding: {rel_err(emb, emb_ref):.2e}")
    assert err <= 1e-5
    assert rel_err(emb, emb_ref) <= 1e-6
    assert rel_err(c, b) > 10 * err


def test_dit_batch_of_two_and_token_count(dit_pair):
    ours, ref = dit_pair
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(16, 2, 4, 6, generator=g) for _ in range(2)]
    ys = [torch.randn(20, 2, 4, 6, generator=g) for _ in range(2)]
    ctxs = [torch.randn(n, SIZES.t5_dim, generator=g) for n in (4, 12)]
    clip = torch.randn(2, 514, SIZES.clip_width, generator=g)
    t = torch.tensor([900, 100])
    with torch.no_grad():
        outs = ours(xs, t, ctxs, 12, clip_fea=clip, y=ys)
        for i in range(2):
            b = reference(ref, "flf2v", xs[i], t[i], ctxs[i], diffusers_image_tokens(clip[i]), ys[i])
            assert rel_err(outs[i], b) <= 1e-5
        with pytest.raises(ValueError, match="takes 514 CLIP tokens.*got 257"):
            ours(xs[:1], t[:1], ctxs[:1], 12, clip_fea=clip[:, :257], y=ys[:1])


def test_emb_pos_is_not_a_matmul_weight(tmp_path):
    assert not is_matmul_weight("img_emb.emb_pos") and is_matmul_weight("img_emb.proj.1.weight")
    folder = write_dit(tmp_path / "m", "flf2v", SIZES, seed=1)
    half = WanModel.from_pretrained(folder, matmul_dtype=torch.bfloat16)
    assert half.img_emb.emb_pos.dtype == torch.float32
    assert half.img_emb.proj[1].weight.dtype == torch.bfloat16


# ------------------------------------------------------------------ checkpoints
def test_i2v_dit_for_flf2v_is_refused(tmp_path):
    folder = write_dit(tmp_path / "i2v", "i2v", SIZES)
    with pytest.raises(CheckpointError, match=r"holds a i2v DiT \(config.json 'model_type' 'i2v', "
                       r"in_dim 36, no 'img_emb.emb_pos' tensor\) but a flf2v model is needed"):
        WanModel.from_pretrained(folder, model_type="flf2v")


def test_i2v_folder_for_the_flf2v_pipeline_is_refused(i2v_ckpt):
    import wan

    with pytest.raises(CheckpointError, match="i2v DiT.*no 'img_emb.emb_pos'.*flf2v model is needed"):
        wan.WanFLF2V(fp32_config("flf2v-14B"), i2v_ckpt, device_id="cpu")


def test_model_type_and_emb_pos_must_agree(tmp_path):
    folder = write_dit(tmp_path / "m", "flf2v", SIZES)
    cfg_file, weights = folder / "config.json", folder / "diffusion_pytorch_model.safetensors"
    cfg = json.loads(cfg_file.read_text())
    del cfg["model_type"]  # then the type comes from the tensors
    cfg_file.write_text(json.dumps(cfg))
    assert WanModel.from_pretrained(folder).model_type == "flf2v"
    cfg["model_type"] = "i2v"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type 'i2v' but the weights have .*emb_pos"):
        WanModel.from_pretrained(folder)
    cfg["model_type"] = "flf2v"
    cfg_file.write_text(json.dumps(cfg))
    sd = load_file(weights)
    del sd["img_emb.emb_pos"]
    save_file(sd, weights)
    with pytest.raises(CheckpointError, match="model_type 'flf2v' but the weights lack .*emb_pos"):
        WanModel.from_pretrained(folder)


def test_tiny_checkpoint_cli_writes_a_loadable_flf2v_folder(tmp_path):
    from wan.configs import WAN_CONFIGS
    from wan.utils.tiny_checkpoint import main

    main([str(tmp_path / "flf"), "--task", "flf2v-14B"])
    folder = tmp_path / "flf"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "flf2v"
    assert json.loads((folder / "config.json").read_text())["in_dim"] == 36
    model = WanModel.from_pretrained(folder, model_type="flf2v")
    assert model.img_emb.emb_pos.shape == (1, 2 * 257, SIZES.clip_width)
    cfg = WAN_CONFIGS["flf2v-14B"]
    assert (folder / cfg.clip_checkpoint).is_file() and (folder / cfg.clip_tokenizer).is_dir()


# ------------------------------------------------------------------ conditioning
@pytest.mark.parametrize("frames", [5, 9, 81])
def test_mask_marks_first_and_last_frame(frames):
    """The official recipe (``msk[:, 1:-1] = 0``, first frame x4, folded), for ``frames`` frames."""
    h, w = 3, 5
    msk = torch.ones(1, frames, h, w)
    msk[:, 1:-1] = 0
    msk = torch.cat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, h, w).transpose(1, 2)[0]
    ours = frame_mask(frames, h, w, torch.device("cpu"), last=True)
    assert ours.shape == (4, (frames - 1) // 4 + 1, h, w)
    assert torch.equal(ours, msk)
    assert bool((ours[:, 0] == 1).all())  # first latent frame: the first video frame, 4 times
    assert ours[:, -1, 0, 0].tolist() == [0, 0, 0, 1]  # last latent frame ends with the last one
    assert not ours[:, 1:-1].any()


def test_fit_to_size_covers_and_centre_crops():
    g = torch.Generator().manual_seed(0)
    same = torch.rand(3, 48, 64, generator=g) * 2 - 1
    assert fit_to_size(same, 48, 64) is same
    # Square 100x100 to 48x64: scale 0.64 -> 64x64, 8 rows cropped above and below.
    square = torch.rand(3, 100, 100, generator=g) * 2 - 1
    expected = F.interpolate(square[None], size=(64, 64), mode="bicubic", antialias=True)[0]
    torch.testing.assert_close(fit_to_size(square, 48, 64), expected.clamp(-1, 1)[:, 8:56])
    # Portrait 90x30 to a landscape 48x64: scale 64/30 -> 192x64, rows 72..119 kept.
    # Columns that are constant stay constant (the aspect ratio is kept, nothing stretched).
    stripes = torch.linspace(-1, 1, 30).expand(3, 90, 30).contiguous()
    out = fit_to_size(stripes, 48, 64)
    assert out.shape == (3, 48, 64)
    torch.testing.assert_close(out, out[:, :1].expand_as(out))
    top = torch.cat([torch.full((3, 45, 30), -1.0), torch.full((3, 45, 30), 1.0)], dim=1)
    centre = fit_to_size(top, 48, 64)  # the cut between the halves stays in the middle
    assert bool((centre[:, :20] < -0.99).all()) and bool((centre[:, 28:] > 0.99).all())


@pytest.fixture(scope="module")
def flf2v_pipe(flf2v_ckpt):
    import wan

    return wan.WanFLF2V(fp32_config("flf2v-14B"), flf2v_ckpt, device_id="cpu")


def test_conditioning_reaches_the_model(flf2v_pipe, monkeypatch):
    """y = mask + VAE latents of [first, zeros, last]; CLIP tokens of first then last frame.

    The last frame has another size: it is fitted to the first frame's size first.
    """
    pipe = flf2v_pipe
    seen = {}
    real_forward = pipe.model.forward

    def spy(x, t, context, seq_len, clip_fea=None, y=None):
        seen.update(y=y, clip_fea=clip_fea, seq_len=seq_len)
        return real_forward(x, t, context, seq_len, clip_fea=clip_fea, y=y)

    monkeypatch.setattr(pipe.model, "forward", spy)
    first, last = random_image(60, 80, 1), random_image(50, 50, 2)
    video = pipe.generate("p", first, last, max_area=64 * 48, frame_num=9, sampling_steps=1,
                          seed=1)
    assert video.shape == (3, 9, 48, 64)
    a = image_to_tensor(first)
    b = fit_to_size(image_to_tensor(last), 60, 80)
    y = seen["y"][0]
    assert y.shape == (4 + 16, 3, 6, 8)
    assert torch.equal(y[:4], frame_mask(9, 6, 8, torch.device("cpu"), last=True))
    frames = torch.cat([F.interpolate(a[None], size=(48, 64), mode="bicubic").transpose(0, 1),
                        torch.zeros(3, 7, 48, 64),
                        F.interpolate(b[None], size=(48, 64), mode="bicubic").transpose(0, 1)],
                       dim=1)
    assert rel_err(y[4:], pipe.vae.encode([frames])[0]) < 1e-6
    clip = torch.cat([pipe.clip.visual([a[:, None]]), pipe.clip.visual([b[:, None]])], dim=1)
    assert seen["clip_fea"].shape == (2, 514, SIZES.clip_width)  # cond + uncond batch
    assert rel_err(seen["clip_fea"][:1], clip) < 1e-6
    assert seen["seq_len"] == 3 * 6 * 8 // 4


@pytest.mark.parametrize("args,match", [
    (("not an image", None), "first_frame: img must be a PIL image"),
    ((None, torch.zeros(4, 32, 32)), "last_frame: the input image must have 3 channels"),
    ((None, None, dict(frame_num=1)), "frame_num must be at least 5"),
    ((None, None, dict(frame_num=6)), "4n\\+1"),
])
def test_bad_inputs(flf2v_pipe, args, match):
    first = args[0] if args[0] is not None else random_image(32, 32, 0)
    last = args[1] if args[1] is not None else random_image(32, 32, 1)
    kw = dict(max_area=32 * 32, frame_num=5, sampling_steps=1)
    kw.update(args[2] if len(args) > 2 else {})
    with pytest.raises(ValueError, match=match):
        flf2v_pipe.generate("x", first, last, **kw)


# ------------------------------------------------------------------ end to end
class OfficialCLIPPixels:
    """Stands in for diffusers' ``image_processor``: the official CLIP preprocessing.

    The official ``CLIPModel.visual`` resizes the whole frame (bicubic, on the
    [-1, 1] tensor) to 224x224 and normalises with the CLIP mean/std;
    ``CLIPImageProcessor`` resizes the short side to 224 with PIL and
    centre-crops, which sees another part of a non-square image.
    """

    def __call__(self, images, return_tensors="pt"):
        from transformers import BatchFeature

        from test_clip import reference_pixels

        frames = [image_to_tensor(img)[:, None] for img in images]
        return BatchFeature({"pixel_values": reference_pixels(frames)})


def official_resize(image, height, width, **_):
    """Stands in for diffusers' ``video_processor.preprocess``: the official bicubic resize
    of the [-1, 1] tensor (``F.interpolate``), not PIL's Lanczos on the 8-bit image."""
    return F.interpolate(image_to_tensor(image)[None], size=(height, width), mode="bicubic")


def test_flf2v_matches_diffusers_image_to_video_pipeline(flf2v_pipe, flf2v_ckpt, monkeypatch):
    """``WanFLF2V.generate`` (fp32) equals diffusers' ``WanImageToVideoPipeline(image=first,
    last_image=last)`` on the same weights, noise and official UniPC grid.

    Where diffusers' preprocessing differs from the official code, the official
    one is fed to both (mask and DiT need nothing: they agree):

    * CLIP input: diffusers' ``CLIPImageProcessor`` (short side to 224 with PIL,
      centre crop) is replaced by the official preprocessing (the whole frame,
      bicubic on the tensor, to 224x224) -- :class:`OfficialCLIPPixels`;
    * frames for the VAE: diffusers' ``video_processor.preprocess`` (PIL Lanczos
      on the 8-bit image) is replaced by the official bicubic ``F.interpolate``
      of the [-1, 1] tensor -- :func:`official_resize`;
    * output size: diffusers takes ``height``/``width``; they are given as the
      official ``max_area`` rule computes them from the first frame;
    * scheduler: diffusers' UniPC is given the official shifted sigma grid;
    * the CLIP tokens: diffusers passes ``[2, 257, d]`` and views them as
      ``[1, 514, d]`` in ``WanImageEmbedding`` (as the official ``MLPProj``);
      WanFLF2V passes ``[1, 514, d]`` (first frame, then last) directly.
    The mask needs nothing: diffusers marks frames 0 and ``num_frames - 1`` of
    ``num_frames``, as WanFLF2V (the official one assumes 81 frames).
    """
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor

    from test_clip import OFFICIAL_MEAN, OFFICIAL_STD, hf_vision_model

    prompt, negative = "A red fox runs across a snowy field at dawn.", "blurry, static"
    frames, steps, shift, guide, seed, max_area = 9, 4, 16.0, 5.5, 4321, 64 * 48
    first, last = random_image(60, 80, 5), random_image(60, 80, 6)  # same size, as the official
    ours = flf2v_pipe.generate(prompt, first, last, max_area=max_area, frame_num=frames,
                               shift=shift, sampling_steps=steps, guide_scale=guide,
                               n_prompt=negative, seed=seed)
    lat_h, lat_w = i2v_latent_size(60, 80, max_area, (4, 8, 8), (1, 2, 2))
    height, width = lat_h * 8, lat_w * 8
    assert ours.shape == (3, frames, height, width) == (3, 9, 48, 64)

    cfg = fp32_config("flf2v-14B")
    clip_sd = torch.load(flf2v_ckpt / cfg.clip_checkpoint, weights_only=True)
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=224,
                                   image_mean=OFFICIAL_MEAN, image_std=OFFICIAL_STD)
    ref = WanImageToVideoPipeline(
        **diffusers_components(flf2v_ckpt, shift, "flf2v"), image_processor=processor,
        image_encoder=hf_vision_model(clip_sd, SIZES.clip_width, SIZES.clip_layers,
                                      int(SIZES.clip_width * SIZES.clip_mlp_ratio)))
    # diffusers' own CLIP preprocessing sees another crop of this 4:3 frame.
    own = processor(images=[first], return_tensors="pt")["pixel_values"]
    assert rel_err(own, OfficialCLIPPixels()([first])["pixel_values"]) > 1e-2
    monkeypatch.setattr(ref, "image_processor", OfficialCLIPPixels())
    monkeypatch.setattr(ref.video_processor, "preprocess", official_resize)

    noise = initial_noise((16, (frames - 1) // 4 + 1, lat_h, lat_w), seed, torch.device("cpu"))
    with torch.no_grad():
        out = ref(image=first, last_image=last, prompt=prompt, negative_prompt=negative,
                  height=height, width=width, num_frames=frames, num_inference_steps=steps,
                  guidance_scale=guide, latents=noise[None], output_type="pt",
                  max_sequence_length=512).frames[0]
    ref_video = out.permute(1, 0, 2, 3) * 2 - 1  # [F, C, H, W] in [0, 1] -> [C, F, H, W]
    err = rel_err(ours, ref_video)
    print(f"flf2v end-to-end relative error vs diffusers WanImageToVideoPipeline: {err:.2e}")
    assert err <= 1e-4
