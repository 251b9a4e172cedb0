"""GPU benchmark of the selective scan: the Triton kernel against the memory floor and its peers.

For Vim-Ti at 224 (batch 128) and at 1024 (batch 16) and VMamba-T[s1l8] stage 1 at 512 it times
the forward (no grad) and forward+backward of the Triton backend, of the pure-torch backend and
of ``mamba_ssm``'s CUDA kernel (``selective_scan_fn``) when that package is importable, all in
the same run. The memory floor of a case is the bytes the fused forward must move (u, delta, z,
B, C read, y written) divided by the device-to-device copy bandwidth measured in this run. The
kernel aims at a forward within 2x of that floor, a forward+backward within 3x of the forward, and
the official kernel's speed. Before timing, the Triton backend's output and gradients are checked
against the torch backend's.

    visionssm bench scan-gpu [--out DIR] [--cases vim224 vim1024 vmamba512] [--no-torch]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from visionssm.bench.machine import describe
from visionssm.bench.scan import make_inputs as scan_inputs


@dataclass(frozen=True)
class Case:
    what: str
    batch: int
    dim: int
    length: int
    state: int
    groups: int | None  # None: B, C (batch, state, length); else (batch, groups, state, length)
    gate: bool  # z given (Vim's mixer gates inside the scan; VMamba's later models have no z)

    @property
    def size(self) -> str:
        g = f", {self.groups} groups" if self.groups else ""
        return f"{self.batch}x{self.dim}x{self.length}x{self.state}{g}"


CASES = {
    # d_inner = 2 * 192, 14 * 14 patches + class token
    "vim224": Case("Vim-Ti at 224", 128, 384, 197, 16, None, True),
    # 64 * 64 patches + class token
    "vim1024": Case("Vim-Ti at 1024", 16, 384, 4097, 16, None, True),
    # stage 1 of VMamba-T[s1l8] at 512: 128 * 128 tokens, 4 scan directions x d_inner 96, d_state 1
    "vmamba512": Case("VMamba-T[s1l8] stage 1 at 512", 8, 4 * 96, 128 * 128, 1, 4, False),
}
IMPLS = ("triton", "torch", "mamba_ssm")


def make_inputs(case: Case, device, requires_grad=False, seed=0):
    """The benchmark's scan inputs (:func:`visionssm.bench.scan.make_inputs`) at the sizes of ``case``."""
    return scan_inputs(case.batch, case.dim, case.length, case.state, case.groups, case.gate, device,
                       requires_grad, seed)


def scan_fn(impl: str):
    """A callable with selective_scan_fn's arguments for ``impl``."""
    if impl == "mamba_ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn
    from visionssm.ops import selective_scan

    return lambda *args, **kw: selective_scan(*args, **kw, backend=impl)


def call(fn, inp):
    return fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"], z=inp["z"],
              delta_bias=inp["delta_bias"], delta_softplus=True)


def fused_bytes(case: Case, itemsize: int = 4) -> int:
    """What the fused forward must move: u, delta, z, B, C and the small A, D, bias in, y out."""
    bdl = case.batch * case.dim * case.length
    bc = case.batch * (case.groups or 1) * case.state * case.length
    small = case.dim * case.state + 2 * case.dim
    return itemsize * ((3 + case.gate) * bdl + 2 * bc + small)


