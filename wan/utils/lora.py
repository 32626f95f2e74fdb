"""LoRA files merged into the Wan DiT (and the VACE DiT) in place, and taken out again.

Three layouts are read, told apart by their keys:

* **original Wan / ComfyUI**: official module names (``blocks.0.self_attn.q``,
  ``blocks.0.cross_attn.k_img``, ``blocks.0.ffn.0``, ``time_projection.1``,
  ``head.head``, ``img_emb.proj.1``, ...), optionally behind ``diffusion_model.``, with
  ``<module>.lora_down.weight`` / ``.lora_up.weight`` (or ``.lora_A`` / ``.lora_B``),
  an optional ``<module>.alpha``, and the full deltas ``<module>.diff`` (weight),
  ``<module>.diff_b`` (bias) and ``<module>.diff_m`` (the ``modulation`` of a block or
  of the head);
* **diffusers / PEFT**: diffusers' module names behind ``transformer.``
  (``blocks.0.attn1.to_q.lora_A.weight``, ``attn2.add_k_proj``, ``ffn.net.0.proj``,
  ``condition_embedder.time_proj``, ``proj_out``, ...), with ``.lora_B.bias`` for a bias
  delta (scaled by ``alpha / rank`` like the LoRA, as PEFT does); they are mapped back to
  the official names by :data:`DIFFUSERS_NAMES`;
* **musubi-tuner / kohya**: ``lora_unet_blocks_0_self_attn_q.lora_down.weight`` with
  ``.alpha``: the official name with its dots written as underscores.

The merge is ``W <- W + scale * (alpha / rank) * (up @ down)`` (``alpha / rank`` is 1
without an ``.alpha``), computed in fp32 and stored back in the weight's dtype. Several
LoRAs add up. The first merge into a tensor keeps a copy of its base value on the CPU,
so that :func:`unload_loras` restores the base weights bit for bit.

Differences from diffusers' loader (``WanLoraLoaderMixin``), which runs the same LoRA
math where both read a key: diffusers drops full-weight ``.diff`` keys (except
``head.head.diff``, which it reads as a down matrix), every ``norm`` delta, ``.diff_m``
and a ``time_projection`` LoRA without weight keys (and it fails on a
``time_projection.1.alpha``); here every delta is merged. ``head.head.diff`` is merged as
the full delta it is (diffusers' identity-up reading gives the same). A DoRA file
(``dora_scale``) is refused here (diffusers drops the scales and warns). A PEFT file's
alpha comes from ``.alpha`` keys or, as in diffusers, from the ``lora_adapter_metadata``
of its safetensors header (``lora_alpha``, ``alpha_pattern``, ``use_rslora``); without
either, alpha = rank.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_pth, load_safetensors, require_file

__all__ = ["apply_lora", "unload_loras", "read_lora", "LoraState", "DIFFUSERS_NAMES"]

log = logging.getLogger(__name__)

# diffusers' module names (WanTransformer3DModel, WanVACETransformer3DModel) -> official
# names: the inverse of diffusers' own converter for the DiT. "{b}" is a block prefix
# (blocks.N / vace_blocks.N); parts within a block come first, whole-model names after.
_BLOCK_PARTS = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k", "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img", "attn2.norm_added_k": "cross_attn.norm_k_img",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2", "norm2": "norm3",
    "proj_in": "before_proj", "proj_out": "after_proj",  # VACE blocks
}
_TOP_PARTS = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head", "patch_embedding": "patch_embedding",
    "vace_patch_embedding": "vace_patch_embedding",
}
DIFFUSERS_NAMES = {**{f"{{b}}.{k}": f"{{b}}.{v}" for k, v in _BLOCK_PARTS.items()}, **_TOP_PARTS}
_BLOCK = re.compile(r"^((?:vace_)?blocks\.\d+)\.(.+)$")

# key suffix -> (role, parameter of the module it changes)
_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_A.weight", "down"),
    (".lora_up.weight", "up"), (".lora_B.weight", "up"),
    (".lora_B.bias", "up_b"), (".alpha", "alpha"),
    (".diff_b", "diff_b"), (".diff_m", "diff_m"), (".diff", "diff"),
)
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.")
_DIFFUSERS_HINTS = ("attn1.", "attn2.", "condition_embedder.", "ffn.net.", "proj_out.")


@dataclass
class LoraState:
    """What was merged into a model: the base value (on the CPU) of every tensor touched."""
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    merged: list[dict] = field(default_factory=list)


def _state(model: nn.Module) -> LoraState:
    state = getattr(model, "_lora_state", None)
    if state is None:
        state = LoraState()
        model._lora_state = state
    return state


# ------------------------------------------------------------------ reading
def read_lora(lora: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file (safetensors, or .pt/.ckpt/.pth read with
    ``weights_only=True``: a file with pickled code is refused) or of a state dict."""
    if isinstance(lora, Mapping):
        sd = dict(lora)
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"LoRA state dict entry '{bad[0]}' is not a tensor")
        return sd
    if not isinstance(lora, (str, os.PathLike)):
        raise TypeError(f"a LoRA is a file path or a state dict, got {type(lora).__name__}")
    path = require_file(lora, "LoRA file")
    if path.suffix.lower() == ".safetensors":
        return load_safetensors([path], "LoRA file")
    if path.suffix.lower() in (".pt", ".ckpt", ".pth", ".bin"):
        return load_pth(path, "LoRA file", mmap=False)
    raise CheckpointError(f"LoRA file '{path}': unknown extension '{path.suffix}' (expected "
                          f".safetensors, .pt, .ckpt or .pth).")


