"""Which Triton launch configurations give wrong results on this GPU: VMamba's d_state=1 shapes and
Vim's, per kernel pair, with the default tiles and with forced (channels per program, warps), against
the torch backend. Stops at --deadline seconds (the compiles are most of its time).

    python3 tools/gpu_diag.py [--deadline 20] [--dry-run]
"""
import argparse
import itertools
import sys
import time

import torch

from visionssm.bench.scan_gpu import Case, check_against, error_text, scan_fn, triton_kernel
from visionssm.ops import scan_triton

SHAPES = {"stage1@224 b4": Case("", 4, 384, 3136, 1, 4, False), "stage4@224 b4": Case("", 4, 3072, 49, 1, 4, False),
          "vim@224 b4": Case("", 4, 384, 197, 16, 2, True), "stage1 L=70": Case("", 2, 16, 70, 1, 2, False)}
DRY_SHAPES = {"tiny L=70": Case("", 1, 8, 70, 1, 2, False)}
# (channels per program, warps); None: the kernel's own choice
CONFIGS = [(None, None), *itertools.product((1, 8), (1, 4))]
AUTO_WARPS = scan_triton._num_warps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deadline", type=float, default=20.0, help="seconds after which no new check starts")
    p.add_argument("--dry-run", action="store_true", help="a tiny shape on the CPU (under TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    dev = torch.device("cpu" if args.dry_run else "cuda")
    end = time.monotonic() + args.deadline
    bad = 0
    for (name, case), kernel, (block_d, warps) in itertools.product(
            (DRY_SHAPES if args.dry_run else SHAPES).items(), scan_triton.KERNELS,
            CONFIGS[:2] if args.dry_run else CONFIGS):
        if time.monotonic() > end:
            print(f"deadline reached: {name} {kernel} and the rest not checked")
            break
        scan_triton.BLOCK_D = block_d
        scan_triton._num_warps = AUTO_WARPS if warps is None else (lambda *a, w=warps: w)
        try:
            with triton_kernel(kernel):
                err = check_against(scan_fn("triton"), scan_fn("torch"), case, dev)
            verdict = f"{err:.1e} {'BAD' if err > 1e-3 else 'ok'}"
        except Exception as e:  # a configuration that does not compile or launch is a finding too
            err, verdict = None, f"FAILED: {error_text(e)}"
        finally:
            scan_triton.BLOCK_D, scan_triton._num_warps = None, AUTO_WARPS
        bad += err is None or err > 1e-3
        print(f"{name} {kernel}: BLOCK_D {block_d or 'auto'} warps {warps or 'auto'}: max relative error of y and "
              f"gradients {verdict}", flush=True)
    print(f"{bad} bad configuration(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
