"""Benchmark of the selective scan backends at the sizes of Vim and VMamba.

For each size it times the forward (no grad) and forward+backward of every backend, and in the
same run the baselines: the reference loop, bare ``torch.exp`` over batch*dim*length*state
elements (one exp per state update is the bulk of this operator's work on a CPU), and mambapy's
parallel scan when that package is installed. Peak memory is measured in a fresh process per
(size, backend, mode), so cases do not pollute each other: the resident-set growth of one call
(:mod:`visionssm.bench.isolated`).

    visionssm bench scan [--out DIR] [--sizes 1x384x197x16 ...] [--no-memory]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

from visionssm.bench import report
from visionssm.bench.isolated import run_isolated
from visionssm.bench.machine import describe
from visionssm.bench.measure import best_time
from visionssm.ops import available_backends, selective_scan

SIZES = ["1x384x197x16", "8x384x197x16", "1x384x4097x16", "1x192x16384x16"]
WHAT = {"1x384x197x16": "Vim-Ti at 224", "8x384x197x16": "Vim-Ti at 224, batch 8",
        "1x384x4097x16": "Vim-Ti at 1024", "1x192x16384x16": "VMamba-T stage 1 at 512"}
# the reference loop's forward+backward is tens of seconds beyond this length
REFERENCE_FB_MAX_LENGTH = 4097


def parse_size(text: str) -> tuple[int, int, int, int]:
    try:
        b, d, length, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sizes: expected BxDxLxN such as 1x384x197x16, got {text!r}") from None
    if min(b, d, length, n) < 1:
        raise ValueError(f"--sizes: every dimension must be >= 1, got {text!r}")
    return b, d, length, n


def make_inputs(batch, dim, length, state, groups=None, gate=True, device="cpu", requires_grad=False, seed=0):
    """Inputs as at Mamba's initialisation: dt in [1e-3, 0.1] log-uniform (through delta_bias),
    A = -(1..N), D = 1; B and C (batch, state, length), or (batch, groups, state, length) with
    ``groups``; z, the gate, unless ``gate`` is False (None then). Drawn on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    bc = (batch, state, length) if groups is None else (batch, groups, state, length)
    dt = torch.exp(torch.empty(dim, device=device).uniform_(math.log(1e-3), math.log(0.1), generator=g))
    t = dict(u=torch.randn(batch, dim, length, device=device, generator=g),
             delta=0.5 * torch.randn(batch, dim, length, device=device, generator=g),
             A=-torch.arange(1, state + 1, dtype=torch.float32, device=device).repeat(dim, 1),
             B=torch.randn(*bc, device=device, generator=g), C=torch.randn(*bc, device=device, generator=g),
             D=torch.ones(dim, device=device),
             z=torch.randn(batch, dim, length, device=device, generator=g) if gate else None,
             delta_bias=dt + torch.log(-torch.expm1(-dt)))
    return {k: (v.requires_grad_(requires_grad) if v is not None else None) for k, v in t.items()}


def run_scan(backend, inp):
    return selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"], z=inp["z"],
                          delta_bias=inp["delta_bias"], delta_softplus=True, backend=backend)


