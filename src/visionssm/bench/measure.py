"""How a benchmark measures one call: its best wall time over repeats, and its peak memory.

Peak memory, the one definition every benchmark here records (``peak_mb``): the most memory one
call holds above what is resident just before it, so set-up that stays resident (weights, inputs,
an optimizer's state) is not counted. Before the call, the memory the allocator freed earlier is
given back to the system. CPU: the growth of the process's resident set (Linux: the peak resident
set VmHWM, reset just before the call; elsewhere the lifetime peak, which includes what came
before). CUDA: the growth of the peak memory allocated by torch's caching allocator. The call is
measured twice when it takes under 2 s and the larger figure kept, since the growth varies a little
from call to call.
"""

from __future__ import annotations

import gc
import resource
import time

import torch

from visionssm.bench.machine import status_kb

# a call under this many seconds is measured twice
REPEAT_UNDER_S = 2.0


def best_time(fn, budget_s=2.0, min_reps=3, max_reps=20):
    """The shortest of repeated calls of ``fn``: at least ``min_reps``, more while ``budget_s`` lasts
    (at most ``max_reps``), after one warm-up call."""
    fn()  # warm-up (JIT compilation, first-touch of buffers)
    times, start = [], time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def release_free_memory() -> None:
    """Give the allocator's freed memory back to the system (glibc keeps it otherwise), so that
    the resident-set growth of the next call is its own peak, not what a previous call left."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _resident_growth_mb(fn) -> float:
    try:  # Linux: "5" resets the peak resident set (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status_kb("VmRSS")
        fn()
        return (status_kb("VmHWM") - base) / 1024
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def _cuda_growth_mb(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def peak_memory(fn, device: str | torch.device = "cpu") -> tuple[float, float]:
    """(peak MB, seconds of the first call) of ``fn``, a call without arguments, on ``device``
    (the module docstring says what the peak is)."""
    growth = _cuda_growth_mb if torch.device(device).type == "cuda" else _resident_growth_mb
    peak, seconds = 0.0, None
    while True:
        release_free_memory()
        start = time.perf_counter()
        peak = max(peak, growth(fn))
        if seconds is not None:
            return peak, seconds
        seconds = time.perf_counter() - start
        if seconds >= REPEAT_UNDER_S:
            return peak, seconds
