"""Wan2.1 text-to-video 14B (also used for text-to-image)."""

from easydict import EasyDict

from .shared_config import wan_shared_cfg

t2v_14B = EasyDict(__name__='Config: Wan T2V 14B')
t2v_14B.update(wan_shared_cfg)

# transformer
t2v_14B.patch_size = (1, 2, 2)
t2v_14B.dim = 5120
t2v_14B.ffn_dim = 13824
t2v_14B.freq_dim = 256
t2v_14B.num_heads = 40
t2v_14B.num_layers = 40
t2v_14B.window_size = (-1, -1)
t2v_14B.qk_norm = True
t2v_14B.cross_attn_norm = True
t2v_14B.eps = 1e-6

# sampling defaults
t2v_14B.sample_steps = 50
t2v_14B.sample_shift = 5.0
t2v_14B.sample_guide_scale = 5.0
t2v_14B.frame_num = 81
