"""The VACE DiT: parity with diffusers' WanVACETransformer3DModel on identical official-format
weights, loading and its errors, bf16 storage, the context cache, and sequence parallelism
(2 gloo processes, Ulysses and ring) against the single process."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from conftest import rel_err
from wan.modules.model import WanModel, is_matmul_weight
from wan.modules.vace_model import VaceWanModel
from wan.utils.checkpoint import CheckpointError, find_safetensors
from wan.utils.tiny_checkpoint import TinySizes, write_dit

SIZES = TinySizes(num_layers=4)  # VACE blocks on main blocks 0 and 2
T5_DIM = SIZES.t5_dim


# ------------------------------------------------------------------ diffusers reference
def official_state_dict(folder) -> dict[str, torch.Tensor]:
    sd = {}
    for f in find_safetensors(folder, "diffusion_pytorch_model", "DiT"):
        sd.update(load_file(f))
    return sd


def vace_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official VACE names -> diffusers names, the mapping of diffusers' convert script:
    ``vace_blocks.N.before_proj`` -> ``proj_in``, ``after_proj`` -> ``proj_out``,
    ``vace_patch_embedding`` unchanged, the rest of a VACE block as a main block."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    out = convert_wan_transformer_to_diffusers(
        {k: v for k, v in sd.items() if not k.startswith("vace_")})  # shared keys: test_model's
    for key, value in sd.items():
        if key.startswith("vace_patch_embedding."):
            out[key] = value
        elif key.startswith("vace_blocks."):
            _, n, rest = key.split(".", 2)
            if rest.startswith("before_proj."):
                out[f"vace_blocks.{n}.proj_in.{rest.split('.', 1)[1]}"] = value
            elif rest.startswith("after_proj."):
                out[f"vace_blocks.{n}.proj_out.{rest.split('.', 1)[1]}"] = value
            else:  # the block's own layers are named as in a main block
                (name, tensor), = convert_wan_transformer_to_diffusers(
                    {f"blocks.{n}.{rest}": value}).items()
                out["vace_" + name] = tensor
    return out


def diffusers_vace_model(folder, vace_layers):
    from diffusers import WanVACETransformer3DModel

    model = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=SIZES.num_heads,
        attention_head_dim=SIZES.dim // SIZES.num_heads, in_channels=16, out_channels=16,
        text_dim=T5_DIM, freq_dim=SIZES.freq_dim, ffn_dim=SIZES.ffn_dim,
        num_layers=SIZES.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, vace_layers=list(vace_layers), vace_in_channels=96)
    model.load_state_dict(vace_to_diffusers(official_state_dict(folder)), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def pair(vace_ckpt):
    ours = VaceWanModel.from_pretrained(vace_ckpt)
    return ours, diffusers_vace_model(vace_ckpt, ours.vace_layers)


def reference(ref, x, z, t, ctx, scales):
    text = torch.cat([ctx, ctx.new_zeros(512 - ctx.size(0), ctx.size(1))])[None]
    out = ref(x[None], timestep=t.view(1), encoder_hidden_states=text,
              control_hidden_states=z[None],
              control_hidden_states_scale=torch.as_tensor(scales, dtype=torch.float32),
              return_dict=False)[0]
    return out[0]


def inputs(shape, seed, refs=0):
    """Latent, VACE context (``refs`` reference frames prepended in time to both) and text."""
    g = torch.Generator().manual_seed(seed)
    f, h, w = shape
    x = torch.randn(16, f, h, w, generator=g)
    z = torch.randn(96, f, h, w, generator=g)
    if refs:
        x = torch.cat([torch.randn(16, refs, h, w, generator=g), x], dim=1)
        ref_latent = torch.randn(16, refs, h, w, generator=g)  # official: ref latent + zeros
        z = torch.cat([torch.cat([ref_latent, torch.zeros_like(ref_latent),
                                  torch.zeros(64, refs, h, w)]), z], dim=1)
    return x, z, torch.randn(7, T5_DIM, generator=g)


def test_our_mapping_is_diffusers_own(vace_ckpt):
    """The mapping written here gives the same names and tensors as diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = official_state_dict(vace_ckpt)
    mine, theirs = vace_to_diffusers(sd), convert_wan_transformer_to_diffusers(dict(sd))
    assert mine.keys() == theirs.keys()
    assert "vace_blocks.0.proj_in.weight" in mine and "vace_blocks.1.proj_in.weight" not in mine
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("refs", [0, 1])
@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_parity_with_diffusers(pair, scale, refs):
    ours, ref = pair
    x, z, ctx = inputs((2, 4, 6), seed=int(10 * scale) + refs, refs=refs)
    t = torch.tensor([613])
    seq_len = x[0].numel() // 4
    with torch.no_grad():
        a = ours([x], t, [z], [ctx], seq_len, vace_context_scale=scale)[0]
        b = reference(ref, x, z, t, ctx, [scale] * len(ours.vace_layers))
    err = rel_err(a, b)
    print(f"VACE parity scale {scale}, {refs} reference frames: relative error {err:.2e}")
    assert a.shape == x.shape and err <= 1e-5


