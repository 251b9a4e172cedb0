"""The Triton directional scan (kernels that read every direction through its index map, no copies)
run by Triton's interpreter on CPU tensors, against today's copy-based path of
tests/test_scan_directions.py (``cross_scan`` -> reference ``selective_scan`` -> ``cross_merge``):
values and the gradients of every input.

Same machinery as tests/test_scan_triton.py: the cases run in one child process started with
TRITON_INTERPRET=1 (in-process, compiled, on CUDA copies with VISIONSSM_TRITON_TEST_DEVICE=cuda) and
each test asserts on its case's result. Tiles are tiny (8 steps, 2 channels per program), so the
grids' 13 to 16 steps make two chunks with a partial last one, a 3-channel direction has a partial
channel block and the per-group dB/dC are added atomically; one float32 case runs the default tiles.
The copy fallback (``_composed_forward`` / ``_composed_backward``) is disabled in the cases, so one
that does not reach the kernels fails.
"""

import json

import pytest
import torch

from test_scan_directions import OPTIONS, copy_based, make_inputs, run  # tests/ is on sys.path
from test_scan_triton import DEVICE, _err, assert_checks, for_each_kernel, half_checks, interpreted

pytestmark = pytest.mark.triton

F64, F32 = (1e-10, 1e-10), (1e-4, 1e-5)  # (rtol, atol) of tests/test_scan_directions.py


def _cases():
    """id -> parameters of one interpreter check."""
    cases = {}
    # VMamba's cross-scan (u shared by the 4 directions), Vim's pair (one u per direction, and
    # shared), the snake walks, one mapped direction, repeated and mixed directions; odd, non-square
    # and square grids
    for order, hw, shared in (("cross", (3, 5), True), ("cross", (3, 5), False), ("bidirectional", (1, 13), False),
                              ("bidirectional", (1, 13), True), ("snake", (5, 3), True),
                              ("unidirectional", (3, 5), True), (("row", "row", "row_rev", "row_rev"), (3, 5), False),
                              (("col_rev", "snake_row"), (4, 4), True)):
        name = order if isinstance(order, str) else "-".join(order)
        cases[f"f64-{name}-{hw[0]}x{hw[1]}-{'u_shared' if shared else 'u_per_direction'}"] = dict(
            order=order, hw=hw, shared=shared)
    # every option with grouped B, C (2 groups per direction, 2 channels each)
    for opt in OPTIONS:
        cases[f"f64-cross-5x3-g2-{opt}"] = dict(order="cross", hw=(5, 3), options=opt, d=4, groups=2)
    cases["f64-bidirectional-1x13-g2-u_per_direction"] = dict(order="bidirectional", hw=(1, 13), d=4, groups=2,
                                                              shared=False)
    cases["f64-cross-3x5-no_dlast"] = dict(order="cross", hw=(3, 5), use_last=False)
    cases["f32-cross-3x5"] = dict(order="cross", hw=(3, 5), dtype="float32", tol=F32)
    cases["f32-bidirectional-1x13-no_z"] = dict(order="bidirectional", hw=(1, 13), shared=False, options="no_z",
                                                dtype="float32", tol=F32)
    # default tiles (32-step chunks at 16 states), the last chunk partial
    cases["f32-bidirectional-1x70-state16-default-tiles"] = dict(order="bidirectional", hw=(1, 70), batch=1, d=3,
                                                                 state=16, shared=False, dtype="float32", tol=F32,
                                                                 default_tiles=True)
    cases["no-grad-forward"] = dict(kind="nograd", order="snake", hw=(3, 5))
    cases["empty-batch"] = dict(kind="empty", order="cross", hw=(3, 5), batch=0)
    cases["bf16-inputs"] = dict(kind="half", half="bfloat16", order="cross", hw=(3, 5))
    cases["f16-inputs-bidirectional"] = dict(kind="half", half="float16", order="bidirectional", hw=(1, 13),
                                             shared=False)
    # the same kernels on gathered copies sum the directions in the same order: the same bits
    cases["f32-cross-5x3-g2-equals-kernels-on-copies"] = dict(kind="copies", order="cross", hw=(5, 3), d=4, groups=2,
                                                              dtype="float32")
    return cases


CASES = for_each_kernel(_cases())


def _triton(t, order, hw, options, return_last_state=True):
    """directional_scan on the triton backend, on DEVICE copies (differentiable), outputs back on the CPU."""
    from visionssm.layers.scan_orders import scan_index_maps
    from visionssm.ops import directional_scan

    t = {k: v.to(DEVICE) for k, v in t.items()}
    kw = {k: t[k] for k in ("D", "z", "delta_bias") if options.get(k, True)}
    out = directional_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], scan_index_maps(*hw, order).to(DEVICE), **kw,
                           delta_softplus=options.get("softplus", True), return_last_state=return_last_state,
                           backend="triton")
    return tuple(o.cpu() for o in out) if return_last_state else out.cpu()


