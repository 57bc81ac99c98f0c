"""Device and dtype choice, with clear errors for combinations that cannot work."""

from __future__ import annotations

import contextlib
import functools
from contextlib import AbstractContextManager
from typing import Any

import torch

from humanaes.errors import HumanAesError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HumanAesError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HumanAesError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HumanAesError(f"device {device!r} was asked for but MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, checkpoint_dtype: str | torch.dtype | None = None
) -> torch.dtype:
    """"auto": the checkpoint's half precision on CUDA/MPS; on CPU, bfloat16 for half-precision
    checkpoints (no fp32 round trip, fast on current CPUs) and float32 for float32 ones."""
    if isinstance(dtype, torch.dtype):
        chosen = dtype
    elif dtype is None or dtype == "auto":
        ckpt = _as_dtype(checkpoint_dtype) if checkpoint_dtype is not None else torch.float32
        if device.type == "cpu":
            chosen = torch.float32 if ckpt == torch.float32 else torch.bfloat16
        elif device.type == "mps":
            chosen = torch.float16 if ckpt != torch.float32 else torch.float32
        else:
            chosen = ckpt
    else:
        chosen = _as_dtype(dtype)
    if device.type == "cpu" and chosen == torch.float16:
        raise HumanAesError("float16 is not supported well on CPU; use --dtype bfloat16 or float32 (or a CUDA device)")
    if device.type == "mps" and chosen == torch.bfloat16 and not _mps_supports_bf16():
        raise HumanAesError("bfloat16 is not supported on this MPS device; use --dtype float16 or float32")
    return chosen


def _as_dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    key = str(value).replace("torch.", "").lower()
    if key not in DTYPES:
        raise HumanAesError(f"unknown dtype {value!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[key]


def _mps_supports_bf16() -> bool:
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
        return True
    except Exception:  # noqa: BLE001
        return False


@functools.lru_cache(maxsize=None)  # read /proc/cpuinfo once per process
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX-BF16 or AVX512-BF16, as on Intel
    Sapphire Rapids and AMD Zen 4 and later): there bfloat16 convolutions run 2-3x faster than
    float32; elsewhere they are emulated and slower. Linux only (reads /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_compute_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Compute dtype of a small float32 model that can run its convolutions under autocast
    (the bundled model): "auto" is bfloat16 on CPUs that multiply bfloat16 in hardware and float32
    everywhere else; float32, bfloat16 and (on CUDA/MPS) float16 can be asked for."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    return resolve_dtype(dtype, device, torch.float32)


def autocast_to(device: torch.device, dtype: torch.dtype) -> AbstractContextManager[Any]:
    """torch.autocast to `dtype` on `device`, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
