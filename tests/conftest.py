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


@pytest.fixture(scope="session")
def t2v_ckpt(tmp_path_factory):
    """A miniature T2V checkpoint folder in the official layout (shared by the tests)."""
    from wan.utils.tiny_checkpoint import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("tiny_t2v"), "t2v-1.3B", seed=11)


@pytest.fixture(scope="session")
def i2v_ckpt(tmp_path_factory):
    """A miniature I2V checkpoint folder in the official layout (shared by the tests)."""
    from wan.utils.tiny_checkpoint import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("tiny_i2v"), "i2v-14B", seed=12)


@pytest.fixture(scope="session")
def flf2v_ckpt(tmp_path_factory):
    """A miniature FLF2V checkpoint folder in the official layout (shared by the tests)."""
    from wan.utils.tiny_checkpoint import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("tiny_flf2v"), "flf2v-14B", seed=13)


@pytest.fixture(scope="session")
def vace_ckpt(tmp_path_factory):
    """A miniature VACE checkpoint folder in the Wan2.1-VACE-1.3B layout (one DiT file)."""
    from wan.utils.tiny_checkpoint import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("tiny_vace"), "vace-1.3B", seed=14)


@pytest.fixture(scope="session")
def vace14_ckpt(tmp_path_factory):
    """A miniature VACE checkpoint folder in the Wan2.1-VACE-14B layout (7 shards + index)."""
    from wan.utils.tiny_checkpoint import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("tiny_vace14"), "vace-14B", seed=15)


@pytest.fixture(scope="session")
def t2v_a14b_ckpt(tmp_path_factory):
    """A miniature Wan2.2 T2V-A14B folder (two experts of 6 shards each)."""
    from wan.utils.tiny_checkpoint import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("tiny_t2v_a14b"), "t2v-A14B", seed=31)


@pytest.fixture(scope="session")
def i2v_a14b_ckpt(tmp_path_factory):
    """A miniature Wan2.2 I2V-A14B folder (two experts, no CLIP)."""
    from wan.utils.tiny_checkpoint import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("tiny_i2v_a14b"), "i2v-A14B", seed=32)


@pytest.fixture(scope="session")
def ti2v_ckpt(tmp_path_factory):
    """A miniature Wan2.2 TI2V-5B folder (48-channel DiT, the Wan2.2 VAE)."""
    from wan.utils.tiny_checkpoint import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("tiny_ti2v"), "ti2v-5B", seed=33)