def test_parity_per_layer_scales_and_padded_batch(pair):
    """A batch of two sizes padded to one seq_len, one scale per VACE layer (diffusers' form)."""
    ours, ref = pair
    (x1, z1, c1), (x2, z2, c2) = inputs((2, 6, 8), 1), inputs((1, 4, 6), 2, refs=1)
    t = torch.tensor([999, 250])
    scales = [0.3, 1.7]
    with torch.no_grad():
        outs = ours([x1, x2], t, [z1, z2], [c1, c2], 30, vace_context_scale=scales)
        for out, (x, z, c, tt) in zip(outs, [(x1, z1, c1, t[:1]), (x2, z2, c2, t[1:])]):
            assert rel_err(out, reference(ref, x, z, tt, c, scales)) <= 1e-5


def test_keyword_call_of_the_sampling_loop_and_scale_matters(pair):
    ours, _ = pair
    x, z, ctx = inputs((2, 4, 6), 5)
    t = torch.tensor([500, 500])
    with torch.no_grad():
        kw = dict(t=t, seq_len=12, context=[ctx, ctx], vace_context=[z, z])
        one = ours([x, x], vace_context_scale=1.0, **kw)
        zero = ours([x, x], vace_context_scale=0.0, **kw)
        default = ours([x, x], **kw)
    assert torch.equal(one[0], one[1]) and torch.equal(one[0], default[0])
    assert rel_err(zero[0], one[0]) > 1e-3  # the hints change the prediction


# ------------------------------------------------------------------ loading
def test_tiny_checkpoints_load_in_both_layouts(vace_ckpt, vace14_ckpt):
    for folder, shards in ((vace_ckpt, 0), (vace14_ckpt, 7)):
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["model_type"] == "vace" and cfg["vace_in_dim"] == 96
        assert cfg["vace_layers"] == [0, 2] and cfg["num_layers"] == 4
        index = folder / "diffusion_pytorch_model.safetensors.index.json"
        if shards:
            assert index.is_file() and len(list(folder.glob("*-of-00007.safetensors"))) == 7
        else:
            assert (folder / "diffusion_pytorch_model.safetensors").is_file()
            assert not index.exists()
        assert (folder / "models_t5_umt5-xxl-enc-bf16.pth").is_file()
        assert (folder / "Wan2.1_VAE.pth").is_file() and (folder / "google/umt5-xxl").is_dir()
        m = VaceWanModel.from_pretrained(folder, model_type="vace")
        assert m.model_type == "vace" and m.vace_layers == [0, 2] and m.vace_in_dim == 96
        assert len(m.vace_blocks) == 2 and m.num_layers == 4
        assert hasattr(m.vace_blocks[0], "before_proj")
        assert not hasattr(m.vace_blocks[1], "before_proj")
        assert m.vace_patch_embedding.weight.shape == (SIZES.dim, 96, 1, 2, 2)
        assert m.config["vace_layers"] == [0, 2] and m.config["model_type"] == "vace"
        assert all(not p.is_meta and not p.requires_grad for p in m.parameters())


