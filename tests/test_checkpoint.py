"""Safe, clear loading of pickled checkpoints."""

import collections

import pytest
import torch

from wan.utils.checkpoint import CheckpointError, load_pth, load_safetensors


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weights_only_refuses_code(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="objects other than tensors.*could run code"):
        load_pth(p, "VAE checkpoint")


def test_truncated_pth(tmp_path):
    p = tmp_path / "t.pth"
    torch.save({"w": torch.randn(1000)}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*truncated"):
        load_pth(p, "T5 checkpoint")


def test_garbage_pth(tmp_path):
    p = tmp_path / "g.pth"
    p.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(CheckpointError, match="T5 checkpoint .*g.pth.*not a readable"):
        load_pth(p, "T5 checkpoint")


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_pth(tmp_path / "e.pth", "VAE checkpoint")
    with pytest.raises(CheckpointError, match="VAE checkpoint not found"):
        load_pth(tmp_path / "none.pth", "VAE checkpoint")


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "l.pth"
    torch.save([torch.zeros(1)], p)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_pth(p, "VAE checkpoint")


def test_roundtrip_and_ordered_dict(tmp_path):
    p = tmp_path / "ok.pth"
    sd = collections.OrderedDict(a=torch.arange(4.0), b=torch.ones(2, 2, dtype=torch.bfloat16))
    torch.save(sd, p)
    out = load_pth(p, "x")
    assert torch.equal(out["a"], sd["a"]) and out["b"].dtype == torch.bfloat16


def test_safetensors_reader_matches_library(tmp_path):
    from safetensors.torch import save_file
    sd = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16),
          "c": torch.arange(6, dtype=torch.int64).view(2, 3), "s": torch.tensor(2.5)}
    save_file(sd, tmp_path / "m.safetensors")
    out = load_safetensors([tmp_path / "m.safetensors"], "x")
    for k in sd:
        assert out[k].dtype == sd[k].dtype and torch.equal(out[k], sd[k])
    conv = load_safetensors([tmp_path / "m.safetensors"], "x", dtype=torch.float16)
    assert conv["a"].dtype == torch.float16 and conv["c"].dtype == torch.int64


def test_plain_text_garbage(tmp_path):
    p = tmp_path / "x.pth"
    p.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_pth(p, "VAE checkpoint")
