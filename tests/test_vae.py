"""VAE: parity with diffusers' AutoencoderKLWan, chunk invariance, input and file errors."""

import pytest
import torch

from conftest import rel_err
from wan.modules.vae import LATENT_MEAN, LATENT_STD, WanVAE
from wan.utils.checkpoint import CheckpointError
from wan.utils.tiny_checkpoint import TinySizes, write_vae

SIZES = TinySizes()
TOL = 1e-5
MEAN = torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1)
STD = torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1)


def diffusers_vae(path, base_dim):
    """diffusers' AutoencoderKLWan holding the weights of the official-format file ``path``."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = AutoencoderKLWan(base_dim=base_dim, z_dim=16, dim_mult=[1, 2, 4, 4],
                             num_res_blocks=2, attn_scales=[],
                             temperal_downsample=[False, True, True])
    model.load_state_dict(convert_wan_vae_to_diffusers(sd), strict=True)
    return model.eval()


def reference_encode(model, video):
    """diffusers' posterior mean, normalised as WanVAE.encode does."""
    with torch.no_grad():
        mean = model.encode(video[None]).latent_dist.mean
    return ((mean - MEAN) / STD)[0]


def reference_decode(model, z):
    """diffusers' decode (clamped to [-1, 1]) of normalised latents."""
    with torch.no_grad():
        return model.decode(z[None] * STD + MEAN).sample[0]


def random_video(frames, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, frames, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    return write_vae(tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth", SIZES, seed=5)


@pytest.fixture(scope="module")
def vae(vae_file):
    return WanVAE(vae_pth=vae_file, device="cpu")


@pytest.fixture(scope="module")
def reference(vae_file):
    return diffusers_vae(vae_file, SIZES.vae_dim)


# --------------------------------------------------------------------- parity
@pytest.mark.parametrize("frames,h,w", [(1, 16, 24), (5, 32, 16), (9, 16, 24), (17, 32, 16)])
def test_encode_matches_diffusers(vae, reference, frames, h, w):
    video = random_video(frames, h, w)
    (ours,) = vae.encode([video])
    assert ours.shape == (16, 1 + (frames - 1) // 4, h // 8, w // 8)
    assert ours.dtype == torch.float32
    assert rel_err(ours, reference_encode(reference, video)) <= TOL


@pytest.mark.parametrize("latents,h,w", [(1, 2, 3), (2, 4, 2), (3, 2, 3), (5, 4, 2)])
def test_decode_matches_diffusers(vae, reference, latents, h, w):
    z = torch.randn(16, latents, h, w, generator=torch.Generator().manual_seed(latents))
    (ours,) = vae.decode([z])
    assert ours.shape == (3, 1 + 4 * (latents - 1), 8 * h, 8 * w)
    # The comparison is only meaningful if most pixels are not clamped.
    assert (ours.abs() < 1).float().mean() > 0.8
    assert rel_err(ours, reference_decode(reference, z)) <= TOL
    assert ours.min() >= -1 and ours.max() <= 1


def test_round_trip_of_encoded_latents_matches_diffusers(vae, reference):
    video = random_video(9, 16, 16, seed=1)
    (z,) = vae.encode([video])
    (ours,) = vae.decode([z])
    assert ours.shape == video.shape
    assert rel_err(ours, reference_decode(reference, z)) <= TOL


def test_encode_list_of_videos(vae):
    videos = [random_video(5, 16, 16, seed=2), random_video(1, 8, 24, seed=3)]
    out = vae.encode(videos)
    assert [tuple(z.shape) for z in out] == [(16, 2, 2, 2), (16, 1, 1, 3)]
    assert rel_err(out[1], vae.encode(videos[1:])[0]) == 0


# --------------------------------------------------------------------- chunking
def test_encode_does_not_depend_on_chunk_length(vae):
    video = random_video(17, 16, 16, seed=4)
    (default,) = vae.encode([video])
    for chunk in (4, 8, 16, 64):
        (z,) = vae.encode([video], chunk_frames=chunk)
        assert rel_err(z, default) <= TOL, chunk


def test_decode_does_not_depend_on_chunk_length(vae):
    z = torch.randn(16, 5, 2, 2, generator=torch.Generator().manual_seed(7))
    (default,) = vae.decode([z])
    for chunk in (1, 2, 3, 5):
        (video,) = vae.decode([z], chunk_latents=chunk)
        assert rel_err(video, default) <= TOL, chunk


def test_chunk_attributes_set_the_default(vae_file):
    vae = WanVAE(vae_pth=vae_file, device="cpu")
    video = random_video(9, 16, 16, seed=6)
    (base,) = vae.encode([video])
    vae.encode_chunk_frames, vae.decode_chunk_latents = 8, 3
    assert rel_err(vae.encode([video])[0], base) <= TOL
    z = torch.randn(16, 3, 2, 2)
    assert rel_err(vae.decode([z])[0], vae.decode([z], chunk_latents=1)[0]) <= TOL


def test_causality_first_frames_are_independent_of_later_ones(vae):
    video = random_video(9, 16, 16, seed=8)
    changed = video.clone()
    changed[:, 5:] = -changed[:, 5:]
    (a,), (b,) = vae.encode([video]), vae.encode([changed])
    assert torch.equal(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2], b[:, 2])


def test_bf16_compute_stays_close(vae_file):
    vae32 = WanVAE(vae_pth=vae_file, device="cpu")
    vae16 = WanVAE(vae_pth=vae_file, dtype=torch.bfloat16, device="cpu")
    video = random_video(5, 16, 16, seed=9)
    (z32,), (z16,) = vae32.encode([video]), vae16.encode([video])
    assert z16.dtype == torch.float32
    assert rel_err(z16, z32) < 5e-2
    assert rel_err(vae16.decode([z32])[0], vae32.decode([z32])[0]) < 5e-2


def test_attributes_like_official(vae):
    assert torch.allclose(vae.mean, torch.tensor(LATENT_MEAN))
    assert torch.allclose(vae.std, torch.tensor(LATENT_STD))
    assert torch.allclose(vae.scale[1], 1 / torch.tensor(LATENT_STD))
    assert vae.model.z_dim == 16 and vae.model.dim == SIZES.vae_dim
    assert vae.dtype == torch.float32 and vae.device == torch.device("cpu")
    assert not any(p.requires_grad for p in vae.model.parameters())


# --------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("shape,message", [
    ((3, 6, 16, 16), "has 6 frames; the VAE needs 4n+1 frames"),
    ((3, 4, 16, 16), "has 4 frames; the VAE needs 4n+1 frames"),
    ((4, 5, 16, 16), "has 4 channels; the VAE needs 3"),
    ((1, 5, 16, 16), "has 1 channels; the VAE needs 3"),
    ((5, 16, 16), "must be a [3, T, H, W] tensor, got (5, 16, 16)"),
    ((1, 3, 5, 16, 16), "must be a [3, T, H, W] tensor"),
    ((3, 5, 20, 16), "is 20x16 pixels; height and width must be multiples of 8"),
    ((3, 5, 16, 12), "is 16x12 pixels"),
])
def test_encode_rejects_bad_videos(vae, shape, message):
    with pytest.raises(ValueError) as e:
        vae.encode([torch.zeros(shape)])
    assert message in str(e.value)
    assert "WanVAE.encode: video 0" in str(e.value)


