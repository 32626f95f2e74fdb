"""The task table: one entry per task that ``generate.py`` and the demos offer.

An entry says everything about a task that is data rather than code: which
config and pipeline run it, which inputs it takes (and their example files),
its sizes and default sampling settings, what it outputs, and which settings
its sidecar stores. ``generate.py`` builds its flags, defaults, validation,
dispatch and sidecar from it, the Gradio demos their widgets, and the README
its task table (``python -m wan.tasks`` prints that table). A task is its
entry here plus the code that builds its conditioning (its pipeline class).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .configs import SUPPORTED_SIZES, WAN_CONFIGS

__all__ = ["TaskInput", "TaskOption", "Task", "TASKS", "get_task", "input_flags", "option_flags",
           "markdown_table", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TaskInput:
    """A conditioning input of a task, given on the command line as ``--<flag> PATH``."""

    flag: str                    # command-line flag without "--"; also the sidecar key
    kind: str                    # "image", "video", or "images" (comma-separated paths)
    param: str                   # keyword of the pipeline's generate()
    help: str
    required: bool = True        # the task cannot run without it (the example stands in)
    example: str | None = None   # file under the repository used when the flag is absent
    group: str | None = None     # inputs of one group are given together or not at all
    label: str = ""              # the demo widget's label
    missing: str = ""            # the demo's message when it is not given
    needs: str | None = None     # another input flag that must be given with this one
    limit: int | None = None     # "images": at most this many

    def paths(self, value: str | None) -> list[str]:
        """The file paths of a given value (one, or a comma-separated list for "images")."""
        if value is None:
            return []
        if self.kind == "images":
            return [p.strip() for p in str(value).split(",") if p.strip()]
        return [str(value)]

    @property
    def example_value(self) -> str | None:
        """The example as the flag's value (absolute paths; comma-separated for "images")."""
        if not self.example:
            return None
        return ",".join(str(REPO_ROOT / e.strip()) for e in self.example.split(","))


@dataclass(frozen=True)
class TaskOption:
    """A numeric setting that belongs to one input (``--strength`` to ``--src_video``)."""

    flag: str
    param: str
    default: float
    help: str
    needs: str | None            # the input flag it applies to (None: the whole task)
    low: float                   # valid range: low < value <= high (low <= value: low_inclusive)
    high: float
    low_inclusive: bool = False

    def in_range(self, value: float) -> bool:
        above = value >= self.low if self.low_inclusive else value > self.low
        return above and value <= self.high

    def range_text(self) -> str:
        high = "inf)" if self.high == float("inf") else f"{self.high:g}]"
        return f"{'[' if self.low_inclusive else '('}{self.low:g}, {high}"


@dataclass(frozen=True)
class Task:
    """One task of the command line: its model, inputs, sizes and defaults."""

    name: str                    # the --task value (a key of WAN_CONFIGS)
    pipeline: str                # class name in the ``wan`` package
    title: str                   # what it does, in a few words
    checkpoint: str              # the release's checkpoint folder(s)
    frames: int                  # default --frame_num
    steps: int                   # default --sample_steps
    shift: float                 # default --sample_shift
    guide_scale: float | tuple[float, float] = 5.0  # default --sample_guide_scale ((low, high)
    #                                                  for the two Wan2.2 A14B experts)
    shift_480p: float | None = None  # default shift at the 480P sizes, where it differs
    size_is_area: bool = False   # --size is an area; the input image sets the aspect ratio
    size_and_area: bool = False  # generate() takes both (TI2V: the size, or with an image the area)
    output: str = "video"        # "video" (MP4) or "image" (PNG)
    inputs: tuple[TaskInput, ...] = ()
    options: tuple[TaskOption, ...] = ()
    example_prompt: str = ""
    notes: str = ""              # for the README row
    # A pipeline method that turns the input files into generate() keywords (VACE reads
    # its clips itself, as the official prepare_source); None: generate.py loads them.
    prepare: str | None = None

    @property
    def config(self):
        return WAN_CONFIGS[self.name]

    @property
    def sizes(self) -> tuple[str, ...]:
        return SUPPORTED_SIZES[self.name]

    @property
    def is_image(self) -> bool:
        return self.output == "image"

    @property
    def image_inputs(self) -> tuple[TaskInput, ...]:
        return tuple(i for i in self.inputs if i.kind == "image")

    def size_kwargs(self, size: str) -> dict:
        """The ``generate()`` keywords of ``--size``: ``size=(w, h)`` and/or ``max_area``."""
        from .configs import MAX_AREA_CONFIGS, SIZE_CONFIGS

        out = {}
        if not self.size_is_area:
            out["size"] = SIZE_CONFIGS[size]
        if self.size_is_area or self.size_and_area:
            out["max_area"] = MAX_AREA_CONFIGS[size]
        return out

    def default_shift(self, size: str) -> float:
        if self.shift_480p is not None and size in ("832*480", "480*832"):
            return self.shift_480p
        return self.shift

    def input(self, flag: str) -> TaskInput | None:
        return next((i for i in self.inputs if i.flag == flag), None)

    def pipeline_class(self):
        import wan
        return getattr(wan, self.pipeline)

    def sidecar_keys(self) -> tuple[str, ...]:
        """The task-specific settings its sidecar stores (and ``--replay`` restores)."""
        keys: list[str] = []
        for i in self.inputs:
            keys += [i.flag, f"{i.flag}_sha256"]
        return tuple(keys) + tuple(o.flag for o in self.options)


