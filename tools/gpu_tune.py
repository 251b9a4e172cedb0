"""Launch-configuration sweep of the Triton scan on a GPU: chunk length x channels per program x warps.

For Vim-Ti at 224 (16 states) and VMamba-T stage 1 at 512 (1 state), times the forward (no grad)
of each configuration, then forward+backward of the fastest few and of the default, checking each
against the torch backend. Stops sweeping at --deadline seconds and writes what it has.

    python3 tools/gpu_tune.py --out DIR [--deadline 150]
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from visionssm.bench.scan_gpu import CASES, check_against, fb_step, fwd_step, make_inputs, scan_fn, time_ms
from visionssm.ops import scan_triton

GRIDS = {
    "vim224": list(itertools.product((32, 64, 128), (1, 2, 4, 8), (2, 4, 8))),
    "vmamba512": list(itertools.product((64, 128, 256), (4, 8, 16, 32), (1, 2, 4))),
}
AUTO_WARPS = scan_triton._num_warps


def configure(chunk, block_d, warps):
    scan_triton.CHUNK, scan_triton.BLOCK_D = chunk, block_d
    scan_triton._num_warps = AUTO_WARPS if warps is None else (lambda *a, w=warps: w)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench-out/gpu-tune")
    p.add_argument("--deadline", type=float, default=150.0)
    args = p.parse_args()
    dev, t_start = torch.device("cuda"), time.time()
    res = {}
    for key, grid in GRIDS.items():
        case = CASES[key]
        inp = make_inputs(case, dev)
        configure(None, None, None)
        rows = [dict(config="default", fwd_ms=time_ms(fwd_step(scan_fn("triton"), inp), 200, 20))]
        budget = args.deadline * (0.45 if key == "vim224" else 0.9)
        for chunk, bd, w in grid:
            if time.time() - t_start > budget:
                rows.append(dict(config="deadline reached"))
                break
            configure(chunk, bd, w)
            try:
                ms = time_ms(fwd_step(scan_fn("triton"), inp), 100, 10)
                rows.append(dict(config=[chunk, bd, w], fwd_ms=ms))
            except Exception as e:  # out of resources, compile failure: recorded
                rows.append(dict(config=[chunk, bd, w], error=f"{type(e).__name__}: {str(e)[:120]}"))
            print(key, rows[-1], flush=True)
        timed = sorted((r for r in rows[1:] if "fwd_ms" in r), key=lambda r: r["fwd_ms"])
        fb_rows = []
        for r in [rows[0], *timed[:3]]:
            configure(*(r["config"] if r["config"] != "default" else (None, None, None)))
            try:
                g = make_inputs(case, dev, requires_grad=True)
                fb_ms = time_ms(fb_step(scan_fn("triton"), g), 300, 20)
                err = check_against(scan_fn("triton"), scan_fn("torch"), case, dev)
                fb_rows.append(dict(config=r["config"], fwd_ms=r["fwd_ms"], fb_ms=fb_ms, err=err))
            except Exception as e:
                fb_rows.append(dict(config=r["config"], error=f"{type(e).__name__}: {str(e)[:120]}"))
            print(key, "fb", fb_rows[-1], flush=True)
        res[key] = dict(fwd=rows, fb=fb_rows)
        configure(None, None, None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_tune.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