def _peft_metadata(lora) -> dict | None:
    """The PEFT adapter config diffusers stores in a safetensors header (its
    ``transformer.`` entries, unprefixed), or None."""
    if isinstance(lora, Mapping) or Path(lora).suffix.lower() != ".safetensors":
        return None
    import json

    with open(lora, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            meta = json.loads(f.read(n)).get("__metadata__") or {}
            raw = meta.get("lora_adapter_metadata")
            cfg = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
    if not isinstance(cfg, dict):
        return None
    if any(k.startswith("transformer.") for k in cfg):
        cfg = {k[len("transformer."):]: v for k, v in cfg.items() if k.startswith("transformer.")}
    return cfg


def _peft_scale(cfg: dict, module: str, rank: int) -> float:
    """PEFT's ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA) for a diffusers module name."""
    alpha = cfg.get("lora_alpha", rank)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return alpha / (math.sqrt(rank) if cfg.get("use_rslora") else rank)


def _layout(keys) -> str:
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(k.startswith("transformer.") or any(h in k for h in _DIFFUSERS_HINTS) for k in keys):
        return "diffusers"
    return "wan"


def _official_name(module: str, layout: str, flat: dict[str, str]) -> str:
    """The official module name of a LoRA key's module (the name itself when unknown)."""
    if layout == "kohya":
        return flat.get(module, module)
    if layout == "diffusers":
        m = _BLOCK.match(module)
        if m and m.group(2) in _BLOCK_PARTS:
            return f"{m.group(1)}.{_BLOCK_PARTS[m.group(2)]}"
        if m and m.group(2) == "scale_shift_table":
            return m.group(1)  # a diff_m on the block's modulation
        return _TOP_PARTS.get(module, module)
    return module


def _split_key(key: str, layout: str) -> tuple[str, str]:
    name = key
    if layout == "kohya":
        name = name[len("lora_unet_"):] if name.startswith("lora_unet_") else name
    else:
        for p in _PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
    if "dora_scale" in name:
        raise ValueError(f"LoRA key '{key}': DoRA files (dora_scale) are not supported")
    for suffix, role in _SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)], role
    raise ValueError(f"LoRA key '{key}' is not a LoRA tensor (expected .lora_down/.lora_up, "
                     f".lora_A/.lora_B, .alpha, .diff, .diff_b or .diff_m)")


# ------------------------------------------------------------------ merging
def _tensor_slot(model: nn.Module, name: str) -> torch.Tensor | None:
    """The tensor that holds parameter ``name`` (a block-offloaded DiT keeps its block
    weights in the offloader's CPU masters)."""
    offloader = getattr(model, "_block_offloader", None)
    if offloader is not None:
        m = re.match(r"^blocks\.(\d+)\.(.+)$", name)
        if m and int(m.group(1)) < len(offloader.masters):
            return offloader.masters[int(m.group(1))].get(m.group(2))
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"the LoRA scale must be a finite number, got {scale!r}")
    return float(scale)