_T2V_PROMPT = ("Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely "
               "on a spotlighted stage.")
_I2V_PROMPT = ("Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard. "
               "The fluffy-furred feline gazes directly at the camera with a relaxed expression. "
               "Blurred beach scenery forms the background featuring crystal-clear waters, "
               "distant green hills, and a blue sky dotted with white clouds. The cat assumes a "
               "naturally relaxed posture, as if savoring the sea breeze and warm sunlight. A "
               "close-up shot highlights the feline's intricate details and the refreshing "
               "atmosphere of the seaside.")
# The official example prompt of FLF2V (Chinese, as released): a small blue bird takes off
# from the ground and flaps its wings, the camera following it up into a blue sky.
_FLF2V_PROMPT = ("CG动画风格，一只蓝色的小鸟从地面起飞，煽动翅膀。小鸟羽毛细腻，胸前有独特的花纹，"
                 "背景是蓝天白云，阳光明媚。镜跟随小鸟向上移动，展现出小鸟飞翔的姿态和天空的广阔。"
                 "近景，仰视视角。")

_SRC_VIDEO = TaskInput(
    "src_video", "video", "src_video", required=False,
    help="T2V: video-to-video, re-render this clip from the prompt (resized and centre-cropped "
         "to --size; --frame_num defaults to the largest 4n+1 frames it holds, at most 81); "
         "VACE: the source (or control) clip to edit")
_STRENGTH = TaskOption(
    "strength", "strength", 0.8, needs="src_video", low=0.0, high=1.0,
    help="video-to-video: how much of the source to re-render, 0 < S <= 1 (default 0.8; "
         "1.0 ignores the source)")

_IMAGE = TaskInput("image", "image", "img", example="examples/i2v_input.JPG",
                   help="image-to-video: the first frame (its aspect ratio is kept)",
                   label="Input image (the first frame)",
                   missing="Please upload an input image: it becomes the first frame of the "
                           "video.")

# VACE (Wan2.1-VACE-1.3B / -14B): any mix of a source clip, its mask and reference images.
MAX_REF_IMAGES = 8  # each reference image adds one latent frame (a project limit)
_VACE_INPUTS = (
    TaskInput("src_video", "video", "src_video", required=False, label="Source video",
              help="VACE: the source (or control) clip to edit"),
    TaskInput("src_mask", "video", "src_mask", required=False, needs="src_video",
              label="Mask video (white: regenerate)",
              help="VACE: a mask clip for --src_video (white = generate, black = keep)"),
    TaskInput("src_ref_images", "images", "src_ref_images", required=False,
              example="examples/girl.png,examples/snake.png", limit=MAX_REF_IMAGES,
              label="Reference image",
              help=f"VACE: reference images, comma-separated (at most {MAX_REF_IMAGES}): "
                   f"put these subjects in the video"),
)
_CONTEXT_SCALE = TaskOption(
    "context_scale", "context_scale", 1.0, needs=None, low=0.0, high=float("inf"),
    low_inclusive=True, help="VACE: the weight of the VACE branch (default 1.0)")
