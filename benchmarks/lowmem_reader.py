"""PROTOTYPE (not used by the library): a safetensors reader that does not memory-map the file.

Why: `safe_open(...).get_tensor` returns tensors backed by a memory map of the whole file. While
the map is alive, every page read counts in the process's RSS (as RssFile), so loading an fp16
checkpoint into bf16 peaks at ~2x the file size (file pages + the cast copies); and a tensor that
is NOT cast (e.g. the bool `metavoter.fitted`) keeps the map, hence the file's pages, alive for
the model's lifetime. Reading each tensor with `readinto` into its own buffer keeps the file out
of the process's address space: the peak is the model plus one tensor.

The load benchmark times `humanaes.load` with `humanaes.checkpoint.iter_tensors` replaced by
`iter_tensors_streamed` (worker kind `humanaes-streamed`) to show what the change would give.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def iter_tensors_streamed(files: list[Path], dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Same contract as humanaes.checkpoint.iter_tensors, for .safetensors files."""
    from humanaes.checkpoint import iter_tensors as original

    for file in files:
        if file.suffix != ".safetensors":
            yield from original([file], dtype)
            continue
        base, header = read_header(file)
        with open(file, "rb", buffering=0) as f:
            for key, meta in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                start, end = meta["data_offsets"]
                t = torch.empty(meta["shape"], dtype=_DTYPES[meta["dtype"]])
                view = memoryview(t.numpy() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy()).cast("B")
                f.seek(base + start)
                if end > start and f.readinto(view) != end - start:
                    raise OSError(f"{file}: short read for {key}")
                if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                    t = t.to(dtype)
                yield key, t
