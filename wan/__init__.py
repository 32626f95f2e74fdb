"""Wan video generation (Wan2.1 and Wan2.2): text-to-video, image-to-video,
first-last-frame-to-video, VACE video editing, text-image-to-video and text-to-image.

The pipelines ``WanT2V``, ``WanI2V``, ``WanFLF2V``, ``WanVace`` and ``WanTI2V`` keep the
official names and signatures. They are imported on first use so that ``import wan`` stays
light.
"""

from . import configs

__version__ = "0.1.0"

_LAZY = {
    "WanT2V": ("wan.text2video", "WanT2V"),
    "WanI2V": ("wan.image2video", "WanI2V"),
    "WanFLF2V": ("wan.first_last_frame2video", "WanFLF2V"),
    "WanVace": ("wan.vace", "WanVace"),
    "WanTI2V": ("wan.textimage2video", "WanTI2V"),
    "modules": ("wan.modules", None),
    "distributed": ("wan.distributed", None),
    "utils": ("wan.utils", None),
}

__all__ = ["WanT2V", "WanI2V", "WanFLF2V", "WanVace", "WanTI2V", "configs", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        mod_name, attr = _LAZY[name]
        mod = importlib.import_module(mod_name)
        return getattr(mod, attr) if attr else mod
    raise AttributeError(f"module 'wan' has no attribute '{name}'")
