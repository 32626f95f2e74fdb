"""The task table drives the command line: flags, defaults, inputs, errors, sidecar, README.

Also the command line of the tasks added through it: first-last-frame-to-video (flf2v-14B)
and video-to-video (``--src_video`` with the T2V models).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate
from test_generate import frames, probe, run
from wan.tasks import TASKS, input_flags, markdown_table, option_flags

ROOT = Path(__file__).resolve().parents[1]


def write_picture(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_clip(path: Path, n: int = 9, size: tuple[int, int] = (96, 64)) -> Path:
    """A small synthetic MP4 (a moving gradient) written with the project's own writer."""
    from wan.utils.io import save_video

    w, h = size
    t = torch.linspace(-1, 1, n)[None, :, None, None]
    x = torch.linspace(-1, 1, w)[None, None, None, :]
    y = torch.linspace(-1, 1, h)[None, None, :, None]
    video = torch.cat([(x + t).clamp(-1, 1).expand(1, n, h, w),
                       (y - t).clamp(-1, 1).expand(1, n, h, w),
                       (x * y).expand(1, n, h, w)])
    return save_video(video, path, fps=16)


# ------------------------------------------------------------------ the table
def test_every_task_has_readme_row_examples_and_flags():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README's task table is stale: paste `python -m wan.tasks`"
    help_text = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    for name, task in TASKS.items():
        assert f"| `{name}` |" in readme
        assert name in help_text
        assert task.example_prompt.strip(), name
        assert set(task.sizes) <= set(generate_sizes())
        for inp in task.inputs:
            assert f"--{inp.flag}" in help_text, inp.flag
            if inp.required:
                assert inp.example, inp.flag
            for path in inp.paths(inp.example_value):
                assert Path(path).is_file(), path
        for opt in task.options:
            assert f"--{opt.flag}" in help_text
        assert task.pipeline_class().__name__ == task.pipeline
    assert set(input_flags()) == {"image", "first_frame", "last_frame", "src_video", "src_mask",
                                  "src_ref_images"}
    assert set(option_flags()) == {"strength", "context_scale"}


def generate_sizes():
    from wan.configs import SIZE_CONFIGS
    return SIZE_CONFIGS


def test_defaults_come_from_the_table(monkeypatch, tmp_path):
    for name, task in TASKS.items():
        for size in task.sizes:
            args = generate._parse_args(["--task", name, "--size", size, "--ckpt_dir",
                                         str(tmp_path)])
            generate._validate(args, 1)
            assert args.frame_num == task.frames and args.sample_steps == task.steps
            assert args.sample_shift == task.default_shift(size)
            assert args.prompt == task.example_prompt
            for inp in task.inputs:  # the example run: the examples of every input
                assert getattr(args, inp.flag) == inp.example_value
    # the official per-task defaults
    assert TASKS["i2v-14B"].default_shift("832*480") == 3.0
    assert TASKS["flf2v-14B"].shift == 16 and TASKS["flf2v-14B"].steps == 50


