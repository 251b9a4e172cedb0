"""Models vs resolution: where do vision SSMs beat attention (and where not)?

For every (model, attention mode, resolution) it measures, in a fresh process per case so cases do
not pollute each other: latency and images/s at a chosen batch, peak memory of the step (CPU: the
growth of the resident set; CUDA: the growth of the peak allocated memory; measured on a call
after the timed ones, so the weights, the input and, with ``--train``, the optimizer state are
resident before it and not included), GMACs per image counted with ``FlopCounterMode`` (the
selective scan by its registered formula, 9BLDN + BDL), and the parameter count. Inference (no
grad) by default; ``--train`` times a training step (forward, backward, AdamW step).

Attention models (timm modules with a ``fused_attn`` switch: ViT, DeiT, ...) are run twice:
``sdpa``, PyTorch's fused ``scaled_dot_product_attention`` (what a user gets today; memory linear
in the tokens), and ``explicit``, softmax(QK^T)V with the (tokens x tokens) matrix materialised, as
the 2024 papers measured it.

A case never stops the run: out-of-memory, the per-case time limit and an unsupported size are
recorded as such, and a series skips the resolutions above the one where it ran out of memory or
time. The run writes results.csv, results.md, throughput.png and memory.png (log-log, one line
per model, failures marked) and machine.txt into --out, and prints the crossover: the smallest
resolution from which each SSM model is faster than, and uses less memory than, each peer.

    visionssm bench [--models M ...] [--resolutions 224 512 1024x768 ...] [--batch-size 1]
                    [--train] [--device cpu|cuda] [--full] [--out bench-out/models]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from visionssm.bench import report
from visionssm.bench.crossover import crossover_lines
from visionssm.bench.isolated import FAILED, run_isolated
from visionssm.bench.machine import available_mb, describe
from visionssm.bench.model_case import model_kind, parse_model
from visionssm.bench.model_plots import plot

# the default run (the README's main job): the Vim paper's comparison (Vim-Ti vs DeiT-Ti in both
# attention modes, up to its 1248 headline) and VMamba-T vs MambaOut-T (the same gated-CNN
# design without the SSM); 20 cases, a few minutes on 2 CPU cores
DEFAULT_MODELS = ["vim_tiny_patch16_224", "vmamba_tiny_s1l8", "deit_tiny_patch16_224", "convnext_tiny", "mambaout_tiny"]
DEFAULT_RESOLUTIONS = ["224", "512", "1024", "1248"]
FULL_MODELS = ["vim_tiny_patch16_224", "vim_small_patch16_224", "vmamba_tiny_s1l8", "vmamba_vanilla_tiny",
               "deit_tiny_patch16_224", "deit_small_patch16_224", "resnet50", "convnext_tiny", "mambaout_tiny",
               "efficientvim_m2"]
FULL_RESOLUTIONS = ["224", "512", "640", "738", "1024", "1248", "1536", "2048"]
ATTENTION_MODES = ("sdpa", "explicit")
COLUMNS = [("series", "model"), ("kind", "kind"), ("resolution", "resolution"), ("status", "status"),
           ("latency_ms", "latency ms"), ("images_per_s", "images/s"), ("peak_mb", "peak MB"),
           ("gmacs", "GMACs/img"), ("step_gmacs", "train GMACs/img"), ("params_m", "params M")]


def parse_resolution(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '512x768' -> (height 512, width 768)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        h = w = 0
    if len(parts) > 2 or min(h, w) < 1:
        raise ValueError(f"--resolutions: expected a size such as 512 or HxW such as 512x768, got {text!r}")
    return h, w


def res_name(h: int, w: int) -> str:
    return str(h) if h == w else f"{h}x{w}"


def series_name(model: str, attention: str) -> str:
    return model if attention == "-" else f"{model} ({attention})"


def run_case(spec: dict, time_limit_s: float) -> dict:
    """One case (model, attention, height, width, batch_size, train, device, budget_s and
    memory_limit_mb) in a fresh process; its row."""
    args = {k: v for k, v in spec.items() if k != "memory_limit_mb"}
    row = run_isolated("visionssm.bench.model_case:measure_case", args, time_limit_s, device=spec["device"],
                       memory_limit_mb=spec.get("memory_limit_mb"))
    row.pop("measured_s", None)  # latency_ms times the step
    return row


def format_row(row: dict) -> str:
    text = report.format_row(row, [c for c in COLUMNS if c[0] != "kind"])
    return text + (f"  ({row['note']})" if row.get("status") != "ok" and row.get("note") else "")


def _table(rows: list[dict]) -> list[str]:
    return report.markdown_table(rows, [(k, t) for k, t in COLUMNS if any(r.get(k) is not None for r in rows)])


def write_results(rows, machine: str, settings: str, cross: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(rows, out / "results.csv", first=[
        "series", "model", "attention", "kind", "resolution", "height", "width", "pixels", "batch_size", "mode",
        "device", "status", "latency_ms", "images_per_s", "peak_mb", "weights_mb", "gmacs", "step_gmacs",
        "params_m", "wall_s", "note"])
    (out / "machine.txt").write_text(machine + "\n")
    lines = [f"Machine: {machine}", "", settings, "",
             "peak MB: memory of one step above what is resident before it: weights, input and, when "
             "training, the optimizer state (CPU: resident-set growth, a fresh process per case; CUDA: growth "
             "of the peak allocated). GMACs: per image, forward, FlopCounterMode (the scan by 9BLDN+BDL); "
             "train GMACs: forward+backward.", ""]
    lines += _table(rows)
    lines += ["", "Crossover (the smallest resolution from which the SSM model is faster / uses less memory "
              "/ both, at it and every larger one measured):", ""]
    lines += [f"- {c}" for c in cross]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _progress(items, total):
    try:
        from tqdm import tqdm

        return tqdm(items, total=total, unit="case", dynamic_ncols=True), tqdm.write
    except ImportError:
        return items, print


def main(argv=None):
    p = argparse.ArgumentParser(prog="visionssm bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--models", nargs="+", metavar="NAME[:key=value...]",
                   help=f"timm model names, optionally with create kwargs such as vim_tiny_patch16_224:depth=12 "
                        f"(default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--resolutions", nargs="+",
                   help=f"sizes N or HxW (default: {' '.join(DEFAULT_RESOLUTIONS)}; "
                        f"--full: {' '.join(FULL_RESOLUTIONS)})")
    p.add_argument("--full", action="store_true",
                   help="the full sweep: all peers, 224..2048 (an hour or more on 2 CPU cores)")
    p.add_argument("--attention", choices=("both", *ATTENTION_MODES), default="both",
                   help="attention modes of attention models (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1, help="images per step (default: %(default)s)")
    p.add_argument("--train", action="store_true", help="time a training step (forward+backward+AdamW)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--time-limit", type=float, help="seconds per case (default: 90; --full: 300)")
    p.add_argument("--budget", type=float, default=2.0,
                   help="seconds of timing repeats per case (default: %(default)s)")
    p.add_argument("--memory-limit", type=float,
                   help="CPU: MB a case may allocate before it counts as out of memory (default: 90%% of available)")
    p.add_argument("--out", default="bench-out/models", help="output folder (default: %(default)s)")
    args = p.parse_args(argv)

    import timm

    import visionssm  # noqa: F401

    models = args.models or (FULL_MODELS if args.full else DEFAULT_MODELS)
    try:
        unknown = [m for m in models if not timm.is_model(parse_model(m)[0])]
    except ValueError as e:
        p.error(str(e))
    if unknown:
        p.error(f"--models: unknown model(s) {unknown}; see `timm.list_models()` and `visionssm models`")
    try:
        sizes = [parse_resolution(r) for r in (args.resolutions or
                                                (FULL_RESOLUTIONS if args.full else DEFAULT_RESOLUTIONS))]
    except ValueError as e:
        p.error(str(e))
    sizes = sorted(dict.fromkeys(sizes), key=lambda hw: (hw[0] * hw[1], hw))
    if args.batch_size < 1:
        p.error(f"--batch-size: expected >= 1, got {args.batch_size}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device: expected cpu or cuda, got {args.device!r}")
    time_limit = args.time_limit or (300.0 if args.full else 90.0)
    memory_limit = args.memory_limit
    if memory_limit is None and device.type == "cpu":
        avail = available_mb()
        memory_limit = 0.9 * avail if avail else None

    kinds = {m: model_kind(m) for m in models}
    plan = []
    for m in models:
        modes = ATTENTION_MODES if args.attention == "both" else (args.attention,)
        for attention in (modes if kinds[m] == "attention" else ("-",)):
            plan += [(m, attention, hw) for hw in sizes]

    machine = describe(args.device)
    mode = "training step (fwd+bwd+AdamW)" if args.train else "inference (no grad)"
    settings = (f"{mode}, batch {args.batch_size}, float32, device {args.device}, per-case time limit "
                f"{time_limit:g} s" + (f", memory limit {memory_limit / 1024:.1f} GB" if memory_limit else ""))
    print(f"machine: {machine}\n{settings}\n{len(plan)} cases, each in a fresh process")
    rows, failed_at = [], {}
    start = time.perf_counter()
    bar, write = _progress(plan, len(plan))
    for m, attention, (h, w) in bar:
        s = series_name(m, attention)
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{s} @ {res_name(h, w)}")
        row = dict(series=s, model=m, attention=attention, kind=kinds[m], resolution=res_name(h, w), height=h,
                   width=w, pixels=h * w, batch_size=args.batch_size, mode="train" if args.train else "inference",
                   device=args.device)
        if s in failed_at:
            status, at = failed_at[s]
            row.update(status=status, note=f"not run: {status} at {at}")
        else:
            spec = dict(model=m, attention=attention, height=h, width=w, batch_size=args.batch_size,
                        train=args.train, device=args.device, budget_s=args.budget, memory_limit_mb=memory_limit)
            row.update(run_case(spec, time_limit))
            if row["status"] in FAILED:
                failed_at[s] = (row["status"], res_name(h, w))
        rows.append(row)
        write(format_row(row))
    wall = time.perf_counter() - start

    cross = crossover_lines(rows)
    out = Path(args.out)
    write_results(rows, machine, settings, cross, out)
    plots = plot(rows, out, f"{mode}, batch {args.batch_size}, {args.device}\n{machine}")
    print("\n" + "\n".join(_table(rows)))
    print("\nCrossover (smallest resolution from which the SSM model wins, at it and every larger one):")
    print("\n".join(f"  {c}" for c in cross) or "  (needs at least one SSM model and one other model)")
    print(f"\n{len(rows)} cases in {wall / 60:.1f} min; wrote {out / 'results.csv'}, {out / 'results.md'}"
          + "".join(f", {q}" for q in plots) + f", {out / 'machine.txt'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