def _compare(got, want, tol, what=""):
    (y1, h1, g1), (y0, h0, g0) = got, want
    if y1.dtype != y0.dtype or y1.shape != y0.shape or h1.shape != h0.shape or g1.keys() != g0.keys():
        raise AssertionError(f"y {y1.dtype} {tuple(y1.shape)}, last {tuple(h1.shape)}, grads {sorted(g1)}; expected "
                             f"{y0.dtype} {tuple(y0.shape)}, {tuple(h0.shape)}, {sorted(g0)}")
    if any(g1[k].shape != g0[k].shape for k in g0):
        raise AssertionError(f"gradient shapes {[tuple(g1[k].shape) for k in g1]}")
    return ([_err(f"{what}y", y1, y0, *tol), _err(f"{what}last state", h1, h0, *tol)]
            + [_err(f"{what}grad {k}", g1[k], g0[k], *tol) for k in g0])


def _checks(case: dict, on_copies) -> list:
    order, hw = case["order"], case["hw"]
    options = OPTIONS[case.get("options", "all")]
    sizes = {k: case[k] for k in ("batch", "d", "state", "groups", "shared") if k in case}
    inp = make_inputs(order, hw, **sizes, dtype=getattr(torch, case.get("dtype", "float64")))
    kind = case.get("kind", "gradients")
    if kind == "gradients":
        if case.get("use_last", True):
            def ref(t):
                return copy_based(t, order, hw, options)

            def tri(t):
                return _triton(t, order, hw, options)
        else:  # the last state not used: no gradient flows into it
            def ref(t):
                y, h = copy_based(t, order, hw, options)
                return y, h.detach()

            def tri(t):
                y, h = _triton(t, order, hw, options)
                return y, h.detach()
        return _compare(run(tri, inp, options), run(ref, inp, options), case.get("tol", F64))
    if kind == "nograd":
        with torch.no_grad():
            y = _triton(inp, order, hw, options, return_last_state=False)
        return [_err("y", y, copy_based(inp, order, hw, options, return_last_state=False), *F64)]
    if kind == "empty":
        y, last, grads = run(lambda t: _triton(t, order, hw, options), inp, options)
        d, kd = inp["z"].shape[1], inp["delta"].shape[1]
        if y.shape != (0, d, hw[0] * hw[1]) or last.shape != (0, kd, inp["A"].shape[1]):
            raise AssertionError(f"y {tuple(y.shape)}, last {tuple(last.shape)}")
        if any(g.shape != inp[k].shape or g.any() for k, g in grads.items()):
            raise AssertionError("an empty batch gave gradients of the wrong shape or nonzero")
        return []
    if kind == "half":  # the float32 triton run equals the copy path (the cases above)
        dtype = getattr(torch, case["half"])
        low = {k: v.float() if k in ("A", "D", "delta_bias") else v.to(dtype) for k, v in inp.items()}
        return half_checks(lambda t: _triton(t, order, hw, options), low, dtype)
    if kind == "copies":  # the backend calls, no autograd: bit for bit under the interpreter
        from visionssm.layers.scan_orders import scan_index_maps
        from visionssm.ops import scan_triton

        forward_on_copies, backward_on_copies = on_copies
        maps = scan_index_maps(*hw, order).to(DEVICE)
        t = {k: v.to(DEVICE) for k, v in inp.items()}
        args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True)
        y1, h1, c1 = scan_triton.directional_forward(*args, maps, True)
        y0, h0, c0 = forward_on_copies(scan_triton, *args, maps, True)
        dy, dlast = torch.randn_like(y1), torch.randn_like(h1)
        g1 = scan_triton.directional_backward(*args, maps, c1, dy, dlast)
        g0 = backward_on_copies(scan_triton, *args, maps, c0, dy, dlast)
        tol = (0.0, 0.0) if DEVICE == "cpu" else F32
        names = ("du", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias")
        return [_err(what, a.cpu(), b.cpu(), *tol) for what, a, b in zip(("y", "last state", *names), (y1, h1, *g1),
                                                                       (y0, h0, *g0))]
    raise ValueError(f"unknown case kind {kind!r}")


def compute_case(case: dict) -> dict:
    """Run one case; {'checks': [...]} or {'error': traceback}."""
    import importlib
    import traceback

    from visionssm.ops import scan_triton

    ds = importlib.import_module("visionssm.ops.directional_scan")  # the package's name is the function

    def copy_path(*args, **kwargs):
        raise AssertionError("the triton backend ran the directional scan on copies")

    saved = scan_triton.CHUNK, scan_triton.BLOCK_D, ds._composed_forward, ds._composed_backward, scan_triton.KERNEL
    scan_triton.KERNEL = case["kernel"]
    if not case.get("default_tiles"):
        scan_triton.CHUNK, scan_triton.BLOCK_D = 8, 2
    ds._composed_forward = ds._composed_backward = copy_path
    try:
        return {"checks": _checks(case, saved[2:4])}
    except Exception:
        return {"error": traceback.format_exc()}
    finally:
        (scan_triton.CHUNK, scan_triton.BLOCK_D, ds._composed_forward, ds._composed_backward,
         scan_triton.KERNEL) = saved


def compute_all() -> dict:
    return {name: compute_case(case) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def interpreter_results():
    return interpreted(__file__, compute_all)


@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_directional_kernel_matches_copy_based_path(interpreter_results, case):
    assert_checks(interpreter_results[case])


def test_triton_backend_has_the_directional_kernels():
    from visionssm.ops import scan_triton

    assert callable(getattr(scan_triton, "directional_forward", None))
    assert callable(getattr(scan_triton, "directional_backward", None))


if __name__ == "__main__":  # the child process of interpreter_results
    print(json.dumps(compute_all()))
