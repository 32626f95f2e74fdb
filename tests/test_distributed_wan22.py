"""Wan2.2 on two processes (gloo, CPU): the T2V-A14B expert pair and TI2V-5B with an image.

One spawned 2-process job (as tests/test_distributed.py) runs Ulysses 2, ring 2 and FSDP on
miniature fp32 checkpoints; the tests compare rank 0's videos with the single-process one.
Both token counts are odd, so the 2-way sequence-parallel runs pad by one token:

* t2v-A14B: 48 x 48, 9 frames -> latent 3 x 6 x 6 -> 27 tokens; 2 steps at shift 3
  (timesteps 999, 749) run the high-noise expert, then the low-noise one;
* ti2v-5B: a 5:3 image in 160 * 96 pixels -> 160 x 96, 9 frames -> latent 3 x 6 x 10 -> 45
  tokens, with per-token timesteps (0 on the image's 15 tokens, t on the rest and the pad)
  whose modulation is split with the tokens.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import fp32_config, rel_err
from test_distributed import WORLD, free_port, init_gloo, run_variants

FRAMES, STEPS, SHIFT, SEED = 9, 2, 3.0, 5
T2V_SIZE = (48, 48)
TI2V_AREA, TI2V_IMAGE = 160 * 96, (60, 100)  # image (h, w): 5:3
VARIANTS = {  # name: (ulysses_size, ring_size, fsdp)
    "ulysses": (2, 1, False),
    "ring": (1, 2, False),
    "fsdp": (1, 1, True),
}


def make_image():
    from PIL import Image

    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (*TI2V_IMAGE, 3), dtype=np.uint8))


def run_pipeline(task: str, ckpt: str, rank: int, ulysses: int = 1, ring: int = 1,
                 fsdp: bool = False):
    """(video or None, pipeline) for one configuration."""
    import wan

    kw = dict(device_id="cpu", rank=rank, use_usp=ulysses * ring > 1, dit_fsdp=fsdp,
              t5_fsdp=fsdp)
    sampling = dict(frame_num=FRAMES, sampling_steps=STEPS, shift=SHIFT, seed=SEED,
                    offload_model=False)
    if task == "t2v-A14B":
        pipe = wan.WanT2V(fp32_config("t2v-A14B"), ckpt, **kw)
        return pipe.generate("a red fox in the snow", size=T2V_SIZE, guide_scale=(2.0, 6.0),
                             **sampling), pipe
    pipe = wan.WanTI2V(fp32_config("ti2v-5B"), ckpt, **kw)
    return pipe.generate("a cat surfing", make_image(), max_area=TI2V_AREA, **sampling), pipe


def job(rank: int, port: int, ckpts: dict, out_file: str) -> None:
    init_gloo(rank, port)
    results: dict = {"videos": {}, "seconds": {}, "experts": {}, "seq_len": {}}
    for task, ckpt in ckpts.items():
        for name, pipe in run_variants(run_pipeline, VARIANTS, task, ckpt, rank, results):
            if pipe.is_moe:
                results["experts"][(task, name)] = list(pipe.last_experts)
            if name != "fsdp":
                results["sp_size"] = pipe.sp_size
    if rank == 0:
        torch.save(results, out_file)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from wan.utils.tiny_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("dist22_ckpts")
    ckpts = {"t2v-A14B": str(make_checkpoint(root / "t2v_a14b", "t2v-A14B", seed=41)),
             "ti2v-5B": str(make_checkpoint(root / "ti2v", "ti2v-5B", seed=42))}
    out = tmp_path_factory.mktemp("dist22_out") / "results.pt"
    t0 = time.perf_counter()
    mp.spawn(job, args=(free_port(), ckpts, str(out)), nprocs=WORLD, join=True)
    res = torch.load(out, weights_only=False)
    res["job_seconds"] = time.perf_counter() - t0
    return res


def test_token_counts_are_odd():
    from wan.textimage2video import best_output_size

    w, h = best_output_size(TI2V_IMAGE[1], TI2V_IMAGE[0], 32, 32, TI2V_AREA)
    f = (FRAMES - 1) // 4 + 1
    assert (w, h) == (160, 96)
    assert f * (h // 32) * (w // 32) == 45
    assert f * (T2V_SIZE[0] // 16) * (T2V_SIZE[1] // 16) == 27


@pytest.mark.parametrize("task", ["t2v-A14B", "ti2v-5B"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_make_the_single_process_video(results, task, variant):
    ref = results["videos"][(task, "single")]
    video = results["videos"][(task, variant)]
    assert results["sp_size"] == WORLD
    assert video is not None and video.shape == ref.shape
    if task == "ti2v-5B":
        assert ref.shape == (3, FRAMES, 96, 160)
    else:
        assert results["experts"][(task, variant)] == ["high", "low"]
    err = rel_err(video, ref)
    print(f"{task} {variant}: relative error {err:.2e} "
          f"({results['seconds'][(task, variant)]:.1f} s vs single "
          f"{results['seconds'][(task, 'single')]:.1f} s; whole job {results['job_seconds']:.0f} s)")
    assert err <= 1e-5
