"""The one reader of safetensors files: the header is validated before a single tensor is allocated.

Every loader (our checkpoints, the original InternVL2 layout, humanaes-mini and its face network,
trainer checkpoints) reads weights through `iter_safetensors` / `load_safetensors`, so a hostile
or damaged file is a one-line `CheckpointError` naming the file and the tensor, never a 40 TB
allocation or a traceback from deep inside a parser.

A safetensors file is ``<u64 little-endian header length N><N bytes of JSON header><data>``; the
header maps each tensor name to ``{"dtype", "shape", "data_offsets": [start, end]}`` with offsets
relative to the start of the data. `read_header` checks, from the header and the file size alone:

- the header length fits the file and a sane cap (`MAX_HEADER_BYTES`), and the header is a JSON
  object with no repeated names;
- every entry has a known dtype, a shape of non-negative integers and two integer offsets with
  ``start <= end``;
- ``end - start`` equals the byte size the dtype and shape declare;
- every tensor ends inside the file, and no two tensors overlap.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from humanaes.errors import CheckpointError
from humanaes.fsutil import NotRegularFileError, open_regular

if TYPE_CHECKING:
    import torch

#: Bytes per element of each safetensors dtype name.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
# The reference implementation refuses headers above 100 MB; a real header is kilobytes.
MAX_HEADER_BYTES = 100_000_000
_TORCH_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a validated header; `start`/`end` are absolute byte positions in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensors in file order and the free-form `__metadata__` strings."""

    path: Path
    tensors: tuple[TensorEntry, ...]
    metadata: dict[str, str]
    file_size: int

    def names(self) -> list[str]:
        return [t.name for t in self.tensors]


def _open_regular(path: Path) -> int:
    """An fd on `path`, refusing FIFOs and devices without blocking on them."""
    try:
        return open_regular(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except NotRegularFileError:
        raise CheckpointError(f"{path} is not a regular file; expected a .safetensors weights file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from None


def _read_exactly(fd: int, count: int) -> bytes:
    chunks: list[bytes] = []
    while count > 0:
        chunk = os.read(fd, min(count, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"name {key!r} appears twice")
        out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(path: Path, fd: int, file_size: int) -> SafetensorsHeader:
    if file_size < 8:
        raise CheckpointError(f"{path} is {file_size} bytes, too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", _read_exactly(fd, 8))
    if header_len > min(MAX_HEADER_BYTES, file_size - 8):
        raise CheckpointError(
            f"{path}: the header declares {header_len} bytes but the file has {file_size - 8} after the length "
            f"(limit {MAX_HEADER_BYTES}); not a safetensors file, or a corrupt one"
        )
    raw = _read_exactly(fd, header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeats)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the header is not valid JSON ({exc}); not a safetensors file, or a corrupt one") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map names to strings")

    base = 8 + header_len
    entries: list[TensorEntry] = []
    for name, meta in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(meta, dict) or set(meta) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: expected exactly dtype, shape and data_offsets")
        dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{where} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)) or not (
            0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(f"{where}: data_offsets must be two integers 0 <= start <= end, got {offsets!r}")
        numel = 1
        for d in shape:
            numel *= d
        declared = numel * DTYPE_SIZES[dtype]
        start, end = base + offsets[0], base + offsets[1]
        if end - start != declared:
            raise CheckpointError(
                f"{where}: {dtype} {shape} needs {declared} bytes but its data_offsets span {end - start}"
            )
        if end > file_size:
            raise CheckpointError(
                f"{where} declares {declared} bytes ending at byte {end}, but the file has only {file_size} bytes; "
                "the file is truncated or corrupt"
            )
        entries.append(TensorEntry(name, dtype, tuple(shape), start, end))
    entries.sort(key=lambda e: (e.start, e.end))
    for before, after in zip(entries, entries[1:]):
        if after.start < before.end:
            raise CheckpointError(f"{path}: tensors {before.name!r} and {after.name!r} overlap in the file")
    return SafetensorsHeader(path, tuple(entries), dict(metadata), file_size)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The validated header of a safetensors file (reads only the header; allocates no tensor)."""
    path = Path(path)
    fd = _open_regular(path)
    try:
        return _parse_header(path, fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def torch_dtype(name: str) -> "torch.dtype":
    import torch

    dtype = getattr(torch, _TORCH_DTYPE_NAMES[name], None)
    if dtype is None:
        raise CheckpointError(f"this torch cannot hold safetensors dtype {name}")
    return dtype


def iter_safetensors(
    path: str | os.PathLike[str], dtype: "torch.dtype | None" = None
) -> Iterator[tuple[str, "torch.Tensor"]]:
    """Stream the tensors of a validated file in file order, each read into its own buffer.

    Tensors are read one at a time into owned buffers instead of memory-mapping the file: a map
    keeps every page read resident while it lives, so casting while loading peaked at twice the
    file. The header is validated on the same open file before the first allocation, so a tensor
    bigger than the file is refused, not allocated. Floating tensors are cast to `dtype` if given.
    """
    import torch

    path = Path(path)
    fd = _open_regular(path)
    try:
        header = _parse_header(path, fd, os.fstat(fd).st_size)
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            for entry in header.tensors:
                tensor = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
                if entry.nbytes:
                    # numpy has no bf16/fp8: read through a byte view of the tensor's own storage.
                    view = memoryview(tensor.view(-1).view(torch.uint8).numpy()).cast("B")
                    f.seek(entry.start)
                    filled = 0
                    while filled < entry.nbytes:  # one read() returns at most ~2 GiB on Linux
                        got = f.readinto(view[filled:])
                        if not got:
                            raise CheckpointError(f"{path} is truncated (tensor {entry.name!r}); download it again")
                        filled += got
                if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                yield entry.name, tensor
    finally:
        os.close(fd)


def load_safetensors(path: str | os.PathLike[str], dtype: "torch.dtype | None" = None) -> dict[str, "torch.Tensor"]:
    """All tensors of a validated safetensors file, by name (see `iter_safetensors`)."""
    return dict(iter_safetensors(path, dtype))
