"""Half-precision matmuls through fp32 GEMMs (wan.modules.linear) compute the half GEMM."""

import pytest
import torch
import torch.nn.functional as F

from conftest import rel_err
from wan.modules.linear import Linear, fp32_gemm_for, half_linear_in_fp32
from wan.modules.model import WanModel
from wan.utils.tiny_checkpoint import TinySizes, write_dit

HALF = [torch.bfloat16, torch.float16]


def ulps_from_exact(out: torch.Tensor, x, w, b) -> torch.Tensor:
    """Distance of ``out`` from the exact product of its half operands, in units of the
    half type's spacing at the exact value."""
    dtype = out.dtype
    exact = F.linear(x.to(dtype).double(), w.to(dtype).double(), b.to(dtype).double())
    mag = torch.maximum(exact.abs(), out.double().abs()).clamp_min(torch.finfo(dtype).tiny)
    spacing = torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(mag))  # ulp of the binade
    return (out.double() - exact).abs() / spacing


@pytest.mark.parametrize("dtype", HALF)
def test_fp32_route_rounds_like_a_half_gemm(dtype):
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(64, 384, generator=g), torch.randn(96, 384, generator=g) / 20,
               torch.randn(96, generator=g))
    ours = half_linear_in_fp32(x, w, b, dtype)
    assert ours.dtype == dtype
    # Exact products, fp32 sums: the result is the exact one rounded to the half type,
    # off by an ulp only where the fp32 sum's own error (which cancellation can make
    # comparable to the half type's spacing) crosses a rounding boundary.
    d = ulps_from_exact(ours, x, w, b)
    assert d.max() <= 2.0 and (d > 0.5).float().mean() < 0.02
    # The native half GEMM computes the same function.
    native = F.linear(x.to(dtype), w.to(dtype), b.to(dtype))
    assert ulps_from_exact(native, x, w, b).max() <= 2.0
    assert (ours != native).float().mean() < 0.02
    # Rounding the operands is part of the function: fp32 operands give other numbers.
    assert not torch.equal(F.linear(x, w, b).to(dtype), ours)


@pytest.mark.parametrize("mode, taken", [("fp32", True), ("native", False)])
def test_linear_takes_the_route_the_mode_says(monkeypatch, mode, taken):
    monkeypatch.setenv("WAN_CPU_HALF_MATMUL", mode)
    torch.manual_seed(1)
    layer = Linear(48, 32)
    x = torch.randn(5, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        native = F.linear(x, layer.weight, layer.bias)  # autocast's own bf16 kernel
    routed = half_linear_in_fp32(x, layer.weight, layer.bias, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, routed if taken else native)
    # Plain half weights and inputs (T5, CLIP) take the same decision.
    half = Linear(48, 32).to(torch.float16)
    xh = x.half()
    expected = (half_linear_in_fp32(xh, half.weight, half.bias, torch.float16) if taken
                else F.linear(xh, half.weight, half.bias))
    assert torch.equal(half(xh), expected)
    # fp32 without autocast is untouched.
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_route_decision(monkeypatch):
    from wan.modules.linear import cpu_has_half_units

    cpu = torch.device("cpu")
    monkeypatch.setenv("WAN_CPU_HALF_MATMUL", "auto")
    assert fp32_gemm_for(torch.bfloat16, cpu) == (not cpu_has_half_units(torch.bfloat16))
    assert not fp32_gemm_for(torch.float32, cpu)
    assert not fp32_gemm_for(torch.bfloat16, torch.device("meta"))
    monkeypatch.setenv("WAN_CPU_HALF_MATMUL", "fast")
    with pytest.raises(ValueError, match="WAN_CPU_HALF_MATMUL must be one of auto, fp32, native"):
        fp32_gemm_for(torch.bfloat16, cpu)


def test_dit_mixed_precision_same_numbers_either_route(tmp_path, monkeypatch):
    """The whole DiT in the official mixed precision: the fp32 route differs from
    oneDNN's bf16 kernels by accumulation order only, far below bf16's own error."""
    folder = write_dit(tmp_path / "m", "t2v", TinySizes(), seed=5)
    fp32 = WanModel.from_pretrained(folder)
    half = WanModel.from_pretrained(folder, matmul_dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(16, 3, 8, 8, generator=g), torch.randn(7, TinySizes().t5_dim, generator=g)
    outs = {}
    for mode in ("fp32", "native"):
        monkeypatch.setenv("WAN_CPU_HALF_MATMUL", mode)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            outs[mode] = half([x], torch.tensor([700]), [ctx], 48)[0]
    with torch.no_grad():
        ref = fp32([x], torch.tensor([700]), [ctx], 48)[0]
    bf16_err = rel_err(outs["native"], ref)
    route_err = rel_err(outs["fp32"], outs["native"])
    assert bf16_err > 1e-3  # bf16 really ran
    assert rel_err(outs["fp32"], ref) < 1.5 * bf16_err
    print(f"bf16 vs fp32 {bf16_err:.2e}, fp32 route vs native bf16 {route_err:.2e}")
    assert route_err < 0.5 * bf16_err, (route_err, bf16_err)


def test_dit_t5_and_clip_run_their_matmuls_through_linear(tmp_path):
    """Every matmul layer of the three transformers is the routed Linear."""
    import torch.nn as nn
    from wan.modules.clip import load_image_encoder
    from wan.modules.t5 import load_t5_encoder
    from wan.utils.tiny_checkpoint import write_clip, write_t5

    sizes = TinySizes()
    models = [WanModel.from_pretrained(write_dit(tmp_path / "dit", "i2v", sizes, seed=1)),
              load_t5_encoder(write_t5(tmp_path / "t5.pth", sizes), torch.float32, "cpu"),
              load_image_encoder(write_clip(tmp_path / "clip.pth", sizes), torch.float32, "cpu")]
    for model in models:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert linears and all(isinstance(m, Linear) for m in linears), type(model).__name__
