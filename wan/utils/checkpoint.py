"""The one place that reads checkpoint files.

Every component (DiT, VAE, T5, CLIP) loads through these functions so that

* pickled ``.pth`` files are opened with ``weights_only=True`` (a downloaded
  checkpoint can never run code),
* a missing, truncated or wrong file gives one clear :class:`CheckpointError`
  naming the file and what was expected, and
* modules are built on the ``meta`` device and receive the stored tensors by
  assignment: no random initialisation of billions of parameters and no second
  copy of the weights in memory.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

__all__ = [
    "CheckpointError",
    "require_dir",
    "require_file",
    "read_json",
    "load_pth",
    "load_safetensors",
    "find_safetensors",
    "DtypeRule",
    "cast_state_dict",
    "check_state_dict",
    "load_into_meta_module",
]

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
# The dtype a model keeps each floating tensor in: one dtype for all, or a function of the
# tensor's name (None: keep what the file stores).
DtypeRule = torch.dtype | Callable[[str], torch.dtype | None] | None


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, unreadable or of the wrong kind."""


def require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(
            f"{what} folder not found: '{p}'. Download it (see README, 'Model download') "
            f"or pass the right path.")
    return p


def require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        hint = ""
        if p.parent.is_dir():
            hint = " The folder exists but lacks this file: is the download complete?"
        raise CheckpointError(f"{what} not found: '{p}'.{hint}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{what} '{p}' is empty (0 bytes): the download is incomplete.")
    return p


def read_json(path: str | os.PathLike, what: str) -> dict:
    p = require_file(path, what)
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} '{p}' is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} '{p}' must hold a JSON object, found {type(data).__name__}.")
    return data


def load_pth(path: str | os.PathLike, what: str, mmap: bool = True) -> StateDict:
    """Load a pickled state dict safely (``weights_only=True``), memory-mapped when possible."""
    p = require_file(path, what)
    try:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            # Files in the legacy (non-zip) format cannot be memory-mapped.
            if mmap and "mmap" in str(e).lower():
                sd = torch.load(p, map_location="cpu", weights_only=True)
            else:
                raise
    except pickle.UnpicklingError as e:
        text = str(e)
        m = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        if m:
            raise CheckpointError(
                f"{what} '{p}' holds objects other than tensors ({m.group(1)}); it is not "
                f"loaded because unpickling them could run code.") from None
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = reason.group(1).strip() if reason else (text.splitlines()[0] if text else "")
        raise CheckpointError(
            f"{what} '{p}' is not a readable PyTorch checkpoint ({reason}): "
            f"truncated or corrupted? Download it again.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError,
            KeyError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{what} '{p}' is not a readable PyTorch checkpoint ({msg}): "
            f"truncated or corrupted? Download it again.") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what} '{p}' is not a state dict of tensors.")
    return dict(sd)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
            torch.float64: "fp64"}.get(dtype, str(dtype).replace("torch.", ""))


