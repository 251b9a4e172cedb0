"""Which Triton launch configurations give wrong results on this GPU: VMamba's d_state=1 shapes
with every (channels per program, warps) choice, against the torch backend and the reference."""
import itertools

import torch

from visionssm import selective_scan, selective_scan_reference
from visionssm.bench.scan_gpu import Case, make_inputs
from visionssm.ops import scan_triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = {"stage1@224 b4": Case("", 4, 384, 3136, 1, 4, False), "stage4@224 b4": Case("", 4, 3072, 49, 1, 4, False),
          "vim@224 b4": Case("", 4, 384, 197, 16, 2, True), "stage1 L=70": Case("", 2, 16, 70, 1, 2, False)}
auto_warps = scan_triton._num_warps


def run(inp, backend):
    inp = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inp.items()}
    y = selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"], z=inp["z"],
                       delta_bias=inp["delta_bias"], delta_softplus=True, backend=backend)
    w = torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)
    (y * w).sum().backward()
    return [y.detach()] + [v.grad for v in inp.values() if v is not None]


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


for name, case in SHAPES.items():
    inp = make_inputs(case, torch.device(DEV))
    want = run(inp, "torch")
    if name.startswith("stage1"):
        c = {k: (v.cpu() if v is not None else None) for k, v in inp.items()}
        y0 = selective_scan_reference(c["u"], c["delta"], c["A"], c["B"], c["C"], c["D"], c["z"], c["delta_bias"], True)
        print(f"{name}: torch backend vs reference, y rel err {rel(want[0].cpu(), y0):.2e}")
    for bd, warps in itertools.product((None, 1, 2, 4, 8), (None, 1, 2, 4)):
        scan_triton.BLOCK_D = bd
        scan_triton._num_warps = auto_warps if warps is None else (lambda *a, w=warps: w)
        got = run(inp, "triton")
        errs = [rel(a, b) for a, b in zip(got, want)]
        auto = scan_triton._block_sizes(case.batch, case.groups or 1, case.dim // (case.groups or 1), case.state,
                                        torch.device(DEV))
        print(f"{name}: BLOCK_D {bd or f'auto={auto[0]}'} warps {warps or 'auto'}: y {errs[0]:.1e}, "
              f"grads max {max(errs[1:]):.1e} {'BAD' if max(errs) > 1e-3 else 'ok'}", flush=True)
    scan_triton.BLOCK_D, scan_triton._num_warps = None, auto_warps
