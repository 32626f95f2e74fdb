"""``Linear``: half-precision matmuls as fp32 GEMMs on CPUs that lack half-precision units.

A bf16 GEMM (as run by cuBLAS, oneDNN or under ``torch.autocast``) multiplies bf16
operands, accumulates the products in fp32 and rounds the result to bf16. The
product of two bf16 numbers (8-bit significands) is exact in fp32 (24-bit
significand); so is the product of two fp16 numbers (11-bit significands). An
fp32 GEMM over the same operands, upcast, and rounded back to the half type
therefore computes the same function: the results differ only by the order of the
fp32 additions, like any two GEMM libraries do.

On x86 CPUs without AVX512-BF16 or AMX, oneDNN has no bf16 arithmetic and emulates
it at a fraction of its fp32 speed (on this project's 2-core test machine a bf16 GEMM
runs at about a fifth of the fp32 rate), so there the fp32 route is several times
faster for the same numbers. It is taken only on such CPUs; CUDA, MPS and CPUs with
bf16 (fp16) units run the native half-precision GEMM. ``WAN_CPU_HALF_MATMUL``
overrides the choice: ``auto`` (default), ``fp32`` (always on CPU) or ``native``.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import HALF_DTYPES

__all__ = ["Linear", "half_linear_in_fp32", "fp32_gemm_for", "cpu_has_half_units"]

MODES = ("auto", "fp32", "native")


@lru_cache(maxsize=None)
def cpu_has_half_units(dtype: torch.dtype) -> bool:
    """True when this CPU has instructions for ``dtype`` GEMMs (or is not x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True  # ARM and others: keep the vendor's native kernels
    cpu = torch.cpu
    if dtype == torch.bfloat16:
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    else:
        checks = ("_is_amx_fp16_supported",)
    return any(bool(getattr(cpu, name, lambda: True)()) for name in checks)


def fp32_gemm_for(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``dtype`` matmuls on ``device`` take the fp32 route (see the module docstring)."""
    if device.type != "cpu" or dtype not in HALF_DTYPES:
        return False
    mode = os.environ.get("WAN_CPU_HALF_MATMUL", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"WAN_CPU_HALF_MATMUL must be one of {', '.join(MODES)}, got '{mode}'")
    if mode == "auto":
        return not cpu_has_half_units(dtype)
    return mode == "fp32"


def half_linear_in_fp32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        dtype: torch.dtype) -> torch.Tensor:
    """``F.linear`` in ``dtype`` (operands rounded to it, result rounded to it), computed
    by an fp32 GEMM, whose products of ``dtype`` operands are exact."""
    x = x.to(dtype).float()
    w = weight.to(dtype).float()
    b = None if bias is None else bias.to(dtype).float()
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x, w, b).to(dtype)


def _half_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The half dtype this linear computes in (autocast's, or that of both operands)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return dtype if dtype in HALF_DTYPES else None
    return x.dtype if x.dtype in HALF_DTYPES and weight.dtype == x.dtype else None


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same results) with the fp32 route for half GEMMs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":  # the only device the fp32 route is for
            dtype = _half_dtype(x, self.weight)
            if dtype is not None and fp32_gemm_for(dtype, x.device):
                return half_linear_in_fp32(x, self.weight, self.bias, dtype)
        return super().forward(x)
