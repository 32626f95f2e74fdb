"""DiT parity with diffusers' WanTransformer3DModel on identical official-format weights."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import rel_err
from wan.modules.model import WanModel
from wan.utils.checkpoint import CheckpointError
from wan.utils.tiny_checkpoint import TinySizes, write_dit

SIZES = TinySizes()


def diffusers_model(folder, model_type=None):
    """diffusers' WanTransformer3DModel with the weights of an official-format DiT folder
    (one file or shards); its kind (image tokens, FLF2V table, latent width) is read from the
    tensors, ``model_type`` is only checked."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = {}
    for f in sorted(Path(folder).glob("diffusion_pytorch_model*.safetensors")):
        sd.update(load_file(f))
    converted = convert_wan_transformer_to_diffusers(dict(sd))
    image = "img_emb.proj.0.weight" in sd
    flf2v = "img_emb.emb_pos" in sd
    assert model_type is None or (model_type == "flf2v") == flf2v
    if flf2v:  # the one FLF2V tensor diffusers' converter does not rename
        converted["condition_embedder.image_embedder.pos_embed"] = converted.pop("img_emb.emb_pos")
    in_dim = sd["patch_embedding.weight"].shape[1]
    out_dim = sd["head.head.weight"].shape[0] // 4
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=SIZES.num_heads,
        attention_head_dim=SIZES.dim // SIZES.num_heads, in_channels=in_dim,
        out_channels=out_dim, text_dim=SIZES.t5_dim, freq_dim=SIZES.freq_dim, ffn_dim=SIZES.ffn_dim,
        num_layers=SIZES.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, image_dim=SIZES.clip_width if image else None,
        added_kv_proj_dim=SIZES.dim if image else None, pos_embed_seq_len=514 if flf2v else None)
    model.load_state_dict(converted, strict=True)
    return model.eval()


@pytest.fixture(scope="module", params=["t2v", "i2v"])
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"dit_{request.param}")
    write_dit(folder, request.param, SIZES, seed=3)
    ours = WanModel.from_pretrained(folder)
    return request.param, folder, ours, diffusers_model(folder, request.param)


def reference(ref, model_type, x, t, ctx, clip=None, y=None):
    """diffusers output for one sample (no per-sample lengths there)."""
    text = torch.cat([ctx, ctx.new_zeros(512 - ctx.size(0), ctx.size(1))])[None]
    inp = torch.cat([x, y])[None] if y is not None else x[None]
    out = ref(inp, timestep=t.view(1), encoder_hidden_states=text,
              encoder_hidden_states_image=clip, return_dict=False)[0]
    return out[0]


@pytest.mark.parametrize("shape", [(1, 4, 6), (3, 6, 4), (2, 8, 8)])
def test_parity_single(pair, shape):
    model_type, _, ours, ref = pair
    g = torch.Generator().manual_seed(sum(shape))
    f, h, w = shape
    x = torch.randn(16, f, h, w, generator=g)
    ctx = torch.randn(7, SIZES.t5_dim, generator=g)
    t = torch.tensor([731])
    clip = y = None
    if model_type == "i2v":
        clip = torch.randn(1, 257, SIZES.clip_width, generator=g)
        y = torch.randn(20, f, h, w, generator=g)
    seq_len = f * h * w // 4
    with torch.no_grad():
        a = ours([x], t, [ctx], seq_len, clip_fea=clip, y=[y] if y is not None else None)[0]
        b = reference(ref, model_type, x, t, ctx, clip, y)
    assert a.shape == (16, f, h, w)
    assert rel_err(a, b) <= 1e-5


