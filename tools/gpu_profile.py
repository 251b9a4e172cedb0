"""Where the models' GPU time goes: the profile behind tools/gpu_models.py's throughput figures.

For Vim-T and VMamba-T[s1l8] (and ConvNeXt-T / DeiT-T beside them) it prints and writes, in --out:
  * profile.txt: the top ops and CUDA kernels of one inference step at 224, batch 128 (bf16 autocast
    and fp32 with TF32), by total device time, with their share of the step's device time ("Self CUDA
    time total" under each table), and the step's unprofiled wall time: a step whose wall time
    exceeds its device time is waiting on the host (launches or syncs);
  * latency.csv: the latency of a forward (no grad) at batch 1 (and --batches) at 224 and 1024, eager
    and replayed as a CUDA graph (the graph removes the per-kernel launch cost, so the difference is
    what the host costs), float32 and --dtypes.

    python3 tools/gpu_profile.py [--out DIR] [--models M ...] [--batches 1 128] [--dtypes float32 bfloat16]
                                 [--no-profile] [--dry-run]
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_models import CONVNEXT, DEIT, DRY, GPU, VIM, VMAMBA, allow_tf32, autocast, build, free_memory  # noqa: E402

from visionssm.bench.report import CsvLog  # noqa: E402
from visionssm.bench.scan_gpu import error_text, time_ms  # noqa: E402


def top_kernels(net, x, dtype: str, n: int = 12) -> str:
    """The profile table of one inference step (after warm-up)."""
    dev = x.device

    def step():
        with torch.no_grad(), autocast(dev, dtype):
            net(x)
    for _ in range(3):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "device_time_total" if dev.type == "cuda" else "cpu_time_total"
    wall = time_ms(step, device=dev, budget_ms=300, max_reps=20)
    table = prof.key_averages().table(sort_by=key, row_limit=n, max_name_column_width=60)
    # the table ends with the step's self CPU and self CUDA totals: device time against the wall's
    return f"step wall {wall:.2f} ms (unprofiled)\n{table}"


def latency(net, x, dtype: str, graph: bool) -> float:
    """Median ms of one no-grad forward in ``dtype``, eager or replayed as a CUDA graph."""
    dev = x.device
    net.eval()

    def step():
        with torch.no_grad(), autocast(dev, dtype):
            net(x)
    if not graph:
        return time_ms(step, device=dev, budget_ms=300, max_reps=30)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return time_ms(g.replay, device=dev, budget_ms=300, max_reps=30)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out/gpu-profile")
    p.add_argument("--models", nargs="+", default=[VIM, VMAMBA, CONVNEXT, DEIT], choices=(VIM, VMAMBA, CONVNEXT, DEIT),
                   help="a subset of the four (default: all)")
    p.add_argument("--batches", nargs="+", type=int, default=[1], help="latency batches (default: 1)")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=("float32", "bfloat16"),
                   help="latency dtypes (default: float32)")
    p.add_argument("--no-profile", action="store_true", help="only the latencies")
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (no CUDA graphs)")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_profile.py: no CUDA device is available; --dry-run runs the logic on the CPU", file=sys.stderr)
        return 1
    dev = torch.device("cpu" if args.dry_run else "cuda")
    plan = DRY if args.dry_run else GPU
    res, batch = plan.res, plan.batch
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    report = []
    for model in [m for m in (VIM, VMAMBA, CONVNEXT) if m in args.models and not args.no_profile]:
        for dtype in ("bfloat16", "float32"):
            allow_tf32(dev, True)
            try:
                net = build(plan, model, res, dev).eval()
                x = torch.randn(batch, 3, res, res, device=dev)
                text = (f"== {model}, {res} px, batch {batch}, {dtype} inference on {device}\n"
                        + top_kernels(net, x, dtype))
            except Exception as e:  # one failure does not stop the others
                text = f"== {model} {dtype}: {error_text(e)}"
            print(text, flush=True)
            report.append(text)
            (out / "profile.txt").write_text("\n\n".join(report) + "\n")
            net = x = None
            free_memory(dev)
    log = CsvLog(out / "latency.csv", ("device", "model", "resolution", "batch", "dtype", "mode", "ms", "images_per_s"))
    cases = [(model, r, b, dtype, graph) for model in (VIM, DEIT, VMAMBA) if model in args.models
             for r in (res, 2 * res if args.dry_run else 1024) for b in args.batches if b == 1 or r == res
             for dtype in args.dtypes for graph in ((False, True) if dev.type == "cuda" else (False,))]
    for model, r, b, dtype, graph in cases:
        try:
            net = build(plan, model, r, dev, attention="sdpa" if model == DEIT else "-")
            ms = latency(net, torch.randn(b, 3, r, r, device=dev), dtype, graph)
        except Exception as e:
            print(f"{model} {r} graph={graph}: {error_text(e)}", flush=True)
            ms = None
        row = dict(device=device, model=model, resolution=r, batch=b, dtype=dtype,
                   mode="cuda graph" if graph else "eager", ms=ms, images_per_s=b / ms * 1e3 if ms else None)
        log.add(row)
        print(row, flush=True)
        net = None
        free_memory(dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
