"""Workload (c): loading the 1.3B DiT from safetensors — time and peak memory vs file size.

Each loader runs in a fresh subprocess so that its peak resident memory (RSS, file-mapped
pages included) is measured from the baseline after imports:

* ours: ``WanModel.from_pretrained`` (meta-device build + plain reads of each tensor);
* diffusers: ``WanTransformer3DModel.from_single_file`` on the same official-format file
  (its single-file loader converts the original checkpoint).

    python benchmarks/bench_load.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, median, save_results

SNIPPET = r"""
import json, sys, time
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import torch
from memory_probe import PeakRSS
which, folder = {which!r}, {folder!r}
if which == "ours":
    from wan.modules.model import WanModel
    load = lambda: WanModel.from_pretrained(folder)
else:
    from diffusers import WanTransformer3DModel
    load = lambda: WanTransformer3DModel.from_single_file(
        folder + "/diffusion_pytorch_model.safetensors", config={config!r}, subfolder="transformer",
        torch_dtype=torch.float32)
t0 = time.perf_counter()
with PeakRSS() as m:
    model = load()
print(json.dumps({{"seconds": time.perf_counter() - t0, "growth": m.growth}}))
"""


def run(which: str, folder: Path) -> dict:
    code = SNIPPET.format(tests=str(ROOT / "tests"), root=str(ROOT), which=which,
                          folder=str(folder), config=str(folder / "diffusers"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from test_model_real_size import REAL_13B_CONFIG, write_streaming_safetensors

    import torch
    from wan.modules.model import WanModel

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(REAL_13B_CONFIG))
        with torch.device("meta"):
            meta = WanModel(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
        shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
        size = write_streaming_safetensors(folder / "diffusion_pytorch_model.safetensors", shapes)
        # diffusers needs its own config; write it locally (no hub access)
        (folder / "diffusers" / "transformer").mkdir(parents=True)
        (folder / "diffusers" / "transformer" / "config.json").write_text(json.dumps({
            "_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2],
            "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960,
            "num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
            "eps": 1e-06, "image_dim": None, "added_kv_proj_dim": None,
            "rope_max_seq_len": 1024}))
        runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
        for _ in range(args.repeats):
            for which in runs:
                runs[which].append(run(which, folder))
    results = {"file_bytes": size}
    for which, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            results[which] = {"error": rs[0]["error"]}
            print(f"{which}: failed ({rs[0]['error']})")
            continue
        t, g = median([r["seconds"] for r in ok]), median([r["growth"] for r in ok])
        results[which] = {"seconds": t, "peak_growth_bytes": g, "growth_over_file": g / size}
        print(f"{which}: {t:.1f} s, peak RSS growth {g / 2**30:.2f} GiB = {g / size:.2f}x the "
              f"{size / 2**30:.2f} GiB file")
    print("wrote", save_results("load_cpu", results))


if __name__ == "__main__":
    main()
