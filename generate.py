"""Generate a video or an image with Wan: every task of the task table (wan/tasks.py).

    python generate.py --task t2v-1.3B --size 832*480 --ckpt_dir ./Wan2.1-T2V-1.3B --prompt "..."
    torchrun --nproc_per_node=8 generate.py --task t2v-14B ... --dit_fsdp --t5_fsdp --ulysses_size 8

argparse (flags from the task table) -> validation (one-line errors) -> the task's pipeline ->
output file + JSON sidecar.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

# Settings every sidecar stores and --replay restores; each task adds its own inputs and
# options (see wan/tasks.py: Task.sidecar_keys).
COMMON_REPLAY_KEYS = ("task", "size", "frame_num", "prompt", "negative_prompt", "base_seed",
                      "sample_solver", "sample_steps", "sample_shift", "sample_guide_scale", "fps",
                      "vae_tiling", "denoising_steps", "denoising_renoise", "boundary_step",
                      "convert_model_dtype")

log = logging.getLogger("generate")


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2, no traceback, no output file."""


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from wan.tasks import TASKS, input_flags, option_flags
    from wan.utils.fm_solvers import SOLVERS
    from wan.utils.utils import str2bool

    p = argparse.ArgumentParser(description="Generate a video or an image with Wan.")
    p.add_argument("--task", default="t2v-14B", choices=list(TASKS),
                   help="what to run (default: t2v-14B; see the README's task table)")
    p.add_argument("--size", default="1280*720",
                   help="WIDTH*HEIGHT of the output; for tasks with image inputs, the area (the "
                        "first image sets the aspect ratio)")
    p.add_argument("--frame_num", type=int, default=None,
                   help="number of frames, 4n+1 (default: the task's, 81; 1 for t2i)")
    p.add_argument("--ckpt_dir", default=None, help="the downloaded checkpoint folder")
    p.add_argument("--offload_model", type=str2bool, default=None,
                   help="move each model off the GPU after use to save memory "
                        "(default True in one process, False with several)")
    p.add_argument("--ulysses_size", type=int, default=1,
                   help="Ulysses sequence-parallel size (multi-GPU)")
    p.add_argument("--ring_size", type=int, default=1, help="ring attention size (multi-GPU)")
    p.add_argument("--t5_fsdp", action="store_true", help="shard the T5 encoder with FSDP")
    p.add_argument("--t5_cpu", action="store_true", help="run the T5 encoder on the CPU")
    p.add_argument("--dit_fsdp", action="store_true", help="shard the DiT with FSDP")
    p.add_argument("--dit_offload_blocks", type=int, default=0, metavar="N",
                   help="keep only N transformer blocks on the GPU at a time, streaming the others "
                        "from CPU memory (0: off; 2 is a good start on 24 GB cards)")
    p.add_argument("--vae_tiling", default="auto", choices=["auto", "on", "off"],
                   help="VAE decode/encode in overlapping spatial tiles (bounded memory); auto: "
                        "only when an untiled pass would need over half the free memory")
    p.add_argument("--save_file", default=None,
                   help="output file (default: task_size_ulysses_ring_prompt_time.mp4/.png)")
    p.add_argument("--prompt", default=None, help="the text prompt (default: an example prompt)")
    p.add_argument("--negative_prompt", default="",
                   help="what to avoid (default: the official negative prompt)")
    p.add_argument("--use_prompt_extend", action="store_true",
                   help="rewrite the prompt with a language model before generating")
    p.add_argument("--prompt_extend_method", default="local_qwen",
                   choices=["dashscope", "local_qwen"])
    p.add_argument("--prompt_extend_model", default=None,
                   help="model for prompt extension (DashScope name, hub name or local path)")
    p.add_argument("--prompt_extend_target_lang", default="ch", choices=["ch", "zh", "en"],
                   help="language of the extended prompt (ch and zh are the same)")
    p.add_argument("--base_seed", type=int, default=-1, help="seed (-1: random)")
    for flag, inp in input_flags().items():
        p.add_argument(f"--{flag}", default=None, metavar="PATH", help=inp.help)
    for flag, opt in option_flags().items():
        p.add_argument(f"--{flag}", type=float, default=None, help=opt.help)
    p.add_argument("--sample_solver", default="unipc", choices=list(SOLVERS))
    p.add_argument("--sample_steps", type=int, default=None,
                   help="denoising steps (default: the task's; 50, 40 for i2v)")
    p.add_argument("--sample_shift", type=float, default=None,
                   help="flow shift (default: the task's; 5.0, 3.0 for i2v at 480P, 16 for flf2v)")
    p.add_argument("--sample_guide_scale", type=_guide_scale, default=None, metavar="G|LOW,HIGH",
                   help="classifier-free guidance scale (default: the task's, 5.0; Wan2.2 A14B: "
                        "the config's (low, high) pair, one per expert); LOW,HIGH sets the "
                        "two experts' scales")
    p.add_argument("--lora", action="append", default=None, metavar="[EXPERT=]PATH[:SCALE]",
                   help="merge a LoRA into the DiT (repeatable; SCALE after the last colon, "
                        "default 1.0); for Wan2.2 A14B high=PATH or low=PATH picks one expert, "
                        "a plain PATH applies to both")
    p.add_argument("--denoising_steps", default=None, metavar="T1,T2,...",
                   help="few-step sampling with a step-distilled model (e.g. LightX2V's 4-step "
                        "LoRAs): the training timesteps to visit, strictly decreasing in "
                        "(0, 1000], e.g. 1000,750,500,250; use with --sample_guide_scale 1")
    p.add_argument("--denoising_renoise", action="store_true",
                   help="with --denoising_steps: predict x0 and re-noise it at each step with "
                        "fresh seeded noise (older LightX2V, CausVid/DMD) instead of the "
                        "deterministic update")
    p.add_argument("--boundary_step", type=int, default=None, metavar="N",
                   help="Wan2.2 A14B with --denoising_steps: the step where the low-noise "
                        "expert takes over (default: the boundary timestep rule)")
    p.add_argument("--convert_model_dtype", action="store_true",
                   help="store the whole DiT in the config's param_dtype (bf16), as the "
                        "official Wan2.2 commands do; default: bf16 matmul weights, fp32 norms "
                        "and modulation")
    p.add_argument("--device", default=None,
                   help="cuda, cuda:N, mps or cpu (default: CUDA if available, else MPS, else CPU)")
    p.add_argument("--fps", type=int, default=None, help="frames per second of the MP4 (default 16)")
    p.add_argument("--replay", default=None, metavar="OUTPUT.json",
                   help="re-run the generation described by a sidecar file")
    return p.parse_args(argv)


