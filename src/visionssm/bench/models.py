"""Models vs resolution: where do vision SSMs beat attention (and where not)?

For every (model, attention mode, resolution) it measures, in a fresh process per case so cases do
not pollute each other: latency and images/s at a chosen batch, peak memory of the step (CPU: the
growth of the resident set; CUDA: the growth of the peak allocated memory; measured on a call
after the timed ones, so the weights, the input and, with ``--train``, the optimizer state are
resident before it and not included), GMACs per image counted with ``FlopCounterMode`` (the
selective scan by its registered formula, 9BLDN + BDL), and the parameter count. Inference (no
grad) by default; ``--train`` times a training step (forward, backward, AdamW step).

Attention models (timm modules with a ``fused_attn`` switch: ViT, DeiT, ...) are run twice:
``sdpa``, PyTorch's fused ``scaled_dot_product_attention`` (what a user gets today; memory linear
in the tokens), and ``explicit``, softmax(QK^T)V with the (tokens x tokens) matrix materialised, as
the 2024 papers measured it.

A case never stops the run: out-of-memory, the per-case time limit and an unsupported size are
recorded as such, and a series skips the resolutions above the one where it ran out of memory or
time. The run writes results.csv, results.md, throughput.png and memory.png (log-log, one line
per model, failures marked) and machine.txt into --out, and prints the crossover: the smallest
resolution from which each SSM model is faster than, and uses less memory than, each peer.

    visionssm bench [--models M ...] [--resolutions 224 512 1024x768 ...] [--batch-size 1]
                    [--train] [--device cpu|cuda] [--full] [--out bench-out/models]
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from visionssm.bench.machine import describe, resident_peak_mb, status_kb
from visionssm.bench.scan import _fmt, best_time

# the default run (the README's main job): the Vim paper's comparison (Vim-Ti vs DeiT-Ti in both
# attention modes, up to its 1248 headline) and VMamba-T vs MambaOut-T (the same gated-CNN
# design without the SSM); 20 cases, a few minutes on 2 CPU cores
DEFAULT_MODELS = ["vim_tiny_patch16_224", "vmamba_tiny_s1l8", "deit_tiny_patch16_224", "convnext_tiny", "mambaout_tiny"]
DEFAULT_RESOLUTIONS = ["224", "512", "1024", "1248"]
FULL_MODELS = ["vim_tiny_patch16_224", "vim_small_patch16_224", "vmamba_tiny_s1l8", "vmamba_vanilla_tiny",
               "deit_tiny_patch16_224", "deit_small_patch16_224", "resnet50", "convnext_tiny", "mambaout_tiny",
               "efficientvim_m2"]
FULL_RESOLUTIONS = ["224", "512", "640", "738", "1024", "1248", "1536", "2048"]
ATTENTION_MODES = ("sdpa", "explicit")
# timm models that are vision SSMs too (EfficientViM's hidden-state-mixer SSD)
SSM_PEERS = ("efficientvim_",)
FAILED = ("oom", "timeout")


def parse_resolution(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '512x768' -> (height 512, width 768)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        h = w = 0
    if len(parts) > 2 or min(h, w) < 1:
        raise ValueError(f"--resolutions: expected a size such as 512 or HxW such as 512x768, got {text!r}")
    return h, w


def res_name(h: int, w: int) -> str:
    return str(h) if h == w else f"{h}x{w}"


def parse_model(text: str) -> tuple[str, dict]:
    """'NAME' or 'NAME:key=value:key=value' (values as Python literals) -> (name, create kwargs).

    E.g. ``vim_tiny_patch16_224:depth=12`` or ``vmamba_tiny_s1l8:depths=(2,2,4,2)``.
    """
    import ast

    name, *pairs = text.split(":")
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--models: expected NAME or NAME:key=value[:key=value...], got {text!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare string
    return name, kwargs


def series_name(model: str, attention: str) -> str:
    return model if attention == "-" else f"{model} ({attention})"


# ---------------------------------------------------------------------------------------------
# model construction and FLOP counting (shared by the parent, the case process and the tests)


def model_kind(model: str) -> str:
    """'ssm' (this library's models and timm's vision SSMs), 'attention' (has a fused_attn switch) or 'other'."""
    import visionssm

    name = parse_model(model)[0]
    if name in visionssm.list_models() or name.startswith(SSM_PEERS):
        return "ssm"
    try:
        with torch.device("meta"):  # nothing allocated
            net = create_model(model)
    except Exception:
        return "other"
    return "attention" if any(hasattr(m, "fused_attn") for m in net.modules()) else "other"


def create_model(model: str, size: tuple[int, int] | None = None, attention: str = "-"):
    """timm's create_model (random init) for 'NAME[:key=value...]', at ``size`` where the model takes
    an img_size, with attention in mode 'sdpa' or 'explicit' ('-': as built)."""
    import timm

    import visionssm  # noqa: F401  (registers the models)

    name, kwargs = parse_model(model)
    try:
        model = timm.create_model(name, pretrained=False, **({} if size is None else {"img_size": size}), **kwargs)
    except TypeError as e:
        if size is None or "img_size" not in str(e):
            raise
        model = timm.create_model(name, pretrained=False, **kwargs)  # convolutional: any size
    if attention != "-":
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = attention == "sdpa"
    return model


def _flop_mapping():
    """Formulas FlopCounterMode lacks or gets wrong (torch 2.4-2.14):

    * the CPU flash-attention kernel that SDPA runs on the CPU is not counted at all;
    * ``convolution_backward`` ignores ``groups`` for the weight gradient (a depthwise conv's
      backward counts as a dense conv: C times too much); each gradient costs one forward conv.
    """
    import torch.utils.flop_counter as fc

    aten = torch.ops.aten

    def sdpa_cpu(q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(q, k, v)

    def sdpa_cpu_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    def conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                      _output_padding, _groups, output_mask, out_shape=None, **kwargs):
        # w_shape is (C_out, C_in / groups, *k), so the forward formula already accounts for groups
        one = fc.conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
        return one * (int(bool(output_mask[0])) + int(bool(output_mask[1])))

    return {aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_cpu_backward,
            aten.convolution_backward: conv_backward}


def count_macs(model: torch.nn.Module, size: tuple[int, int], backward: bool = False,
               by_op: bool = False) -> float | dict:
    """Multiply-adds of one image through ``model`` (with ``backward``: forward plus backward).

    Counted by ``FlopCounterMode`` on fake tensors (nothing is computed or allocated), as
    FLOPs / 2, the papers' convention; the selective scan counts 9BLDN + BDL (forward) and twice
    that (backward). Elementwise ops are not counted. ``by_op`` returns {op name: MACs}.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    in_chans = getattr(model, "in_chans", None) or model.pretrained_cfg.get("input_size", (3,))[0]
    device = next(model.parameters()).device
    model.eval()  # no running-stat updates on fake tensors
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            x = torch.randn(1, in_chans, *size, device=device)  # as in training: no input gradient
            with torch.set_grad_enabled(backward), FlopCounterMode(display=False,
                                                                    custom_mapping=_flop_mapping()) as counter:
                out = model(x)
                if backward:
                    out.float().sum().backward()
    finally:
        model.zero_grad(set_to_none=True)  # the fake backward left fake gradients behind
        model.train(was_training)
    if by_op:
        return {str(op): n / 2 for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / 2


# ---------------------------------------------------------------------------------------------
# one case, in its own process


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def _make_step(model, x, train: bool, device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if not train:
        def step():
            with torch.no_grad():
                model(x)
            sync()
        return step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randint(0, max(getattr(model, "num_classes", 1), 1), (x.shape[0],), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = (torch.nn.functional.cross_entropy(out.float(), target) if out.dim() == 2
                else out.float().square().mean())
        loss.backward()
        opt.step()
        sync()
    return step


def _peak_memory_mb(step, device: torch.device) -> float:
    """Memory growth of one call of ``step`` over what is resident before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return resident_peak_mb(step)


def _release_free_memory() -> None:
    """Give the allocator's freed memory back to the system (glibc keeps it otherwise), so that
    the resident-set growth of the next call is its real peak, not what a previous call left."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _limit_memory(limit_mb: float | None) -> None:
    """Cap the address space at what is mapped now plus ``limit_mb``: a larger allocation then
    fails in this process (recorded as out of memory) instead of waking the kernel's OOM killer."""
    if not limit_mb:
        return
    try:
        cap = status_kb("VmSize") * 1024 + int(limit_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (OSError, ValueError, StopIteration):
        pass


def _case_child(spec: dict, emit) -> None:
    """Run one case, handing its fields to ``emit(**fields)`` as they come (a time-out keeps them)."""
    device = torch.device(spec["device"])
    size = (spec["height"], spec["width"])
    try:
        model = create_model(spec["model"], size, spec["attention"])
    except Exception as e:
        emit(status="oom" if _is_oom(e) else "unsupported", note=f"{type(e).__name__}: {e}"[:300])
        return
    emit(params_m=sum(p.numel() for p in model.parameters()) / 1e6,
          weights_mb=sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20)
    try:
        emit(gmacs=count_macs(model, size) / 1e9)
        if spec["train"]:
            emit(step_gmacs=count_macs(model, size, backward=True) / 1e9)
    except Exception as e:  # the measurement still runs
        emit(note=f"MACs not counted ({type(e).__name__}: {e})"[:300])
    gc.collect()
    try:
        model.to(device).train(spec["train"])
        in_chans = getattr(model, "in_chans", 3)
        x = torch.randn(spec["batch_size"], in_chans, *size, device=device)
        step = _make_step(model, x, spec["train"], device)
        if device.type == "cpu":
            _limit_memory(spec.get("memory_limit_mb"))
        # the first call (best_time's warm-up) pays one-time costs: lazy initialisation, caches
        t = best_time(step, budget_s=spec["budget_s"], min_reps=1, max_reps=10)
        emit(latency_ms=1e3 * t, images_per_s=spec["batch_size"] / t)
        peak = 0.0
        for _ in range(2 if t < 2.0 else 1):  # the larger of two when cheap: the growth varies a little
            _release_free_memory()
            peak = max(peak, _peak_memory_mb(step, device))
    except Exception as e:
        if _is_oom(e):
            emit(status="oom", note=f"{type(e).__name__}: {e}"[:300])
        elif isinstance(e, (ValueError, AssertionError, NotImplementedError)):
            emit(status="unsupported", note=f"{type(e).__name__}: {e}"[:300])
        else:
            emit(status="error", note=f"{type(e).__name__}: {e}"[:300])
        return
    emit(status="ok", peak_mb=peak)


RESULT_MARK = "@@bench "


def _emit_line(**fields) -> None:
    sys.stdout.write(RESULT_MARK + json.dumps(fields) + "\n")
    sys.stdout.flush()


def _serve(once: bool = False) -> None:
    """The case server: imports torch, timm and the models once, then forks a fresh process per
    case (a spec, one JSON line on stdin). A case process is never a fork of a process that has
    computed anything, so no thread pool (OpenMP) or allocator state is inherited. It writes
    ``{"pid": ...}``, the case's fields as they come (a time-out keeps them) and ``{"exit": ...}``.
    """
    import warnings

    import timm  # noqa: F401

    import visionssm  # noqa: F401

    warnings.filterwarnings("ignore")  # the parent's progress bar owns the terminal
    os.environ["HF_HUB_OFFLINE"] = "1"
    for line in sys.stdin:
        spec = json.loads(line)
        if once:
            _emit_line(pid=os.getpid())
            _case_child(spec, _emit_line)
            _emit_line(exit=0)
            return
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _case_child(spec, _emit_line)
                code = 0
            finally:
                sys.stdout.flush()
                os._exit(code)
        _emit_line(pid=pid)
        _, status = os.waitpid(pid, 0)
        _emit_line(exit=os.waitstatus_to_exitcode(status))


class CaseServer:
    """Runs cases in fresh processes forked by one ``_serve`` process; ``run(spec, time_limit)``."""

    def __init__(self):
        self.proc = None
        self.buffer = b""

    def _start(self):
        import tempfile

        self.stderr = tempfile.TemporaryFile()
        once = not hasattr(os, "fork")
        code = f"from visionssm.bench.models import _serve; _serve(once={once})"
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

    def run(self, spec: dict, time_limit_s: float) -> dict:
        """Run one case; whatever happens, return its row (``status`` says how it went)."""
        if self.proc is None or self.proc.poll() is not None or not hasattr(os, "fork"):
            self.close()
            self._start()
        self.proc.stdin.write((json.dumps(spec) + "\n").encode())
        self.proc.stdin.flush()
        # the server imports torch and timm before its first case: not part of the case's time
        msg = self._read(time.perf_counter() + 300)
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


def run_case(spec: dict, time_limit_s: float) -> dict:
    """Run one case in a fresh process (see ``CaseServer``)."""
    global _SERVER
    if _SERVER is None:
        import atexit

        _SERVER = CaseServer()
        atexit.register(_SERVER.close)
    return _SERVER.run(spec, time_limit_s)


# ---------------------------------------------------------------------------------------------
# the run


def crossover(rows: list[dict], ssm: str, peer: str, metric: str) -> str | None:
    """The smallest resolution from which ``ssm`` beats ``peer`` at it and every larger one.

    metric 'speed' (more images/s), 'memory' (less peak memory) or 'both'. The peer failing (out of
    memory or time) where the SSM ran counts as a win; the SSM failing where the peer ran as a
    loss. Returns None when the SSM does not win at the largest resolution.
    """
    by = {}
    for r in rows:
        by.setdefault(r["resolution"], {})[r["series"]] = r
    order = sorted(by, key=lambda k: by[k][next(iter(by[k]))]["pixels"])
    wins = []
    for res in order:
        a, b = by[res].get(ssm), by[res].get(peer)
        if a is None or b is None:
            continue
        a_ok, b_ok = a["status"] == "ok", b["status"] == "ok"
        if not a_ok and not b_ok:
            continue
        if a_ok and not b_ok:
            win = b["status"] in FAILED
        elif not a_ok:
            win = False
        else:
            fast = a["images_per_s"] > b["images_per_s"]
            small = _num(a.get("peak_mb")) < _num(b.get("peak_mb"))
            win = {"speed": fast, "memory": small, "both": fast and small}[metric]
        wins.append((res, win))
    first = None
    for res, win in reversed(wins):
        if not win:
            break
        first = res
    return first


def _num(v):
    return float("inf") if v is None or (isinstance(v, float) and math.isnan(v)) else v


def crossover_lines(rows: list[dict]) -> list[str]:
    series = list(dict.fromkeys(r["series"] for r in rows))
    kinds = {r["series"]: r["kind"] for r in rows}
    ssms = [s for s in series if kinds[s] == "ssm"]
    peers = [s for s in series if kinds[s] != "ssm"]
    peers.sort(key=lambda s: kinds[s] != "attention")  # attention first
    largest = max(rows, key=lambda r: r["pixels"])["resolution"] if rows else "-"
    lines = []
    for a in ssms:
        for b in peers:
            got = {m: crossover(rows, a, b, m) for m in ("speed", "memory", "both")}
            text = ", ".join(f"{m}: from {got[m]}" if got[m] else f"{m}: not up to {largest}"
                             for m in ("speed", "memory", "both"))
            lines.append(f"{a} vs {b} [{kinds[b]}] -> {text}")
    return lines


COLUMNS = [("series", "model"), ("kind", "kind"), ("resolution", "resolution"), ("status", "status"),
           ("latency_ms", "latency ms"), ("images_per_s", "images/s"), ("peak_mb", "peak MB"),
           ("gmacs", "GMACs/img"), ("step_gmacs", "train GMACs/img"), ("params_m", "params M")]


def format_row(row):
    text = "  ".join(f"{title}={_fmt(row.get(key))}" for key, title in COLUMNS
                     if row.get(key) is not None and key not in ("kind",))
    return text + (f"  ({row['note']})" if row.get("status") != "ok" and row.get("note") else "")


def markdown_table(rows):
    cols = [(k, t) for k, t in COLUMNS if any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return lines


def write_results(rows, machine: str, settings: str, cross: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(["series", "model", "attention", "kind", "resolution", "height", "width", "pixels",
                               "batch_size", "mode", "device", "status", "latency_ms", "images_per_s", "peak_mb",
                               "weights_mb", "gmacs", "step_gmacs", "params_m", "wall_s", "note"]
                              + [k for r in rows for k in r]))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    (out / "machine.txt").write_text(machine + "\n")
    lines = [f"Machine: {machine}", "", settings, "",
             "peak MB: memory of one step above what is resident before it: weights, input and, when "
             "training, the optimizer state (CPU: resident-set growth, a fresh process per case; CUDA: growth "
             "of the peak allocated). GMACs: per image, forward, FlopCounterMode (the scan by 9BLDN+BDL); "
             "train GMACs: forward+backward.", ""]
    lines += markdown_table(rows)
    lines += ["", "Crossover (the smallest resolution from which the SSM model is faster / uses less memory "
              "/ both, at it and every larger one measured):", ""]
    lines += [f"- {c}" for c in cross]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot(rows, out: Path, title: str) -> list[Path]:
    """throughput.png and memory.png: log-log, one line per series, failures marked at the axis edge."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.transforms as mtransforms
    except ImportError:
        print("matplotlib is not installed (pip install 'visionssm[plot]'): no plots written")
        return []
    series = list(dict.fromkeys(r["series"] for r in rows))
    ticks = sorted({(math.sqrt(r["pixels"]), r["resolution"]) for r in rows})
    written = []
    for key, ylabel, fname, edge in (("images_per_s", "images / s", "throughput.png", 0.03),
                                     ("peak_mb", "peak memory of the step (MB)", "memory.png", 0.97)):
        fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
        marked = False
        for i, s in enumerate(series):
            pts = sorted((r for r in rows if r["series"] == s), key=lambda r: r["pixels"])
            ok = [(math.sqrt(r["pixels"]), r[key]) for r in pts if r["status"] == "ok" and r.get(key)]
            bad = [(math.sqrt(r["pixels"]), r["status"]) for r in pts if r["status"] in FAILED]
            color = f"C{i % 10}"
            style = "-" if pts[0]["kind"] == "ssm" else ("--" if pts[0]["kind"] == "attention" else ":")
            if ok:
                ax.plot(*zip(*ok), style, marker="o", color=color, label=s)
            trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
            for x, status in bad:
                ax.plot([x], [edge], marker="x", markersize=10, mew=2, color=color, transform=trans, clip_on=False)
                ax.annotate(status, (x, edge), xycoords=trans, textcoords="offset points", fontsize=7,
                            xytext=(4, 4 if edge < 0.5 else -10), color=color)
                marked = True
            if not ok and not bad:
                ax.plot([], [], style, color=color, label=f"{s} (no result)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([t for t, _ in ticks], [n for _, n in ticks])
        ax.minorticks_off()
        ax.set_xlabel("resolution (side of a square of the same area, pixels)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, title="x: out of memory / time" if marked else None, title_fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname)
        plt.close(fig)
        written.append(out / fname)
    return written


def _progress(items, total):
    try:
        from tqdm import tqdm

        return tqdm(items, total=total, unit="case", dynamic_ncols=True), tqdm.write
    except ImportError:
        return items, print


def _available_mb() -> float | None:
    try:
        return _status_kb_meminfo("MemAvailable") / 1024
    except (OSError, StopIteration):
        return None


def _status_kb_meminfo(field):
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def main(argv=None):
    p = argparse.ArgumentParser(prog="visionssm bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--models", nargs="+", metavar="NAME[:key=value...]",
                   help=f"timm model names, optionally with create kwargs such as vim_tiny_patch16_224:depth=12 "
                        f"(default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--resolutions", nargs="+",
                   help=f"sizes N or HxW (default: {' '.join(DEFAULT_RESOLUTIONS)}; "
                        f"--full: {' '.join(FULL_RESOLUTIONS)})")
    p.add_argument("--full", action="store_true",
                   help="the full sweep: all peers, 224..2048 (an hour or more on 2 CPU cores)")
    p.add_argument("--attention", choices=("both", *ATTENTION_MODES), default="both",
                   help="attention modes of attention models (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step (default: %(default)s)")
    p.add_argument("--train", action="store_true", help="time a training step (forward+backward+AdamW)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--time-limit", type=float, help="seconds per case (default: 90; --full: 300)")
    p.add_argument("--budget", type=float, default=2.0,
                   help="seconds of timing repeats per case (default: %(default)s)")
    p.add_argument("--memory-limit", type=float,
                   help="CPU: MB a case may allocate before it counts as out of memory (default: 90%% of available)")
    p.add_argument("--out", default="bench-out/models", help="output folder (default: %(default)s)")
    args = p.parse_args(argv)

    import timm

    import visionssm  # noqa: F401

    models = args.models or (FULL_MODELS if args.full else DEFAULT_MODELS)
    try:
        unknown = [m for m in models if not timm.is_model(parse_model(m)[0])]
    except ValueError as e:
        p.error(str(e))
    if unknown:
        p.error(f"--models: unknown model(s) {unknown}; see `timm.list_models()` and `visionssm models`")
    try:
        sizes = [parse_resolution(r) for r in (args.resolutions or
                                                (FULL_RESOLUTIONS if args.full else DEFAULT_RESOLUTIONS))]
    except ValueError as e:
        p.error(str(e))
    sizes = sorted(dict.fromkeys(sizes), key=lambda hw: (hw[0] * hw[1], hw))
    if args.batch_size < 1:
        p.error(f"--batch-size: expected >= 1, got {args.batch_size}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device: expected cpu or cuda, got {args.device!r}")
    time_limit = args.time_limit or (300.0 if args.full else 90.0)
    memory_limit = args.memory_limit
    if memory_limit is None and device.type == "cpu":
        avail = _available_mb()
        memory_limit = 0.9 * avail if avail else None

    kinds = {m: model_kind(m) for m in models}
    plan = []
    for m in models:
        modes = ATTENTION_MODES if args.attention == "both" else (args.attention,)
        for attention in (modes if kinds[m] == "attention" else ("-",)):
            plan += [(m, attention, hw) for hw in sizes]

    machine = describe(args.device)
    mode = "training step (fwd+bwd+AdamW)" if args.train else "inference (no grad)"
    settings = (f"{mode}, batch {args.batch_size}, float32, device {args.device}, per-case time limit "
                f"{time_limit:g} s" + (f", memory limit {memory_limit / 1024:.1f} GB" if memory_limit else ""))
    print(f"machine: {machine}\n{settings}\n{len(plan)} cases, each in a fresh process")
    rows, failed_at = [], {}
    start = time.perf_counter()
    bar, write = _progress(plan, len(plan))
    for m, attention, (h, w) in bar:
        s = series_name(m, attention)
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{s} @ {res_name(h, w)}")
        row = dict(series=s, model=m, attention=attention, kind=kinds[m], resolution=res_name(h, w), height=h,
                   width=w, pixels=h * w, batch_size=args.batch_size, mode="train" if args.train else "inference",
                   device=args.device)
        if s in failed_at:
            status, at = failed_at[s]
            row.update(status=status, note=f"not run: {status} at {at}")
        else:
            spec = dict(model=m, attention=attention, height=h, width=w, batch_size=args.batch_size,
                        train=args.train, device=args.device, budget_s=args.budget, memory_limit_mb=memory_limit)
            row.update(run_case(spec, time_limit))
            if row["status"] in FAILED:
                failed_at[s] = (row["status"], res_name(h, w))
        rows.append(row)
        write(format_row(row))
    wall = time.perf_counter() - start

    cross = crossover_lines(rows)
    out = Path(args.out)
    write_results(rows, machine, settings, cross, out)
    plots = plot(rows, out, f"{mode}, batch {args.batch_size}, {args.device}\n{machine}")
    print("\n" + "\n".join(markdown_table(rows)))
    print("\nCrossover (smallest resolution from which the SSM model wins, at it and every larger one):")
    print("\n".join(f"  {c}" for c in cross) or "  (needs at least one SSM model and one other model)")
    print(f"\n{len(rows)} cases in {wall / 60:.1f} min; wrote {out / 'results.csv'}, {out / 'results.md'}"
          + "".join(f", {q}" for q in plots) + f", {out / 'machine.txt'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
