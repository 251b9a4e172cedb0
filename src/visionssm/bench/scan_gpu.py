"""GPU benchmark of the selective scan: each Triton kernel pair against the memory floor and its peers.

For Vim-Ti at 224 (batch 128) and at 1024 (batch 16) and VMamba-T[s1l8] stage 1 at 512, with float32
and with bfloat16 inputs, it times the forward (no grad) and forward+backward of every Triton kernel
pair (``triton-<kernel>``, one per name in ``scan_triton.KERNELS``), of the pure-torch backend and of
``mamba_ssm``'s CUDA kernel (``selective_scan_fn``) when that package is importable, all in the same
run. Each one's ``max_rel_err`` is the largest relative error (max abs difference / max abs of the
reference) of y and of every input gradient against a float64 reference: the torch backend on the
same input values upcast to float64 (for bfloat16, the bfloat16 values upcast).

With each figure go the floors measured in the same run: the memory floor, the bytes the fused
forward must move at that dtype (u, delta, z, B, C read, y written) divided by the device-to-device
copy bandwidth, and the state updates per second (batch * dim * length * state / forward time). A
measurement that fails (out of memory, an error) is recorded and the run goes on.

It writes scan.csv (one row per case, dtype and impl, written as they come), results.md and
results.json into --out. ``--dry-run`` runs the same on the CPU at tiny sizes, one call per timing
(perf_counter); the Triton kernels run there only under the interpreter (TRITON_INTERPRET=1 set
before Python starts), and are listed as left out otherwise.

    visionssm bench scan-gpu [--out DIR] [--cases vim224 vim1024 vmamba512] [--dtypes float32 bfloat16]
                             [--budget-ms 300] [--no-torch] [--dry-run]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from visionssm.bench.machine import cpu_model, describe
from visionssm.bench.report import CsvLog, fmt
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

    @property
    def name(self) -> str:
        """The case as scan.csv writes it: BxDxLxN, with gG when B and C are grouped (8x384x16384x1g4)."""
        return f"{self.batch}x{self.dim}x{self.length}x{self.state}" + (f"g{self.groups}" if self.groups else "")

    @property
    def updates(self) -> int:
        """State updates of one scan: batch * dim * length * state."""
        return self.batch * self.dim * self.length * self.state


CASES = {
    # d_inner = 2 * 192, 14 * 14 patches + class token
    "vim224": Case("Vim-Ti at 224", 128, 384, 197, 16, None, True),
    # 64 * 64 patches + class token
    "vim1024": Case("Vim-Ti at 1024", 16, 384, 4097, 16, None, True),
    # stage 1 of VMamba-T[s1l8] at 512: 128 * 128 tokens, 4 scan directions x d_inner 96, d_state 1
    "vmamba512": Case("VMamba-T[s1l8] stage 1 at 512", 8, 4 * 96, 128 * 128, 1, 4, False),
}
# the dry run's: one gated case with several states and a partial chunk, one grouped with one state,
# small enough for the Triton interpreter (about a second per forward+backward)
DRY_CASES = {
    "tiny": Case("tiny Vim-like (dry run)", 2, 4, 19, 4, None, True),
    "tiny-g4": Case("tiny VMamba-like, 4 groups (dry run)", 1, 8, 40, 1, 4, False),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CSV_COLUMNS = ("device", "case", "dtype", "impl", "forward_ms", "fwd_bwd_ms", "max_rel_err")
ACTIVATIONS = ("u", "delta", "B", "C", "z")  # in the benchmark's dtype; A, D, delta_bias stay float32 (as under AMP)


def make_inputs(case: Case, device, requires_grad=False, seed=0, dtype=torch.float32):
    """The benchmark's scan inputs (:func:`visionssm.bench.scan.make_inputs`) at the sizes of ``case``,
    the activations in ``dtype``."""
    inp = scan_inputs(case.batch, case.dim, case.length, case.state, case.groups, case.gate, device, False, seed)
    return {k: None if v is None else v.to(dtype if k in ACTIVATIONS else v.dtype).requires_grad_(requires_grad)
            for k, v in inp.items()}


def impl_names() -> list[str]:
    """Every impl this benchmark knows: one per Triton kernel pair, the torch backend, mamba_ssm."""
    from visionssm.ops import scan_triton

    return [f"triton-{k}" for k in scan_triton.KERNELS] + ["torch", "mamba_ssm"]


def kernel_of(impl: str) -> str | None:
    """The Triton kernel pair of ``impl`` ('triton-loop' -> 'loop'); None for the others and for plain
    'triton' (the pair set now)."""
    return impl.removeprefix("triton-") if impl.startswith("triton-") else None


@contextlib.contextmanager
def triton_kernel(name: str | None):
    """Inside, the Triton backend launches the kernel pair ``name`` (None: the one set); restored after.
    Wrap the backward too: it launches the pair set when it runs."""
    from visionssm.ops import scan_triton

    saved = scan_triton.KERNEL
    if name is not None:
        scan_triton.KERNEL = name
    try:
        yield
    finally:
        scan_triton.KERNEL = saved


def scan_fn(impl: str):
    """A callable with selective_scan_fn's arguments for ``impl`` (a backend name, 'triton-<kernel>'
    or 'mamba_ssm'); a Triton pair other than the one set needs :func:`triton_kernel` around its use."""
    if impl == "mamba_ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn
    from visionssm.ops import selective_scan

    backend = "triton" if impl.startswith("triton") else impl
    return lambda *args, **kw: selective_scan(*args, **kw, backend=backend)


def call(fn, inp):
    return fn(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D=inp["D"], z=inp["z"],
              delta_bias=inp["delta_bias"], delta_softplus=True)


def fused_bytes(case: Case, itemsize: int = 4) -> int:
    """What the fused forward must move: u, delta, z, B, C in and y out at ``itemsize`` bytes each,
    and the small float32 A, D, bias."""
    bdl = case.batch * case.dim * case.length
    bc = case.batch * (case.groups or 1) * case.state * case.length
    small = case.dim * case.state + 2 * case.dim
    return itemsize * ((3 + case.gate) * bdl + 2 * bc) + 4 * small


def elapsed_ms(fn, device="cuda") -> float:
    """One call of ``fn`` in ms: CUDA events on a GPU (the queued work, start to finish), wall time elsewhere."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def time_ms(fn, budget_ms: float = 1000.0, max_reps: int = 50, warmup: int = 2, min_reps: int = 3,
            device="cuda") -> float:
    """Median time of ``fn`` after ``warmup`` calls: as many calls as fit the budget (min_reps to
    max_reps, the first deciding how many); CUDA events on a GPU, perf_counter on a CPU."""
    for _ in range(warmup):
        fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    times = [elapsed_ms(fn, device)]
    reps = max(min_reps, min(max_reps, int(budget_ms / max(times[0], 1e-3))))
    times += [elapsed_ms(fn, device) for _ in range(reps - 1)]
    return statistics.median(times)


