"""VAE spatial tiling: tile layout and blend weights, tiled vs untiled passes, bounded memory,
and the automatic on/off decision."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import wan.modules.vae as vae_mod
from conftest import ROOT
from wan.modules.vae import (SPATIAL_STRIDE, TilingConfig, VideoVAE, WanVAE, blend_ramps,
                             choose_tile, estimate_decode_bytes, estimate_encode_bytes,
                             free_memory_bytes, init_random_weights, tile_starts, tiled_decode,
                             tiled_encode)
from wan.utils.tiny_checkpoint import TinySizes, write_vae

SIZES = TinySizes()


def smooth_video(frames: int, h: int, w: int) -> torch.Tensor:
    """``[1, 3, frames, h, w]`` in [-0.8, 0.8]: slow sinusoids drifting over time."""
    t = torch.arange(frames, dtype=torch.float32).view(-1, 1, 1)
    y = torch.arange(h, dtype=torch.float32).view(1, -1, 1) / h
    x = torch.arange(w, dtype=torch.float32).view(1, 1, -1) / w
    channels = [torch.sin(2 * math.pi * (0.7 * x + 0.3 * y) + 0.2 * t),
                torch.cos(2 * math.pi * (0.5 * y - 0.4 * x) + 0.15 * t),
                torch.sin(2 * math.pi * x * y + 0.1 * t)]
    return 0.8 * torch.stack(channels)[None]


def random_vae(dim: int, seed: int) -> VideoVAE:
    model = VideoVAE(dim=dim).eval().requires_grad_(False)
    init_random_weights(model, seed)
    return model


@pytest.fixture(scope="module")
def tiny():
    return random_vae(SIZES.vae_dim, seed=11)


@pytest.fixture(scope="module")
def tiny_latents(tiny):
    """Latents of a smooth 5-frame 192x384 video (24x48 latents) and their untiled decode."""
    with torch.no_grad():
        z = tiny.encode(smooth_video(5, 192, 384))
        return z, tiny.decode(z).clamp_(-1, 1)


# --------------------------------------------------------------------- layout and weights
@pytest.mark.parametrize("length,tile,overlap", [
    (24, 24, 8), (10, 24, 8), (40, 24, 8), (48, 24, 8), (48, 24, 0), (100, 32, 8), (33, 16, 4),
    (161, 40, 8)])
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == length
    for a, b in zip(starts, starts[1:]):
        assert a < b and a + tile - b >= overlap  # neighbours share at least `overlap`
    strides = {b - a for a, b in zip(starts, starts[1:])}
    assert max(strides) - min(strides) <= 1  # evenly spaced


def test_tiles_without_overlap_do_not_overlap():
    assert tile_starts(48, 24, 0) == [0, 24]
    assert tile_starts(96, 32, 0) == [0, 32, 64]


@pytest.mark.parametrize("length,tile,overlap", [(48, 24, 8), (40, 24, 8), (100, 32, 8),
                                                 (48, 24, 0), (33, 16, 4)])
def test_blend_weights_sum_to_one(length, tile, overlap):
    scale = SPATIAL_STRIDE
    starts = tile_starts(length, tile, overlap)
    total = torch.zeros(length * scale)
    for start, w in zip(starts, blend_ramps(starts, tile, scale, torch.device("cpu"))):
        assert w.shape == (tile * scale,) and w.min() >= 0 and w.max() <= 1
        total[start * scale:(start + tile) * scale] += w
    torch.testing.assert_close(total, torch.ones_like(total))


def test_blend_weights_ramp_inside_the_overlap():
    starts = [0, 16]  # 24-latent tiles sharing 8 latents = 64 pixels
    first, second = blend_ramps(starts, 24, SPATIAL_STRIDE, torch.device("cpu"))
    overlap = slice(128, 192)
    assert torch.all(first[:128] == 1) and torch.all(second[64:] == 1)  # 1 outside the overlap
    # the quarter of the overlap next to each tile's own border gets no weight ...
    assert torch.all(first[176:] == 0) and torch.all(second[:16] == 0)
    # ... and the central half is a linear cross-fade
    ramp = second[16:48]
    torch.testing.assert_close(ramp[1:] - ramp[:-1], torch.full((31,), 1 / 32))
    assert torch.all(first[overlap][:-1] >= first[overlap][1:])


@pytest.mark.parametrize("kwargs,message", [
    (dict(mode="sometimes"), "must be one of auto, on, off"),
    (dict(tile=16, overlap=8), "overlap < tile / 2"),
    (dict(overlap=-1), "overlap < tile / 2"),
])
def test_bad_tiling_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TilingConfig(**kwargs)


# --------------------------------------------------------------------- tiled vs untiled (tiny)
def test_tiled_decode_of_a_frame_within_one_tile_is_the_untiled_decode(tiny):
    z = torch.randn(1, 16, 2, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(tiled_decode(tiny, z, tile=16), tiny.decode(z))


def test_tiled_decode_blends_seams_away(tiny, tiny_latents):
    """Tiny random VAE: a smooth video decodes the same in overlapping tiles (loose bound)."""
    z, untiled = tiny_latents
    with torch.no_grad():
        tiled = tiled_decode(tiny, z, tile=24, overlap=8).clamp_(-1, 1)  # 3 tiles across
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().max() <= 0.02
    assert (tiled - untiled).abs().mean() <= 1e-4


def test_tiles_without_overlap_leave_a_seam(tiny, tiny_latents):
    """Two tiles side by side with no overlap: exact far from the border, wrong along it."""
    z, untiled = tiny_latents
    with torch.no_grad():
        tiled = tiled_decode(tiny, z, tile=24, overlap=0).clamp_(-1, 1)  # columns [0, 24), [24, 48)
    err = (tiled - untiled).abs().amax(dim=(0, 1, 2, 3))  # per pixel column
    seam = 24 * SPATIAL_STRIDE
    assert err[seam - 8:seam + 8].max() > 0.2            # a visible seam
    assert err[:seam - 96].max() <= 1e-4                 # the decoder sees <= ~6 latents around
    assert err[seam + 96:].max() <= 1e-4


def test_tiled_encode_matches_untiled(tiny):
    video = smooth_video(5, 192, 384)
    with torch.no_grad():
        untiled = tiny.encode(video)
        tiled = tiled_encode(tiny, video, tile=24, overlap=8)
        seam = tiled_encode(tiny, video, tile=24, overlap=0)
    assert tiled.shape == untiled.shape == (1, 16, 2, 24, 48)
    assert (tiled - untiled).abs().max() <= 1e-2
    assert (seam - untiled).abs().max() > 10 * (tiled - untiled).abs().max()


# --------------------------------------------------------------------- the WanVAE setting
@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    return write_vae(tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth", SIZES, seed=5)


@pytest.fixture
def vae(vae_file):
    return WanVAE(vae_pth=vae_file, device="cpu")


@pytest.fixture
def spy_tiling(monkeypatch):
    """Record the tile sizes WanVAE passes to the tiled functions (and still run them)."""
    calls = []

    def wrap(fn):
        def spy(model, x, tile, overlap, chunk):
            calls.append((fn.__name__, tile, overlap))
            return fn(model, x, tile, overlap, chunk)
        return spy

    monkeypatch.setattr(vae_mod, "tiled_decode", wrap(tiled_decode))
    monkeypatch.setattr(vae_mod, "tiled_encode", wrap(tiled_encode))
    return calls


def test_default_is_auto_and_modes_are_strings(vae):
    assert vae.tiling == TilingConfig(mode="auto", tile=32, overlap=8, memory_fraction=0.5)
    vae.tiling = "on"
    assert vae.tiling.mode == "on"
    with pytest.raises(ValueError, match="must be one of"):
        vae.tiling = "yes"


def test_auto_tiles_only_when_the_estimate_exceeds_the_free_memory_fraction(vae, monkeypatch,
                                                                           spy_tiling):
    z = torch.randn(16, 2, 40, 40, generator=torch.Generator().manual_seed(1))
    need = estimate_decode_bytes(vae.model, 40, 40)
    monkeypatch.setattr(vae_mod, "free_memory_bytes", lambda device: int(2.1 * need))
    (untiled,) = vae.decode([z])
    assert spy_tiling == []  # fits in half of the free memory

    monkeypatch.setattr(vae_mod, "free_memory_bytes", lambda device: int(1.9 * need))
    (tiled,) = vae.decode([z])
    assert spy_tiling == [("tiled_decode", 32, 8)]
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().max() <= 0.05


def test_auto_picks_the_largest_tile_that_fits(vae):
    model, cpu = vae.model, torch.device("cpu")
    estimate = lambda h, w: estimate_decode_bytes(model, h, w)  # noqa: E731
    config = TilingConfig(mode="auto", tile=16, overlap=4)
    free = 2 * estimate(40, 40) + 1  # 40-latent tiles just fit into half of it
    with pytest.MonkeyPatch.context() as m:
        m.setattr(vae_mod, "free_memory_bytes", lambda device: free)
        assert choose_tile(config, (40, 40), estimate, cpu) is None
        assert choose_tile(config, (90, 160), estimate, cpu) == 40
        m.setattr(vae_mod, "free_memory_bytes", lambda device: 1)  # nothing fits: smallest tile
        assert choose_tile(config, (90, 160), estimate, cpu) == 16
        m.setattr(vae_mod, "free_memory_bytes", lambda device: None)  # unknown: never tile
        assert choose_tile(config, (90, 160), estimate, cpu) is None


def test_on_and_off(vae, monkeypatch, spy_tiling):
    monkeypatch.setattr(vae_mod, "free_memory_bytes", lambda device: 1)
    z = torch.randn(16, 1, 24, 40, generator=torch.Generator().manual_seed(2))
    vae.tiling = "off"
    vae.decode([z])
    vae.encode([torch.zeros(3, 1, 192, 320)])
    assert spy_tiling == []
    vae.tiling = TilingConfig(mode="on", tile=16, overlap=4)
    vae.decode([torch.randn(16, 1, 8, 16)])  # within one tile: nothing to tile
    assert spy_tiling == []
    vae.decode([z])
    vae.encode([torch.zeros(3, 1, 192, 320)])
    assert spy_tiling == [("tiled_decode", 16, 4), ("tiled_encode", 16, 4)]


def test_estimates_scale_with_area_and_chunk(vae):
    model = vae.model
    small, large = estimate_decode_bytes(model, 30, 52), estimate_decode_bytes(model, 60, 104)
    assert large == 4 * small
    assert estimate_decode_bytes(model, 30, 52, chunk_latents=3) > small
    assert estimate_decode_bytes(model, 30, 52, element_size=2) == small // 2
    assert estimate_encode_bytes(model, 60, 104) == 4 * estimate_encode_bytes(model, 30, 52)


def test_real_size_720p_decode_is_estimated_in_gigabytes():
    with torch.device("meta"):
        real = VideoVAE(dim=96)
    gib = estimate_decode_bytes(real, 90, 160) / 2**30  # 1280x720
    assert 8 < gib < 30
    assert estimate_decode_bytes(real, 32, 32) / 2**30 < 1.5


def test_free_memory_is_known_on_this_machine():
    free = free_memory_bytes(torch.device("cpu"))
    assert free is not None and free > 0


# --------------------------------------------------------------------- bounded memory
MEMORY_PROBE = r"""
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
import torch
torch.set_num_threads(1)
from memory_probe import PeakRSS
from wan.modules.vae import VideoVAE, init_random_weights, tiled_decode
model = VideoVAE(dim=8).eval().requires_grad_(False)
init_random_weights(model, 3)
z = torch.randn(1, 16, 1, {size}, {size})
with torch.no_grad():
    model.decode(torch.randn(1, 16, 1, 4, 4))  # load the kernels before the baseline
    with PeakRSS() as probe:
        out = tiled_decode(model, z, {tile}, 4) if {tile} else model.decode(z)
