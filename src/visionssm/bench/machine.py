"""What benchmarks need of the machine: a one-line description, and its memory figures from /proc."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str = "cpu") -> str:
    parts = [f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), Python {platform.python_version()}"]
    try:
        import numba

        parts.append(f"numba {numba.__version__} ({numba.get_num_threads()} threads)")
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return ", ".join(parts)


def status_kb(field: str, path: str = "/proc/self/status") -> int:
    """A field of /proc/self/status (VmRSS, VmHWM, VmSize, ...) or of ``path`` (/proc/meminfo) in kB; Linux only."""
    with open(path) as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def available_mb() -> float | None:
    """The memory the system can give without swapping (MemAvailable), or None where it does not say."""
    try:
        return status_kb("MemAvailable", "/proc/meminfo") / 1024
    except (OSError, StopIteration):
        return None
