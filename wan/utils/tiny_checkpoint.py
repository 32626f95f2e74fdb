"""Miniature random-weight checkpoints in exactly the official Wan2.1 layout.

    python -m wan.utils.tiny_checkpoint ./Wan2.1-T2V-tiny --task t2v-1.3B
    python -m wan.utils.tiny_checkpoint ./Wan2.1-I2V-tiny --task i2v-14B
    python -m wan.utils.tiny_checkpoint ./Wan2.1-FLF2V-tiny --task flf2v-14B
    python -m wan.utils.tiny_checkpoint ./Wan2.1-VACE-tiny --task vace-1.3B   # or vace-14B

writes a folder with the same file names and formats as the official downloads
(``config.json`` + ``diffusion_pytorch_model.safetensors`` or shards with an
index, ``models_t5_umt5-xxl-enc-bf16.pth``, ``Wan2.1_VAE.pth``,
``google/umt5-xxl/`` tokenizer, and for I2V and FLF2V the open-clip ``.pth`` and
``xlm-roberta-large/`` tokenizer), with small widths and depths. The FLF2V DiT
is the I2V one plus ``img_emb.emb_pos [1, 2 * 257, clip_width]``. The VACE DiT is the T2V
one plus ``vace_patch_embedding`` (96 input channels) and one ``vace_blocks.N`` per
entry of ``vace_layers`` (here every second layer of 4; config.json carries
``"model_type": "vace"``, ``vace_layers`` and ``vace_in_dim`` as the official one);
the vace-14B layout is written in 7 shards with an index like the real one. Everything the
rest of the stack fixes is kept: text length 512, 16 latent channels and the
224-pixel / 14-pixel-patch CLIP grid (257 image tokens). The whole pipeline
loads such a folder through the same code as the real one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

__all__ = ["TinySizes", "write_dit", "write_vae", "write_vae22", "write_t5", "write_umt5_tokenizer",
           "write_clip", "write_xlm_roberta_tokenizer", "make_checkpoint"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TinySizes:
    """Widths and depths of a miniature checkpoint."""
    # DiT
    dim: int = 64
    ffn_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    freq_dim: int = 256
    # umT5 encoder
    t5_dim: int = 32
    t5_ffn_dim: int = 64
    t5_heads: int = 4
    t5_layers: int = 2
    t5_vocab: int = 512
    t5_num_buckets: int = 32
    # VAE
    vae_dim: int = 8
    # CLIP image tower (heads are 80 wide as in ViT-H/14)
    clip_width: int = 160
    clip_layers: int = 2
    clip_mlp_ratio: float = 4.0


def _random_like_official(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Fill every parameter with small random values (deterministic in ``seed``).

    Norm weights are kept near 1 so that activations stay in a sane range.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if p.dim() == 1 and ("norm" in name or name.endswith("gamma")):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(std * noise)


# --------------------------------------------------------------------- DiT
VACE_TINY_LAYERS = 4  # a miniature VACE DiT has 4 main blocks: VACE blocks at 0 and 2
VACE_SHARDS_14B = 7   # the released Wan2.1-VACE-14B DiT comes in 7 shards


def dit_config(model_type: str, sizes: TinySizes, latent_dim: int = 16) -> dict:
    from ..modules.model import IMAGE_MODEL_TYPES

    if model_type == "vace":
        from ..modules.vace_model import VACE_IN_DIM

        cfg = dit_config("t2v", sizes)
        cfg.update(_class_name="VaceWanModel", model_type="vace",
                   vace_layers=list(range(0, sizes.num_layers, 2)), vace_in_dim=VACE_IN_DIM)
        return dict(sorted(cfg.items()))
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "dim": sizes.dim,
        "eps": 1e-06,
        "ffn_dim": sizes.ffn_dim,
        "freq_dim": sizes.freq_dim,
        "in_dim": latent_dim + 20 if model_type in IMAGE_MODEL_TYPES else latent_dim,
        "model_type": model_type,
        "num_heads": sizes.num_heads,
        "num_layers": sizes.num_layers,
        "out_dim": latent_dim,
        "text_len": 512,
    }


def write_dit(folder: str | Path, model_type: str = "t2v", sizes: TinySizes = TinySizes(),
              shards: int = 1, seed: int = 0, image_tokens: bool | None = None,
              latent_dim: int = 16) -> Path:
    """Write ``config.json`` and the DiT safetensors (one file or ``shards`` + index).

    ``image_tokens=False`` makes an i2v DiT without the CLIP branch (Wan2.2 I2V-A14B);
    ``latent_dim`` 48 the DiT of the Wan2.2 VAE (TI2V-5B).
    """
    from safetensors.torch import save_file

    from ..modules.model import IMAGE_MODEL_TYPES, WanModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dit_config(model_type, sizes, latent_dim)
    common = dict(in_dim=cfg["in_dim"], dim=sizes.dim, ffn_dim=sizes.ffn_dim,
                  freq_dim=sizes.freq_dim, text_dim=sizes.t5_dim, out_dim=latent_dim,
                  num_heads=sizes.num_heads, num_layers=sizes.num_layers)
    if model_type == "vace":
        from ..modules.vace_model import VaceWanModel

        model = VaceWanModel(vace_layers=cfg["vace_layers"], vace_in_dim=cfg["vace_in_dim"],
                             **common)
    else:
        image = model_type in IMAGE_MODEL_TYPES if image_tokens is None else image_tokens
        model = WanModel(model_type=model_type, **common, image_tokens=image,
                         clip_dim=sizes.clip_width if image else None)
    _random_like_official(model, seed)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if shards <= 1:
        save_file(sd, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
        return folder
    names = list(sd)
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: sd[k] for k in part}, folder / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


# --------------------------------------------------------------------- VAE
def write_vae(path: str | Path, sizes: TinySizes = TinySizes(), seed: int = 1) -> Path:
    """Write ``Wan2.1_VAE.pth`` (fp32 state dict, official key names)."""
    from ..modules.vae import VideoVAE, init_random_weights

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):  # skip the default init; every tensor is filled below
        model = VideoVAE(dim=sizes.vae_dim, z_dim=16)
    model = model.to_empty(device="cpu")
    init_random_weights(model, seed)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


#: Widths of a miniature Wan2.2 VAE: encoder and decoder base widths in the released
#: ratio (160 : 256 = 10 : 16); dim_mult stays (1, 2, 4, 4).
VAE22_TINY_DIM, VAE22_TINY_DEC_DIM = 10, 16


def write_vae22(path: str | Path, dim: int = VAE22_TINY_DIM, dec_dim: int = VAE22_TINY_DEC_DIM,
                seed: int = 1) -> Path:
    """Write ``Wan2.2_VAE.pth`` (fp32 state dict, official key names) with base widths
    ``dim`` (encoder; released: 160) and ``dec_dim`` (decoder; released: 256)."""
    from ..modules.vae import init_random_weights
    from ..modules.vae2_2 import VideoVAE22

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):  # skip the default init; every tensor is filled below
        model = VideoVAE22(dim=dim, dec_dim=dec_dim)
    model = model.to_empty(device="cpu")
    init_random_weights(model, seed)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


# --------------------------------------------------------------------- T5
def write_umt5_tokenizer(folder: str | Path, sizes: TinySizes = TinySizes()) -> Path:
    """Write a small umT5-style tokenizer (``tokenizer.json`` etc.) built locally.

    A SentencePiece-like Unigram model with ``sizes.t5_vocab`` pieces in T5's
    layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2): a few English words, every
    printable ASCII character, CJK punctuation and common Chinese characters
    (all of the default negative prompt's). Anything else becomes ``<unk>``.
    ``AutoTokenizer.from_pretrained(folder)`` loads it offline as a T5 tokenizer
    that appends ``</s>``.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    from ..configs.shared_config import wan_shared_cfg

    specials = ["<pad>", "</s>", "<unk>"]
    words = ("the a an of and in on at to is with from by its cat dog man woman girl boy "
             "bird horse car city street park forest river sea beach mountain sky sun moon "
             "night light water tree flower grass snow rain walking running flying playing "
             "dancing camera slow motion video close up shot red blue green white black "
             "golden small big young old beautiful style").split()
    alnum = [chr(c) for c in range(0x21, 0x7F) if chr(c).isalnum()]
    cjk_common = ("一只猫狗人在的了是和有个上下中大小里天地水山花草树风雨雪日月光明白红黑绿蓝色"
                  "影画面视频镜头慢动作高清美丽女孩男子老年轻城市街道公园森林河海边走跑坐飞跳舞"
                  "看着手脸发衣服穿戴背景前后左右远近我你他她们这那不也都很好说会要去来")
    fixed = ([(p, 0.0) for p in specials] + [("\u2581", -2.0)]
             + [("\u2581" + w, -4.0) for w in words]
             + [("\u2581" + ch, -6.0) for ch in alnum]
             + [(chr(c), -8.0) for c in range(0x21, 0x7F)])
    if len(fixed) > sizes.t5_vocab:
        raise ValueError(f"t5_vocab must be at least {len(fixed)}, got {sizes.t5_vocab}")
    cjk = "。、，！？：；“”‘’（）《》" + wan_shared_cfg.sample_neg_prompt + cjk_common
    cjk += "".join(chr(c) for c in range(0x4E00, 0x4E00 + sizes.t5_vocab))
    pieces = dict(fixed)
    for ch in cjk:
        if len(pieces) == sizes.t5_vocab:
            break
        pieces.setdefault(ch, -7.0)

    tok = Tokenizer(Unigram(list(pieces.items()), unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tok.add_special_tokens(specials)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special_map = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "model_max_length": 512,
              "clean_up_tokenization_spaces": False, **special_map}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    return folder


def write_t5(path: str | Path, sizes: TinySizes = TinySizes(), seed: int = 2) -> Path:
    """Write ``models_t5_umt5-xxl-enc-bf16.pth`` (bf16 state dict, official key names)."""
    from ..modules.t5 import T5Encoder

    model = T5Encoder(vocab=sizes.t5_vocab, dim=sizes.t5_dim, dim_attn=sizes.t5_dim,
                      dim_ffn=sizes.t5_ffn_dim, num_heads=sizes.t5_heads,
                      num_layers=sizes.t5_layers, num_buckets=sizes.t5_num_buckets,
                      shared_pos=False)
    _random_like_official(model, seed)
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


# --------------------------------------------------------------------- CLIP
def write_xlm_roberta_tokenizer(folder: str | Path) -> Path:
    """Write a small XLM-RoBERTa-style tokenizer folder (I2V keeps it for layout only).

    A Unigram model with the XLM-R special tokens (``<s>`` 0, ``<pad>`` 1,
    ``</s>`` 2, ``<unk>`` 3, ``<mask>`` last), ``▁`` word boundaries and the
    ``<s> ... </s>`` template, built locally with ``tokenizers``; it loads
    offline with ``AutoTokenizer.from_pretrained(folder)``.
    """
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words = ["the", "a", "of", "and", "in", "on", "with", "cat", "dog", "man", "woman",
             "walking", "running", "video", "camera", "street", "beach", "sunset", "red", "blue"]
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-")
    vocab = [(t, 0.0) for t in specials] + [("▁", -3.0)]
    vocab += [("▁" + w, -6.0 - 0.01 * i) for i, w in enumerate(words)]
    vocab += [("▁" + c, -9.0) for c in chars] + [(c, -10.0) for c in chars]
    vocab.append(("<mask>", 0.0))
    mask_id = len(vocab) - 1

    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens(specials + [AddedToken("<mask>", lstrip=True, special=True)])
    tok.save(str(folder / "tokenizer.json"))

    special_map = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                   "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
                   "mask_token": "<mask>"}
    config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512,
              "clean_up_tokenization_spaces": True, **special_map}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    log.debug("wrote a %d-token XLM-RoBERTa-style tokenizer (<mask> = %d) to %s",
              len(vocab), mask_id, folder)
    return folder