def test_encode_rejects_a_bare_tensor(vae):
    with pytest.raises(ValueError, match="list of tensors"):
        vae.encode(torch.zeros(3, 5, 16, 16))


@pytest.mark.parametrize("shape,message", [
    ((8, 2, 2, 2), "has 8 channels; the VAE needs 16"),
    ((32, 2, 2, 2), "has 32 channels"),
    ((16, 2, 2), "must be a [16, t, h, w] tensor, got (16, 2, 2)"),
])
def test_decode_rejects_bad_latents(vae, shape, message):
    with pytest.raises(ValueError) as e:
        vae.decode([torch.zeros(16, 1, 2, 2), torch.zeros(shape)])
    assert message in str(e.value)
    assert "WanVAE.decode: latent 1" in str(e.value)


@pytest.mark.parametrize("chunk", [0, 3, 6, -4])
def test_encode_rejects_bad_chunk_frames(vae, chunk):
    with pytest.raises(ValueError, match="chunk_frames must be a positive multiple of 4"):
        vae.encode([torch.zeros(3, 9, 16, 16)], chunk_frames=chunk)


@pytest.mark.parametrize("chunk", [0, -1, 1.5])
def test_decode_rejects_bad_chunk_latents(vae, chunk):
    with pytest.raises(ValueError, match="chunk_latents must be a positive integer"):
        vae.decode([torch.zeros(16, 2, 2, 2)], chunk_latents=chunk)


def test_z_dim_other_than_16_is_rejected(vae_file):
    with pytest.raises(ValueError, match="z_dim must be 16"):
        WanVAE(z_dim=8, vae_pth=vae_file, device="cpu")


# --------------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as e:
        WanVAE(vae_pth=tmp_path / "Wan2.1_VAE.pth", device="cpu")
    assert "Wan2.1_VAE.pth" in str(e.value)


def test_truncated_file(vae_file, tmp_path):
    bad = tmp_path / "Wan2.1_VAE.pth"
    data = vae_file.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as e:
        WanVAE(vae_pth=bad, device="cpu")
    assert str(bad) in str(e.value)


@pytest.mark.parametrize("content", [
    b"<html><body>404 Not Found</body></html>",
    b"version https://git-lfs.github.com/spec/v1\noid sha256:4c8a\nsize 507609880\n",
    b"PK\x03\x04" + bytes(500),
])
def test_garbage_file(tmp_path, content):
    bad = tmp_path / "Wan2.1_VAE.pth"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        WanVAE(vae_pth=bad, device="cpu")
    assert str(bad) in str(e.value)