def _guide_scale(text: str) -> float | tuple[float, float]:
    """``--sample_guide_scale``: one number, or ``LOW,HIGH`` (Wan2.2 A14B's two experts)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or LOW,HIGH, got '{text}'") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise argparse.ArgumentTypeError(f"expected a number or LOW,HIGH, got '{text}'")


def parse_lora(text: str) -> dict:
    """``[EXPERT=]PATH[:SCALE]`` -> ``{path, scale, expert}`` (one clear line when wrong)."""
    expert = None
    head, sep, rest = text.partition("=")
    if sep and head in ("high", "low"):
        expert, text = head, rest
    elif sep and "/" not in head and "\\" not in head and not Path(text).exists():
        raise UsageError(f"--lora: unknown expert '{head}' (use high=PATH or low=PATH, or a "
                         f"plain PATH for both)")
    scale = 1.0
    path, sep, tail = text.rpartition(":")
    if sep and tail and "/" not in tail and "\\" not in tail:
        try:
            scale = float(tail)
        except ValueError:
            raise UsageError(f"--lora: the scale '{tail}' after the last colon is not a number "
                             f"(PATH:SCALE, e.g. style.safetensors:0.8)") from None
    else:
        path = text
    if not path:
        raise UsageError("--lora: no file given (PATH[:SCALE])")
    if not Path(path).is_file():
        raise UsageError(f"--lora file not found: '{path}'")
    return {"path": path, "scale": scale, "expert": expert}


def replay_keys(task_name: str) -> tuple[str, ...]:
    """The settings a sidecar of ``task_name`` stores and ``--replay`` restores."""
    from wan.tasks import TASKS

    task = TASKS.get(task_name)
    return COMMON_REPLAY_KEYS + (task.sidecar_keys() if task else ())


def _apply_replay(args: argparse.Namespace) -> None:
    from wan.utils.io import read_sidecar

    try:
        data = read_sidecar(args.replay)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    for key in replay_keys(data.get("task", args.task)):
        if key in data and not key.endswith("_sha256"):
            setattr(args, key, data[key])
    if args.ckpt_dir is None:
        args.ckpt_dir = data.get("ckpt_dir")
    if data.get("loras") and not args.lora:
        args.lora = [(f"{x['expert']}=" if x.get("expert") else "") + f"{x['path']}:{x['scale']}"
                     for x in data["loras"]]
    args.use_prompt_extend = False  # the sidecar holds the prompt as it was used


def _flags(names) -> str:
    return ", ".join(f"--{n}" for n in names)


def _validate_inputs(task, args: argparse.Namespace) -> None:
    """The task's input files and options: given where needed, nowhere else, readable paths."""
    from wan.tasks import input_flags, option_flags

    takes = [i.flag for i in task.inputs] + [o.flag for o in task.options]
    for flag in list(input_flags()) + list(option_flags()):
        if getattr(args, flag) is not None and flag not in takes:
            what = f"it takes {_flags(takes)}" if takes else "it takes only --prompt"
            raise UsageError(f"task {task.name} takes no --{flag}; {what}")
    groups: dict[str, list] = {}
    for inp in task.inputs:
        if inp.group:
            groups.setdefault(inp.group, []).append(inp)
    for members in groups.values():
        given = [i.flag for i in members if getattr(args, i.flag) is not None]
        if given and len(given) < len(members):
            missing = [i.flag for i in members if i.flag not in given]
            raise UsageError(f"--{given[0]} needs {_flags(missing)} too (task {task.name} "
                             f"takes {_flags(i.flag for i in members)} together)")
    # The examples: a required input that is absent; the optional ones only for the example
    # run (no --prompt and no input given), as the official script.
    example_run = args.prompt is None and all(getattr(args, i.flag) is None for i in task.inputs)
    for inp in task.inputs:
        if getattr(args, inp.flag) is None and inp.example and (inp.required or example_run):
            setattr(args, inp.flag, inp.example_value)
    for inp in task.inputs:
        value = getattr(args, inp.flag)
        if value is None:
            continue
        if inp.needs and getattr(args, inp.needs) is None:
            raise UsageError(f"--{inp.flag} needs --{inp.needs} (a mask applies to a source "
                             f"clip)" if inp.flag == "src_mask" else
                             f"--{inp.flag} needs --{inp.needs}")
        paths = inp.paths(value)
        if not paths:
            raise UsageError(f"--{inp.flag} is empty: give the path of a file")
        if inp.limit is not None and len(paths) > inp.limit:
            raise UsageError(f"--{inp.flag} gives {len(paths)} files; at most {inp.limit} are "
                             f"taken")
        for path in paths:
            if not Path(path).is_file():
                label = "input image" if inp.flag == "image" else \
                    f"--{inp.flag} {'image' if inp.kind == 'images' else inp.kind}"
                raise UsageError(f"{label} not found: '{path}'")
    if task.input("src_mask") and args.src_mask is not None and args.src_video is not None:
        _check_mask_clip(args, args.src_video, args.src_mask)
    for opt in task.options:
        value = getattr(args, opt.flag)
        applies = opt.needs is None or getattr(args, opt.needs) is not None
        if value is not None and not applies:
            raise UsageError(f"--{opt.flag} applies to --{opt.needs}, which is not given")
        if value is None and applies:
            value = opt.default
            setattr(args, opt.flag, value)
        if value is not None and not opt.in_range(value):
            raise UsageError(f"--{opt.flag} must be in {opt.range_text()}, got {value:g}")