def test_parity_batch_different_lengths(pair):
    """Batch of two latents of different sizes, padded to a common seq_len, masked per sample."""
    model_type, _, ours, ref = pair
    g = torch.Generator().manual_seed(7)
    shapes = [(2, 6, 8), (1, 4, 6)]
    xs = [torch.randn(16, *s, generator=g) for s in shapes]
    ctxs = [torch.randn(n, SIZES.t5_dim, generator=g) for n in (5, 11)]
    t = torch.tensor([999, 250])
    clip = ys = None
    if model_type == "i2v":
        clip = torch.randn(2, 257, SIZES.clip_width, generator=g)
        ys = [torch.randn(20, *s, generator=g) for s in shapes]
    seq_len = max(math.prod(s) // 4 for s in shapes) + 3  # extra padding on both samples
    with torch.no_grad():
        outs = ours(xs, t, ctxs, seq_len, clip_fea=clip, y=ys)
        for i in range(2):
            b = reference(ref, model_type, xs[i], t[i], ctxs[i],
                          None if clip is None else clip[i:i + 1], None if ys is None else ys[i])
            assert outs[i].shape == xs[i].shape
            assert rel_err(outs[i], b) <= 1e-5


def test_sharded_equals_single(tmp_path):
    single = write_dit(tmp_path / "single", "t2v", SIZES, seed=5)
    sharded = write_dit(tmp_path / "sharded", "t2v", SIZES, shards=3, seed=5)
    assert (sharded / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert not (sharded / "diffusion_pytorch_model.safetensors").exists()
    a, b = WanModel.from_pretrained(single), WanModel.from_pretrained(sharded)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_config_from_shapes_and_dtype(tmp_path):
    folder = write_dit(tmp_path / "m", "i2v", SIZES, seed=1)
    model = WanModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert model.model_type == "i2v" and model.in_dim == 36
    assert model.text_dim == SIZES.t5_dim and model.clip_dim == SIZES.clip_width
    assert model.num_layers == SIZES.num_layers and model.patch_size == (1, 2, 2)
    assert model.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in model.parameters())
    assert all(not p.is_meta for p in model.parameters())
    keep = WanModel.from_pretrained(folder)
    assert keep.dtype == torch.float32


# ------------------------------------------------------------------ errors
def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="folder not found"):
        WanModel.from_pretrained(tmp_path / "nope")


def test_missing_weights(tmp_path):
    folder = write_dit(tmp_path / "m", "t2v", SIZES)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="weights not found.*diffusion_pytorch_model"):
        WanModel.from_pretrained(folder)


def test_missing_shard(tmp_path):
    folder = write_dit(tmp_path / "m", "t2v", SIZES, shards=2)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard.*not found.*00002-of-00002"):
        WanModel.from_pretrained(folder)


def test_truncated_file(tmp_path):
    folder = write_dit(tmp_path / "m", "t2v", SIZES)
    f = folder / "diffusion_pytorch_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file.*truncated"):
        WanModel.from_pretrained(folder)


def test_missing_config(tmp_path):
    folder = write_dit(tmp_path / "m", "t2v", SIZES)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="DiT config not found.*config.json"):
        WanModel.from_pretrained(folder)


def test_wrong_model_type(tmp_path):
    folder = write_dit(tmp_path / "m", "i2v", SIZES)
    with pytest.raises(CheckpointError, match="holds a i2v DiT.*t2v model is needed"):
        WanModel.from_pretrained(folder, model_type="t2v")


def test_shapes_do_not_fit(tmp_path):
    folder = write_dit(tmp_path / "m", "t2v", SIZES)
    f = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd["blocks.1.self_attn.q.weight"] = torch.zeros(3, 3)
    save_file(sd, f)
    with pytest.raises(CheckpointError, match=r"wrong shape.*blocks\.1\.self_attn\.q\.weight"):
        WanModel.from_pretrained(folder)


