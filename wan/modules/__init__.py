"""Model components: DiT, VAE, umT5 text encoder, CLIP image encoder, attention."""

_LAZY = {
    "WanModel": "wan.modules.model",
    "WanVAE": "wan.modules.vae",
    "T5EncoderModel": "wan.modules.t5",
    "T5Encoder": "wan.modules.t5",
    "HuggingfaceTokenizer": "wan.modules.tokenizers",
    "CLIPModel": "wan.modules.clip",
    "attention": "wan.modules.attention",
    "flash_attention": "wan.modules.attention",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wan.modules' has no attribute '{name}'")
