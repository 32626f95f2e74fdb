"""The Gradio demos, run as a user runs them and driven by a real headless browser.

Each demo script starts in its own process on a miniature checkpoint (CPU, 127.0.0.1, a free
port). Debian's Chromium, driven by Playwright, types a prompt, clicks the button and waits for
the result; the same flow then goes through ``gradio_client``. Bad input must show its message
in the page, and the next good request must still work.

Chromium is required: the README's test command (``bash tests/run.sh``, which ``.ci/run``
calls) installs it where apt-get is available, so a missing browser fails these tests instead of
skipping them. ``WAN_GRADIO_SCREENSHOT=assets/gradio_screenshot.png`` also writes the
README's screenshot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "gradio"
CHROMIUM = os.environ.get("WAN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SIZE = "704*544"          # the smallest resolution the T2V / T2I demos offer
START_TIMEOUT = 240.0     # seconds for a demo to load its models and open its port
JOB_TIMEOUT = 240_000     # milliseconds for one generation seen from the browser


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoServer:
    """One demo script running in its own process (as ``python gradio/<script> ...``)."""

    def __init__(self, script: str, args: list[str], workdir: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.output_dir = workdir / "outputs"
        self.log_path = workdir / "server.log"
        self._up = False
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                   GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="2")
        cmd = [sys.executable, str(DEMO_DIR / script), *args, "--device", "cpu",
               "--server_port", str(self.port), "--output_dir", str(self.output_dir)]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_up(self, timeout: float = START_TIMEOUT) -> DemoServer:
        """Wait until the page answers (the models are loaded before the server starts)."""
        deadline = time.monotonic() + timeout
        while not self._up and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the demo exited with code {self.proc.returncode}:\n{self.log()}")
            try:
                with _DIRECT.open(self.url, timeout=2) as r:
                    self._up = r.status == 200
            except OSError:
                time.sleep(0.5)
        if self._up:
            return self
        pytest.fail(f"the demo did not answer on {self.url} within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mp4_info(path: str | Path) -> tuple[int, int, int]:
    """(frames, width, height) of a video file, decoded with ffmpeg."""
    import imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        width, height = reader.get_meta_data()["size"]
        return reader.count_frames(), width, height
    finally:
        reader.close()


def sidecar_for(output_dir: Path, seed: int) -> dict:
    """The sidecar of the output generated with ``seed`` (exactly one)."""
    found = [json.loads(p.read_text()) for p in output_dir.glob("*.json")]
    found = [d for d in found if d.get("base_seed") == seed]
    assert len(found) == 1, f"expected one sidecar with seed {seed} in {output_dir}"
    return found[0]


def write_image(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    """A small synthetic RGB picture (a gradient) to animate."""
    import numpy as np
    from PIL import Image

    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


# ----------------------------------------------------------------------------------------------
# Fixtures: the miniature checkpoints, all four demos started at once, the browser
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    """A miniature local Qwen2 model for 'Prompt enhance' (random weights, tiny vocabulary)."""
    from test_prompt_extend import write_tiny_qwen

    return write_tiny_qwen(tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def demos(t2v_ckpt, i2v_ckpt, flf2v_ckpt, vace_ckpt, qwen_dir, tmp_path_factory
          ) -> dict[str, DemoServer]:
    """The six demos, started together and stopped at the end.

    They load while the first tests run; ``demos[name].wait_until_up()`` waits for one.
    """
    specs = {
        "t2v-14B": ("t2v_14B_singleGPU.py", ["--ckpt_dir", str(t2v_ckpt)]),
        "t2v-1.3B": ("t2v_1.3B_singleGPU.py",
                     ["--ckpt_dir", str(t2v_ckpt), "--prompt_extend_method", "local_qwen",
                      "--prompt_extend_model", str(qwen_dir)]),
        "t2i-14B": ("t2i_14B_singleGPU.py", ["--ckpt_dir", str(t2v_ckpt)]),
        "i2v-14B": ("i2v_14B_singleGPU.py", ["--ckpt_dir_480p", str(i2v_ckpt)]),
        # the official demo's file name and flag
        "flf2v-14B": ("fl2v_14B_singleGPU.py", ["--ckpt_dir_720p", str(flf2v_ckpt)]),
        # the official VACE demo's file name and flags
        "vace-1.3B": ("vace.py", ["--model_name", "vace-1.3B", "--ckpt_dir", str(vace_ckpt)]),
    }
    servers = {name: DemoServer(script, args, tmp_path_factory.mktemp(f"demo_{name}"))
               for name, (script, args) in specs.items()}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def browser_context():
    """A real headless Chromium (Debian's package) with a fresh profile."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: run the tests with `bash tests/run.sh` "
                    f"(installs it where apt-get is available), or install it yourself "
                    f"(Debian/Ubuntu: apt-get install chromium) or set WAN_CHROMIUM to its path")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="wan-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 1000})
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    yield page
    page.close()


