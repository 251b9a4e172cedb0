"""Directional scan on a GPU: the index-map kernels against the copy path (run by tools/gpu_check.sh).

For VMamba-T stage 1 (the cross-scan, and a row-wise order of as many directions: their gap is the cost
of the column walks) and stage 3, and Vim-T's bidirectional scan, at batch 128 and 1, per Triton
kernel pair: forward and backward of the index-map kernels (``directional_forward`` /
``directional_backward``) and of the copy path (the same pair's plain scan on gathered copies,
``directional_scan._composed_*``), the plain scan alone on ready copies (contiguous reads), and the
largest relative difference of the two paths over y, the last state and every gradient.

Writes directions.csv into --out, a row per (case, kernel pair) as it comes; a case that fails is a
row with its error. ``--dry-run``: tiny sizes on the CPU, one call per timing (Triton under
TRITON_INTERPRET=1 set before Python starts).

    python3 tools/gpu_directions.py [--out DIR] [--dry-run]
"""

import argparse
import importlib
import sys
from pathlib import Path

import torch

from visionssm.bench.machine import cpu_model
from visionssm.bench.report import CsvLog
from visionssm.bench.scan_gpu import error_text, max_rel_err, time_ms, triton_kernel
from visionssm.layers.scan_orders import scan_index_maps
from visionssm.ops import scan_triton as st
from visionssm.ops.selective_scan import backend_unavailable_reason

ds = importlib.import_module("visionssm.ops.directional_scan")  # the module: the package exports its function

COLUMNS = ("device", "case", "kernel", "size", "fwd_ms", "copies_fwd_ms", "plain_fwd_ms", "bwd_ms", "copies_bwd_ms",
           "max_rel_diff", "error")
ROWWISE = ("row", "row_rev", "row", "row_rev")  # as many directions as cross, no column walk: the gathers' cost
# name: batch, d per direction, H, W, order, state, u shared by the directions (VMamba) or one part each (Vim)
CASES = {
    "vmamba-t s1 cross": (128, 192, 56, 56, "cross", 1, True),
    "vmamba-t s1 rows": (128, 192, 56, 56, ROWWISE, 1, True),
    "vmamba-t s1 cross b1": (1, 192, 56, 56, "cross", 1, True),
    "vmamba-t s3 cross": (128, 768, 14, 14, "cross", 1, True),
    "vim-t bidir": (128, 384, 1, 197, "bidirectional", 16, False),
    "vim-t bidir b1": (1, 384, 1, 197, "bidirectional", 16, False),
}
DRY_CASES = {
    "tiny cross": (1, 2, 3, 4, "cross", 1, True),
    "tiny bidir": (1, 2, 1, 9, "bidirectional", 2, False),
}


def inputs(b, d, H, W, order, n, shared, dev):
    """The index maps and the directional forward's arguments (ending with delta_softplus)."""
    m = scan_index_maps(H, W, order, device=dev)
    K, L = m.shape
    torch.manual_seed(0)
    kw = dict(device=dev)
    u = torch.randn(b, d if shared else K * d, L, **kw)
    delta = 0.5 * torch.randn(b, K * d, L, **kw)
    A = -torch.rand(K * d, n, **kw) - 0.5
    B = torch.randn(b, K, n, L, **kw)
    C = torch.randn_like(B)
    return m, (u, delta, A, B, C, torch.randn(K * d, **kw), 0.1 * torch.randn(K * d, **kw), True)


def measure(spec, kernel: str, dev, timing: dict) -> dict:
    b, d, H, W, order, n, shared = spec
    m, args = inputs(*spec, dev)
    K, L = m.shape
    with triton_kernel(kernel):
        y1, h1, c1 = st.directional_forward(*args, m, True)
        y0, h0, c0 = ds._composed_forward(st, *args, m, True)
        dy = torch.randn_like(y1)
        g1 = st.directional_backward(*args, m, c1, dy, None)
        g0 = ds._composed_backward(st, *args, m, c0, dy, None)
        rel = max(max_rel_err(x, y) for x, y in zip((y1, h1, *g1), (y0, h0, *g0)) if y is not None)
        taken = [ds._take(t, m, d) for t in (args[0], args[1], args[3], args[4])]  # ready copies

        def ms(fn):
            return time_ms(fn, device=dev, **timing)

        return dict(size=f"{b}x{K}x{d}x{L}x{n}", max_rel_diff=rel,
                    fwd_ms=ms(lambda: st.directional_forward(*args, m, False)),
                    copies_fwd_ms=ms(lambda: ds._composed_forward(st, *args, m, False)),
                    plain_fwd_ms=ms(lambda: st.forward(*taken[:2], args[2], *taken[2:], args[5], None, args[6], True,
                                                       False)),
                    bwd_ms=ms(lambda: st.directional_backward(*args, m, c1, dy, None)),
                    copies_bwd_ms=ms(lambda: ds._composed_backward(st, *args, m, c0, dy, None)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out/gpu-directions", help="folder for directions.csv")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (Triton under TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    dev = torch.device("cpu" if args.dry_run else "cuda")
    reason = backend_unavailable_reason("triton", dev) if args.dry_run or torch.cuda.is_available() else "no CUDA"
    if reason:
        print(f"gpu_directions.py: the Triton kernels cannot run here ({reason})", file=sys.stderr)
        return 1
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    timing = dict(budget_ms=0, max_reps=1, warmup=0, min_reps=1) if args.dry_run else dict(budget_ms=300, max_reps=15,
                                                                                           warmup=3)
    log = CsvLog(Path(args.out) / "directions.csv", COLUMNS)
    for name, spec in (DRY_CASES if args.dry_run else CASES).items():
        for kernel in st.KERNELS:
            row = dict(device=device_name, case=name, kernel=kernel)
            try:
                row.update(measure(spec, kernel, dev, timing))
            except Exception as e:  # out of memory, a failed compile: recorded, the rest still runs
                row["error"] = error_text(e)
            log.add(row)
            if "error" in row:
                print(f"{name:21s} {kernel:5s} FAILED: {row['error']}", flush=True)
            else:
                r = row
                print(f"{name:21s} {kernel:5s} {r['size']}: fwd {r['fwd_ms']:.3f} ms, copies {r['copies_fwd_ms']:.3f} "
                      f"({r['copies_fwd_ms'] / r['fwd_ms']:.2f}x), plain scan alone {r['plain_fwd_ms']:.3f}; "
                      f"bwd {r['bwd_ms']:.3f} ms, copies {r['copies_bwd_ms']:.3f} "
                      f"({r['copies_bwd_ms'] / r['bwd_ms']:.2f}x); max rel diff {r['max_rel_diff']:.1e}", flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    print(f"wrote {log.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
