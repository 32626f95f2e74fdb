"""Checkpoints stored in bf16 / fp16 load into the dtypes the model computes in.

Many re-uploads hold the DiT (or the VAE / CLIP file) in bf16 or fp16, while the
official files are fp32. Whatever the file holds, the loader converts each tensor to
the dtype of the config's policy, so such a folder must give exactly what an fp32
folder holding the same (rounded) values gives: bit for bit in the default bf16
route, and to fp32 rounding in an fp32 config.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from conftest import fp32_config, rel_err
from wan.configs import WAN_CONFIGS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DIT_FILE = "diffusion_pytorch_model.safetensors"


# ------------------------------------------------------------------ folders
def _store(sd: dict, dtype: torch.dtype, roundtrip: bool) -> dict:
    """Floating tensors in ``dtype`` (``roundtrip``: the same rounded values back in fp32)."""
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            v = v.to(dtype)
            if roundtrip:
                v = v.float()
        out[k] = v.contiguous()
    return out


def converted_folder(src: Path, dst: Path, component: str, dtype: torch.dtype,
                     roundtrip: bool = False) -> Path:
    """A copy of ``src`` whose ``component`` file is stored in ``dtype``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    cfg = WAN_CONFIGS["i2v-14B"]
    if component == "dit":
        path = dst / DIT_FILE
        save_file(_store(load_file(path), dtype, roundtrip), path, metadata={"format": "pt"})
        return dst
    name = {"vae": cfg.vae_checkpoint, "clip": cfg.clip_checkpoint, "t5": cfg.t5_checkpoint}
    path = dst / name[component]
    torch.save(_store(torch.load(path, weights_only=True), dtype, roundtrip), path)
    return dst


@pytest.fixture(scope="module")
def folders(t2v_ckpt, i2v_ckpt, tmp_path_factory):
    """{(task, component, dtype, 'stored' | 'rounded'): folder}."""
    root = tmp_path_factory.mktemp("dtypes")
    out = {}
    cases = [("t2v", "dit")] + [("i2v", c) for c in ("dit", "vae", "clip")]
    for task, component in cases:
        src = t2v_ckpt if task == "t2v" else i2v_ckpt
        for name, dtype in DTYPES.items():
            for kind in ("stored", "rounded"):
                dst = root / f"{task}-{component}-{name}-{kind}"
                out[(task, component, name, kind)] = converted_folder(
                    src, dst, component, dtype, roundtrip=kind == "rounded")
    return out




def image():
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))


def generate(task: str, folder: Path, cfg=None) -> torch.Tensor:
    import wan

    kw = dict(frame_num=5, sampling_steps=2, seed=5, offload_model=False)
    if task == "t2v":
        pipe = wan.WanT2V(cfg or WAN_CONFIGS["t2v-1.3B"], folder, device_id="cpu")
        return pipe.generate("a red kite over the dunes", size=(48, 32), **kw)
    pipe = wan.WanI2V(cfg or WAN_CONFIGS["i2v-14B"], folder, device_id="cpu")
    return pipe.generate("a cat on a surfboard", image(), max_area=48 * 32, **kw)


# ------------------------------------------------------------------ the pipelines
CASES = [("t2v", "dit"), ("i2v", "dit"), ("i2v", "vae"), ("i2v", "clip")]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("task,component", CASES)
def test_default_route_bit_identical_to_rounded_fp32_folder(folders, task, component, dtype):
    stored = generate(task, folders[(task, component, dtype, "stored")])
    rounded = generate(task, folders[(task, component, dtype, "rounded")])
    assert torch.isfinite(stored).all()
    assert torch.equal(stored, rounded)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("task,component", CASES)
def test_fp32_config_matches_rounded_fp32_folder(folders, task, component, dtype):
    cfg = fp32_config("t2v-1.3B" if task == "t2v" else "i2v-14B")
    stored = generate(task, folders[(task, component, dtype, "stored")], cfg)
    rounded = generate(task, folders[(task, component, dtype, "rounded")], cfg)
    err = rel_err(stored, rounded)
    print(f"{task} {component} {dtype} fp32 config: relative error {err:.1e}")
    assert err <= 1e-6


def test_dit_tensors_take_the_policy_dtypes_whatever_the_file(folders):
    """Same dtypes and values as from the fp32 folder; the conversion is logged once."""
    from wan.modules.model import WanModel, is_matmul_weight

    for dtype in DTYPES:
        kw = dict(matmul_dtype=torch.bfloat16)
        a = WanModel.from_pretrained(folders[("i2v", "dit", dtype, "stored")], **kw).state_dict()
        b = WanModel.from_pretrained(folders[("i2v", "dit", dtype, "rounded")], **kw).state_dict()
        for k in b:
            want = torch.bfloat16 if is_matmul_weight(k) else torch.float32
            assert a[k].dtype == b[k].dtype == want, k
            assert torch.equal(a[k], b[k]), k


