"""Block-wise DiT offload: bounded residency, identical output."""

import pytest
import torch

from wan.modules.model import WanModel, cached_context
from wan.utils.offload import enable_block_offload
from wan.utils.tiny_checkpoint import TinySizes, write_dit


@pytest.mark.parametrize("resident", [1, 2])
def test_block_offload_bounded_and_exact(tmp_path, resident):
    sizes = TinySizes(num_layers=4)
    folder = write_dit(tmp_path / "m", "t2v", sizes, seed=9)
    plain, offl = WanModel.from_pretrained(folder), WanModel.from_pretrained(folder)
    offloader = enable_block_offload(offl, "cpu", resident=resident)
    live = []

    def count(module, args):
        live.append(sum(b.self_attn.q.weight.numel() > 0 for b in offl.blocks))

    hooks = [b.register_forward_pre_hook(count) for b in offl.blocks]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, 4, 6, generator=g)
    ctx = [torch.randn(7, sizes.t5_dim, generator=g), torch.randn(3, sizes.t5_dim, generator=g)]
    with torch.no_grad():
        for _ in range(2):  # two steps: the prefetch wraps around to the first blocks
            with cached_context(offl):
                a = offl([x, x], torch.tensor([500, 500]), ctx, 12)
            b = plain([x, x], torch.tensor([500, 500]), ctx, 12)
            for u, v in zip(a, b):
                assert torch.equal(u, v)
    assert len(live) == 8 and max(live) <= resident
    assert offloader.max_loaded <= resident
    # weights of the blocks not in use are really released
    assert sum(b.ffn[0].weight.numel() > 0 for b in offl.blocks) <= resident - 1
    for h in hooks:
        h.remove()
    offloader.remove()
    assert all(b.ffn[0].weight.numel() > 0 for b in offl.blocks)


def test_resident_must_be_positive(tmp_path):
    folder = write_dit(tmp_path / "m", "t2v", TinySizes(), seed=1)
    with pytest.raises(ValueError, match="at least one block"):
        enable_block_offload(WanModel.from_pretrained(folder), "cpu", resident=0)
