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

A fresh process kept alive, for timing rounds that alternate between cases (:class:`LiveCall`):

    case = LiveCall("package.module:function", args, time_limit_s, device="cpu", memory_limit_mb=None)
    seconds = case.time(calls=1)  # [seconds of each call]; None once the case has failed
    case.close()

There ``function(child, **args)`` does its set-up the same way and returns the call to time; the
process then waits, holding the call ready, and times it each time the parent asks, over a Unix
socket of its own. ``case.row`` holds the emitted fields and, once the case failed, ``status`` and
``note`` as above (``timeout``: the set-up or one request took over ``time_limit_s``).

One server process imports torch, timm, visionssm and each function's module once, then forks a
fresh process per call: no call pays the imports, and none is a fork of a process that has
computed anything, so none inherits a thread pool (OpenMP) or allocator state. Where there is no
``fork``, each call gets a new server. The server runs with OpenMP's passive wait policy unless the
user set ``OMP_WAIT_POLICY`` (see :func:`visionssm.bench.machine.omp_wait_policy` for why).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import torch

from visionssm.bench.machine import omp_wait_policy, status_kb
from visionssm.bench.measure import peak_memory, release_free_memory

# statuses of a case that ran out of memory or time (a larger size of the same series would too)
FAILED = ("oom", "timeout")
# the server imports torch and timm before its first call: not part of the call's time
START_S = 300
RESULT_MARK = "@@bench "
# a kept-alive case pauses this long after its timed calls before it answers, so that its idle
# OpenMP threads (libgomp spins for some milliseconds after a parallel region) have stopped
# spinning before the next case runs
SETTLE_S = 0.05


def is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def died(code: int | None, capped: bool, error_note: str) -> dict:
    """The ``status`` and ``note`` of a case process that ended with exit status ``code`` without
    saying why; ``capped``: its address space was capped (CPU, a memory limit)."""
    if code in (-9, 137):  # SIGKILL: the kernel's OOM killer
        return dict(status="oom", note="killed (out of memory)")
    if capped and code in (-11, 139):  # oneDNN's Conv3d, for one, does not check some allocations
        return dict(status="oom", note="segmentation fault under the memory cap: an allocation that failed "
                                       "unchecked (a higher --memory-limit tells)")
    return dict(status="error", note=error_note)


def capped(request: dict) -> bool:
    """Whether the process of ``request`` runs with its address space capped (see :meth:`Child.cap_memory`)."""
    return bool(request.get("memory_limit_mb")) and torch.device(request["device"]).type == "cpu"


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


def _live(request: dict) -> None:
    """Run a kept-alive request in this process: set up, then time the call on each order that
    comes over the request's socket, until the parent closes it."""
    sys.stdout.flush()
    os.dup2(2, 1)  # it talks over its socket: stray prints go to stderr, not to the server's channel
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(request["live"])
    orders = conn.makefile("r")

    def emit(**fields):
        conn.sendall((json.dumps(fields) + "\n").encode())

    child = Child(emit, request["device"], request.get("memory_limit_mb"))
    try:
        call = _function(request["target"])(child, **request["args"])
    except Exception as e:
        emit(**failure(e))
        return
    if call is None:
        return
    child.cap_memory()
    emit(ready=True)
    for line in orders:
        order = json.loads(line)
        seconds = []
        try:
            for _ in range(order.get("calls", 1)):
                start = time.perf_counter()
                call()
                seconds.append(time.perf_counter() - start)
        except Exception as e:
            emit(**failure(e))
            return
        if order.get("release"):
            release_free_memory()
        time.sleep(order.get("settle_s", 0.0))
        emit(seconds=seconds)


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
        if "reap" in request:  # a kept-alive case that has ended
            try:
                _, status = os.waitpid(request["reap"], 0)
                code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # not this server's (it was restarted meanwhile)
                code = None
            _emit_line(exit=code)
            continue
        try:  # in the server, so that the forks inherit it; a failure is reported by the call itself
            importlib.import_module(request["target"].partition(":")[0])
        except Exception:
            pass
        live = "live" in request
        if once:
            _emit_line(pid=os.getpid())
            if live:
                _live(request)
                return
            _call(request, _emit_line)
            _emit_line(exit=0)
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if live:
                    _live(request)
                else:
                    _call(request, _emit_line)
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        _emit_line(pid=pid)
        if live:  # kept alive: the parent asks for its exit status once it has ended
            continue
        _, status = os.waitpid(pid, 0)
        _emit_line(exit=os.waitstatus_to_exitcode(status))


