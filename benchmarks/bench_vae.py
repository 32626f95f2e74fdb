"""Workload (b): the real-size Wan-VAE decoding 5 latent frames of 32x32 (17 frames at 256x256).

The project's ``VideoVAE`` and diffusers' ``AutoencoderKLWan`` hold identical random weights
(``init_random_weights`` with a fixed seed, converted for diffusers by its own
``convert_wan_vae_to_diffusers``) and decode identical latents in fp32:

* time: both in this process, alternating runs; medians and their ratio;
* peak memory: one decode of each in a fresh subprocess (weights built before the
  baseline), as peak RSS growth on the CPU or ``max_memory_allocated`` growth on CUDA;
* the output's relative error ``||ours - diffusers|| / ||diffusers||`` (both clamped);
* context: the machine's measured fp32 matmul and 3x3x3-convolution throughput, the
  decode's FLOPs (counted by ``torch.utils.flop_counter`` on the meta device) and the
  fraction of the matmul throughput each side reaches.

Results go to ``benchmarks/results/vae_<device>.json`` (read by ``benchmarks/chart.py``).

    python benchmarks/bench_vae.py [--repeats 3] [--device cpu|cuda] [--bf16]

On a 2-core CPU one decode takes about a minute; the default run takes ~15 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from common import ROOT, alternate, matmul_tflops, median, rel_err, save_results, sync, \
    threads_from_env

from wan.modules.vae import VideoVAE, init_random_weights

BASE_DIM = 96
SEED = 0

# One decode in a fresh interpreter: peak memory growth from the baseline after the weights.
MEMORY_SNIPPET = r"""
import json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r}); sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads({threads})
from bench_vae import build, decoder_fn, latents
from memory_probe import PeakRSS
device = torch.device({device!r})
fn = decoder_fn({which!r}, build({which!r}, device), latents({shape!r}, device))
if device.type == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(); torch.cuda.synchronize()
    growth = torch.cuda.max_memory_allocated() - base
else:
    with PeakRSS() as m:
        fn()
    growth = m.growth
print(json.dumps({{"peak_growth_bytes": growth}}))
"""


def ours_model(device: torch.device) -> VideoVAE:
    model = VideoVAE(dim=BASE_DIM).eval().requires_grad_(False)
    init_random_weights(model, seed=SEED)
    return model.to(device)


def diffusers_model(ours: VideoVAE, device: torch.device):
    """diffusers' AutoencoderKLWan holding the weights of ``ours`` (official names, converted)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    model = AutoencoderKLWan(base_dim=BASE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4],
                             num_res_blocks=2, attn_scales=[],
                             temperal_downsample=[False, True, True])
    sd = {k: v.cpu() for k, v in ours.state_dict().items()}
    model.load_state_dict(convert_wan_vae_to_diffusers(sd), strict=True)
    return model.to(device).eval().requires_grad_(False)


def build(which: str, device: torch.device):
    ours = ours_model(device)
    return ours if which == "ours" else diffusers_model(ours, device)


