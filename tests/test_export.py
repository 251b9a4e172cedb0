"""Deployment: the selective scan as standard ONNX, model export to onnxruntime and torch.export, the command."""

import math
import subprocess
import sys

import pytest
import torch

import visionssm
from visionssm import selective_scan, selective_scan_reference
from visionssm.export import export_onnx, export_pt2, main, verify

TINY = {
    "vim_tiny_patch16_224": dict(depth=2, embed_dim=32),
    "vmamba_tiny_s1l8": dict(depths=(1, 1), dims=16),
    "vmamba_vanilla_tiny": dict(depths=(1, 1), dims=16),
}


def tiny(name, **kwargs):
    torch.manual_seed(0)
    return visionssm.create_model(name, **TINY[name], **kwargs).eval()


def needs_onnx():
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f"ONNX export tests need {name}: pip install 'visionssm[export]'")


class Scan(torch.nn.Module):
    def __init__(self, dim, state, dt_shift=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        dt = torch.exp(torch.empty(dim).uniform_(math.log(1e-3), math.log(0.1), generator=g))
        self.A = torch.nn.Parameter(-torch.arange(1, state + 1.0).repeat(dim, 1))
        self.D = torch.nn.Parameter(torch.randn(dim, generator=g))
        self.delta_bias = torch.nn.Parameter(dt + torch.log(-torch.expm1(-dt)) + dt_shift)

    def forward(self, u, delta, B, C, z):
        y, last = selective_scan(u, delta, self.A, B, C, self.D, z, self.delta_bias, True, return_last_state=True)
        return y, last


def scan_inputs(batch, dim, length, state, groups=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    bc = (batch, state, length) if groups is None else (batch, groups, state, length)
    return (torch.randn(batch, dim, length, generator=g), 0.5 * torch.randn(batch, dim, length, generator=g),
            torch.randn(*bc, generator=g), torch.randn(*bc, generator=g), torch.randn(batch, dim, length, generator=g))


def run_onnx_scan(mod, args, path, dynamic_length=False):
    import onnx
    import onnxruntime as ort

    from visionssm.ops import scan_onnx

    scan_onnx.register()
    dyn = None
    if dynamic_length:
        L = torch.export.Dim("length", min=2, max=100_000)
        dyn = {"u": {2: L}, "delta": {2: L}, "B": {2: L}, "C": {2: L}, "z": {2: L}}
    with torch.no_grad():
        torch.onnx.export(mod, args, str(path), dynamo=True, dynamic_shapes=dyn, verbose=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ops, lambda *xs: sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs)})


# ---------------------------------------------------------------------------------------------
# the scan's ONNX translation


@pytest.mark.parametrize("groups", [None, 2])
def test_scan_onnx_matches_reference_with_standard_ops(tmp_path, groups):
    needs_onnx()
    mod = Scan(dim=6, state=4).eval()
    args = scan_inputs(2, 6, 37, 4, groups)  # 37: not a multiple of anything, so the last block is padded
    ops, run = run_onnx_scan(mod, args, tmp_path / "scan.onnx")
    assert "Scan" in ops and not any(op.startswith("selective") for op in ops)
    y, last = run(*args)
    y_ref, last_ref = selective_scan_reference(*args[:2], mod.A, *args[2:4], mod.D, args[4], mod.delta_bias, True,
                                               return_last_state=True)
    torch.testing.assert_close(torch.from_numpy(y), y_ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(last), last_ref.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grouped", ["B", "C"])
def test_3d_b_or_c_with_a_one_group_other_exports_to_onnx(tmp_path, grouped):
    needs_onnx()
    mod = Scan(dim=6, state=4).eval()
    args = scan_inputs(2, 6, 129, 4)  # 129 steps: two blocks, the last one padded
    mixed = list(args)  # (u, delta, B, C, z)
    i = 2 if grouped == "B" else 3
    mixed[i] = args[i].unsqueeze(1)
    _, run = run_onnx_scan(mod, tuple(mixed), tmp_path / "scan.onnx")
    y, last = run(*mixed)
    with torch.no_grad():
        y_ref, last_ref = mod(*args)
    torch.testing.assert_close(torch.from_numpy(y), y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(last), last_ref, atol=1e-5, rtol=1e-5)


def test_scan_onnx_long_sequence_is_finite_and_exact_with_a_dynamic_length(tmp_path):
    # dt ~20x the init (bias +3): |A| * sum(dt) over the sequence is ~1e5, far past where a
    # cumsum formulation's exp overflows float32
    needs_onnx()
    mod = Scan(dim=4, state=16, dt_shift=3.0).eval()
    ops, run = run_onnx_scan(mod, scan_inputs(1, 4, 300, 16), tmp_path / "scan.onnx", dynamic_length=True)
    for length in (5000, 129):  # other lengths than the traced one
        args = scan_inputs(1, 4, length, 16, seed=length)
        y = torch.from_numpy(run(*args)[0])
        y_ref = selective_scan_reference(*args[:2], mod.A, *args[2:4], mod.D, args[4], mod.delta_bias, True)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, y_ref.detach(), atol=1e-4, rtol=1e-4)