def _validate(args: argparse.Namespace, world_size: int) -> None:
    """Fill the task's defaults as the official script does; reject bad input with one line."""
    from wan.tasks import get_task

    task = get_task(args.task)
    if args.ckpt_dir is None:
        raise UsageError("--ckpt_dir is required: the folder of the downloaded checkpoint "
                         "(see README, 'Model download')")
    if not Path(args.ckpt_dir).is_dir():
        raise UsageError(f"checkpoint folder not found: '{args.ckpt_dir}' (download it, or fix "
                         f"--ckpt_dir)")
    if args.size not in task.sizes:
        raise UsageError(f"unsupported size {args.size} for task {args.task}; supported sizes: "
                         f"{', '.join(task.sizes)}")
    _validate_inputs(task, args)
    if args.frame_num is None and getattr(args, "src_video", None) is not None:
        args.frame_num = _source_video_frames(args)
    if args.frame_num is None:
        args.frame_num = task.frames
    if task.is_image and args.frame_num != 1:
        raise UsageError(f"task {args.task} makes one image: --frame_num must be 1, "
                         f"got {args.frame_num}")
    if args.frame_num < 1 or (args.frame_num - 1) % 4:
        raise UsageError(f"--frame_num must be 4n+1 (1, 5, 9, ..., 81), got {args.frame_num}")
    if args.denoising_steps is not None:
        from wan.utils.fm_solvers import check_denoising_steps
        try:
            text = args.denoising_steps
            parts = text if isinstance(text, list) else str(text).split(",")
            args.denoising_steps = check_denoising_steps(parts)
        except ValueError as e:
            raise UsageError(f"--denoising_steps: {e}") from None
        args.sample_steps = len(args.denoising_steps)
        if args.boundary_step is not None and not 0 <= args.boundary_step <= args.sample_steps:
            raise UsageError(f"--boundary_step must be in [0, {args.sample_steps}], got "
                             f"{args.boundary_step}")
    elif args.denoising_renoise or args.boundary_step is not None:
        raise UsageError("--denoising_renoise and --boundary_step apply to --denoising_steps, "
                         "which is not given")
    if args.boundary_step is not None and not task.config.get("boundary"):
        raise UsageError(f"--boundary_step is for the two-expert Wan2.2 A14B tasks, not "
                         f"{task.name}")
    args.loras = [parse_lora(text) for text in (args.lora or [])]
    if any(x["expert"] for x in args.loras) and not task.config.get("boundary"):
        raise UsageError(f"task {task.name} has one DiT: give --lora PATH[:SCALE] without "
                         f"high=/low=")
    if args.sample_steps is None:
        args.sample_steps = task.steps
    if args.sample_steps < 1:
        raise UsageError(f"--sample_steps must be at least 1, got {args.sample_steps}")
    if args.sample_shift is None:
        args.sample_shift = task.default_shift(args.size)
    if args.sample_shift <= 0:
        raise UsageError(f"--sample_shift must be > 0, got {args.sample_shift}")
    if args.sample_guide_scale is None:
        args.sample_guide_scale = task.guide_scale
    if isinstance(args.sample_guide_scale, list):  # from a sidecar
        args.sample_guide_scale = tuple(args.sample_guide_scale)
    guides = args.sample_guide_scale if isinstance(args.sample_guide_scale, tuple) else \
        (args.sample_guide_scale,)
    if any(not g >= 0 for g in guides):
        raise UsageError(f"--sample_guide_scale must be >= 0, got "
                         f"{','.join(f'{g:g}' for g in guides)}")
    if len(guides) == 2 and not task.config.get("boundary"):
        raise UsageError(f"task {task.name} has one model: --sample_guide_scale takes one number, "
                         f"got {guides[0]:g},{guides[1]:g} (LOW,HIGH is for the Wan2.2 A14B tasks)")
    if args.fps is not None and args.fps < 1:
        raise UsageError(f"--fps must be at least 1, got {args.fps}")
    if args.ulysses_size < 1 or args.ring_size < 1:
        raise UsageError("--ulysses_size and --ring_size must be at least 1")
    parallel = args.ulysses_size > 1 or args.ring_size > 1
    if world_size == 1 and (args.t5_fsdp or args.dit_fsdp or parallel):
        raise UsageError("--t5_fsdp, --dit_fsdp, --ulysses_size and --ring_size need several "
                         "processes: launch with torchrun --nproc_per_node=N generate.py ...")
    if parallel and args.ulysses_size * args.ring_size != world_size:
        raise UsageError(f"--ulysses_size x --ring_size ({args.ulysses_size} x {args.ring_size}) "
                         f"must equal the number of processes ({world_size})")
    if args.dit_offload_blocks < 0:
        raise UsageError(f"--dit_offload_blocks must be >= 0, got {args.dit_offload_blocks}")
    if args.dit_offload_blocks and args.dit_fsdp:
        raise UsageError("--dit_offload_blocks and --dit_fsdp exclude each other")
    if args.t5_fsdp and args.t5_cpu:
        raise UsageError("--t5_fsdp and --t5_cpu exclude each other")
    if args.prompt is None:
        args.prompt = task.example_prompt
    if not args.prompt.strip():
        raise UsageError("--prompt is empty: describe what to generate")
    if args.offload_model is None:
        args.offload_model = world_size == 1


