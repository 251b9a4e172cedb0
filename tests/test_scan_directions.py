"""The directional scan (scan directions as index maps, no copies) against today's copy-based path:
``cross_scan`` -> ``selective_scan`` (reference) -> ``cross_merge``, on every backend, values and
gradients of every input; the custom op's integration (export, compile, FLOPs, ONNX); bad input;
and the two layers that use it (SS2D's cross-scan, Vim's bidirectional mixer) against their
copy-based forms."""

import math
import operator

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from visionssm import available_backends
from visionssm.layers import SS2D, Mamba
from visionssm.layers.mamba import _conv_silu_by_convs, bidirectional_conv_silu
from visionssm.layers.scan_orders import (
    cross_merge,
    cross_scan,
    resolve_scan_order,
    scan_index_maps,
    scan_permutation,
)
from visionssm.ops import directional_scan, scan_macs, selective_scan

FAST = [b for b in available_backends("cpu") if b != "reference"]
BACKENDS = ["reference", *FAST]
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

OPTIONS = {
    "all": dict(),
    "no_z": dict(z=False),
    "no_D_no_bias": dict(D=False, delta_bias=False),
    "no_softplus": dict(softplus=False, delta_bias=False),
    "bare": dict(z=False, D=False, delta_bias=False, softplus=False),
}


def make_inputs(order="cross", hw=(3, 5), batch=2, d=3, state=2, groups=1, shared=True, dtype=torch.float64,
                seed=0):
    """Inputs in the map's own layout, distributed as at Mamba's initialisation; groups per direction."""
    K, L = len(resolve_scan_order(order)), hw[0] * hw[1]
    g = torch.Generator().manual_seed(seed)
    dt_init = torch.exp(torch.empty(K * d).uniform_(math.log(1e-3), math.log(0.1), generator=g))
    return dict(
        u=torch.randn(batch, d if shared else K * d, L, generator=g, dtype=dtype),
        delta=(0.5 * torch.randn(batch, K * d, L, generator=g)).to(dtype),
        A=-torch.arange(1, state + 1, dtype=dtype).repeat(K * d, 1) * torch.rand(K * d, 1, generator=g).to(dtype),
        B=torch.randn(batch, K * groups, state, L, generator=g, dtype=dtype),
        C=torch.randn(batch, K * groups, state, L, generator=g, dtype=dtype),
        D=torch.randn(K * d, generator=g, dtype=dtype),
        z=torch.randn(batch, d, L, generator=g, dtype=dtype),
        delta_bias=(dt_init + torch.log(-torch.expm1(-dt_init))).to(dtype),
    )


def copy_based(inp, order, hw, options, return_last_state=True):
    """Today's path, the specification: every walk materialised by ``cross_scan``, one reference
    ``selective_scan`` over the K*d channels, ``cross_merge``, the silu(z) gate."""
    dirs = resolve_scan_order(order)
    H, W = hw
    K = len(dirs)
    u, delta = inp["u"], inp["delta"]
    b, kd, L = delta.shape
    d = kd // K

    def walks(x):  # (b, K*c, L), one part per direction -> each part along its own walk
        return torch.cat([cross_scan(part.reshape(b, -1, H, W), (name,))[:, 0]
                          for part, name in zip(x.chunk(K, dim=1), dirs)], dim=1)

    us = cross_scan(u.view(b, d, H, W), dirs).reshape(b, kd, L) if u.shape[1] == d else walks(u)
    Bs, Cs = (walks(inp[k].reshape(b, -1, L)).view(inp[k].shape) for k in ("B", "C"))
    kw = {k: inp[k] for k in ("D", "delta_bias") if options.get(k, True)}
    y, last = selective_scan(us, walks(delta), inp["A"], Bs, Cs, **kw, delta_softplus=options.get("softplus", True),
                             return_last_state=True, backend="reference")
    y = cross_merge(y.view(b, K, d, L), H, W, dirs).view(b, d, L)
    if options.get("z", True):
        y = y * F.silu(inp["z"])
    return (y, last) if return_last_state else y


def directional(inp, order, hw, options, backend, return_last_state=True):
    kw = {k: inp[k] for k in ("D", "z", "delta_bias") if options.get(k, True)}
    return directional_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], scan_index_maps(*hw, order), **kw,
                            delta_softplus=options.get("softplus", True), return_last_state=return_last_state,
                            backend=backend)