def test_official_parameter_names(vace_ckpt):
    names = set(official_state_dict(vace_ckpt))
    for name in ("vace_patch_embedding.weight", "vace_patch_embedding.bias",
                 "vace_blocks.0.before_proj.weight", "vace_blocks.0.before_proj.bias",
                 "vace_blocks.1.after_proj.weight", "vace_blocks.1.self_attn.q.weight",
                 "vace_blocks.1.cross_attn.norm_k.weight", "vace_blocks.0.ffn.2.bias",
                 "vace_blocks.0.norm3.weight", "vace_blocks.0.modulation", "blocks.3.modulation"):
        assert name in names, name
    assert not any(k.startswith("vace_blocks.1.before_proj") for k in names)


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def test_config_defaults_when_absent(tmp_path):
    """Without vace_layers / vace_in_dim: every second layer from 0 and in_dim (official)."""
    folder = write_dit(tmp_path / "m", "vace", SIZES, seed=4)
    with_keys = VaceWanModel.from_pretrained(folder)
    _edit_config(folder, vace_layers=None, model_type=None)
    m = VaceWanModel.from_pretrained(folder)
    assert m.vace_layers == [0, 2] and m.vace_in_dim == 96 and m.model_type == "vace"
    assert m.vace_layers == with_keys.vace_layers
    _edit_config(folder, vace_in_dim=None)  # then it is in_dim (16), not what the conv takes
    with pytest.raises(CheckpointError, match="without 'vace_in_dim' in config.json it is in_dim "
                                              "16 but 'vace_patch_embedding.weight' takes 96"):
        VaceWanModel.from_pretrained(folder)


def test_config_contradicts_vace_shapes(tmp_path):
    folder = write_dit(tmp_path / "m", "vace", SIZES, seed=4)
    _edit_config(folder, vace_layers=[0, 1, 3])
    with pytest.raises(CheckpointError, match=r"'vace_layers' \[0, 1, 3\] gives 3 VACE layers "
                                              r"but the weights have 2 VACE blocks"):
        VaceWanModel.from_pretrained(folder)
    _edit_config(folder, vace_layers=[1, 3])
    with pytest.raises(CheckpointError, match="must include layer 0"):
        VaceWanModel.from_pretrained(folder)
    _edit_config(folder, vace_layers=[0, 4])
    with pytest.raises(CheckpointError, match="distinct indices of the 4 main blocks"):
        VaceWanModel.from_pretrained(folder)
    _edit_config(folder, vace_layers=[0, 3], vace_in_dim=48)
    with pytest.raises(CheckpointError, match="config.json says vace_in_dim=48 but "
                                              "'vace_patch_embedding.weight' takes 96"):
        VaceWanModel.from_pretrained(folder)
    _edit_config(folder, vace_in_dim=96)
    assert VaceWanModel.from_pretrained(folder).vace_layers == [0, 3]  # non-default layout loads


def test_default_layers_disagree_with_the_weights(tmp_path):
    """No vace_layers in config.json: the default (0, 2, 4 of 6 layers) must fit the weights."""
    folder = write_dit(tmp_path / "m", "vace", TinySizes(num_layers=6), seed=4)
    _edit_config(folder, vace_layers=None)
    assert VaceWanModel.from_pretrained(folder).vace_layers == [0, 2, 4]
    sd = official_state_dict(folder)
    sd = {k: v for k, v in sd.items() if not k.startswith("vace_blocks.2.")}
    save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"every second of the 6 layers \(3\) gives 3 VACE "
                                              r"layers but the weights have 2 VACE blocks"):
        VaceWanModel.from_pretrained(folder)


def test_wan_model_refuses_a_vace_folder(vace_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="holds a Wan2.1 VACE DiT.*config.json 'model_type' "
                                              "'vace'.*VaceWanModel"):
        WanModel.from_pretrained(vace_ckpt)
    folder = write_dit(tmp_path / "m", "vace", SIZES, seed=4)
    _edit_config(folder, model_type=None)
    with pytest.raises(CheckpointError, match="holds a Wan2.1 VACE DiT.*'vace_blocks.N'.*"
                                              "VaceWanModel"):
        WanModel.from_pretrained(folder)


def test_vace_model_refuses_a_t2v_folder(t2v_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="not a Wan2.1 VACE DiT: no vace_blocks keys.*"
                                              "'model_type' 't2v'.*Wan2.1-VACE"):
        VaceWanModel.from_pretrained(t2v_ckpt)
    folder = write_dit(tmp_path / "m", "vace", SIZES, seed=4)
    _edit_config(folder, model_type="t2v")
    with pytest.raises(CheckpointError, match="'t2v' but the weights have the VACE tensors"):
        VaceWanModel.from_pretrained(folder)
    _edit_config(folder, model_type="vace")
    with pytest.raises(CheckpointError, match="holds a vace DiT.*t2v model is needed"):
        VaceWanModel.from_pretrained(folder, model_type="t2v")


