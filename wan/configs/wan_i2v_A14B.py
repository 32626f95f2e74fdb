"""Wan2.2 image-to-video A14B: two 14B experts, no CLIP encoder, Wan2.1 VAE.

Facts of the Wan2.2 release (Wan-Video/Wan2.2, wan/configs/wan_i2v_A14B.py). Unlike Wan2.1
I2V, the negative prompt has no "镜头晃动，" prefix and the image reaches the DiT only as the
mask + first-frame latents (``in_dim`` 36, no ``img_emb``).
"""

from easydict import EasyDict

from .shared_config import dit_config, sampling_defaults, wan_shared_cfg

i2v_A14B = EasyDict(__name__='Config: Wan I2V A14B')
i2v_A14B.update(wan_shared_cfg)
i2v_A14B.update(dit_config(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40))
i2v_A14B.update(sampling_defaults(steps=40))
i2v_A14B.low_noise_checkpoint = 'low_noise_model'
i2v_A14B.high_noise_checkpoint = 'high_noise_model'
i2v_A14B.boundary = 0.900
i2v_A14B.sample_shift = 5.0
i2v_A14B.sample_guide_scale = (3.5, 3.5)  # (low noise, high noise)
