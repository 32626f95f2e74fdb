"""The shared part of the Wan Gradio demos: command line, model loading, page and handlers.

Each script in this folder only names its task::

    import wan_demo
    wan_demo.main("t2v-1.3B")

The models load once, before the server starts. Generation runs in Gradio's queue one job at a
time (prompt enhancement shares that slot, so two models never compete for the GPU). Bad input is
answered with a message in the page, and a failed job leaves the demo ready for the next one.
Prompt enhancement only loads (or calls) its language model when the button is clicked.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import shutil
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo

# The installed Gradio package, imported before the repository root goes on sys.path (this
# folder is named `gradio` too; being a folder without __init__.py it can never shadow the
# package, but importing first makes that independent of the path order).
import gradio as gr  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

log = logging.getLogger("wan_demo")

MAX_SEED = 2**31 - 1  # the largest seed the official demos offer (exact in the browser, too)
AREAS = {"720P": "1280*720", "480P": "832*480"}  # resolution -> size key of MAX_AREA_CONFIGS
LANGUAGES = ["ZH", "EN"]
MAX_DEMO_IMAGES = 3  # reference-image slots of a list input (VACE)
NO_LORA = "(none)"


@dataclass(frozen=True)
class DemoSpec:
    """What a demo adds to its task's table entry (wan/tasks.py): its page's choices.

    The inputs, the defaults and what it outputs come from the task table; ``None``
    here means the table's value.
    """

    task: str                      # key of the task table
    title: str
    resolutions: tuple[str, ...]   # "W*H" (or "480P"/"720P" for tasks whose size is an area)
    default_resolution: str
    guide_scale: float | None = None
    shift: float | None = None
    shift_max: float = 10.0
    steps: int | None = None
    ckpt_per_resolution: bool = False  # I2V: one checkpoint folder per resolution
    show_optional: bool = False        # also offer the task's optional inputs (VACE)
    # other tasks this demo runs when its command line asks (--task t2v-A14B in the T2V-14B
    # demo; --model_name vace-1.3B in the VACE demo, the official flag)
    variants: tuple[str, ...] = ()
    variant_flag: str = "--task"

    @property
    def entry(self):
        from wan.tasks import TASKS
        return TASKS[self.task]

    @property
    def inputs(self):
        """The task inputs the page offers: the required ones (and with ``show_optional``
        the optional ones); an ``images`` input gets up to :data:`MAX_DEMO_IMAGES` widgets."""
        return tuple(i for i in self.entry.inputs if i.required or self.show_optional)

    @property
    def images(self):
        """The single-image inputs (the prompt enhancer sees the first one)."""
        return tuple(i for i in self.inputs if i.kind == "image")

    @property
    def options(self):
        """The task's numeric options whose input is offered (VACE: the context scale)."""
        flags = {i.flag for i in self.inputs}
        return tuple(o for o in self.entry.options if o.needs is None or o.needs in flags)

    def widget_names(self, inp) -> list[str]:
        """The API names of an input's widgets (``src_ref_image_1``... for a list)."""
        if inp.kind != "images":
            return [inp.flag]
        n = min(inp.limit or MAX_DEMO_IMAGES, MAX_DEMO_IMAGES)
        return [f"{inp.flag.rstrip('s')}_{k + 1}" for k in range(n)]

    @property
    def uses_area(self) -> bool:
        return self.entry.size_is_area

    @property
    def is_image(self) -> bool:
        return self.entry.is_image

    @property
    def noun(self) -> str:
        return "image" if self.is_image else "video"

    def default(self, name: str):
        """A sampling default: the demo's own, else the task table's."""
        own = getattr(self, name)
        return own if own is not None else getattr(self.entry, name)

    def shift_for(self, resolution: str) -> float:
        """The default shift at ``resolution`` (the official defaults differ at 480P)."""
        if self.shift is not None:
            return self.shift
        return self.entry.default_shift(AREAS.get(resolution, resolution))


_T2V_14B_SIZES = ("720*1280", "1280*720", "960*960", "1088*832", "832*1088", "480*832",
                  "832*480", "624*624", "704*544", "544*704")
_T2V_1_3B_SIZES = ("480*832", "832*480", "624*624", "704*544", "544*704")

_A14B_SIZES = ("720*1280", "1280*720", "480*832", "832*480")