def _read_source_video(args: argparse.Namespace, path: str):
    """The frames of a source clip, read once per run (kept on ``args`` until loaded)."""
    from wan.utils.io import read_video

    cache = vars(args).setdefault("_source_frames", {})
    if path not in cache:
        try:
            cache[path] = read_video(path)[0]
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"--src_video: {e}") from None
    return cache[path]


def _check_mask_clip(args: argparse.Namespace, video_path: str, mask_path: str) -> None:
    """VACE: the mask clip marks the source clip's pixels: same frame count and size."""
    from wan.utils.io import read_video

    video = _read_source_video(args, video_path)
    try:
        mask = read_video(mask_path)[0]
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--src_mask: {e}") from None
    (n, h, w), (mn, mh, mw) = video.shape[:3], mask.shape[:3]
    if (n, h, w) != (mn, mh, mw):
        raise UsageError(f"--src_mask '{mask_path}' is {mn} frames of {mw}x{mh} but --src_video "
                         f"'{video_path}' is {n} frames of {w}x{h}: they must match")


def _source_video_frames(args: argparse.Namespace) -> int:
    """Default --frame_num for a source clip: its largest 4n+1 frames, at most 81."""
    from wan.utils.io import default_v2v_frames

    return default_v2v_frames(len(_read_source_video(args, args.src_video)))


