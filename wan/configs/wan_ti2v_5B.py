"""Wan2.2 text-image-to-video 5B: one dense DiT over the Wan2.2 VAE (4 x 16 x 16, 48 channels).

Facts of the Wan2.2 release (Wan-Video/Wan2.2, wan/configs/wan_ti2v_5B.py).
"""

from easydict import EasyDict

from .shared_config import dit_config, sampling_defaults, wan_shared_cfg

ti2v_5B = EasyDict(__name__='Config: Wan TI2V 5B')
ti2v_5B.update(wan_shared_cfg)
ti2v_5B.vae_checkpoint = 'Wan2.2_VAE.pth'
ti2v_5B.vae_stride = (4, 16, 16)
ti2v_5B.update(dit_config(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30))
ti2v_5B.update(sampling_defaults(steps=50))
ti2v_5B.sample_fps = 24
ti2v_5B.frame_num = 121