def run_mambapy(inp):
    """The same operator built on mambapy's Blelloch pscan (materialises (B, L, D, N) tensors)."""
    from mambapy.pscan import pscan

    dt = torch.nn.functional.softplus(inp["delta"] + inp["delta_bias"][:, None]).transpose(1, 2)  # (B, L, D)
    dA = torch.exp(dt.unsqueeze(-1) * inp["A"])  # (B, L, D, N)
    BX = (dt * inp["u"].transpose(1, 2)).unsqueeze(-1) * inp["B"].transpose(1, 2).unsqueeze(2)
    H = pscan(dA, BX)
    y = (H @ inp["C"].transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    return (y + inp["D"][:, None] * inp["u"]) * torch.nn.functional.silu(inp["z"])


def call(impl, inp):
    return run_mambapy(inp) if impl == "mambapy" else run_scan(impl, inp)


def step(impl, size, mode):
    """One forward ('fwd', no grad) or forward+backward ('fb') of impl; returns a callable."""
    inp = make_inputs(*size, requires_grad=mode == "fb")
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                call(impl, inp)
    else:
        w = torch.randn(size[0], size[1], size[2])

        def fn():
            for v in inp.values():
                v.grad = None
            (call(impl, inp) * w).sum().backward()
    return fn


def exp_time(n_elements):
    x = torch.rand(n_elements) * -5
    out = torch.empty_like(x)
    return best_time(lambda: torch.exp(x, out=out))


def memory_case(child, impl, size, mode):
    """Run in a fresh process: the call whose peak memory is measured, after one on a tiny size
    has paid for JIT compilation and lazy initialisation."""
    fn = step(impl, tuple(size), mode)
    step(impl, (1, 4, 3, 2), mode)()
    return fn


def isolated_peak_mb(impl, size, mode) -> float:
    """Peak memory of one fwd / fb call in a fresh process (nan when it failed)."""
    row = run_isolated("visionssm.bench.scan:memory_case", dict(impl=impl, size=list(size), mode=mode),
                       time_limit_s=600)
    return row["peak_mb"] if row["status"] == "ok" else float("nan")


def input_megabytes(b, d, length, n):
    """float32 bytes of u, delta, z (B, D, L) and B, C (B, N, L)."""
    return 4 * (3 * b * d * length + 2 * b * n * length) / 2**20


def main(argv=None):
    p = argparse.ArgumentParser(prog="visionssm bench scan", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=SIZES, help="BxDxLxN (default: %(default)s)")
    p.add_argument("--out", default="bench-out/scan", help="folder for results.csv/results.md")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case peak-memory subprocesses")
    p.add_argument("--no-reference", action="store_true", help="skip the (slow) reference loop")
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes]
    backends = [b for b in available_backends("cpu") if b != "reference"]
    try:
        import mambapy.pscan  # noqa: F401

        peers = ["mambapy"]
    except ImportError:
        peers = []
        print("mambapy is not installed (pip install 'visionssm[bench]'): its column is left out")
    machine = describe()
    print(f"machine: {machine}")
    rows = []
    for size in sizes:
        b, d, length, n = size
        updates = b * d * length * n
        t_exp = exp_time(updates)
        impls = backends + peers + ([] if args.no_reference else ["reference"])
        times = {}
        for impl in impls:
            for mode in ("fwd", "fb"):
                if impl == "reference" and mode == "fb" and length > REFERENCE_FB_MAX_LENGTH:
                    continue
                times[impl, mode] = best_time(step(impl, size, mode), budget_s=1.0 if impl == "reference" else 2.0)
        for impl in impls:
            fwd, fb = times[impl, "fwd"], times.get((impl, "fb"))
            row = dict(size="x".join(map(str, size)), what=WHAT.get("x".join(map(str, size)), ""), impl=impl,
                       fwd_ms=1e3 * fwd, fb_ms=None if fb is None else 1e3 * fb,
                       fb_over_fwd=None if fb is None else fb / fwd,
                       g_updates_per_s=updates / fwd / 1e9, vs_torch_exp=t_exp / fwd,
                       ref_over_fwd=times["reference", "fwd"] / fwd if ("reference", "fwd") in times else None,
                       ref_over_fb=(times["reference", "fb"] / fb
                                    if fb is not None and ("reference", "fb") in times else None),
                       mambapy_over_fwd=times["mambapy", "fwd"] / fwd if ("mambapy", "fwd") in times else None,
                       input_mb=input_megabytes(*size))
            if not args.no_memory and impl in backends + peers:
                row["peak_fwd_mb"] = isolated_peak_mb(impl, size, "fwd")
                row["peak_fb_mb"] = isolated_peak_mb(impl, size, "fb")
                row["peak_fb_over_inputs"] = row["peak_fb_mb"] / row["input_mb"]
            rows.append(row)
            print(format_row(row), flush=True)
    write_results(rows, machine, Path(args.out))
    return 0


COLUMNS = [("size", "B x D x L x N"), ("impl", "impl"), ("fwd_ms", "fwd ms"), ("fb_ms", "fwd+bwd ms"),
           ("fb_over_fwd", "fb/fwd"), ("g_updates_per_s", "G updates/s"), ("vs_torch_exp", "x torch.exp"),
           ("ref_over_fwd", "x ref fwd"), ("ref_over_fb", "x ref fb"), ("mambapy_over_fwd", "x mambapy fwd"),
           ("peak_fwd_mb", "peak fwd MB"), ("peak_fb_mb", "peak fb MB"), ("peak_fb_over_inputs", "fb peak/inputs")]


def format_row(row):
    return report.format_row(row, COLUMNS)


def write_results(rows, machine, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(rows, out / "results.csv")
    lines = [f"Machine: {machine}", "", *report.markdown_table(rows, COLUMNS)]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.csv'} and {out / 'results.md'}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
