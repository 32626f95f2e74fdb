"""The Wan2.2 models in the demos: --task t2v-A14B / i2v-A14B and the TI2V-5B page, in process."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_gradio import DEMO_DIR, mp4_info


@pytest.fixture(scope="module")
def wan_demo():
    sys.path.insert(0, str(DEMO_DIR))
    try:
        import wan_demo
    finally:
        sys.path.remove(str(DEMO_DIR))
    return wan_demo


def quiet(*_, **__):
    return None


def test_variant_flags_pick_the_wan22_specs(wan_demo, t2v_a14b_ckpt, i2v_a14b_ckpt, tmp_path):
    spec = wan_demo._variant(wan_demo.DEMOS["t2v-14B"], ["--task", "t2v-A14B"])
    assert spec.task == "t2v-A14B"
    spec = wan_demo._variant(wan_demo.DEMOS["i2v-14B"], ["--task", "i2v-A14B", "--ckpt_dir", "x"])
    assert spec.task == "i2v-A14B" and not spec.ckpt_per_resolution
    assert wan_demo._variant(wan_demo.DEMOS["vace-14B"], ["--model_name", "vace-1.3B"]).task \
        == "vace-1.3B"
    args = wan_demo.parse_args(spec, ["--task", "i2v-A14B", "--ckpt_dir", str(i2v_a14b_ckpt),
                                      "--device", "cpu", "--output_dir", str(tmp_path)])
    demo = wan_demo.WanDemo(spec, args)
    demo.load_models()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 160, 3), np.uint8))
    out, seed, _ = demo.generate("a cat", {"image": image}, "480P", 1, 1, 3.5, 5.0, 7, "",
                                 progress=quiet)
    assert seed == 7 and mp4_info(out)[1:] == (832, 464)
    assert demo.pipelines[""].is_moe


def test_ti2v_page_text_and_image(wan_demo, ti2v_ckpt, tmp_path):
    spec = wan_demo.DEMOS["ti2v-5B"]
    args = wan_demo.parse_args(spec, ["--ckpt_dir", str(ti2v_ckpt), "--device", "cpu",
                                      "--output_dir", str(tmp_path)])
    demo = wan_demo.WanDemo(spec, args)
    demo.load_models()
    assert demo.api_names()[:2] == ["prompt", "image"]  # the image is optional
    out, _, _ = demo.generate("a cat", {"image": None}, "1280*704", 1, 1, 5.0, 5.0, 3, "",
                              progress=quiet)
    assert mp4_info(out)[1:] == (1280, 704)
    side = json.loads(Path(out).with_suffix(".json").read_text())
    assert side["fps"] == 24 and side["task"] == "ti2v-5B"
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), np.uint8))
    out, _, _ = demo.generate("a cat", {"image": image}, "1280*704", 1, 1, 5.0, 5.0, 4, "",
                              progress=quiet)
    assert mp4_info(out)[1:] == (1088, 800)  # best_output_size of a 4:3 image in 1280*704
