"""What every task pipeline shares: devices, loading, offloading, text encoding, decoding.

:class:`WanT2V` and :class:`WanI2V` subclass :class:`WanPipelineBase` and only
build their conditioning; the denoising loop is :func:`wan.sampling.sample`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from .modules.model import WanModel
from .modules.t5 import T5EncoderModel
from .modules.vae import WanVAE
from .sampling import Conditioning, Experts, guide_pair, initial_noise, resolve_seed, sample
from .utils.checkpoint import require_dir
from .utils.device import empty_cache, resolve_device
from .utils.fm_solvers import SOLVERS

__all__ = ["WanPipelineBase", "resolve_device"]

log = logging.getLogger(__name__)


@contextmanager
def stage(name: str):
    """Log a stage of the generation with its duration."""
    t0 = time.perf_counter()
    yield
    log.info("%s took %.2f s", name, time.perf_counter() - t0)


class WanPipelineBase:
    """Loads T5, VAE and the DiT of a checkpoint folder and places them on devices."""

    model_type = "t2v"

    def __init__(self, config, checkpoint_dir: str | os.PathLike,
                 device_id: int | str | torch.device = 0, rank: int = 0, t5_fsdp: bool = False,
                 dit_fsdp: bool = False, use_usp: bool = False, t5_cpu: bool = False,
                 dit_offload_blocks: int = 0, use_sp: bool | None = None,
                 init_on_cpu: bool = True, convert_model_dtype: bool = False):
        # use_sp is Wan2.2's name of use_usp; init_on_cpu is kept for the official signature
        # (components start on the CPU and move to the accelerator when first used).
        use_usp = use_usp or bool(use_sp)
        self.config = config
        self.checkpoint_dir = Path(require_dir(checkpoint_dir, "checkpoint"))
        self.device = resolve_device(device_id)
        self.rank = rank
        self.t5_cpu = t5_cpu
        self.num_train_timesteps = config.num_train_timesteps
        self.param_dtype = config.param_dtype
        self.vae_stride = tuple(config.vae_stride)
        self.patch_size = tuple(config.patch_size)
        self.sample_neg_prompt = config.sample_neg_prompt
        self.boundary = config.get("boundary")
        self.last_seed: int | None = None
        self.schedule: dict | None = None  # a distilled few-step schedule (set_schedule)
        self.loras: list[dict] = []  # LoRAs merged into the DiT(s), for the sidecar
        self.sp_size = 1
        self._on_device: set[str] = set()

        shard_fn = None
        if t5_fsdp or dit_fsdp:
            from .distributed.fsdp import shard_model
            shard_fn = partial(shard_model, device_id=self.device)

        dit_folders = self._dit_folders(config)  # a wrong folder fails before any loading
        self._vae_file(config)
        with stage("loading the text encoder"):
            self.text_encoder = T5EncoderModel(
                text_len=config.text_len, dtype=config.t5_dtype, device=torch.device("cpu"),
                checkpoint_path=self.checkpoint_dir / config.t5_checkpoint,
                tokenizer_path=self.checkpoint_dir / config.t5_tokenizer,
                shard_fn=shard_fn if t5_fsdp else None)
        with stage("loading the VAE"):
            self.vae = self._load_vae(config)
        self._load_extra_encoders(config)
        self.dits: dict[str, torch.nn.Module] = {}
        for name, folder in dit_folders.items():
            with stage(f"loading the DiT{'' if name == 'dit' else f' ({name}-noise expert)'}"):
                self.dits[name] = self._load_dit(folder, convert_model_dtype)
        self._check_experts()
        self._check_text_width()

        for name in list(self.dits):
            if use_usp:
                from .distributed.sequence_parallel import enable_sequence_parallel
                self.sp_size = enable_sequence_parallel(self.dits[name])
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if dit_fsdp:
                self.dits[name] = shard_fn(self.dits[name])
                self._on_device.add(name)
            elif dit_offload_blocks > 0 and self.device.type != "cpu":
                from .utils.offload import enable_block_offload
                enable_block_offload(self.dits[name], self.device, resident=dit_offload_blocks)
                self._on_device.add(name)

    # ---------------------------------------------------------------- the DiT(s)
    @property
    def model(self) -> torch.nn.Module | None:
        """The DiT (None for the two-expert Wan2.2 A14B models: see the properties below)."""
        return self.dits.get("dit")

    @property
    def high_noise_model(self) -> torch.nn.Module | None:
        return self.dits.get("high")

    @property
    def low_noise_model(self) -> torch.nn.Module | None:
        return self.dits.get("low")

    @property
    def is_moe(self) -> bool:
        return "high" in self.dits

    def _dit_folders(self, config) -> dict[str, Path]:
        """``{'dit': folder}``, or for the Wan2.2 A14B models ``{'high': ..., 'low': ...}``."""
        from .utils.checkpoint import CheckpointError

        root = self.checkpoint_dir
        if config.get("high_noise_checkpoint"):
            folders = {"high": root / config.high_noise_checkpoint,
                       "low": root / config.low_noise_checkpoint}
            missing = [f.name for f in folders.values() if not f.is_dir()]
            if missing:
                found = (" It holds a single DiT at its top (config.json): a Wan2.1 checkpoint? "
                         "Use its Wan2.1 task." if (root / "config.json").is_file() else "")
                raise CheckpointError(
                    f"'{root}' is not a Wan2.2 A14B checkpoint folder: the expert folder "
                    f"'{missing[0]}/' is missing (it needs 'high_noise_model/' and "
                    f"'low_noise_model/').{found}")
            return folders
        if not (root / "config.json").is_file() and (root / "high_noise_model").is_dir():
            raise CheckpointError(
                f"'{root}' holds the two experts of a Wan2.2 A14B model (high_noise_model/, "
                f"low_noise_model/), not a single DiT: use --task t2v-A14B or i2v-A14B.")
        return {"dit": root}

    def _load_dit(self, folder: Path, convert_model_dtype: bool = False) -> torch.nn.Module:
        """The DiT in ``folder`` with the config's dtype policy: bf16 (fp16) matmul weights
        under mixed precision, the rest fp32 (``convert_model_dtype``: everything in
        ``param_dtype``, as the official ``--convert_model_dtype``)."""
        half = self.param_dtype if self.param_dtype in (torch.bfloat16, torch.float16) else None
        rest = self.param_dtype if convert_model_dtype or half is None else torch.float32
        return self.dit_class().from_pretrained(folder, model_type=self.model_type,
                                                matmul_dtype=half, torch_dtype=rest)

    @staticmethod
    def dit_class() -> type:
        return WanModel

    _VAE_KINDS = {  # file name: (what it is, what to do with a folder that holds it)
        "Wan2.1_VAE.pth": ("the Wan2.1 VAE, 16 latent channels",
                           "a Wan2.1 (or Wan2.2 A14B) folder? Use its task, e.g. --task t2v-1.3B"),
        "Wan2.2_VAE.pth": ("the Wan2.2 VAE, 48 latent channels",
                           "a Wan2.2 TI2V-5B folder? Use --task ti2v-5B"),
    }

    def _vae_file(self, config) -> Path:
        """The config's VAE file; a folder holding the other kind of Wan VAE instead is named
        as such (rather than as an incomplete download)."""
        from .utils.checkpoint import CheckpointError

        path = self.checkpoint_dir / config.vae_checkpoint
        if not path.is_file() and path.name in self._VAE_KINDS:
            for other, (what, hint) in self._VAE_KINDS.items():
                if other != path.name and (self.checkpoint_dir / other).is_file():
                    raise CheckpointError(
                        f"'{self.checkpoint_dir}' holds '{other}' ({what}) but not "
                        f"'{path.name}' ({self._VAE_KINDS[path.name][0]}), which this model "
                        f"needs: {hint}.")
        return path

    def _load_vae(self, config):
        return WanVAE(vae_pth=self._vae_file(config), device=torch.device("cpu"))

    def _check_experts(self) -> None:
        if not self.is_moe:
            return
        high, low = self.dits["high"].config, self.dits["low"].config
        if high != low:
            from .utils.checkpoint import CheckpointError
            diff = next(k for k in high if high[k] != low.get(k))
            raise CheckpointError(
                f"the two experts in '{self.checkpoint_dir}' differ ({diff}: "
                f"{high[diff]} in high_noise_model/ vs {low[diff]} in low_noise_model/): "
                f"they must be the two halves of one Wan2.2 A14B download.")

    # ---------------------------------------------------------------- LoRA
    def load_lora(self, path: str | os.PathLike, scale: float = 1.0,
                  expert: str | None = None) -> int:
        """Merge a LoRA file into the DiT(s) (wan.utils.lora.apply_lora); ``expert``
        'high' or 'low' picks one Wan2.2 A14B expert, None every DiT. Recorded in
        ``self.loras`` (path, sha256, scale, expert) for the sidecar."""
        from .utils.io import sha256_file
        from .utils.lora import apply_lora, _check_scale

        scale = _check_scale(scale)
        if expert is None:
            names = list(self.dits)
        elif expert in ("high", "low") and expert in self.dits:
            names = [expert]
        else:
            have = "'high', 'low' or None" if self.is_moe else "None (this model has one DiT)"
            raise ValueError(f"unknown LoRA expert {expert!r}: use {have}")
        for name in names:
            if self._sharded(name):
                raise ValueError("LoRAs cannot be merged into an FSDP-sharded DiT")
        n = sum(apply_lora(self.dits[name], path, scale) for name in names)
        self.loras.append({"path": str(path), "sha256": sha256_file(path), "scale": scale,
                           "expert": expert})
        return n

    def unload_loras(self) -> None:
        """Restore the base weights of every DiT (bit for bit) and forget the LoRAs."""
        from .utils.lora import unload_loras

        for model in self.dits.values():
            unload_loras(model)
        self.loras = []

    # ---------------------------------------------------------------- hooks
    def _load_extra_encoders(self, config) -> None:
        """Subclasses load further encoders here (CLIP for i2v)."""

    def _check_text_width(self) -> None:
        t5_dim = self.text_encoder.model.token_embedding.weight.shape[1]
        dit = next(iter(self.dits.values()))
        if t5_dim != dit.text_dim:
            from .utils.checkpoint import CheckpointError
            raise CheckpointError(
                f"the text encoder in '{self.checkpoint_dir}' is {t5_dim} wide but the DiT expects "
                f"{dit.text_dim}: the folder mixes files of different models.")

    # ---------------------------------------------------------------- placement
    def _modules(self) -> dict[str, torch.nn.Module]:
        mods = {"t5": self.text_encoder.model, "vae": self.vae.model, **self.dits}
        clip = getattr(self, "clip", None)
        if clip is not None:
            mods["clip"] = clip.model
        return mods

    def _sharded(self, name: str) -> bool:
        """True for an FSDP-sharded component (it stays on its device)."""
        module = self._modules().get(name)
        if module is None or not (dist.is_available() and dist.is_initialized()):
            return False
        from .distributed.fsdp import is_sharded
        return is_sharded(module)

    def _managed(self, name: str) -> bool:
        """FSDP-sharded or block-offloaded: placement is managed elsewhere."""
        return self._sharded(name) or hasattr(self.dits.get(name), "_block_offloader")

    def _move(self, name: str, device: torch.device) -> None:
        if self._managed(name):
            return
        if name == "vae":
            self.vae.to(device)
        else:
            self._modules()[name].to(device)

    def _activate(self, name: str, offload_model: bool) -> None:
        """Put component ``name`` on the accelerator; with offloading, move the others off it."""
        if self.device.type == "cpu":
            return
        if offload_model:
            for other in list(self._on_device):
                if other != name and not self._managed(other):
                    self._move(other, torch.device("cpu"))
                    self._on_device.discard(other)
            empty_cache(self.device)
        if name in self._modules() and name not in self._on_device:
            self._move(name, self.device)
            self._on_device.add(name)

    # ---------------------------------------------------------------- stages
    def encode_text(self, prompts: list[str], offload_model: bool) -> list[torch.Tensor]:
        """umT5 embeddings of ``prompts`` on the pipeline device (trimmed to their lengths)."""
        with stage("text encoding"):
            if self.t5_cpu:
                out = self.text_encoder(prompts, torch.device("cpu"))
                return [u.to(self.device) for u in out]
            self._activate("t5", offload_model)
            return self.text_encoder(prompts, self.device)

    def latent_shape(self, frame_num: int, height: int, width: int) -> tuple[int, int, int, int]:
        st, sh, sw = self.vae_stride
        return (self.vae.model.z_dim, (frame_num - 1) // st + 1, height // sh, width // sw)

    def seq_len(self, latent_shape: tuple[int, ...]) -> int:
        """Number of DiT tokens, rounded up to a multiple of the sequence-parallel size."""
        _, f, h, w = latent_shape
        tokens = f * h * w / (self.patch_size[1] * self.patch_size[2])
        return math.ceil(tokens / self.sp_size) * self.sp_size

    def set_schedule(self, denoising_steps=None, renoise: bool = False,
                     boundary_step: int | None = None) -> None:
        """Sample with a distilled few-step schedule (LightX2V's ``denoising_step_list``,
        e.g. ``[1000, 750, 500, 250]`` with a 4-step distillation LoRA) instead of the
        solver grid; ``renoise``: the x0-and-re-noise update of older distilled samplers;
        ``boundary_step``: for A14B, the step where the low-noise expert takes over (default:
        the timestep rule). ``None`` goes back to the solver's grid."""
        from .utils.fm_solvers import check_denoising_steps

        if denoising_steps is None:
            self.schedule = None
            return
        steps = check_denoising_steps(denoising_steps, self.num_train_timesteps)
        if boundary_step is not None and not 0 <= int(boundary_step) <= len(steps):
            raise ValueError(f"boundary_step must be in [0, {len(steps)}], got {boundary_step}")
        self.schedule = dict(denoising_steps=steps, renoise=bool(renoise),
                             boundary_step=None if boundary_step is None else int(boundary_step))

    def _distill_sampler(self, shift: float, noise: torch.Tensor):
        from .utils.fm_solvers import StepDistillSampler, distill_sigmas

        g = None
        if self.schedule["renoise"]:
            # the run's seeded generator, continued after the initial noise it drew
            g = torch.Generator(device=noise.device)
            g.manual_seed(self.last_seed)
            torch.randn(noise.shape, dtype=torch.float32, device=noise.device, generator=g)
        return StepDistillSampler(
            distill_sigmas(self.schedule["denoising_steps"], shift, self.num_train_timesteps),
            self.num_train_timesteps, device=self.device, renoise=self.schedule["renoise"],
            generator=g)

    def denoise(self, noise: torch.Tensor, cond: Conditioning, uncond: Conditioning, seq_len: int,
                sample_solver: str, sampling_steps: int, shift: float, guide_scale,
                offload_model: bool, on_step=None, **plan) -> torch.Tensor:
        """The sampling loop on the DiT (or the two experts); ``plan``: the per-step inputs of
        :func:`wan.sampling.sample` (``start_step``/``init_latent``, ``timestep_fn``,
        ``constraint``)."""
        if self.schedule is not None:
            plan["sampler"] = self._distill_sampler(shift, noise)
            sampling_steps = len(self.schedule["denoising_steps"])
            sample_solver = "distilled schedule"
        if self.is_moe:
            switch = self.schedule["boundary_step"] if self.schedule is not None else None
            model = Experts(self.dits["high"], self.dits["low"],
                            boundary=self.boundary * self.num_train_timesteps,
                            activate=lambda name: self._activate(name, offload_model),
                            switch_step=switch)
            self.last_experts = model.history
        else:
            self._activate("dit", offload_model)
            model = self.model
        start = plan.get("start_step", 0)
        steps = (f"{sampling_steps} steps" if start == 0 else
                 f"steps {start + 1}-{sampling_steps} of {sampling_steps}")
        with stage(f"denoising ({steps}, {sample_solver})"):
            return sample(model, noise, cond, uncond, seq_len, solver=sample_solver,
                          steps=sampling_steps, shift=shift, guide_scale=guide_scale,
                          num_train_timesteps=self.num_train_timesteps,
                          param_dtype=self.param_dtype, progress=self.rank == 0, on_step=on_step,
                          **plan)

    def decode(self, latent: torch.Tensor, offload_model: bool) -> torch.Tensor:
        """Latent -> video ``[3, F, H, W]`` in [-1, 1] (the VAE computes in its own dtype, fp32)."""
        self._activate("vae", offload_model)
        with stage("VAE decoding"), torch.no_grad():
            video = self.vae.decode([latent.to(self.device)])[0]
        if offload_model:
            self._activate("nothing", offload_model)  # leave the accelerator empty
        return video

    # ---------------------------------------------------------------- checks
    @staticmethod
    def check_sampling_args(frame_num: int, sample_solver: str, sampling_steps: int,
                            guide_scale: float, shift: float) -> None:
        if frame_num < 1 or (frame_num - 1) % 4:
            raise ValueError(f"frame_num must be 4n+1 (1, 5, 9, ..., 81), got {frame_num}")
        if sample_solver not in SOLVERS:
            raise ValueError(f"unknown sample_solver '{sample_solver}'; choose one of "
                             f"{', '.join(SOLVERS)}")
        if sampling_steps < 1:
            raise ValueError(f"sampling_steps must be at least 1, got {sampling_steps}")
        guide_pair(guide_scale)  # a number or a (low, high) pair, each >= 0
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")

    def prepare_noise(self, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        self.last_seed = resolve_seed(seed)
        log.info("seed: %d", self.last_seed)
        return initial_noise(shape, self.last_seed, self.device)

    def _finish(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
