"""CLIP image encoder: parity with transformers' CLIP ViT, preprocessing, loading errors.

The oracle is ``transformers.CLIPVisionModel`` (an independent implementation
of the same pre-norm ViT) given the same weights, renamed from the open-clip
layout. Wan I2V uses the output of all blocks but the last, which is
``hidden_states[-2]`` there.
"""

from __future__ import annotations

import gc
import logging
import time

import pytest
import torch
import torch.nn.functional as F

from wan.modules.clip import CLIPModel
from wan.utils.checkpoint import CheckpointError
from wan.utils.tiny_checkpoint import TinySizes, write_clip, write_xlm_roberta_tokenizer

log = logging.getLogger(__name__)

# The official open-clip / OpenAI constants, written out independently of the module.
OFFICIAL_MEAN = [0.48145466, 0.4578275, 0.40821073]
OFFICIAL_STD = [0.26862954, 0.26130258, 0.27577711]
MEAN = torch.tensor(OFFICIAL_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OFFICIAL_STD).view(1, 3, 1, 1)

TINY = TinySizes()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def reference_pixels(videos: list[torch.Tensor]) -> torch.Tensor:
    """The official preprocessing, step by step: bicubic to 224, [-1,1] -> [0,1], mean/std."""
    frames = [F.interpolate(v.float().permute(1, 0, 2, 3), size=(224, 224), mode="bicubic",
                            align_corners=False) for v in videos]
    x = (torch.cat(frames) + 1.0) / 2.0
    return (x - MEAN) / STD