print(json.dumps({{"growth": probe.growth, "output": out.numel() * out.element_size()}}))
"""


def peak_growth(size: int, tile: int) -> int:
    """Peak RSS growth (bytes, output excluded) of one decode of ``size`` x ``size`` latents
    by a small random VAE in a fresh process (``tile=0``: untiled)."""
    code = MEMORY_PROBE.format(root=str(ROOT), tests=str(ROOT / "tests"), size=size, tile=tile)
    # a fixed mmap threshold makes glibc return freed tensors to the OS: RSS follows live tensors
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["growth"] - result["output"]


def test_tiled_decode_memory_grows_with_the_tile_not_the_frame():
    mib = 2**20
    untiled_small, untiled_large = peak_growth(32, 0), peak_growth(64, 0)
    tiled_small, tiled_large = peak_growth(32, 16), peak_growth(64, 16)
    bigger_tile = peak_growth(64, 32)
    # untiled: about 4x the memory for 4x the pixels (and the estimate is close to it)
    assert untiled_large > 3 * untiled_small > 100 * mib
    with torch.device("meta"):
        model = VideoVAE(dim=8)
    estimate = estimate_decode_bytes(model, 64, 64)
    assert 0.7 * estimate < untiled_large < 1.3 * estimate
    # tiled: the same 16-latent tiles cost about the same at 4x the pixels ...
    assert tiled_large - tiled_small < 0.1 * (untiled_large - untiled_small)
    assert tiled_large < 0.25 * untiled_large
    # ... and larger tiles cost more
    assert bigger_tile > tiled_large + 2 * (tiled_large - tiled_small) + 20 * mib


# --------------------------------------------------------------------- real size
@pytest.mark.slow
def test_real_size_tiled_decode_and_encode_match_untiled():
    """The real-size VAE (base 96, fixed random weights): a smooth 5-frame 320x320 video,
    encoded, then decoded untiled and in 24-latent tiles sharing 8 latents (2 x 2 tiles)."""
    model = random_vae(96, seed=11)
    video = smooth_video(5, 320, 320)
    with torch.no_grad():
        z = model.encode(video)
        untiled = model.decode(z).clamp_(-1, 1)
        tiled = tiled_decode(model, z, tile=24, overlap=8).clamp_(-1, 1)
        z_tiled = tiled_encode(model, video, tile=24, overlap=8)
    assert (untiled.abs() < 1).float().mean() > 0.9
    assert (tiled - untiled).abs().max() <= 0.02
    assert (z_tiled - z).abs().max() <= 0.02
