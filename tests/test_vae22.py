"""Wan2.2 VAE: parity with diffusers' AutoencoderKLWan (is_residual=True, 2x2 patches), chunk
invariance, tiling, input checks and wrong-kind files."""

import time

import pytest
import torch

import wan.modules.vae as vae_mod
from conftest import rel_err
# The Wan2.1 tests below hold for any VAE behind the WanVAE interface: imported here, they
# run again with this module's `vae` fixture (the Wan2.2 VAE); so does the tiling spy.
from test_vae import (random_video, test_causality_first_frames_are_independent_of_later_ones,
                      test_encode_does_not_depend_on_chunk_length)
from test_vae_tiling import smooth_video, spy_tiling
from wan.modules.vae import WanVAE, estimate_decode_bytes, init_random_weights, tiled_decode, \
    tiled_encode
from wan.modules.vae2_2 import (LATENT_MEAN_22, LATENT_STD_22, VideoVAE22, Wan2_2_VAE,
                                patchify, unpatchify)
from wan.utils.checkpoint import CheckpointError
from wan.utils.tiny_checkpoint import TinySizes, write_vae, write_vae22

DIM, DEC_DIM = 10, 16  # miniature encoder / decoder base widths (released: 160 / 256)
TOL = 1e-5
MEAN = torch.tensor(LATENT_MEAN_22).view(1, -1, 1, 1, 1)
STD = torch.tensor(LATENT_STD_22).view(1, -1, 1, 1, 1)

_RESNET_NAMES = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight",
                 "residual.2.bias": "conv1.bias", "residual.3.gamma": "norm2.gamma",
                 "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
                 "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}


def _resnet(prefix: str, rest: str) -> str:
    return f"{prefix}.{_RESNET_NAMES[rest]}"


def to_diffusers_22(sd: dict) -> dict:
    """Official Wan2.2 VAE names -> diffusers' (the mapping of ``convert_vae_22`` in diffusers'
    scripts/convert_wan_to_diffusers.py)."""
    out = {}
    fixed = {"conv1": "quant_conv", "conv2": "post_quant_conv",
             "encoder.conv1": "encoder.conv_in", "decoder.conv1": "decoder.conv_in",
             "encoder.head.0": "encoder.norm_out", "encoder.head.2": "encoder.conv_out",
             "decoder.head.0": "decoder.norm_out", "decoder.head.2": "decoder.conv_out"}
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        parts = key.split(".")
        if module in fixed:
            new = f"{fixed[module]}.{leaf}"
        elif parts[1] == "middle":
            side, idx, rest = parts[0], int(parts[2]), ".".join(parts[3:])
            new = (f"{side}.mid_block.attentions.0.{rest}" if idx == 1 else
                   _resnet(f"{side}.mid_block.resnets.{idx // 2}", rest))
        elif parts[1] in ("downsamples", "upsamples"):
            side, level, block, rest = parts[0], parts[2], parts[4], ".".join(parts[5:])
            outer = "down_blocks" if side == "encoder" else "up_blocks"
            if rest.startswith(("resample", "time_conv")):
                sampler = "downsampler" if side == "encoder" else "upsampler"
                new = f"{side}.{outer}.{level}.{sampler}.{rest}"
            else:
                new = _resnet(f"{side}.{outer}.{level}.resnets.{block}", rest)
        else:
            raise KeyError(key)
        out[new] = value
    return out


def diffusers_vae22(path, base_dim=DIM, decoder_base_dim=DEC_DIM):
    """diffusers' AutoencoderKLWan (Wan2.2 configuration) holding the weights of ``path``."""
    from diffusers import AutoencoderKLWan

    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = AutoencoderKLWan(
        base_dim=base_dim, decoder_base_dim=decoder_base_dim, z_dim=48, is_residual=True,
        in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
        scale_factor_spatial=16, latents_mean=list(LATENT_MEAN_22),
        latents_std=list(LATENT_STD_22), dim_mult=[1, 2, 4, 4], num_res_blocks=2,
        attn_scales=[], temperal_downsample=[False, True, True])
    model.load_state_dict(to_diffusers_22(sd), strict=True)
    return model.eval()


