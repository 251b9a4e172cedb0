"""Latency of an exported model: onnxruntime (CPU) against PyTorch eager and ``torch.compile``.

For each model and input size it builds the model (random weights: latency does not depend on
them), exports it to ONNX with ``visionssm.export``, and times batch-1 inference in the three
engines in interleaved rounds (so a busy machine slows all of them alike), reporting the median
and the ratio to eager measured in this run, and the machine.

    visionssm bench export [--models vim_tiny_patch16_224 vmamba_tiny_s1l8] [--sizes 224 1024]
                           [--rounds 5] [--threads N] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from visionssm.bench.machine import describe

MODELS = ["vim_tiny_patch16_224", "vmamba_tiny_s1l8"]
SIZES = [224, 1024]


def _timer(fn):
    def timed():
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return timed


def bench_one(name: str, size: int, rounds: int, threads: int, compile_: bool, workdir: Path,
              model_kwargs: dict | None = None) -> dict:
    import onnxruntime as ort

    import visionssm
    from visionssm.export import export_onnx

    torch.manual_seed(0)
    model = visionssm.create_model(name, **(model_kwargs or {})).eval()
    x = torch.randn(1, 3, size, size)
    path = workdir / f"{name}_{size}.onnx"
    t0 = time.perf_counter()
    export_onnx(model, x, path)
    export_s = time.perf_counter() - t0
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}

    engines = {"eager": lambda: model(x), "onnxruntime": lambda: sess.run(None, feed)}
    if compile_:
        compiled = torch.compile(model)
        engines["compile"] = lambda: compiled(x)
    times = {k: [] for k in engines}
    with torch.no_grad():
        for fn in engines.values():  # warm-up (and compilation)
            fn()
        for _ in range(rounds):
            for k, fn in engines.items():
                times[k].append(_timer(fn)())
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"model": name, "size": size, "export_s": export_s, **{f"{k}_ms": v for k, v in med.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="visionssm bench export", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--sizes", nargs="+", type=int, default=SIZES)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="threads for PyTorch and onnxruntime (default: PyTorch's)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--model-kwargs", default="{}", help="JSON kwargs for create_model (smoke tests)")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    import json

    from visionssm.export import ExportError, require_onnx

    try:
        require_onnx()
    except ExportError as e:
        print(f"visionssm bench export: {e}", file=sys.stderr)
        return 2
    if args.rounds < 1 or min(args.sizes) < 16:
        print("visionssm bench export: --rounds must be >= 1 and --sizes >= 16", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"machine: {describe()}, onnxruntime threads {args.threads}")
    header = f"{'model':<24} {'size':>5} {'eager ms':>9} {'compile ms':>10} {'ort ms':>9} {'compile/eager':>13} " \
             f"{'ort/eager':>9} {'export s':>8}"
    print(header)
    with tempfile.TemporaryDirectory(prefix="visionssm_bench_export_") as tmp:
        for name in args.models:
            for size in args.sizes:
                r = bench_one(name, size, args.rounds, args.threads, not args.no_compile, Path(tmp),
                              json.loads(args.model_kwargs))
                eager, comp, ort_ms = r["eager_ms"], r.get("compile_ms"), r["onnxruntime_ms"]
                comp_ms, comp_ratio = (f"{comp:.1f}", f"{comp / eager:.2f}") if comp else ("-", "-")
                print(f"{name:<24} {size:>5} {eager:>9.1f} {comp_ms:>10} {ort_ms:>9.1f} {comp_ratio:>13} "
                      f"{ort_ms / eager:>9.2f} {r['export_s']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
