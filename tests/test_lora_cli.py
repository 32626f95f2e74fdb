"""``generate.py --lora``: the three layouts, experts, the sidecar round trip and errors."""

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from test_generate import frames, run
from test_lora import make_lora
from wan.modules.model import WanModel


def write_lora(ckpt, layout, model_type, path, seed=1):
    folder = ckpt / "high_noise_model" if (ckpt / "high_noise_model").is_dir() else ckpt
    sd = make_lora(WanModel.from_pretrained(folder), layout, model_type, seed)
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


COMMON = ["--size", "832*480", "--frame_num", 1, "--sample_steps", 2, "--base_seed", 5]


@pytest.mark.parametrize("layout", ["wan", "diffusers", "kohya"])
def test_lora_each_layout_changes_the_video_and_replays(t2v_ckpt, tmp_path, layout):
    lora = write_lora(t2v_ckpt, layout, "t2v", tmp_path / f"{layout}.safetensors")
    base, out = tmp_path / "base.mp4", tmp_path / "lora.mp4"
    t2v = ["--task", "t2v-1.3B", "--ckpt_dir", t2v_ckpt, *COMMON]
    assert run(*t2v, "--save_file", base) == 0
    assert run(*t2v, "--lora", f"{lora}:0.8", "--save_file", out) == 0
    assert not np.array_equal(frames(base), frames(out))
    side = json.loads(out.with_suffix(".json").read_text())
    import hashlib
    assert side["loras"] == [{"path": str(lora.resolve()), "sha256": hashlib.sha256(
        lora.read_bytes()).hexdigest(), "scale": 0.8, "expert": None}]
    again = tmp_path / "again.mp4"
    assert run("--replay", out.with_suffix(".json"), "--save_file", again) == 0
    assert np.array_equal(frames(again), frames(out))


def test_i2v_lora_on_t2v_warns_and_t2v_lora_on_i2v(t2v_ckpt, i2v_ckpt, tmp_path, capsys):
    i2v_lora = write_lora(i2v_ckpt, "wan", "i2v", tmp_path / "i2v.safetensors")
    t2v_lora = write_lora(t2v_ckpt, "wan", "t2v", tmp_path / "t2v.safetensors")
    capsys.readouterr()
    assert run("--task", "t2v-1.3B", "--ckpt_dir", t2v_ckpt, *COMMON, "--lora", i2v_lora,
               "--save_file", tmp_path / "a.mp4") == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "were skipped" in warnings[0] and "k_img" in warnings[0]
    assert run("--task", "i2v-14B", "--ckpt_dir", i2v_ckpt, *COMMON, "--lora", t2v_lora,
               "--save_file", tmp_path / "b.mp4") == 0


def test_experts_and_few_steps_on_a14b(t2v_a14b_ckpt, tmp_path):
    lora = write_lora(t2v_a14b_ckpt, "wan", "t2v", tmp_path / "x.safetensors")
    out = tmp_path / "moe.mp4"
    assert run("--task", "t2v-A14B", "--ckpt_dir", t2v_a14b_ckpt, *COMMON, "--lora",
               f"high={lora}:0.5", "--lora", f"low={lora}", "--sample_guide_scale", 1,
               "--denoising_steps", "1000,750,500,250", "--save_file", out) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert [(x["expert"], x["scale"]) for x in side["loras"]] == [("high", 0.5), ("low", 1.0)]


def test_lora_errors(t2v_ckpt, tmp_path, capsys):
    from wan.utils.tiny_checkpoint import TinySizes, write_dit

    other = write_dit(tmp_path / "wide", "t2v", TinySizes(dim=96, ffn_dim=192))
    wide = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in make_lora(WanModel.from_pretrained(other), "wan",
                                                        "t2v", 2).items()}, wide)
    evil = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "f": logging.getLogger}, evil)
    cases = [
        ([tmp_path / "none.safetensors"], "--lora file not found"),
        ([f"{wide}:abc"], "is not a number"),
        ([f"middle={wide}"], "unknown expert 'middle'"),
        ([f"high={wide}"], "has one DiT"),
        ([wide], "blocks.0"),  # a LoRA for a wider model: the first mismatching key is named
        ([evil], "evil.pt"),
    ]
    out = tmp_path / "o.mp4"
    for loras, message in cases:
        argv = ["--task", "t2v-1.3B", "--ckpt_dir", t2v_ckpt, *COMMON, "--save_file", out]
        for lora in loras:
            argv += ["--lora", lora]
        capsys.readouterr()
        assert run(*argv) == 2, loras
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, err
        assert len(err.splitlines()) == 1 and not out.exists()


def test_demo_lora_choice_switches_without_reloading(t2v_ckpt, tmp_path):
    """The demos' --lora_dir: a LoRA and its strength per job; the base weights come back."""
    import sys

    from test_gradio import DEMO_DIR

    sys.path.insert(0, str(DEMO_DIR))
    try:
        import wan_demo
    finally:
        sys.path.remove(str(DEMO_DIR))
    loras = tmp_path / "loras"
    loras.mkdir()
    write_lora(t2v_ckpt, "wan", "t2v", loras / "style.safetensors")
    spec = wan_demo.DEMOS["t2v-1.3B"]
    args = wan_demo.parse_args(spec, ["--ckpt_dir", str(t2v_ckpt), "--device", "cpu",
                                      "--output_dir", str(tmp_path / "out"),
                                      "--lora_dir", str(loras)])
    demo = wan_demo.WanDemo(spec, args)
    demo.load_models()
    assert demo.lora_files == ["style.safetensors"]
    assert demo.api_names()[-2:] == ["lora", "lora_strength"]
    pipe = demo.pipelines[""]
    base_q = pipe.model.blocks[0].self_attn.q.weight.clone()
    job = ("a cat", {}, "704*544", 1, 1, 5.0, 8.0, 4, "")

    def run_job(lora):
        return demo.generate(*job, lora=lora, progress=lambda *a, **k: None)[0]

    plain = frames(run_job((wan_demo.NO_LORA, 1.0)))
    styled_path = run_job(("style.safetensors", 0.8))
    assert not np.array_equal(frames(styled_path), plain)
    side = json.loads(__import__("pathlib").Path(styled_path).with_suffix(".json").read_text())
    assert [(x["scale"], x["expert"]) for x in side["loras"]] == [(0.8, None)]
    assert np.array_equal(frames(run_job((wan_demo.NO_LORA, 1.0))), plain)
    assert torch.equal(pipe.model.blocks[0].self_attn.q.weight, base_q) and pipe.loras == []
