"""Timing, memory and machine helpers shared by the suites."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stats:
    """Repeated wall-clock measurements of one thing (seconds unless `unit` says otherwise)."""

    values: list[float] = field(default_factory=list)
    unit: str = "s"
    #: process CPU seconds (all threads) of each repeat: less sensitive than wall time to other
    #: processes competing for a shared machine's cores
    cpu_values: list[float] = field(default_factory=list)
    #: minor page faults of each repeat
    faults: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def min(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def max(self) -> float:
        return max(self.values) if self.values else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative range of the repeats."""
        m = self.median
        return (self.max - self.min) / m if self.values and m else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "spread": self.spread,
            "n": len(self.values),
            "values": [round(v, 6) for v in self.values],
            "unit": self.unit,
            "cpu_median": statistics.median(self.cpu_values) if self.cpu_values else None,
            "cpu_values": [round(v, 6) for v in self.cpu_values],
            "minor_faults_median": statistics.median(self.faults) if self.faults else None,
        }


def interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 1, repeats: int = 3, sync: Callable[[], None] | None = None) -> dict[str, Stats]:
    """Time several callables round-robin (A B C A B C ...) so that slow drifts of a shared
    machine hit every side alike. `warmup` untimed rounds first."""
    out = {name: Stats() for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            gc.collect()
            if sync:
                sync()
            f0 = _minor_faults()
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            dt = time.perf_counter() - t0
            cpu = time.process_time() - c0
            faults = _minor_faults() - f0
            if round_ >= warmup:
                out[name].values.append(dt)
                out[name].cpu_values.append(cpu)
                out[name].faults.append(faults)
    return out


def _minor_faults() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    except (ImportError, OSError):  # pragma: no cover - not on Linux/macOS
        return 0


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def compare(ours: Stats, ref: Stats, *, per: float = 1.0, invert: bool = False, **extra: Any) -> dict[str, Any]:
    """{"humanaes": x, "reference": y, ...}: medians (divided by `per`, or `per`/median when
    `invert`, e.g. images/s), spreads, and the ratio reference/humanaes (>1 = humanaes better)."""
    def scale(v: float) -> float:
        return per / v if invert else v / per

    def gain(ours_value: float, ref_value: float) -> float:  # > 1: humanaes better
        return ratio(ours_value, ref_value) if invert else ratio(ref_value, ours_value)

    x, y = scale(ours.median), scale(ref.median)
    x_best, y_best = scale(ours.min), scale(ref.min)
    better, better_best = gain(x, y), gain(x_best, y_best)
    return {
        "humanaes": x,
        "reference": y,
        "speedup": better,
        # best of the repeats: on a shared machine the noise is one-sided (other jobs only slow us)
        "humanaes_best": x_best,
        "reference_best": y_best,
        "speedup_best": better_best,
        "humanaes_spread": ours.spread,
        "reference_spread": ref.spread,
        "humanaes_runs": ours.to_dict(),
        "reference_runs": ref.to_dict(),
        **extra,
    }


# -- memory ------------------------------------------------------------------------------------

def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def peak_rss_bytes() -> int:
    """Peak resident set of this process so far (VmHWM on Linux, ru_maxrss elsewhere)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


GIB = 1024**3
MIB = 1024**2


# -- machine -----------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "cpu_flags": flags,
        "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import PIL

        info["pillow"] = PIL.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 1024**2, 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / GIB, 1)
        info["cuda"] = torch.version.cuda
    return info
