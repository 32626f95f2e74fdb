"""Workload (a): denoising steps of the DiT at the real 1.3B architecture, project vs diffusers.

Both run in this process on identical random weights (written in the official format,
converted for diffusers by its own converter) and identical inputs, alternating runs:

* fp32: a short generation loop (``--steps`` steps, guidance = conditional +
  unconditional) — the project's ``wan.sampling.sample`` against the loop of
  diffusers' ``WanPipeline`` (two transformer calls per step + UniPC on the official grid);
* bf16: one guided step — the project's mixed precision (bf16 matmuls, fp32 norms and
  residual stream, as the official code) against diffusers' transformer in bf16. On
  CPUs without bf16 instructions the project's bf16 matmuls run as fp32 GEMMs on bf16
  operands (``wan.modules.linear``; ``WAN_CPU_HALF_MATMUL=native`` turns that off).

Prints medians, the ratio, the machine's measured matmul throughput and the project's
fraction of it (FLOPs counted from the shapes), and writes ``benchmarks/results/dit_<device>.json``.

    python benchmarks/bench_dit.py                 # 9 frames at 256x256 (768 tokens)
    python benchmarks/bench_dit.py --device cuda --frames 81 --height 480 --width 832
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from common import (alternate, dit_step_flops, matmul_tflops, median, rel_err, save_results,
                    sync, threads_from_env)

from wan.configs import WAN_CONFIGS
from wan.modules.linear import fp32_gemm_for
from wan.modules.model import WanModel
from wan.sampling import Conditioning, autocast_for, sample
from wan.utils.fm_solvers import sampling_sigmas


def write_random_13b(folder: Path, seed: int = 0) -> Path:
    """Random weights of the real 1.3B architecture in the official single-file layout."""
    from safetensors.torch import save_file

    cfg = WAN_CONFIGS["t2v-1.3B"]
    with torch.device("meta"):
        meta = WanModel(dim=cfg.dim, ffn_dim=cfg.ffn_dim, num_heads=cfg.num_heads,
                        num_layers=cfg.num_layers)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in meta.state_dict().items():
        t = torch.randn(p.shape, generator=g) * 0.02
        if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or \
                name.endswith("norm3.weight"):
            t += 1.0
        sd[name] = t
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanModel", "dim": cfg.dim, "eps": 1e-6, "ffn_dim": cfg.ffn_dim,
        "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers, "out_dim": 16, "text_len": 512}))
    return folder


def diffusers_transformer(folder: Path, dtype: torch.dtype, device: torch.device):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    from safetensors.torch import load_file

    cfg = WAN_CONFIGS["t2v-1.3B"]
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.dim // cfg.num_heads, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    model.load_state_dict(convert_wan_transformer_to_diffusers(
        load_file(folder / "diffusion_pytorch_model.safetensors")), strict=True)
    model = model.to(device=device, dtype=dtype)
    if dtype != torch.float32:  # as from_pretrained(torch_dtype=...) does: these stay fp32
        keep = getattr(model, "_keep_in_fp32_modules", None) or []
        for name, module in model.named_modules():
            if any(k in name.split(".") for k in keep):
                module.float()
    return model.eval().requires_grad_(False)


def diffusers_scheduler(steps: int, shift: float):
    from diffusers import UniPCMultistepScheduler

    s = UniPCMultistepScheduler(num_train_timesteps=1000, solver_order=2,
                                prediction_type="flow_prediction", predict_x0=True,
                                solver_type="bh2", lower_order_final=True,
                                final_sigmas_type="zero", use_flow_sigmas=True, flow_shift=1.0)
    s.set_timesteps(sigmas=sampling_sigmas("unipc", steps, shift).numpy())
    return s


def padded(ctx: torch.Tensor) -> torch.Tensor:
    return torch.cat([ctx, ctx.new_zeros(512 - ctx.size(0), ctx.size(1))])[None]


def diffusers_loop(model, noise, ctx_c, ctx_u, steps, shift, guide):
    """The denoising loop of diffusers' WanPipeline (two calls per step)."""
    s = diffusers_scheduler(steps, shift)
    latents = noise[None]
    enc_c, enc_u = padded(ctx_c), padded(ctx_u)
    for t in s.timesteps:
        ts = t.expand(1).to(latents.device)
        c = model(latents, timestep=ts, encoder_hidden_states=enc_c, return_dict=False)[0]
        u = model(latents, timestep=ts, encoder_hidden_states=enc_u, return_dict=False)[0]
        latents = s.step(u + guide * (c - u), t, latents, return_dict=False)[0]
    return latents[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="steps of the fp32 generation loop")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each side first")
    p.add_argument("--skip_bf16", action="store_true")
    p.add_argument("--skip_fp32", action="store_true")
    args = p.parse_args()
    threads_from_env()
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = (16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    tokens = shape[1] * shape[2] * shape[3] // 4
    cfg = WAN_CONFIGS["t2v-1.3B"]
    results: dict = {"workload": f"1.3B DiT, {args.frames} frames {args.width}x{args.height} "
                                 f"({tokens} tokens), guidance (batch of 2)", "tokens": tokens}
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(shape, generator=g).to(device)
    ctx_c = torch.randn(23, 4096, generator=g).to(device)
    ctx_u = torch.randn(41, 4096, generator=g).to(device)
    guide, shift = 5.0, 5.0
    flops = dit_step_flops(cfg.dim, cfg.ffn_dim, cfg.num_layers, tokens)
    flops_cached = dit_step_flops(cfg.dim, cfg.ffn_dim, cfg.num_layers, tokens,
                                  cached_context=True)

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        folder = write_random_13b(Path(tmp) / "dit")
        if not args.skip_fp32:
            ours = WanModel.from_pretrained(folder, device=device)
            ref = diffusers_transformer(folder, torch.float32, device)
            out = {}

            def run_ours():
                out["ours"] = sample(ours, noise, Conditioning(ctx_c), Conditioning(ctx_u),
                                     tokens, steps=args.steps, shift=shift, guide_scale=guide,
                                     progress=False)

            def run_ref():
                out["diffusers"] = diffusers_loop(ref, noise, ctx_c, ctx_u, args.steps, shift,
                                                  guide)

            tflops = matmul_tflops(torch.float32, device)
            times = alternate({"ours": run_ours, "diffusers": run_ref}, args.repeats, device,
                              warmup=args.warmup)
            t_ours, t_ref = median(times["ours"]), median(times["diffusers"])
            total_flops = flops + (args.steps - 1) * flops_cached
            results["fp32"] = {
                "steps": args.steps, "ours_s": t_ours, "diffusers_s": t_ref,
                "ratio": t_ours / t_ref, "rel_err": rel_err(out["ours"], out["diffusers"]),
                "matmul_tflops": tflops,
                "ours_fraction_of_matmul": total_flops / t_ours / 1e12 / tflops,
                "diffusers_fraction_of_matmul": args.steps * flops / t_ref / 1e12 / tflops,
                "all_times": times}
            print(f"fp32 {args.steps}-step loop: ours {t_ours:.2f} s, diffusers {t_ref:.2f} s, "
                  f"ratio {t_ours / t_ref:.3f}, rel err {results['fp32']['rel_err']:.2e}; "
                  f"matmul {tflops * 1e3:.0f} GFLOP/s, ours at "
                  f"{results['fp32']['ours_fraction_of_matmul']:.0%}, diffusers at "
                  f"{results['fp32']['diffusers_fraction_of_matmul']:.0%}")
            fp32_step = out["ours"]
            del ours, ref
        if not args.skip_bf16:
            ours = WanModel.from_pretrained(folder, device=device, matmul_dtype=torch.bfloat16)
            ref = diffusers_transformer(folder, torch.bfloat16, device)
            out = {}

            def step_ours():
                out["ours"] = sample(ours, noise, Conditioning(ctx_c), Conditioning(ctx_u),
                                     tokens, steps=1, shift=shift, guide_scale=guide,
                                     param_dtype=torch.bfloat16, progress=False)

            def step_ref():
                out["diffusers"] = diffusers_loop(ref, noise.bfloat16(), ctx_c.bfloat16(),
                                                  ctx_u.bfloat16(), 1, shift, guide).float()

            tflops = matmul_tflops(torch.bfloat16, device)
            tflops32 = matmul_tflops(torch.float32, device)
            route = ("fp32 GEMMs on bf16 operands" if fp32_gemm_for(torch.bfloat16, device)
                     else "native bf16 GEMMs")
            times = alternate({"ours": step_ours, "diffusers": step_ref}, args.repeats, device,
                              warmup=args.warmup)
            t_ours, t_ref = median(times["ours"]), median(times["diffusers"])
            fp32_ref = sample(WanModel.from_pretrained(folder, device=device), noise,
                              Conditioning(ctx_c), Conditioning(ctx_u), tokens, steps=1,
                              shift=shift, guide_scale=guide, progress=False)
            results["bf16"] = {
                "ours_s": t_ours, "diffusers_s": t_ref, "ratio": t_ours / t_ref,
                "rel_err_vs_fp32": rel_err(out["ours"], fp32_ref),
                "diffusers_rel_err_vs_fp32": rel_err(out["diffusers"], fp32_ref),
                "matmul_tflops": tflops,
                "ours_fraction_of_matmul": flops / t_ours / 1e12 / tflops,
                "diffusers_fraction_of_matmul": flops / t_ref / 1e12 / tflops,
                "ours_matmul_route": route, "fp32_matmul_tflops": tflops32,
                "ours_fraction_of_fp32_matmul": flops / t_ours / 1e12 / tflops32,
                "all_times": times}
            print(f"bf16 matmuls of the project: {route}; fp32 matmul {tflops32 * 1e3:.0f} GFLOP/s, "
                  f"ours at {results['bf16']['ours_fraction_of_fp32_matmul']:.0%} of it")
            print(f"bf16 step: ours {t_ours:.2f} s, diffusers {t_ref:.2f} s, ratio "
                  f"{t_ours / t_ref:.3f}; vs fp32: ours {results['bf16']['rel_err_vs_fp32']:.2e}, "
                  f"diffusers {results['bf16']['diffusers_rel_err_vs_fp32']:.2e}; matmul "
                  f"{tflops * 1e3:.0f} GFLOP/s, ours at "
                  f"{results['bf16']['ours_fraction_of_matmul']:.0%}, diffusers at "
                  f"{results['bf16']['diffusers_fraction_of_matmul']:.0%}")
    print("wrote", save_results(f"dit_{device.type}", results))


if __name__ == "__main__":
    main()
