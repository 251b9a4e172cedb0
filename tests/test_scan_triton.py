"""The Triton selective scan run by Triton's interpreter on CPU tensors, against the reference loop.

``triton.jit`` chooses between compiling and interpreting when it decorates a function, and
``triton.language``'s own helpers (``tl.sum``, ``tl.sigmoid``) are decorated when triton is first
imported. In a pytest session triton has usually been imported before this file runs (listing the
backends imports the Triton one), so setting TRITON_INTERPRET=1 here would come too late: the
interpreter cases run in one child process started with the variable set, and each test below
asserts on its own case's result. Started with TRITON_INTERPRET=1 already set, they run in-process.

Every case runs once per kernel pair (``scan_triton.KERNELS``: "tile", "loop"). The kernels run
with tiny tiles (CHUNK=8 steps, 4 channels per program) so that several chunks, a partial last
chunk, a partial channel block and the atomic dB/dC reduction are all exercised at lengths the
interpreter gets through in well under a second; one case runs the default tiles.

With VISIONSSM_TRITON_TEST_DEVICE=cuda (on a machine with a GPU) the same cases run in-process,
compiled for the GPU, on CUDA copies of the inputs; the reference still runs on the CPU.
"""

import importlib.util
import json
import os
import subprocess
import sys
import traceback

import pytest
import torch

from scan_inputs import make_inputs, one_group, run_scan  # tests/ is on sys.path

pytestmark = pytest.mark.triton

OPTIONS = {
    "all": dict(),
    "no_z": dict(z=False),
    "no_D_no_bias": dict(D=False, delta_bias=False),
    "no_softplus": dict(softplus=False, delta_bias=False),
    "bare": dict(z=False, D=False, delta_bias=False, softplus=False),
}


def _cases():
    """id -> parameters of one interpreter check."""
    cases = {}
    for opt in OPTIONS:
        for groups in (None, 3):
            cases[f"f32-{opt}-g{groups}-L21"] = dict(kind="f32", options=opt, groups=groups, length=21)
    for length in (1, 8):  # one step; exactly one chunk
        for groups in (None, 3):
            cases[f"f32-all-g{groups}-L{length}"] = dict(kind="f32", options="all", groups=groups, length=length)
    for groups in (None, 2):  # last state not used: no gradient flows into it
        cases[f"f32-no_dlast-g{groups}-L19"] = dict(kind="f32", options="all", groups=groups, length=19,
                                                     use_last=False)
    for name in ("B", "C"):  # a 3-D B or C with a 1-group grouped other: the all-3-D scan
        cases[f"f32-all-{name}-one-group-L21"] = dict(kind="f32", options="all", groups=None, length=21,
                                                      one_group=name)
    cases["f32-state16-default-tiles-L70"] = dict(kind="f32", options="all", groups=None, length=70, state=16,
                                                  batch=1, default_tiles=True)
    cases["f64-gradients-g2"] = dict(kind="gradcheck", groups=2)
    cases["bf16-inputs-g2"] = dict(kind="half", groups=2, dtype="bfloat16")
    cases["f16-inputs"] = dict(kind="half", groups=None, dtype="float16")
    cases["bf16-inputs-delta-f32"] = dict(kind="half", groups=None, dtype="bfloat16", delta_float32=True)
    cases["no-grad-forward"] = dict(kind="nograd")
    return cases


def for_each_kernel(cases: dict) -> dict:
    """Every case once per kernel pair of the Triton backend (``scan_triton.KERNELS``)."""
    from visionssm.ops.scan_triton import KERNELS

    return {f"{kernel}-{name}": dict(case, kernel=kernel) for kernel in KERNELS for name, case in cases.items()}


CASES = for_each_kernel(_cases())
DEVICE = os.environ.get("VISIONSSM_TRITON_TEST_DEVICE", "cpu")


def _on_device(inp: dict) -> dict:
    return {k: v.to(DEVICE) for k, v in inp.items()}


def _on_cpu(*tensors):
    return [t.cpu() for t in tensors]


def _err(what, a, b, rtol, atol):
    """[what, max abs error, scale, rtol, atol]: passes when error <= atol + rtol * scale."""
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    scale = b.double().abs().max().item() if b.numel() else 0.0
    return [what, err, scale, rtol, atol]