DEMOS: dict[str, DemoSpec] = {
    "t2v-14B": DemoSpec("t2v-14B", "Wan2.1 text-to-video (14B)", _T2V_14B_SIZES, "720*1280",
                        variants=("t2v-A14B",)),
    "t2v-1.3B": DemoSpec("t2v-1.3B", "Wan2.1 text-to-video (1.3B)", _T2V_1_3B_SIZES, "480*832",
                         guide_scale=6.0, shift=8.0, shift_max=20.0, steps=50),
    "t2i-14B": DemoSpec("t2i-14B", "Wan2.1 text-to-image (14B)", _T2V_14B_SIZES, "720*1280"),
    "i2v-14B": DemoSpec("i2v-14B", "Wan2.1 image-to-video (14B)", ("720P", "480P"), "720P",
                        ckpt_per_resolution=True, variants=("i2v-A14B",)),
    "flf2v-14B": DemoSpec("flf2v-14B", "Wan2.1 first-last-frame-to-video (14B)",
                          ("720P", "480P"), "720P", shift_max=20.0),
    "vace-14B": DemoSpec("vace-14B", "Wan2.1 VACE: video creation and editing (14B)",
                         ("1280*720", "720*1280", "832*480", "480*832"), "1280*720",
                         shift_max=20.0, show_optional=True, variants=("vace-1.3B",),
                         variant_flag="--model_name"),
    "vace-1.3B": DemoSpec("vace-1.3B", "Wan2.1 VACE: video creation and editing (1.3B)",
                          ("832*480", "480*832"), "832*480", shift_max=20.0,
                          show_optional=True, variants=("vace-14B",),
                          variant_flag="--model_name"),
    # Wan2.2
    "t2v-A14B": DemoSpec("t2v-A14B", "Wan2.2 text-to-video (A14B, two experts)", _A14B_SIZES,
                         "1280*720", variants=("t2v-14B",)),
    "i2v-A14B": DemoSpec("i2v-A14B", "Wan2.2 image-to-video (A14B, two experts)",
                         ("720P", "480P"), "720P", variants=("i2v-14B",)),
    "ti2v-5B": DemoSpec("ti2v-5B", "Wan2.2 text-image-to-video (5B)", ("1280*704", "704*1280"),
                        "1280*704", show_optional=True),
}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def build_parser(spec: DemoSpec) -> argparse.ArgumentParser:
    """The command line of one demo (the official flags plus server and device options)."""
    from wan.utils.utils import str2bool

    p = argparse.ArgumentParser(description=f"{spec.title}: a local web demo (Gradio).")
    if spec.variants:
        p.add_argument(spec.variant_flag, dest="variant", default=spec.task,
                       choices=[spec.task, *spec.variants],
                       help=f"the model to run (default {spec.task})")
    if spec.ckpt_per_resolution:
        p.add_argument("--ckpt_dir_720p", default=None, help="the Wan2.1-I2V-14B-720P folder")
        p.add_argument("--ckpt_dir_480p", default=None, help="the Wan2.1-I2V-14B-480P folder")
    else:
        # --ckpt_dir_720p is the official FLF2V demo's name for the same folder.
        names = ["--ckpt_dir"] + (["--ckpt_dir_720p"] if spec.uses_area else [])
        p.add_argument(*names, dest="ckpt_dir", default="cache",
                       help=f"the downloaded checkpoint folder ({spec.entry.checkpoint})")
    p.add_argument("--prompt_extend_method", default="local_qwen",
                   choices=["dashscope", "local_qwen"],
                   help="how 'Prompt enhance' rewrites the prompt (nothing is loaded until used)")
    p.add_argument("--prompt_extend_model", default=None,
                   help="model for prompt enhancement (DashScope name, hub name or local folder)")
    p.add_argument("--prompt_extend_keep_loaded", action="store_true",
                   help="keep the local prompt-enhancement model in memory between clicks")
    p.add_argument("--server_name", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the demo "
                        "to the network)")
    p.add_argument("--server_port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:N, mps or cpu (default: CUDA if available, else MPS, else CPU)")
    p.add_argument("--offload_model", type=str2bool, default=True,
                   help="move each model off the GPU after use (default True, as the official "
                        "demos)")
    p.add_argument("--t5_cpu", action="store_true", help="run the T5 text encoder on the CPU")
    p.add_argument("--output_dir", default="outputs",
                   help="where results and their JSON sidecars are written (default ./outputs)")
    p.add_argument("--lora_dir", default=None,
                   help="a folder of LoRA files (.safetensors, .pt, .ckpt): the page offers them "
                        "with a strength slider and switches between jobs without reloading")
    return p