def copy_bandwidth_gbs(device, nbytes: int = 1 << 30, **timing) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written, per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), **({"budget_ms": 500, "max_reps": 30, "device": device} | timing))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def fwd_step(fn, inp):
    def run():
        with torch.no_grad():
            call(fn, inp)
    return run


def fb_step(fn, inp, gy=None):
    """Forward and backward of every input that requires grad; ``gy``: dL/dy (random when None)."""
    leaves = [v for v in inp.values() if v is not None]
    if gy is None:
        y = call(fn, inp)
        gy = torch.randn_like(y)
        del y

    def run():
        torch.autograd.grad(call(fn, inp), leaves, gy)
    return run


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference of ``a`` and the reference ``b`` over max abs of ``b`` (in float64)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def grad_probe(like: torch.Tensor) -> torch.Tensor:
    """A fixed dL/dy shaped and typed as ``like``: the same values for every impl and the reference."""
    return torch.linspace(-1, 1, like.numel(), device=like.device).view_as(like).to(like.dtype)


def outputs(fn, inp, gy=None) -> list[torch.Tensor]:
    """y and the gradient of every input (that requires grad) for dL/dy = ``gy`` (None: grad_probe)."""
    leaves = [v for v in inp.values() if v is not None]
    y = call(fn, inp)
    return [y.detach(), *torch.autograd.grad(y, leaves, grad_probe(y) if gy is None else gy)]


def upcast(inp: dict) -> dict:
    """The same input values in float64, each a leaf that requires grad."""
    return {k: None if v is None else v.detach().double().requires_grad_() for k, v in inp.items()}


def check_against(fn, ref_fn, case, device) -> float:
    """Largest relative error of y and of every gradient of ``fn`` against ``ref_fn`` (float32 inputs)."""
    inp = make_inputs(case, device, requires_grad=True)
    return max(max_rel_err(a, b) for a, b in zip(outputs(fn, inp), outputs(ref_fn, inp)))


def available_impls(device) -> tuple[list[str], dict[str, str]]:
    """The impls that can run on ``device``, and why each other one cannot."""
    from visionssm.ops.selective_scan import backend_unavailable_reason

    impls, skipped = [], {}
    for impl in impl_names():
        if impl == "mamba_ssm":
            if device.type != "cuda":
                skipped[impl] = "mamba_ssm's kernel runs on CUDA tensors only"
                continue
            try:
                scan_fn(impl)
            except Exception as e:  # ImportError, or a CUDA extension built for another torch
                skipped[impl] = f"mamba_ssm not importable ({type(e).__name__}: {e})"
                continue
        else:
            reason = backend_unavailable_reason("triton" if kernel_of(impl) else impl, device)
            if reason is not None:
                skipped[impl] = reason
                continue
        impls.append(impl)
    return impls, skipped


