"""Multi-GPU helpers: FSDP wrapping and sequence-parallel attention."""
