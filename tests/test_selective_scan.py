"""The selective scan: every backend against the reference loop, gradients, dtypes, bad input,
and the custom op's integration (FLOP counting, torch.compile, torch.export)."""

import operator

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scan_inputs import make_inputs, one_group, run_scan  # tests/ is on sys.path
from visionssm import available_backends, selective_scan, selective_scan_reference
from visionssm.ops import scan_macs

FAST = [b for b in available_backends("cpu") if b != "reference"]
CPU_BACKENDS = ["reference", *FAST]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


OPTIONS = [
    dict(),
    dict(z=False),
    dict(D=False, delta_bias=False),
    dict(softplus=False, delta_bias=False),
    dict(z=False, D=False, delta_bias=False, softplus=False),
]


def assert_close(a, b, rtol, atol, what):
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    assert err <= atol + rtol * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"no_{k}" for k in o) or "all")
@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("length", [1, 2, 7, 130])
def test_matches_reference_float32(backend, options, groups, length):
    inp = make_inputs(length=length, groups=groups)
    y0, h0, g0 = run_scan("reference", inp, options)
    y1, h1, g1 = run_scan(backend, inp, options)
    assert y1.dtype == torch.float32 and y1.shape == y0.shape and h1.shape == h0.shape
    assert_close(y1, y0, 1e-5, 1e-6, "y")
    assert_close(h1, h0, 1e-5, 1e-6, "last state")
    assert g1.keys() == g0.keys()
    for k in g0:
        assert g1[k].shape == g0[k].shape, k
        assert_close(g1[k], g0[k], 1e-4, 1e-5, f"grad {k}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("groups", [None, 2])
def test_gradcheck_float64(backend, groups):
    inp = make_inputs(batch=1, dim=4, length=70, state=3, groups=groups, dtype=torch.float64)
    tensors = tuple(inp[k].clone().requires_grad_() for k in NAMES)

    def fn(*t):
        y, last = selective_scan(*t[:5], D=t[5], z=t[6], delta_bias=t[7], delta_softplus=True,
                                 return_last_state=True, backend=backend)
        return y, last

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reference_backward_is_linear_in_length():
    """The reference must not take the O(L^2) autograd path of indexing per step (it would take minutes)."""
    inp = make_inputs(batch=1, dim=2, length=4096, state=2)
    _, _, grads = run_scan("reference", inp, dict())
    assert torch.isfinite(grads["u"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("backend", FAST)
def test_long_sequence_large_decay_is_finite(backend):
    """16384 steps with |A| * sum(dt) far beyond the float32 exp range of a chunked cumsum form."""
    inp = make_inputs(batch=1, dim=4, length=16384, state=4, dt_bias_shift=3.0)
    inp["A"] = inp["A"] * 8
    y0, h0, _ = run_scan("reference", inp, dict(), grad=False)
    y1, h1, g1 = run_scan(backend, inp, dict())
    assert (inp["A"].abs().max() * torch.nn.functional.softplus(inp["delta"] + inp["delta_bias"][:, None])
            .sum(-1).max()) > 1e4
    assert torch.isfinite(y1).all() and all(torch.isfinite(g).all() for g in g1.values())
    assert_close(y1, y0, 1e-5, 1e-5, "y")
    assert_close(h1, h0, 1e-5, 1e-5, "last state")


@pytest.mark.parametrize("backend", FAST + ["reference"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_half_inputs_accumulate_in_float32(backend, dtype, tol):
    inp = make_inputs(length=300, groups=2)
    y32, h32, _ = run_scan("reference", inp, dict(), grad=False)
    low = {k: v.to(dtype) for k, v in inp.items()}
    # the float32 answer for the rounded inputs: what a float32 state gives
    y_want, h_want, _ = run_scan("reference", {k: v.float() for k, v in low.items()}, dict(), grad=False)
    y, h, grads = run_scan(backend, low, dict())
    assert y.dtype == dtype and h.dtype == torch.float32
    assert grads["u"].dtype == dtype and grads["A"].dtype == dtype
    assert_close(h, h_want, 1e-5, 1e-5, "last state")  # the state itself is float32-exact
    assert_close(y.float(), y_want, tol, tol, "y")  # only the output rounding remains
    assert_close(y.float(), y32, 5 * tol, 5 * tol, "y vs float32 inputs")


@pytest.mark.parametrize("backend", FAST)
def test_an_autocast_region_does_not_reach_into_the_scan(backend):
    """The op computes in float32 whatever autocast is on around it (the torch backend's einsums
    once ran in bfloat16 there and failed against its float32 state)."""
    inp = make_inputs(length=40, groups=2)
    y0, h0, g0 = run_scan(backend, inp, dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1, h1, g1 = run_scan(backend, inp, dict())
    assert torch.equal(y1, y0) and torch.equal(h1, h0)
    assert all(torch.equal(g1[k], g0[k]) for k in g0)


@pytest.mark.parametrize("backend", FAST)
def test_no_grad_forward_saves_nothing_and_agrees(backend):
    inp = make_inputs(length=70)
    with torch.no_grad():
        y1 = selective_scan(*(inp[k] for k in NAMES[:5]), D=inp["D"], backend=backend)
    y0 = selective_scan_reference(*(inp[k] for k in NAMES[:5]), D=inp["D"])
    assert_close(y1, y0, 1e-5, 1e-6, "y")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("grouped", ["B", "C"])
def test_3d_b_or_c_with_a_one_group_other_is_the_3d_scan(backend, grouped):
    """A 3-D B or C is one group (as in mamba_ssm), so it may meet a 1-group grouped other: the
    values and gradients are those of the all-3-D scan, each gradient in its own input's layout."""
    inp = make_inputs(length=7)
    y0, h0, g0 = run_scan("reference", inp, dict())
    mixed = one_group(inp, grouped)
    y1, h1, g1 = run_scan(backend, mixed, dict())
    assert_close(y1, y0, 1e-5, 1e-6, "y")
    assert_close(h1, h0, 1e-5, 1e-6, "last state")
    assert g1.keys() == g0.keys()
    for k in g0:
        assert g1[k].shape == mixed[k].shape, k
        assert_close(g1[k].reshape(g0[k].shape), g0[k], 1e-4, 1e-5, f"grad {k}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("sizes", [dict(batch=0), dict(batch=0, groups=2), dict(length=0)],
                         ids=["batch0", "batch0-groups2", "length0"])
def test_empty_batch_or_sequence_gives_empty_outputs_and_zero_gradients(backend, sizes):
    inp = make_inputs(**sizes)
    y, last, grads = run_scan(backend, inp, dict())
    batch, _, length = inp["u"].shape
    assert y.shape == inp["u"].shape and last.shape == (batch, 6, 4) and not last.any()
    # the reference loop has no step to run for length 0: autograd reaches u, D and z only
    assert set(grads) == ({"u", "D", "z"} if backend == "reference" and length == 0 else set(NAMES))
    for k, g in grads.items():
        assert g.shape == inp[k].shape and not g.any(), k


def test_auto_picks_the_fused_cpu_kernel():
    assert available_backends("cpu")[0] == "cpu"
    assert available_backends("cpu")[-1] == "reference"


def test_flop_counter_counts_the_scan():
    b, d, length, n = 2, 8, 11, 4
    inp = make_inputs(batch=b, dim=d, length=length, state=n)
    with FlopCounterMode(display=False) as fc:
        selective_scan(*(inp[k] for k in NAMES[:5]), D=inp["D"], backend="cpu")
    assert fc.get_total_flops() == 2 * scan_macs(b, d, length, n) == 2 * (9 * b * d * length * n + b * d * length)


class _ScanModule(torch.nn.Module):
    def __init__(self, dim, state):
        super().__init__()
        self.A = torch.nn.Parameter(-torch.rand(dim, state) - 0.5)
        self.D = torch.nn.Parameter(torch.ones(dim))

    def forward(self, u, delta, B, C):
        return selective_scan(u, delta, self.A, B, C, D=self.D, delta_softplus=True)


def _scan_module_inputs():
    inp = make_inputs(batch=1, dim=6, length=10, state=4)
    return _ScanModule(6, 4), (inp["u"], inp["delta"], inp["B"], inp["C"])


def test_torch_export_keeps_one_opaque_node():
    mod, args = _scan_module_inputs()
    ep = torch.export.export(mod, args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.visionssm.selective_scan.default) == 1
    assert set(targets) == {torch.ops.visionssm.selective_scan.default, operator.getitem}  # no loop unrolled
    torch.testing.assert_close(ep.module()(*args), mod(*args))


def test_torch_compile_full_graph_with_gradients():
    mod, args = _scan_module_inputs()
    compiled = torch.compile(mod, backend="aot_eager", fullgraph=True)
    out = compiled(*args)
    torch.testing.assert_close(out, mod(*args))
    out.sum().backward()
    grad_compiled = mod.A.grad.clone()
    mod.A.grad = None
    mod(*args).sum().backward()
    torch.testing.assert_close(grad_compiled, mod.A.grad)


# ---------------------------------------------------------------------------------------------
# bad input


def _call(backend="auto", **changes):
    inp = make_inputs()  # batch 2, dim 6, length 9, state 4, B and C 3-D
    inp.update(changes)
    return selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"], z=inp["z"],
                          delta_bias=inp["delta_bias"], backend=backend)


# one case for every raise in check_inputs and _need_tensor
BAD_INPUTS = [
    (dict(u=None), r"u: expected a tensor, got None"),
    (dict(C=None), r"C: expected a tensor, got None"),
    (dict(u=[1.0]), r"u: expected a torch.Tensor, got list"),
    (dict(A=-torch.rand(6, 4, dtype=torch.complex64)), r"A: expected a real floating tensor, got torch.complex64"),
    (dict(u=torch.randint(0, 3, (2, 6, 9))), r"u: expected a floating dtype .*got torch.int64"),
    (dict(u=torch.randn(2, 6)), r"u: expected a 3-D tensor, got shape \(2, 6\)"),
    (dict(z=torch.randn(2, 6, 9, 1)), r"z: expected a 3-D tensor, got shape \(2, 6, 9, 1\)"),
    (dict(A=-torch.rand(5, 4)), r"A: expected shape \(6, state\).*got \(5, 4\)"),
    (dict(A=-torch.rand(6, 0), B=torch.randn(2, 0, 9), C=torch.randn(2, 0, 9)),
     r"A: expected at least 1 state, got shape \(6, 0\)"),
    (dict(delta=torch.randn(2, 6, 8)), r"delta: expected shape \(2, 6, 9\) \(same as u\), got \(2, 6, 8\)"),
    (dict(z=torch.randn(2, 6, 8)), r"z: expected shape \(2, 6, 9\) \(same as u\), got \(2, 6, 8\)"),
    (dict(z=torch.randn(2, 6, 1)), r"z: expected shape \(2, 6, 9\) \(same as u\), got \(2, 6, 1\)"),
    (dict(D=torch.randn(7)), r"D: expected shape \(6,\), got \(7,\)"),
    (dict(delta_bias=torch.randn(3)), r"delta_bias: expected shape \(6,\), got \(3,\)"),
    (dict(B=torch.randn(2, 3, 9)), r"B: expected shape \(batch, state, length\) = \(2, 4, 9\), got \(2, 3, 9\)"),
    (dict(C=torch.randn(2, 4, 1)), r"C: expected shape \(batch, state, length\) = \(2, 4, 9\), got \(2, 4, 1\)"),
    (dict(B=torch.randn(2, 3, 4, 8), C=torch.randn(2, 3, 4, 9)),
     r"B: expected shape \(batch, groups, state, length\) = \(2, 3, 4, 9\), got \(2, 3, 4, 8\)"),
    (dict(B=torch.randn(2, 3, 4, 9), C=torch.randn(1, 3, 4, 9)),
     r"C: expected shape \(batch, groups, state, length\) = \(2, 3, 4, 9\), got \(1, 3, 4, 9\)"),
    (dict(C=torch.randn(2, 4, 4, 9)), r"C: dim 6 must be a multiple of groups, got groups=4"),
    (dict(B=torch.randn(2, 5, 4, 9)), r"B: dim 6 must be a multiple of groups, got groups=5"),
    (dict(B=torch.randn(2, 0, 4, 9)), r"B: dim 6 must be a multiple of groups, got groups=0"),
    (dict(B=torch.randn(2, 2, 4, 9), C=torch.randn(2, 3, 4, 9)),
     r"C: expected 2 group\(s\) like B \(2, 2, 4, 9\) .*got 3: shape \(2, 3, 4, 9\)"),
    # a 3-D B or C is one group: with a 2-group other it is a mismatch, either way round
    (dict(C=torch.randn(2, 2, 4, 9)), r"C: expected 1 group\(s\) like B \(2, 4, 9\) .*got 2: shape \(2, 2, 4, 9\)"),
    (dict(B=torch.randn(2, 2, 4, 9)), r"C: expected 2 group\(s\) like B \(2, 2, 4, 9\) .*got 1: shape \(2, 4, 9\)"),
    (dict(D=torch.randn(6, device="meta")), r"all tensors must be on one device, got .*D: meta"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("changes,pattern", BAD_INPUTS)
def test_bad_input_names_argument_expected_and_given(changes, pattern, backend):
    with pytest.raises(ValueError, match=pattern):
        _call(backend=backend, **changes)


def test_unknown_backend_lists_the_names():
    with pytest.raises(ValueError, match=r"backend: expected one of .*got 'cuda_kernel'"):
        _call(backend="cuda_kernel")


def test_unavailable_backend_lists_the_available_ones():
    inp = {k: v.to("meta") for k, v in make_inputs().items()}
    with pytest.raises(ValueError, match=r"'cpu' is not available .*available on meta: \['torch', 'reference'\]"):
        selective_scan(*(inp[k] for k in NAMES[:5]), backend="cpu")
