"""Sharded safetensors checkpoints (the Hugging Face layout), read lazily and written shard by shard.

A checkpoint folder holds ``model.safetensors.index.json`` — ``{"metadata": {…}, "weight_map":
{tensor name: shard file}}`` — and the shard files it names (a folder with a single
``model.safetensors``, or one ``.safetensors`` file, is read as a one-shard checkpoint).

:class:`ShardedCheckpoint` is a read-only ``Mapping`` name → tensor: opening it reads only the
index and each shard's JSON header (shapes, dtypes, byte ranges, checked against the file's size);
``checkpoint[name]`` reads that one tensor's byte range from its shard with one ``readinto`` (no
memory map, so pages the kernel caches are never counted as the process's memory; ``rows(name, i, j)``
reads a block of its rows), and checks it is finite, naming the folder, shard and tensor. :meth:`tensor_info` gives a
tensor's shape and dtype without reading it — what :func:`solvers.make_problem` (``lazy=True``)
validates against the graph.

:func:`write_sharded` writes a checkpoint with a given layout (the shard assignment, each shard's
tensor order and ``__metadata__``, the index's ``metadata``), producing one tensor at a time: each
shard's header is computed from the layout before any data, the tensors (or blocks of their rows) are
appended as they come, and the shard is renamed into place only when complete
(:func:`symmetries.io.atomic_path`); the index is written last. Headers are sorted JSON, so the same tensors give the same bytes.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from symmetries.io import CheckpointError, _tensor_problem, atomic_path

from solvers.stream import all_finite  # chunked: isfinite of a whole tensor copies it

__all__ = ["INDEX_NAME", "ShardedCheckpoint", "is_checkpoint_dir", "write_sharded", "copy_extra_files"]

#: The index file of a sharded Hugging Face checkpoint.
INDEX_NAME = "model.safetensors.index.json"
_SINGLE = "model.safetensors"

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_CODES = {v: k for k, v in _DTYPES.items()}
#: Weight files of other formats never copied next to the aligned shards (they would be B's unaligned weights).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".npz", ".onnx")


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``model.safetensors.index.json`` or ``model.safetensors``."""
    p = Path(path)
    return p.is_dir() and ((p / INDEX_NAME).is_file() or (p / _SINGLE).is_file())