def test_plain_torch_onnx_export_finds_the_translation_without_setup(tmp_path):
    # a fresh process: importing visionssm must be enough, and must not import onnxscript itself
    needs_onnx()
    code = f"""
import sys, torch, visionssm
assert "onnxscript" not in sys.modules, "onnxscript imported eagerly"
class M(torch.nn.Module):
    def forward(self, u, d, A, B, C):
        return visionssm.selective_scan(u, d, A, B, C, delta_softplus=True)
args = (torch.randn(1, 4, 9), torch.randn(1, 4, 9), -torch.rand(4, 2), torch.randn(1, 2, 9), torch.randn(1, 2, 9))
with torch.no_grad():
    torch.onnx.export(M(), args, {str(tmp_path / 'm.onnx')!r}, dynamo=True, verbose=False)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# models


@pytest.mark.parametrize("name,size", [("vim_tiny_patch16_224", (48, 64)), ("vmamba_tiny_s1l8", (36, 28))])
def test_model_onnx_matches_eager_with_dynamic_batch(tmp_path, name, size):
    needs_onnx()
    model = tiny(name)
    x = torch.randn(2, 3, *size)
    export_onnx(model, x, tmp_path / "m.onnx", dynamic=True)
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "ScatterND" not in ops  # onnxruntime sums duplicate scatter indices with a race
    rows = verify(model, tmp_path / "m.onnx", "onnx", (3, *size), dynamic=True)
    assert [what for what, _, _ in rows][1] == "random, batch 2"
    for what, diff, allowed in rows:
        assert diff <= allowed, (what, diff)
        assert diff < 1e-5


@pytest.mark.parametrize("name", list(TINY))
def test_torch_export_round_trip_matches_eager(tmp_path, name):
    model = tiny(name)
    x = torch.randn(2, 3, 40, 36)
    ep = export_pt2(model, x, tmp_path / "m.pt2", dynamic=True)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    blocks = TINY[name].get("depth") or sum(TINY[name]["depths"])
    assert targets.count(torch.ops.visionssm.selective_scan.default) == blocks  # one opaque node per block
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    for batch in (2, 3):
        xb = torch.randn(batch, 3, 40, 36)
        with torch.no_grad():
            torch.testing.assert_close(loaded(xb), model(xb), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# the command


def test_command_exports_and_verifies(tmp_path, capsys):
    needs_onnx()
    out = tmp_path / "vim.onnx"
    code = main(["--model", "vim_tiny_patch16_224", "--model-kwargs", '{"depth": 1, "embed_dim": 16}',
                 "--input-size", "3", "32", "32", "--out", str(out), "--opset", "18"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert out.is_file() and text.count(" ok") == 3


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet50"], "--model: expected one of"),
    (["--model", "vim_tiny_patch16_224", "--opset", "11"], "--opset: expected an ONNX opset from 18"),
    (["--model", "vim_tiny_patch16_224", "--opset", "99"], "--opset: expected an ONNX opset from 18"),
    (["--model", "vim_tiny_patch16_224", "--input-size", "3", "8", "64"], "expected height >= 16"),
    (["--model", "vim_tiny_patch16_224", "--input-size", "1", "64", "64"], "expected 3 channels"),
    (["--model", "vim_tiny_patch16_224", "--checkpoint", "/nonexistent.pth"], "--checkpoint: expected an existing"),
    (["--model", "vim_tiny_patch16_224", "--model-kwargs", "[1]"], "--model-kwargs: expected KEY=VALUE"),
    (["--model", "vim_tiny_patch16_224", "--model-kwargs", "depth=1", "embed_dim=16", "nonsense=3"],
     "--model-kwargs: vim_tiny_patch16_224 does not take ['nonsense']"),
])
def test_bad_options_are_clear_errors(tmp_path, capsys, argv, message):
    needs_onnx()
    kwargs = [] if "--model-kwargs" in argv else ["--model-kwargs", '{"depth": 1, "embed_dim": 16}']
    try:
        code = main([*argv, "--out", str(tmp_path / "m.onnx"), *kwargs])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnx_packages_say_how_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert main(["--model", "vim_tiny_patch16_224", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and "pip install 'visionssm[export]'" in err
