"""umT5 text encoder and its tokenizer.

* parity with ``transformers.UMT5EncoderModel`` given the same weights (fp32);
* prompt cleaning, padding, truncation and ``</s>`` from the tokenizer;
* one clear error for each kind of bad input.

Everything runs on a miniature checkpoint written to a temporary folder.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from wan.configs.shared_config import wan_shared_cfg
from wan.modules.t5 import T5Encoder, T5EncoderModel
from wan.modules.tokenizers import HuggingfaceTokenizer, clean_text
from wan.utils.checkpoint import CheckpointError
from wan.utils.tiny_checkpoint import TinySizes, write_t5, write_umt5_tokenizer

SIZES = TinySizes()
TEXT_LEN = 512
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
PROMPTS = [
    "A cat walking on the grass",
    "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a "
    "spotlighted stage, slow motion, close up shot of the red and blue gloves, golden light.",
    "一只猫在草地上慢慢地走，镜头跟随，高清画面。",
    "城市街道 at night, 雨 and neon light; 女孩 walking with a red umbrella",
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("t5")
    write_t5(root / wan_shared_cfg.t5_checkpoint, SIZES, seed=7)
    write_umt5_tokenizer(root / wan_shared_cfg.t5_tokenizer, SIZES)
    return root


def load_encoder(root: Path, dtype: torch.dtype = torch.float32, **kwargs) -> T5EncoderModel:
    return T5EncoderModel(TEXT_LEN, dtype=dtype, device="cpu",
                          checkpoint_path=root / wan_shared_cfg.t5_checkpoint,
                          tokenizer_path=root / wan_shared_cfg.t5_tokenizer, **kwargs)


# --------------------------------------------------------------------- parity
_HF_BLOCK_NAMES = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def to_hf_names(sd: dict[str, torch.Tensor], block_names: dict[str, str] = _HF_BLOCK_NAMES
                ) -> dict[str, torch.Tensor]:
    """Official key names -> ``UMT5EncoderModel`` key names."""
    out = {"shared.weight": sd["token_embedding.weight"],
           "encoder.embed_tokens.weight": sd["token_embedding.weight"],
           "encoder.final_layer_norm.weight": sd["norm.weight"]}
    for key, value in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if m:
            out[f"encoder.block.{m.group(1)}.{block_names[m.group(2)]}"] = value
    return out


def hf_reference(sd: dict[str, torch.Tensor]):
    """An fp32 ``UMT5EncoderModel`` of the tiny sizes holding the weights ``sd`` (HF names)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=SIZES.t5_vocab, d_model=SIZES.t5_dim, d_kv=SIZES.t5_dim // SIZES.t5_heads,
        d_ff=SIZES.t5_ffn_dim, num_layers=SIZES.t5_layers, num_heads=SIZES.t5_heads,
        relative_attention_num_buckets=SIZES.t5_num_buckets, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6)
    model = UMT5EncoderModel(config).eval()
    assert set(model.state_dict()) == set(sd), "the key mapping does not cover the HF model"
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model