def hf_vision_model(sd: dict[str, torch.Tensor], width: int, layers: int, mlp_dim: int):
    """A ``transformers`` CLIP ViT holding the ``visual.*`` tensors of an open-clip state dict."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=width, intermediate_size=mlp_dim,
                              num_attention_heads=width // 80, num_hidden_layers=layers,
                              image_size=224, patch_size=14, num_channels=3, hidden_act="gelu",
                              layer_norm_eps=1e-5, attn_implementation="eager")
    model = CLIPVisionModel(config).eval()
    expected = model.state_dict()
    prefix = next(k for k in expected if k.endswith("embeddings.class_embedding"))
    prefix = prefix[: -len("embeddings.class_embedding")]

    hf = {
        "embeddings.patch_embedding.weight": sd["visual.patch_embedding.weight"],
        "embeddings.class_embedding": sd["visual.cls_embedding"].reshape(width),
        "embeddings.position_embedding.weight": sd["visual.pos_embedding"][0],
        "pre_layrnorm.weight": sd["visual.pre_norm.weight"],
        "pre_layrnorm.bias": sd["visual.pre_norm.bias"],
        "post_layernorm.weight": sd["visual.post_norm.weight"],
        "post_layernorm.bias": sd["visual.post_norm.bias"],
    }
    for i in range(layers):
        src, dst = f"visual.transformer.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.to_qkv.{kind}"].chunk(3, dim=0)
            hf[f"{dst}self_attn.q_proj.{kind}"] = q
            hf[f"{dst}self_attn.k_proj.{kind}"] = k
            hf[f"{dst}self_attn.v_proj.{kind}"] = v
            hf[f"{dst}self_attn.out_proj.{kind}"] = sd[f"{src}attn.proj.{kind}"]
            hf[f"{dst}layer_norm1.{kind}"] = sd[f"{src}norm1.{kind}"]
            hf[f"{dst}layer_norm2.{kind}"] = sd[f"{src}norm2.{kind}"]
            hf[f"{dst}mlp.fc1.{kind}"] = sd[f"{src}mlp.0.{kind}"]
            hf[f"{dst}mlp.fc2.{kind}"] = sd[f"{src}mlp.2.{kind}"]
    model.load_state_dict({prefix + k: v.float() for k, v in hf.items()}, strict=True)
    return model


def hf_penultimate(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-2]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("clip") / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    write_clip(path, TINY, seed=3)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tiny_clip) -> CLIPModel:
    return CLIPModel(dtype=torch.float32, device="cpu", checkpoint_path=tiny_clip,
                     tokenizer_path=None)


# ------------------------------------------------------------------ parity
def test_parity_with_transformers(tiny_clip, tiny_model):
    sd = torch.load(tiny_clip, weights_only=True)
    width, layers = TINY.clip_width, TINY.clip_layers
    hf = hf_vision_model(sd, width, layers, int(width * TINY.clip_mlp_ratio))

    g = torch.Generator().manual_seed(0)
    # Two images of other sizes and a two-frame clip: four frames in all.
    videos = [torch.rand(3, 1, 300, 200, generator=g) * 2 - 1,
              torch.rand(3, 1, 224, 224, generator=g) * 2 - 1,
              torch.rand(3, 2, 97, 131, generator=g) * 2 - 1]
    ours = tiny_model.visual(videos)
    ref = hf_penultimate(hf, reference_pixels(videos))

    assert ours.shape == (4, 257, width) and ours.dtype == torch.float32
    err = rel_err(ours, ref)
    log.info("CLIP tiny fp32 parity vs transformers: rel err %.3g", err)
    assert err <= 1e-5, err
    # The last block changes the features: using it (or not) is visible.
    assert rel_err(hf(pixel_values=reference_pixels(videos), output_hidden_states=True)
                   .hidden_states[-1].detach(), ref) > 1e-2


def test_preprocessing_matches_official_steps(tiny_model):
    g = torch.Generator().manual_seed(1)
    videos = [torch.rand(3, 1, 480, 832, generator=g) * 2 - 1]
    pixels = tiny_model.preprocess(videos)
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.float32
    assert rel_err(pixels, reference_pixels(videos)) <= 1e-6
    # A 224x224 input is only normalised.
    same = torch.rand(3, 1, 224, 224, generator=g) * 2 - 1
    expected = ((same.permute(1, 0, 2, 3) + 1) / 2 - MEAN) / STD
    torch.testing.assert_close(tiny_model.preprocess([same]), expected, rtol=1e-6, atol=1e-6)
    assert tiny_model.size == (224, 224)
    assert tiny_model.mean == OFFICIAL_MEAN and tiny_model.std == OFFICIAL_STD


def test_loaded_tensors_keep_official_names(tiny_clip, tiny_model):
    sd = torch.load(tiny_clip, weights_only=True)
    ours = tiny_model.model.state_dict()
    assert ours, "empty model"
    for name, tensor in ours.items():
        assert name in sd, name
        assert torch.equal(tensor, sd[name]), name
    # Not built: text tower, logit scale, image head and post-norm, last block.
    last = f"visual.transformer.{TINY.clip_layers - 1}."
    assert not any(k.startswith(("textual.", "log_scale", "visual.head", "visual.post_norm", last))
                   for k in ours)
    assert not hasattr(tiny_model.model, "textual")
    norms = [m for m in tiny_model.model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1 + 2 * (TINY.clip_layers - 1)
    assert all(m.eps == 1e-5 for m in norms)  # open-clip's LayerNorm default


def test_skipped_tensors_are_logged(tiny_clip, caplog):
    with caplog.at_level(logging.DEBUG, logger="wan.modules.clip"):
        CLIPModel(torch.float32, "cpu", tiny_clip, None)
    msgs = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(msgs) == 1
    assert "8 text tower and logit scale" in msgs[0]
    assert "3 image head and post-norm" in msgs[0]
    assert "12 last image block" in msgs[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(tiny_clip, tiny_model, dtype):
    model = CLIPModel(dtype, "cpu", tiny_clip, None)
    assert all(p.dtype == dtype for p in model.model.parameters())
    g = torch.Generator().manual_seed(2)
    videos = [torch.rand(3, 1, 256, 256, generator=g) * 2 - 1]
    out = model.visual(videos)
    assert out.dtype == dtype
    err = rel_err(out, tiny_model.visual(videos))
    log.info("CLIP tiny %s vs fp32: rel err %.3g", dtype, err)
    assert err < (3e-2 if dtype == torch.bfloat16 else 5e-3), err


def test_inputs_stay_untouched(tiny_model):
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    before = x.clone()
    tiny_model.visual([x])
    assert torch.equal(x, before)


# ------------------------------------------------------------------ bad inputs
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        CLIPModel(torch.float32, "cpu", tmp_path / "nope.pth", None)


def test_corrupted_file(tiny_clip, tmp_path):
    bad = tmp_path / "clip.pth"
    bad.write_bytes(open(tiny_clip, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as e:
        CLIPModel(torch.float32, "cpu", bad, None)
    assert str(bad) in str(e.value)


def test_file_without_image_tower(tmp_path):
    t5_like = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save({"token_embedding.weight": torch.zeros(8, 4),
                "blocks.0.attn.q.weight": torch.zeros(4, 4)}, t5_like)
    with pytest.raises(CheckpointError, match=r"no image tower tensors \('visual\.\*'") as e:
        CLIPModel(torch.float32, "cpu", t5_like, None)
    assert str(t5_like) in str(e.value)


def test_missing_and_misshapen_tensors(tiny_clip, tmp_path):
    sd = torch.load(tiny_clip, weights_only=True)
    missing = dict(sd)
    del missing["visual.transformer.0.attn.proj.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"1 missing tensors \(visual\.transformer\.0\.attn"):
        CLIPModel(torch.float32, "cpu", tmp_path / "missing.pth", None)

    wrong = dict(sd)
    wrong["visual.transformer.0.mlp.2.weight"] = torch.zeros(160, 320)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape \(visual\.transformer\.0\.mlp\.2"):
        CLIPModel(torch.float32, "cpu", tmp_path / "wrong.pth", None)

    narrow = {k: v for k, v in sd.items()}
    narrow["visual.patch_embedding.weight"] = torch.zeros(100, 3, 14, 14)
    torch.save(narrow, tmp_path / "narrow.pth")
    with pytest.raises(CheckpointError, match="not a multiple of the head width 80"):
        CLIPModel(torch.float32, "cpu", tmp_path / "narrow.pth", None)


def test_wrong_input_channels(tiny_model):
    with pytest.raises(ValueError, match=r"shape \(4, 1, 64, 64\); expected \[3, T, H, W\]"):
        tiny_model.visual([torch.zeros(4, 1, 64, 64)])
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_model.visual(torch.zeros(3, 1, 64, 64))
    with pytest.raises(ValueError, match="non-empty list"):
        tiny_model.visual([])


# ------------------------------------------------------------------ tokenizer folder
def test_tiny_tokenizer_loads_offline(tmp_path):
    from transformers import AutoTokenizer

    folder = write_xlm_roberta_tokenizer(tmp_path / "xlm-roberta-large")
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1
    ids = tok("a cat walking on the beach")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a cat walking on the beach"


# ------------------------------------------------------------------ real size
@pytest.mark.slow
def test_real_size_vit_h14(tmp_path):
    """ViT-H/14 at full size (1280 wide, 32 blocks, 16 heads) with random weights."""
    sizes = TinySizes(clip_width=1280, clip_layers=32, clip_mlp_ratio=4.0)
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    t0 = time.perf_counter()
    write_clip(path, sizes, seed=5)
    gc.collect()
    t1 = time.perf_counter()
    model = CLIPModel(torch.float32, "cpu", path, None)
    spec = model.model.visual.spec
    assert (spec.width, spec.num_layers, spec.num_heads, spec.mlp_dim) == (1280, 31, 16, 5120)

    image = torch.rand(3, 1, 480, 832, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t2 = time.perf_counter()
    out = model.visual([image])
    t3 = time.perf_counter()
    assert out.shape == (1, 257, 1280) and torch.isfinite(out).all()

    sd = torch.load(path, weights_only=True, mmap=True)
    hf = hf_vision_model(sd, 1280, 32, 5120)
    del sd
    err = rel_err(out, hf_penultimate(hf, reference_pixels([image])))
    log.info("CLIP ViT-H/14 fp32: write %.1fs, load %.1fs, forward %.1fs, rel err vs "
             "transformers %.3g", t1 - t0, t2 - t1, t3 - t2, err)
    assert err <= 1e-5, err
    del hf, model
    gc.collect()

    # The dtype Wan I2V runs it in (fp16 on CPU is slow: about a minute here).
    half = CLIPModel(torch.float16, "cpu", path, None).visual([image])
    half_err = rel_err(half, out)
    log.info("CLIP ViT-H/14 fp16 vs fp32: rel err %.3g", half_err)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert half_err < 1e-2, half_err
