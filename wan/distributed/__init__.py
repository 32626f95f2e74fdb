"""Multi-GPU generation: FSDP sharding, sequence parallelism and ``torchrun`` setup.

* :mod:`.fsdp`: ``shard_model`` shards the DiT / umT5 blocks over all ranks.
* :mod:`.sequence_parallel`: Ulysses x ring sequence parallelism of the DiT.
* :mod:`.ring_attention`: exact ring attention merged through the log-sum-exp.
* :mod:`.util`: the process group from the ``torchrun`` environment, settings
  check across ranks, failure propagation and the collective timeout.
* :mod:`.xfuser_backend`: optional xDiT attention on CUDA.

Nothing here is imported by the single-process path, and nothing touches CUDA
at import time.
"""