# ------------------------------------------------------------------ flf2v
@pytest.mark.parametrize("frame_num", [5, 9])
def test_flf2v_cli_size_rule_frames_sidecar_replay(flf2v_ckpt, tmp_path, frame_num):
    """Two pictures of different aspect ratios: the first sets the size."""
    first = write_picture(tmp_path / "first.png", (640, 360), seed=1)
    last = write_picture(tmp_path / "last.png", (300, 400), seed=2)
    out = tmp_path / "flf.mp4"
    argv = ["--task", "flf2v-14B", "--size", "832*480", "--ckpt_dir", flf2v_ckpt,
            "--first_frame", first, "--last_frame", last, "--frame_num", frame_num,
            "--sample_steps", 2, "--base_seed", 4, "--save_file", out]
    assert run(*argv) == 0
    codec, pix, w, h, fps = probe(out)
    assert (codec, pix, fps) == ("h264", "yuv420p", 16.0)
    assert (w, h) == (832, 464)  # the first frame's 16:9 aspect within 832*480 pixels
    fa = frames(out)
    assert fa.shape[0] == frame_num
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["task"] == "flf2v-14B" and side["sample_shift"] == 16.0
    assert side["sample_steps"] == 2 and side["frame_num"] == frame_num
    assert side["first_frame"] == str(first.resolve()) and side["last_frame"] == str(last.resolve())
    import hashlib
    assert side["last_frame_sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    assert side["negative_prompt"].startswith("镜头切换，")
    replayed = tmp_path / "again.mp4"
    assert run("--replay", out.with_suffix(".json"), "--save_file", replayed) == 0
    assert np.array_equal(frames(replayed), fa)


# ------------------------------------------------------------------ v2v
def test_v2v_cli_with_a_generated_clip(t2v_ckpt, tmp_path):
    clip = write_clip(tmp_path / "src.mp4", n=9)
    out = tmp_path / "v2v.mp4"
    common = ["--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", t2v_ckpt,
              "--sample_steps", 4, "--base_seed", 6, "--prompt", "a gradient at dusk"]
    assert run(*common, "--src_video", clip, "--strength", 0.5, "--save_file", out) == 0
    codec, pix, w, h, _ = probe(out)
    assert (w, h) == (832, 480) and (codec, pix) == ("h264", "yuv420p")
    fa = frames(out)
    assert fa.shape[0] == 9  # the clip's 9 frames (the largest 4n+1 it holds)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["src_video"] == str(clip.resolve()) and side["strength"] == 0.5
    import hashlib
    assert side["src_video_sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert side["frame_num"] == 9
    again = tmp_path / "again.mp4"
    assert run("--replay", out.with_suffix(".json"), "--save_file", again) == 0
    assert np.array_equal(frames(again), fa)
    # the source matters at strength 0.5; a plain T2V run of the same seed differs
    plain = tmp_path / "plain.mp4"
    assert run(*common, "--frame_num", 9, "--save_file", plain) == 0
    assert not np.array_equal(frames(plain), fa)
    # default strength 0.8 and a shorter --frame_num take the first frames of the clip
    short = tmp_path / "short.mp4"
    assert run(*common, "--src_video", clip, "--frame_num", 5, "--save_file", short) == 0
    assert frames(short).shape[0] == 5
    assert json.loads(short.with_suffix(".json").read_text())["strength"] == 0.8


# ------------------------------------------------------------------ errors
def error_cases(ckpts, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"not a video at all")
    clip = write_clip(tmp_path / "nine.mp4", n=9)
    img = write_picture(tmp_path / "img.png", (64, 48))
    out = tmp_path / "out.mp4"
    flf = ["--task", "flf2v-14B", "--size", "832*480", "--ckpt_dir", ckpts["flf2v"],
           "--save_file", out]
    t2v = ["--task", "t2v-1.3B", "--size", "832*480", "--ckpt_dir", ckpts["t2v"],
           "--save_file", out]
    return [
        (flf + ["--first_frame", tmp_path / "none.png", "--last_frame", img],
         "--first_frame image not found"),
        (flf + ["--first_frame", img, "--last_frame", tmp_path / "none.png"],
         "--last_frame image not found"),
        (flf + ["--first_frame", garbage, "--last_frame", img],
         "cannot read the --first_frame image"),
        (flf + ["--first_frame", img, "--last_frame", garbage],
         "cannot read the --last_frame image"),
        (flf + ["--first_frame", img], "--first_frame needs --last_frame too"),
        (flf + ["--last_frame", img], "--last_frame needs --first_frame too"),
        (flf + ["--image", img],
         "task flf2v-14B takes no --image; it takes --first_frame, --last_frame"),
        (t2v + ["--image", img], "task t2v-1.3B takes no --image; it takes --src_video, --strength"),
        (["--task", "t2i-14B", "--size", "832*480", "--ckpt_dir", ckpts["t2v"], "--save_file",
          out, "--first_frame", img], "task t2i-14B takes no --first_frame; it takes only --prompt"),
        (["--task", "i2v-14B", "--size", "832*480", "--ckpt_dir", ckpts["flf2v"], "--save_file",
          out, "--src_video", clip], "task i2v-14B takes no --src_video; it takes --image"),
        (t2v + ["--src_video", bad_video], "--src_video: cannot read"),
        (t2v + ["--src_video", tmp_path / "none.mp4"], "--src_video video not found"),
        (t2v + ["--src_video", clip, "--frame_num", "13"],
         "has 9 frames but --frame_num is 13"),
        (t2v + ["--src_video", clip, "--strength", "0"], "--strength must be in (0, 1], got 0"),
        (t2v + ["--src_video", clip, "--strength", "1.5"], "--strength must be in (0, 1], got 1.5"),
        (t2v + ["--strength", "0.5"], "--strength applies to --src_video, which is not given"),
        (["--task", "flf2v-14B", "--size", "832*480", "--ckpt_dir", ckpts["i2v"], "--save_file",
          out, "--frame_num", "5", "--sample_steps", "1"], "img_emb.emb_pos"),
    ]


def test_errors_one_line_no_file(t2v_ckpt, i2v_ckpt, flf2v_ckpt, tmp_path, capsys):
    ckpts = {"t2v": t2v_ckpt, "i2v": i2v_ckpt, "flf2v": flf2v_ckpt}
    for argv, message in error_cases(ckpts, tmp_path):
        assert run(*argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, (argv, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert not (tmp_path / "out.mp4").exists()
        assert not list(tmp_path.glob("*.part*"))


def test_readme_documents_the_new_flags():
    readme = (ROOT / "README.md").read_text()
    for text in ("--first_frame", "--last_frame", "--src_video", "--strength",
                 "flf2v_14B_singleGPU.py", "bash tests/run.sh"):
        assert text in readme, text
    assert re.search(r"480P.*trained for 720P|trained for 720P.*480P", readme)
