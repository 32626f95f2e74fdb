"""Wan2.2 text-to-video A14B: two 14B experts (high noise, then low noise), Wan2.1 VAE.

Facts of the Wan2.2 release (Wan-Video/Wan2.2, wan/configs/wan_t2v_A14B.py).
"""

from easydict import EasyDict

from .shared_config import dit_config, sampling_defaults, wan_shared_cfg

t2v_A14B = EasyDict(__name__='Config: Wan T2V A14B')
t2v_A14B.update(wan_shared_cfg)
t2v_A14B.update(dit_config(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40))
t2v_A14B.update(sampling_defaults(steps=40))
# the two experts live in subfolders of the checkpoint folder
t2v_A14B.low_noise_checkpoint = 'low_noise_model'
t2v_A14B.high_noise_checkpoint = 'high_noise_model'
# the high-noise expert runs while t >= boundary * num_train_timesteps
t2v_A14B.boundary = 0.875
t2v_A14B.sample_shift = 12.0
t2v_A14B.sample_guide_scale = (3.0, 4.0)  # (low noise, high noise), the official order