def _load_image(path: str, what: str = "the input image"):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"cannot read {what} '{path}': {e}") from None


def _load_video(path: str, args: argparse.Namespace):
    """The source clip as ``[3, frame_num, H, W]`` in [-1, 1] at the output size."""
    from wan.configs import SIZE_CONFIGS
    from wan.utils.io import fit_video

    frames = _read_source_video(args, path)
    args._source_frames.pop(path, None)
    if len(frames) < args.frame_num:
        raise UsageError(f"--src_video '{path}' has {len(frames)} frames but --frame_num is "
                         f"{args.frame_num}: pass a longer clip or a smaller --frame_num")
    width, height = SIZE_CONFIGS[args.size]
    return fit_video(frames[:args.frame_num], width, height)


def load_inputs(task, args: argparse.Namespace) -> dict:
    """The task's inputs as the pipeline takes them: ``{generate() keyword: value}``.

    Tasks with a ``prepare`` method (VACE) get the paths; their pipeline reads the files.
    """
    out = {}
    for inp in task.inputs:
        value = getattr(args, inp.flag)
        if value is None:
            continue
        if task.prepare:
            out[inp.param] = inp.paths(value) if inp.kind == "images" else value
        elif inp.kind == "image":
            what = "the input image" if inp.flag == "image" else f"the --{inp.flag} image"
            out[inp.param] = _load_image(value, what)
        else:
            out[inp.param] = _load_video(value, args)
    for opt in task.options:
        if opt.needs is None or getattr(args, opt.needs) is not None:
            out[opt.param] = getattr(args, opt.flag)
    return out


def _check_images(paths: list[str], flag: str) -> None:
    """Each image of an ``images`` input is readable (a clear line otherwise)."""
    for path in paths:
        _load_image(path, f"the --{flag} image")


