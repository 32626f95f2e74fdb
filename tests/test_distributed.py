"""Multi-process generation on the CPU (gloo, 2 processes): FSDP, Ulysses and ring.

One spawned 2-process job runs every configuration on miniature checkpoints and
rank 0 saves the videos; the tests compare them with the single-process video.
The token count (3 x 3 x 3 = 27) is odd, so the 2-way sequence-parallel runs pad.
Error handling runs through ``torchrun generate.py`` with short timeouts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import fp32_config, rel_err

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
SIZE, FRAMES, STEPS, SEED = (48, 48), 9, 2, 7  # latent 3 x 6 x 6 -> 27 tokens
MAX_AREA = 48 * 48
VARIANTS = {  # name: (ulysses_size, ring_size, fsdp)
    "ulysses": (2, 1, False),
    "ring": (1, 2, False),
    "fsdp": (1, 1, True),
    "ulysses+fsdp": (2, 1, True),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def make_image():
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


def run_pipeline(task: str, ckpt: str, rank: int, ulysses: int = 1, ring: int = 1,
                 fsdp: bool = False):
    """(video or None, pipeline) for one configuration."""
    import wan

    kw = dict(device_id="cpu", rank=rank, use_usp=ulysses * ring > 1, dit_fsdp=fsdp,
              t5_fsdp=fsdp)
    sampling = dict(frame_num=FRAMES, sampling_steps=STEPS, seed=SEED, offload_model=False)
    if task == "t2v":
        pipe = wan.WanT2V(fp32_config("t2v-1.3B"), ckpt, **kw)
        return pipe.generate("a red fox in the snow", size=SIZE, **sampling), pipe
    pipe = wan.WanI2V(fp32_config("i2v-14B"), ckpt, **kw)
    return pipe.generate("a cat surfing", make_image(), max_area=MAX_AREA, **sampling), pipe


def init_gloo(rank: int, port: int, timeout_s: float = 120.0) -> None:
    from datetime import timedelta

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=timeout_s))


# ------------------------------------------------------------------ the 2-process job
def attention_checks(rank: int) -> dict:
    """Sequence-parallel attention vs the single-process entry point on random tensors."""
    from wan.distributed.ring_attention import attention_with_lse
    from wan.distributed.sequence_parallel import init_sequence_parallel
    from wan.modules.attention import attention

    g = torch.Generator().manual_seed(0)
    b, length, heads, d = 2, 8, 4, 16
    q, k, v = (torch.randn(b, length, heads, d, generator=g) for _ in range(3))
    out = {}
    # Lengths 3 and 8: for sample 0 rank 1's half holds no valid key at all.
    for lens in ([3, 8], [8, 8], [5, 7]):
        k_lens = torch.tensor(lens)
        ref = attention(q, k, v, k_lens=k_lens)
        for name, (u, r) in {"ulysses": (2, 1), "ring": (1, 2)}.items():
            sp = init_sequence_parallel(u, r)
            local = sp.attention(sp.scatter(q), sp.scatter(k), sp.scatter(v), k_lens=k_lens)
            full = sp.gather(local)
            out[f"{name}{lens}"] = rel_err(full, ref)
    ref = attention(q, k, v, k_lens=torch.tensor([5, 7]))
    math_out, _ = attention_with_lse(q, k, v, torch.tensor([5, 7]), force_math=True)
    out["math_kernel"] = rel_err(math_out, ref)
    return out


def run_variants(run, variants: dict, task: str, ckpt: str, rank: int, results: dict):
    """Run ``task`` once as one process (every rank: the reference), then each parallel
    variant; record videos and times in ``results`` and yield ``(variant, pipeline)``."""
    from wan.distributed.sequence_parallel import init_sequence_parallel

    t0 = time.perf_counter()
    video, _ = run(task, ckpt, rank=0)
    results["seconds"][(task, "single")] = time.perf_counter() - t0
    results["videos"][(task, "single")] = video
    for name, (u, r, fsdp) in variants.items():
        if u * r > 1:
            init_sequence_parallel(u, r)
        t0 = time.perf_counter()
        video, pipe = run(task, ckpt, rank, u, r, fsdp)
        results["seconds"][(task, name)] = time.perf_counter() - t0
        results["videos"][(task, name)] = video
        yield name, pipe


def job(rank: int, port: int, ckpts: dict, out_file: str) -> None:
    init_gloo(rank, port)
    from wan.distributed.fsdp import resident_parameter_numel
    from wan.distributed.sequence_parallel import SequenceParallel, init_sequence_parallel

    results: dict = {"attention": attention_checks(rank), "videos": {}, "seconds": {},
                     "fraction": {}}
    for task, ckpt in ckpts.items():
        for name, pipe in run_variants(run_pipeline, VARIANTS, task, ckpt, rank, results):
            if name == "ulysses":
                results["sp_size"] = pipe.sp_size
            if name == "fsdp":
                fractions = []
                for module in (pipe.model, pipe.text_encoder.model):
                    total = sum(p.numel() for p in module.parameters())
                    fractions.append(resident_parameter_numel(module) / total)
                gathered = [None] * WORLD
                dist.all_gather_object(gathered, fractions)
                results["fraction"][task] = gathered
        # Teeth: attending the padding (as the official multi-GPU code does) changes the video.
        init_sequence_parallel(2, 1)
        real = SequenceParallel.attention
        SequenceParallel.attention = lambda self, q, k, v, k_lens=None, **kw: \
            real(self, q, k, v, None, **kw)
        try:
            results["videos"][(task, "unmasked")] = run_pipeline(task, ckpt, rank, 2, 1)[0]
        finally:
            SequenceParallel.attention = real
    if rank == 0:
        torch.save(results, out_file)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from wan.utils.tiny_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("dist_ckpts")
    return {"t2v": str(make_checkpoint(root / "t2v", "t2v-1.3B", seed=21)),
            "i2v": str(make_checkpoint(root / "i2v", "i2v-14B", seed=22))}


@pytest.fixture(scope="module")
def results(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_out") / "results.pt"
    t0 = time.perf_counter()
    mp.spawn(job, args=(free_port(), ckpts, str(out)), nprocs=WORLD, join=True)
    res = torch.load(out, weights_only=False)
    res["job_seconds"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------ equality
def test_sequence_parallel_attention_is_exact(results):
    for name, err in results["attention"].items():
        print(f"attention {name}: relative error {err:.2e}")
        assert err <= 1e-6, name


@pytest.mark.parametrize("task", ["t2v", "i2v"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_make_the_single_process_video(results, task, variant):
    ref = results["videos"][(task, "single")]
    video = results["videos"][(task, variant)]
    assert video is not None and video.shape == ref.shape
    err = rel_err(video, ref)
    print(f"{task} {variant}: relative error {err:.2e} "
          f"({results['seconds'][(task, variant)]:.1f} s vs single "
          f"{results['seconds'][(task, 'single')]:.1f} s; whole job {results['job_seconds']:.0f} s)")
    assert err <= 1e-5


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_padding_is_masked(results, task):
    """27 tokens pad to 28; attending the pad token (unmasked) would change the video."""
    assert results["sp_size"] == WORLD
    assert (FRAMES - 1) // 4 + 1 == 3 and SIZE[0] // 16 * (SIZE[1] // 16) * 3 % WORLD == 1
    err = rel_err(results["videos"][(task, "unmasked")], results["videos"][(task, "single")])
    print(f"{task}: attending the padding would give a relative error of {err:.2e}")
    assert err > 1e-4


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_fsdp_keeps_about_one_shard_per_rank(results, task):
    for rank, (dit, t5) in enumerate(results["fraction"][task]):
        print(f"{task} rank {rank}: {dit:.3f} of the DiT parameters, {t5:.3f} of the T5 ones")
        assert abs(dit - 1 / WORLD) < 0.03 and abs(t5 - 1 / WORLD) < 0.03


# ------------------------------------------------------------------ errors (no processes)
def test_sizes_are_checked():
    from wan.distributed.sequence_parallel import (SequenceParallel, check_parallel_sizes,
                                                   enable_sequence_parallel)
    from wan.modules.model import WanModel

    with pytest.raises(ValueError, match=r"\(2 x 2\) must equal the number of processes \(2\)"):
        check_parallel_sizes(2, 2, 2)
    with torch.device("meta"):
        model = WanModel(dim=96, ffn_dim=64, num_heads=3, num_layers=1, text_dim=32)
    with pytest.raises(ValueError, match="3 attention heads, which ulysses_size 2"):
        enable_sequence_parallel(model, SequenceParallel(2, 1, 0, None, None))
    with pytest.raises(RuntimeError, match="init_sequence_parallel"):
        enable_sequence_parallel(model)


def test_imports_touch_neither_cuda_nor_optional_packages():
    code = ("import sys, torch, generate, wan.distributed.fsdp, wan.distributed.util, "
            "wan.distributed.sequence_parallel, wan.distributed.ring_attention, "
            "wan.distributed.xfuser_backend; "
            "assert not torch.cuda.is_initialized(); "
            "assert not {'xfuser', 'yunchang', 'diffusers'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_xfuser_is_opt_in_and_cuda_only(monkeypatch):
    from wan.distributed.sequence_parallel import _backend_from_env
    from wan.distributed.xfuser_backend import init_xfuser

    assert _backend_from_env() == "native"
    monkeypatch.setenv("WAN_SP_ATTENTION", "flash")
    with pytest.raises(ValueError, match="'native' or 'xfuser'"):
        _backend_from_env()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            init_xfuser(2, 1)


def cli(ckpt, *extra, task="t2v-1.3B"):
    return ["--task", task, "--size", "832*480", "--ckpt_dir", str(ckpt), "--frame_num", "5",
            "--sample_steps", "2", "--prompt", "a lighthouse", *map(str, extra)]


@pytest.mark.parametrize("world,extra,message", [
    (2, ["--ulysses_size", "2", "--ring_size", "2"],
     "--ulysses_size x --ring_size (2 x 2) must equal the number of processes (2)"),
    (8, ["--ulysses_size", "8"], "12 attention heads, which --ulysses_size 8 does not divide"),
    (1, ["--ring_size", "2"], "need several processes"),
    (1, ["--t5_fsdp"], "need several processes"),
])
def test_cli_rejects_bad_parallel_settings(ckpts, monkeypatch, capsys, world, extra, message):
    import generate

    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "0")
    assert generate.main(cli(ckpts["t2v"], *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not dist.is_initialized()


# ------------------------------------------------------------------ errors (2 processes)
LAUNCHER = """
import os, sys
sys.path.insert(0, {root!r})
import generate
rank = int(os.environ["RANK"])
sys.exit(generate.main({argv!r}[rank]))
"""


def torchrun(tmp_path, argv_per_rank, timeout=120, env=None):
    """Run generate.main under ``torchrun --nproc_per_node=2``, each rank with its own argv."""
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER.format(root=str(ROOT), argv=argv_per_rank))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_port", str(free_port()), str(script)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WAN_DIST_TIMEOUT": "60", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env=full_env)
    return proc, time.perf_counter() - t0


def test_different_settings_on_the_ranks_stop_every_rank(ckpts, tmp_path):
    argv = [cli(ckpts["t2v"]), cli(ckpts["t2v"], "--sample_steps", "3")]
    proc, seconds = torchrun(tmp_path, argv)
    print(f"mismatch detected in {seconds:.1f} s")
    assert proc.returncode != 0
    for rank in range(WORLD):
        assert (f"error: rank {rank}: the processes were started with different settings "
                f"(sample_steps=2 on rank 0 but 3 on rank 1)") in proc.stderr, proc.stderr
    assert not list(tmp_path.glob("*.mp4"))


def test_a_failing_rank_stops_the_others(ckpts, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    argv = [cli(ckpts["t2v"]), cli(broken)]
    proc, seconds = torchrun(tmp_path, argv)
    print(f"failure propagated in {seconds:.1f} s:\n{proc.stderr[-600:]}")
    assert proc.returncode != 0 and seconds < 60
    assert "error: rank 1:" in proc.stderr
    assert "(rank 0 stops too)" in proc.stderr
    assert not list(tmp_path.glob("*.mp4"))


def mismatch_job(rank: int, port: int, ckpt: str, out_dir: str) -> None:
    """The ranks run different videos (bypassing the CLI check): collectives must not hang."""
    from wan.distributed.sequence_parallel import init_sequence_parallel

    init_gloo(rank, port, timeout_s=10)
    init_sequence_parallel(2, 1)
    global FRAMES
    FRAMES = 9 if rank == 0 else 13
    try:
        run_pipeline("t2v", ckpt, rank, ulysses=2)
        outcome = "finished"
    except Exception as e:  # noqa: BLE001 - the point of the test
        outcome = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)
    os._exit(3)  # the group is broken: leave without a collective shutdown


def test_mismatched_ranks_exit_instead_of_hanging(ckpts, tmp_path):
    """Each rank ends on its own (error, or gloo aborting the process) well within the timeout."""
    t0 = time.perf_counter()
    ctx = mp.start_processes(mismatch_job, args=(free_port(), ckpts["t2v"], str(tmp_path)),
                             nprocs=WORLD, join=False, start_method="spawn")
    for process in ctx.processes:
        process.join(timeout=max(1.0, 90 - (time.perf_counter() - t0)))
    alive = [p.pid for p in ctx.processes if p.is_alive()]
    for process in ctx.processes:
        if process.is_alive():
            process.kill()
    seconds = time.perf_counter() - t0
    outcomes = [(p.exitcode, Path(tmp_path, f"rank{r}.txt").read_text()
                 if Path(tmp_path, f"rank{r}.txt").exists() else "aborted")
                for r, p in enumerate(ctx.processes)]
    print(f"mismatched ranks ended in {seconds:.1f} s: {outcomes}")
    assert not alive, f"ranks still waiting after {seconds:.0f} s: {outcomes}"
    assert all(code != 0 and text != "finished" for code, text in outcomes)


def test_torchrun_cli_matches_single_process(ckpts, tmp_path):
    """generate.py under torchrun: seed chosen on rank 0, one output written by rank 0."""
    import json

    import imageio

    import generate

    args = cli(ckpts["t2v"], "--ulysses_size", "2", "--base_seed", "-1", "--frame_num", "1",
               "--save_file", tmp_path / "multi.mp4")
    proc, seconds = torchrun(tmp_path, [args, args])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["multi.mp4"]
    seed = json.loads((tmp_path / "multi.json").read_text())["base_seed"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun ranks: bf16 CPU kernels depend on the split
    try:
        assert generate.main(cli(ckpts["t2v"], "--base_seed", seed, "--frame_num", "1",
                                 "--save_file", tmp_path / "single.mp4")) == 0
    finally:
        torch.set_num_threads(threads)

    def frames(path):
        with imageio.get_reader(path, "ffmpeg") as r:
            return np.stack([f for f in r]).astype(np.int16)

    diff = np.abs(frames(tmp_path / "multi.mp4") - frames(tmp_path / "single.mp4")).max()
    print(f"torchrun --ulysses_size 2 in {seconds:.1f} s; max pixel difference {diff}")
    assert diff == 0


def silent_peer_job(rank: int, port: int, out_dir: str) -> None:
    """Rank 1 never joins the collective: rank 0 must get an error after WAN_DIST_TIMEOUT."""
    from argparse import Namespace

    from wan.distributed.util import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WAN_DIST_TIMEOUT="3")
    init_distributed(Namespace(ulysses_size=1, ring_size=1), rank, WORLD, torch.device("cpu"))
    if rank == 1:
        time.sleep(6)
        os._exit(0)
    t0 = time.perf_counter()
    try:
        dist.all_reduce(torch.ones(4))
        outcome = "finished"
    except Exception as e:  # noqa: BLE001 - the point of the test
        outcome = f"{type(e).__name__} after {time.perf_counter() - t0:.1f} s"
    Path(out_dir, "rank0.txt").write_text(outcome)
    os._exit(0)


def test_collectives_time_out(tmp_path):
    mp.spawn(silent_peer_job, args=(free_port(), str(tmp_path)), nprocs=WORLD)
    outcome = Path(tmp_path, "rank0.txt").read_text()
    print(f"rank 0 waiting for a silent peer: {outcome}")
    assert outcome != "finished"
    assert float(outcome.split(" after ")[1].split()[0]) < 8