def hf_hidden_states(model, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return [h[:n] for h, n in zip(hidden, mask.sum(1).tolist())]


@pytest.fixture(scope="module")
def official_sd(ckpt) -> dict[str, torch.Tensor]:
    sd = torch.load(ckpt / wan_shared_cfg.t5_checkpoint, weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())  # like the official file
    return sd


@pytest.fixture(scope="module")
def encoder_fp32(ckpt) -> T5EncoderModel:
    return load_encoder(ckpt, torch.float32)


def test_parity_with_transformers_umt5(encoder_fp32, official_sd):
    ids, mask = encoder_fp32.tokenizer(PROMPTS, return_mask=True, add_special_tokens=True)
    lengths = mask.sum(1).tolist()
    assert len(set(lengths)) == len(PROMPTS), f"prompt lengths should differ: {lengths}"

    ours = encoder_fp32(PROMPTS, "cpu")
    ref = hf_hidden_states(hf_reference(to_hf_names(official_sd)), ids, mask)

    assert [tuple(o.shape) for o in ours] == [(n, SIZES.t5_dim) for n in lengths]
    assert all(o.dtype == torch.float32 for o in ours)
    per_prompt = [rel_err(o, r) for o, r in zip(ours, ref)]
    total = rel_err(torch.cat(ours), torch.cat(ref))
    assert total <= 1e-5 and max(per_prompt) <= 1e-5, f"total {total:.2e}, per prompt {per_prompt}"


def hf_weights_with_mistake(sd: dict[str, torch.Tensor], mistake: str) -> dict[str, torch.Tensor]:
    """HF weights of ``sd`` with one deliberate mapping error."""
    if mistake == "gate and fc1 swapped":
        names = dict(_HF_BLOCK_NAMES)
        names["ffn.gate.0.weight"], names["ffn.fc1.weight"] = \
            names["ffn.fc1.weight"], names["ffn.gate.0.weight"]
        return to_hf_names(sd, names)
    a, b = (f"blocks.{i}.pos_embedding.embedding.weight" for i in (0, 1))
    return to_hf_names({**sd, a: sd[b], b: sd[a]})


@pytest.mark.parametrize("mistake", ["gate and fc1 swapped", "position tables swapped"])
def test_parity_check_detects_wrong_weights(encoder_fp32, official_sd, mistake):
    """The parity comparison is sensitive to the gate/fc1 roles and the per-block tables."""
    ids, mask = encoder_fp32.tokenizer(PROMPTS, return_mask=True, add_special_tokens=True)
    ours = encoder_fp32(PROMPTS, "cpu")
    ref = hf_hidden_states(hf_reference(hf_weights_with_mistake(official_sd, mistake)), ids, mask)
    assert rel_err(torch.cat(ours), torch.cat(ref)) > 1e-3


def test_padding_does_not_change_real_tokens(encoder_fp32):
    together = encoder_fp32(PROMPTS, "cpu")
    for prompt, batched in zip(PROMPTS, together):
        alone = encoder_fp32([prompt], "cpu")[0]
        assert rel_err(batched, alone) <= 1e-6


def test_bf16_default_close_to_fp32(ckpt, encoder_fp32):
    enc = load_encoder(ckpt, torch.bfloat16)
    assert enc.dtype == torch.bfloat16 and enc.text_len == TEXT_LEN
    assert all(p.dtype == torch.bfloat16 for p in enc.model.parameters())
    low = enc(PROMPTS, "cpu")
    high = encoder_fp32(PROMPTS, "cpu")
    assert all(o.dtype == torch.bfloat16 for o in low)
    assert rel_err(torch.cat(low).float(), torch.cat(high)) < 3e-2


def test_sizes_read_from_checkpoint(encoder_fp32):
    model = encoder_fp32.model
    assert isinstance(model, T5Encoder)
    assert (model.dim, model.dim_ffn, model.num_heads, model.num_layers, model.num_buckets) == (
        SIZES.t5_dim, SIZES.t5_ffn_dim, SIZES.t5_heads, SIZES.t5_layers, SIZES.t5_num_buckets)
    assert model.token_embedding.num_embeddings == SIZES.t5_vocab
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_shard_fn_wraps_the_encoder(ckpt):
    calls = []

    def shard_fn(module, sync_module_states):
        calls.append((type(module).__name__, sync_module_states))
        return module

    enc = load_encoder(ckpt, shard_fn=shard_fn)
    assert calls == [("T5Encoder", False)]
    assert len(enc(["a cat"], "cpu")) == 1


def test_default_device_is_cpu():
    """The official default ``torch.cuda.current_device()`` breaks CPU-only machines."""
    assert inspect.signature(T5EncoderModel).parameters["device"].default == "cpu"


# --------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tokenizer(ckpt) -> HuggingfaceTokenizer:
    return HuggingfaceTokenizer(ckpt / wan_shared_cfg.t5_tokenizer, seq_len=TEXT_LEN,
                                clean="whitespace")


def test_whitespace_cleaning():
    assert clean_text("  a &amp;amp; b\n\t c\u3000d  ", "whitespace") == "a & b c d"
    assert clean_text("cafÃ© &lt;b&gt;", "whitespace") == "café <b>"
    assert clean_text("  Keep  CASE ", None) == "  Keep  CASE "
    assert clean_text("A_b, C!", "canonicalize") == "a b c"


def test_tokenizer_cleans_before_tokenizing(tokenizer):
    assert torch.equal(tokenizer("a  cat &amp;amp; a\ndog "), tokenizer("a cat & a dog"))


def test_tokenizer_pads_and_appends_eos(tokenizer):
    ids, mask = tokenizer(["a cat", "一只猫"], return_mask=True, add_special_tokens=True)
    assert ids.shape == mask.shape == (2, TEXT_LEN)
    lengths = mask.sum(1).tolist()
    for row, m, n in zip(ids, mask, lengths):
        assert m[:n].all() and not m[n:].any()
        assert row[n - 1] == EOS_ID and (row[n:] == PAD_ID).all()
        assert (row[:n - 1] != EOS_ID).all()


def test_tokenizer_truncates_to_text_len(tokenizer):
    ids, mask = tokenizer("cat " * 2000, return_mask=True)
    assert ids.shape == (1, TEXT_LEN) and mask.all()
    assert ids[0, -1] == EOS_ID


def test_chinese_and_english_tokens_are_known(tokenizer):
    for text in ["一只猫在草地上", "A dog running on the beach", wan_shared_cfg.sample_neg_prompt]:
        ids, mask = tokenizer(text, return_mask=True)
        real = ids[0, :mask.sum()]
        assert len(real) > 2 and (real != UNK_ID).all(), text
    # characters outside the miniature vocabulary fall back to <unk> instead of failing
    assert (tokenizer("😀 ジ")[0] == UNK_ID).any()


# --------------------------------------------------------------------- bad inputs
def test_missing_tokenizer_folder(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="tokenizer folder not found"):
        T5EncoderModel(TEXT_LEN, checkpoint_path=ckpt / wan_shared_cfg.t5_checkpoint,
                       tokenizer_path=tmp_path / "google" / "umt5-xxl")


def test_empty_tokenizer_folder(tmp_path):
    (tmp_path / "tok").mkdir()
    with pytest.raises(CheckpointError, match="could not be loaded.*tokenizer.json"):
        HuggingfaceTokenizer(tmp_path / "tok", seq_len=8)


def test_remote_code_refused(ckpt):
    with pytest.raises(ValueError, match="trust_remote_code"):
        HuggingfaceTokenizer(ckpt / wan_shared_cfg.t5_tokenizer, trust_remote_code=True)


def test_missing_checkpoint(ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="umT5 text encoder checkpoint not found"):
        T5EncoderModel(TEXT_LEN, checkpoint_path=tmp_path / "missing.pth",
                       tokenizer_path=ckpt / wan_shared_cfg.t5_tokenizer)


def test_missing_paths():
    with pytest.raises(ValueError, match="checkpoint_path and tokenizer_path"):
        T5EncoderModel(TEXT_LEN)


def test_truncated_checkpoint(ckpt, tmp_path):
    bad = tmp_path / "t5.pth"
    data = (ckpt / wan_shared_cfg.t5_checkpoint).read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*corrupted"):
        T5EncoderModel(TEXT_LEN, checkpoint_path=bad,
                       tokenizer_path=ckpt / wan_shared_cfg.t5_tokenizer)


def test_checkpoint_that_is_not_a_pickle(ckpt, tmp_path):
    bad = tmp_path / "t5.pth"
    bad.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match=f"umT5 text encoder checkpoint '{re.escape(str(bad))}'"):
        T5EncoderModel(TEXT_LEN, checkpoint_path=bad,
                       tokenizer_path=ckpt / wan_shared_cfg.t5_tokenizer)


def test_wrong_kind_of_checkpoint(ckpt, tmp_path):
    other = tmp_path / "vae.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(8, 3, 3, 3),
                "decoder.head.0.gamma": torch.ones(8)}, other)
    with pytest.raises(CheckpointError,
                       match="is not a umT5 text encoder checkpoint.*'token_embedding.weight'"):
        T5EncoderModel(TEXT_LEN, checkpoint_path=other,
                       tokenizer_path=ckpt / wan_shared_cfg.t5_tokenizer)


def test_checkpoint_missing_a_tensor(ckpt, official_sd, tmp_path):
    partial = tmp_path / "t5.pth"
    torch.save({k: v for k, v in official_sd.items() if k != "blocks.1.ffn.fc2.weight"}, partial)
    with pytest.raises(CheckpointError, match=r"1 missing tensors \(blocks.1.ffn.fc2.weight\)"):
        T5EncoderModel(TEXT_LEN, checkpoint_path=partial,
                       tokenizer_path=ckpt / wan_shared_cfg.t5_tokenizer)
