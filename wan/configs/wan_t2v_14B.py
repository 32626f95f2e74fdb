"""Wan2.1 text-to-video 14B (also used for text-to-image)."""

from easydict import EasyDict

from .shared_config import dit_config, sampling_defaults, wan_shared_cfg

t2v_14B = EasyDict(__name__='Config: Wan T2V 14B')
t2v_14B.update(wan_shared_cfg)
t2v_14B.update(dit_config(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40))
t2v_14B.update(sampling_defaults(steps=50))
