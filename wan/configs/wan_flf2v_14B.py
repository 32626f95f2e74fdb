"""Wan2.1 first-last-frame-to-video 14B (Wan2.1-FLF2V-14B-720P).

The official config is a copy of the I2V-14B one with "镜头切换" (shot change)
prepended to the negative prompt. The official command line samples it with
50 steps and shift 16 (``generate.py``: ``sample_shift = 16`` for flf2v).
"""

import copy

from .wan_i2v_14B import i2v_14B

flf2v_14B = copy.deepcopy(i2v_14B)
flf2v_14B.__name__ = 'Config: Wan FLF2V 14B'
flf2v_14B.sample_neg_prompt = '镜头切换，' + i2v_14B.sample_neg_prompt
flf2v_14B.sample_steps = 50
flf2v_14B.sample_shift = 16.0
flf2v_14B.sample_guide_scale = 5.0