def time_ms(fn, budget_ms: float = 1000.0, max_reps: int = 50, warmup: int = 2) -> float:
    """Median of CUDA-event timings; as many repetitions as fit the budget (3 to max_reps)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    reps = max(3, min(max_reps, int(budget_ms / max(start.elapsed_time(end), 1e-3))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written, per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), budget_ms=500, max_reps=30)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def fwd_step(fn, inp):
    def run():
        with torch.no_grad():
            call(fn, inp)
    return run


def fb_step(fn, inp):
    leaves = [v for v in inp.values() if v is not None]
    y = call(fn, inp)
    gy = torch.randn_like(y)
    del y

    def run():
        torch.autograd.grad(call(fn, inp), leaves, gy)
    return run


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def check_against(fn, ref_fn, case, device) -> float:
    """Largest relative error of y and of every gradient of ``fn`` against ``ref_fn``."""
    inp = make_inputs(case, device, requires_grad=True)
    leaves = [v for v in inp.values() if v is not None]
    outs = []
    for f in (fn, ref_fn):
        y = call(f, inp)
        gy = torch.linspace(-1, 1, y.numel(), device=device).view_as(y)
        outs.append([y.detach(), *torch.autograd.grad(y, leaves, gy)])
    return max(max_rel_err(a, b) for a, b in zip(*outs))


def available_impls(device) -> tuple[list[str], dict[str, str]]:
    from visionssm.ops.selective_scan import backend_unavailable_reason

    impls, skipped = [], {}
    for impl in IMPLS:
        if impl == "mamba_ssm":
            try:
                scan_fn(impl)
            except Exception as e:  # ImportError, or a CUDA extension built for another torch
                skipped[impl] = f"mamba_ssm not importable ({type(e).__name__}: {e})"
                continue
        else:
            reason = backend_unavailable_reason(impl, device)
            if reason is not None:
                skipped[impl] = reason
                continue
        impls.append(impl)
    return impls, skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="visionssm bench scan-gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES),
                   help="which sizes to run (default: all)")
    p.add_argument("--out", default="bench-out/scan-gpu", help="folder for results.md / results.json")
    p.add_argument("--no-torch", action="store_true", help="skip the (slow) pure-torch backend")
    p.add_argument("--budget-ms", type=float, default=1000.0, help="time budget per measurement")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        print("visionssm bench scan-gpu: no CUDA device is available (torch.cuda.is_available() is False); "
              "this benchmark times GPU kernels and needs one. `visionssm bench scan` benchmarks the CPU backends.",
              file=sys.stderr)
        return 1
    device = torch.device("cuda")
    machine = describe("cuda")
    print(f"machine: {machine}")
    impls, skipped = available_impls(device)
    if args.no_torch and "torch" in impls:
        impls.remove("torch")
        skipped["torch"] = "--no-torch"
    for impl, why in skipped.items():
        print(f"{impl}: left out ({why})")
    if not impls:
        print("visionssm bench scan-gpu: nothing to time", file=sys.stderr)
        return 1
    bw = copy_bandwidth_gbs(device)
    print(f"device-to-device copy bandwidth: {bw:.0f} GB/s")

    rows = []
    for key in args.cases:
        case = CASES[key]
        nbytes = fused_bytes(case)
        floor_ms = nbytes / (bw * 1e9) * 1e3
        print(f"\n{case.what}: {case.size}, fused forward moves {nbytes / 1e6:.1f} MB, "
              f"memory floor {floor_ms:.3f} ms")
        if "triton" in impls:
            ref = "mamba_ssm" if "mamba_ssm" in impls else "torch" if "torch" in impls else None
            if ref is not None:
                err = check_against(scan_fn("triton"), scan_fn(ref), case, device)
                print(f"  triton vs {ref}: max relative error of y and gradients {err:.2e}")
        times = {}
        for impl in impls:
            fn = scan_fn(impl)
            inp = make_inputs(case, device)
            fwd = time_ms(fwd_step(fn, inp), args.budget_ms)
            inp = make_inputs(case, device, requires_grad=True)
            fb = time_ms(fb_step(fn, inp), args.budget_ms)
            del inp
            torch.cuda.empty_cache()
            times[impl] = (fwd, fb)
        base = times.get("triton")
        for impl, (fwd, fb) in times.items():
            row = dict(case=case.what, size=case.size, impl=impl, fwd_ms=fwd, fwd_over_floor=fwd / floor_ms,
                       fb_ms=fb, fb_over_fwd=fb / fwd, floor_ms=floor_ms,
                       triton_speedup_fwd=fwd / base[0] if base else None,
                       triton_speedup_fb=fb / base[1] if base else None)
            rows.append(row)
            print(f"  {impl:<10} fwd {fwd:9.3f} ms ({row['fwd_over_floor']:6.2f}x floor)   "
                  f"fwd+bwd {fb:9.3f} ms ({row['fb_over_fwd']:5.2f}x fwd)"
                  + (f"   triton is {row['triton_speedup_fwd']:.2f}x / {row['triton_speedup_fb']:.2f}x faster"
                     if base and impl != "triton" else ""), flush=True)
    write_results(rows, machine, bw, skipped, Path(args.out))
    return 0


def write_results(rows, machine, bw, skipped, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Selective scan on the GPU",
        "",
        f"Machine: {machine}. Device-to-device copy bandwidth: {bw:.0f} GB/s. float32 inputs, "
        "delta_softplus with delta_bias and D; z where the model gates inside the scan.",
        "Memory floor: the bytes the fused forward must move (u, delta, z, B, C in, y out) / copy bandwidth. "
        "'triton faster' is this row's time / the Triton kernel's (forward, forward+backward).",
        "",
        "| case | size (BxDxLxN) | impl | forward ms | x floor | fwd+bwd ms | x forward | triton faster |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        faster = ("-" if r["impl"] == "triton" or r["triton_speedup_fwd"] is None
                  else f"{r['triton_speedup_fwd']:.2f}x / {r['triton_speedup_fb']:.2f}x")
        lines.append(f"| {r['case']} | {r['size']} | {r['impl']} | {r['fwd_ms']:.3f} | "
                     f"{r['fwd_over_floor']:.2f} | {r['fb_ms']:.3f} | {r['fb_over_fwd']:.2f} | {faster} |")
    for impl, why in skipped.items():
        lines.append(f"\n{impl} left out: {why}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(dict(machine=machine, copy_gbs=bw, rows=rows), indent=1))
    print(f"\nwrote {out / 'results.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