def test_missing_vace_tensors(tmp_path):
    folder = write_dit(tmp_path / "m", "vace", SIZES, seed=4)
    f = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    save_file({k: v for k, v in sd.items() if k != "vace_blocks.1.after_proj.weight"}, f)
    with pytest.raises(CheckpointError, match=r"missing tensors \(vace_blocks\.1\.after_proj"):
        VaceWanModel.from_pretrained(folder)
    save_file({k: v for k, v in sd.items() if not k.startswith("vace_patch_embedding")}, f)
    with pytest.raises(CheckpointError, match="'vace_patch_embedding.weight' is missing"):
        VaceWanModel.from_pretrained(folder)


def test_constructor_and_forward_errors(pair):
    ours, _ = pair
    with torch.device("meta"):
        with pytest.raises(ValueError, match="must include layer 0"):
            VaceWanModel(vace_layers=[1], dim=64, ffn_dim=32, num_heads=4, num_layers=2)
        with pytest.raises(ValueError, match="model_type must be one of"):
            WanModel(model_type="vace")
    x, z, ctx = inputs((1, 4, 4), 0)
    t = torch.tensor([1])
    with pytest.raises(ValueError, match=r"must be \[96, F, H, W\].*got \[16, 1, 4, 4\]"):
        ours([x], t, [x], [ctx], 4)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\) does not match its latent \(1, 4, 4\)"):
        ours([x], t, [torch.cat([z, z], 1)], [ctx], 8)
    with pytest.raises(ValueError, match="one per VACE layer \\(2\\)"):
        ours([x], t, [z], [ctx], 4, vace_context_scale=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="1 latents for a batch of 2"):
        ours([x, x], t, [z], [ctx, ctx], 4)
    with pytest.raises(ValueError, match="4 tokens but seq_len is 2"):
        ours([x], t, [z], [ctx], 2)
    with pytest.raises(ValueError, match="takes no clip_fea / y"):
        ours([x], t, [z], [ctx], 4, y=[x])


# ------------------------------------------------------------------ precision and caching
def test_bf16_matmul_weights_equal_autocast(vace_ckpt):
    full = VaceWanModel.from_pretrained(vace_ckpt)
    half = VaceWanModel.from_pretrained(vace_ckpt, matmul_dtype=torch.bfloat16)
    b0, b1 = half.vace_blocks
    for p in (b0.before_proj.weight, b0.before_proj.bias, b1.after_proj.weight,
              b1.self_attn.q.weight, b1.cross_attn.o.weight, b0.ffn[2].weight,
              half.vace_patch_embedding.weight, half.vace_patch_embedding.bias):
        assert p.dtype == torch.bfloat16
    for p in (b0.modulation, b0.norm3.weight, b1.self_attn.norm_q.weight, half.head.head.weight):
        assert p.dtype == torch.float32
    assert is_matmul_weight("vace_blocks.7.after_proj.bias")
    assert not is_matmul_weight("vace_blocks.0.modulation")
    x, z, ctx = inputs((2, 4, 6), 3, refs=1)
    outs = []
    for m in (full, half):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(m([x], torch.tensor([500]), [z], [ctx], 18, vace_context_scale=0.8)[0])
    assert outs[0].dtype == torch.float32 and torch.equal(outs[0], outs[1])
    with torch.no_grad():
        exact = full([x], torch.tensor([500]), [z], [ctx], 18, vace_context_scale=0.8)[0]
    assert 0 < rel_err(outs[1], exact) < 5e-2


def test_cached_context_covers_the_vace_blocks(pair, monkeypatch):
    from wan.modules.model import CrossAttention, cached_context

    ours, _ = pair
    x, z, ctx = inputs((2, 4, 6), 8)
    calls = []
    real = CrossAttention.context_kv
    monkeypatch.setattr(CrossAttention, "context_kv",
                        lambda self, c: calls.append(self) or real(self, c))
    with torch.no_grad():
        plain = [ours([x * s], torch.tensor([900]), [z], [ctx], 12) for s in (1.0, 0.5)]
        with cached_context(ours):
            cached = [ours([x * s], torch.tensor([900]), [z], [ctx], 12) for s in (1.0, 0.5)]
    n = SIZES.num_layers + len(ours.vace_blocks)
    assert len(calls) == 3 * n  # twice without the cache, once with it
    assert set(calls[-n:]) >= {b.cross_attn for b in ours.vace_blocks}
    for a, b in zip(plain, cached):
        assert torch.equal(a[0], b[0])


