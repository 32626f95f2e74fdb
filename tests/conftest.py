"""Shared test helpers. Everything runs on the CPU with miniature weights."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def fp32_config(task: str):
    """A copy of the task's config that runs everything in fp32 (for parity tests)."""
    import copy

    from wan.configs import WAN_CONFIGS

    cfg = copy.deepcopy(WAN_CONFIGS[task])
    cfg.param_dtype = cfg.t5_dtype = torch.float32
    if "clip_dtype" in cfg:
        cfg.clip_dtype = torch.float32
    return cfg


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over the whole tensor (b is the reference)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def seed_everything():
    torch.manual_seed(0)
    yield


def _tiny(name: str, task: str, seed: int, doc: str):
    """A session fixture ``name``: a miniature ``task`` folder in the official layout."""
    @pytest.fixture(scope="session", name=name)
    def fixture(tmp_path_factory):
        from wan.utils.tiny_checkpoint import make_checkpoint
        return make_checkpoint(tmp_path_factory.mktemp(f"tiny_{name}"), task, seed=seed)
    fixture.__doc__ = doc
    return fixture


# Miniature folders of every task, made once per session: fixture name, task, seed, layout.
MINIATURES = (
    ("t2v_ckpt", "t2v-1.3B", 11, "the T2V-1.3B layout"),
    ("i2v_ckpt", "i2v-14B", 12, "the I2V-14B layout (with CLIP)"),
    ("flf2v_ckpt", "flf2v-14B", 13, "the FLF2V-14B layout"),
    ("vace_ckpt", "vace-1.3B", 14, "the VACE-1.3B layout (one DiT file)"),
    ("vace14_ckpt", "vace-14B", 15, "the VACE-14B layout (7 shards + index)"),
    ("t2v_a14b_ckpt", "t2v-A14B", 31, "the Wan2.2 T2V-A14B layout (two experts, 6 shards each)"),
    ("i2v_a14b_ckpt", "i2v-A14B", 32, "the Wan2.2 I2V-A14B layout (two experts, no CLIP)"),
    ("ti2v_ckpt", "ti2v-5B", 33, "the Wan2.2 TI2V-5B layout (48-channel DiT, Wan2.2 VAE)"),
)
for _name, _task, _seed, _layout in MINIATURES:
    globals()[_name] = _tiny(_name, _task, _seed, f"A miniature folder in {_layout}.")