# ----------------------------------------------------------------------------------------------
# Browser helpers
# ----------------------------------------------------------------------------------------------

def open_demo(page, server: DemoServer) -> None:
    page.goto(server.url)
    page.locator("#generate").wait_for()


def set_number(page, elem_id: str, value) -> None:
    """Type into the number box of a slider or number field and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def choose(page, elem_id: str, value: str) -> None:
    """Pick (or type, for a custom value) ``value`` in a dropdown."""
    field = page.locator(f"#{elem_id} input")
    field.click()
    option = page.get_by_role("option", name=value, exact=True)
    if option.count():
        option.click()
    else:
        field.fill(value)
        field.press("Enter")
    field.blur()


def fill_common(page, prompt: str, steps: int, seed: int, frames: int | None = None) -> None:
    page.locator("#prompt textarea").fill(prompt)
    set_number(page, "steps", steps)
    set_number(page, "seed", seed)
    if frames is not None:
        set_number(page, "frames", frames)


def expect_message(page, text: str) -> None:
    """A message (Gradio's error / warning toast) with ``text`` becomes visible."""
    page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=60_000)


def dismiss_messages(page) -> None:
    """Close the toasts so that they do not hide the next ones."""
    for button in page.locator(".toast-close").all():
        try:
            button.click(timeout=2_000)
        except Exception:  # noqa: BLE001 - a toast may vanish by itself meanwhile
            pass


def wait_for_seed(page, seed: int) -> None:
    page.wait_for_function(
        f"document.querySelector('#seed_used input')?.value === '{seed}'", timeout=JOB_TIMEOUT)


def fetch(page, url: str, dest: Path) -> Path:
    """Download what the page shows (through the browser's own session)."""
    response = page.request.get(url)
    assert response.ok, f"GET {url} -> {response.status}"
    dest.write_bytes(response.body())
    return dest