def run(fn, inp, options):
    """Output, last state and the gradients of a loss on both (so the last state's gradient runs too)."""
    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
    y, last = fn(leaves)
    g = torch.Generator().manual_seed(1)
    w_y = torch.randn(y.shape, generator=g, dtype=y.dtype)
    w_h = torch.randn(last.shape, generator=g, dtype=last.dtype)
    ((y * w_y).sum() + (last * w_h).sum()).backward()
    return y, last, {k: v.grad for k, v in leaves.items() if v.grad is not None}


def assert_matches(got, want, rtol, atol):
    (y1, h1, g1), (y0, h0, g0) = got, want
    assert y1.dtype == y0.dtype and y1.shape == y0.shape and h1.shape == h0.shape
    torch.testing.assert_close(y1, y0, rtol=rtol, atol=atol, msg=lambda m: f"y: {m}")
    torch.testing.assert_close(h1, h0, rtol=rtol, atol=atol, msg=lambda m: f"last state: {m}")
    assert g1.keys() == g0.keys()
    for k in g0:
        assert g1[k].shape == g0[k].shape, k
        torch.testing.assert_close(g1[k], g0[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"grad {k}: {m}")


def compare(backend, order, hw, options=OPTIONS["all"], rtol=1e-10, atol=1e-10, **sizes):
    inp = make_inputs(order, hw, **sizes)
    want = run(lambda t: copy_based(t, order, hw, options), inp, options)
    got = run(lambda t: directional(t, order, hw, options, backend), inp, options)
    assert_matches(got, want, rtol, atol)


# every direction (cross + snake hold all eight), Vim's pair, one direction, a repeated one; odd,
# non-square, square and one-row grids; u shared by the directions (SS2D) or one per direction (Vim)
ORDERS = ["cross", "snake", "bidirectional", "unidirectional", ("row", "row", "row_rev", "row_rev"),
          ("col_rev", "snake_row")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", ORDERS, ids=lambda o: o if isinstance(o, str) else "-".join(o))
@pytest.mark.parametrize("hw", [(3, 5), (4, 4), (1, 7)], ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("shared", [True, False], ids=["u_shared", "u_per_direction"])
def test_matches_copy_based_path_float64(backend, order, hw, shared):
    compare(backend, order, hw, shared=shared)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("shared", [True, False], ids=["u_shared", "u_per_direction"])
def test_options_and_groups_match_copy_based_path(backend, options, groups, shared):
    compare(backend, "cross", (5, 3), OPTIONS[options], d=4, groups=groups, shared=shared)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("order", ["cross", "bidirectional"])
def test_float32_across_chunk_boundaries(backend, order):
    """135 steps: several of the kernels' chunks (64 for "cpu", 128 for "torch") and a partial last one."""
    hw = (9, 15) if order == "cross" else (1, 135)
    compare(backend, order, hw, rtol=1e-4, atol=1e-5, dtype=torch.float32, d=5, state=4, shared=order == "cross")


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_float64(backend):
    inp = make_inputs("cross", (2, 3), batch=1, d=2, state=2)
    maps = scan_index_maps(2, 3, "cross")
    leaves = tuple(inp[k].clone().requires_grad_() for k in NAMES)

    def fn(*t):
        return directional_scan(*t[:5], maps, D=t[5], z=t[6], delta_bias=t[7], delta_softplus=True,
                                return_last_state=True, backend=backend)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("backend", FAST)
def test_half_inputs_accumulate_in_float32(backend):
    inp = make_inputs("cross", (3, 5), dtype=torch.float32)
    low = {k: v.to(torch.bfloat16) for k, v in inp.items()}
    y_want, h_want = directional({k: v.float() for k, v in low.items()}, "cross", (3, 5), {}, "reference")
    y, h = directional(low, "cross", (3, 5), {}, backend)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    torch.testing.assert_close(h, h_want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.float(), y_want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_forward_agrees(backend):
    inp = make_inputs("snake", (3, 5))
    with torch.no_grad():
        y1 = directional(inp, "snake", (3, 5), {}, backend, return_last_state=False)
    torch.testing.assert_close(y1, copy_based(inp, "snake", (3, 5), {}, return_last_state=False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_empty_output_and_zero_gradients(backend):
    inp = make_inputs("cross", (3, 5), batch=0)
    y, last, grads = run(lambda t: directional(t, "cross", (3, 5), {}, backend), inp, {})
    assert y.shape == (0, 3, 15) and last.shape == (0, 12, 2)
    for k, g in grads.items():
        assert g.shape == inp[k].shape and not g.any(), k


# ---------------------------------------------------------------------------------------------
# the custom op: one node for export and compile, FLOPs, ONNX


class _Scan(torch.nn.Module):
    def __init__(self, order="cross", hw=(3, 5), d=3, state=2):
        super().__init__()
        K = len(resolve_scan_order(order))
        self.A = torch.nn.Parameter(-torch.rand(K * d, state) - 0.5)
        self.D = torch.nn.Parameter(torch.ones(K * d))
        self.register_buffer("maps", scan_index_maps(*hw, order))

    def forward(self, u, delta, B, C, z):
        return directional_scan(u, delta, self.A, B, C, self.maps, D=self.D, z=z, delta_softplus=True)


def _scan_args(order="cross", shared=True):
    inp = make_inputs(order, (3, 5), dtype=torch.float32, shared=shared)
    return _Scan(order), tuple(inp[k] for k in ("u", "delta", "B", "C", "z"))


def test_torch_export_keeps_one_opaque_node():
    mod, args = _scan_args()
    ep = torch.export.export(mod, args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.visionssm.directional_scan.default) == 1
    assert set(targets) == {torch.ops.visionssm.directional_scan.default, operator.getitem}  # no copies, no loop
    torch.testing.assert_close(ep.module()(*args), mod(*args))


def test_torch_compile_full_graph_with_gradients():
    mod, args = _scan_args()
    compiled = torch.compile(mod, backend="aot_eager", fullgraph=True)
    out = compiled(*args)
    torch.testing.assert_close(out, mod(*args))
    out.sum().backward()
    grad_compiled = mod.A.grad.clone()
    mod.A.grad = None
    mod(*args).sum().backward()
    torch.testing.assert_close(grad_compiled, mod.A.grad)


def test_flop_counter_counts_every_direction():
    b, d, (H, W), n = 2, 3, (3, 5), 2
    inp = make_inputs("cross", (H, W), batch=b, d=d, state=n, dtype=torch.float32)
    with FlopCounterMode(display=False) as fc:
        directional(inp, "cross", (H, W), {}, "cpu" if "cpu" in FAST else "torch")
    assert fc.get_total_flops() == 2 * scan_macs(b, 4 * d, H * W, n)


def test_fake_tensor_flop_count_leaves_the_cached_maps_real():
    """FLOP counting runs the layers on fake tensors: the op counts, its input check does not ask a
    fake tensor for values, and the index maps first built there are cached as real tensors."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    m = SS2D(6, d_state=2, ssm_ratio=1.0, scan_order="snake")
    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as fc:
        m(torch.randn(1, 4, 7, 6))  # a grid no other test uses: its maps are built under the fake mode
    counts = {str(op): n for op, n in fc.get_flop_counts()["Global"].items()}
    assert counts["visionssm.directional_scan"] == 2 * scan_macs(1, 4 * 6, 28, 2)
    maps = scan_index_maps(4, 7, "snake")
    assert not isinstance(maps, FakeTensor) and not isinstance(scan_permutation(4, 7, "snake_col"), FakeTensor)
    assert torch.equal(maps[1], scan_permutation(4, 7, "snake_col"))


@pytest.mark.parametrize("shared", [True, False], ids=["u_shared", "u_per_direction"])
def test_onnx_translation_matches_eager(tmp_path, shared):
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)
    import onnx
    import onnxruntime as ort

    from visionssm.ops import scan_onnx

    scan_onnx.register()
    mod, args = _scan_args("snake", shared)
    path = str(tmp_path / "scan.onnx")
    torch.onnx.export(mod.eval(), args, path, dynamo=True, verbose=False)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "ScatterND" not in ops and not any("visionssm" in op for op in ops)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})[0]
    torch.testing.assert_close(torch.from_numpy(out), mod(*args).detach(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# bad input


def _call(maps=None, **changes):
    inp = make_inputs("cross", (3, 5), dtype=torch.float32)  # batch 2, d 3, K 4, state 2, L 15
    inp.update(changes)
    return directional_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"],
                            scan_index_maps(3, 5, "cross") if maps is None else maps, D=inp["D"], z=inp["z"],
                            delta_bias=inp["delta_bias"])


_PERM = scan_index_maps(3, 5, "cross")
BAD_INPUTS = [
    (dict(maps=[0, 1]), r"index_maps: expected a torch.Tensor, got list"),
    (dict(maps=_PERM.float()), r"index_maps: expected a \(directions, length\) tensor .*got torch.float32"),
    (dict(maps=_PERM[0]), r"index_maps: expected a \(directions, length\) tensor .*shape \(15,\)"),
    (dict(maps=_PERM[:, :14]), r"index_maps: expected shape \(4, 15\) \(delta's length\), got \(4, 14\)"),
    (dict(maps=torch.cat([_PERM, _PERM[:1]])), r"delta: expected shape \(batch, directions \* d, length\) with 5 "),
    (dict(maps=_PERM[:3]), r"u: expected shape \(2, 4, 15\) \(shared by the 3 directions\) or \(2, 12, 15\)"),
    (dict(maps=torch.cat([_PERM[:, :14], _PERM[:, :1]], 1)), r"index_maps: expected each row to be a permutation"),
    (dict(maps=_PERM - 1), r"index_maps: expected positions in \[0, 15\)"),
    (dict(maps=_PERM + 1), r"index_maps: expected positions in \[0, 15\)"),
    (dict(u=torch.randn(2, 4, 15)), r"u: expected shape \(2, 3, 15\) \(shared .*or \(2, 12, 15\) .*got \(2, 4, 15\)"),
    (dict(u=torch.randn(2, 3)), r"u: expected a 3-D tensor"),
    (dict(z=torch.randn(2, 12, 15)), r"z: expected shape \(2, 3, 15\) \(the merged output's\), got \(2, 12, 15\)"),
    (dict(A=-torch.rand(3, 2)), r"A: expected shape \(12, state\) to match delta's dim 12, got \(3, 2\)"),
    (dict(D=torch.randn(3)), r"D: expected shape \(12,\), got \(3,\)"),
    (dict(B=torch.randn(2, 2, 2, 15), C=torch.randn(2, 2, 2, 15)),
     r"B: expected \(batch, directions \* groups, state, length\) with 4 directions, got \(2, 2, 2, 15\)"),
    (dict(B=torch.randn(2, 2, 15), C=torch.randn(2, 2, 15)), r"B: expected \(batch, directions \* groups"),
    (dict(z=torch.randn(2, 3, 15, device="meta")), r"all tensors must be on one device"),
]


@pytest.mark.parametrize("changes,pattern", BAD_INPUTS)
def test_bad_input_names_argument_expected_and_given(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        _call(**changes)


def test_a_maps_tensor_is_checked_once_while_unchanged():
    """The check reads the maps on the CPU (a GPU sync on CUDA), so the layers' cached maps are
    checked on their first call only; a maps tensor changed in place is checked again."""
    import importlib

    ds = importlib.import_module("visionssm.ops.directional_scan")
    maps = scan_index_maps(3, 5, "cross").clone()
    assert not ds._checked_before(maps)
    _call(maps=maps)
    assert ds._checked_before(maps) and not ds._checked_before(maps.clone())
    maps[0, 1] = maps[0, 0]  # a repeated position, in place
    with pytest.raises(ValueError, match="index_maps: expected each row to be a permutation"):
        _call(maps=maps)
    key = id(maps)
    del maps
    assert key not in ds._checked  # forgotten with the tensor


def test_scan_index_maps_are_the_scan_permutations():
    for order in ("cross", "snake", "bidirectional"):
        maps = scan_index_maps(3, 5, order)
        want = torch.stack([scan_permutation(3, 5, name) for name in resolve_scan_order(order)])
        assert maps.dtype == torch.int64 and torch.equal(maps, want)
        assert scan_index_maps(3, 5, order) is maps  # cached: built once per grid


# ---------------------------------------------------------------------------------------------
# the layers: the directional path against their copy-based forms, values and every gradient


def _randomized(module):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "A_log" not in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _grads(module, x, fn):
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), {"x": x.grad, **grads}


def _assert_same(got, want, rtol, atol):
    torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=atol)
    assert got[1].keys() == want[1].keys()
    for k in want[1]:
        torch.testing.assert_close(got[1][k], want[1][k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", ["cross", "snake"])
def test_ss2d_directional_equals_copies(backend, order):
    torch.manual_seed(0)
    m = _randomized(SS2D(6, d_state=2, ssm_ratio=1.0, scan_order=order, backend=backend)).double()
    x = torch.randn(2, 5, 3, m.d_inner, dtype=torch.float64).permute(0, 3, 1, 2)  # channels-last strides
    _assert_same(_grads(m, x, m.forward_core), _grads(m, x, m.forward_core_copies), 1e-10, 1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("divide_out", [True, False])
def test_bidirectional_mixer_equals_flipped_copies(backend, divide_out):
    torch.manual_seed(0)
    m = _randomized(Mamba(6, d_state=3, bidirectional=True, divide_out=divide_out, backend=backend)).double()
    h = torch.randn(2, 11, 6, dtype=torch.float64)

    def copies(t):  # the forward with the backward direction as a flipped copy
        xz = torch.matmul(m.in_proj.weight, t.transpose(1, 2))
        return m.out_proj(m._stacked_scan(*xz.chunk(2, dim=1)).transpose(1, 2))

    _assert_same(_grads(m, h, m), _grads(m, h, copies), 1e-10, 1e-10)
    with torch.no_grad():  # the in-place paths (SiLU of the convs, the gate in the op)
        torch.testing.assert_close(m(h), copies(h), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("length", [1, 3, 4, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_bidirectional_conv_silu_equals_padded_convs(length, bias):
    """Vim's two depthwise convs as shifted multiply-adds: the causal and the anti-causal conv1d of
    the official code (the backward one on the flipped sequence), values and gradients, also when
    the sequence is shorter than the kernel."""
    torch.manual_seed(0)
    fwd, bwd = (torch.nn.Conv1d(5, 5, 4, groups=5, padding=3, bias=bias).double() for _ in range(2))
    x = torch.randn(2, 5, length, dtype=torch.float64, requires_grad=True)

    def padded(t):
        b = bwd(t.flip(-1))[..., :length].flip(-1)
        return F.silu(torch.cat([fwd(t)[..., :length], b], dim=1))

    convs = torch.nn.ModuleList([fwd, bwd])
    # the CPU's shifted multiply-adds and the two depthwise convs taken on other devices
    for conv_silu in (bidirectional_conv_silu, _conv_silu_by_convs):
        _assert_same(_grads(convs, x, lambda t, f=conv_silu: f(t, fwd, bwd)), _grads(convs, x, padded), 1e-12, 1e-12)
        with torch.no_grad():
            torch.testing.assert_close(conv_silu(x, fwd, bwd), padded(x), atol=1e-12, rtol=1e-12)


def test_bidirectional_conv_silu_off_the_cpu_takes_the_convs(monkeypatch):
    import visionssm.layers.mamba as mamba

    calls = []
    monkeypatch.setattr(mamba, "_conv_silu_by_convs", lambda *a: calls.append(a) or "convs")
    conv = torch.nn.Conv1d(3, 3, 4, groups=3, device="meta")
    assert bidirectional_conv_silu(torch.empty(1, 3, 7, device="meta"), conv, conv) == "convs" and len(calls) == 1


def test_ss2d_compiles_with_the_directional_op():
    torch.manual_seed(0)
    m = _randomized(SS2D(6, d_state=2, ssm_ratio=1.0, backend=FAST[0]))
    x = torch.randn(2, 3, 5, 6)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
def test_an_autocast_region_does_not_reach_into_the_scan(backend):
    inp = make_inputs("cross", (3, 5), dtype=torch.float32)
    want = run(lambda t: directional(t, "cross", (3, 5), OPTIONS["all"], backend), inp, OPTIONS["all"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(lambda t: directional(t, "cross", (3, 5), OPTIONS["all"], backend), inp, OPTIONS["all"])
    (y1, h1, g1), (y0, h0, g0) = got, want
    assert torch.equal(y1, y0) and torch.equal(h1, h0) and all(torch.equal(g1[k], g0[k]) for k in g0)


def test_the_gate_in_blocks_or_at_once_is_y_times_silu_z():
    import importlib

    ds = importlib.import_module("visionssm.ops.directional_scan")
    y, z = torch.randn(2, 5, 11, dtype=torch.float64), torch.randn(2, 5, 11, dtype=torch.float64)
    want = y * F.silu(z)
    for block in (None, 11, 3 * 11, y.numel()):  # the CPU default, one row, a few rows, all at once (a GPU's)
        got = y.clone()
        ds._gate_in_place(got, z, block)
        torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-17)  # one ulp: vector vs scalar silu
