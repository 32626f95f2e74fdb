"""Process-group setup for ``torchrun`` and the failure handling of multi-process runs.

* :func:`init_distributed` creates the process group from the ``torchrun``
  environment (NCCL on CUDA, gloo otherwise) with a collective timeout, checks
  that every rank was started with the same settings, and sets up sequence
  parallelism when asked for.
* A rank that fails calls :func:`report_failure`: its message goes to the
  rendezvous store, and a watchdog thread on every other rank prints it and
  ends that process, so no rank waits in a collective for a peer that is gone.
* A rank that dies without reporting (killed, out of memory) is caught by
  ``torchrun``, which stops the others, and otherwise by the collective timeout.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "report_failure", "shutdown_distributed", "collective_timeout",
           "check_same_settings", "DistributedSetupError", "SETTINGS_KEYS"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0  # NCCL's default, what the official script runs with
_ERROR_KEY = "wan/failure"
_ACK_KEY = "wan/failure_ack/"

# Settings every rank must agree on (the seed and the extended prompt are broadcast).
SETTINGS_KEYS = ("task", "size", "frame_num", "ulysses_size", "ring_size", "t5_fsdp", "dit_fsdp",
                 "t5_cpu", "sample_solver", "sample_steps", "sample_shift", "sample_guide_scale",
                 "prompt", "negative_prompt", "use_prompt_extend")


class DistributedSetupError(ValueError):
    """The ranks cannot work together (reported as one line on every rank)."""


def collective_timeout() -> timedelta:
    """Collective timeout: ``WAN_DIST_TIMEOUT`` seconds, default 600."""
    raw = os.environ.get("WAN_DIST_TIMEOUT", "")
    try:
        seconds = float(raw) if raw.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedSetupError(f"WAN_DIST_TIMEOUT must be a number of seconds, got '{raw}'")
    if seconds <= 0:
        raise DistributedSetupError(f"WAN_DIST_TIMEOUT must be positive, got {seconds}")
    return timedelta(seconds=seconds)


def init_distributed(args: argparse.Namespace, rank: int, world_size: int,
                     device: torch.device) -> None:
    """Join the process group of this ``torchrun`` launch and prepare parallelism.

    ``args`` carries ``ulysses_size`` and ``ring_size`` (and the generation
    settings compared across ranks). Raises :class:`DistributedSetupError` on
    every rank when the ranks disagree.
    """
    if not dist.is_available():
        raise DistributedSetupError("this PyTorch build has no torch.distributed support")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size, timeout=collective_timeout())
        log.info("Process group: %d processes, backend %s, collective timeout %.0f s",
                 world_size, backend, collective_timeout().total_seconds())
    _start_watchdog()
    check_same_settings({k: getattr(args, k, None) for k in SETTINGS_KEYS})
    ulysses, ring = getattr(args, "ulysses_size", 1), getattr(args, "ring_size", 1)
    if ulysses * ring > 1:
        from .sequence_parallel import init_sequence_parallel
        try:
            init_sequence_parallel(ulysses, ring)
        except ImportError as e:  # yunchang (or xfuser) missing: one line, not a traceback
            raise DistributedSetupError(str(e)) from None


def check_same_settings(settings: dict) -> None:
    """Raise on every rank if some rank was started with different ``settings``."""
    gathered: list[dict | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, settings)
    for other_rank, other in enumerate(gathered):
        diff = sorted(k for k in settings if other.get(k) != gathered[0].get(k))
        if diff:
            shown = ", ".join(f"{k}={gathered[0].get(k)!r} on rank 0 but {other.get(k)!r} on "
                              f"rank {other_rank}" for k in diff[:3])
            raise DistributedSetupError(f"the processes were started with different settings "
                                        f"({shown}); launch every rank with the same arguments")


# ------------------------------------------------------------------ failures
_watchdog: threading.Thread | None = None
_stop = threading.Event()


def _store():
    """The rendezvous key-value store of the default process group, or None."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store
        return _get_default_store()
    except Exception:  # noqa: BLE001 - no store: only the collective timeout protects us
        return None


def _start_watchdog(poll_s: float = 0.2) -> None:
    global _watchdog
    store = _store()
    if store is None or _watchdog is not None:
        return
    _stop.clear()
    rank = dist.get_rank()

    def watch() -> None:
        while not _stop.wait(poll_s):
            try:
                if not store.check([_ERROR_KEY]):
                    continue
                message = store.get(_ERROR_KEY).decode()
            except Exception:  # noqa: BLE001 - store gone: the run is ending anyway
                return
            if message.startswith(f"rank {rank}:"):
                return  # our own report; the main thread is exiting with it
            sys.stderr.write(f"error: {message} (rank {rank} stops too)\n")
            sys.stderr.flush()
            try:
                store.set(f"{_ACK_KEY}{rank}", b"1")
            except Exception:  # noqa: BLE001
                pass
            os._exit(1)

    _watchdog = threading.Thread(target=watch, name="wan-failure-watchdog", daemon=True)
    _watchdog.start()


def report_failure(error: BaseException | str, wait_s: float = 5.0) -> None:
    """Tell the other ranks that this one failed, so they stop instead of waiting for it.

    Waits up to ``wait_s`` for them to acknowledge (each prints the message first).
    A no-op outside a process group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    store = _store()
    if store is None:
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    try:
        if store.check([_ERROR_KEY]):  # another rank failed first; its message is the cause
            store.set(f"{_ACK_KEY}{rank}", b"1")  # we stop too: don't keep it waiting
            return
        store.set(_ERROR_KEY, f"rank {rank}: {text}".encode())
        deadline = time.monotonic() + wait_s
        others = [f"{_ACK_KEY}{r}" for r in range(world) if r != rank]
        while time.monotonic() < deadline and not store.check(others):
            time.sleep(0.05)
    except Exception:  # noqa: BLE001 - best effort: torchrun and the timeout remain
        pass


def shutdown_distributed() -> None:
    """Stop the watchdog and leave the process group (end of a run)."""
    global _watchdog
    _stop.set()
    _watchdog = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