def _deltas(sd: dict[str, torch.Tensor], model: nn.Module, source: str, peft: dict | None = None
            ) -> tuple[list[tuple[str, str, torch.Tensor, torch.Tensor]], list[str]]:
    """``(param name, first key, param tensor, fp32 delta)`` for each weight the LoRA
    changes, and the modules it names that the model lacks."""
    layout = _layout(sd)
    flat = {n.replace(".", "_"): n for n, _ in model.named_modules() if n}
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, t in sd.items():
        module, role = _split_key(key, layout)
        official = _official_name(module, layout, flat)
        groups.setdefault(official, {})[role] = (key, t)
        groups[official][""] = module  # the name the file uses
    out, missing = [], []
    for module, parts in groups.items():
        if "up" in parts or "down" in parts:
            if "up" not in parts or "down" not in parts:
                key = (parts.get("up") or parts.get("down"))[0]
                raise ValueError(f"{source}: '{key}' has no matching "
                                 f"{'down' if 'up' in parts else 'up'} matrix")
        elif "alpha" in parts and len(parts) == 2:
            continue  # an alpha alone changes nothing
        # PEFT's scaling (alpha / rank) multiplies the LoRA weights and lora_B's bias
        factor = 1.0
        if "down" in parts:
            rank = parts["down"][1].shape[0]
            if "alpha" in parts:
                factor = parts["alpha"][1].float().item() / rank
            elif peft is not None:
                factor = _peft_scale(peft, parts[""], rank)
        targets = {"up": "weight", "diff": "weight", "diff_b": "bias", "up_b": "bias",
                   "diff_m": "modulation"}
        for role, param in targets.items():
            if role not in parts:
                continue
            key = parts[role][0]
            name = f"{module}.{param}" if module else param
            slot = _tensor_slot(model, name)
            if slot is None:
                missing.append(key)
                continue
            if role == "up":
                up, down = parts["up"][1].float(), parts["down"][1].float()
                rank = down.shape[0]
                if up.dim() < 2 or up.shape[1] != rank or up.shape[0] != slot.shape[0] \
                        or down[0].numel() != slot[0].numel() or \
                        (up.dim() > 2 and math.prod(up.shape[2:]) != 1):
                    raise ValueError(
                        f"{source}: '{key}' {tuple(up.shape)} with '{parts['down'][0]}' "
                        f"{tuple(down.shape)} does not fit '{name}' {tuple(slot.shape)}: a LoRA "
                        f"for another model size or kind?")
                delta = factor * (up.flatten(1) @ down.flatten(1)).reshape(slot.shape)
            else:
                delta = parts[role][1].float()
                if delta.numel() != slot.numel() or (delta.shape != slot.shape and
                                                     delta.squeeze().shape != slot.squeeze().shape):
                    raise ValueError(f"{source}: '{key}' {tuple(delta.shape)} does not fit "
                                     f"'{name}' {tuple(slot.shape)}: a LoRA for another model "
                                     f"size or kind?")
                delta = delta.reshape(slot.shape) * (factor if role == "up_b" else 1.0)
            out.append((name, key, slot, delta))
    return out, missing


@torch.no_grad()
def apply_lora(model: nn.Module, lora: str | os.PathLike | Mapping[str, torch.Tensor],
               scale: float = 1.0) -> int:
    """Merge a LoRA (file or state dict) into ``model`` (a WanModel / VaceWanModel) in
    place: ``W += scale * (alpha / rank) * up @ down`` in fp32, stored in ``W``'s dtype.

    Keys for modules the model lacks (an I2V LoRA's ``k_img`` on a T2V model) are
    skipped with one warning; a LoRA that does not fit the model's shapes, or that
    changes no weight of it, is a ValueError. Returns the number of tensors changed.
    """
    scale = _check_scale(scale)
    source = f"LoRA '{lora}'" if not isinstance(lora, Mapping) else "LoRA state dict"
    sd = read_lora(lora)
    if not sd:
        raise ValueError(f"{source} holds no tensors")
    deltas, missing = _deltas(sd, model, source, _peft_metadata(lora))
    if not deltas:
        raise ValueError(f"{source} matches no weight of this {type(model).__name__} "
                         f"(first key '{next(iter(sd))}'): a LoRA for another model?")
    if missing:
        log.warning("%s: %d tensors name modules this model lacks and were skipped (e.g. '%s')",
                    source, len(missing), missing[0])
    state = _state(model)
    for name, _, slot, delta in deltas:
        if name not in state.base:
            state.base[name] = slot.detach().to("cpu", copy=True)
        slot.copy_((slot.float() + scale * delta.to(slot.device)).to(slot.dtype))
    state.merged.append({"source": str(lora) if not isinstance(lora, Mapping) else None,
                         "scale": scale, "tensors": len(deltas)})
    return len(deltas)


@torch.no_grad()
def unload_loras(model: nn.Module) -> int:
    """Restore every tensor a LoRA changed to its base value (bit for bit); returns how many."""
    state = getattr(model, "_lora_state", None)
    if state is None:
        return 0
    for name, base in state.base.items():
        slot = _tensor_slot(model, name)
        slot.copy_(base.to(slot.device))
    n = len(state.base)
    model._lora_state = None
    return n
