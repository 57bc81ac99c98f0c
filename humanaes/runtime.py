"""Device and dtype choice, with clear errors for combinations that cannot work."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from contextlib import AbstractContextManager
from typing import Any

import torch

from humanaes.errors import HumanAesError
from humanaes.hints import hint

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
    use_cpu = hint(api='pass device="cpu"', cli="use --device cpu", config="set trainer.device: cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HumanAesError(f"device {device!r} was asked for but CUDA is not available here; {use_cpu}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HumanAesError(f"device {device!r} was asked for but MPS is not available here; {use_cpu}")
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
        use = hint(api='pass dtype="bfloat16" or "float32"', cli="use --dtype bfloat16 or float32",
                   config="set load_dtype: bfloat16 or float32")
        raise HumanAesError(f"float16 is not supported well on CPU; {use} (or a CUDA device)")
    if device.type == "mps" and chosen == torch.bfloat16 and not _mps_supports_bf16():
        use = hint(api='pass dtype="float16" or "float32"', cli="use --dtype float16 or float32",
                   config="set load_dtype: float16 or float32")
        raise HumanAesError(f"bfloat16 is not supported on this MPS device; {use}")
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


# -- CPU threads ---------------------------------------------------------------------------------
#
# Why not PyTorch's own default (one thread per physical core): its OpenMP parallel regions end
# in a barrier, so when another process holds one of the cores every region waits for the
# descheduled thread. Measured on a 2-core machine with one other busy process: 2 threads made
# 33 images take 14-77 s against 5-7 s with 1 thread; on the same machine when quiet, 2 threads
# are 1.6-1.9x faster than 1. So the default looks at how busy the machine is when scoring starts
# and leaves out the cores that others are using.


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. `taskset` or a container's cpuset)."""
    cpus = _affinity()
    return max(1, len(cpus) if cpus is not None else os.cpu_count() or 1)


def _cpu_ticks(cpus: set[int] | None = None) -> tuple[float, float] | None:
    """(busy, total) seconds since boot of the CPUs in `cpus` (all of them when None), from
    /proc/stat; None where unavailable. Counting only our own CPUs matters on big machines: a
    neighbour busy on the two CPUs we are pinned to must not be diluted by 14 idle others."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("cpu")]
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = total = 0
    for fields in lines:
        if cpus is None:
            if fields[0] != "cpu":  # the first line sums all CPUs
                continue
        elif fields[0] == "cpu" or int(fields[0][3:]) not in cpus:
            continue
        values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        busy += sum(values) - values[3] - values[4]
        total += sum(values)
    if total == 0:
        return None
    return busy / hz, total / hz


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuLoadProbe:
    """How many CPUs other processes keep busy, measured between creation and `others_busy()`.

    Reads /proc/stat twice (only the CPUs in this process's affinity mask) and subtracts this
    process's own CPU time, so the window can be the model load itself (no extra wait). Falls back to the 1-minute load average where /proc/stat
    is missing or the window is too short to mean anything.
    """

    MIN_WINDOW_S = 0.05

    def __init__(self) -> None:
        self._cpus = _affinity()
        self._start = _cpu_ticks(self._cpus)
        self._own = _own_cpu_seconds()
        self._wall = time.monotonic()

    def others_busy(self) -> float:
        """CPUs' worth of work done by other processes during the window (>= 0)."""
        end = _cpu_ticks(self._cpus)
        wall = time.monotonic() - self._wall
        if self._start is None or end is None or wall < self.MIN_WINDOW_S:
            return _load_average()
        busy = (end[0] - self._start[0]) - (_own_cpu_seconds() - self._own)
        return max(0.0, min(busy / wall, float(usable_cpus())))


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(probe: CpuLoadProbe | None = None, *, cpus: int | None = None, others: float | None = None) -> int:
    """The CPU thread count used when none is given (`humanaes score` without `--threads`,
    `humanaes.load(..., threads="auto")`).

    Threads = the usable CPUs minus those other processes keep busy (rounded to the nearest
    whole CPU, at least 1, at most PyTorch's own default of one per physical core and at most
    the count the process runs with now, so OMP_NUM_THREADS or an earlier
    `torch.set_num_threads()` caps it). A quiet
    2-core machine gets 2, a 2-core machine with one busy neighbour gets 1. `others` is measured
    by `probe` (over the model load, say) or, without one, sampled for 0.2 s now; `cpus` defaults
    to the CPUs in this process's affinity mask.
    """
    cpus = usable_cpus() if cpus is None else cpus
    if others is None:
        if probe is None:
            probe = CpuLoadProbe()
            time.sleep(0.2)
        others = probe.others_busy()
    free = math.floor(cpus - others + 0.5)
    # Never more than PyTorch's own default, nor than the process already runs with: an
    # OMP_NUM_THREADS or an earlier torch.set_num_threads() by the caller is a deliberate cap.
    return max(1, min(free, cpus, _torch_default_threads(), torch.get_num_threads()))


@functools.lru_cache(maxsize=1)
def _torch_default_threads() -> int:
    # PyTorch's own default, read once before anyone changes it: a second load() must not be
    # capped by the first one's choice.
    return torch.get_num_threads()


def apply_threads(threads: int | str | None, probe: CpuLoadProbe | None = None) -> int | None:
    """Set PyTorch's CPU threads: an int forces it, "auto" uses `default_threads()`, None leaves
    it alone. Returns the count set (None when untouched)."""
    if threads is None:
        return None
    _torch_default_threads()
    if threads == "auto":
        count = default_threads(probe)
    elif isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        count = threads
    else:
        raise HumanAesError(f"threads must be a positive whole number or \"auto\", got {threads!r}")
    torch.set_num_threads(count)
    return count
