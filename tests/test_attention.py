"""The attention entry point: masking semantics and backend selection."""

import pytest
import torch

from conftest import rel_err
from wan.modules import attention as A


def naive(q, k, v, k_lens=None):
    """Reference: explicit softmax(q k^T / sqrt(d)) v per sample, keys past k_lens dropped."""
    outs = []
    for b in range(q.size(0)):
        n = k.size(1) if k_lens is None else int(k_lens[b])
        qb, kb, vb = q[b].transpose(0, 1), k[b, :n].transpose(0, 1), v[b, :n].transpose(0, 1)
        w = torch.softmax(qb @ kb.transpose(-1, -2) / q.size(-1) ** 0.5, dim=-1)
        outs.append((w @ vb).transpose(0, 1))
    return torch.stack(outs)


def test_unmasked_matches_naive():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 9, 3, 8, generator=g) for _ in range(3))
    assert rel_err(A.attention(q, k, v), naive(q, k, v)) < 1e-6


def test_key_lengths_mask_padding():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 10, 2, 16, generator=g) for _ in range(3))
    k_lens = torch.tensor([10, 4, 7])
    out = A.attention(q, k, v, k_lens=k_lens)
    assert rel_err(out, naive(q, k, v, k_lens)) < 1e-6
    # changing padded keys/values does not change the result
    k2, v2 = k.clone(), v.clone()
    k2[1, 4:] = 100.0
    v2[2, 7:] = -50.0
    assert torch.allclose(A.attention(q, k2, v2, k_lens=k_lens), out, atol=1e-6)


def test_dtype_follows_query():
    q = torch.randn(1, 4, 2, 8, dtype=torch.bfloat16)
    k = v = torch.randn(1, 4, 2, 8, dtype=torch.bfloat16)
    assert A.attention(q, k, v).dtype == torch.bfloat16


def test_cpu_uses_sdpa_even_if_flash_requested_unavailable():
    q = k = v = torch.randn(1, 4, 2, 8)
    assert "sdpa" in A.available_backends()
    with pytest.raises(RuntimeError, match="cannot run here|not installed"):
        A.attention(q, k, v, backend="flash2")


def test_official_compat_wrapper():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 5, 2, 8, generator=g) for _ in range(3))
    k_lens = torch.tensor([5, 3])
    out = A.flash_attention(q, k, v, k_lens=k_lens)
    assert rel_err(out, naive(q, k, v, k_lens)) < 1e-6
    with pytest.raises(NotImplementedError, match="q_lens"):
        A.flash_attention(q, k, v, q_lens=k_lens)


def test_bad_layout_message():
    with pytest.raises(ValueError, match=r"\[B, L, heads, head_dim\]"):
        A.attention(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8))


def test_window_needs_flash():
    q = k = v = torch.randn(1, 4, 2, 8)
    with pytest.raises(NotImplementedError, match="sliding-window"):
        A.attention(q, k, v, window_size=(2, 2))


def test_no_cuda_at_import():
    import subprocess
    import sys
    code = ("import torch, wan, wan.modules.model, wan.modules.attention, wan.utils.checkpoint;"
            "import wan.configs;"
            "print(torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")
