"""Checkpoint I/O: read state dicts from safetensors or torch files, write them atomically.

Torch files are read with ``torch.load(weights_only=True)`` — never arbitrary pickles. A
checkpoint is a flat mapping ``name → tensor``; a torch file may also wrap it as
``{"state_dict": …}`` or ``{"model": …}``. Writes go to a temporary file in the target
folder and are renamed into place, so a failure never leaves a partial output file.
"""
from __future__ import annotations

import os
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch

from .errors import SymmetryError

__all__ = ["CheckpointError", "load_state_dict", "save_state_dict", "is_safetensors", "atomic_path"]

_WRAPPERS = ("state_dict", "model", "model_state_dict", "params")


class CheckpointError(SymmetryError, ValueError):
    """A checkpoint file is missing, corrupt, not a flat state dict, or cannot be written."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with a safetensors header (8-byte length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n < os.path.getsize(path)


def load_state_dict(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a flat ``name → tensor`` dict from a safetensors file or a torch file (``weights_only``)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist or is not a file", path=p)
    try:
        if is_safetensors(p):
            from safetensors.torch import load_file
            return dict(load_file(str(p), device=str(device)))
        obj = torch.load(str(p), map_location=device, weights_only=True)
    except CheckpointError:
        raise
    except (Exception, SystemExit) as exc:  # corrupt files raise anything from struct to pickle errors
        kind = "safetensors" if _looks_safetensors(p) else "torch"
        raise CheckpointError(f"cannot read {str(p)!r} as a {kind} checkpoint: {_first_line(exc)}", path=p) from None
    return _flatten(obj, p)


def _looks_safetensors(p: Path) -> bool:
    try:
        return p.suffix == ".safetensors" or is_safetensors(p)
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    name = type(exc).__name__
    if name.islower():  # e.g. struct.error
        name = f"{type(exc).__module__}.{name}"
    return f"{name}: {text[0] if text else ''}".rstrip(": ")


def _flatten(obj, p: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), Mapping):
                return _flatten(obj[key], p)
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{str(p)!r} holds a {type(obj).__name__}, not a non-empty state dict "
                              f"(name → tensor)", path=p)
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{str(p)!r} is not a flat state dict: entries {bad[:5]!r} are not tensors", path=p)
    return dict(obj)


def save_state_dict(params: Mapping[str, torch.Tensor], path: str | os.PathLike, *,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``params`` to ``path`` (safetensors unless the suffix is ``.pt``/``.pth``), atomically."""
    p = Path(path)
    if not p.parent.is_dir():
        raise CheckpointError(f"cannot write {str(p)!r}: folder {str(p.parent)!r} does not exist", path=p)
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)).detach().cpu().contiguous()
               for k, v in params.items()}
    try:
        with atomic_path(p) as tmp:
            if p.suffix in (".pt", ".pth"):
                torch.save(tensors, tmp)
            else:
                from safetensors.torch import save_file
                meta = {str(k): str(v) for k, v in (metadata or {}).items()}
                save_file(_unshare(tensors), tmp, metadata=meta or None)
    except Exception as exc:
        raise CheckpointError(f"cannot write {str(p)!r}: {_first_line(exc)}", path=p) from exc
    return p


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[str]:
    """A fresh temporary file name in ``path``'s folder to write to; renamed onto ``path`` when the
    block succeeds, removed when it fails (so a failure never leaves a partial output file)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=str(p.parent))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage: clone the repeats."""
    seen, out = set(), {}
    for k, v in tensors.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        out[k] = v.clone() if key in seen else v
        if key is not None:
            seen.add(key)
    return out