def _init_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.ERROR
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s: %(message)s",
                        handlers=[logging.StreamHandler(stream=sys.stdout)], force=True)


def _device(args: argparse.Namespace, local_rank: int):
    import torch

    if args.device:
        dev = torch.device(args.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but CUDA is not available here")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _extend_prompt(args, image, is_vl: bool, rank: int) -> str:
    """Prompt extension on rank 0 (falls back to the original prompt on any failure)."""
    if rank != 0:
        return args.prompt
    try:
        from wan.utils.prompt_extend import make_prompt_expander
    except ImportError as e:
        log.warning("Prompt extension is unavailable (%s); using the original prompt.", e)
        return args.prompt
    try:
        expander = make_prompt_expander(args.prompt_extend_method, args.prompt_extend_model,
                                        is_vl=is_vl,
                                        device=args.device_obj)
    except Exception as e:  # noqa: BLE001 - e.g. DASH_API_KEY missing: go on without it
        log.warning("Prompt extension is unavailable (%s); using the original prompt.", e)
        return args.prompt
    args.prompt_extend_model = expander.model_name  # the sidecar names the model used
    out = expander(args.prompt, tar_lang=args.prompt_extend_target_lang, image=image,
                   seed=args.base_seed)
    if not out.status:
        log.warning("Prompt extension failed (%s); using the original prompt.", out.message)
        return args.prompt
    log.info("Extended prompt: %s", out.prompt)
    return out.prompt


def generate(args: argparse.Namespace) -> Path | None:
    import torch.distributed as dist

    from wan.configs import SIZE_CONFIGS
    from wan.sampling import resolve_seed
    from wan.tasks import get_task
    from wan.utils.io import default_save_file, save_image, save_video, sha256_file, write_sidecar

    rank = int(os.getenv("RANK", 0))
    world_size = int(os.getenv("WORLD_SIZE", 1))
    local_rank = int(os.getenv("LOCAL_RANK", 0))
    _init_logging(rank)
    if args.replay:
        _apply_replay(args)
    _validate(args, world_size)
    task = get_task(args.task)
    device = _device(args, local_rank)
    args.device_obj = device
    cfg = task.config
    if args.ulysses_size > 1 and cfg.num_heads % args.ulysses_size:
        raise UsageError(f"the model has {cfg.num_heads} attention heads, which --ulysses_size "
                         f"{args.ulysses_size} does not divide")

    if world_size > 1:
        from wan.distributed.util import init_distributed
        init_distributed(args, rank, world_size, device)

    args.base_seed = resolve_seed(args.base_seed)
    if world_size > 1:
        seed = [args.base_seed]
        dist.broadcast_object_list(seed, src=0)
        args.base_seed = seed[0]

    inputs = load_inputs(task, args)
    for inp in task.inputs:
        if inp.kind == "images" and getattr(args, inp.flag) is not None:
            _check_images(inp.paths(getattr(args, inp.flag)), inp.flag)
    original_prompt = args.prompt
    if args.use_prompt_extend:
        images = [] if task.prepare else \
            [inputs[i.param] for i in task.image_inputs if i.param in inputs]
        # the first image (FLF2V: the first frame; the official shows the expander both)
        prompt = [_extend_prompt(args, images[0] if images else None, bool(images), rank)]
        if world_size > 1:
            dist.broadcast_object_list(prompt, src=0)
        args.prompt = prompt[0]
    log.info("Task %s, size %s, %d frames, %d steps (%s), shift %.2f, guide %s, seed %d, "
             "device %s", args.task, args.size, args.frame_num, args.sample_steps,
             args.sample_solver, args.sample_shift, args.sample_guide_scale, args.base_seed, device)
    log.info("Prompt: %s", args.prompt)

    t0 = time.perf_counter()
    pipe = task.pipeline_class()(
        config=cfg, checkpoint_dir=args.ckpt_dir, device_id=device, rank=rank,
        t5_fsdp=args.t5_fsdp, dit_fsdp=args.dit_fsdp,
        use_usp=args.ulysses_size > 1 or args.ring_size > 1, t5_cpu=args.t5_cpu,
        dit_offload_blocks=args.dit_offload_blocks, convert_model_dtype=args.convert_model_dtype)
    pipe.vae.tiling = args.vae_tiling
    for lora in args.loras:
        pipe.load_lora(lora["path"], lora["scale"], lora["expert"])
    if args.denoising_steps is not None:
        pipe.set_schedule(args.denoising_steps, renoise=args.denoising_renoise,
                          boundary_step=args.boundary_step)
    area = task.size_kwargs(args.size)
    if task.prepare:  # the pipeline reads its input files (VACE: clips, masks, references)
        inputs, used = getattr(pipe, task.prepare)(**inputs, frame_num=args.frame_num,
                                                   size=SIZE_CONFIGS[args.size])
        args.frame_num = used["frame_num"]
        args.size_used = used["size"]
    video = pipe.generate(args.prompt, **inputs, **area, frame_num=args.frame_num,
                          shift=args.sample_shift, sample_solver=args.sample_solver,
                          sampling_steps=args.sample_steps, guide_scale=args.sample_guide_scale,
                          n_prompt=args.negative_prompt, seed=args.base_seed,
                          offload_model=args.offload_model)

    if rank != 0:
        return None
    save_file = args.save_file or default_save_file(args.task, args.size, args.ulysses_size,
                                                    args.ring_size, args.prompt)
    fps = args.fps or cfg.sample_fps
    out = save_image(video[:, 0], save_file) if task.is_image else \
        save_video(video, save_file, fps=fps)
    settings = {k: getattr(args, k, None) for k in replay_keys(task.name)}
    for inp in task.inputs:
        paths = inp.paths(getattr(args, inp.flag))
        resolved = [str(Path(p).resolve()) for p in paths]
        digests = [sha256_file(p) for p in paths]
        many = inp.kind == "images"
        settings[inp.flag] = (",".join(resolved) if many else resolved[0]) if paths else None
        settings[f"{inp.flag}_sha256"] = (digests if many else digests[0]) if paths else None
    if getattr(args, "size_used", None):
        settings["size_used"] = "*".join(str(v) for v in args.size_used)
    settings.update(fps=fps, negative_prompt=args.negative_prompt or cfg.sample_neg_prompt,
                    ckpt_dir=str(Path(args.ckpt_dir).resolve()), device=str(device),
                    offload_model=args.offload_model, t5_cpu=args.t5_cpu,
                    ulysses_size=args.ulysses_size, ring_size=args.ring_size,
                    convert_model_dtype=args.convert_model_dtype,
                    loras=[dict(x, path=str(Path(x["path"]).resolve())) for x in pipe.loras],
                    seconds=round(time.perf_counter() - t0, 2))
    if args.use_prompt_extend:
        settings.update(original_prompt=original_prompt,
                        prompt_extend_method=args.prompt_extend_method,
                        prompt_extend_model=args.prompt_extend_model,
                        prompt_extend_target_lang=args.prompt_extend_target_lang)
    sidecar = write_sidecar(out, settings)
    log.info("Saved %s (settings in %s)", out, sidecar.name)
    return out


def _multi_process() -> bool:
    return int(os.getenv("WORLD_SIZE", 1)) > 1


def _fail(e: BaseException, code: int) -> int:
    """Print one line (naming the rank with several processes) and tell the other ranks."""
    if _multi_process():
        from wan.distributed.util import report_failure
        sys.stderr.write(f"error: rank {os.getenv('RANK', 0)}: {e}\n")  # one write: no interleaving
        sys.stderr.flush()
        report_failure(e)
    else:
        print(f"error: {e}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        generate(args)
    except UsageError as e:
        return _fail(e, 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - known user-facing errors get one line
        import torch.distributed as dist

        from wan.utils.checkpoint import CheckpointError
        if isinstance(e, (CheckpointError, ValueError, FileNotFoundError)):
            return _fail(e, 2)
        if _multi_process() and isinstance(e, getattr(dist, "DistError", ())):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            return _fail(RuntimeError(f"a collective operation failed ({first}); "
                                      f"another process failed or was started differently"), 1)
        if _multi_process():
            _fail(e, 1)
        raise
    if _multi_process():
        from wan.distributed.util import shutdown_distributed
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
