"""What benchmarks need of the machine: a one-line description and the resident-memory peak of a call."""

from __future__ import annotations

import os
import platform
import resource

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


def status_kb(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM, VmSize, ...) in kB; Linux only."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def resident_peak_mb(fn) -> float:
    """Growth of the resident set during one call of ``fn`` over what was resident before it."""
    try:  # Linux: "5" resets the peak resident set (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status_kb("VmRSS")
        fn()
        return (status_kb("VmHWM") - base) / 1024
    except OSError:  # elsewhere: the lifetime peak, which includes start-up
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