# The official example prompt of VACE (Chinese, as released): a little girl in red spring
# clothes plays happily with a cute green cartoon snake in a festive scene.
_VACE_PROMPT = ("在一个欢乐而充满节日气氛的场景中，穿着鲜艳红色春服的小女孩正与她的可爱卡通蛇嬉戏。"
                "她的春服上绣着金色吉祥图案，散发着喜庆的气息，脸上洋溢着灿烂的笑容。蛇身呈现出亮眼的"
                "绿色，形状圆润，宽大的眼睛让它显得既友善又幽默。小女孩欢快地用手轻轻抚摸着蛇的头部，"
                "共同享受着这温馨的时刻。周围五彩斑斓的灯笼和彩带装饰着环境，阳光透过洒在她们身上，"
                "营造出一个充满友爱与幸福的新年氛围。")

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("t2v-14B", "WanT2V", "text-to-video", "Wan2.1-T2V-14B", frames=81, steps=50,
         shift=5.0, inputs=(_SRC_VIDEO,), options=(_STRENGTH,), example_prompt=_T2V_PROMPT),
    Task("t2v-1.3B", "WanT2V", "text-to-video", "Wan2.1-T2V-1.3B", frames=81, steps=50,
         shift=5.0, inputs=(_SRC_VIDEO,), options=(_STRENGTH,), example_prompt=_T2V_PROMPT,
         notes="guide 6 and shift 8-12 recommended"),
    Task("t2i-14B", "WanT2V", "text-to-image", "Wan2.1-T2V-14B", frames=1, steps=50, shift=5.0,
         output="image", example_prompt="一个朴素端庄的美人"),
    Task("i2v-14B", "WanI2V", "image-to-video", "Wan2.1-I2V-14B-720P / -480P", frames=81,
         steps=40, shift=5.0, shift_480p=3.0, size_is_area=True,
         inputs=(_IMAGE,),
         example_prompt=_I2V_PROMPT),
    Task("flf2v-14B", "WanFLF2V", "first-last-frame-to-video", "Wan2.1-FLF2V-14B-720P",
         frames=81, steps=50, shift=16.0, size_is_area=True,
         inputs=(TaskInput("first_frame", "image", "first_frame", group="flf",
                           example="examples/flf2v_input_first_frame.png",
                           help="first-last-frame-to-video: the first frame (sets the aspect "
                                "ratio)", label="First frame",
                           missing="Please upload the first frame: the video starts on it."),
                 TaskInput("last_frame", "image", "last_frame", group="flf",
                           example="examples/flf2v_input_last_frame.png",
                           help="first-last-frame-to-video: the last frame", label="Last frame",
                           missing="Please upload the last frame: the video ends on it.")),
         example_prompt=_FLF2V_PROMPT, notes="trained for 720P; 480P sizes run"),
    *(Task(name, "WanVace", "video creation and editing (VACE)", checkpoint, frames=81,
           steps=50, shift=16.0, inputs=_VACE_INPUTS, options=(_CONTEXT_SCALE,),
           example_prompt=_VACE_PROMPT, prepare="prepare_cli_inputs",
           notes="a source clip sets the size and frames")
      for name, checkpoint in (("vace-1.3B", "Wan2.1-VACE-1.3B"),
                               ("vace-14B", "Wan2.1-VACE-14B"))),
    # Wan2.2
    Task("t2v-A14B", "WanT2V", "text-to-video (Wan2.2, two experts)", "Wan2.2-T2V-A14B",
         frames=81, steps=40, shift=12.0, guide_scale=(3.0, 4.0), inputs=(_SRC_VIDEO,),
         options=(_STRENGTH,), example_prompt=_T2V_PROMPT),
    Task("i2v-A14B", "WanI2V", "image-to-video (Wan2.2, two experts)", "Wan2.2-I2V-A14B",
         frames=81, steps=40, shift=5.0, guide_scale=(3.5, 3.5), size_is_area=True,
         inputs=(_IMAGE,), example_prompt=_I2V_PROMPT),
    Task("ti2v-5B", "WanTI2V", "text-to-video and image-to-video (Wan2.2, 24 fps)",
         "Wan2.2-TI2V-5B", frames=121, steps=50, shift=5.0, size_and_area=True,
         inputs=(TaskInput("image", "image", "img", required=False,
                           help="image-to-video: the first frame (TI2V-5B: optional; its "
                                "aspect ratio is kept within --size's area)",
                           label="Input image (the first frame)"),),
         example_prompt=_T2V_PROMPT, notes="--image optional"),
)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}'; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def input_flags() -> dict[str, TaskInput]:
    """Every input flag of any task (the first entry that defines it gives its help)."""
    flags: dict[str, TaskInput] = {}
    for task in TASKS.values():
        for i in task.inputs:
            flags.setdefault(i.flag, i)
    return flags


def option_flags() -> dict[str, TaskOption]:
    flags: dict[str, TaskOption] = {}
    for task in TASKS.values():
        for o in task.options:
            flags.setdefault(o.flag, o)
    return flags


def markdown_table() -> str:
    """The README's task table."""
    rows = ["| `--task` | does | checkpoint | inputs | `--size` | frames | steps | shift | guide |",
            "|---|---|---|---|---|---|---|---|---|"]
    for t in TASKS.values():
        inputs = ", ".join(f"`--{i.flag}`" + ("" if i.required else " (optional)")
                           for i in t.inputs) or "prompt only"
        shift = f"{t.shift:g}" + (f" ({t.shift_480p:g} at 480P)" if t.shift_480p else "")
        sizes = " ".join(f"`{s}`" for s in t.sizes)
        if t.size_is_area:
            sizes += " (area; the image sets the aspect)"
        elif t.size_and_area:
            sizes += " (with an image: the area)"
        notes = f"; {t.notes}" if t.notes else ""
        rows.append(f"| `{t.name}` | {t.title}{notes} | {t.checkpoint} | {inputs} | {sizes} | "
                    f"{t.frames} | {t.steps} | {shift} | {_guide(t.guide_scale)} |")
    return "\n".join(rows)


def _guide(g) -> str:
    return f"{g[0]:g}, {g[1]:g} (low, high)" if isinstance(g, tuple) else f"{g:g}"


def _main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m wan.tasks",
                            description="Print the README's task table.").parse_args(argv)
    print(markdown_table())


if __name__ == "__main__":
    _main()
