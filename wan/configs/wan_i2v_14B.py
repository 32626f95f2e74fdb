"""Wan2.1 image-to-video 14B (480P and 720P checkpoints share this config)."""

import torch
from easydict import EasyDict

from .shared_config import wan_shared_cfg

i2v_14B = EasyDict(__name__='Config: Wan I2V 14B')
i2v_14B.update(wan_shared_cfg)
# "镜头晃动" (camera shake) is prepended to the shared negative prompt.
i2v_14B.sample_neg_prompt = '镜头晃动，' + i2v_14B.sample_neg_prompt

# image encoder: the ViT-H/14 tower of open-clip XLM-RoBERTa-Large
i2v_14B.clip_model = 'clip_xlm_roberta_vit_h_14'
i2v_14B.clip_dtype = torch.float16
i2v_14B.clip_checkpoint = 'models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth'
i2v_14B.clip_tokenizer = 'xlm-roberta-large'

# transformer
i2v_14B.patch_size = (1, 2, 2)
i2v_14B.dim = 5120
i2v_14B.ffn_dim = 13824
i2v_14B.freq_dim = 256
i2v_14B.num_heads = 40
i2v_14B.num_layers = 40
i2v_14B.window_size = (-1, -1)
i2v_14B.qk_norm = True
i2v_14B.cross_attn_norm = True
i2v_14B.eps = 1e-6

# sampling defaults (shift 3.0 is recommended at 480P)
i2v_14B.sample_steps = 40
i2v_14B.sample_shift = 5.0
i2v_14B.sample_guide_scale = 5.0
i2v_14B.frame_num = 81
