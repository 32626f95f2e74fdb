"""Wan2.1 text-to-video 1.3B."""

from easydict import EasyDict

from .shared_config import wan_shared_cfg

t2v_1_3B = EasyDict(__name__='Config: Wan T2V 1.3B')
t2v_1_3B.update(wan_shared_cfg)

# transformer
t2v_1_3B.patch_size = (1, 2, 2)
t2v_1_3B.dim = 1536
t2v_1_3B.ffn_dim = 8960
t2v_1_3B.freq_dim = 256
t2v_1_3B.num_heads = 12
t2v_1_3B.num_layers = 30
t2v_1_3B.window_size = (-1, -1)
t2v_1_3B.qk_norm = True
t2v_1_3B.cross_attn_norm = True
t2v_1_3B.eps = 1e-6

# sampling defaults (the README recommends guide 6 and shift 8-12 for this model)
t2v_1_3B.sample_steps = 50
t2v_1_3B.sample_shift = 5.0
t2v_1_3B.sample_guide_scale = 5.0
t2v_1_3B.frame_num = 81
