"""Settings shared by every released Wan2.1 model (facts of the release)."""

import torch
from easydict import EasyDict

wan_shared_cfg = EasyDict()

# text encoder (umT5-XXL)
wan_shared_cfg.t5_model = 'umt5_xxl'
wan_shared_cfg.t5_dtype = torch.bfloat16
wan_shared_cfg.text_len = 512
wan_shared_cfg.t5_checkpoint = 'models_t5_umt5-xxl-enc-bf16.pth'
wan_shared_cfg.t5_tokenizer = 'google/umt5-xxl'

# diffusion transformer: bf16 mixed precision
wan_shared_cfg.param_dtype = torch.bfloat16

# VAE
wan_shared_cfg.vae_checkpoint = 'Wan2.1_VAE.pth'
wan_shared_cfg.vae_stride = (4, 8, 8)

# inference
wan_shared_cfg.num_train_timesteps = 1000
wan_shared_cfg.sample_fps = 16
# The official default negative prompt (in Chinese, as released): garish colours,
# over-exposure, static frames, blurry details, subtitles, worst/low quality, JPEG
# artefacts, deformed hands and faces, fused fingers, cluttered background, ...
wan_shared_cfg.sample_neg_prompt = (
    '色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，'
    '低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，'
    '毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走')


def dit_config(dim: int, ffn_dim: int, num_heads: int, num_layers: int) -> EasyDict:
    """The transformer settings of a released model (the rest is common to all)."""
    return EasyDict(patch_size=(1, 2, 2), dim=dim, ffn_dim=ffn_dim, freq_dim=256,
                    num_heads=num_heads, num_layers=num_layers, window_size=(-1, -1),
                    qk_norm=True, cross_attn_norm=True, eps=1e-6)


def sampling_defaults(steps: int) -> EasyDict:
    """Default sampling settings of the official command line."""
    return EasyDict(sample_steps=steps, sample_shift=5.0, sample_guide_scale=5.0, frame_num=81)