def compute_case(case: dict) -> dict:
    """Run one case under the interpreter; {'checks': [...]} or {'error': traceback}."""
    from visionssm import selective_scan, selective_scan_reference
    from visionssm.ops import scan_triton

    saved = scan_triton.CHUNK, scan_triton.BLOCK_D, scan_triton.KERNEL
    scan_triton.KERNEL = case["kernel"]
    if not case.get("default_tiles"):
        scan_triton.CHUNK, scan_triton.BLOCK_D = 8, 4
    checks = []
    try:
        kind = case["kind"]
        if kind == "f32":
            inp = make_inputs(length=case["length"], groups=case["groups"], state=case.get("state", 3),
                              dim=case.get("dim", 6), batch=case.get("batch", 2))
            options = OPTIONS[case["options"]]
            use_last = case.get("use_last", True)
            y0, h0, g0 = run_scan("reference", inp, options, use_last=use_last)
            run_inp = one_group(inp, case["one_group"]) if "one_group" in case else inp
            y1, h1, g1 = run_scan("triton", _on_device(run_inp), options, use_last=use_last)
            y1, h1 = _on_cpu(y1, h1)
            if y1.dtype != torch.float32 or y1.shape != y0.shape or h1.shape != h0.shape:
                return {"error": f"dtype/shape: {y1.dtype} {tuple(y1.shape)} {tuple(h1.shape)}"}
            if g1.keys() != g0.keys():
                return {"error": f"gradients for {sorted(g1)}, expected {sorted(g0)}"}
            if any(g1[k].shape != run_inp[k].shape for k in g1):
                return {"error": f"gradient shapes {[tuple(g1[k].shape) for k in g1]}"}
            g1 = {k: v.cpu().reshape(g0[k].shape) for k, v in g1.items()}
            checks += [_err("y", y1, y0, 1e-5, 1e-6), _err("last state", h1, h0, 1e-5, 1e-6)]
            checks += [_err(f"grad {k}", g1[k], g0[k], 1e-4, 1e-5) for k in g0]
        elif kind == "gradcheck":
            # float64 central differences along random directions, one per input (gradcheck's fast
            # mode, without its slow-mode rerun of hundreds of interpreted forwards on a failure)
            inp = _on_device(make_inputs(batch=1, dim=4, length=19, state=3, groups=case["groups"],
                                         dtype=torch.float64))
            names = list(inp)
            g = torch.Generator().manual_seed(1)
            w_y, w_h = _on_device(dict(y=torch.randn(1, 4, 19, generator=g, dtype=torch.float64),
                                       h=torch.randn(1, 4, 3, generator=g, dtype=torch.float64))).values()

            def loss(t):
                y, h = selective_scan(*(t[k] for k in names[:5]), D=t["D"], z=t["z"], delta_bias=t["delta_bias"],
                                      delta_softplus=True, return_last_state=True, backend="triton")
                return (y * w_y).sum() + (h * w_h).sum(), y, h

            leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
            value, y1, h1 = loss(leaves)
            grads = dict(zip(names, torch.autograd.grad(value, list(leaves.values()))))
            eps = 1e-6
            for k in names:
                v = torch.randn(inp[k].shape, generator=g, dtype=torch.float64).to(DEVICE)
                with torch.no_grad():
                    plus = loss({**inp, k: inp[k] + eps * v})[0]
                    minus = loss({**inp, k: inp[k] - eps * v})[0]
                numeric = ((plus - minus) / (2 * eps)).reshape(1)
                checks.append(_err(f"directional derivative {k}", (grads[k] * v).sum().reshape(1), numeric,
                                   1e-6, 1e-8))
            y0, h0 = selective_scan_reference(*(inp[k].cpu() for k in names), True, True)
            y1, h1 = _on_cpu(y1.detach(), h1.detach())
            checks += [_err("y float64", y1, y0, 1e-12, 1e-12), _err("last float64", h1, h0, 1e-12, 1e-12)]
        elif kind == "half":
            checks += _half_checks(case)
        elif kind == "nograd":
            inp = make_inputs(length=30)
            names = ("u", "delta", "A", "B", "C")
            with torch.no_grad():
                dev = _on_device(inp)
                y1 = selective_scan(*(dev[k] for k in names), D=dev["D"], backend="triton").cpu()
            y0 = selective_scan_reference(*(inp[k] for k in names), D=inp["D"])
            checks.append(_err("y", y1, y0, 1e-5, 1e-6))
        else:
            return {"error": f"unknown case kind {kind!r}"}
    except Exception:
        return {"error": traceback.format_exc()}
    finally:
        scan_triton.CHUNK, scan_triton.BLOCK_D, scan_triton.KERNEL = saved
    return {"checks": checks}


