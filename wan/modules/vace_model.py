"""The Wan2.1 VACE DiT: the T2V transformer plus a control branch ("all-in-one" video editing).

Structure (parameter names are those of the official checkpoints):

* everything of the T2V :class:`~wan.modules.model.WanModel` (``patch_embedding``,
  ``text_embedding``, ``time_embedding``, ``time_projection``, ``blocks.N``, ``head``);
* ``vace_patch_embedding``: Conv3d ``vace_in_dim`` (96) -> ``dim`` with the same patch,
  over the VACE context: per sample a ``[96, F, H, W]`` latent made of the 16 channels
  of the inactive (kept) video, the 16 of the reactive (to be generated) video and the
  64 channels of the mask folded from the 8 x 8 pixel patches of the VAE stride;
* ``vace_blocks.N``: transformer blocks with their own weights (:class:`WanAttentionBlock`
  subclasses). Block 0 first adds ``before_proj(c)`` to the embedded video tokens;
  every VACE block ``n`` also returns a hint ``after_proj(c_n)``;
* the main block at index ``vace_layers[n]`` adds ``hint_n * vace_context_scale`` to
  its output.

The VACE branch runs before the main blocks with the same time modulation, text
context and rotary positions as the video tokens. Under sequence parallelism the
VACE tokens are split across the ranks like the video tokens (official
``usp_dit_forward_vace``): each rank computes the hints of its slice and adds
them to the same slice.

Differences from diffusers' ``WanVACETransformer3DModel`` (same numbers otherwise; see
tests/test_vace_model.py): ``vace_context_scale`` is one number as in the official code,
or one per VACE layer (diffusers' ``control_hidden_states_scale`` tensor); hint ``n``
goes to main block ``vace_layers[n]`` as in the official mapping (diffusers pops the
hints in block order, which agrees for increasing ``vace_layers``, as released);
batches of different sizes are padded to ``seq_len`` and masked per sample; each VACE
latent must have its latent's frames x height x width (diffusers pads a shorter one).
The official forward ignores ``clip_fea`` / ``y``; here passing them is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linear import Linear
from .model import VACE_PREFIXES, WanAttentionBlock, WanModel, infer_config

__all__ = ["VaceWanModel", "VaceWanAttentionBlock", "VACE_IN_DIM"]

VACE_IN_DIM = 96  # 16 inactive + 16 reactive latent channels + 64 folded mask channels


class VaceWanAttentionBlock(WanAttentionBlock):
    """A VACE block: a :class:`WanAttentionBlock` on the control tokens ``c`` that also
    returns its hint ``after_proj(c)``; block 0 starts from ``before_proj(c) + x``."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, window_size=(-1, -1),
                 qk_norm: bool = True, cross_attn_norm: bool = True, eps: float = 1e-6,
                 text_len: int = 512, block_id: int = 0):
        super().__init__(dim, ffn_dim, num_heads, window_size, qk_norm, cross_attn_norm, eps,
                         image=False, text_len=text_len)
        self.block_id = block_id
        if block_id == 0:
            self.before_proj = Linear(dim, dim)
        self.after_proj = Linear(dim, dim)

    def forward(self, c: torch.Tensor, x: torch.Tensor, e: torch.Tensor, seq_lens: torch.Tensor,
                rope: torch.Tensor, context: torch.Tensor, kv_cache: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``c``: control tokens; ``x``: the embedded video tokens (read by block 0 only).

        Returns the control tokens for the next VACE block and this block's hint.
        """
        if self.block_id == 0:
            c = self.before_proj(c) + x
        c = super().forward(c, e, seq_lens, rope, context, kv_cache=kv_cache)
        return c, self.after_proj(c)


def _check_layers(vace_layers: Sequence[int], num_layers: int) -> list[int]:
    layers = [int(i) for i in vace_layers]
    if not layers or 0 not in layers:
        raise ValueError(f"vace_layers must include layer 0 (block 0 takes the video tokens), "
                         f"got {layers}")
    if len(set(layers)) != len(layers) or min(layers) < 0 or max(layers) >= num_layers:
        raise ValueError(f"vace_layers must be distinct indices of the {num_layers} main blocks, "
                         f"got {layers}")
    return layers


class VaceWanModel(WanModel):
    """The Wan2.1 VACE DiT (``model_type`` ``'vace'``): the T2V model plus a control branch.

    ``vace_layers`` (default: every second main block from 0, as the official) are the
    main blocks that receive the hints of the VACE blocks, one VACE block each, in
    order; ``vace_in_dim`` (default ``in_dim``; the released models: 96) is the
    channel count of the VACE context.
    """

    def __init__(self, vace_layers: Sequence[int] | None = None, vace_in_dim: int | None = None,
                 model_type: str = "vace", patch_size: Sequence[int] = (1, 2, 2),
                 text_len: int = 512, in_dim: int = 16, dim: int = 2048, ffn_dim: int = 8192,
                 freq_dim: int = 256, text_dim: int = 4096, out_dim: int = 16,
                 num_heads: int = 16, num_layers: int = 32, window_size=(-1, -1),
                 qk_norm: bool = True, cross_attn_norm: bool = True, eps: float = 1e-6,
                 clip_dim: int | None = None, image_tokens: bool | None = None):
        if model_type != "vace":
            raise ValueError(f"VaceWanModel is the 'vace' model type, got '{model_type}'")
        if clip_dim is not None or image_tokens:
            raise ValueError("the VACE model has no CLIP image branch (clip_dim must be None)")
        super().__init__("t2v", patch_size, text_len, in_dim, dim, ffn_dim, freq_dim, text_dim,
                         out_dim, num_heads, num_layers, window_size, qk_norm, cross_attn_norm,
                         eps)
        self.model_type = "vace"
        self.vace_layers = _check_layers(
            range(0, num_layers, 2) if vace_layers is None else vace_layers, num_layers)
        self.vace_in_dim = in_dim if vace_in_dim is None else int(vace_in_dim)
        # main block index -> index of the VACE block (hint) it adds
        self.vace_layers_mapping = {layer: n for n, layer in enumerate(self.vace_layers)}
        self.vace_blocks = nn.ModuleList([
            VaceWanAttentionBlock(dim, ffn_dim, num_heads, window_size, qk_norm, cross_attn_norm,
                                  eps, text_len=text_len, block_id=n)
            for n in range(len(self.vace_layers))
        ])
        self.vace_patch_embedding = nn.Conv3d(self.vace_in_dim, dim, kernel_size=self.patch_size,
                                              stride=self.patch_size)

    @property
    def config(self) -> dict:
        return dict(super().config, model_type="vace", vace_layers=list(self.vace_layers),
                    vace_in_dim=self.vace_in_dim)

    # -------------------------------------------------------------- pieces
    def patchify_vace(self, vace_context: Sequence[torch.Tensor], seq_len: int) -> torch.Tensor:
        """VACE latents -> zero-padded control tokens ``[B, seq_len, C]``."""
        tokens = []
        for u in vace_context:
            u = self.vace_patch_embedding(u.unsqueeze(0).to(self.device))
            tokens.append(u.flatten(2).transpose(1, 2))
        return torch.cat([F.pad(t, (0, 0, 0, seq_len - t.size(1))) for t in tokens])

    def forward_vace(self, x: torch.Tensor, c: torch.Tensor, e0: torch.Tensor,
                     seq_lens: torch.Tensor, rope: torch.Tensor, context: torch.Tensor,
                     kv_cache: dict | None = None) -> list[torch.Tensor]:
        """The hints of the VACE blocks (official ``forward_vace``) for the tokens ``x``
        and control tokens ``c`` (this rank's slices under sequence parallelism)."""
        hints = []
        for block in self.vace_blocks:
            c, hint = block(c, x, e0, seq_lens, rope, context, kv_cache=kv_cache)
            hints.append(hint)
        return hints

    def _scales(self, vace_context_scale) -> list[float]:
        n = len(self.vace_layers)
        if isinstance(vace_context_scale, torch.Tensor) and vace_context_scale.dim() == 0:
            vace_context_scale = float(vace_context_scale)
        if isinstance(vace_context_scale, (int, float)):
            return [float(vace_context_scale)] * n
        scales = [float(s) for s in vace_context_scale]
        if len(scales) != n:
            raise ValueError(f"vace_context_scale has {len(scales)} values; give one number or "
                             f"one per VACE layer ({n})")
        return scales

    def _check_inputs(self, x: Sequence[torch.Tensor], vace_context: Sequence[torch.Tensor]
                      ) -> None:
        if len(vace_context) != len(x):
            raise ValueError(f"vace_context has {len(vace_context)} latents for a batch of "
                             f"{len(x)}: give one per sample")
        for u, c in zip(x, vace_context):
            if c.dim() != 4 or c.size(0) != self.vace_in_dim:
                raise ValueError(
                    f"each vace_context latent must be [{self.vace_in_dim}, F, H, W] (16 inactive "
                    f"+ 16 reactive + 64 mask channels for the released models), got "
                    f"{list(c.shape)}")
            if tuple(c.shape[1:]) != tuple(u.shape[1:]):
                raise ValueError(f"a vace_context latent of frames x height x width "
                                 f"{tuple(c.shape[1:])} does not match its latent "
                                 f"{tuple(u.shape[1:])} (reference frames go into both)")

    # -------------------------------------------------------------- forward
    def forward(self, x: list[torch.Tensor], t: torch.Tensor, vace_context: list[torch.Tensor],
                context: list[torch.Tensor], seq_len: int, vace_context_scale=1.0,
                clip_fea: torch.Tensor | None = None, y: list[torch.Tensor] | None = None
                ) -> list[torch.Tensor]:
        """Predict the flow for a batch of latent videos under VACE control.

        Args:
            x: latents, each ``[16, F, H, W]`` (with reference frames: the reference
                latents first in time).
            t: timesteps ``[B]``.
            vace_context: VACE latents, each ``[vace_in_dim, F, H, W]`` of its latent's size.
            context: text embeddings, each ``[L_i, text_dim]`` (``L_i <= text_len``).
            seq_len: padded token length (at least the largest number of patches).
            vace_context_scale: weight of the hints: one number (official), or one per
                VACE layer (as diffusers' ``control_hidden_states_scale``).
            clip_fea, y: not used by VACE (accepted for the common call; must be None).
        Returns:
            list of ``[C_out, F, H, W]`` fp32 tensors.
        """
        if clip_fea is not None or y is not None:
            raise ValueError("the VACE model takes no clip_fea / y (its conditions go into "
                             "vace_context)")
        x, vace_context = list(x), list(vace_context)
        self._check_inputs(x, vace_context)
        scales = self._scales(vace_context_scale)
        state = self.prepare(x, t, context, seq_len)
        c = self.patchify_vace(vace_context, seq_len)
        if self.sp is not None:
            c = self.sp.scatter(c)
        hints = self.forward_vace(state["tokens"], c, state["e0"], state["seq_lens"],
                                  state["rope"], state["ctx"], kv_cache=state["kv_cache"])
        del c

        def add_hint(i: int, tokens: torch.Tensor) -> torch.Tensor:
            n = self.vace_layers_mapping.get(i)
            if n is None:
                return tokens
            hint, hints[n] = hints[n], None  # free it once added
            return tokens + hint * scales[n]

        return self.finish(self.run_blocks(state, after_block=add_hint), state)

    # -------------------------------------------------------------- loading
    @classmethod
    def config_from_checkpoint(cls, cfg: dict, sd: dict[str, torch.Tensor], source: str) -> dict:
        """The T2V arguments (as :func:`~wan.modules.model.infer_config`) plus ``vace_layers``
        and ``vace_in_dim``, from ``config.json`` checked against the tensor shapes."""
        from ..utils.checkpoint import CheckpointError

        said = f"config.json 'model_type' '{cfg['model_type']}'" if cfg.get("model_type") \
            else "no 'model_type' in config.json"
        if not any(k.startswith("vace_blocks.") for k in sd):
            raise CheckpointError(
                f"{source} is not a Wan2.1 VACE DiT: no vace_blocks keys ({said}); pass the "
                f"Wan2.1-VACE-1.3B or Wan2.1-VACE-14B folder.")
        if cfg.get("model_type") not in (None, "vace"):
            raise CheckpointError(f"{source}: {said} but the weights have the VACE tensors "
                                  f"'vace_blocks.N': the folder mixes files of different models.")
        if "vace_patch_embedding.weight" not in sd:
            raise CheckpointError(f"{source} is not a complete Wan2.1 VACE DiT: tensor "
                                  f"'vace_patch_embedding.weight' is missing.")
        base = {k: v for k, v in sd.items() if not k.startswith(VACE_PREFIXES)}
        kwargs = infer_config(dict(cfg, model_type="t2v"), base, source)
        num_layers = kwargs["num_layers"]
        n_blocks = len({k.split(".")[1] for k in sd if k.startswith("vace_blocks.")})
        in_dim = int(sd["vace_patch_embedding.weight"].shape[1])

        if "vace_layers" in cfg:
            layers, why = cfg["vace_layers"], f"config.json 'vace_layers' {cfg['vace_layers']}"
            if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
                raise CheckpointError(f"{source}: {why} must be a list of block indices.")
        else:
            layers = list(range(0, num_layers, 2))
            why = (f"without 'vace_layers' in config.json every second of the {num_layers} "
                   f"layers ({len(layers)})")
        if len(layers) != n_blocks:
            raise CheckpointError(
                f"{source}: {why} gives {len(layers)} VACE layers but the weights have "
                f"{n_blocks} VACE blocks ('vace_blocks.N'); the folder mixes files of "
                f"different models.")
        try:
            layers = _check_layers(layers, num_layers)
        except ValueError as err:
            raise CheckpointError(f"{source}: {why}: {err}.") from None
        if int(cfg.get("vace_in_dim", kwargs["in_dim"])) != in_dim:
            why = (f"config.json says vace_in_dim={cfg['vace_in_dim']}" if "vace_in_dim" in cfg
                   else f"without 'vace_in_dim' in config.json it is in_dim {kwargs['in_dim']}")
            raise CheckpointError(
                f"{source}: {why} but 'vace_patch_embedding.weight' takes {in_dim} channels; "
                f"the folder mixes files of different models.")
        kwargs.update(model_type="vace", vace_layers=layers, vace_in_dim=in_dim)
        return kwargs
