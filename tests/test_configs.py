"""The configs hold the facts of the official release."""

import torch

from wan.configs import MAX_AREA_CONFIGS, SIZE_CONFIGS, SUPPORTED_SIZES, WAN_CONFIGS


def test_dims_table_of_the_release():
    expected = {"t2v-1.3B": (1536, 8960, 12, 30), "t2v-14B": (5120, 13824, 40, 40),
                "i2v-14B": (5120, 13824, 40, 40), "t2i-14B": (5120, 13824, 40, 40),
                "flf2v-14B": (5120, 13824, 40, 40), "vace-1.3B": (1536, 8960, 12, 30),
                "vace-14B": (5120, 13824, 40, 40)}
    for task, (dim, ffn, heads, layers) in expected.items():
        c = WAN_CONFIGS[task]
        assert (c.dim, c.ffn_dim, c.num_heads, c.num_layers) == (dim, ffn, heads, layers)
        assert c.freq_dim == 256 and c.patch_size == (1, 2, 2) and c.vae_stride == (4, 8, 8)
        assert c.text_len == 512 and c.num_train_timesteps == 1000 and c.sample_fps == 16
        assert c.t5_dtype == torch.bfloat16 and c.param_dtype == torch.bfloat16
        assert c.t5_checkpoint == "models_t5_umt5-xxl-enc-bf16.pth"
        assert c.vae_checkpoint == "Wan2.1_VAE.pth" and c.t5_tokenizer == "google/umt5-xxl"


def test_negative_prompts_and_i2v_files():
    t2v, i2v = WAN_CONFIGS["t2v-14B"].sample_neg_prompt, WAN_CONFIGS["i2v-14B"].sample_neg_prompt
    assert t2v.startswith("色调艳丽，过曝，静态") and t2v.endswith("背景人很多，倒着走")
    assert i2v == "镜头晃动，" + t2v
    c = WAN_CONFIGS["i2v-14B"]
    assert c.clip_checkpoint == "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    assert c.clip_dtype == torch.float16 and c.clip_tokenizer == "xlm-roberta-large"
    assert c.sample_steps == 40 and WAN_CONFIGS["t2v-14B"].sample_steps == 50
    assert WAN_CONFIGS["t2i-14B"].frame_num == 1 and WAN_CONFIGS["t2v-14B"].frame_num == 81
    # configs are independent copies
    assert WAN_CONFIGS["t2i-14B"] is not WAN_CONFIGS["t2v-14B"]


def test_size_tables():
    assert SIZE_CONFIGS["832*480"] == (832, 480) and SIZE_CONFIGS["1024*1024"] == (1024, 1024)
    assert MAX_AREA_CONFIGS["1280*720"] == 1280 * 720 and "1024*1024" not in MAX_AREA_CONFIGS
    assert SUPPORTED_SIZES["t2v-1.3B"] == ("480*832", "832*480")
    assert set(SUPPORTED_SIZES["t2v-14B"]) == {"720*1280", "1280*720", "480*832", "832*480"}
    assert SUPPORTED_SIZES["i2v-14B"] == SUPPORTED_SIZES["t2v-14B"]
    assert set(SUPPORTED_SIZES["t2i-14B"]) == {"720*1280", "1280*720", "480*832", "832*480",
                                               "1024*1024"}
    assert SUPPORTED_SIZES["ti2v-5B"] == ("704*1280", "1280*704")
    assert all(s in SIZE_CONFIGS for sizes in SUPPORTED_SIZES.values() for s in sizes)


def test_wan22_configs_are_the_official_facts():
    t2v, i2v, ti2v = (WAN_CONFIGS[k] for k in ("t2v-A14B", "i2v-A14B", "ti2v-5B"))
    assert (t2v.boundary, t2v.sample_guide_scale, t2v.sample_shift, t2v.sample_steps) == \
        (0.875, (3.0, 4.0), 12.0, 40)
    assert (i2v.boundary, i2v.sample_guide_scale, i2v.sample_shift, i2v.sample_steps) == \
        (0.900, (3.5, 3.5), 5.0, 40)
    for cfg in (t2v, i2v):
        assert (cfg.high_noise_checkpoint, cfg.low_noise_checkpoint) == \
            ("high_noise_model", "low_noise_model")
        assert cfg.vae_checkpoint == "Wan2.1_VAE.pth" and (cfg.dim, cfg.num_layers) == (5120, 40)
    # no "镜头晃动，" in front for I2V-A14B, unlike Wan2.1 I2V; no CLIP
    assert i2v.sample_neg_prompt == WAN_CONFIGS["t2v-14B"].sample_neg_prompt
    assert "clip_checkpoint" not in i2v
    assert (ti2v.dim, ti2v.ffn_dim, ti2v.num_heads, ti2v.num_layers) == (3072, 14336, 24, 30)
    assert (ti2v.vae_checkpoint, ti2v.vae_stride, ti2v.sample_fps, ti2v.frame_num) == \
        ("Wan2.2_VAE.pth", (4, 16, 16), 24, 121)
    assert (ti2v.sample_steps, ti2v.sample_shift, ti2v.sample_guide_scale) == (50, 5.0, 5.0)


def test_flf2v_config_is_the_i2v_one_with_its_own_defaults():
    flf, i2v = WAN_CONFIGS["flf2v-14B"], WAN_CONFIGS["i2v-14B"]
    assert flf is not i2v and flf.__name__ == "Config: Wan FLF2V 14B"
    assert flf.sample_neg_prompt == "镜头切换，" + i2v.sample_neg_prompt
    assert flf.sample_neg_prompt.startswith("镜头切换，镜头晃动，色调艳丽")
    for key in ("clip_model", "clip_dtype", "clip_checkpoint", "clip_tokenizer", "t5_checkpoint",
                "vae_checkpoint", "dim", "ffn_dim", "num_heads", "num_layers", "param_dtype"):
        assert flf[key] == i2v[key], key
    assert (flf.sample_steps, flf.sample_shift, flf.sample_guide_scale) == (50, 16.0, 5.0)
    assert i2v.sample_steps == 40 and i2v.sample_shift == 5.0  # the copy changed nothing there
    assert set(SUPPORTED_SIZES["flf2v-14B"]) == {"720*1280", "1280*720", "480*832", "832*480"}


def test_vace_configs_are_the_t2v_ones():
    """As the official configs/__init__.py: VACE 1.3B / 14B use the T2V 1.3B / 14B configs."""
    for vace, t2v in (("vace-1.3B", "t2v-1.3B"), ("vace-14B", "t2v-14B")):
        v, t = WAN_CONFIGS[vace], WAN_CONFIGS[t2v]
        assert v is not t and v.__name__ == t.__name__.replace("T2V", "VACE")
        assert {k: x for k, x in v.items() if k != "__name__"} == \
            {k: x for k, x in t.items() if k != "__name__"}
    assert SUPPORTED_SIZES["vace-1.3B"] == ("480*832", "832*480")
    assert SUPPORTED_SIZES["vace-14B"] == ("720*1280", "1280*720", "480*832", "832*480")
