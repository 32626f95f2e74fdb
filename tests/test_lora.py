"""LoRA merging (wan.utils.lora): parity with diffusers' LoRA loader in its three layouts,
full deltas diffusers drops, unloading bit for bit, errors, pipelines."""

import copy
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import fp32_config, rel_err
from test_model import SIZES, diffusers_model, reference
from wan.modules.model import WanModel
from wan.utils.checkpoint import CheckpointError
from wan.utils.lora import DIFFUSERS_NAMES, _BLOCK_PARTS, _TOP_PARTS, apply_lora, unload_loras
from wan.utils.tiny_checkpoint import TinySizes, write_dit

pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`")

RANK, ALPHA = 4, 8.0
# official -> diffusers module names, from the table (inverted once here)
_TO_DIFFUSERS_BLOCK = {v: k for k, v in _BLOCK_PARTS.items()}
_TO_DIFFUSERS_TOP = {v: k for k, v in _TOP_PARTS.items()}


def to_diffusers(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "blocks":
        return f"blocks.{parts[1]}.{_TO_DIFFUSERS_BLOCK['.'.join(parts[2:])]}"
    return _TO_DIFFUSERS_TOP[module]


def lora_modules(model_type: str, kohya: bool = False) -> list[str]:
    """The modules a test LoRA covers."""
    mods = []
    for i in range(SIZES.num_layers):
        mods += [f"blocks.{i}.{a}.{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"]
        if model_type == "i2v":
            mods += [f"blocks.{i}.cross_attn.k_img", f"blocks.{i}.cross_attn.v_img"]
        mods += [f"blocks.{i}.ffn.0", f"blocks.{i}.ffn.2"]
    if not kohya:
        mods.append("time_projection.1")
    return mods


def make_lora(model: WanModel, layout: str, model_type: str, seed: int) -> dict:
    """A random rank-4 LoRA (alpha 8 where the layout has alphas) for ``model``'s shapes,
    with bias deltas on ffn.0 of block 0 and time_projection.1 (not for kohya)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    sd = {}
    for m in lora_modules(model_type, kohya=layout == "kohya"):
        out_f, in_f = params[f"{m}.weight"].shape
        down = 0.1 * torch.randn(RANK, in_f, generator=g)
        up = 0.1 * torch.randn(out_f, RANK, generator=g)
        bias = 0.05 * torch.randn(out_f, generator=g) if m in ("blocks.0.ffn.0",
                                                             "time_projection.1") else None
        if layout == "wan":
            # diffusers' converter takes no alpha for time_projection
            k = f"diffusion_model.{m}"
            sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"] = down, up
            if not m.startswith("time_projection"):
                sd[f"{k}.alpha"] = torch.tensor(ALPHA)
            if bias is not None:
                sd[f"{k}.diff_b"] = bias
        elif layout == "diffusers":  # PEFT keys carry no alpha: alpha = rank
            k = f"transformer.{to_diffusers(m)}"
            sd[f"{k}.lora_A.weight"], sd[f"{k}.lora_B.weight"] = down, up
            if bias is not None:
                sd[f"{k}.lora_B.bias"] = bias
        else:
            k = "lora_unet_" + m.replace(".", "_")
            sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"] = down, up
            sd[f"{k}.alpha"] = torch.tensor(ALPHA)
    return sd


@pytest.fixture(scope="module", params=["t2v", "i2v"])
def base(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"lora_dit_{request.param}")
    write_dit(folder, request.param, SIZES, seed=3)
    return request.param, folder, WanModel.from_pretrained(folder), diffusers_model(folder)


def inputs(model_type: str):
    g = torch.Generator().manual_seed(5)
    f, h, w = 1, 4, 6
    x = torch.randn(16, f, h, w, generator=g)
    ctx = torch.randn(7, SIZES.t5_dim, generator=g)
    clip = y = None
    if model_type == "i2v":
        clip = torch.randn(1, 257, SIZES.clip_width, generator=g)
        y = torch.randn(20, f, h, w, generator=g)
    return x, torch.tensor([731]), ctx, clip, y


@torch.no_grad()
def run_ours(model, model_type):
    x, t, ctx, clip, y = inputs(model_type)
    return model([x], t, [ctx], 6, clip_fea=clip, y=None if y is None else [y])[0]


@torch.no_grad()
def run_diffusers(ref, model_type):
    x, t, ctx, clip, y = inputs(model_type)
    return reference(ref, model_type, x, t, ctx, clip, y)


def diffusers_with_loras(ref, files_scales):
    """A copy of ``ref`` with the LoRAs loaded by diffusers' WanPipeline loader."""
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=copy.deepcopy(ref),
                       vae=None, scheduler=None)
    names = []
    for i, (f, _) in enumerate(files_scales):
        pipe.load_lora_weights(str(f), adapter_name=f"l{i}", low_cpu_mem_usage=False)
        names.append(f"l{i}")
    pipe.set_adapters(names, [s for _, s in files_scales])
    return pipe.transformer


@pytest.mark.parametrize("layout", ["wan", "diffusers", "kohya"])
def test_parity_with_diffusers(base, layout, tmp_path):
    model_type, _, ours, ref = base
    f = tmp_path / f"{layout}.safetensors"
    save_file(make_lora(ours, layout, model_type, seed=1), f)
    base_out = run_ours(ours, model_type)
    n = apply_lora(ours, f, scale=1.0)
    try:
        assert n == len(lora_modules(model_type, layout == "kohya")) + (
            0 if layout == "kohya" else 2)  # + the two bias deltas
        a = run_ours(ours, model_type)
        b = run_diffusers(diffusers_with_loras(ref, [(f, 1.0)]), model_type)
        err = rel_err(a, b)
        print(f"{model_type} {layout}: rel err {err:.2e}, change {rel_err(a, base_out):.2e}")
        assert err <= 1e-5
        assert rel_err(a, base_out) > 1e-3  # the LoRA does change the output
    finally:
        unload_loras(ours)
    assert torch.equal(run_ours(ours, model_type), base_out)


def test_parity_peft_metadata_alphas(base, tmp_path):
    """A diffusers-saved file: alphas in the safetensors header (lora_alpha, alpha_pattern)."""
    import json

    model_type, _, ours, ref = base
    sd = make_lora(ours, "diffusers", model_type, seed=3)
    targets = sorted({k[len("transformer."):].rsplit(".lora_", 1)[0] for k in sd})
    cfg = {"r": RANK, "lora_alpha": ALPHA, "alpha_pattern": {"blocks.0.attn1.to_q": 2.0},
           "target_modules": targets, "lora_bias": True}
    f = tmp_path / "peft.safetensors"
    save_file(sd, f, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(
        {f"transformer.{k}": v for k, v in cfg.items()})})
    base_out = run_ours(ours, model_type)
    apply_lora(ours, f, 0.6)
    try:
        a = run_ours(ours, model_type)
        b = run_diffusers(diffusers_with_loras(ref, [(f, 0.6)]), model_type)
        print(f"{model_type} PEFT metadata: rel err {rel_err(a, b):.2e}")
        assert rel_err(a, b) <= 1e-5
        q = ours.blocks[0].self_attn.q.weight
        up = sd["transformer.blocks.0.attn1.to_q.lora_B.weight"]
        down = sd["transformer.blocks.0.attn1.to_q.lora_A.weight"]
        unload_loras(ours)
        q0 = q.clone()
        apply_lora(ours, f, 0.6)
        assert torch.allclose(q, q0 + 0.6 * (2.0 / RANK) * (up @ down), atol=1e-7)
    finally:
        unload_loras(ours)
    assert torch.equal(run_ours(ours, model_type), base_out)


def test_two_loras_add_up_and_unload(base, tmp_path):
    model_type, folder, ours, ref = base
    f1, f2 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(make_lora(ours, "wan", model_type, seed=1), f1)
    save_file(make_lora(ours, "wan", model_type, seed=2), f2)
    base_sd = {k: v.clone() for k, v in ours.state_dict().items()}
    base_out = run_ours(ours, model_type)
    apply_lora(ours, f1, 0.7)
    apply_lora(ours, f2, -0.3)
    a = run_ours(ours, model_type)
    b = run_diffusers(diffusers_with_loras(ref, [(f1, 0.7), (f2, -0.3)]), model_type)
    print(f"{model_type} two LoRAs: rel err {rel_err(a, b):.2e}")
    assert rel_err(a, b) <= 1e-5
    assert unload_loras(ours) > 0
    assert all(torch.equal(v, base_sd[k]) for k, v in ours.state_dict().items())
    assert torch.equal(run_ours(ours, model_type), base_out)
    assert unload_loras(ours) == 0


def test_full_deltas_diffusers_drops(tmp_path):
    """.diff (full weight), norm deltas and .diff_m (modulation): W + scale * delta."""
    write_dit(tmp_path / "dit", "t2v", SIZES, seed=4)
    model = WanModel.from_pretrained(tmp_path / "dit")
    p = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    deltas = {
        "blocks.0.self_attn.q.diff": "blocks.0.self_attn.q.weight",
        "blocks.1.norm3.diff": "blocks.1.norm3.weight",
        "blocks.1.norm3.diff_b": "blocks.1.norm3.bias",
        "blocks.0.cross_attn.norm_q.diff": "blocks.0.cross_attn.norm_q.weight",
        "blocks.0.diff_m": "blocks.0.modulation",
        "head.diff_m": "head.modulation",
        "patch_embedding.diff": "patch_embedding.weight",
    }
    sd = {f"diffusion_model.{k}": torch.randn(p[v].shape, generator=g) for k, v in deltas.items()}
    assert apply_lora(model, sd, scale=0.5) == len(deltas)
    now = model.state_dict()
    for k, v in deltas.items():
        want = p[v] + 0.5 * sd[f"diffusion_model.{k}"]
        assert torch.equal(now[v], want), k
    unload_loras(model)
    assert all(torch.equal(v, p[k]) for k, v in model.state_dict().items())


def test_bf16_weights_merge_in_fp32(tmp_path):
    write_dit(tmp_path / "dit", "t2v", SIZES, seed=4)
    model = WanModel.from_pretrained(tmp_path / "dit", matmul_dtype=torch.bfloat16)
    w = model.blocks[0].self_attn.q.weight
    base = w.clone()
    assert w.dtype == torch.bfloat16
    down, up = torch.randn(RANK, SIZES.dim), torch.randn(SIZES.dim, RANK)
    apply_lora(model, {"blocks.0.self_attn.q.lora_down.weight": down,
                       "blocks.0.self_attn.q.lora_up.weight": up,
                       "blocks.0.self_attn.q.alpha": torch.tensor(ALPHA)}, 0.3)
    want = (base.float() + 0.3 * (ALPHA / RANK) * (up @ down)).bfloat16()
    assert w.dtype == torch.bfloat16 and torch.equal(w, want)
    unload_loras(model)
    assert torch.equal(w, base)


def test_lora_a_b_names_without_prefix_same_merge(tiny):
    """ComfyUI files also write lora_A / lora_B and no ``diffusion_model.`` prefix."""
    sd = make_lora(tiny, "wan", "t2v", seed=1)
    renamed = {k.replace("diffusion_model.", "").replace("lora_down", "lora_A")
               .replace("lora_up", "lora_B"): v for k, v in sd.items()}
    apply_lora(tiny, sd, 0.5)
    first = {k: v.clone() for k, v in tiny.state_dict().items()}
    unload_loras(tiny)
    apply_lora(tiny, renamed, 0.5)
    assert all(torch.equal(v, first[k]) for k, v in tiny.state_dict().items())
    unload_loras(tiny)


def test_block_offloaded_model(tmp_path):
    """With block offload the block weights live in the offloader's CPU masters."""
    from wan.utils.offload import enable_block_offload

    write_dit(tmp_path / "dit", "t2v", SIZES, seed=4)
    plain, offl = (WanModel.from_pretrained(tmp_path / "dit") for _ in range(2))
    enable_block_offload(offl, "cpu", resident=1)
    base_out = run_ours(offl, "t2v")
    lora = make_lora(plain, "wan", "t2v", seed=1)
    assert apply_lora(plain, lora) == apply_lora(offl, lora)
    assert torch.equal(run_ours(offl, "t2v"), run_ours(plain, "t2v"))
    unload_loras(offl)
    assert torch.equal(run_ours(offl, "t2v"), base_out)


# ------------------------------------------------------------------ model kinds
def test_t2v_lora_on_i2v_model(tmp_path, caplog):
    write_dit(tmp_path / "t2v", "t2v", SIZES, seed=4)
    write_dit(tmp_path / "i2v", "i2v", SIZES, seed=4)
    t2v, i2v = (WanModel.from_pretrained(tmp_path / k) for k in ("t2v", "i2v"))
    with caplog.at_level(logging.WARNING):
        n = apply_lora(i2v, make_lora(t2v, "wan", "t2v", seed=1))
    assert n == len(lora_modules("t2v")) + 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_i2v_lora_on_t2v_model_skips_image_keys(tmp_path, caplog):
    write_dit(tmp_path / "t2v", "t2v", SIZES, seed=4)
    write_dit(tmp_path / "i2v", "i2v", SIZES, seed=4)
    t2v, i2v = (WanModel.from_pretrained(tmp_path / k) for k in ("t2v", "i2v"))
    with caplog.at_level(logging.WARNING):
        n = apply_lora(t2v, make_lora(i2v, "kohya", "i2v", seed=1))
    assert n == len(lora_modules("t2v", kohya=True))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"{2 * SIZES.num_layers} tensors" in warnings[0].getMessage()
    assert "k_img" in warnings[0].getMessage()


def test_vace_model(vace_ckpt):
    from wan.modules.vace_model import VaceWanModel

    model = VaceWanModel.from_pretrained(vace_ckpt)
    w = model.vace_blocks[0].before_proj.weight
    base = w.clone()
    down, up = torch.randn(RANK, SIZES.dim), torch.randn(SIZES.dim, RANK)
    # diffusers' name of the VACE block's before_proj
    assert apply_lora(model, {"transformer.vace_blocks.0.proj_in.lora_A.weight": down,
                              "transformer.vace_blocks.0.proj_in.lora_B.weight": up}) == 1
    assert torch.allclose(w, base + up @ down)


def test_diffusers_table_covers_the_dit_linears():
    """Every Linear of a Wan DiT block has a diffusers name in the table."""
    assert "{b}.attn2.add_k_proj" in DIFFUSERS_NAMES
    model = WanModel(model_type="i2v", dim=64, ffn_dim=128, num_heads=4, num_layers=1,
                     text_dim=32, in_dim=36, clip_dim=160)
    linears = {n[len("blocks.0."):] for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("blocks.0.")}
    assert linears <= set(_BLOCK_PARTS.values())
    top = {n for n, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and not n.startswith("blocks.")}
    assert top <= set(_TOP_PARTS.values())


# ------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora_err")
    write_dit(folder, "t2v", SIZES, seed=4)
    return WanModel.from_pretrained(folder)


def test_missing_and_unreadable_files(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="LoRA file not found"):
        apply_lora(tiny, tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        apply_lora(tiny, bad)
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        apply_lora(tiny, bad_pt)


def test_pickle_with_code_is_refused(tiny, tmp_path):
    f = tmp_path / "evil.pt"
    torch.save({"blocks.0.self_attn.q.lora_down.weight": torch.zeros(RANK, SIZES.dim),
                "payload": Path("/etc/passwd")}, f)
    with pytest.raises(CheckpointError, match="could run code"):
        apply_lora(tiny, f)
    ok = tmp_path / "ok.pt"
    sd = make_lora(tiny, "wan", "t2v", seed=1)
    torch.save(sd, ok)
    assert apply_lora(tiny, ok) == len(lora_modules("t2v")) + 2
    unload_loras(tiny)


def test_shapes_that_do_not_fit(tiny, tmp_path):
    folder = tmp_path / "big"
    big = TinySizes(dim=96, ffn_dim=192, num_heads=4)
    write_dit(folder, "t2v", big, seed=4)
    lora = make_lora(WanModel.from_pretrained(folder), "wan", "t2v", seed=1)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with pytest.raises(ValueError, match=r"'diffusion_model\.blocks\.0\.self_attn\.q\.lora_up"
                                         r"\.weight' .* does not fit 'blocks\.0\.self_attn\.q"):
        apply_lora(tiny, lora)
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())  # untouched


def test_no_matching_key_and_bad_keys(tiny):
    lora = {"diffusion_model.foo.bar.lora_down.weight": torch.zeros(RANK, 8),
            "diffusion_model.foo.bar.lora_up.weight": torch.zeros(8, RANK)}
    with pytest.raises(ValueError, match="matches no weight"):
        apply_lora(tiny, lora)
    with pytest.raises(ValueError, match="not a LoRA tensor"):
        apply_lora(tiny, {"blocks.0.self_attn.q.lora_mid.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="no matching down"):
        apply_lora(tiny, {"blocks.0.self_attn.q.lora_up.weight": torch.zeros(SIZES.dim, RANK)})
    with pytest.raises(ValueError, match="DoRA"):
        apply_lora(tiny, {"blocks.0.self_attn.q.dora_scale": torch.zeros(1, SIZES.dim)})


@pytest.mark.parametrize("scale", ["0.5", None, float("nan"), True])
def test_scale_must_be_a_number(tiny, scale):
    with pytest.raises(ValueError, match="scale must be a finite number"):
        apply_lora(tiny, make_lora(tiny, "wan", "t2v", seed=1), scale)


# ------------------------------------------------------------------ pipelines
def test_pipeline_load_and_unload(t2v_a14b_ckpt, tmp_path):
    import wan
    from wan.utils.io import sha256_file

    pipe = wan.WanT2V(fp32_config("t2v-A14B"), t2v_a14b_ckpt, device_id="cpu")
    high, low = pipe.dits["high"], pipe.dits["low"]
    f = tmp_path / "l.safetensors"
    save_file(make_lora(high, "wan", "t2v", seed=1), f)
    h0, l0 = high.blocks[0].self_attn.q.weight.clone(), low.blocks[0].self_attn.q.weight.clone()
    assert pipe.loras == []
    pipe.load_lora(f, scale=0.5, expert="high")
    assert not torch.equal(high.blocks[0].self_attn.q.weight, h0)
    assert torch.equal(low.blocks[0].self_attn.q.weight, l0)
    pipe.load_lora(f)
    assert not torch.equal(low.blocks[0].self_attn.q.weight, l0)
    assert pipe.loras == [
        {"path": str(f), "sha256": sha256_file(f), "scale": 0.5, "expert": "high"},
        {"path": str(f), "sha256": sha256_file(f), "scale": 1.0, "expert": None}]
    with pytest.raises(ValueError, match="unknown LoRA expert 'middle'"):
        pipe.load_lora(f, expert="middle")
    with pytest.raises(ValueError, match="scale"):
        pipe.load_lora(f, scale="x")
    pipe.unload_loras()
    assert pipe.loras == []
    assert torch.equal(high.blocks[0].self_attn.q.weight, h0)
    assert torch.equal(low.blocks[0].self_attn.q.weight, l0)


def test_pipeline_single_dit_rejects_experts(t2v_ckpt, tmp_path):
    import wan

    pipe = wan.WanT2V(fp32_config("t2v-1.3B"), t2v_ckpt, device_id="cpu")
    f = tmp_path / "l.safetensors"
    save_file(make_lora(pipe.model, "wan", "t2v", seed=1), f)
    with pytest.raises(ValueError, match="this model has one DiT"):
        pipe.load_lora(f, expert="high")
    assert pipe.load_lora(f) > 0
    pipe.unload_loras()