def parse_args(spec: DemoSpec, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; a bad one exits with one line (argparse's error)."""
    parser = build_parser(spec)
    args = parser.parse_args(argv)
    folders = checkpoint_folders(spec, args)
    if not folders:
        parser.error("give at least one of --ckpt_dir_720p and --ckpt_dir_480p")
    for resolution, folder in folders.items():
        if not Path(folder).is_dir():
            flag = f"--ckpt_dir_{resolution.lower()}" if spec.ckpt_per_resolution else "--ckpt_dir"
            parser.error(f"checkpoint folder not found: '{folder}' ({flag})")
    return args


def checkpoint_folders(spec: DemoSpec, args: argparse.Namespace) -> dict[str, str]:
    """Checkpoint folder per resolution for I2V (only those given); ``{"": folder}`` otherwise."""
    if not spec.ckpt_per_resolution:
        return {"": args.ckpt_dir}
    given = {"720P": args.ckpt_dir_720p, "480P": args.ckpt_dir_480p}
    return {res: folder for res, folder in given.items() if folder}


def pick_device(name: str | None) -> torch.device:
    """``--device`` as a torch device (CUDA, else MPS, else CPU when not given)."""
    from wan.utils.device import resolve_device

    if name is None:
        return resolve_device(None)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for but CUDA is not available here", file=sys.stderr)
        raise SystemExit(2)
    return device


# ----------------------------------------------------------------------------------------------
# The demo: models, handlers, page
# ----------------------------------------------------------------------------------------------

def _unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, with ``_1``, ``_2``... before the suffix if that file exists."""
    path = folder / name
    n = 1
    while path.exists():
        path = folder / f"{Path(name).stem}_{n}{Path(name).suffix}"
        n += 1
    return path


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _remove(paths: list[Path]) -> None:
    """Remove the input copies of a job that failed."""
    for path in paths:
        path.unlink(missing_ok=True)


def _fail(message: str) -> gr.Error:
    """A user-facing error shown in the page (without a traceback in the server log)."""
    return gr.Error(message, print_exception=False)


@dataclass
class Job:
    """One checked generation request."""

    prompt: str
    negative_prompt: str
    resolution: str
    frames: int
    steps: int
    guide_scale: float
    shift: float
    seed: int
    inputs: dict[str, Any]  # input flag -> PIL image, video path or list of PIL images
    options: dict[str, float]  # option flag -> value (VACE: context_scale)


class WanDemo:
    """One demo: its loaded pipelines, its handlers and its page."""

    def __init__(self, spec: DemoSpec, args: argparse.Namespace):
        from wan.configs import WAN_CONFIGS

        self.spec = spec
        self.args = args
        self.config = WAN_CONFIGS[spec.task]
        self.device = pick_device(args.device)
        self.output_dir = Path(args.output_dir).resolve()
        self.folders = checkpoint_folders(spec, args)
        self.pipelines: dict[str, Any] = {}
        self._expander = None

    # -- models -------------------------------------------------------------------------------

    def load_models(self) -> None:
        """Load every given checkpoint once (before the server starts)."""
        pipeline_cls = self.spec.entry.pipeline_class()
        for resolution, folder in self.folders.items():
            what = f"{self.spec.task} {resolution}".strip()
            log.info("Loading %s from %s on %s ...", what, folder, self.device)
            t0 = time.perf_counter()
            self.pipelines[resolution] = pipeline_cls(
                config=self.config, checkpoint_dir=folder, device_id=self.device, rank=0,
                t5_cpu=self.args.t5_cpu)
            log.info("Loaded %s in %.1f s", what, time.perf_counter() - t0)

    @property
    def resolutions(self) -> list[str]:
        """The resolutions offered in the page (for I2V: those with a loaded checkpoint)."""
        if self.spec.ckpt_per_resolution:
            return [r for r in self.spec.resolutions if r in self.folders]
        return list(self.spec.resolutions)

    def _pipeline_for(self, resolution: str):
        if resolution not in self.spec.resolutions:
            raise _fail(f"Unknown resolution '{resolution}': choose one of "
                        f"{', '.join(self.resolutions)}.")
        if not self.spec.ckpt_per_resolution:
            return self.pipelines[""]
        if resolution not in self.pipelines:
            raise _fail(f"No {resolution} model is loaded: restart the demo with "
                        f"--ckpt_dir_{resolution.lower()} to use it, or choose "
                        f"{' or '.join(self.resolutions)}.")
        return self.pipelines[resolution]

    # -- generation ---------------------------------------------------------------------------

    def generate(self, prompt: str, inputs: dict[str, Any], resolution: str, frames: float,
                 steps: float, guide_scale: float, shift: float, seed: float,
                 negative_prompt: str, options: dict[str, float] | None = None,
                 lora: tuple[str | None, float] | None = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, int, str]:
        """Generate from the page's inputs; returns (file, seed used, a line about the result).

        ``inputs`` maps each offered input of the task (its flag: ``image``,
        ``first_frame``, ``src_video``...) to the upload (a PIL image, a video path, or
        for ``images`` a list) or None; ``options`` the numeric options (VACE's
        ``context_scale``).
        """
        job = self._check_inputs(prompt, inputs, options or {}, resolution, frames, steps,
                                 guide_scale, shift, seed, negative_prompt)
        pipe = self._pipeline_for(job.resolution)
        if lora is not None:
            if lora[1] is None or not -10 <= float(lora[1]) <= 10:
                raise _fail(f"The LoRA strength must be a number in [-10, 10]; got {lora[1]}.")
            try:
                self._set_lora(pipe, *lora)
            except ValueError as e:  # a LoRA of another model
                raise _fail(str(e)) from None
        progress(0, desc="Encoding the prompt")

        def on_step(i: int, total: int) -> None:
            progress((i, total), desc="Denoising", unit="steps")

        t0 = time.perf_counter()
        path = _unique_path(self.output_dir, self._file_name(job))
        kept: list[Path] = []
        try:
            kept = self._keep_inputs(job, path)
            video = self._run(pipe, job, on_step, kept)
            progress(1.0, desc=f"Writing the {self.spec.noun}")
            out = self._save(video, job, path, kept, time.perf_counter() - t0)
        except ValueError as e:  # the pipelines' own checks of the input
            _remove(kept)
            raise _fail(str(e)) from None
        except Exception as e:  # noqa: BLE001 - shown in the page; the demo stays usable
            _remove(kept)
            log.exception("Generation failed")
            self._release_memory()
            raise _fail(f"Generation failed ({type(e).__name__}: {e}). The demo is ready "
                        f"for the next request.") from None
        h, w = video.shape[-2:]
        frames_out = video.shape[1]
        info = (f"Seed {job.seed} · {w}×{h} · {_count(frames_out, 'frame')} · "
                f"{_count(job.steps, 'step')} · {time.perf_counter() - t0:.1f} s · "
                f"saved as `{out}`")
        log.info("Done: %s", info)
        return str(out), job.seed, info

    def api_names(self) -> list[str]:
        """The handler's parameters as Gradio and its API see them: ``prompt``, the input
        widgets (``image``; ``first_frame, last_frame``; ``src_video, src_mask,
        src_ref_image_1...``), the options, then the sampling settings (and, with
        ``--lora_dir``, ``lora`` and ``lora_strength``)."""
        widgets = [n for inp in self.spec.inputs for n in self.spec.widget_names(inp)]
        lora = ["lora", "lora_strength"] if self.lora_files else []
        return ["prompt", *widgets, *(o.flag for o in self.spec.options), "resolution",
                "frames", "steps", "guide_scale", "shift", "seed", "negative_prompt", *lora]

    @property
    def lora_files(self) -> list[str]:
        """The LoRA files of ``--lora_dir`` (names, sorted)."""
        folder = getattr(self.args, "lora_dir", None)
        if not folder:
            return []
        return sorted(p.name for p in Path(folder).iterdir()
                      if p.suffix in (".safetensors", ".pt", ".ckpt", ".pth"))

    def _set_lora(self, pipe, name: str | None, strength: float) -> None:
        """Make ``name`` at ``strength`` the pipeline's LoRA (none: the base weights); the
        base weights are restored bit for bit in between, so nothing is reloaded."""
        want = [] if not name or name == NO_LORA else [(name, float(strength))]
        have = [(Path(x["path"]).name, x["scale"]) for x in pipe.loras]
        if want == have:
            return
        if pipe.loras:
            pipe.unload_loras()
        if want:
            if name not in self.lora_files:
                raise _fail(f"Unknown LoRA '{name}': choose one of {', '.join(self.lora_files)}.")
            pipe.load_lora(Path(self.args.lora_dir) / name, float(strength))

    def api_handler(self) -> Callable[..., tuple[str, int, str]]:
        """:meth:`generate` with one named parameter per widget (see :meth:`api_names`)."""
        names = self.api_names()
        spec = self.spec

        def handler(*values, progress=gr.Progress()):
            got = dict(zip(names, values))
            inputs = {}
            for inp in spec.inputs:
                parts = [got[n] for n in spec.widget_names(inp)]
                inputs[inp.flag] = [v for v in parts if v is not None] or None \
                    if inp.kind == "images" else parts[0]
            options = {o.flag: got[o.flag] for o in spec.options}
            lora = (got["lora"], got["lora_strength"]) if "lora" in got else None
            return self.generate(got["prompt"], inputs, got["resolution"], got["frames"],
                                 got["steps"], got["guide_scale"], got["shift"], got["seed"],
                                 got["negative_prompt"], options, lora=lora, progress=progress)

        P = inspect.Parameter
        params = [P(n, P.POSITIONAL_OR_KEYWORD) for n in names]
        params.append(P("progress", P.KEYWORD_ONLY, default=gr.Progress()))
        handler.__signature__ = inspect.Signature(params)
        handler.__name__ = "generate"
        return handler

    def _check_inputs(self, prompt: str | None, inputs: dict[str, Any],
                      options: dict[str, float], resolution: str, frames: float, steps: float,
                      guide_scale: float, shift: float, seed: float,
                      negative_prompt: str | None) -> Job:
        """Reject bad input with a clear message; a random seed is drawn here for -1."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise _fail(f"Please enter a prompt: describe the {self.spec.noun} to generate.")
        for inp in self.spec.inputs:
            value = inputs.get(inp.flag)
            if value is None and inp.required:
                raise _fail(inp.missing or f"Please upload the {inp.label.lower()}.")
            if value is not None and inp.needs and inputs.get(inp.needs) is None:
                raise _fail(f"The {inp.label.lower()} needs a {self._label(inp.needs)} too.")
        for opt in self.spec.options:
            value = options.get(opt.flag)
            if value is None or not opt.in_range(float(value)):
                raise _fail(f"The {opt.flag.replace('_', ' ')} must be in {opt.range_text()}; "
                            f"got {value}.")
        self._pipeline_for(resolution)
        default_frames = self.spec.entry.frames
        frames = 1 if self.spec.is_image else int(frames if frames is not None else default_frames)
        if frames < 1 or (frames - 1) % 4:
            raise _fail(f"The number of frames must be 4n+1 (1, 5, 9, ..., 81); got {frames}.")
        steps = int(steps or 0)
        if steps < 1:
            raise _fail(f"Use at least 1 diffusion step; got {steps}.")
        if guide_scale is None or guide_scale < 0:
            raise _fail(f"The guide scale must be 0 or more; got {guide_scale}.")
        if shift is None or shift <= 0:
            raise _fail(f"The shift must be greater than 0; got {shift}.")
        seed = -1 if seed is None else int(seed)
        if seed > MAX_SEED:
            raise _fail(f"The seed must be at most {MAX_SEED} (or -1 for a random one).")

        def rgb(v):
            return v.convert("RGB") if hasattr(v, "convert") else v
        kept = {}
        for inp in self.spec.inputs:
            value = inputs.get(inp.flag)
            kept[inp.flag] = None if value is None else \
                [rgb(v) for v in value] if inp.kind == "images" else rgb(value)
        return Job(prompt=prompt, negative_prompt=negative_prompt or "", resolution=resolution,
                   frames=frames, steps=steps, guide_scale=float(guide_scale),
                   shift=float(shift), seed=seed if seed >= 0 else random.randint(0, MAX_SEED),
                   inputs=kept, options={k: float(v) for k, v in options.items()})

    def _label(self, flag: str) -> str:
        inp = self.spec.entry.input(flag)
        return (inp.label if inp is not None and inp.label else flag).lower()

    def _size_key(self, resolution: str) -> str:
        """The ``--size`` value of ``resolution`` (an area key for the image tasks)."""
        return AREAS[resolution] if self.spec.uses_area else resolution

    def _file_name(self, job: Job) -> str:
        from wan.utils.io import default_save_file
        return default_save_file(self.spec.task, self._size_key(job.resolution), 1, 1, job.prompt)

    def _keep_inputs(self, job: Job, out: Path) -> list[Path]:
        """Copy every input next to the result (PNG images, the uploaded clips), for the
        sidecar and ``--replay``; returns the files written."""
        from wan.utils.io import atomic_path

        written: list[Path] = []
        for inp in self.spec.inputs:
            value = job.inputs.get(inp.flag)
            if value is None:
                continue
            suffix = "input" if inp.flag == "image" else inp.flag
            values = value if inp.kind == "images" else [value]
            for k, v in enumerate(values):
                tag = f"_{k + 1}" if inp.kind == "images" else ""
                if inp.kind == "video":
                    path = out.with_name(f"{out.stem}_{suffix}{tag}{Path(str(v)).suffix or '.mp4'}")
                    with atomic_path(path) as tmp:
                        shutil.copyfile(v, tmp)
                else:
                    path = out.with_name(f"{out.stem}_{suffix}{tag}.png")
                    with atomic_path(path) as tmp:
                        v.save(tmp, format="PNG")
                written.append(path)
        return written

    def _run(self, pipe, job: Job, on_step: Callable[[int, int], None],
             kept: list[Path]) -> torch.Tensor:
        """Call the pipeline: ``[3, F, H, W]`` in [-1, 1]."""
        from wan.configs import MAX_AREA_CONFIGS

        common = dict(frame_num=job.frames, shift=job.shift, sampling_steps=job.steps,
                      guide_scale=job.guide_scale, n_prompt=job.negative_prompt, seed=job.seed,
                      offload_model=self.args.offload_model, on_step=on_step)
        log.info("Generating (%s, %s, %d frames, %d steps, guide %.2f, shift %.2f, seed %d): %s",
                 self.spec.task, job.resolution, job.frames, job.steps, job.guide_scale,
                 job.shift, job.seed, job.prompt)
        size = self._size_key(job.resolution)
        width, height = (int(v) for v in size.split("*"))
        entry = self.spec.entry
        if entry.prepare:  # the pipeline reads the files itself (VACE), as on the command line
            paths = self._input_paths(job, kept)
            kwargs = {entry.input(f).param: v for f, v in paths.items()}
            kwargs.update({o.param: job.options[o.flag] for o in self.spec.options})
            inputs, used = getattr(pipe, entry.prepare)(**kwargs, frame_num=job.frames,
                                                        size=(width, height))
            common["frame_num"] = used["frame_num"]
            return pipe.generate(job.prompt, **inputs, size=(width, height), **common)
        images = {i.param: job.inputs[i.flag] for i in self.spec.inputs}
        if self.spec.uses_area:
            return pipe.generate(job.prompt, **images, max_area=MAX_AREA_CONFIGS[size], **common)
        return pipe.generate(job.prompt, **images, size=(width, height), **common)

    def _input_paths(self, job: Job, kept: list[Path]) -> dict[str, Any]:
        """The kept copies of the inputs, per flag (a list for ``images``)."""
        out, files = {}, iter(kept)
        for inp in self.spec.inputs:
            value = job.inputs.get(inp.flag)
            if value is None:
                continue
            n = len(value) if inp.kind == "images" else 1
            paths = [str(next(files)) for _ in range(n)]
            out[inp.flag] = paths if inp.kind == "images" else paths[0]
        return out

    def _save(self, video: torch.Tensor, job: Job, path: Path, kept: list[Path],
              seconds: float) -> Path:
        """Write the result and its sidecar (atomically) into the output folder."""
        from wan.utils.io import save_image, save_video, sha256_file, write_sidecar

        size = self._size_key(job.resolution)
        fps = self.config.sample_fps
        out = save_image(video[:, 0], path) if self.spec.is_image else \
            save_video(video, path, fps=fps)
        folder = self.folders[job.resolution if self.spec.ckpt_per_resolution else ""]
        settings = dict(
            task=self.spec.task, size=size, frame_num=int(video.shape[1]), prompt=job.prompt,
            negative_prompt=job.negative_prompt or self.config.sample_neg_prompt,
            base_seed=job.seed, sample_solver="unipc", sample_steps=job.steps,
            sample_shift=job.shift, sample_guide_scale=job.guide_scale, fps=fps,
            ckpt_dir=str(Path(folder).resolve()), device=str(self.device),
            offload_model=self.args.offload_model, t5_cpu=self.args.t5_cpu,
            seconds=round(seconds, 2), source="gradio demo", **job.options,
            loras=[dict(x, path=str(Path(x["path"]).resolve())) for x in
                   getattr(self._pipeline_for(job.resolution), "loras", [])])
        for flag, value in self._input_paths(job, kept).items():
            many = isinstance(value, list)
            settings[flag] = ",".join(value) if many else value
            digests = [sha256_file(v) for v in (value if many else [value])]
            settings[f"{flag}_sha256"] = digests if many else digests[0]
        if self.spec.uses_area:
            settings["resolution"] = job.resolution
        write_sidecar(out, settings)
        return out

    def _release_memory(self) -> None:
        """After a failed job: give cached accelerator memory back."""
        from wan.utils.device import empty_cache

        empty_cache(self.device)

    # -- prompt enhancement --------------------------------------------------------------------

    def enhance_prompt(self, prompt: str, tar_lang: str, seed: float, image: Any = None) -> str:
        """Rewrite the prompt with the prompt-extension model; on failure keep it (and say why)."""
        original = prompt or ""
        if not original.strip():
            gr.Warning("Type a prompt first: 'Prompt enhance' rewrites it.")
            return original
        if self.spec.images and image is None:
            gr.Warning(f"Upload the {self.spec.images[0].label.lower()} first: the prompt is "
                       f"rewritten to match it.")
            return original
        expander = self._get_expander()
        if expander is None:
            return original
        seed = -1 if seed is None or seed < 0 else int(seed)
        out = expander(original.strip(), tar_lang=(tar_lang or "ZH").lower(), image=image,
                       seed=seed)
        if not out.status:
            log.warning("Prompt enhancement failed: %s", out.message)
            gr.Warning(f"Prompt enhance failed: {out.message.rstrip('.')}. "
                       f"The prompt is unchanged.")
            return original
        log.info("Enhanced prompt: %s", out.prompt)
        return out.prompt

    def _get_expander(self):
        """The prompt expander, made on first use (a local model loads on its first call)."""
        if self._expander is not None:
            return self._expander
        from wan.utils.prompt_extend import make_prompt_expander

        method = self.args.prompt_extend_method
        extra = {"keep_loaded": self.args.prompt_extend_keep_loaded} \
            if method == "local_qwen" else {}
        try:
            self._expander = make_prompt_expander(method, self.args.prompt_extend_model,
                                                  is_vl=bool(self.spec.images), device=self.device,
                                                  **extra)
        except Exception as e:  # noqa: BLE001 - e.g. DASH_API_KEY missing
            log.warning("Prompt enhancement is unavailable: %s", e)
            gr.Warning(f"Prompt enhance is unavailable: {e}")
            return None
        return self._expander

    # -- page ---------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        """The page: inputs on the left, the result on the right."""
        spec = self.spec
        with gr.Blocks(title=spec.title) as page:
            gr.Markdown(f"# {spec.title}\nWan: open and advanced large-scale video generative "
                        f"models.")
            with gr.Row():
                with gr.Column():
                    inputs = self._input_widgets()
                    generate_button = gr.Button(f"Generate {spec.noun}", variant="primary",
                                                elem_id="generate")
                with gr.Column():
                    result = self._result_widget()
                    seed_used = gr.Number(label="Seed used", precision=0, interactive=False,
                                          elem_id="seed_used")
                    info = gr.Markdown(label="Details", show_label=False, elem_id="result_info")
            self._wire(inputs, generate_button, result, seed_used, info)
        return page

    def _input_widgets(self) -> dict[str, Any]:
        spec = self.spec
        w: dict[str, Any] = {}
        if spec.uses_area:
            resolutions = self.resolutions
            info = "only the resolutions whose checkpoint was given" \
                if spec.ckpt_per_resolution else "the area; the first image sets the aspect"
            w["resolution"] = gr.Dropdown(
                resolutions, value=resolutions[0], label="Resolution", allow_custom_value=True,
                info=info, elem_id="resolution")
        w["inputs"] = []  # in the order of WanDemo.api_names
        with gr.Row():
            for inp in spec.inputs:
                for name in spec.widget_names(inp):
                    elem = "input_image" if inp.flag == "image" else name
                    label = inp.label if inp.kind != "images" else \
                        f"{inp.label} {name.rsplit('_', 1)[1]} (optional)"
                    if inp.kind == "video":
                        optional = "" if inp.required else " (optional)"
                        widget = gr.Video(label=inp.label + optional, elem_id=elem,
                                          sources=["upload"])
                    else:
                        widget = gr.Image(type="pil", label=label, elem_id=elem)
                    w["inputs"].append(widget)
        w["options"] = [gr.Slider(o.low, 2.0 if o.high == float("inf") else o.high,
                                  value=o.default, step=0.05, elem_id=o.flag,
                                  label=o.flag.replace("_", " ").capitalize())
                        for o in spec.options]
        w["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id="prompt",
                                 placeholder=f"Describe the {spec.noun} you want to generate")
        with gr.Row():
            w["tar_lang"] = gr.Radio(LANGUAGES, value="ZH", elem_id="tar_lang",
                                     label="Target language of prompt enhance")
            w["enhance"] = gr.Button("Prompt enhance", elem_id="enhance")
        with gr.Accordion("Advanced options", open=True):
            if not spec.uses_area:
                w["resolution"] = gr.Dropdown(
                    self.resolutions, value=spec.default_resolution, elem_id="resolution",
                    label="Resolution (width*height)", allow_custom_value=True)
            if spec.is_image:
                w["frames"] = gr.State(1)
            else:
                w["frames"] = gr.Slider(1, 81, value=spec.entry.frames, step=4,
                                        label="Frames (4n+1)", elem_id="frames")
            first = self.resolutions[0] if spec.uses_area else spec.default_resolution
            with gr.Row():
                w["steps"] = gr.Slider(1, 1000, value=spec.default("steps"), step=1,
                                       elem_id="steps", label="Diffusion steps")
                w["guide_scale"] = gr.Slider(0, 20, value=spec.default("guide_scale"), step=0.5,
                                             label="Guide scale", elem_id="guide_scale")
            with gr.Row():
                w["shift"] = gr.Slider(0, spec.shift_max, value=spec.shift_for(first), step=0.5,
                                       label="Shift", elem_id="shift")
                w["seed"] = gr.Number(-1, precision=0, minimum=-1, maximum=MAX_SEED,
                                      label="Seed (-1 = random)", elem_id="seed")
            w["negative_prompt"] = gr.Textbox(
                "", label="Negative prompt", lines=2, elem_id="negative_prompt",
                placeholder="What to avoid (empty: the official negative prompt)")
            w["lora"] = []
            if self.lora_files:
                with gr.Row():
                    w["lora"] = [
                        gr.Dropdown([NO_LORA, *self.lora_files], value=NO_LORA, label="LoRA",
                                    elem_id="lora"),
                        gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="LoRA strength",
                                  elem_id="lora_strength")]
        return w

    def _result_widget(self):
        if self.spec.is_image:
            return gr.Image(label="Generated image", type="filepath", interactive=False,
                            elem_id="result")
        return gr.Video(label="Generated video", interactive=False, elem_id="result")

    def _wire(self, w: dict[str, Any], generate_button, result, seed_used, info) -> None:
        """Connect the buttons. Generation and enhancement share one queue slot."""
        images = [x for x, n in zip(w["inputs"], self.api_names()[1:])
                  if n in {i.flag for i in self.spec.images}]
        first_image = images[0] if images else gr.State(None)
        w["enhance"].click(
            self.enhance_prompt, inputs=[w["prompt"], w["tar_lang"], w["seed"], first_image],
            outputs=[w["prompt"]], api_name="enhance_prompt", concurrency_limit=1,
            concurrency_id="model")
        generate_button.click(
            self.api_handler(),
            inputs=[w["prompt"], *w["inputs"], *w["options"], w["resolution"], w["frames"],
                    w["steps"], w["guide_scale"], w["shift"], w["seed"], w["negative_prompt"],
                    *w["lora"]],
            outputs=[result, seed_used, info], api_name="generate", concurrency_limit=1,
            concurrency_id="model")
        if self.spec.uses_area:  # the official default shift may differ between 480P and 720P
            w["resolution"].input(self.spec.shift_for, inputs=[w["resolution"]],
                                  outputs=[w["shift"]], api_visibility="private", queue=False)


# ----------------------------------------------------------------------------------------------

THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"],
                   font_mono=["ui-monospace", "Consolas", "monospace"])