def test_not_a_dit(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_heads": 2}))
    save_file({"encoder.conv1.weight": torch.zeros(2, 2)}, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="not a Wan2.1 DiT checkpoint.*patch_embedding"):
        WanModel.from_pretrained(folder)


def test_config_contradicts_weights(tmp_path):
    folder = write_dit(tmp_path / "m", "t2v", SIZES)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["dim"] = 5120
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json says dim=5120"):
        WanModel.from_pretrained(folder)


def test_seq_len_too_small(pair):
    _, _, ours, _ = pair
    x = torch.randn(ours.in_dim - (20 if ours.model_type == "i2v" else 0), 1, 4, 4)
    kwargs = {}
    if ours.model_type == "i2v":
        kwargs = dict(clip_fea=torch.zeros(1, 257, SIZES.clip_width), y=[torch.zeros(20, 1, 4, 4)])
    with pytest.raises(ValueError, match="4 tokens but seq_len is 2"):
        ours([x], torch.tensor([1]), [torch.zeros(3, SIZES.t5_dim)], 2, **kwargs)


def test_bf16_matmul_weights_equal_autocast(tmp_path):
    """Storing the autocast-region weights in bf16 is the same arithmetic as fp32 + autocast."""
    folder = write_dit(tmp_path / "m", "i2v", SIZES, seed=2)
    full = WanModel.from_pretrained(folder)
    half = WanModel.from_pretrained(folder, matmul_dtype=torch.bfloat16)
    assert half.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert half.img_emb.proj[1].weight.dtype == torch.bfloat16
    for p in (half.blocks[0].modulation, half.blocks[0].norm3.weight, half.head.head.weight,
              half.time_embedding[0].weight, half.img_emb.proj[0].weight,
              half.blocks[0].self_attn.norm_q.weight):
        assert p.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 2, 4, 6, generator=g), torch.randn(20, 2, 4, 6, generator=g)
    ctx, clip = torch.randn(6, SIZES.t5_dim, generator=g), torch.randn(1, 257, SIZES.clip_width, generator=g)
    outs = []
    for m in (full, half):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(m([x], torch.tensor([500]), [ctx], 12, clip_fea=clip, y=[y])[0])
    assert outs[0].dtype == torch.float32
    assert torch.equal(outs[0], outs[1])
    with torch.no_grad():
        ref = full([x], torch.tensor([500]), [ctx], 12, clip_fea=clip, y=[y])[0]
    assert 0 < rel_err(outs[1], ref) < 5e-2


def test_cached_context_same_numbers_computed_once(pair, monkeypatch):
    """The context's keys/values are computed once per generation and change nothing."""
    from wan.modules.model import CrossAttention, cached_context

    model_type, _, ours, _ = pair
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(16, 2, 4, 6, generator=g) for _ in range(3)]
    ctx = [torch.randn(5, SIZES.t5_dim, generator=g), torch.randn(9, SIZES.t5_dim, generator=g)]
    kw = {}
    if model_type == "i2v":
        kw = dict(clip_fea=torch.randn(2, 257, SIZES.clip_width, generator=g),
                  y=[torch.randn(20, 2, 4, 6, generator=g)] * 2)
    calls = []
    real = CrossAttention.context_kv
    monkeypatch.setattr(CrossAttention, "context_kv",
                        lambda self, c: calls.append(1) or real(self, c))
    with torch.no_grad():
        plain = [ours([x, x], torch.tensor([900, 900]), ctx, 12, **kw) for x in xs]
        assert len(calls) == 3 * SIZES.num_layers
        calls.clear()
        with cached_context(ours):
            cached = [ours([x, x], torch.tensor([900, 900]), ctx, 12, **kw) for x in xs]
        assert len(calls) == SIZES.num_layers  # once per block, not once per step
        assert ours._context_cache is None
    for p_, c_ in zip(plain, cached):
        for a, b in zip(p_, c_):
            assert torch.equal(a, b)


def test_rope_is_the_official_fp64_complex_rotation():
    """The complex64 table and product match the official rotation done in fp64 complex."""
    from wan.modules.model import _grid_angles, apply_rope, rope_tables

    grids, seq_len, head_dim = [(2, 3, 4), (1, 2, 2)], 26, 24
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, seq_len, 3, head_dim, generator=g)
    out = apply_rope(x, rope_tables(grids, seq_len, head_dim, "cpu"))
    assert out.dtype == torch.float32 and out.shape == x.shape
    for i, grid in enumerate(grids):
        n = math.prod(grid)
        freqs = torch.polar(torch.ones(n, head_dim // 2, dtype=torch.float64),
                            _grid_angles(grid, head_dim))
        pairs = torch.view_as_complex(x[i, :n].double().reshape(n, 3, -1, 2))
        ref = torch.view_as_real(pairs * freqs[:, None]).flatten(-2)
        assert rel_err(out[i, :n], ref) < 1e-6
        assert torch.equal(out[i, n:], x[i, n:])  # padding: identity rotation


def test_feed_forward_in_place_gelu_same_numbers():
    from wan.modules.model import FeedForward

    torch.manual_seed(0)
    ffn = FeedForward(16, 40)
    x = torch.randn(2, 5, 16)
    reference = ffn[2](torch.nn.functional.gelu(ffn[0](x), approximate="tanh"))
    with torch.no_grad():
        assert torch.equal(ffn(x), reference)
    x.requires_grad_(True)  # with autograd the GELU is not done in place
    ffn(x).sum().backward()
    assert x.grad is not None and ffn[0].weight.grad is not None
