"""Model-level checks and timings of the scan on a CUDA device (run by tools/gpu_check.sh).

Checks (first: they say whether the timings below can be trusted):
  * per Triton kernel pair, Vim-T and VMamba-T[s1l8] with the same weights on scan backends "triton"
    and "torch": logits and every parameter gradient agree (fp32, TF32 off, drop path off);
  * training steps with bf16 autocast on one fixed batch: the loss falls; "auto" picks "triton".
Throughput (images/s) and peak memory (torch.cuda.max_memory_allocated during the phase), one row of
models.csv per measurement; infer = forward under no_grad, train = forward + backward + AdamW step;
bfloat16 = autocast to bf16 (weights float32), float32 with TF32 matmuls (what a user would run):
  a. Vim-T, VMamba-T[s1l8], DeiT-T (sdpa) and ConvNeXt-T at 224, batch 128: bf16 and fp32 inference,
     bf16 (AMP) and fp32 training. Targets: Vim-T bf16 inference >= 3000 img/s; VMamba-T >= 0.5x
     ConvNeXt-T in bf16 inference and >= 0.9x in AMP training.
  b. Vim-T vs DeiT-T with explicit attention at 1248, bf16 inference, at the largest power-of-two batch
     (128 down) at which DeiT-T fits. Targets (the Vim paper's): Vim-T >= 2.8x faster, its peak memory
     <= 13.2% of DeiT-T's.
  c. Vim-T vs DeiT-T (sdpa), bf16 inference at 224 ... 2048, both at the same batch at a size
     (128 * (224 / res)^2): the crossover, the smallest resolution from which Vim-T is faster.

A measurement that fails (out of memory, an error) is a row with an empty images_per_s (the error in
gpu_models.json) and the run goes on; past --deadline seconds it stops measuring. models.csv is
written row by row and gpu_models.json after each step, so a run stopped from outside keeps its
rows. ``--dry-run`` runs the same on the CPU (perf_counter timings, one call each) with tiny variants
of the models at 32-64 px, batch 2, the default scan backend; peak_mib is empty there, and the
Triton checks run only under TRITON_INTERPRET=1.

    python3 tools/gpu_models.py [--out DIR] [--deadline 125] [--dry-run]
"""

import argparse
import contextlib
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import visionssm  # noqa: F401  (registers the models)
from visionssm.bench.isolated import is_oom
from visionssm.bench.machine import cpu_model, describe
from visionssm.bench.model_case import set_attention
from visionssm.bench.models import pixel_batch
from visionssm.bench.report import CsvLog
from visionssm.bench.scan_gpu import error_text, max_rel_err, time_ms, triton_kernel
from visionssm.engine.models import create_model
from visionssm.ops import scan_triton
from visionssm.ops.selective_scan import backend_unavailable_reason, resolve_backend

VIM, VMAMBA, DEIT, CONVNEXT = "vim_tiny_patch16_224", "vmamba_tiny_s1l8", "deit_tiny_patch16_224", "convnext_tiny"
SSMS = (VIM, VMAMBA)
COLUMNS = ("device", "model", "resolution", "batch", "dtype", "mode", "images_per_s", "peak_mib")
PHASES = (("bfloat16", "infer"), ("float32", "infer"), ("bfloat16", "train"), ("float32", "train"))
BF16_INFER = (("bfloat16", "infer"),)


@dataclass(frozen=True)
class Plan:
    """The sizes of a run: the GPU's, or the dry run's."""
    res: int  # a: every model and phase at res, batch
    batch: int
    high_res: int  # b: Vim-T vs DeiT-T explicit, the batch from batch_from down
    batch_from: int
    sweep: tuple[int, ...]  # c: Vim-T vs DeiT-T sdpa, batch * (res / r)^2 at r
    check_batch: int  # d: the backend comparison and the training steps, at res
    train_batch: int
    train_steps: int
    timing: dict  # time_ms's settings
    variants: dict = field(default_factory=dict)  # model -> create kwargs (the dry run's tiny variants)


GPU = Plan(224, 128, 1248, 128, (224, 512, 768, 1024, 1248, 1536, 2048), check_batch=4, train_batch=16,
           train_steps=30, timing=dict(budget_ms=500, max_reps=10, warmup=1, min_reps=3))
DRY = Plan(32, 2, 64, 2, (32, 64), check_batch=2, train_batch=4, train_steps=5,
           timing=dict(budget_ms=0, max_reps=1, warmup=1, min_reps=1),
           # small enough for the Triton checks under the interpreter (seconds each)
           variants={VIM: dict(depth=1, embed_dim=8, d_state=4), VMAMBA: dict(depths=(1,), dims=4),
                     DEIT: dict(depth=1, embed_dim=32, num_heads=2),
                     CONVNEXT: dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))})