def latents(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(shape, generator=g).to(device)


def decoder_fn(which: str, model, z: torch.Tensor, dtype: torch.dtype = torch.float32):
    """A no-argument function decoding ``z`` to a clamped video ``[B, 3, T, H, W]``."""
    autocast = torch.autocast(z.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def run() -> torch.Tensor:
        with torch.no_grad(), autocast:
            if which == "ours":
                return model.decode(z).float().clamp_(-1, 1)
            return model.decode(z).sample.float()
    return run


def peak_memory(which: str, shape: tuple[int, ...], device: torch.device) -> int | None:
    """Peak memory growth of one decode by ``which``, measured in a fresh subprocess."""
    code = MEMORY_SNIPPET.format(root=str(ROOT), bench=str(ROOT / "benchmarks"),
                                 tests=str(ROOT / "tests"), threads=torch.get_num_threads(),
                                 device=str(device), which=which, shape=shape)
    # A fixed mmap threshold makes glibc return every freed tensor to the OS, so that the
    # RSS follows the live tensors instead of the allocator's free lists.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode:
        print(f"memory run of {which} failed:\n{proc.stderr[-2000:]}")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_growth_bytes"]


def decode_flops(which: str, shape: tuple[int, ...]) -> float:
    """FLOPs of one decode, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(which, torch.device("meta")) if which == "ours" else None
        if which != "ours":
            from diffusers import AutoencoderKLWan
            model = AutoencoderKLWan(base_dim=BASE_DIM, z_dim=16, dim_mult=[1, 2, 4, 4],
                                     num_res_blocks=2, attn_scales=[],
                                     temperal_downsample=[False, True, True])
        z = torch.empty(shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.decode(z)
    return float(counter.get_total_flops())


def conv_tflops(device: torch.device, repeats: int = 3) -> float:
    """Measured throughput (TFLOP/s) of the decode's dominant convolution: 96 -> 96 channels,
    3x3x3, 4 frames of 256x256 (channels-last, as the project runs it)."""
    x = torch.randn(1, 96, 6, 256, 256, device=device).contiguous(
        memory_format=torch.channels_last_3d)
    w = torch.randn(96, 96, 3, 3, 3, device=device)
    F.conv3d(x, w, padding=(0, 1, 1))
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        F.conv3d(x, w, padding=(0, 1, 1))
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * 96 * 96 * 27 * 4 * 256 * 256 / best / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (alternating)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--latent_frames", type=int, default=5)
    p.add_argument("--latent_size", type=int, default=32, help="latent height and width")
    p.add_argument("--bf16", action="store_true",
                   help="also time the project's opt-in bf16 decode and state its error")
    p.add_argument("--skip_memory", action="store_true")
    args = p.parse_args()
    threads_from_env()
    device = torch.device(args.device)
    shape = (1, 16, args.latent_frames, args.latent_size, args.latent_size)
    frames, pixels = 1 + 4 * (args.latent_frames - 1), 8 * args.latent_size
    workload = (f"real-size Wan-VAE (base {BASE_DIM}) decoding {args.latent_frames} latent frames "
                f"of {args.latent_size}x{args.latent_size} ({frames} frames at {pixels}x{pixels}), "
                f"fp32")
    print(workload)

    ours = ours_model(device)
    ref = diffusers_model(ours, device)
    z = latents(shape, device)
    fns = {"ours": decoder_fn("ours", ours, z), "diffusers": decoder_fn("diffusers", ref, z)}
    out = {name: fn() for name, fn in fns.items()}
    err = rel_err(out["ours"], out["diffusers"])
    print(f"output relative error {err:.2e}")

    tflops = matmul_tflops(torch.float32, device)
    ctflops = conv_tflops(device)
    flops = {name: decode_flops(name, shape) for name in fns}
    times = alternate(fns, args.repeats, device, warmup=max(args.warmup - 1, 0))
    t_ours, t_ref = median(times["ours"]), median(times["diffusers"])
    results: dict = {
        "workload": workload, "latent_shape": list(shape), "repeats": args.repeats,
        "ours_s": t_ours, "diffusers_s": t_ref, "time_ratio": t_ours / t_ref,
        "all_times": times, "rel_err": err,
        "matmul_tflops": tflops, "conv3d_tflops": ctflops,
        "ours_flops": flops["ours"], "diffusers_flops": flops["diffusers"],
        "ours_fraction_of_matmul": flops["ours"] / t_ours / 1e12 / tflops,
        "diffusers_fraction_of_matmul": flops["diffusers"] / t_ref / 1e12 / tflops,
        "ours_fraction_of_conv": flops["ours"] / t_ours / 1e12 / ctflops,
        "diffusers_fraction_of_conv": flops["diffusers"] / t_ref / 1e12 / ctflops,
    }
    print(f"decode: ours {t_ours:.2f} s, diffusers {t_ref:.2f} s (medians of {args.repeats}), "
          f"ratio {t_ours / t_ref:.3f}")
    print(f"machine: fp32 matmul {tflops * 1e3:.0f} GFLOP/s, 3x3x3 conv {ctflops * 1e3:.0f} "
          f"GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"work: ours {flops['ours'] / 1e12:.2f} TFLOP at "
          f"{results['ours_fraction_of_matmul']:.0%} of matmul / "
          f"{results['ours_fraction_of_conv']:.0%} of conv throughput, diffusers "
          f"{flops['diffusers'] / 1e12:.2f} TFLOP at {results['diffusers_fraction_of_matmul']:.0%}"
          f" / {results['diffusers_fraction_of_conv']:.0%}")

    if args.bf16:
        fn16 = decoder_fn("ours", ours, z, torch.bfloat16)
        t16 = alternate({"bf16": fn16}, args.repeats, device, warmup=1)["bf16"]
        results["ours_bf16_s"] = median(t16)
        results["ours_bf16_rel_err_vs_fp32"] = rel_err(fn16(), out["diffusers"])
        print(f"opt-in bf16 decode: {median(t16):.2f} s, relative error vs fp32 "
              f"{results['ours_bf16_rel_err_vs_fp32']:.2e}")
    del ours, ref, out

    if not args.skip_memory:
        peaks = {name: peak_memory(name, shape, device) for name in fns}
        results["ours_peak_growth_bytes"] = peaks["ours"]
        results["diffusers_peak_growth_bytes"] = peaks["diffusers"]
        if peaks["ours"] and peaks["diffusers"]:
            results["memory_ratio"] = peaks["ours"] / peaks["diffusers"]
            print(f"peak memory growth of one decode: ours {peaks['ours'] / 2**20:.0f} MiB, "
                  f"diffusers {peaks['diffusers'] / 2**20:.0f} MiB, "
                  f"ratio {results['memory_ratio']:.3f}")
    print("wrote", save_results(f"vae_{device.type}", results))


if __name__ == "__main__":
    main()
