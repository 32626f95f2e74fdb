"""Workload (d): a whole ``generate.py`` run on a miniature checkpoint, stage by stage.

Runs the real command line in a subprocess and reads the duration of each stage from its
log (loading, text encoding, denoising, VAE decoding, writing).

    python benchmarks/bench_generate.py [--task t2v-1.3B] [--frame_num 5] [--steps 4]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, save_results

STAGE = re.compile(r"INFO: (.+?) took ([\d.]+) s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="t2v-1.3B")
    p.add_argument("--size", default="832*480")
    p.add_argument("--frame_num", type=int, default=5)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        subprocess.run([sys.executable, "-m", "wan.utils.tiny_checkpoint", str(ckpt), "--task",
                        args.task], check=True, cwd=ROOT, capture_output=True)
        cmd = [sys.executable, str(ROOT / "generate.py"), "--task", args.task, "--size",
               args.size, "--ckpt_dir", str(ckpt), "--frame_num", str(args.frame_num),
               "--sample_steps", str(args.steps), "--base_seed", "0", "--device", args.device,
               "--save_file", str(Path(tmp) / "out.mp4")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        total = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr)
    stages = {m.group(1): float(m.group(2)) for m in STAGE.finditer(proc.stdout)}
    for name, secs in stages.items():
        print(f"{name:40s} {secs:7.2f} s")
    print(f"{'whole process (imports included)':40s} {total:7.2f} s")
    print("wrote", save_results(f"generate_{args.device}",
                                {"task": args.task, "size": args.size, "frames": args.frame_num,
                                 "steps": args.steps, "stages": stages, "total_s": total}))


if __name__ == "__main__":
    main()