def _read_header(path: Path, where: str) -> tuple[dict, int]:
    """``(header, data start)`` of the safetensors file ``path``; a :class:`CheckpointError` naming it."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit the file's {size} bytes")
            header = json.loads(f.read(n))
    except CheckpointError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{where}: cannot read the safetensors header of shard {path.name!r}: {exc}",
                              path=path) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: shard {path.name!r} has a header that is not a JSON object", path=path)
    return header, 8 + n


class ShardedCheckpoint(Mapping):
    """A sharded safetensors checkpoint read lazily (see the module docstring). ``path``: a folder with
    ``model.safetensors.index.json`` (or ``model.safetensors``), or one ``.safetensors`` file; ``label``
    names it in errors (``"A"``, ``"B"``); ``check_finite``: refuse a NaN or infinite floating tensor as
    it is first read."""

    def __init__(self, path: str | os.PathLike, *, label: str = "checkpoint", check_finite: bool = True):
        p = Path(path)
        self.path, self.label, self.check_finite = p, label, check_finite
        self.where = f"{label} {str(p)!r}"
        if p.is_dir() and (p / INDEX_NAME).is_file():
            self.folder, self.index_metadata, weight_map = p, *self._index(p / INDEX_NAME)
        elif p.is_dir() and (p / _SINGLE).is_file():
            self.folder, self.index_metadata, weight_map = p, None, None
            self._single = _SINGLE
        elif p.is_file():
            self.folder, self.index_metadata, weight_map = p.parent, None, None
            self._single = p.name
        else:
            raise CheckpointError(f"{self.where} is neither a checkpoint folder (with {INDEX_NAME} or {_SINGLE}) "
                                  f"nor a safetensors file", path=p)
        self.shards: list[str] = []          # shard file names, in the order they are first named
        self.shard_metadata: dict[str, dict[str, str]] = {}
        self._info: dict[str, tuple[str, tuple[int, ...], torch.dtype, int, int]] = {}  # name → shard, shape, …
        self._data_start: dict[str, int] = {}
        self._checked: set[str] = set()
        shard_names = list(dict.fromkeys(weight_map.values())) if weight_map is not None else [self._single]
        for shard in shard_names:
            self._open_shard(shard, weight_map)
        if weight_map is not None:
            missing = [k for k, s in weight_map.items() if k not in self._info]
            if missing:
                raise CheckpointError(f"{self.where}: the index maps tensor {missing[0]!r} to shard "
                                      f"{weight_map[missing[0]]!r}, whose header does not hold it", path=p)
        self._names = sorted(self._info)

    def _index(self, index: Path) -> tuple[dict, dict[str, str]]:
        try:
            obj = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.where}: cannot read {INDEX_NAME}: {exc}", path=index) from None
        wm = obj.get("weight_map") if isinstance(obj, dict) else None
        if not isinstance(wm, dict) or not wm or not all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in wm.items()):
            raise CheckpointError(f"{self.where}: {INDEX_NAME} has no 'weight_map' of tensor name → shard file",
                                  path=index)
        for shard in set(wm.values()):
            if Path(shard).name != shard or shard in (".", ".."):
                raise CheckpointError(f"{self.where}: {INDEX_NAME} names shard {shard!r}, which is not a file name "
                                      f"in the checkpoint's folder", path=index)
        meta = obj.get("metadata")
        return (dict(meta) if isinstance(meta, dict) else None), wm

    def _open_shard(self, shard: str, weight_map: dict | None) -> None:
        path = self.folder / shard
        if not path.is_file():
            raise CheckpointError(f"{self.where}: shard {shard!r} named by {INDEX_NAME} does not exist", path=path)
        header, start = _read_header(path, self.where)
        size = path.stat().st_size
        meta = header.pop("__metadata__", None) or {}
        entries = []
        for name, entry in header.items():
            if weight_map is not None and weight_map.get(name) != shard:
                raise CheckpointError(f"{self.where}: shard {shard!r} holds tensor {name!r}, which the index "
                                      f"{'maps to ' + repr(weight_map[name]) if name in weight_map else 'omits'}",
                                      path=path)
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(s) for s in entry["shape"])
                begin, end = (int(x) for x in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                code = entry.get("dtype") if isinstance(entry, dict) else None
                why = f"dtype {code!r}, which symmetries does not compute with" if code not in _DTYPES else \
                    "a malformed entry"
                raise CheckpointError(f"{self.where}: tensor {name!r} in shard {shard!r} has {why}",
                                      path=path) from None
            numel = 1
            for s in shape:
                numel *= s
            if end - begin != numel * dtype.itemsize or begin < 0 or start + end > size:
                raise CheckpointError(f"{self.where}: tensor {name!r} in shard {shard!r} has byte range "
                                      f"[{begin}, {end}) that does not fit its shape {shape} ({dtype}) or the "
                                      f"file", path=path)
            entries.append((begin, name, shape, dtype, end))
        self.shards.append(shard)
        self.shard_metadata[shard] = {str(k): str(v) for k, v in meta.items()}
        self._data_start[shard] = start
        for begin, name, shape, dtype, end in sorted(entries):  # data order, as written
            self._info[name] = (shard, shape, dtype, begin, end)

    # -- the Mapping -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __contains__(self, name) -> bool:
        return name in self._info

    def tensor_info(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """``(shape, dtype)`` of tensor ``name`` from its shard's header (nothing is read)."""
        if name not in self._info:
            raise KeyError(name)
        _, shape, dtype, _, _ = self._info[name]
        return shape, dtype

    def shard_of(self, name: str) -> str:
        """The shard file holding ``name``."""
        return self._info[name][0]

    def shard_tensors(self, shard: str) -> list[str]:
        """The tensors of ``shard`` in the order of their data in the file."""
        return [k for k, (s, *_rest) in sorted(self._info.items(), key=lambda kv: kv[1][3]) if s == shard]

    @property
    def total_size(self) -> int:
        """Bytes of tensor data (the index's ``total_size``)."""
        return sum(end - begin for _, _, _, begin, end in self._info.values())

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.tensor_info(name)[0]
        return self._read(name, 0, shape[0] if shape else 1).reshape(shape)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` along its first axis (one byte range, one ``readinto``)."""
        shape = self.tensor_info(name)[0]
        if not shape or not 0 <= start <= stop <= shape[0]:
            raise IndexError(f"rows {start}:{stop} of tensor {name!r} of shape {shape}")
        return self._read(name, start, stop)

    def _read(self, name: str, start: int, stop: int) -> torch.Tensor:
        shard, shape, dtype, begin, end = self._info[name]
        row = (end - begin) // max(shape[0], 1) if shape else end - begin
        lo, hi = begin + start * row, begin + stop * row
        path = self.folder / shard
        buf = torch.empty(hi - lo, dtype=torch.uint8)
        try:
            with open(path, "rb") as f:
                f.seek(self._data_start[shard] + lo)
                got = f.readinto(memoryview(buf.numpy())) if hi > lo else 0
        except OSError as exc:
            raise CheckpointError(f"{self.where}: cannot read tensor {name!r} from shard {shard!r}: {exc}",
                                  path=path) from None
        if got != hi - lo:
            raise CheckpointError(f"{self.where}: shard {shard!r} ends inside tensor {name!r} (read {got} of "
                                  f"{hi - lo} bytes): the file is truncated or changed while reading", path=path)
        t = buf.view(dtype).reshape((stop - start, *shape[1:]) if shape else shape)
        whole = start == 0 and stop == (shape[0] if shape else 1)
        if self.check_finite and (name not in self._checked or not whole):
            problem = _tensor_problem(t) if not t.is_floating_point() or not all_finite(t) else None
            if problem and not whole:  # the message names the index in the whole tensor
                problem = _tensor_problem(self._read(name, 0, shape[0]))
            if problem:
                raise CheckpointError(f"{self.where}: tensor {name!r} in shard {shard!r} {problem}", path=path)
            if whole:
                self._checked.add(name)
        return t

    def layout(self) -> list[tuple[str, dict[str, str], list[str]]]:
        """``[(shard, its __metadata__, its tensors in data order)]`` — what :func:`write_sharded` reproduces."""
        return [(s, self.shard_metadata[s], self.shard_tensors(s)) for s in self.shards]

    def __repr__(self) -> str:
        return f"ShardedCheckpoint({str(self.path)!r}: {len(self)} tensors in {len(self.shards)} shard(s))"


def _header(entries: list[tuple[str, tuple[int, ...], torch.dtype]], metadata: Mapping[str, str]) -> bytes:
    """A safetensors header (sorted compact JSON, padded with spaces to 8 bytes) for ``entries`` in data order."""
    header, offset = {}, 0
    for name, shape, dtype in entries:
        if dtype not in _CODES:
            raise CheckpointError(f"tensor {name!r} is {dtype}, which safetensors shards here do not hold")
        numel = 1
        for s in shape:
            numel *= s
        size = numel * dtype.itemsize
        header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return text + b" " * (-(len(text)) % 8)


def write_sharded(folder: str | os.PathLike, layout, info: Callable[[str], tuple[tuple[int, ...], torch.dtype]],
                  tensor: Callable[[str], torch.Tensor], *, index_metadata: Mapping | None = None,
                  index: bool = True) -> Path:
    """Write a sharded checkpoint into ``folder`` (which must exist): ``layout`` is
    ``[(shard file, __metadata__, [tensor names in data order])]`` (:meth:`ShardedCheckpoint.layout`),
    ``info(name)`` the ``(shape, dtype)`` each tensor will have, ``tensor(name)`` produces it (called once
    per tensor, in layout order): a tensor, or an iterable of blocks of its rows along the first axis, in
    order, written as they come; a tensor of another shape or dtype is a :class:`CheckpointError`.
    Each shard is complete before it is renamed into place; ``model.safetensors.index.json`` (``weight_map``
    and ``index_metadata``, given ``total_size`` if it has none) is written last unless ``index`` is false. Returns the index path
    (or the folder)."""
    out = Path(folder)
    if not out.is_dir():
        raise CheckpointError(f"cannot write the checkpoint: folder {str(out)!r} does not exist", path=out)
    weight_map, total = {}, 0
    for shard, meta, names in layout:
        entries = [(n, tuple(info(n)[0]), info(n)[1]) for n in names]
        head = _header(entries, meta)
        path = out / shard
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                f.write(struct.pack("<Q", len(head)))
                f.write(head)
                for name, shape, dtype in entries:
                    made = tensor(name)
                    whole, rows = isinstance(made, torch.Tensor), 0
                    for t in ([made] if whole else made):  # the tensor, or blocks of its rows in order
                        got = tuple(t.shape)
                        if t.dtype != dtype or (got != shape if whole else got[1:] != shape[1:]):
                            raise CheckpointError(f"cannot write {str(path)!r}: tensor {name!r} is {got} {t.dtype}"
                                                  f"{'' if whole else ' (a block of rows)'}, the layout says "
                                                  f"{shape} {dtype}", path=path)
                        data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                        f.write(memoryview(data))
                        rows, total = rows + (got[0] if not whole else 0), total + data.nbytes
                        del t, data
                    if not whole and rows != shape[0]:
                        raise CheckpointError(f"cannot write {str(path)!r}: tensor {name!r} came in blocks of "
                                              f"{rows} rows in all, the layout says {shape}", path=path)
                    weight_map[name] = shard
                    del made
        except CheckpointError:
            raise
        except OSError as exc:
            raise CheckpointError(f"cannot write shard {str(path)!r}: {exc}", path=path) from None
    if not index:
        return out
    meta = dict(index_metadata or {})
    meta.setdefault("total_size", total)  # a given one (the source's) is kept
    doc = {"metadata": meta, "weight_map": dict(sorted(weight_map.items()))}
    target = out / INDEX_NAME
    with atomic_path(target) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target


def copy_extra_files(source: str | os.PathLike, folder: str | os.PathLike) -> list[str]:
    """Copy the regular files of ``source`` that are not weights (``config.json``, tokenizer files, a
    README …) into ``folder``, atomically each, so the written checkpoint loads as the source does; weight
    files of any format and the index are skipped. Returns the names copied (sorted)."""
    src, out, copied = Path(source), Path(folder), []
    for p in sorted(src.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name == INDEX_NAME \
                or p.name.lower().endswith(_WEIGHT_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        with atomic_path(out / p.name) as tmp:
            shutil.copyfile(p, tmp)
        copied.append(p.name)
    return copied


def _squared_distance(a: torch.Tensor, b: torch.Tensor, rows: int = 1 << 22) -> float:
    """``‖a − b‖²`` in float64, a slice of about ``rows`` entries at a time (no float64 copy of the tensor)."""
    if not a.is_floating_point():
        return 0.0
    a, b = a.reshape(-1), b.reshape(-1)
    return sum(float(((a[i:i + rows].double() - b[i:i + rows].double()) ** 2).sum()) for i in range(0, a.numel(), rows))


def _exact(el) -> bool:
    """Whether ``el`` moves entries without arithmetic beyond one product each (gathers, signs, scales), so a
    block of rows transformed alone gets the bits of the whole tensor transformed at once."""
    from symmetries.elements import GatherElement, HeadElement
    if isinstance(el, HeadElement):
        return all(_exact(e) for e in el.inner)
    return isinstance(el, GatherElement)


def align_checkpoints(a, b, output, architecture, *, solver: str = "weight_matching", seed: int = 0,
                      metadata: Mapping[str, str] | None = None, copy_files: bool = True, **options) -> dict:
    """Align the sharded checkpoint ``b`` to ``a`` streamed and write the aligned B into the folder ``output``
    with B's layout (shards, their names, tensor order and ``__metadata__``; the index with B's ``metadata``
    plus ``metadata``), copying B's other files (``config.json``, tokenizer …) unless ``copy_files`` is false.

    ``a``/``b``: folders, files or :class:`ShardedCheckpoint` s; ``architecture``: an ``Architecture`` or graph
    whose parameters are the checkpoints' tensors. The solve reads one tensor pair at a time
    (``solvers.solve(solver, …, lazy=True)``; ``options`` go to it, e.g. ``classes``, ``device``,
    ``max_iter``); the output is written one tensor at a time. Returns a summary: the solution, the L2
    distances before and after (float64, computed while writing) and the seconds of the solve and the write.
    """
    import time

    import solvers
    from solvers.memory import release_free_memory
    from solvers.stream import row_chunk
    from symmetries.action import apply

    ca = a if isinstance(a, ShardedCheckpoint) else ShardedCheckpoint(a, label="A")
    cb = b if isinstance(b, ShardedCheckpoint) else ShardedCheckpoint(b, label="B")
    if set(ca) != set(cb):
        name = sorted(set(ca) ^ set(cb))[0]
        raise CheckpointError(f"{ca.where} and {cb.where} hold different tensors: {name!r} is in "
                              f"{'A' if name in ca else 'B'} only", path=cb.path)
    for name in ca:
        if ca.tensor_info(name)[0] != cb.tensor_info(name)[0]:
            raise CheckpointError(f"tensor {name!r} has shape {ca.tensor_info(name)[0]} in A but "
                                  f"{cb.tensor_info(name)[0]} in B", path=cb.path)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"cannot write the checkpoint folder {str(out)!r}: it exists and is not a folder",
                              path=out)
    if not out.parent.is_dir():
        raise CheckpointError(f"cannot write {str(out)!r}: folder {str(out.parent)!r} does not exist", path=out)
    graph = getattr(architecture, "graph", architecture)
    t0 = time.perf_counter()
    sol = solvers.solve(solver, architecture, ca, cb, seed=seed, lazy=True, **options)
    solved = time.perf_counter() - t0
    out.mkdir(exist_ok=True)
    sums = {"before": 0.0, "after": 0.0}

    def part(name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        release_free_memory()  # the last tensor's blocks go back to the OS (solvers.memory: heap fragmentation)
        tb, ta = (cb[name], ca[name]) if start is None else (cb.rows(name, start, stop), ca.rows(name, start, stop))
        t = apply(graph, {name: tb}, sol.transforms, check=False)[name].to(tb.dtype)
        sums["before"] += _squared_distance(ta, tb)
        sums["after"] += _squared_distance(ta, t)
        return t

    def aligned(name: str):  # blocks of rows where no space acts on the first axis and the maps are gathers
        shape = cb.tensor_info(name)[0]
        step = row_chunk(graph, name, shape)
        if step is None or not all(_exact(sol.transforms[e.space]) for e in graph.edges_of(name)
                                   if e.space in sol.transforms):  # a dense map: the whole product, as in memory
            return part(name)
        return (part(name, i, min(shape[0], i + step)) for i in range(0, shape[0], step))

    single = cb.index_metadata is None and len(cb.shards) == 1 and not (cb.folder / INDEX_NAME).exists()
    write_sharded(out, cb.layout(), cb.tensor_info, aligned,
                  index_metadata={**(cb.index_metadata or {}), **dict(metadata or {})}, index=not single)
    if copy_files and cb.path.is_dir():
        copy_extra_files(cb.folder, out)
    return dict(solution=sol, l2_before=sums["before"] ** 0.5, l2_after=sums["after"] ** 0.5,
                solve_seconds=solved, write_seconds=time.perf_counter() - t0 - solved, output=str(out))