def check_video_in_page(page, tmp_path: Path, frames: int, size: tuple[int, int] | None) -> Path:
    """The result is a <video> the browser can play; its file is an MP4 with ``frames`` frames."""
    video = page.locator("#result video")
    video.wait_for(timeout=JOB_TIMEOUT)
    page.wait_for_function("document.querySelector('#result video').readyState >= 1")
    duration, width, height = page.evaluate(
        "(() => { const v = document.querySelector('#result video');"
        " return [v.duration, v.videoWidth, v.videoHeight]; })()")
    assert duration > 0
    mp4 = fetch(page, video.get_attribute("src"), tmp_path / "from_page.mp4")
    assert mp4.read_bytes()[4:8] == b"ftyp"
    n, w, h = mp4_info(mp4)
    assert n == frames and (w, h) == (width, height)
    if size is not None:
        assert (w, h) == size
    return mp4


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """Save a screenshot; with WAN_GRADIO_SCREENSHOT set, also the README's (I2V, < 300 KB)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    assert path.stat().st_size > 0
    target = os.environ.get("WAN_GRADIO_SCREENSHOT")
    if target and name == "i2v-14B":
        save_small_png(path, ROOT / target)
    return path


def save_small_png(src: Path, dest: Path, limit: int = 290_000) -> None:
    """Copy a screenshot as a palette PNG small enough to commit (the result is noise)."""
    from PIL import Image

    with Image.open(src) as im:
        rgb = im.convert("RGB")
    for colors in (256, 128, 64, 32):
        rgb.quantize(colors, method=Image.Quantize.FASTOCTREE).save(dest, optimize=True)
        if dest.stat().st_size < limit:
            return


# ----------------------------------------------------------------------------------------------
# The demo scripts as programs
# ----------------------------------------------------------------------------------------------

def test_no_package_file_shadows_gradio():
    import importlib.util

    assert not (DEMO_DIR / "__init__.py").exists()
    spec = importlib.util.find_spec("gradio")
    assert spec.origin and Path(spec.origin).resolve().parent != DEMO_DIR.resolve()


def test_scripts_run_from_the_repo_root_and_their_folder(demos, tmp_path):
    """`import gradio` finds the package from either folder; a bad command line is one line.

    (Asking for ``demos`` starts them: they load while this runs.)
    """
    runs = {  # name: (command, folder)
        "help": ([str(Path("gradio") / "t2v_14B_singleGPU.py"), "--help"], ROOT),
        "missing_folder": (["i2v_14B_singleGPU.py", "--ckpt_dir_720p", str(tmp_path / "nope")],
                           DEMO_DIR),
    }
    procs = {name: subprocess.Popen([sys.executable, *cmd], cwd=cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (cmd, cwd) in runs.items()}
    out = {name: (p.wait(timeout=180), *p.communicate()) for name, p in procs.items()}

    code, stdout, stderr = out["help"]
    assert code == 0, stderr
    for flag in ("--ckpt_dir", "--prompt_extend_method", "--prompt_extend_model",
                 "--server_name", "--server_port", "--device"):
        assert flag in stdout
    code, _, stderr = out["missing_folder"]
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1].endswith(
        f"checkpoint folder not found: '{tmp_path / 'nope'}' (--ckpt_dir_720p)")
    assert "Traceback" not in stderr


def test_demos_start_on_localhost_without_prompt_model(demos):
    for name, server in demos.items():
        log = server.wait_until_up().log()
        assert f"Running on local URL:  http://127.0.0.1:{server.port}" in log, name
        assert "prompt-extension model" not in log, name  # nothing loaded before a click


def test_failed_job_is_reported_and_the_next_one_runs(t2v_ckpt, tmp_path):
    """In process, with a pipeline that fails once: a message, no crash, then a result."""
    import torch

    sys.path.insert(0, str(DEMO_DIR))
    try:
        import wan_demo
    finally:
        sys.path.remove(str(DEMO_DIR))
    import gradio as gr

    class FlakyPipeline:
        calls = 0

        def generate(self, prompt, size, frame_num, on_step=None, **kwargs):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            on_step(1, 1)
            return torch.zeros(3, frame_num, size[1], size[0])

    spec = wan_demo.DEMOS["t2v-1.3B"]
    args = wan_demo.parse_args(spec, ["--ckpt_dir", str(t2v_ckpt), "--device", "cpu",
                                      "--output_dir", str(tmp_path)])
    demo = wan_demo.WanDemo(spec, args)
    demo.pipelines[""] = FlakyPipeline()
    progress = []
    job = ("a cat", {}, SIZE, 1, 1, 5.0, 8.0, 4, "")
    with pytest.raises(gr.Error, match=r"Generation failed \(RuntimeError: CUDA out of memory"):
        demo.generate(*job, progress=lambda *a, **k: progress.append((a, k)))
    out, seed, info = demo.generate(*job, progress=lambda *a, **k: progress.append((a, k)))
    assert seed == 4 and mp4_info(out) == (1, 704, 544) and "1 frame" in info
    assert ((1, 1),) in [a for a, _ in progress]  # the progress bar saw the denoising step
    assert sidecar_for(tmp_path, 4)["source"] == "gradio demo"
    assert demo._expander is None  # no prompt model without a click


# ----------------------------------------------------------------------------------------------
# In the browser
# ----------------------------------------------------------------------------------------------

def test_browser_t2v_14B_bad_input_then_video(demos, page, tmp_path):
    server = demos["t2v-14B"].wait_until_up()
    open_demo(page, server)
    # The official defaults of the 14B demo.
    assert page.locator("#resolution input").input_value() == "720*1280"
    assert page.locator("#frames input[type=number]").input_value() == "81"
    assert page.locator("#shift input[type=number]").input_value() == "5"

    page.locator("#generate").click()  # no prompt
    expect_message(page, "Please enter a prompt")
    dismiss_messages(page)

    # 'Prompt enhance' with the default local model, which is not there (and is not
    # downloaded): a warning, the prompt stays, and the demo goes on working.
    page.locator("#prompt textarea").fill("a lighthouse in a storm")
    page.locator("#enhance").click()
    expect_message(page, "Prompt enhance failed")
    assert page.locator("#prompt textarea").input_value() == "a lighthouse in a storm"
    dismiss_messages(page)

    choose(page, "resolution", SIZE)
    fill_common(page, "a lighthouse in a storm", steps=1, seed=11, frames=1)
    page.locator("#generate").click()
    wait_for_seed(page, 11)
    check_video_in_page(page, tmp_path, frames=1, size=(704, 544))
    assert "Seed 11" in page.locator("#result_info").inner_text()
    side = sidecar_for(server.output_dir, 11)
    assert side["task"] == "t2v-14B" and side["prompt"] == "a lighthouse in a storm"
    screenshot(page, tmp_path, "t2v-14B")


def test_browser_t2v_1_3B_enhance_progress_and_video(demos, page, tmp_path):
    server = demos["t2v-1.3B"].wait_until_up()
    open_demo(page, server)
    assert page.locator("#guide_scale input[type=number]").input_value() == "6"
    assert page.locator("#shift input[type=number]").input_value() == "8"

    # 'Prompt enhance' loads the local model only now, and rewrites the prompt.
    fill_common(page, "a red fox in the snow", steps=2, seed=5, frames=5)
    page.get_by_label("EN").check()
    page.locator("#enhance").click()
    page.wait_for_function(
        "document.querySelector('#prompt textarea').value !== 'a red fox in the snow'",
        timeout=120_000)
    enhanced = page.locator("#prompt textarea").input_value()
    assert enhanced.strip()
    assert "Loading prompt-extension model" in server.log()

    choose(page, "resolution", SIZE)
    page.locator("#generate").click()
    # The progress bar follows the denoising steps.
    page.get_by_text(re.compile(r"[12]/2 steps")).first.wait_for(timeout=JOB_TIMEOUT)
    wait_for_seed(page, 5)
    check_video_in_page(page, tmp_path, frames=5, size=(704, 544))
    side = sidecar_for(server.output_dir, 5)
    assert side["prompt"] == enhanced.strip() and side["sample_shift"] == 8.0
    screenshot(page, tmp_path, "t2v-1.3B")


def test_browser_t2i_image(demos, page, tmp_path):
    from PIL import Image

    server = demos["t2i-14B"].wait_until_up()
    open_demo(page, server)
    assert page.locator("#frames").count() == 0  # one image: no frame count
    choose(page, "resolution", SIZE)
    fill_common(page, "一个朴素端庄的美人", steps=1, seed=3)
    page.locator("#generate").click()
    wait_for_seed(page, 3)
    img = page.locator("#result img")
    img.wait_for(timeout=JOB_TIMEOUT)
    png = fetch(page, img.get_attribute("src"), tmp_path / "from_page.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (704, 544)
    assert sidecar_for(server.output_dir, 3)["frame_num"] == 1
    screenshot(page, tmp_path, "t2i-14B")


def test_browser_i2v_bad_input_then_video(demos, page, tmp_path):
    server = demos["i2v-14B"].wait_until_up()
    open_demo(page, server)
    # Only the resolution whose checkpoint was given, with its official shift.
    assert page.locator("#resolution input").input_value() == "480P"
    assert page.locator("#shift input[type=number]").input_value() == "3"
    fill_common(page, "the picture comes alive", steps=1, seed=21, frames=1)

    page.locator("#generate").click()  # no image
    expect_message(page, "Please upload an input image")
    dismiss_messages(page)

    page.locator("#input_image input[type=file]").set_input_files(
        str(ROOT / "examples" / "i2v_input.JPG"))
    page.locator("#input_image img").wait_for()
    choose(page, "resolution", "720P")  # no 720P checkpoint was given
    page.locator("#generate").click()
    expect_message(page, "No 720P model is loaded")
    dismiss_messages(page)

    choose(page, "resolution", "480P")
    page.locator("#generate").click()
    wait_for_seed(page, 21)
    check_video_in_page(page, tmp_path, frames=1, size=(832, 464))
    side = sidecar_for(server.output_dir, 21)
    assert side["size"] == "832*480" and Path(side["image"]).is_file()
    screenshot(page, tmp_path, "i2v-14B")


# ----------------------------------------------------------------------------------------------
# Through gradio_client (the demos' API)
# ----------------------------------------------------------------------------------------------

def _client(server: DemoServer):
    from gradio_client import Client

    return Client(server.url, verbose=False)


@pytest.mark.parametrize("name", ["t2v-14B", "t2v-1.3B"])
def test_client_t2v(demos, name):
    from gradio_client.exceptions import AppError

    server = demos[name].wait_until_up()
    client = _client(server)
    assert {"/generate", "/enhance_prompt"} <= set(client.view_api(print_info=False,
                                                                 return_format="dict")
                                                 ["named_endpoints"])
    job = dict(resolution=SIZE, frames=1, steps=1, guide_scale=5.0, shift=5.0,
               negative_prompt="", api_name="/generate")
    with pytest.raises(AppError, match="frames must be 4n\\+1"):
        client.predict(prompt="a cat", seed=1, **{**job, "frames": 3})
    video, seed, info = client.predict(prompt="a cat on a skateboard", seed=77, **job)
    assert seed == 77 and "Seed 77" in info
    assert mp4_info(video) == (1, 704, 544)
    assert sidecar_for(server.output_dir, 77)["sample_steps"] == 1


def test_client_t2i_and_replay_with_generate(demos, tmp_path):
    """The demo's result is the CLI's: ``generate.py --replay`` of its sidecar, the same PNG."""
    import generate
    import numpy as np
    from gradio_client.exceptions import AppError
    from PIL import Image

    server = demos["t2i-14B"].wait_until_up()
    client = _client(server)
    job = dict(resolution="832*480", steps=1, guide_scale=5.0, shift=5.0, negative_prompt="",
               api_name="/generate")
    with pytest.raises(AppError, match="Please enter a prompt"):
        client.predict(prompt="   ", seed=1, **job)
    image, seed, _ = client.predict(prompt="a red apple", seed=8, **job)
    side = next(p for p in server.output_dir.glob("*.json")
                if json.loads(p.read_text())["base_seed"] == 8)
    again = tmp_path / "again.png"
    assert generate.main(["--replay", str(side), "--save_file", str(again),
                          "--device", "cpu"]) == 0
    with Image.open(image) as a, Image.open(again) as b:
        assert seed == 8 and a.size == (832, 480)
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_client_i2v(demos, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    server = demos["i2v-14B"].wait_until_up()
    client = _client(server)
    image = handle_file(str(write_image(tmp_path / "in.png", (200, 120))))
    job = dict(prompt="waves roll in", frames=1, steps=1, guide_scale=5.0, shift=3.0,
               negative_prompt="", api_name="/generate")
    with pytest.raises(AppError, match="No 720P model is loaded"):
        client.predict(image=image, resolution="720P", seed=1, **job)
    with pytest.raises(AppError, match="Please upload an input image"):
        client.predict(image=None, resolution="480P", seed=1, **job)
    strip = handle_file(str(write_image(tmp_path / "strip.png", (4000, 2))))
    with pytest.raises(AppError, match="too small for an image of 4000x2"):
        client.predict(image=strip, resolution="480P", seed=1, **job)
    video, seed, _ = client.predict(image=image, resolution="480P", seed=9, **job)
    frames, w, h = mp4_info(video)
    assert seed == 9 and frames == 1 and w * h <= 832 * 480 and w > h
    # Prompt enhance without an image is refused politely: the prompt comes back unchanged.
    assert client.predict(prompt="waves", tar_lang="EN", seed=1, image=None,
                          api_name="/enhance_prompt") == "waves"


def test_browser_flf2v_two_images_then_video(demos, page, tmp_path):
    server = demos["flf2v-14B"].wait_until_up()
    open_demo(page, server)
    assert page.locator("#shift input[type=number]").input_value() == "16"  # the task's default
    choose(page, "resolution", "480P")
    fill_common(page, "a bird takes off", steps=1, seed=31, frames=5)
    page.locator("#first_frame input[type=file]").set_input_files(
        str(ROOT / "examples" / "flf2v_input_first_frame.png"))
    page.locator("#first_frame img").wait_for()
    page.locator("#generate").click()  # no last frame
    expect_message(page, "Please upload the last frame")
    dismiss_messages(page)
    page.locator("#last_frame input[type=file]").set_input_files(
        str(ROOT / "examples" / "flf2v_input_last_frame.png"))
    page.locator("#last_frame img").wait_for()
    page.locator("#generate").click()
    wait_for_seed(page, 31)
    check_video_in_page(page, tmp_path, frames=5, size=(832, 464))
    side = sidecar_for(server.output_dir, 31)
    assert side["task"] == "flf2v-14B" and side["size"] == "832*480"
    assert Path(side["first_frame"]).is_file() and Path(side["last_frame"]).is_file()


def test_client_flf2v_named_inputs_and_replay(demos, tmp_path):
    """The API names the two images; the sidecar replays with generate.py."""
    import generate
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    server = demos["flf2v-14B"].wait_until_up()
    client = _client(server)
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"][
        "/generate"]["parameters"]
    assert [p["parameter_name"] for p in params][:3] == ["prompt", "first_frame", "last_frame"]
    first = handle_file(str(write_image(tmp_path / "a.png", (200, 120))))
    last = handle_file(str(write_image(tmp_path / "b.png", (90, 160))))
    job = dict(prompt="a slow zoom", resolution="480P", frames=5, steps=1, guide_scale=5.0,
               shift=16.0, negative_prompt="", api_name="/generate")
    with pytest.raises(AppError, match="Please upload the first frame"):
        client.predict(first_frame=None, last_frame=last, seed=1, **job)
    video, seed, _ = client.predict(first_frame=first, last_frame=last, seed=12, **job)
    n, w, h = mp4_info(video)
    assert seed == 12 and n == 5 and w > h  # the first frame (landscape) sets the aspect
    side = next(p for p in server.output_dir.glob("*.json")
                if json.loads(p.read_text())["base_seed"] == 12)
    again = tmp_path / "again.mp4"
    assert generate.main(["--replay", str(side), "--save_file", str(again),
                          "--device", "cpu"]) == 0
    assert mp4_info(again) == (n, w, h)


# ----------------------------------------------------------------------------------------------
# VACE (gradio/vace.py --model_name vace-1.3B): reference images, named API inputs
# ----------------------------------------------------------------------------------------------

def test_browser_vace_reference_image_then_video(demos, page, tmp_path):
    """One reference image and a prompt: a playable video without the reference frame
    (1 frame: an 832x480 VACE run on the CPU is slow)."""
    server = demos["vace-1.3B"].wait_until_up()
    open_demo(page, server)
    assert page.locator("#resolution input").input_value() == "832*480"
    assert page.locator("#shift input[type=number]").input_value() == "16"
    assert page.locator("#context_scale input[type=number]").input_value() == "1"
    page.locator("#src_ref_image_1 input[type=file]").set_input_files(
        str(write_image(tmp_path / "ref.png", (96, 128))))
    page.locator("#src_ref_image_1 img").wait_for()
    fill_common(page, "a girl in a red coat waves", steps=1, seed=41, frames=1)
    page.locator("#generate").click()
    wait_for_seed(page, 41)
    check_video_in_page(page, tmp_path, frames=1, size=(832, 480))
    side = sidecar_for(server.output_dir, 41)
    assert side["task"] == "vace-1.3B" and side["context_scale"] == 1.0
    assert Path(side["src_ref_images"]).is_file() and len(side["src_ref_images_sha256"]) == 1
    assert "src_video" not in side


def test_client_vace_named_inputs(demos, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    server = demos["vace-1.3B"].wait_until_up()
    client = _client(server)
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"][
        "/generate"]["parameters"]
    assert [p["parameter_name"] for p in params] == [
        "prompt", "src_video", "src_mask", "src_ref_image_1", "src_ref_image_2",
        "src_ref_image_3", "context_scale", "resolution", "frames", "steps", "guide_scale",
        "shift", "seed", "negative_prompt"]
    ref = handle_file(str(write_image(tmp_path / "ref.png", (120, 80))))
    job = dict(prompt="a snake in a lantern-lit street", src_video=None, src_mask=None,
               src_ref_image_2=None, src_ref_image_3=None, resolution="832*480", frames=1,
               steps=1, guide_scale=5.0, shift=16.0, negative_prompt="", api_name="/generate")
    with pytest.raises(AppError, match="less than minimum value 0"):  # the slider checks
        client.predict(src_ref_image_1=ref, context_scale=-1.0, seed=1, **job)
    video, seed, info = client.predict(src_ref_image_1=ref, context_scale=0.5, seed=42, **job)
    assert seed == 42 and mp4_info(video) == (1, 832, 480)
    side = sidecar_for(server.output_dir, 42)
    assert side["context_scale"] == 0.5 and len(side["src_ref_images_sha256"]) == 1