class _Messages:
    """JSON messages, one a line (those starting with ``mark``), read from ``fd`` with a deadline."""

    def __init__(self, fd: int, mark: str = ""):
        self.fd, self.mark, self.buffer = fd, mark, b""

    def next(self, deadline: float) -> dict | None:
        """The next message; None at ``deadline``; ``{"closed": True}`` when the other end has closed."""
        import select

        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(self.mark):
                    return json.loads(text[len(self.mark):])
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            try:
                chunk = os.read(self.fd, 1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return {"closed": True}
            self.buffer += chunk


class _Server:
    """The parent's end of one ``_serve`` process; ``run(request, time_limit_s)`` -> the row."""

    def __init__(self):
        self.proc = None

    def _start(self):
        import tempfile

        self.stderr = tempfile.TemporaryFile()
        code = f"from visionssm.bench.isolated import _serve; _serve(once={not hasattr(os, 'fork')})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                              "OMP_WAIT_POLICY": omp_wait_policy()})
        self.messages = _Messages(self.proc.stdout.fileno(), RESULT_MARK)

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
        msg = self.messages.next(deadline)
        if msg is not None and "closed" in msg:  # the server died
            return {"exit": self.proc.wait(), "server": True}
        return msg

    def _send(self, request: dict, start_s: float = START_S):
        """Send ``request``; the first message back, or None (the server is closed then)."""
        if self.proc is None or self.proc.poll() is not None or not hasattr(os, "fork"):
            self.close()
            self._start()
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            msg = None
        else:
            msg = self._read(time.perf_counter() + start_s)
        if msg is None:
            self.close()
        return msg

    def start(self, request: dict) -> int | None:
        """Start ``request`` without waiting for it; the id of its process (None: the server did not start)."""
        msg = self._send(request)
        return msg["pid"] if msg and "pid" in msg else None

    def reap(self, pid: int) -> int | None:
        """The exit status of a kept-alive process that has ended (None when unknown)."""
        if not hasattr(os, "fork"):  # the server itself was the process
            proc = self.proc
            self.close()
            return None if proc is None else proc.returncode
        if self.proc is None or self.proc.poll() is not None:
            return None
        msg = self._send({"reap": pid}, start_s=30)
        return msg.get("exit") if msg else None

    def run(self, request: dict, time_limit_s: float) -> dict:
        """Run one request; whatever happens, return its row (``status`` says how it went)."""
        msg = self._send(request)
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
            row.update(died(code, capped(request), self._error_note(code)))
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


def _server() -> _Server:
    global _SERVER
    if _SERVER is None:
        import atexit

        _SERVER = _Server()
        atexit.register(_SERVER.close)
    return _SERVER


def run_isolated(target: str, args: dict, time_limit_s: float, device: str = "cpu",
                 memory_limit_mb: float | None = None) -> dict:
    """Run ``target`` ("module:function") with ``args`` (JSON values) in a fresh process; its row (see above)."""
    request = dict(target=target, args=args, device=str(device), memory_limit_mb=memory_limit_mb)
    return _server().run(request, time_limit_s)


class LiveCall:
    """A fresh process kept alive that times its call on request (see the module docstring).

    ``release``: give the freed memory back to the system after each request (outside the timed
    calls), for cases that together would not fit in memory otherwise. ``settle_s``: the pause after
    each request's calls, before the answer (see ``SETTLE_S``).
    """

    def __init__(self, target: str, args: dict, time_limit_s: float, device: str = "cpu",
                 memory_limit_mb: float | None = None, release: bool = False, settle_s: float = SETTLE_S):
        self.row, self.time_limit_s, self.release, self.settle_s = {}, time_limit_s, release, settle_s
        self.conn = self.pid = None
        self.capped = False
        # fork: a fork of the shared server; otherwise a server of its own, which is the process
        self.server = _server() if hasattr(os, "fork") else _Server()
        folder = tempfile.mkdtemp(prefix="visionssm-case-")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            path = os.path.join(folder, "socket")
            try:
                listener.bind(path)
                listener.listen(1)
            except OSError as e:  # e.g. a temporary folder whose path is too long for a socket
                self.row.update(status="error", note=f"no socket for the case at {path}: {e}"[:300])
                return
            request = dict(target=target, args=args, device=str(device), memory_limit_mb=memory_limit_mb, live=path)
            self.capped = capped(request)
            self.pid = self.server.start(request)
            if self.pid is None:
                self.row.update(status="error", note=f"the case server did not start: {self.server._error_note(None)}")
                return
            deadline = time.perf_counter() + time_limit_s
            listener.settimeout(max(time_limit_s, 1e-3))
            try:
                self.conn, _ = listener.accept()
            except OSError:  # socket.timeout
                self._end("timeout", f"over the {time_limit_s:g} s per-case limit")
                return
        finally:
            listener.close()
            shutil.rmtree(folder, ignore_errors=True)
        self.messages = _Messages(self.conn.fileno())
        self._answer(deadline, "ready")

    @property
    def failed(self) -> bool:
        return "status" in self.row

    def time(self, calls: int = 1) -> list[float] | None:
        """Time ``calls`` calls in the case's process: their seconds; None once the case has failed
        (``row`` says why)."""
        if self.failed:
            return None
        try:
            self.conn.sendall((json.dumps(dict(calls=calls, release=self.release, settle_s=self.settle_s))
                               + "\n").encode())
        except OSError:
            self._end()
            return None
        return self._answer(time.perf_counter() + self.time_limit_s, "seconds")

    def _answer(self, deadline: float, key: str):
        """Read until the message with ``key``; its value (None when the case failed first)."""
        while True:
            msg = self.messages.next(deadline)
            if msg is None:
                self._end("timeout", f"over the {self.time_limit_s:g} s per-case limit")
                return None
            if "closed" in msg:
                self._end()
                return None
            if key in msg:
                return msg[key]
            self.row.update(msg)
            if "status" in msg:  # a failure: the process ends
                self._end()
                return None

    def _end(self, status: str | None = None, note: str | None = None) -> None:
        """End the case's process (ours, by its id) and record why, unless it has said so itself."""
        if status is not None and self.pid is not None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
        code = self._reap()
        if "status" in self.row:
            return
        if status is None:  # it died without saying why
            self.row.update(died(code, self.capped, self.server._error_note(code)))
        else:
            self.row.update(status=status, note=note)

    def _reap(self) -> int | None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        pid, self.pid = self.pid, None
        return None if pid is None else self.server.reap(pid)

    def close(self) -> None:
        """End the case's process (ours, by its id: it may be in the middle of a call)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
        self._reap()