def test_conversion_is_logged_once(folders, caplog):
    from wan.modules.model import WanModel

    with caplog.at_level(logging.INFO):
        WanModel.from_pretrained(folders[("t2v", "dit", "bf16", "stored")],
                                 matmul_dtype=torch.bfloat16)
    lines = [r.getMessage() for r in caplog.records if "weights stored in" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "stored in bf16" in lines[0] and "to fp32" in lines[0], lines[0]
    caplog.clear()
    with caplog.at_level(logging.INFO):  # an fp32 file in an fp32 model: nothing to say
        WanModel.from_pretrained(folders[("t2v", "dit", "bf16", "rounded")])
    assert not [r for r in caplog.records if "weights stored in" in r.getMessage()]


def test_t5_file_in_fp32_or_fp16_gives_the_bf16_encoder(t2v_ckpt, tmp_path):
    """The T5 goes through the same conversion (official file: bf16)."""
    from wan.modules.t5 import load_t5_encoder

    cfg = WAN_CONFIGS["t2v-1.3B"]
    ref = load_t5_encoder(t2v_ckpt / cfg.t5_checkpoint, torch.bfloat16).state_dict()
    for dtype in (torch.float32, torch.float16):
        folder = converted_folder(t2v_ckpt, tmp_path / str(dtype), "t5", dtype)
        got = load_t5_encoder(folder / cfg.t5_checkpoint, torch.bfloat16).state_dict()
        for k in ref:
            assert got[k].dtype == torch.bfloat16
            if dtype == torch.float32:  # bf16 values widened to fp32 and back: unchanged
                assert torch.equal(got[k], ref[k]), k


def test_block_offload_with_a_bf16_file(folders):
    from wan.modules.model import WanModel, cached_context
    from wan.utils.offload import enable_block_offload

    kw = dict(matmul_dtype=torch.bfloat16)
    plain = WanModel.from_pretrained(folders[("t2v", "dit", "bf16", "rounded")], **kw)
    offl = WanModel.from_pretrained(folders[("t2v", "dit", "bf16", "stored")], **kw)
    enable_block_offload(offl, "cpu", resident=1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, 4, 6, generator=g)
    ctx = [torch.randn(7, plain.text_dim, generator=g)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            with cached_context(offl):
                a = offl([x], torch.tensor([500]), ctx, 12)[0]
            b = plain([x], torch.tensor([500]), ctx, 12)[0]
            assert torch.equal(a, b)


# ------------------------------------------------------------------ the command line
@pytest.mark.parametrize("task,dtype", [("t2v", "bf16"), ("i2v", "fp16")])
def test_generate_py_runs_on_half_precision_files(folders, tmp_path, task, dtype, capsys):
    """Every component of the folder in bf16 / fp16 (DiT, VAE and for i2v CLIP)."""
    import generate as cli

    folder = Path(folders[(task, "dit", dtype, "stored")])
    mixed = tmp_path / "all-half"
    shutil.copytree(folder, mixed)
    vae = folders[(task, "vae", dtype, "stored")] if task == "i2v" else None
    cfg = WAN_CONFIGS["i2v-14B"]
    if vae is not None:
        for name in (cfg.vae_checkpoint, cfg.clip_checkpoint):
            src = folders[(task, "clip" if "clip" in name else "vae", dtype, "stored")] / name
            shutil.copy(src, mixed / name)
    else:
        path = mixed / cfg.vae_checkpoint
        torch.save(_store(torch.load(path, weights_only=True), DTYPES[dtype], False), path)
    out = tmp_path / "out.mp4"
    argv = ["--task", "t2v-1.3B" if task == "t2v" else "i2v-14B", "--size", "832*480",
            "--frame_num", "1", "--sample_steps", "2", "--ckpt_dir", str(mixed),
            "--prompt", "a lighthouse at night", "--base_seed", "3", "--save_file", str(out)]
    if task == "i2v":
        image().save(tmp_path / "in.png")
        argv += ["--image", str(tmp_path / "in.png")]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert out.is_file() and out.with_suffix(".json").is_file()


# ------------------------------------------------------------------ FSDP, 2 processes
def fsdp_job(rank: int, port: int, stored: str, rounded: str, out_file: str) -> None:
    from test_distributed import init_gloo

    init_gloo(rank, port)
    import wan

    kw = dict(frame_num=5, sampling_steps=2, seed=5, offload_model=False, size=(48, 32))
    # The one-process reference on the rounded fp32 folder (every rank runs it: the
    # pipelines synchronise the ranks).
    single = wan.WanT2V(WAN_CONFIGS["t2v-1.3B"], rounded, device_id="cpu").generate(
        "a red kite over the dunes", **kw)
    pipe = wan.WanT2V(WAN_CONFIGS["t2v-1.3B"], stored, device_id="cpu", rank=rank,
                      dit_fsdp=True)
    video = pipe.generate("a red kite over the dunes", **kw)
    if rank == 0:
        torch.save({"single": single, "fsdp": video}, out_file)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_dit_fsdp_two_processes_with_a_bf16_file(folders, tmp_path):
    from test_distributed import free_port

    out = tmp_path / "fsdp.pt"
    threads = torch.get_num_threads()
    mp.spawn(fsdp_job, args=(free_port(), str(folders[("t2v", "dit", "bf16", "stored")]),
                             str(folders[("t2v", "dit", "bf16", "rounded")]), str(out)),
             nprocs=2, join=True)
    torch.set_num_threads(threads)
    res = torch.load(out, weights_only=True)
    assert torch.equal(res["fsdp"], res["single"])
