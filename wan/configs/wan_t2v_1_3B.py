"""Wan2.1 text-to-video 1.3B (the README recommends guide 6 and shift 8-12 for it)."""

from easydict import EasyDict

from .shared_config import dit_config, sampling_defaults, wan_shared_cfg

t2v_1_3B = EasyDict(__name__='Config: Wan T2V 1.3B')
t2v_1_3B.update(wan_shared_cfg)
t2v_1_3B.update(dit_config(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30))
t2v_1_3B.update(sampling_defaults(steps=50))