def _init_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s",
                        handlers=[logging.StreamHandler(stream=sys.stdout)], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests


def _variant(spec: DemoSpec, argv: list[str] | None) -> DemoSpec:
    """The spec of the model the command line asks for (``--task`` / ``--model_name``)."""
    if not spec.variants:
        return spec
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(spec.variant_flag, dest="variant", default=spec.task)
    known, _ = pre.parse_known_args(argv)
    return DEMOS[known.variant] if known.variant in spec.variants else spec


def main(task: str, argv: list[str] | None = None) -> None:
    """Run the demo of ``task`` (a key of :data:`DEMOS`): parse, load, serve."""
    spec = _variant(DEMOS[task], argv)  # e.g. --task t2v-A14B in the T2V-14B demo
    args = parse_args(spec, argv)
    _init_logging()
    demo = WanDemo(spec, args)
    try:
        demo.load_models()
    except (ValueError, FileNotFoundError) as e:  # a broken or mixed-up checkpoint folder
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    page = demo.build()
    page.queue(default_concurrency_limit=1)
    log.info("Serving %s on http://%s:%d", spec.title, args.server_name, args.server_port)
    page.launch(server_name=args.server_name, server_port=args.server_port, share=False,
                show_error=True, allowed_paths=[str(demo.output_dir)], ssr_mode=False,
                theme=gr.themes.Default(**THEME_FONTS))
