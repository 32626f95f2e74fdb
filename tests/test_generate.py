"""The command line: outputs, reproducibility, --replay and one-line errors."""

import json
import re
import subprocess
import sys
from pathlib import Path

import imageio
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

import generate

ROOT = Path(__file__).resolve().parents[1]


def run(*argv):
    return generate.main([str(a) for a in argv])


def probe(path):
    """(codec, pixel format, width, height, fps) of a video file, read by ffmpeg."""
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True).stderr
    m = re.search(r"Video: (\w+).*?, (yuv\w+)[(,].*?, (\d+)x(\d+).*?, ([\d.]+) fps", out)
    assert m, out
    return m.group(1), m.group(2), int(m.group(3)), int(m.group(4)), float(m.group(5))


def frames(path):
    with imageio.get_reader(path, "ffmpeg") as r:
        return np.stack([f for f in r])


def test_t2v_file_seed_and_replay(t2v_ckpt, tmp_path):
    common = ["--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", t2v_ckpt,
              "--frame_num", "5", "--sample_steps", "2", "--prompt", "a lighthouse in a storm"]
    a, b, c = tmp_path / "a.mp4", tmp_path / "sub" / "b.mp4", tmp_path / "c.mp4"
    assert run(*common, "--base_seed", "42", "--save_file", a) == 0
    assert probe(a) == ("h264", "yuv420p", 832, 480, 16.0)
    fa = frames(a)
    assert fa.shape == (5, 480, 832, 3)
    side = json.loads(a.with_suffix(".json").read_text())
    assert side["base_seed"] == 42 and side["task"] == "t2v-1.3B" and side["sample_steps"] == 2
    assert side["prompt"] == "a lighthouse in a storm" and side["frame_num"] == 5
    assert side["vae_tiling"] == "auto"
    assert side["negative_prompt"].startswith("色调艳丽") and "torch" in side["versions"]

    assert run(*common, "--base_seed", "42", "--save_file", b) == 0  # parent folder created
    assert np.array_equal(frames(b), fa)
    assert run(*common, "--base_seed", "43", "--save_file", c, "--fps", "8") == 0
    assert not np.array_equal(frames(c), fa)
    assert probe(c)[4] == 8.0

    r = tmp_path / "replayed.mp4"
    assert run("--replay", a.with_suffix(".json"), "--save_file", r) == 0
    assert np.array_equal(frames(r), fa)
    assert not list(tmp_path.rglob("*.part*"))


def test_t2i_writes_png(t2v_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("--task", "t2i-14B", "--size", "480*832", "--ckpt_dir", t2v_ckpt,
               "--sample_steps", "2", "--base_seed", "1", "--prompt", "a/b: test") == 0
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].name.startswith("t2i-14B_480*832_1_1_a_b_test_")
    assert Image.open(pngs[0]).size == (480, 832)
    assert pngs[0].with_suffix(".json").is_file()


@pytest.mark.parametrize("img_size,expected", [((640, 360), (832, 464)), ((300, 400), (544, 720))])
def test_i2v_two_aspect_ratios(i2v_ckpt, tmp_path, img_size, expected):
    img = tmp_path / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (img_size[1], img_size[0], 3), dtype=np.uint8)).save(img)
    out = tmp_path / "i2v.mp4"
    assert run("--task", "i2v-14B", "--size", "832*480", "--ckpt_dir", i2v_ckpt, "--image", img,
               "--frame_num", "5", "--sample_steps", "2", "--base_seed", "3", "--save_file", out) == 0
    codec, pix, w, h, fps = probe(out)
    assert (codec, pix, fps) == ("h264", "yuv420p", 16.0)
    assert (w, h) == expected
    assert frames(out).shape[0] == 5
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["sample_shift"] == 3.0 and side["sample_steps"] == 2  # 480P i2v default shift
    assert side["image"] == str(img.resolve())


def bad_cases(ckpt, tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    base = ["--ckpt_dir", ckpt, "--save_file", tmp_path / "out.mp4"]
    return [
        (["--task", "t2v-1.3B", "--size", "1280*720", *base],
         "unsupported size 1280*720 for task t2v-1.3B; supported sizes: 480*832, 832*480"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--frame_num", "6", *base], "4n+1"),
        (["--task", "t2i-14B", "--size", "1024*1024", "--frame_num", "5", *base],
         "--frame_num must be 1"),
        (["--task", "i2v-14B", "--size", "832*480", "--image", tmp_path / "none.png", *base],
         "input image not found"),
        (["--task", "i2v-14B", "--size", "832*480", "--image", garbage, *base],
         "cannot read the input image"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", tmp_path / "missing"],
         "checkpoint folder not found"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--dit_fsdp", *base], "torchrun"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--ulysses_size", "2", *base], "torchrun"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--sample_steps", "-3", *base],
         "--sample_steps must be at least 1"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--sample_guide_scale", "-1", *base],
         "--sample_guide_scale must be >= 0"),
        (["--task", "t2v-1.3B", "--size", "832*480", "--replay", tmp_path / "nope.json", *base],
         "replay file not found"),
    ]


def test_bad_inputs_one_line_no_file(t2v_ckpt, tmp_path, capsys):
    for argv, message in bad_cases(t2v_ckpt, tmp_path):
        assert run(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, (argv, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "out.mp4").exists()


def test_missing_ckpt_dir_and_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--task", "t2v-1.3B",
                           "--size", "832*480"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --ckpt_dir is required")
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_truncated_checkpoint_clear_error(t2v_ckpt, tmp_path, capsys):
    import shutil
    broken = tmp_path / "ckpt"
    shutil.copytree(t2v_ckpt, broken)
    vae = broken / "Wan2.1_VAE.pth"
    vae.write_bytes(vae.read_bytes()[:1000])
    out = tmp_path / "o.mp4"
    assert run("--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", broken, "--frame_num", "1",
               "--sample_steps", "1", "--save_file", out) == 2
    err = capsys.readouterr().err
    assert "Wan2.1_VAE.pth" in err and "truncated" in err and not out.exists()


def test_official_flag_spellings():
    args = generate._parse_args(["--offload_model", "True", "--prompt_extend_target_lang", "ch",
                                 "--t5_cpu", "--sample_solver", "dpm++"])
    assert args.offload_model is True and args.t5_cpu and args.sample_solver == "dpm++"
    assert generate._parse_args(["--offload_model", "false"]).offload_model is False
    assert generate._parse_args([]).task == "t2v-14B"