def timing_of(impl: str, budget_ms: float, dry_run: bool, device) -> dict:
    """time_ms's settings for ``impl``: one call each on a dry run; the slow torch backend (160 ms /
    680 ms at vmamba512 on an H200) 3 calls after one warm-up; the kernels as many as fit the budget."""
    if dry_run:
        return dict(budget_ms=0, warmup=0, min_reps=1, max_reps=1, device=device)
    if impl == "torch":
        return dict(budget_ms=0, warmup=1, min_reps=3, max_reps=3, device=device)
    return dict(budget_ms=budget_ms, device=device)


def error_text(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def measure(case: Case, dtype: torch.dtype, impls: list[str], device, timing) -> list[dict]:
    """One row per impl: forward and forward+backward ms and max_rel_err against the float64
    reference (or ``error``); ``timing(impl)``: time_ms's settings."""
    inp = make_inputs(case, device, requires_grad=True, dtype=dtype)
    gy = grad_probe(inp["u"])  # y is shaped and typed as u
    ref, ref_error = None, None
    try:
        ref = outputs(scan_fn("torch"), upcast(inp), gy.double())
    except Exception as e:  # out of memory: the impls are still timed
        ref_error = f"float64 reference failed: {error_text(e)}"
    rows = []
    for impl in impls:
        row = dict(impl=impl, error=ref_error)
        try:
            with triton_kernel(kernel_of(impl)):
                fn = scan_fn(impl)
                if ref is not None:
                    row["max_rel_err"] = max(max_rel_err(a, b) for a, b in zip(outputs(fn, inp, gy), ref))
                row["forward_ms"] = time_ms(fwd_step(fn, inp), **timing(impl))
                row["fwd_bwd_ms"] = time_ms(fb_step(fn, inp, gy), **timing(impl))
        except Exception as e:  # out of memory, a failed compile: recorded, the others still run
            row["error"] = error_text(e)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="visionssm bench scan-gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=sorted(CASES),
                   help="which sizes to run (default: all; not with --dry-run)")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES),
                   help="input dtypes (default: %(default)s)")
    p.add_argument("--out", default="bench-out/scan-gpu", help="folder for scan.csv, results.md, results.json")
    p.add_argument("--no-torch", action="store_true", help="skip the (slow) pure-torch backend")
    p.add_argument("--budget-ms", type=float, default=300.0,
                   help="time budget of one kernel measurement (default: %(default)s; the torch backend: 3 calls)")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU at tiny sizes, one call per timing (Triton only under TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    if args.dry_run and args.cases:
        p.error("--cases: the dry run has its own tiny cases")

    if not args.dry_run and not torch.cuda.is_available():
        print("visionssm bench scan-gpu: no CUDA device is available (torch.cuda.is_available() is False); "
              "this benchmark times GPU kernels and needs one (--dry-run: its logic on the CPU at tiny sizes). "
              "`visionssm bench scan` benchmarks the CPU backends.", file=sys.stderr)
        return 1
    device = torch.device("cpu" if args.dry_run else "cuda")
    cases = DRY_CASES if args.dry_run else {k: CASES[k] for k in (args.cases or CASES)}
    machine = describe(device.type)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else cpu_model()
    print(f"machine: {machine}" + (" -- dry run: tiny sizes, one call per timing" if args.dry_run else ""))
    impls, skipped = available_impls(device)
    if args.no_torch and "torch" in impls:
        impls.remove("torch")
        skipped["torch"] = "--no-torch"
    for impl, why in skipped.items():
        print(f"{impl}: left out ({why})")
    if not impls:
        print("visionssm bench scan-gpu: nothing to time", file=sys.stderr)
        return 1
    from visionssm.ops import scan_triton

    base = f"triton-{scan_triton.KERNELS[0]}"  # the others' times are against the first kernel pair's
    bw = copy_bandwidth_gbs(device, **(dict(nbytes=1 << 24, budget_ms=50) if args.dry_run else {}))
    print(f"device-to-device copy bandwidth: {bw:.0f} GB/s")

    out = Path(args.out)
    log = CsvLog(out / "scan.csv", CSV_COLUMNS)
    rows = []
    for case in cases.values():
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            floor_ms = fused_bytes(case, dtype.itemsize) / (bw * 1e9) * 1e3
            print(f"\n{case.what}: {case.name} {dtype_name}, the fused forward moves "
                  f"{fmt(fused_bytes(case, dtype.itemsize) / 1e6)} MB: memory floor {fmt(floor_ms)} ms", flush=True)
            got = measure(case, dtype, impls, device,
                          lambda impl: timing_of(impl, args.budget_ms, args.dry_run, device))
            by_impl = {r["impl"]: r for r in got}
            for r in got:
                r.update(device=device_name, case=case.name, what=case.what, dtype=dtype_name, floor_ms=floor_ms,
                         **floors(r, case, floor_ms, by_impl.get(base)))
                rows.append(r)
                log.add(r)
                print("  " + describe_row(r, base), flush=True)
            write_results(rows, machine, bw, skipped, base, args.dry_run, out)
    print(f"\nwrote {out / 'scan.csv'}, {out / 'results.md'} and {out / 'results.json'}")
    return 0


def floors(r: dict, case: Case, floor_ms: float, base: dict | None) -> dict:
    """A row's figures against the floors of this run, and its times over the base kernel pair's."""
    fwd, fb = r.get("forward_ms"), r.get("fwd_bwd_ms")
    f = dict(fwd_over_floor=fwd / floor_ms if fwd else None, updates_per_s=case.updates / (fwd * 1e-3) if fwd else None,
             fb_over_fwd=fb / fwd if fwd and fb else None)
    if base and base.get("forward_ms") and fwd and base is not r:
        f.update(over_base_fwd=fwd / base["forward_ms"],
                 over_base_fb=fb / base["fwd_bwd_ms"] if fb and base.get("fwd_bwd_ms") else None)
    return f


def giga(v):
    return None if v is None else v / 1e9


def describe_row(r: dict, base: str) -> str:
    text = f"{r['impl']:<12}"
    if r.get("forward_ms") is not None:
        text += (f" fwd {fmt(r['forward_ms']):>6} ms ({fmt(r['fwd_over_floor'])}x floor, "
                 f"{fmt(giga(r['updates_per_s']))} G updates/s)")
    if r.get("fwd_bwd_ms") is not None:
        text += f"   fwd+bwd {fmt(r['fwd_bwd_ms']):>6} ms ({fmt(r['fb_over_fwd'])}x fwd)"
    if r.get("max_rel_err") is not None:
        text += f"   max rel err {r['max_rel_err']:.1e}"
    if r.get("over_base_fwd") is not None:
        text += f"   time / {base}'s: {fmt(r['over_base_fwd'])} fwd, {fmt(r.get('over_base_fb'))} fwd+bwd"
    if r.get("error"):
        text += f"   FAILED: {r['error']}" if r.get("forward_ms") is None else f"   ({r['error']})"
    return text


def write_results(rows, machine, bw, skipped, base, dry_run, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Selective scan on the GPU" + (" (dry run on the CPU: tiny sizes, one call per timing)" if dry_run else ""),
        "",
        f"Machine: {machine}. Device-to-device copy bandwidth: {bw:.0f} GB/s. delta_softplus with delta_bias "
        "and D; z where the model gates inside the scan; the dtype is that of u, delta, z, B and C (A, D and "
        "delta_bias stay float32).",
        "Memory floor: the bytes the fused forward must move at that dtype (u, delta, z, B, C in, y out) / copy "
        "bandwidth. G updates/s: batch * dim * length * state / forward time. max rel err: y and every input "
        "gradient against the torch backend on the same values in float64. "
        f"'/ {base}': this row's time over {base}'s (forward / forward+backward).",
        "",
        "| case | dtype | impl | forward ms | x floor | G updates/s | fwd+bwd ms | x forward | max rel err | "
        f"/ {base} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base_ratio = f"{fmt(r['over_base_fwd'])} / {fmt(r.get('over_base_fb'))}" if r.get("over_base_fwd") else "-"
        err = "-" if r.get("max_rel_err") is None else f"{r['max_rel_err']:.1e}"
        lines.append(f"| {r['case']} | {r['dtype']} | {r['impl']} | {fmt(r.get('forward_ms'))} | "
                     f"{fmt(r.get('fwd_over_floor'))} | {fmt(giga(r.get('updates_per_s')))} | "
                     f"{fmt(r.get('fwd_bwd_ms'))} | {fmt(r.get('fb_over_fwd'))} | {err} | {base_ratio} |")
    lines += [f"\n{r['case']} {r['dtype']} {r['impl']}: {r['error']}" for r in rows if r.get("error")]
    lines += [f"\n{impl} left out: {why}" for impl, why in skipped.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(dict(machine=machine, copy_gbs=bw, base=base, dry_run=dry_run,
                                                      skipped=skipped, rows=rows), indent=1))


if __name__ == "__main__":
    sys.exit(main())