class Reference:
    """diffusers' model behind the normalised-latent interface of Wan2_2_VAE."""

    def __init__(self, model):
        self.model = model

    def encode(self, video):
        with torch.no_grad():
            return (self.model.encode(video[None]).latent_dist.mean - MEAN).div(STD)[0]

    def decode(self, z):
        with torch.no_grad():
            return self.model.decode(z[None] * STD + MEAN).sample[0]


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    return write_vae22(tmp_path_factory.mktemp("vae22") / "Wan2.2_VAE.pth", DIM, DEC_DIM, seed=5)


@pytest.fixture(scope="module")
def vae(vae_file):
    return Wan2_2_VAE(vae_pth=vae_file, device="cpu")


@pytest.fixture(scope="module")
def reference(vae_file):
    return Reference(diffusers_vae22(vae_file))


# --------------------------------------------------------------------- parity
@pytest.mark.parametrize("frames,h,w", [(1, 16, 48), (5, 32, 16), (9, 16, 32)])
def test_encode_matches_diffusers(vae, reference, frames, h, w):
    video = random_video(frames, h, w)
    (ours,) = vae.encode([video])
    assert ours.shape == (48, 1 + (frames - 1) // 4, h // 16, w // 16)
    assert ours.dtype == torch.float32
    assert rel_err(ours, reference.encode(video)) <= TOL
    (back,) = vae.decode([ours])  # and the round trip
    assert back.shape == video.shape
    assert rel_err(back, reference.decode(ours)) <= TOL


@pytest.mark.parametrize("latents,h,w", [(1, 1, 3), (2, 2, 1), (3, 1, 2)])
def test_decode_matches_diffusers(vae, reference, latents, h, w):
    z = torch.randn(48, latents, h, w, generator=torch.Generator().manual_seed(latents))
    (ours,) = vae.decode([z])
    assert ours.shape == (3, 1 + 4 * (latents - 1), 16 * h, 16 * w)
    assert (ours.abs() < 1).float().mean() > 0.8  # most pixels are not clamped
    assert rel_err(ours, reference.decode(z)) <= TOL
    assert ours.min() >= -1 and ours.max() <= 1


def test_patches_round_trip_in_the_official_channel_order():
    x = torch.arange(2 * 3 * 1 * 4 * 6, dtype=torch.float32).view(2, 3, 1, 4, 6)
    p = patchify(x)
    assert p.shape == (2, 12, 1, 2, 3)
    # channel c*4 + 2*j + i holds row offset i, column offset j (einops "(c r q)")
    assert torch.equal(p[:, 4 * 1 + 2 * 1 + 0], x[:, 1, :, 0::2, 1::2])
    assert torch.equal(unpatchify(p), x)


# --------------------------------------------------------------------- chunking
def test_decode_does_not_depend_on_chunk_length(vae):
    z = torch.randn(48, 5, 1, 2, generator=torch.Generator().manual_seed(7))
    (default,) = vae.decode([z])
    for chunk in (2, 3, 5):
        (video,) = vae.decode([z], chunk_latents=chunk)
        assert rel_err(video, default) <= TOL, chunk


# --------------------------------------------------------------------- tiling
@pytest.fixture(scope="module")
def tiny():
    model = VideoVAE22(dim=DIM, dec_dim=DEC_DIM).eval().requires_grad_(False)
    init_random_weights(model, 11)
    return model


@pytest.fixture(scope="module")
def tiny_latents(tiny):
    """Latents of a smooth 5-frame 128x768 video (8x48 latents) and their untiled decode."""
    with torch.no_grad():
        z = tiny.encode(smooth_video(5, 128, 768))
        return z, tiny.decode(z).clamp_(-1, 1)


def test_tiled_decode_within_one_tile_is_the_untiled_decode(tiny):
    z = torch.randn(1, 48, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(tiled_decode(tiny, z, tile=16), tiny.decode(z))


def test_tiled_decode_blends_seams_away(tiny, tiny_latents):
    """The bounds of the Wan2.1 VAE's tiling test (tests/test_vae_tiling.py), with the default
    tile (32 latents, sharing at least 8: here 2 tiles sharing 16). The Wan2.2 decoder sees
    farther in latents: 24-latent tiles sharing 8 give a mean error of about 2e-4 here."""
    z, untiled = tiny_latents
    with torch.no_grad():
        tiled = tiled_decode(tiny, z, tile=32, overlap=8).clamp_(-1, 1)
    assert tiled.shape == untiled.shape == (1, 3, 5, 128, 768)
    assert (tiled - untiled).abs().max() <= 0.02
    assert (tiled - untiled).abs().mean() <= 1e-4


def test_tiled_encode_matches_untiled(tiny):
    video = smooth_video(5, 128, 512)
    with torch.no_grad():
        untiled = tiny.encode(video)
        tiled = tiled_encode(tiny, video, tile=24, overlap=8)
        seam = tiled_encode(tiny, video, tile=16, overlap=0)  # 2 tiles side by side
    assert tiled.shape == untiled.shape == (1, 48, 2, 8, 32)
    assert (tiled - untiled).abs().max() <= 1e-2
    assert (seam - untiled).abs().max() > 10 * (tiled - untiled).abs().max()


def test_tiling_setting_is_used_by_the_wrapper(vae, monkeypatch, spy_tiling):
    monkeypatch.setattr(vae_mod, "free_memory_bytes", lambda device: 1)
    z = torch.randn(48, 1, 2, 20, generator=torch.Generator().manual_seed(2))
    try:
        vae.tiling = "off"
        vae.decode([z])
        assert spy_tiling == []
        vae.tiling = "auto"  # nothing fits in 1 byte: tiles
        (auto,) = vae.decode([z])
        vae.tiling = vae_mod.TilingConfig(mode="on", tile=16, overlap=4)
        vae.decode([z])
        vae.encode([torch.zeros(3, 1, 32, 288)])
    finally:
        vae.tiling = "auto"
    assert spy_tiling == [("tiled_decode", 32, 8), ("tiled_decode", 16, 4),
                          ("tiled_encode", 16, 4)]
    assert auto.shape == (3, 1, 32, 320)


# --------------------------------------------------------------------- wrapper
def test_attributes_like_official(vae):
    assert len(LATENT_MEAN_22) == len(LATENT_STD_22) == 48
    assert torch.allclose(vae.mean, torch.tensor(LATENT_MEAN_22))
    assert torch.allclose(vae.scale[1], 1 / torch.tensor(LATENT_STD_22))
    assert vae.model.z_dim == 48 and (vae.model.dim, vae.model.dec_dim) == (DIM, DEC_DIM)
    assert vae.dtype == torch.float32 and vae.device == torch.device("cpu")
    assert not any(p.requires_grad for p in vae.model.parameters())


def test_written_file_has_the_official_layout(vae_file):
    sd = torch.load(vae_file, weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values())
    d, e = DIM, DEC_DIM
    assert sd["encoder.conv1.weight"].shape == (d, 12, 3, 3, 3)
    assert sd["encoder.downsamples.1.downsamples.2.time_conv.weight"].shape == (2 * d, 2 * d, 3, 1, 1)
    assert sd["encoder.downsamples.0.downsamples.2.resample.1.weight"].shape == (d, d, 3, 3)
    assert sd["encoder.head.2.weight"].shape == (96, 4 * d, 3, 3, 3)
    assert sd["decoder.conv1.weight"].shape == (4 * e, 48, 3, 3, 3)
    assert sd["decoder.upsamples.0.upsamples.3.time_conv.weight"].shape == (8 * e, 4 * e, 3, 1, 1)
    assert sd["decoder.upsamples.2.upsamples.3.resample.1.weight"].shape == (2 * e, 2 * e, 3, 3)
    assert sd["decoder.upsamples.3.upsamples.0.shortcut.weight"].shape == (e, 2 * e, 1, 1, 1)
    assert sd["decoder.head.2.weight"].shape == (12, e, 3, 3, 3)
    assert sd["conv1.weight"].shape == (96, 96, 1, 1, 1)
    assert sd["conv2.weight"].shape == (48, 48, 1, 1, 1)


@pytest.mark.parametrize("shape,message", [
    ((3, 5, 24, 32), "is 24x32 pixels; height and width must be multiples of 16"),
    ((3, 4, 16, 16), "has 4 frames; the VAE needs 4n+1 frames"),
    ((4, 5, 16, 16), "has 4 channels; the VAE needs 3"),
])
def test_encode_rejects_bad_videos(vae, shape, message):
    with pytest.raises(ValueError) as e:
        vae.encode([torch.zeros(shape)])
    assert message in str(e.value) and "Wan2_2_VAE.encode: video 0" in str(e.value)


def test_decode_rejects_wan21_latents(vae):
    with pytest.raises(ValueError, match="has 16 channels; the VAE needs 48"):
        vae.decode([torch.zeros(16, 1, 2, 2)])
    with pytest.raises(ValueError, match="Wan2_2_VAE expects a list of tensors"):
        vae.decode(torch.zeros(48, 1, 2, 2))


def test_z_dim_other_than_48_is_rejected(vae_file):
    with pytest.raises(ValueError, match="z_dim must be 48"):
        Wan2_2_VAE(z_dim=16, vae_pth=vae_file, device="cpu")


# --------------------------------------------------------------------- wrong files
def test_wan21_file_given_to_wan22_vae(tmp_path):
    path = write_vae(tmp_path / "Wan2.1_VAE.pth", TinySizes(), seed=1)
    with pytest.raises(CheckpointError) as e:
        Wan2_2_VAE(vae_pth=path, device="cpu")
    msg = str(e.value)
    assert "holds a Wan2.1 VAE (16 latent channels, 3 input channels)" in msg
    assert "not a Wan2.2 VAE (48 latent channels" in msg and "Wan2.2_VAE.pth" in msg
    assert str(path) in msg


def test_wan22_file_given_to_wan21_vae(vae_file):
    with pytest.raises(CheckpointError) as e:
        WanVAE(vae_pth=vae_file, device="cpu")
    msg = str(e.value)
    assert "holds a Wan2.2 VAE (48 latent channels, 12 input channels)" in msg
    assert "not a Wan2.1 VAE" in msg and "pass Wan2.1_VAE.pth" in msg


def test_bf16_file_loads_in_fp32_and_missing_tensors_or_files_are_named(vae_file, tmp_path):
    sd = torch.load(vae_file, weights_only=True)
    key = "decoder.upsamples.1.upsamples.3.time_conv.weight"
    files = {"bf16": {k: v.to(torch.bfloat16) for k, v in sd.items()},
             "missing": {k: v for k, v in sd.items() if k != key}}
    for name, tensors in files.items():
        torch.save(tensors, tmp_path / f"{name}.pth")
    loaded = Wan2_2_VAE(vae_pth=tmp_path / "bf16.pth", device="cpu")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    with pytest.raises(CheckpointError, match="1 missing tensors") as e:
        Wan2_2_VAE(vae_pth=tmp_path / "missing.pth", device="cpu")
    assert key in str(e.value)
    with pytest.raises(CheckpointError, match="Wan2.2 VAE checkpoint not found"):
        Wan2_2_VAE(vae_pth=tmp_path / "nothing.pth", device="cpu")


# --------------------------------------------------------------------- real size
@pytest.mark.slow
def test_real_size_decode_of_17_frames_at_352x640():
    """Released widths (160 / 256), random weights: decode 5 x 22 x 40 latents (17 frames of
    352 x 640); prints the time and the peak RSS growth of the decode."""
    from memory_probe import PeakRSS

    model = VideoVAE22().eval().requires_grad_(False)
    init_random_weights(model, 3)
    assert sum(p.numel() for p in model.parameters()) > 500_000_000
    z = torch.randn(1, 48, 5, 22, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), PeakRSS() as probe:
        start = time.perf_counter()
        out = model.decode(z)
        seconds = time.perf_counter() - start
    assert out.shape == (1, 3, 17, 352, 640) and torch.isfinite(out).all()
    estimate = estimate_decode_bytes(model, 22, 40)
    print(f"\nWan2.2 VAE decode 5x22x40 -> 17x352x640 on {torch.get_num_threads()} threads: "
          f"{seconds:.1f} s, peak RSS growth {probe.growth / 2**30:.2f} GiB "
          f"(estimate {estimate / 2**30:.2f} GiB)")