def write_clip(path: str | Path, sizes: TinySizes = TinySizes(), seed: int = 3) -> Path:
    """Write the open-clip ``.pth`` (``visual.*``, ``textual.*`` and ``log_scale``).

    The image tower has the official names and layout (patch 14, 224 pixels,
    heads 80 wide, ``sizes.clip_layers`` blocks, post-norm and head). The text
    tower is reduced to a few small tensors with official names: I2V never
    reads it. Stored in fp32 like the official file.
    """
    import torch.nn as nn

    from ..modules.clip import HEAD_DIM, VisionTowerSpec, VisionTransformer

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, text_dim, embed_dim, vocab, text_len = sizes.clip_width, 32, 64, 64, 514
    spec = VisionTowerSpec(image_size=224, patch_size=14, width=width,
                           num_layers=sizes.clip_layers,
                           mlp_dim=int(width * sizes.clip_mlp_ratio),
                           num_heads=width // HEAD_DIM)
    with torch.device("meta"):
        visual = VisionTransformer(spec)
        visual.post_norm = nn.LayerNorm(width)
        visual.head = nn.Parameter(torch.empty(width, embed_dim))
        textual = nn.Module()
        textual.token_embedding = nn.Embedding(vocab, text_dim)
        textual.type_embedding = nn.Embedding(1, text_dim)
        textual.pos_embedding = nn.Embedding(text_len, text_dim)
        textual.norm = nn.LayerNorm(text_dim)
        textual.head = nn.Sequential(nn.Linear(text_dim, (text_dim + embed_dim) // 2, bias=False),
                                     nn.GELU(),
                                     nn.Linear((text_dim + embed_dim) // 2, embed_dim, bias=False))
        clip = nn.Module()
        clip.visual, clip.textual = visual, textual
    clip.to_empty(device="cpu")
    _random_like_official(clip, seed)
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    sd["log_scale"] = torch.tensor(math.log(1 / 0.07))
    torch.save(sd, path)
    return path


# --------------------------------------------------------------------- all
A14B_SHARDS = 6  # each expert of the Wan2.2 A14B downloads: config.json + 6 shards + index


def make_checkpoint(out: str | Path, task: str = "t2v-1.3B", sizes: TinySizes | None = None,
                    shards: int | None = None, seed: int = 0) -> Path:
    """Write a complete miniature checkpoint folder for ``task`` and return its path.

    ``sizes`` defaults to :class:`TinySizes` (for VACE with 4 DiT layers, so that there
    are two VACE blocks); ``shards`` defaults to 1 (vace-14B: 7, as the release).
    """
    from ..configs import WAN_CONFIGS
    from ..modules.model import IMAGE_MODEL_TYPES

    if task not in WAN_CONFIGS:
        raise ValueError(f"unknown task '{task}'; choose one of {', '.join(WAN_CONFIGS)}")
    cfg = WAN_CONFIGS[task]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vace = task.startswith("vace")
    if sizes is None:
        sizes = TinySizes(num_layers=VACE_TINY_LAYERS) if vace else TinySizes()
    experts = cfg.get("high_noise_checkpoint")  # Wan2.2 A14B: two experts in subfolders
    if shards is None:
        shards = VACE_SHARDS_14B if task == "vace-14B" else A14B_SHARDS if experts else 1
    model_type = ("vace" if vace else
                  task.split("-")[0] if task.startswith(IMAGE_MODEL_TYPES) else "t2v")
    is_i2v = model_type in IMAGE_MODEL_TYPES and bool(cfg.get("clip_checkpoint"))  # CLIP
    if experts:
        for i, sub in enumerate((cfg.high_noise_checkpoint, cfg.low_noise_checkpoint)):
            write_dit(out / sub, model_type, sizes, shards=shards, seed=seed + 10 * i,
                      image_tokens=is_i2v)
    else:
        ti2v = cfg.vae_checkpoint == "Wan2.2_VAE.pth"  # TI2V-5B: a DiT over 48 channels
        write_dit(out, "ti2v" if ti2v else model_type, sizes, shards=shards, seed=seed,
                  image_tokens=is_i2v or None, latent_dim=48 if ti2v else 16)
    write_t5(out / cfg.t5_checkpoint, sizes, seed=seed + 1)
    write_umt5_tokenizer(out / cfg.t5_tokenizer, sizes)
    if cfg.vae_checkpoint == "Wan2.2_VAE.pth":
        write_vae22(out / cfg.vae_checkpoint, seed=seed + 2)
    else:
        write_vae(out / cfg.vae_checkpoint, sizes, seed=seed + 2)
    if is_i2v:
        write_clip(out / cfg.clip_checkpoint, sizes, seed=seed + 3)
        write_xlm_roberta_tokenizer(out / cfg.clip_tokenizer)
    (out / "tiny_checkpoint.json").write_text(json.dumps(
        {"task": task, "seed": seed, "sizes": asdict(sizes),
         "note": "random weights for tests; not a real model"}, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m wan.utils.tiny_checkpoint",
        description="Write a miniature random-weight Wan checkpoint in the official layout.")
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--task", default="t2v-1.3B",
                        help="a task of WAN_CONFIGS: t2v-1.3B, t2v-14B, t2i-14B, i2v-14B, "
                             "flf2v-14B, vace-1.3B, vace-14B, t2v-A14B, i2v-A14B, ti2v-5B")
    parser.add_argument("--shards", type=int, default=None,
                        help="split the DiT into this many safetensors shards with an index "
                             "(default 1; vace-14B: 7, each A14B expert: 6, as the releases)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s")
    path = make_checkpoint(args.out, args.task, shards=args.shards, seed=args.seed)
    log.info("Wrote a miniature %s checkpoint to %s", args.task, path)


if __name__ == "__main__":
    main()