def _half_checks(case: dict) -> list:
    from visionssm import selective_scan

    dtype = getattr(torch, case["dtype"])
    inp = make_inputs(length=37, groups=case["groups"])
    low = {k: v if k in ("A", "D", "delta_bias") else v.to(dtype) for k, v in inp.items()}
    if case.get("delta_float32"):  # mixed operands: each read in its own dtype
        low["delta"] = inp["delta"]

    def scan(t):
        t = _on_device(t)
        return _on_cpu(*selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                                       delta_bias=t["delta_bias"], delta_softplus=True, return_last_state=True,
                                       backend="triton"))
    return half_checks(scan, low, dtype)


def half_checks(scan, low: dict, dtype: torch.dtype) -> list:
    """Operands in ``dtype`` (float16 or bfloat16; A, D and delta_bias float32, as under autocast):
    the Triton kernels are handed them as they are (not float32 copies), and y and every gradient
    equal those of the float32 run on the same values to the rounding of their dtype (the
    interpreter truncates where a GPU rounds to nearest: one unit in the last place); the state and
    the float32 inputs' gradients are those of the float32 run. ``scan(tensors) -> (y, last state)``
    on the CPU, differentiable."""
    from visionssm.ops import scan_triton

    seen = []
    kernel_calls = scan_triton._forward, scan_triton._backward

    def spy(fn):
        def call(*args, **kwargs):
            seen.append({t.dtype for t in args[:5]})  # u, delta, A, B, C
            return fn(*args, **kwargs)
        return call

    def run(t):
        leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
        y, h = scan(leaves)
        g = torch.Generator().manual_seed(2)  # the same incoming gradients for both runs
        dy, dh = torch.randn(y.shape, generator=g).to(dtype), torch.randn(h.shape, generator=g)
        return y, h, dict(zip(leaves, torch.autograd.grad((y, h), list(leaves.values()), (dy.to(y.dtype), dh))))

    scan_triton._forward, scan_triton._backward = map(spy, kernel_calls)
    try:
        y, h, grads = run(low)
    finally:
        scan_triton._forward, scan_triton._backward = kernel_calls
    y_want, h_want, g_want = run({k: v.float() for k, v in low.items()})
    if len(seen) != 2 or any(s != {dtype, torch.float32} for s in seen):
        raise AssertionError(f"the kernels were handed {seen} (forward, backward), expected {dtype} operands")
    grad_dtypes = {k: g.dtype for k, g in grads.items()}
    if y.dtype != dtype or h.dtype != torch.float32 or grad_dtypes != {k: low[k].dtype for k in low}:
        raise AssertionError(f"dtypes y {y.dtype}, last {h.dtype}, gradients {grad_dtypes}")
    ulp = torch.finfo(dtype).eps
    checks = [_err("last state", h, h_want, 1e-6, 0.0), _err("y", y, y_want, ulp, 0.0)]
    return checks + [_err(f"grad {k}", g, g_want[k], ulp if g.dtype == dtype else 1e-6, 0.0)
                     for k, g in grads.items()]


def compute_all() -> dict:
    return {name: compute_case(case) for name, case in CASES.items()}


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreter_in_effect() -> bool:
    """True when this process can interpret the kernels (triton was imported under TRITON_INTERPRET=1)."""
    from visionssm.ops import scan_triton

    return scan_triton.unavailable_reason(torch.device("cpu")) is None


def interpreted(script: str, compute_all) -> dict:
    """compute_all()'s results: in this process on the GPU or where the interpreter is in effect,
    else from ``script`` run as a child process under TRITON_INTERPRET=1 (its last stdout line)."""
    if not _triton_importable():
        pytest.skip("triton is not importable")
    if DEVICE != "cpu":
        if not torch.cuda.is_available():
            pytest.skip(f"VISIONSSM_TRITON_TEST_DEVICE={DEVICE} but no CUDA device is available")
        return compute_all()
    if _interpreter_in_effect():
        return compute_all()
    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        pytest.fail(f"interpreter child process failed (exit {res.returncode}):\n{res.stdout[-3000:]}\n"
                    f"{res.stderr[-5000:]}")
    return json.loads(lines[-1])


def assert_checks(result: dict):
    """A case's result passes: no error, every check's max abs error within atol + rtol * scale."""
    assert "error" not in result, result.get("error")
    failed = [f"{what}: max abs error {err:.3g} (scale {scale:.3g}, allowed {atol + rtol * scale:.3g})"
              for what, err, scale, rtol, atol in result["checks"] if not err <= atol + rtol * scale]
    assert not failed, "; ".join(failed)


@pytest.fixture(scope="module")
def interpreter_results():
    return interpreted(__file__, compute_all)


@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_kernel_matches_reference(interpreter_results, case):
    assert_checks(interpreter_results[case])


# ---------------------------------------------------------------------------------------------
# in-process: availability, the module without triton, the benchmark without CUDA


