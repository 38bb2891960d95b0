"""Checkpoint I/O: read state dicts from safetensors or torch files, write them atomically.

Torch files are read with ``torch.load(weights_only=True)`` — never arbitrary pickles. A
checkpoint is a flat mapping ``name → tensor``; a torch file may also wrap it as
``{"state_dict": …}`` or ``{"model": …}``. Writes go to a temporary file in the target
folder and are renamed into place, so a failure never leaves a partial output file; the
file gets the mode a plain write would give it (the existing file's, else ``0o666 & ~umask``),
a symbolic link is followed to the file it names, and an existing destination that is not a
regular file (a folder, a device, a FIFO) is refused. Writes are deterministic: the same tensors
and metadata give the same bytes (safetensors' header keys sorted; torch files without the
temporary name inside). :func:`check_tensors` refuses tensors the library cannot compute with
(sparse, meta, float8, complex, non-finite) and :func:`check_not_input` an output that would
replace an input. :func:`dumps_json` writes strict JSON (non-finite numbers as ``null``).
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import stat
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch

from symmetries.errors import SymmetryError

__all__ = ["CheckpointError", "load_state_dict", "save_state_dict", "is_safetensors", "atomic_path", "check_output",
           "check_not_input", "check_tensors", "dumps_json", "json_safe"]

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
        if p.suffix == ".safetensors":
            if _torch_magic(p):
                raise CheckpointError(f"{str(p)!r} is named .safetensors but its content is a torch file "
                                      f"({_torch_magic(p)}), not safetensors; rename it to .pt (it is then read with "
                                      f"torch.load(weights_only=True)) or convert it with "
                                      f"safetensors.torch.save_file", path=p)
            from safetensors.torch import load_file
            return dict(load_file(str(p), device=str(device)))  # raises safetensors' own reason
        with open(p, "rb") as f:  # a file object: torch.load would dispatch a '.safetensors' name on its suffix
            obj = torch.load(f, map_location=device, weights_only=True)
    except CheckpointError:
        raise
    except (Exception, SystemExit) as exc:  # corrupt files raise anything from struct to pickle errors
        refused = _refused_global(exc)
        if refused is not None:
            raise CheckpointError(
                f"refused to load {str(p)!r}: it pickles {refused}, which is not a tensor or a plain container. "
                f"Arbitrary pickles are never loaded (unpickling can run code). Save a flat state dict of tensors "
                f"instead — torch.save({{name: tensor}}) with torch tensors only (torch.from_numpy for numpy "
                f"arrays), or safetensors.torch.save_file(state_dict, 'model.safetensors')", path=p) from None
        kind = "safetensors" if _looks_safetensors(p) else "torch"
        raise CheckpointError(f"cannot read {str(p)!r} as a {kind} checkpoint: {_first_line(exc)}", path=p) from None
    return _flatten(obj, p)


def _looks_safetensors(p: Path) -> bool:
    try:
        return p.suffix == ".safetensors" or is_safetensors(p)
    except OSError:
        return False


def _torch_magic(p: Path) -> str | None:
    """``'zip archive'`` or ``'pickle'`` when ``p`` starts like a torch file (``torch.save``'s two formats)."""
    with open(p, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        return "zip archive"
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _refused_global(exc: BaseException) -> str | None:
    """The global that ``torch.load(weights_only=True)`` refused (e.g. ``'the global posix.system'``)."""
    text = _ANSI.sub("", str(exc))
    m = re.search(r"GLOBAL ([\w.]+)", text) if "Weights only load failed" in text else None
    return f"the global {m.group(1)}" if m else None


def _first_line(exc: BaseException) -> str:
    raw = _ANSI.sub("", str(exc))
    if "Weights only load failed" in raw:  # torch's advice (weights_only=False) is not ours: keep its reason only
        m = re.search(r"WeightsUnpickler error:\s*(.+)", raw)
        return f"not a torch file, or a corrupt one ({m.group(1).strip() if m else 'unreadable pickle stream'})"
    text = raw.strip().splitlines()
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
    check_output(p)
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)).detach().cpu().contiguous()
               for k, v in params.items()}
    try:
        with atomic_path(p) as tmp:
            if p.suffix in (".pt", ".pth"):
                with open(tmp, "wb") as f:  # a file object: the archive is named 'archive', not after tmp
                    torch.save(tensors, f)
            else:
                from safetensors.torch import save_file
                meta = {str(k): str(v) for k, v in (metadata or {}).items()}
                save_file(_unshare(tensors), tmp, metadata=meta or None)
                _sort_header(tmp)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot write {str(p)!r}: {_first_line(exc)}", path=p) from exc
    return p


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _destination(p: Path) -> tuple[Path, int | None]:
    """The file ``p`` names (symbolic links followed) and its permission bits if it exists; a
    :class:`CheckpointError` naming ``p`` if it exists and is not a regular file."""
    real = Path(os.path.realpath(p))
    via = f" (the link {str(p)!r} points to {str(real)!r})" if real != p.absolute() else ""
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return real, None
    except OSError as exc:  # e.g. a loop of symbolic links
        raise CheckpointError(f"cannot write {str(p)!r}: {exc.strerror or exc}{via}", path=p) from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
        raise CheckpointError(f"cannot write {str(p)!r}: it exists and is {kind}, not a regular file{via}; "
                              f"choose a file name", path=p)
    return real, stat.S_IMODE(st.st_mode)


