"""What benchmarks need of the machine: a one-line description, its memory figures from /proc, and the
CPUs other processes kept busy while a benchmark ran."""

from __future__ import annotations

import os
import platform
import time

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


def omp_wait_policy() -> str:
    """The OpenMP wait policy of the processes that run benchmark cases: the user's
    ``OMP_WAIT_POLICY``, else ``passive``.

    OpenMP's default lets idle workers spin after every parallel region; a process here holds two
    runtimes (PyTorch's libgomp and the one numba's scan threads use), and on a machine with other
    work both spin against preempted peers. Measured on the 2-core Xeon at load average 7 (helpers
    training beside it), batch 1 at 224 px, 2 threads: Vim-T 13.0 s per image by default against
    0.24 s passive, DeiT-T 2.0 s against 0.056 s, ConvNeXt-T 2.4 s against 0.20 s: slowdowns of
    10-50x that differ by model, which no interleaving of rounds can cancel. Passive workers sleep
    when a region ends, so load slows every case alike, by the CPU it takes.
    """
    return os.environ.get("OMP_WAIT_POLICY") or "passive"


def describe(device: str = "cpu", cases_isolated: bool = False) -> str:
    """The machine line of a benchmark; ``cases_isolated``: the cases run in child processes of
    :mod:`visionssm.bench.isolated` (whose OpenMP wait policy it names)."""
    parts = [f"{cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
             f"({torch.get_num_threads()} threads), Python {platform.python_version()}"]
    if cases_isolated:
        parts.append(f"cases run with OMP_WAIT_POLICY={omp_wait_policy()}")
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


def _machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot (Linux: /proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _process_s(pid: int) -> float:
    """CPU-seconds process ``pid`` has used (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """The CPUs other processes keep busy while ``pids`` (and this process) run: ``meter =
    LoadMeter(pids)``, then ``meter.others()`` -> CPUs busy on average since (e.g. 1.2 of 2), the
    machine's busy time less that of ``pids`` and this process; None where /proc does not say."""

    def __init__(self, pids=()):
        self.pids = [p for p in pids if p]
        self.start = self._read()

    def _read(self):
        try:
            own = sum(os.times()[:2])
            return time.perf_counter(), _machine_busy_s(), own + sum(_process_s(p) for p in self.pids)
        except (OSError, ValueError, AttributeError):
            return None

    def others(self) -> float | None:
        end = self._read()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        busy, ours = end[1] - self.start[1], end[2] - self.start[2]
        return max(busy - ours, 0.0) / (end[0] - self.start[0])
