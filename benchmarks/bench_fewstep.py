"""Few-step distilled sampling and LoRA merging at the real 1.3B architecture (CPU or GPU).

* Steps: 3 unguided steps (guide 1, one DiT call each, the distilled schedule) against 3
  guided steps (the batched conditional + unconditional call of the default loop), fp32, at
  768 tokens (9 frames at 256x256); per-step times and the whole-run ratio extrapolated to
  4 unguided vs 50 guided steps (DiT time only; the unguided run also skips encoding the
  negative prompt).
* LoRA: load + merge of a rank-64 LoRA over every Linear of all 30 blocks, against the DiT's
  own load time, and the peak memory it adds beyond the loaded model (RSS growth).

    python benchmarks/bench_fewstep.py            # writes benchmarks/results/fewstep_<device>.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import alternate, median, save_results, threads_from_env
from bench_dit import write_random_13b
from wan.modules.model import WanModel
from wan.sampling import Conditioning, sample
from wan.utils.fm_solvers import StepDistillSampler, distill_sigmas


def rss_bytes() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def write_lora(model: WanModel, path: Path, rank: int = 64) -> int:
    """A random rank-``rank`` LoRA (Wan/ComfyUI layout) over every block Linear."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, mod in model.named_modules():
        if name.startswith("blocks.") and isinstance(mod, torch.nn.Linear):
            out_f, in_f = mod.weight.shape
            sd[f"diffusion_model.{name}.lora_down.weight"] = 0.01 * torch.randn(
                rank, in_f, generator=g)
            sd[f"diffusion_model.{name}.lora_up.weight"] = 0.01 * torch.randn(
                out_f, rank, generator=g)
            sd[f"diffusion_model.{name}.alpha"] = torch.tensor(float(rank))
    save_file(sd, path)
    return len(sd) // 3


def largest_delta_bytes(model: WanModel) -> int:
    return max(m.weight.numel() * 4 for n, m in model.named_modules()
               if n.startswith("blocks.") and isinstance(m, torch.nn.Linear))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    threads_from_env()
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="wan-bench-fewstep-"))
    folder = write_random_13b(tmp / "dit")

    t0 = time.perf_counter()
    model = WanModel.from_pretrained(folder, device=device)
    load_s = time.perf_counter() - t0
    lat = ((args.frames - 1) // 4 + 1, args.size // 8, args.size // 8)
    tokens = lat[0] * lat[1] * lat[2] // 4
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(16, *lat, generator=g).to(device)
    cond = Conditioning(torch.randn(40, 4096, generator=g).to(device))
    uncond = Conditioning(torch.randn(20, 4096, generator=g).to(device))

    def guided():
        return sample(model, noise, cond, uncond, tokens, steps=3, shift=5.0, guide_scale=5.0,
                      progress=False)

    def unguided():
        sampler = StepDistillSampler(distill_sigmas([1000, 750, 500], 5.0), device=device)
        return sample(model, noise, cond, uncond, tokens, steps=3, guide_scale=1.0,
                      progress=False, sampler=sampler)

    times = alternate({"guided_3": guided, "unguided_3": unguided}, args.repeats, device)
    g_step, u_step = median(times["guided_3"]) / 3, median(times["unguided_3"]) / 3
    result = {
        "tokens": tokens, "device": str(device),
        "guided_step_s": g_step, "unguided_step_s": u_step,
        "unguided_over_guided_per_step": u_step / g_step,
        "extrapolated_4_unguided_over_50_guided": 4 * u_step / (50 * g_step),
        "all_times": times,
    }
    print(f"{tokens} tokens: guided step {g_step:.2f} s, unguided step {u_step:.2f} s "
          f"({u_step / g_step:.3f}x); 4 unguided vs 50 guided steps: "
          f"{4 * u_step / (50 * g_step):.4f} of the DiT time")

    lora = tmp / "lora64.safetensors"
    n = write_lora(model, lora)
    from wan.utils.lora import apply_lora, unload_loras

    before = rss_bytes()
    t0 = time.perf_counter()
    changed = apply_lora(model, lora, 1.0)
    merge_s = time.perf_counter() - t0
    grown = rss_bytes() - before
    delta = largest_delta_bytes(model)
    unload_loras(model)
    result.update(lora_modules=n, lora_weights_changed=changed, dit_load_s=load_s,
                  lora_load_merge_s=merge_s, lora_over_load=merge_s / load_s,
                  lora_rss_growth_bytes=grown, largest_layer_delta_bytes=delta)
    print(f"rank-64 LoRA over {n} Linears: load+merge {merge_s:.2f} s vs DiT load "
          f"{load_s:.2f} s ({merge_s / load_s:.2f}x); RSS growth {grown / 2**20:.0f} MiB "
          f"(largest layer delta {delta / 2**20:.0f} MiB; the kept base copies for unloading "
          f"are counted in the growth)")
    print(f"results: {save_results(f'fewstep_{device.type}', result)}")


if __name__ == "__main__":
    main()