def label(model: str, attention: str = "-") -> str:
    return model if attention == "-" else f"{model} ({attention})"


def build(plan: Plan, model: str, res: int, dev, attention: str = "-", **kwargs):
    """``model`` (random init) at res x res where it takes an img_size, attention 'sdpa'/'explicit'/'-'."""
    net = create_model(model, img_size=(res, res), model_kwargs={**plan.variants.get(model, {}), **kwargs})
    return set_attention(net, attention).to(dev)


def autocast(dev, dtype: str):
    return torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()


def allow_tf32(dev, on: bool):
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def free_memory(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def throughput(net, x, dtype: str, mode: str, timing: dict) -> tuple[float, float | None]:
    """Images/s of ``mode`` ('infer': forward under no_grad; 'train': forward + backward + AdamW step)
    on the batch ``x`` in ``dtype``, and the peak allocated MiB of the phase (None off CUDA)."""
    dev = x.device
    net.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    if mode == "infer":
        net.eval()

        def step():
            with torch.no_grad(), autocast(dev, dtype):
                net(x)
    else:
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step():
            with autocast(dev, dtype):
                loss = net(x).float().logsumexp(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    try:
        ms = time_ms(step, device=dev, **timing)
    finally:
        net.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    return x.shape[0] / (ms * 1e-3), peak


class Run:
    """This run's rows and checks, written as they come, and its deadline."""

    def __init__(self, out: Path, plan: Plan, dev, deadline_s: float, dry_run: bool):
        self.out, self.plan, self.dev, self.dry_run = out, plan, dev, dry_run
        self.start = time.monotonic()
        self.end = self.start + deadline_s
        self.device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
        self.csv = CsvLog(out / "models.csv", COLUMNS)
        self.data = dict(machine=describe(dev.type), dry_run=dry_run, plan=repr(plan), checks=[], rows=[],
                         skipped=[], targets=[])

    def save(self):
        (self.out / "gpu_models.json").write_text(json.dumps(self.data, indent=1, default=str))

    def past_deadline(self, what: str) -> bool:
        if time.monotonic() < self.end:
            return False
        self.data["skipped"].append(what)
        print(f"deadline reached: {what} not measured", flush=True)
        return True

    def check(self, name: str, fn, *args):
        """Run one check and record its result (or its error)."""
        try:
            result = fn(*args)
        except Exception as e:  # a failing check is a result too; the rest still runs
            result = dict(error=error_text(e))
        result = dict(check=name, **result)
        self.data["checks"].append(result)
        print(f"[{time.monotonic() - self.start:4.0f} s] check", result, flush=True)
        self.save()
        free_memory(self.dev)

    def measure(self, model: str, res: int, batch: int, phases, attention: str = "-") -> list[dict]:
        """Build ``model`` at ``res`` and measure each (dtype, mode) of ``phases`` on one random batch;
        a row each (images_per_s None and ``error`` where it failed)."""
        rows, net, x, build_error = [], None, None, None
        try:
            net = build(self.plan, model, res, self.dev, attention)
            x = torch.randn(batch, 3, res, res, device=self.dev)
        except Exception as e:
            build_error = error_text(e)
        for dtype, mode in phases:
            row = dict(device=self.device_name, model=label(model, attention), resolution=res, batch=batch,
                       dtype=dtype, mode=mode, images_per_s=None, peak_mib=None, error=build_error)
            if self.past_deadline(f"{row['model']} {res} batch {batch} {dtype} {mode}"):
                break
            if build_error is None:
                try:
                    row["images_per_s"], row["peak_mib"] = throughput(net, x, dtype, mode, self.plan.timing)
                except Exception as e:  # out of memory, an error: recorded, the others still run
                    row["error"] = error_text(e)
                free_memory(self.dev)
            rows.append(row)
            self.csv.add(row)
            self.data["rows"].append(row)
            self.save()
            print(f"[{time.monotonic() - self.start:4.0f} s] {row['model']:<34} {res:>5} px  batch {batch:>3}  "
                  f"{dtype:<8} {mode:<5}  "
                  + (f"{row['images_per_s']:9.1f} img/s" if row["images_per_s"] else f"FAILED: {row['error']}")
                  + (f"  peak {row['peak_mib']:.0f} MiB" if row["peak_mib"] else ""), flush=True)
        del net, x
        free_memory(self.dev)
        return rows


def compare_backends(plan: Plan, model: str, dev, kernel: str):
    """The same weights on scan backends 'triton' (kernel pair ``kernel``) and 'torch': the largest
    relative errors of the logits and of the parameter gradients."""
    torch.manual_seed(0)
    nets = {be: build(plan, model, plan.res, dev, scan_backend=be, drop_path_rate=0.0) for be in ("triton", "torch")}
    nets["torch"].load_state_dict(nets["triton"].state_dict())
    x = torch.randn(plan.check_batch, 3, plan.res, plan.res, device=dev)
    out = {}
    with triton_kernel(kernel):
        for be, net in nets.items():
            logits = net(x)
            logits.square().mean().backward()
            out[be] = (logits.detach(), {k: p.grad for k, p in net.named_parameters() if p.grad is not None})
    (l1, g1), (l0, g0) = out["triton"], out["torch"]
    worst = max(g0, key=lambda k: max_rel_err(g1[k], g0[k]))
    return dict(model=model, kernel=kernel, logits_rel_err=max_rel_err(l1, l0), grads=len(g0),
                same_grad_keys=g1.keys() == g0.keys(), worst_grad=worst,
                worst_grad_rel_err=max_rel_err(g1[worst], g0[worst]))


def train_steps(plan: Plan, model: str, dev):
    """AdamW steps with bf16 autocast on one fixed batch (default scan backend): the loss should fall."""
    torch.manual_seed(0)
    net = build(plan, model, plan.res, dev, num_classes=10, drop_path_rate=0.0)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(plan.train_batch, 3, plan.res, plan.res, device=dev)
    y = torch.randint(0, 10, (plan.train_batch,), device=dev)
    losses = []
    for _ in range(plan.train_steps):
        with autocast(dev, "bfloat16"):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return dict(model=model, steps=len(losses), first_loss=losses[0], last_loss=losses[-1],
                falls=losses[-1] < losses[0], finite=all(v == v for v in losses))


def largest_batch(plan: Plan, model: str, attention: str, res: int, dev) -> int | None:
    """The largest power of two from plan.batch_from down at which a bf16 inference forward of
    ``model`` at ``res`` fits in memory (None: not even 1)."""
    net = build(plan, model, res, dev, attention).eval()
    batch = plan.batch_from
    while batch >= 1:
        try:
            with torch.no_grad(), autocast(dev, "bfloat16"):
                net(torch.randn(batch, 3, res, res, device=dev))
            return batch
        except Exception as e:
            if not is_oom(e):
                raise
        free_memory(dev)  # outside the except block: the failed forward's tensors are released by then
        batch //= 2
    return None


def lookup(rows, model, res, dtype, mode, key="images_per_s"):
    """``key`` of the row of (model, res, dtype, mode); None where there is none."""
    return next((r[key] for r in rows
                 if (r["model"], r["resolution"], r["dtype"], r["mode"]) == (model, res, dtype, mode)), None)


def verdict(ok: bool, dry_run: bool) -> str:
    return "" if dry_run else (" -- met" if ok else " -- MISSED")


def ratio_line(what: str, num, den, target: str, ok, dry_run: bool) -> str:
    if not num or not den:
        return f"{what}: not measured"
    return f"{what}: {num / den:.2f}x ({target}){verdict(ok(num / den), dry_run)}"


def crossover(vim: dict, deit: dict) -> int | None:
    """The smallest resolution from which (at it and every larger one measured for both) Vim-T is faster."""
    both = sorted(r for r in vim if vim[r] and deit.get(r))
    cross = None
    for r in reversed(both):
        if vim[r] <= deit[r]:
            break
        cross = r
    return cross


def target_lines(rows, plan: Plan, high_batch, dry_run: bool) -> list[str]:
    """The figures the issue's targets name, from this run's rows."""
    lines = []
    v = lookup(rows, VIM, plan.res, "bfloat16", "infer")
    lines.append(f"a. Vim-T bf16 inference at {plan.res}, batch {plan.batch}: "
                 + (f"{v:.0f} img/s (target >= 3000){verdict(v >= 3000, dry_run)}" if v else "not measured"))
    for dtype, mode, target in (("bfloat16", "infer", 0.5), ("bfloat16", "train", 0.9)):
        vmamba, convnext = (lookup(rows, m, plan.res, dtype, mode) for m in (VMAMBA, CONVNEXT))
        lines.append(ratio_line(f"a. VMamba-T / ConvNeXt-T {dtype} {mode} img/s", vmamba, convnext,
                                f"target >= {target}x", lambda r, t=target: r >= t, dry_run))
    explicit = label(DEIT, "explicit")
    at = f" at {plan.high_res}, batch {high_batch}" if high_batch else f" at {plan.high_res}"
    lines.append(ratio_line(f"b. Vim-T / DeiT-T (explicit) bf16 inference img/s{at}",
                            lookup(rows, VIM, plan.high_res, *BF16_INFER[0]), lookup(rows, explicit, plan.high_res,
                                                                                     *BF16_INFER[0]),
                            "target >= 2.8x", lambda r: r >= 2.8, dry_run))
    vm, dm = (lookup(rows, m, plan.high_res, *BF16_INFER[0], key="peak_mib") for m in (VIM, explicit))
    lines.append(f"b. Vim-T peak memory / DeiT-T (explicit){at}: "
                 + (f"{100 * vm / dm:.1f}% (target <= 13.2%){verdict(100 * vm / dm <= 13.2, dry_run)}" if vm and dm
                    else "not measured (no peak memory off CUDA)" if dry_run else "not measured"))
    sdpa = label(DEIT, "sdpa")
    vim = {r: lookup(rows, VIM, r, *BF16_INFER[0]) for r in plan.sweep}
    deit = {r: lookup(rows, sdpa, r, *BF16_INFER[0]) for r in plan.sweep}
    both = [r for r in plan.sweep if vim[r] and deit[r]]
    speed = ", ".join(f"{r}: {vim[r] / deit[r]:.2f}x" for r in both)
    cross = crossover(vim, deit)
    lines.append(f"c. Vim-T / DeiT-T (sdpa) bf16 inference img/s by resolution: {speed or 'none measured'}; "
                 + (f"crossover: Vim-T faster from {cross} px" if cross else
                    f"no crossover in {both[0]}-{both[-1]} px" if both else "no crossover measured"))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out/gpu-models", help="folder for models.csv and gpu_models.json")
    p.add_argument("--deadline", type=float, default=125.0,
                   help="seconds after which no new measurement starts (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU: tiny model variants at 32-64 px, batch 2, one call per timing")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_models.py: no CUDA device is available; --dry-run runs the logic on the CPU", file=sys.stderr)
        return 1
    plan, dev = (DRY, torch.device("cpu")) if args.dry_run else (GPU, torch.device("cuda"))
    out = Path(args.out)
    run = Run(out, plan, dev, args.deadline, args.dry_run)
    run.data["auto_backend"] = resolve_backend("auto", dev)
    print(run.data["machine"], "| auto backend on", dev.type, ":", run.data["auto_backend"],
          "| dry run: tiny model variants, CPU" if args.dry_run else "", flush=True)

    # d. checks, first: whether the timings below can be trusted; fp32 comparisons without TF32
    allow_tf32(dev, False)
    triton_missing = backend_unavailable_reason("triton", dev)
    for model in SSMS:
        for kernel in scan_triton.KERNELS:
            if triton_missing:
                run.data["checks"].append(dict(check="triton vs torch", model=model, kernel=kernel,
                                               left_out=triton_missing))
                print(f"check triton-{kernel} vs torch on {model}: left out ({triton_missing})")
            elif not run.past_deadline(f"triton-{kernel} vs torch on {model}"):
                run.check("triton vs torch", compare_backends, plan, model, dev, kernel)
    for model in SSMS:
        if not run.past_deadline(f"bf16 training steps of {model}"):
            run.check("bf16 training steps", train_steps, plan, model, dev)

    allow_tf32(dev, True)  # throughput: as users run
    run.data["throughput_settings"] = "float32 with TF32 matmuls and convolutions; bfloat16 = autocast"
    print("throughput:", run.data["throughput_settings"], flush=True)
    for model, attention in ((VIM, "-"), (VMAMBA, "-"), (DEIT, "sdpa"), (CONVNEXT, "-")):  # a.
        run.measure(model, plan.res, plan.batch, PHASES, attention)
    high_batch = None  # b.
    if not run.past_deadline(f"the batch of DeiT-T (explicit) at {plan.high_res}"):
        try:
            high_batch = largest_batch(plan, DEIT, "explicit", plan.high_res, dev)
        except Exception as e:
            run.data["high_res_batch_error"] = error_text(e)
        free_memory(dev)
        print(f"b. DeiT-T (explicit) at {plan.high_res}: largest batch that fits {high_batch}", flush=True)
        run.data["high_res_batch"] = high_batch
    if high_batch:
        for model, attention in ((VIM, "-"), (DEIT, "explicit")):
            run.measure(model, plan.high_res, high_batch, BF16_INFER, attention)
    for res in plan.sweep:  # c.
        batch = pixel_batch(res, res, plan.batch, plan.res)
        for model, attention in ((VIM, "-"), (DEIT, "sdpa")):
            if lookup(run.data["rows"], label(model, attention), res, *BF16_INFER[0], key="batch") != batch:
                run.measure(model, res, batch, BF16_INFER, attention)  # (not again where a. measured it)

    run.data["targets"] = target_lines(run.data["rows"], plan, high_batch, args.dry_run)
    run.save()
    print("\n" + "\n".join(run.data["targets"]))
    print(f"\nwrote {out / 'models.csv'} and {out / 'gpu_models.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
