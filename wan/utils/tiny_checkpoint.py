"""Miniature random-weight checkpoints in exactly the official Wan2.1 layout.

    python -m wan.utils.tiny_checkpoint ./Wan2.1-T2V-tiny --task t2v-1.3B
    python -m wan.utils.tiny_checkpoint ./Wan2.1-I2V-tiny --task i2v-14B

writes a folder with the same file names and formats as the official downloads
(``config.json`` + ``diffusion_pytorch_model.safetensors`` or shards with an
index, ``models_t5_umt5-xxl-enc-bf16.pth``, ``Wan2.1_VAE.pth``,
``google/umt5-xxl/`` tokenizer, and for I2V the open-clip ``.pth`` and
``xlm-roberta-large/`` tokenizer), with small widths and depths. Everything the
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

__all__ = ["TinySizes", "write_dit", "write_vae", "write_t5", "write_umt5_tokenizer",
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
def dit_config(model_type: str, sizes: TinySizes) -> dict:
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "dim": sizes.dim,
        "eps": 1e-06,
        "ffn_dim": sizes.ffn_dim,
        "freq_dim": sizes.freq_dim,
        "in_dim": 36 if model_type == "i2v" else 16,
        "model_type": model_type,
        "num_heads": sizes.num_heads,
        "num_layers": sizes.num_layers,
        "out_dim": 16,
        "text_len": 512,
    }


def write_dit(folder: str | Path, model_type: str = "t2v", sizes: TinySizes = TinySizes(),
              shards: int = 1, seed: int = 0) -> Path:
    """Write ``config.json`` and the DiT safetensors (one file or ``shards`` + index)."""
    from safetensors.torch import save_file

    from ..modules.model import WanModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dit_config(model_type, sizes)
    model = WanModel(model_type=model_type, in_dim=cfg["in_dim"], dim=sizes.dim,
                     ffn_dim=sizes.ffn_dim, freq_dim=sizes.freq_dim, text_dim=sizes.t5_dim,
                     out_dim=16, num_heads=sizes.num_heads, num_layers=sizes.num_layers,
                     clip_dim=sizes.clip_width if model_type == "i2v" else None)
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
    raise NotImplementedError("filled in by the VAE work")


# --------------------------------------------------------------------- T5
def write_umt5_tokenizer(folder: str | Path, sizes: TinySizes = TinySizes()) -> Path:
    """Write a small umT5-style tokenizer (``tokenizer.json`` etc.) built locally."""
    raise NotImplementedError("filled in by the T5 work")


def write_t5(path: str | Path, sizes: TinySizes = TinySizes(), seed: int = 2) -> Path:
    """Write ``models_t5_umt5-xxl-enc-bf16.pth`` (bf16 state dict, official key names)."""
    raise NotImplementedError("filled in by the T5 work")


# --------------------------------------------------------------------- CLIP
def write_xlm_roberta_tokenizer(folder: str | Path) -> Path:
    """Write a small XLM-RoBERTa-style tokenizer folder (I2V keeps it for layout only)."""
    raise NotImplementedError("filled in by the CLIP work")


def write_clip(path: str | Path, sizes: TinySizes = TinySizes(), seed: int = 3) -> Path:
    """Write the open-clip ``.pth`` (``visual.*``, ``textual.*`` and ``log_scale``)."""
    raise NotImplementedError("filled in by the CLIP work")


# --------------------------------------------------------------------- all
def make_checkpoint(out: str | Path, task: str = "t2v-1.3B", sizes: TinySizes = TinySizes(),
                    shards: int = 1, seed: int = 0) -> Path:
    """Write a complete miniature checkpoint folder for ``task`` and return its path."""
    from ..configs import WAN_CONFIGS

    if task not in WAN_CONFIGS:
        raise ValueError(f"unknown task '{task}'; choose one of {', '.join(WAN_CONFIGS)}")
    cfg = WAN_CONFIGS[task]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    is_i2v = task.startswith("i2v")
    write_dit(out, "i2v" if is_i2v else "t2v", sizes, shards=shards, seed=seed)
    write_t5(out / cfg.t5_checkpoint, sizes, seed=seed + 1)
    write_umt5_tokenizer(out / cfg.t5_tokenizer, sizes)
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
        description="Write a miniature random-weight Wan2.1 checkpoint in the official layout.")
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--task", default="t2v-1.3B", help="t2v-1.3B, t2v-14B, t2i-14B or i2v-14B")
    parser.add_argument("--shards", type=int, default=1,
                        help="split the DiT into this many safetensors shards with an index")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s")
    path = make_checkpoint(args.out, args.task, shards=args.shards, seed=args.seed)
    log.info("Wrote a miniature %s checkpoint to %s", args.task, path)


if __name__ == "__main__":
    main()
