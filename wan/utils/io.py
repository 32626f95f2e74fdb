"""The one place that writes outputs: MP4 (H.264, yuv420p), PNG, and the JSON sidecar.

Files are written under a temporary name in the target folder and renamed when
complete, so a failure never leaves a half-written output behind.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import tempfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch

__all__ = ["video_to_uint8", "save_video", "save_image", "write_sidecar", "sidecar_path",
           "read_sidecar", "default_save_file", "atomic_path", "read_video", "fit_video",
           "default_v2v_frames", "sha256_file"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tiff", ".bmp")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path`` (same suffix); rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def video_to_uint8(video: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)
                   ) -> torch.Tensor:
    """``[3, F, H, W]`` in ``value_range`` -> ``[F, H, W, 3]`` uint8 (the official quantisation)."""
    if video.dim() == 5 and video.size(0) == 1:
        video = video[0]
    if video.dim() != 4 or video.size(0) != 3:
        raise ValueError(f"expected a video [3, F, H, W], got shape {tuple(video.shape)}")
    lo, hi = value_range
    video = video.detach().float().cpu().clamp(lo, hi)
    video = (video - lo) / (hi - lo)
    return (video * 255).to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def save_video(video: torch.Tensor, path: str | os.PathLike, fps: int = 16,
               value_range: tuple[float, float] = (-1.0, 1.0), quality: int = 8) -> Path:
    """Write ``[3, F, H, W]`` as an H.264 / yuv420p MP4 that plays in browsers and players."""
    import imageio

    frames = video_to_uint8(video, value_range).numpy()
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"H.264 with yuv420p needs an even width and height, got {w}x{h}")
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, fps=fps, codec="libx264", quality=quality,
                                    pixelformat="yuv420p", macro_block_size=2,
                                    ffmpeg_log_level="error", format="FFMPEG")
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def save_image(image: torch.Tensor, path: str | os.PathLike,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Write ``[3, H, W]`` (or ``[3, 1, H, W]``) as an image (PNG unless the suffix says else)."""
    from PIL import Image

    if image.dim() == 4:
        image = image[:, 0]
    lo, hi = value_range
    x = (image.detach().float().cpu().clamp(lo, hi) - lo) / (hi - lo)
    arr = x.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        path = path.with_suffix(".png")
    with atomic_path(path) as tmp:
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(),
                                                   path.suffix.lstrip(".").upper())
        Image.fromarray(arr).save(tmp, format=fmt)
    return path


def sidecar_path(output: str | os.PathLike) -> Path:
    """``video.mp4`` -> ``video.json``: where the settings of an output are kept."""
    return Path(output).with_suffix(".json")


def write_sidecar(output: str | os.PathLike, settings: dict) -> Path:
    """Write the settings that reproduce ``output`` next to it (atomically)."""
    import torch as _torch

    from .. import __version__

    data = dict(settings)
    data.setdefault("output", str(Path(output).name))
    data["versions"] = {"wan": __version__, "torch": _torch.__version__,
                        "python": platform.python_version()}
    data["created"] = datetime.now().isoformat(timespec="seconds")
    path = sidecar_path(output)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                       encoding="utf-8")
    return path


def read_sidecar(path: str | os.PathLike) -> dict:
    """Read a sidecar written by :func:`write_sidecar` (clear error if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay file not found: '{path}'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"'{path}' is not a generation sidecar (invalid JSON: {e})") from None
    if not isinstance(data, dict) or "task" not in data or "prompt" not in data:
        raise ValueError(f"'{path}' is not a generation sidecar (no 'task' and 'prompt')")
    return data


def default_save_file(task: str, size: str, ulysses_size: int, ring_size: int, prompt: str,
                      now: datetime | None = None) -> str:
    """The official default name: task, size, parallel sizes, prompt (50 chars), time."""
    stamp = (now or datetime.now()).strftime("%Y%m%d_%H%M%S")
    text = re.sub(r"[\s/\\:*?\"<>|]+", "_", prompt.strip())[:50]
    size = size.replace("*", "x") if os.name == "nt" else size
    suffix = ".png" if task.startswith("t2i") else ".mp4"
    return f"{task}_{size}_{ulysses_size}_{ring_size}_{text}_{stamp}{suffix}"


# --------------------------------------------------------------------------- source videos


def read_video(path: str | os.PathLike, max_frames: int | None = None
               ) -> tuple[torch.Tensor, float]:
    """Decode a video file with imageio-ffmpeg: ``(frames uint8 [F, H, W, 3] RGB, fps)``.

    ``max_frames`` stops after that many frames (a source longer than needed is
    not decoded to the end). Raises FileNotFoundError for a missing file and
    ValueError (one line, naming the file) for one ffmpeg cannot decode or
    that holds no frame.
    """
    import numpy as np
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source video not found: '{path}'")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        try:
            meta = next(gen)
        except (OSError, RuntimeError, StopIteration) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot read '{path}' as a video ({reason})") from None
        w, h = meta["size"]
        fps = float(meta.get("fps") or 0.0)
        frames = []
        try:
            for data in gen:
                frames.append(np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except (OSError, RuntimeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot decode '{path}' ({reason})") from None
    finally:
        gen.close()
    if not frames:
        raise ValueError(f"'{path}' holds no video frame")
    return torch.from_numpy(np.stack(frames)), fps


def fit_video(frames, width: int, height: int) -> torch.Tensor:
    """uint8 frames ``[F, H, W, 3]`` -> float32 ``[3, F, height, width]`` in [-1, 1].

    Each frame is scaled (aspect kept) to cover ``width`` x ``height`` and
    centre-cropped to it. Scaling is torch bicubic with antialias on values in
    [0, 1], clamped back to [0, 1]; frames already at the output size are not
    resampled. Normalisation is ``2 * (x / 255) - 1`` in float32, the same
    operations as diffusers' VideoProcessor. Accepts a tensor or numpy array.
    """
    import torch.nn.functional as F

    frames = torch.as_tensor(frames)
    if frames.dim() != 4 or frames.size(-1) != 3 or frames.dtype != torch.uint8:
        raise ValueError("frames must be uint8 [F, H, W, 3], got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"output size must be positive, got {width}*{height}")
    n, h, w, _ = frames.shape
    out = torch.empty(3, n, height, width, dtype=torch.float32)
    if (h, w) == (height, width):
        scale = None
    else:
        scale = max(width / w, height / h)
        rh, rw = max(height, round(h * scale)), max(width, round(w * scale))
        top, left = (rh - height) // 2, (rw - width) // 2
    for i in range(n):  # frame by frame: a long 1080p clip fits in memory
        x = frames[i].permute(2, 0, 1).float().div(255.0)
        if scale is not None:
            x = F.interpolate(x[None], size=(rh, rw), mode="bicubic", antialias=True,
                              align_corners=False)[0].clamp_(0.0, 1.0)
            x = x[:, top:top + height, left:left + width]
        out[:, i] = 2.0 * x - 1.0
    return out


def default_v2v_frames(n: int) -> int:
    """The frame count for a source of ``n`` frames: the largest ``4k + 1 <= n``, at most 81."""
    if n < 1:
        raise ValueError(f"the source video needs at least 1 frame, got {n}")
    return min(81, (n - 1) // 4 * 4 + 1)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
