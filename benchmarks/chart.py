"""Draw the benchmark chart (``assets/benchmarks.png``) from ``benchmarks/results/*.json``.

    python benchmarks/chart.py [--device cpu]

Each bar is the project's time (or peak memory) divided by diffusers' on the same work:
below 1.0 the project is faster (leaner).
"""

from __future__ import annotations

import argparse
import json

from common import RESULTS, ROOT


def ratios(device: str) -> dict[str, float]:
    out: dict[str, float] = {}

    def load(name):
        path = RESULTS / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    dit = load(f"dit_{device}")
    if dit:
        if "fp32" in dit:
            out["DiT fp32 loop\n(time)"] = dit["fp32"]["ratio"]
        if "bf16" in dit:
            out["DiT bf16 step\n(time)"] = dit["bf16"]["ratio"]
    vae = load(f"vae_{device}")
    if vae:
        if "time_ratio" in vae:
            out["VAE decode\n(time)"] = vae["time_ratio"]
        if "memory_ratio" in vae:
            out["VAE decode\n(peak memory)"] = vae["memory_ratio"]
    load_res = load("load_cpu")
    if load_res and "seconds" in load_res.get("ours", {}) and "seconds" in load_res.get(
            "diffusers", {}):
        out["DiT load\n(time)"] = load_res["ours"]["seconds"] / load_res["diffusers"]["seconds"]
        out["DiT load\n(peak memory)"] = (load_res["ours"]["peak_growth_bytes"]
                                          / load_res["diffusers"]["peak_growth_bytes"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "assets" / "benchmarks.png"))
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = ratios(args.device)
    if not data:
        raise SystemExit(f"no results in {RESULTS}: run the benchmarks first")
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    names, values = list(data), list(data.values())
    bars = ax.bar(names, values, color=["#2b8a3e" if v < 1 else "#c92a2a" for v in values])
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.text(len(names) - 0.5, 1.02, "diffusers = 1.0", ha="right", va="bottom", fontsize=8)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.02, f"{v:.2f}", ha="center", fontsize=9)
    ax.set_ylabel("project / diffusers")
    ax.set_ylim(0, max(1.2, max(values) + 0.15))
    ax.set_title(f"Wan2.1 rebuild vs diffusers on the same work ({args.device}; lower is better)",
                 fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
