"""Which Triton launch configurations give wrong results on this GPU: VMamba's d_state=1 shapes
and Vim's, with every (channels per program, warps) choice, against the torch backend."""
import itertools

import torch

from visionssm.bench.scan_gpu import Case, check_against, scan_fn
from visionssm.ops import scan_triton

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: under TRITON_INTERPRET=1
SHAPES = {"stage1@224 b4": Case("", 4, 384, 3136, 1, 4, False), "stage4@224 b4": Case("", 4, 3072, 49, 1, 4, False),
          "vim@224 b4": Case("", 4, 384, 197, 16, 2, True), "stage1 L=70": Case("", 2, 16, 70, 1, 2, False)}
AUTO_WARPS = scan_triton._num_warps

for name, case in SHAPES.items():
    for block_d, warps in itertools.product((None, 1, 2, 4, 8), (None, 1, 2, 4)):
        scan_triton.BLOCK_D = block_d
        scan_triton._num_warps = AUTO_WARPS if warps is None else (lambda *a, w=warps: w)
        err = check_against(scan_fn("triton"), scan_fn("torch"), case, DEV)
        print(f"{name}: BLOCK_D {block_d or 'auto'} warps {warps or 'auto'}: max relative error of y and "
              f"gradients {err:.1e} {'BAD' if err > 1e-3 else 'ok'}", flush=True)
    scan_triton.BLOCK_D, scan_triton._num_warps = None, AUTO_WARPS