@pytest.mark.skipif(not _triton_importable(), reason="triton is not importable")
def test_unavailable_reason(monkeypatch):
    from visionssm.ops import scan_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = scan_triton.unavailable_reason(torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET" in reason
    assert scan_triton.unavailable_reason(torch.device("cuda")) is None
    assert "cuda" in scan_triton.unavailable_reason(torch.device("meta")).lower()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reason = scan_triton.unavailable_reason(torch.device("cpu"))
    if scan_triton._triton_helpers_interpreted():  # this session started with TRITON_INTERPRET=1
        assert reason is None
    else:  # set too late for triton's own helpers: said so, rather than failing inside a kernel
        assert reason is not None and "before" in reason


def test_module_imports_and_explains_without_triton(monkeypatch):
    import visionssm.ops.scan_triton as installed

    for name in ("triton", "triton.language"):
        monkeypatch.setitem(sys.modules, name, None)  # import of triton raises ImportError
    spec = importlib.util.spec_from_file_location("_scan_triton_without_triton", installed.__file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for device in ("cpu", "cuda"):
        reason = mod.unavailable_reason(torch.device(device))
        assert reason is not None and "triton" in reason
    assert mod.checkpoint_shape(2, 6, 130, 4) == (2, 3, 6, 4)


def test_default_tiles(monkeypatch):
    """"tile": the sweep's shape of tile (scan_triton.TILE elements of (channels, states, steps), 2
    warps) for every state size; "loop": chunks of the length rounded up to a power of two (32 to
    LOOP_CHUNK steps), TILE elements of (channels, steps), a warp per 256; checkpoints spaced by the
    chunk the kernels walk."""
    from visionssm.ops import scan_triton as st

    cpu, meta = torch.device("cpu"), torch.device("meta")
    monkeypatch.setattr(st, "KERNEL", "tile")
    for state in (1, 2, 3, 4, 8, 16, 32, 64):
        chunk, block_d, block_n, warps = st._tiles(256, 1, 1024, state, 1000, cpu)
        assert 32 <= chunk <= 256 and block_n == st._next_pow2(state)
        assert block_d * block_n * chunk == max(st.TILE, block_n * chunk)  # a full tile, or one channel
        assert warps == max(1, block_d * block_n * chunk // 512)
        assert st.checkpoint_shape(2, 6, 3 * chunk + 1, state) == (2, 4, 6, state)
    monkeypatch.setattr(st, "KERNEL", "loop")
    for length, want in ((1, 32), (197, 256), (512, 512), (4097, st.LOOP_CHUNK)):
        chunk, block_d, block_n, warps = st._tiles(256, 1, 1024, 16, length, cpu)
        assert chunk == want and block_n == 16 and block_d * chunk == st.TILE and warps == min(8, st.TILE // 256)
        assert st.checkpoint_shape(2, 6, length, 16) == (2, -(-length // chunk), 6, 16)
    monkeypatch.setattr(st, "KERNEL", "auto")  # the faster pair of the H200 measurement for each state size
    assert [st._kernel(n) for n in (1, 2, 16)] == ["loop", "tile", "tile"]
    assert st._chunk(1, 4097) == st.LOOP_CHUNK and st._chunk(16, 4097) == 32
    monkeypatch.setattr(st, "KERNEL", "tiles")
    with pytest.raises(ValueError, match=r"KERNEL: expected 'auto' or one of \('tile', 'loop'\), got 'tiles'"):
        st._kernel(1)
    for kernel in st.KERNELS:
        monkeypatch.setattr(st, "KERNEL", kernel)
        assert st._tiles(1, 1, 1024, 1, 256, meta)[1] == st.TILE // 256  # not a CUDA device: no SM count
        assert st._tiles(256, 1, 2, 1, 300, cpu)[1] == 2  # never more channels than a group has


def test_gpu_benchmark_without_cuda_exits_with_a_message(monkeypatch, capsys, tmp_path):
    from visionssm.bench import scan_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert scan_gpu.main(["--out", str(tmp_path / "out"), "--cases", "vim224"]) == 1
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_gpu_benchmark_sizes():
    from visionssm.bench.scan_gpu import CASES as BENCH
    from visionssm.bench.scan_gpu import fused_bytes

    assert BENCH["vim224"].size == "128x384x197x16" and BENCH["vim1024"].size == "16x384x4097x16"
    # u, delta, z, y of 16x384x4097 float32 plus B and C of 16x16x4097
    assert fused_bytes(BENCH["vim1024"]) == 4 * (4 * 16 * 384 * 4097 + 2 * 16 * 16 * 4097 + 384 * 16 + 2 * 384)


if __name__ == "__main__":  # the child process of interpreter_results
    print(json.dumps(compute_all()))
