"""Make VACE source/mask video pairs: ``python -m wan.utils.vace_inputs``.

VACE masks: white (1) = regenerate, black (0) = keep.

* ``outpaint IN.mp4 --to 832*480 --out DIR``: the clip centred on a larger
  ``W*H`` frame (scaled down first, aspect kept, if it does not fit), the padding
  mid-grey (0 in [-1, 1]); the mask is white over the padding.
* ``inpaint IN.mp4 --box x0,y0,x1,y1 --out DIR``: the clip copied unchanged; the
  mask is white inside the box (pixels ``x0 <= x < x1``, ``y0 <= y < y1``).

Both write ``DIR/src_video.mp4`` and ``DIR/src_mask.mp4`` (H.264, the source's
frame rate) and print their paths, to pass as ``--src_video`` / ``--src_mask``.
Bad input gives a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["outpaint", "inpaint", "parse_size", "parse_box", "main"]

VIDEO_NAME, MASK_NAME = "src_video.mp4", "src_mask.mp4"


def parse_size(text: str) -> tuple[int, int]:
    """``'832*480'`` -> ``(832, 480)`` (width, height; positive and even)."""
    try:
        w, h = (int(v) for v in text.lower().replace("x", "*").split("*"))
    except ValueError:
        raise ValueError(f"--to must be WIDTH*HEIGHT, e.g. 832*480, got '{text}'") from None
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise ValueError(f"--to must be positive and even (H.264), got {w}*{h}")
    return w, h


def parse_box(text: str) -> tuple[int, int, int, int]:
    """``'x0,y0,x1,y1'`` -> four ints with ``x0 < x1`` and ``y0 < y1``."""
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--box must be x0,y0,x1,y1 in pixels, got '{text}'") from None
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        raise ValueError(f"--box needs 0 <= x0 < x1 and 0 <= y0 < y1, got {text}")
    return x0, y0, x1, y1


def _read(path: str | Path):
    from .io import read_video

    frames, fps = read_video(path)
    return frames.permute(3, 0, 1, 2).float().div(127.5).sub(1.0), fps or 16.0  # [3, F, H, W]


def outpaint(src: str | Path, size: tuple[int, int], out: str | Path) -> tuple[Path, Path]:
    """Write the clip padded (centred) to ``size=(width, height)`` and its mask; return the paths."""
    from .io import save_video

    video, fps = _read(src)
    width, height = size
    _, n, h, w = video.shape
    if (w, h) == (width, height):
        raise ValueError(f"'{src}' is already {w}*{h}: nothing to outpaint")
    if w > width or h > height:  # scale down to fit inside, even sizes
        scale = min(width / w, height / h)
        nw, nh = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
        video = torch.stack([F.interpolate(video[:, i:i + 1].transpose(0, 1), size=(nh, nw),
                                           mode="bicubic", antialias=True)[0]
                             for i in range(n)], dim=1).clamp_(-1, 1)
        h, w = nh, nw
    top, left = (height - h) // 2, (width - w) // 2
    padded = torch.zeros(3, n, height, width)
    padded[:, :, top:top + h, left:left + w] = video
    mask = torch.ones(3, n, height, width)
    mask[:, :, top:top + h, left:left + w] = -1
    return _write(padded, mask, fps, out, save_video)


def inpaint(src: str | Path, box: tuple[int, int, int, int], out: str | Path
            ) -> tuple[Path, Path]:
    """Copy the clip and write a mask white inside ``box``; return the paths."""
    from .io import read_video, save_video

    frames, fps = read_video(src)
    n, h, w, _ = frames.shape
    x0, y0, x1, y1 = box
    if x1 > w or y1 > h:
        raise ValueError(f"--box {x0},{y0},{x1},{y1} lies outside the {w}x{h} frame of '{src}'")
    if w % 2 or h % 2:
        raise ValueError(f"'{src}' is {w}x{h}: the mask video needs an even size (H.264)")
    mask = -torch.ones(3, n, h, w)
    mask[:, :, y0:y1, x0:x1] = 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    video_path = out / VIDEO_NAME
    if Path(src).resolve() != video_path.resolve():
        shutil.copyfile(src, video_path)
    mask_path = save_video(mask, out / MASK_NAME, fps=fps or 16.0)
    return video_path, mask_path


def _write(video, mask, fps, out, save_video) -> tuple[Path, Path]:
    out = Path(out)
    return save_video(video, out / VIDEO_NAME, fps=fps), save_video(mask, out / MASK_NAME, fps=fps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wan.utils.vace_inputs",
                                     description="Make VACE source/mask video pairs "
                                                 "(mask: white = regenerate, black = keep).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("outpaint", help="pad the clip (centred) to a larger frame")
    p.add_argument("video")
    p.add_argument("--to", required=True, help="output size WIDTH*HEIGHT, e.g. 832*480")
    p.add_argument("--out", required=True, help="output folder")
    p = sub.add_parser("inpaint", help="mask a rectangle of the clip")
    p.add_argument("video")
    p.add_argument("--box", required=True, help="x0,y0,x1,y1 in pixels (x1, y1 exclusive)")
    p.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "outpaint":
            paths = outpaint(args.video, parse_size(args.to), args.out)
        else:
            paths = inpaint(args.video, parse_box(args.box), args.out)
    except (ValueError, FileNotFoundError, OSError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: {msg}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
