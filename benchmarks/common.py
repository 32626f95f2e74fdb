"""Shared helpers of the benchmarks: timing, matmul throughput, FLOP counts, results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
              warmup: int = 1) -> dict[str, list[float]]:
    """Run each function ``repeats`` times, alternating between them; seconds per run."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def matmul_tflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5
                  ) -> float:
    """Measured dense matmul throughput of this machine (TFLOP/s) for ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def dit_step_flops(dim: int, ffn_dim: int, layers: int, tokens: int, text_len: int = 512,
                   text_dim: int = 4096, batch: int = 2, cached_context: bool = False) -> float:
    """Matmul FLOPs of one DiT forward for ``batch`` samples (counted from the shapes).

    ``cached_context`` leaves out the cross-attention keys/values and the text
    embedding, which need computing once per generation only.
    """
    per_block = (
        4 * 2 * tokens * dim * dim            # self-attention q, k, v, o
        + 2 * 2 * tokens * tokens * dim       # self-attention scores and values
        + 2 * 2 * tokens * dim * dim          # cross-attention q, o
        + 2 * 2 * tokens * text_len * dim     # cross-attention scores and values
        + 2 * 2 * tokens * dim * ffn_dim)     # feed-forward
    context = layers * 2 * 2 * text_len * dim * dim + 2 * text_len * (text_dim * dim + dim * dim)
    total = layers * per_block + (0 if cached_context else context)
    return batch * total


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def save_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = dict(data, machine=machine())
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


def threads_from_env() -> None:
    n = os.environ.get("BENCH_THREADS")
    if n:
        torch.set_num_threads(int(n))
