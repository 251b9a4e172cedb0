"""Run a function in a fresh process and measure the peak memory of the call it hands back.

    row = run_isolated("package.module:function", args, time_limit_s, device="cpu", memory_limit_mb=None)

In the fresh process, ``function(child, **args)`` does its set-up and sends fields to the parent
with ``child.emit(**fields)`` as they come, so a time-out or a crash keeps what was sent. It returns
the call to measure (no arguments), or None when there is nothing to measure (it has emitted a
``status`` saying why). The runner then measures that call with
:func:`visionssm.bench.measure.peak_memory`: the most memory the call holds above what is resident
just before it (CPU: growth of the resident set; CUDA: growth of the peak allocated), the larger of
two calls when a call takes under 2 s. That is the one ``peak_mb`` of every benchmark here.

The row holds the emitted fields and ``status``: ``ok`` (with ``peak_mb`` and ``measured_s``, the
time of the first measured call), ``oom``, ``timeout``, ``unsupported`` (the function refused the
input: ValueError, AssertionError, NotImplementedError) or ``error``; ``note`` says what went wrong,
``wall_s`` how long it took. Nothing is raised: a benchmark records a failure and goes on.

One server process imports torch, timm, visionssm and each function's module once, then forks a
fresh process per call: no call pays the imports, and none is a fork of a process that has
computed anything, so none inherits a thread pool (OpenMP) or allocator state. Where there is no
``fork``, each call gets a new server.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import time

import torch

from visionssm.bench.machine import status_kb
from visionssm.bench.measure import peak_memory

# statuses of a case that ran out of memory or time (a larger size of the same series would too)
FAILED = ("oom", "timeout")
# the server imports torch and timm before its first call: not part of the call's time
START_S = 300
RESULT_MARK = "@@bench "


def is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def failure(e: BaseException) -> dict:
    """The ``status`` and ``note`` of a call that raised ``e``."""
    if is_oom(e):
        status = "oom"
    elif isinstance(e, (ValueError, AssertionError, NotImplementedError)):
        status = "unsupported"
    else:
        status = "error"
    return dict(status=status, note=f"{type(e).__name__}: {e}"[:300])


class Child:
    """What the function run in the fresh process gets: ``emit(**fields)`` and ``cap_memory()``."""

    def __init__(self, emit, device: str, memory_limit_mb: float | None):
        self.emit, self.device, self.memory_limit_mb = emit, torch.device(device), memory_limit_mb

    def cap_memory(self) -> None:
        """From now on, cap this process's address space at what is mapped now plus ``memory_limit_mb``
        (CPU): a larger allocation then fails here (recorded as out of memory) instead of waking the
        kernel's OOM killer. The measured call is always under the cap; a function calls this earlier
        to put its own first runs under it too."""
        if not self.memory_limit_mb or self.device.type != "cpu":
            return
        try:
            cap = status_kb("VmSize") * 1024 + int(self.memory_limit_mb * 2**20)
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
        except (OSError, ValueError, StopIteration):
            pass
        self.memory_limit_mb = None  # once: the cap is above what the set-up mapped


def _function(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _call(request: dict, emit) -> None:
    """Run one request in this process, handing its fields to ``emit`` as they come."""
    child = Child(emit, request["device"], request.get("memory_limit_mb"))
    try:
        measured = _function(request["target"])(child, **request["args"])
        if measured is None:
            return
        child.cap_memory()
        peak, seconds = peak_memory(measured, child.device)
    except Exception as e:
        emit(**failure(e))
        return
    emit(status="ok", peak_mb=peak, measured_s=seconds)


def _emit_line(**fields) -> None:
    sys.stdout.write(RESULT_MARK + json.dumps(fields) + "\n")
    sys.stdout.flush()


def _serve(once: bool = False) -> None:
    """The server: imports once, then forks a fresh process per request (one JSON line on stdin).
    It writes ``{"pid": ...}``, the call's fields as they come and ``{"exit": ...}``."""
    import warnings

    import timm  # noqa: F401

    import visionssm  # noqa: F401

    warnings.filterwarnings("ignore")  # the parent's progress bar owns the terminal
    os.environ["HF_HUB_OFFLINE"] = "1"
    for line in sys.stdin:
        request = json.loads(line)
        try:  # in the server, so that the forks inherit it; a failure is reported by the call itself
            importlib.import_module(request["target"].partition(":")[0])
        except Exception:
            pass
        if once:
            _emit_line(pid=os.getpid())
            _call(request, _emit_line)
            _emit_line(exit=0)
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _call(request, _emit_line)
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        _emit_line(pid=pid)
        _, status = os.waitpid(pid, 0)
        _emit_line(exit=os.waitstatus_to_exitcode(status))


class _Server:
    """The parent's end of one ``_serve`` process; ``run(request, time_limit_s)`` -> the row."""

    def __init__(self):
        self.proc = None
        self.buffer = b""

    def _start(self):
        import tempfile

        self.stderr = tempfile.TemporaryFile()
        code = f"from visionssm.bench.isolated import _serve; _serve(once={not hasattr(os, 'fork')})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self.buffer = b""

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def _read(self, deadline):
        """The server's next message, or None at ``deadline``."""
        import select

        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(RESULT_MARK):
                    return json.loads(text[len(RESULT_MARK):])
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the server died
                return {"exit": self.proc.wait(), "server": True}
            self.buffer += chunk

    def run(self, request: dict, time_limit_s: float) -> dict:
        """Run one request; whatever happens, return its row (``status`` says how it went)."""
        if self.proc is None or self.proc.poll() is not None or not hasattr(os, "fork"):
            self.close()
            self._start()
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        msg = self._read(time.perf_counter() + START_S)
        if msg is None or "pid" not in msg:
            self.close()
            return dict(status="error", note=f"the case server did not start: {self._error_note(None)}")
        pid, start = msg["pid"], time.perf_counter()
        row, code = {}, None
        while True:
            msg = self._read(start + time_limit_s)
            if msg is None:
                break
            if "exit" in msg:
                code = msg["exit"]
                break
            row.update(msg)
        if code is None:  # over the limit: end the case process (ours, by its id)
            if pid != self.proc.pid:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
                while (msg := self._read(time.perf_counter() + 30)) is not None and "exit" not in msg:
                    row.update(msg)
            else:
                self.proc.kill()
                self.close()
            row.update(status="timeout", note=f"over the {time_limit_s:g} s per-case limit")
        elif "status" not in row:
            killed = code in (-9, 137)  # SIGKILL: the kernel's OOM killer
            row.update(status="oom" if killed else "error",
                       note="killed (out of memory)" if killed else self._error_note(code))
        row["wall_s"] = time.perf_counter() - start
        return row

    def _error_note(self, code):
        try:
            self.stderr.seek(0)
            lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return (lines[-1] if lines else f"the case process exited with code {code}")[:300]


_SERVER = None


def run_isolated(target: str, args: dict, time_limit_s: float, device: str = "cpu",
                 memory_limit_mb: float | None = None) -> dict:
    """Run ``target`` ("module:function") with ``args`` (JSON values) in a fresh process; its row (see above)."""
    global _SERVER
    if _SERVER is None:
        import atexit

        _SERVER = _Server()
        atexit.register(_SERVER.close)
    request = dict(target=target, args=args, device=str(device), memory_limit_mb=memory_limit_mb)
    return _SERVER.run(request, time_limit_s)