def test_block_offload_same_numbers(vace_ckpt):
    """Block offload streams the main blocks; the VACE blocks stay resident."""
    from wan.utils.offload import enable_block_offload

    ours = VaceWanModel.from_pretrained(vace_ckpt)
    x, z, ctx = inputs((2, 4, 6), 9)
    with torch.no_grad():
        ref = ours([x], torch.tensor([300]), [z], [ctx], 12)[0]
        offloader = enable_block_offload(ours, "cpu", resident=1)
        out = ours([x], torch.tensor([300]), [z], [ctx], 12)[0]
        offloader.remove()
    assert torch.equal(out, ref)


# ------------------------------------------------------------------ sequence parallel (2 processes)
SP_SHAPE = (3, 6, 6)  # 27 tokens: odd, so the 2-way runs pad to 28


def sp_job(rank: int, port: int, ckpt: str, out_file: str) -> None:
    import torch.distributed as dist

    from test_distributed import init_gloo
    from wan.distributed.fsdp import resident_parameter_numel, shard_model
    from wan.distributed.sequence_parallel import enable_sequence_parallel, init_sequence_parallel

    init_gloo(rank, port)
    x, z, ctx = inputs(SP_SHAPE, 4)
    x2, z2, ctx2 = inputs((2, 4, 6), 6, refs=1)  # 18 tokens, a second sample of another size
    args = ([x, x2], torch.tensor([700, 300]), [z, z2], [ctx, ctx2])
    results = {}
    with torch.no_grad():
        results["single"] = VaceWanModel.from_pretrained(ckpt)(*args, 27, vace_context_scale=0.7)
        for name, (u, r) in {"ulysses": (2, 1), "ring": (1, 2)}.items():
            model = VaceWanModel.from_pretrained(ckpt)
            assert enable_sequence_parallel(model, init_sequence_parallel(u, r)) == 2
            assert all(b.self_attn.sp is model.sp for b in model.vace_blocks)
            results[name] = model(*args, 28, vace_context_scale=0.7)
            if name == "ulysses":  # teeth: vace blocks attending their own slice only
                for b in model.vace_blocks:
                    b.self_attn.sp = None
                results["vace_not_parallel"] = model(*args, 28, vace_context_scale=0.7)
        model = shard_model(VaceWanModel.from_pretrained(ckpt), "cpu")  # FSDP, no SP
        results["fsdp"] = model(*args, 27, vace_context_scale=0.7)
        total = sum(p.numel() for p in model.parameters())
        results["fsdp_fraction"] = resident_parameter_numel(model) / total
    if rank == 0:
        torch.save(results, out_file)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sp_results(vace_ckpt, tmp_path_factory):
    from test_distributed import WORLD, free_port

    out = tmp_path_factory.mktemp("vace_sp") / "results.pt"
    t0 = time.perf_counter()
    mp.spawn(sp_job, args=(free_port(), str(vace_ckpt), str(out)), nprocs=WORLD, join=True)
    res = torch.load(out, weights_only=False)
    print(f"2-process VACE job: {time.perf_counter() - t0:.1f} s")
    return res


@pytest.mark.parametrize("variant", ["ulysses", "ring", "fsdp"])
def test_sequence_parallel_equals_single_process(sp_results, variant):
    for i, (a, b) in enumerate(zip(sp_results[variant], sp_results["single"])):
        err = rel_err(a, b)
        print(f"VACE {variant} 2, sample {i}: relative error {err:.2e}")
        assert a.shape == b.shape and err <= 1e-5


def test_fsdp_keeps_about_one_shard_per_rank(sp_results):
    assert abs(sp_results["fsdp_fraction"] - 0.5) < 0.03


def test_sequence_parallel_needs_the_vace_blocks(sp_results):
    err = rel_err(sp_results["vace_not_parallel"][0], sp_results["single"][0])
    assert err > 1e-4