class _Caster:
    """Converts tensors to the dtype the model wants for them and remembers what it did.

    This is the one place where stored dtypes become model dtypes: every loader
    (DiT, VAE, T5, CLIP) goes through it, so a file saved in fp32, bf16 or fp16
    gives the model the same dtypes (and, for values the stored dtype holds, the
    same numbers).
    """

    def __init__(self, rule: DtypeRule):
        self.rule = rule
        self.stored: Counter = Counter()
        self.converted: Counter = Counter()

    def __call__(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        self.stored[t.dtype] += 1
        want = self.rule(name) if callable(self.rule) else self.rule
        if want is None or want == t.dtype:
            return t
        self.converted[(t.dtype, want)] += 1
        return t.to(want)

    def report(self, what: str, source: str, note: str = "") -> None:
        """Log once when the file's dtypes differ from those the model uses."""
        if not self.converted:
            return
        stored = "/".join(_dtype_name(d) for d, _ in self.stored.most_common())
        by_target: Counter = Counter()
        for (_, dst), n in self.converted.items():
            by_target[dst] += n
        done = ", ".join(f"{n} tensors to {_dtype_name(d)}" for d, n in by_target.most_common())
        log.info("%s %s: weights stored in %s; converted %s%s.", what, source, stored, done,
                 f" ({note})" if note else "")


def cast_state_dict(sd: Mapping[str, torch.Tensor], dtype: DtypeRule, what: str, source: str,
                    note: str = "") -> StateDict:
    """``sd`` with every floating tensor in the dtype ``dtype`` gives for it (see
    :data:`DtypeRule`), whatever dtype it was stored in; logs the conversion once."""
    cast = _Caster(dtype)
    out = {k: cast(k, v) for k, v in sd.items()}
    cast.report(what, source, note)
    return out


def find_safetensors(folder: str | os.PathLike, stem: str, what: str) -> list[Path]:
    """The safetensors files of ``stem`` in ``folder``: one file, or the shards of an index."""
    folder = require_dir(folder, what)
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        data = read_json(index, f"{what} index")
        weight_map = data.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{what} index '{index}' has no 'weight_map'.")
        shards = sorted(set(weight_map.values()))
        return [require_file(folder / s, f"{what} shard (listed in {index.name})") for s in shards]
    if single.is_file():
        return [require_file(single, what)]
    raise CheckpointError(
        f"{what} weights not found in '{folder}': expected '{single.name}' or "
        f"'{index.name}' with its shards.")


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


def _safetensors_header(f, path: Path, what: str) -> tuple[dict, int]:
    """The JSON header of an open safetensors file and the offset where data starts."""
    size = path.stat().st_size
    raw = f.read(8)
    n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    if n <= 0 or 8 + n > size:
        raise CheckpointError(f"{what} '{path}' is not a readable safetensors file (bad header): "
                              f"truncated or corrupted? Download it again.")
    try:
        header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{what} '{path}' is not a readable safetensors file (bad header): "
                              f"truncated or corrupted? Download it again.") from None
    header.pop("__metadata__", None)
    data_start = 8 + n
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if data_start + end > size:
        raise CheckpointError(
            f"{what} '{path}' is not a readable safetensors file (it holds {size} bytes but its "
            f"header needs {data_start + end}): truncated? Download it again.")
    return header, data_start


def load_safetensors(files: Iterable[str | os.PathLike], what: str, dtype: DtypeRule = None,
                     device: torch.device | str = "cpu", note: str = "") -> StateDict:
    """Read safetensors files tensor by tensor with plain reads (no memory map).

    Each tensor is read into its own buffer, then converted to ``dtype`` (floating
    tensors only) and moved to ``device``, so the resident memory grows by the
    size of the loaded model plus one tensor, not by twice the file.
    ``dtype`` may be a function of the tensor name (None keeps the stored dtype);
    a conversion is logged once, with ``note`` saying why.
    """
    sd: StateDict = {}
    cast = _Caster(dtype)
    files = list(files)
    for f_path in files:
        path = require_file(f_path, what)
        with open(path, "rb", buffering=0) as f:
            header, data_start = _safetensors_header(f, path, what)
            for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                st_dtype = _ST_DTYPES.get(info.get("dtype"))
                if st_dtype is None:
                    raise CheckpointError(f"{what} '{path}': tensor '{name}' has the unsupported "
                                          f"dtype {info.get('dtype')}.")
                begin, end = (int(o) for o in info["data_offsets"])
                buf = torch.empty(end - begin, dtype=torch.uint8)
                f.seek(data_start + begin)
                if end > begin and f.readinto(buf.numpy()) != end - begin:
                    raise CheckpointError(f"{what} '{path}' ended early while reading '{name}': "
                                          f"truncated? Download it again.")
                t = cast(name, buf.view(st_dtype).reshape(info["shape"]))
                sd[name] = t.to(device)
    if files:
        more = f" (+{len(files) - 1} more shards)" if len(files) > 1 else ""
        cast.report(what, f"'{files[0]}'{more}", note)
    return sd


def check_state_dict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                     what: str, ignore_unexpected: Iterable[str] = ()) -> None:
    """Raise one clear error if ``sd`` does not fit ``module`` (names and shapes)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    ignore = tuple(ignore_unexpected)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and not k.startswith(ignore)]
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {expected[k]}"
             for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]

    def few(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")

    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors ({few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors ({few(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape ({few(wrong)})")
    if problems:
        raise CheckpointError(
            f"{source} does not hold a {what}: " + "; ".join(problems) + ".")


def load_into_meta_module(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                          what: str, device: torch.device | str = "cpu",
                          ignore_unexpected: Iterable[str] = ()) -> nn.Module:
    """Give a module built on the meta device the tensors of ``sd`` (no copies on CPU)."""
    check_state_dict(module, sd, source, what, ignore_unexpected)
    expected = module.state_dict().keys()
    module.load_state_dict({k: sd[k] for k in expected}, strict=True, assign=True)
    for name, buf in module.named_buffers():
        if buf.is_meta:
            raise CheckpointError(f"{what}: buffer '{name}' was not filled from {source}.")
    return module.to(device)