def check_output(path: str | os.PathLike) -> Path:
    """Raise :class:`CheckpointError` naming ``path`` unless a file can be written there: its folder
    exists and it is not an existing folder, device or other non-regular file (links followed).
    Returns the file that would be written. Call it before long work whose result goes there."""
    p = Path(path)
    target, _ = _destination(p)
    if not target.parent.is_dir():
        raise CheckpointError(f"cannot write {str(p)!r}: folder {str(target.parent)!r} does not exist", path=p)
    return target


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[str]:
    """A fresh temporary file name next to the file ``path`` names to write to; renamed onto it when
    the block succeeds, removed when it fails (so a failure never leaves a partial output file).

    As with a plain ``open(path, "w")``: a symbolic link is followed (the file it points to is
    replaced, the link kept), and the file keeps its permission bits if it exists, else gets
    ``0o666 & ~umask``. A destination that exists and is not a regular file is refused with a
    :class:`CheckpointError` before anything is written.
    """
    p = Path(path)
    target, mode = _destination(p)
    for _ in range(100):
        tmp = str(target.parent / f".{target.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 32 random bits
        raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target.parent))
    try:
        if mode is None:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 & ~umask, without touching the umask
    finally:
        os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # the writer may have replaced the file (safetensors writes its own 0o600 one)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_safe(obj):
    """``obj`` with every non-finite float (``nan``, ``±inf``; numpy scalars included) replaced by
    ``None`` and numpy scalars and arrays turned into Python numbers and lists."""
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalars and arrays, 0-d tensors
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj, **kwargs) -> str:
    """Strict JSON (``allow_nan=False``) of :func:`json_safe` ``(obj)``: non-finite numbers become ``null``."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage: clone the repeats."""
    seen, out = set(), {}
    for k, v in tensors.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        out[k] = v.clone() if key in seen else v
        if key is not None:
            seen.add(key)
    return out



def _sort_header(path: str) -> None:
    """Rewrite the JSON header of the safetensors file ``path`` with its keys sorted (safetensors
    writes ``__metadata__`` in hash order, which differs run to run), so equal content gives equal
    bytes. The header keeps its length (padded with spaces, as the format allows), the data is
    untouched."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # pragma: no cover - the same content in the same compact syntax is never longer
            raise CheckpointError(f"cannot write {path!r}: its sorted safetensors header is longer than written",
                                  path=path)
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_not_input(output: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], *,
                    flag: str = "output") -> None:
    """A :class:`CheckpointError` naming both unless ``output`` is a different file from every input
    (symbolic links followed, hard links compared by inode); ``inputs`` maps a label (``"A"``,
    ``"--data"``) to a path, ``None`` for none. Call it before any work."""
    for label, given in inputs.items():
        if given is None or not _same_file(output, given):
            continue
        real = os.path.realpath(output)
        via = "" if real == os.path.abspath(output) and real == os.path.abspath(given) else f" (both are {real!r})"
        raise CheckpointError(f"{flag} {str(output)!r} is the input {label} {str(given)!r}{via}: writing it would "
                              f"replace that input; choose another file name", path=output)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _tensor_problem(v: torch.Tensor) -> str | None:
    if v.layout != torch.strided:
        return f"is a sparse tensor ({str(v.layout).replace('torch.', '')}); save it dense (tensor.to_dense())"
    if v.is_meta:
        return ("is a meta tensor: it holds no values (saved from a model built on the meta device); save the "
                "materialized weights")
    if v.is_quantized or v.is_complex() or "float8" in str(v.dtype) or v.dtype not in _DTYPES:
        return (f"is {_dtype_name(v.dtype)}, which symmetries does not compute with; save it as float32, float64, "
                f"float16 or bfloat16 (or an integer type for counters)")
    if v.is_floating_point():
        bad = ~torch.isfinite(v)
        if bool(bad.any()):
            n, first = int(bad.sum()), tuple(int(i) for i in bad.nonzero()[0])
            return (f"has {n} non-finite entr{'y' if n == 1 else 'ies'} (NaN or ±inf; the first, {v[first].item()}, "
                    f"at index {first}); nothing computed from it would mean anything")
    return None


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32,
           torch.int64, torch.uint8, torch.bool)


def check_tensors(tensors: Mapping[str, torch.Tensor], *, label: str, path: str | os.PathLike | None = None) -> None:
    """A :class:`CheckpointError` naming ``label`` (``"A"``, ``"--data"``), ``path`` and the first
    tensor that is sparse, on the meta device, of a dtype the library does not compute with
    (float8, complex, quantized) or floating with a NaN or infinite entry."""
    where = f"{label} {str(path)!r}" if path is not None else label
    for k, v in tensors.items():
        problem = _tensor_problem(v)
        if problem:
            raise CheckpointError(f"{where}: tensor {k!r} {problem}", path=path)