def test_t5_file_instead_of_vae(tmp_path):
    t5 = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({"token_embedding.weight": torch.zeros(64, 8, dtype=torch.bfloat16),
                "blocks.0.attn.q.weight": torch.zeros(8, 8, dtype=torch.bfloat16)}, t5)
    with pytest.raises(CheckpointError, match="does not hold a Wan2.1 VAE") as e:
        WanVAE(vae_pth=t5, device="cpu")
    assert str(t5) in str(e.value)


def test_vae_with_missing_tensors(vae_file, tmp_path):
    sd = torch.load(vae_file, weights_only=True)
    del sd["decoder.upsamples.3.time_conv.weight"]
    bad = tmp_path / "Wan2.1_VAE.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError, match="1 missing tensors") as e:
        WanVAE(vae_pth=bad, device="cpu")
    assert "decoder.upsamples.3.time_conv.weight" in str(e.value)
    assert str(bad) in str(e.value)


def test_written_file_is_fp32_with_official_names(vae_file):
    sd = torch.load(vae_file, weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values())
    d = SIZES.vae_dim
    assert sd["encoder.conv1.weight"].shape == (d, 3, 3, 3, 3)
    assert sd["encoder.downsamples.8.time_conv.weight"].shape == (4 * d, 4 * d, 3, 1, 1)
    assert sd["encoder.middle.1.to_qkv.weight"].shape == (12 * d, 4 * d, 1, 1)
    assert sd["decoder.upsamples.3.time_conv.weight"].shape == (8 * d, 4 * d, 3, 1, 1)
    assert sd["decoder.upsamples.4.shortcut.weight"].shape == (4 * d, 2 * d, 1, 1, 1)
    assert sd["decoder.head.0.gamma"].shape == (d, 1, 1, 1)
    assert sd["conv1.weight"].shape == (32, 32, 1, 1, 1)
    assert sd["conv2.weight"].shape == (16, 16, 1, 1, 1)
    assert len(sd) == 194


# --------------------------------------------------------------------- real size
@pytest.mark.slow
def test_real_size_vae_loads_encodes_and_decodes(tmp_path):
    path = write_vae(tmp_path / "Wan2.1_VAE.pth", TinySizes(vae_dim=96), seed=11)
    vae = WanVAE(vae_pth=path, device="cpu")
    assert vae.model.dim == 96
    assert sum(p.numel() for p in vae.model.parameters()) > 100_000_000
    video = random_video(5, 64, 64, seed=12)
    (z,) = vae.encode([video])
    assert z.shape == (16, 2, 8, 8) and torch.isfinite(z).all()
    (out,) = vae.decode([z])
    assert out.shape == (3, 5, 64, 64) and torch.isfinite(out).all()

    reference = diffusers_vae(path, 96)
    assert rel_err(z, reference_encode(reference, video)) <= TOL
    assert rel_err(out, reference_decode(reference, z)) <= TOL


# --------------------------------------------------------------------- fast paths
def test_rms_norm_matches_the_normalize_formula():
    from wan.modules.vae import RMSNorm, channels_last

    norm = RMSNorm(24)
    with torch.no_grad():
        norm.gamma.copy_(1 + 0.1 * torch.randn(24, 1, 1, 1))
        x = torch.randn(2, 24, 3, 5, 7)
        expected = torch.nn.functional.normalize(x, dim=1) * 24 ** 0.5 * norm.gamma
        for inp in (x, channels_last(x)):
            assert rel_err(norm(inp), expected) <= 1e-6
        out = torch.empty_like(x)
        norm.write(x, out, silu=True)
        assert rel_err(out, torch.nn.functional.silu(expected)) <= 1e-6


def test_folded_upsampling_matches_upsample_then_conv():
    from wan.modules.vae import upsample_conv2d

    conv = torch.nn.Conv2d(12, 6, 3, padding=1)
    x = torch.randn(3, 12, 5, 7)
    with torch.no_grad():
        expected = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest-exact"))
        out = upsample_conv2d(x, conv)
    assert out.shape == expected.shape == (3, 6, 10, 14)
    assert rel_err(out, expected) <= 1e-6


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_causal_conv_at_the_video_start_treats_the_past_as_zeros(frames):
    from wan.modules.vae import CausalCache, CausalConv3d

    conv = CausalConv3d(6, 5, 3)
    x = torch.randn(1, 6, frames, 4, 5)
    with torch.no_grad():
        expected = conv._conv_forward(torch.nn.functional.pad(x, (0, 0, 0, 0, 2, 0)),
                                      conv.weight, conv.bias)
        cache = CausalCache()
        assert rel_err(conv(x, cache), expected) <= 1e-6
        assert rel_err(conv(x), expected) <= 1e-6
    # the cached tail is the last two frames of [zeros | x]
    tail = torch.cat([torch.zeros(1, 6, 2, 4, 5), x], dim=2)[:, :, -2:]
    assert torch.equal(cache.tails[conv], tail)


def test_outputs_are_plain_contiguous_tensors(vae):
    (z,) = vae.encode([random_video(5, 16, 24)])
    (video,) = vae.decode([z])
    assert z.is_contiguous() and video.is_contiguous()
