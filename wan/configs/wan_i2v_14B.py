"""Wan2.1 image-to-video 14B (480P and 720P checkpoints share this config)."""

import torch
from easydict import EasyDict

from .shared_config import dit_config, sampling_defaults, wan_shared_cfg

i2v_14B = EasyDict(__name__='Config: Wan I2V 14B')
i2v_14B.update(wan_shared_cfg)
# "镜头晃动" (camera shake) is prepended to the shared negative prompt.
i2v_14B.sample_neg_prompt = '镜头晃动，' + i2v_14B.sample_neg_prompt

# image encoder: the ViT-H/14 tower of open-clip XLM-RoBERTa-Large
i2v_14B.clip_model = 'clip_xlm_roberta_vit_h_14'
i2v_14B.clip_dtype = torch.float16
i2v_14B.clip_checkpoint = 'models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth'
i2v_14B.clip_tokenizer = 'xlm-roberta-large'

i2v_14B.update(dit_config(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40))
i2v_14B.update(sampling_defaults(steps=40))  # shift 3.0 is recommended at 480P
