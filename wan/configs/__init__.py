"""Configurations of the released Wan2.1 and Wan2.2 models and the supported output sizes."""

import copy
import os

os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from .wan_flf2v_14B import flf2v_14B
from .wan_i2v_14B import i2v_14B
from .wan_i2v_A14B import i2v_A14B
from .wan_t2v_1_3B import t2v_1_3B
from .wan_t2v_14B import t2v_14B
from .wan_t2v_A14B import t2v_A14B
from .wan_ti2v_5B import ti2v_5B

# Text-to-image uses the T2V-14B weights, one frame.
t2i_14B = copy.deepcopy(t2v_14B)
t2i_14B.__name__ = 'Config: Wan T2I 14B'
t2i_14B.frame_num = 1

# VACE: the official configs are those of T2V 1.3B / 14B (the VACE DiT reads its own
# vace_layers and vace_in_dim from its config.json). Independent copies here.
vace_1_3B = copy.deepcopy(t2v_1_3B)
vace_1_3B.__name__ = 'Config: Wan VACE 1.3B'
vace_14B = copy.deepcopy(t2v_14B)
vace_14B.__name__ = 'Config: Wan VACE 14B'

WAN_CONFIGS = {
    't2v-14B': t2v_14B,
    't2v-1.3B': t2v_1_3B,
    'i2v-14B': i2v_14B,
    't2i-14B': t2i_14B,
    'flf2v-14B': flf2v_14B,
    'vace-1.3B': vace_1_3B,
    'vace-14B': vace_14B,
    # Wan2.2
    't2v-A14B': t2v_A14B,
    'i2v-A14B': i2v_A14B,
    'ti2v-5B': ti2v_5B,
}

# "W*H" -> (width, height)
SIZE_CONFIGS = {
    '720*1280': (720, 1280),
    '1280*720': (1280, 720),
    '480*832': (480, 832),
    '832*480': (832, 480),
    '1024*1024': (1024, 1024),
    '704*1280': (704, 1280),
    '1280*704': (1280, 704),
}

MAX_AREA_CONFIGS = {
    '720*1280': 720 * 1280,
    '1280*720': 1280 * 720,
    '480*832': 480 * 832,
    '832*480': 832 * 480,
    '704*1280': 704 * 1280,
    '1280*704': 1280 * 704,
}

SUPPORTED_SIZES = {
    't2v-14B': ('720*1280', '1280*720', '480*832', '832*480'),
    't2v-1.3B': ('480*832', '832*480'),
    'i2v-14B': ('720*1280', '1280*720', '480*832', '832*480'),
    't2i-14B': ('720*1280', '1280*720', '480*832', '832*480', '1024*1024'),
    # trained for 720P; the 480P sizes are allowed as in the official table
    'flf2v-14B': ('720*1280', '1280*720', '480*832', '832*480'),
    'vace-1.3B': ('480*832', '832*480'),
    'vace-14B': ('720*1280', '1280*720', '480*832', '832*480'),
    't2v-A14B': ('720*1280', '1280*720', '480*832', '832*480'),
    'i2v-A14B': ('720*1280', '1280*720', '480*832', '832*480'),
    'ti2v-5B': ('704*1280', '1280*704'),
}

__all__ = ['WAN_CONFIGS', 'SIZE_CONFIGS', 'MAX_AREA_CONFIGS', 'SUPPORTED_SIZES',
           't2v_14B', 't2v_1_3B', 'i2v_14B', 't2i_14B', 'flf2v_14B',
           'vace_1_3B', 'vace_14B', 't2v_A14B', 'i2v_A14B', 'ti2v_5B']
