"""The training results of docs/benchmarks.md: tiny Vim, VMamba, DeiT and ResNet trained from scratch.

    python -m visionssm.bench.train_results --out results/train              # digits + pathfinder 32/64
    python -m visionssm.bench.train_results --tasks digits --budget 300      # digits only, 5 min a model

Each model gets the same wall-clock budget: a one-epoch probe measures its speed, and the run is
then given as many epochs as fit in the budget (so its cosine schedule ends on time). The four
families are sized to about the same parameter count (the table prints it). Writes
``OUT/results.md`` (a markdown table), ``OUT/results.json`` and one run folder per case with
its metrics.csv (the learning curve).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from visionssm.bench.machine import describe
from visionssm.engine.checkpoints import read_metrics

# name -> (timm model, model kwargs): 0.2-0.4M parameters each for 10 classes at 32 px
MODELS = {
    "vim": ("vim_tiny_patch16_224", dict(embed_dim=64, depth=6, patch_size=8, stride=8)),
    "vmamba": ("vmamba_tiny_s1l8", dict(dims=16, depths=[1, 1, 2, 1], drop_path_rate=0.0)),
    "deit": ("deit_tiny_patch16_224", dict(embed_dim=64, depth=6, num_heads=4, patch_size=8)),
    "resnet": ("resnet18", dict(layers=[1, 1, 1, 1], channels=[16, 32, 64, 128])),
}
TASKS = {  # name -> (data flags, img size)
    "digits": (["--data", "digits"], 32),
    "pathfinder32": (["--data", "pathfinder", "--train-num-samples", "8000", "--val-num-samples", "1000"], 32),
    "pathfinder64": (["--data", "pathfinder", "--train-num-samples", "8000", "--val-num-samples", "1000"], 64),
}
COMMON = ["--batch-size", "64", "--lr", "2e-3", "--weight-decay", "0.05", "--warmup-epochs", "1",
          "--smoothing", "0.1", "--workers", "0", "--no-progress", "--seed", "0"]


def run_case(task: str, family: str, budget: float, out: str, max_epochs: int, probe_samples: int | None,
             sizes: list[int] | None = None) -> dict:
    from visionssm import train as T

    model, kwargs = MODELS[family]
    data_flags, size = TASKS[task]
    if sizes:  # a smaller slice (smoke runs)
        data_flags = [*data_flags, "--train-num-samples", str(sizes[0]), "--val-num-samples", str(sizes[1])]
    base = [*COMMON, "--overwrite", "--model", model,  # a benchmark reruns into its folders
            "--model-kwargs", *[f"{k}={v!r}".replace(" ", "") for k, v in kwargs.items()],
            *data_flags, "--img-size", str(size)]
    folder = os.path.join(out, f"{task}-{family}")
    # probe: two short epochs; the second one's speed (the first includes compilation)
    T.train(T.parse_args(T.train_parser(), [
        *base, "--epochs", "2", "--output", folder + "-probe",
        *(["--train-num-samples", str(probe_samples)] if probe_samples else [])]))
    speed = _rows(folder + "-probe")[-1]["train_img_per_s"]
    epoch_s = 1.15 * _train_size(data_flags) / speed  # + about 15% for the validation
    epochs = max(1, min(max_epochs, math.floor(budget / max(epoch_s, 1e-9))))
    t0 = time.time()
    summary = T.train(T.parse_args(T.train_parser(), [*base, "--epochs", str(epochs), "--output", folder]))
    return dict(task=task, family=family, model=model, params_m=summary["params_m"], epochs=epochs,
                top1=summary["final"]["top1"], best_top1=summary["best_top1"], wall_s=time.time() - t0,
                img_per_s=summary["train_img_per_s"], curve=[r["top1"] for r in _rows(folder)], folder=folder)


def _train_size(data_flags: list[str]) -> int:
    if "--train-num-samples" in data_flags:
        return int(data_flags[len(data_flags) - 1 - data_flags[::-1].index("--train-num-samples") + 1])
    return 1497  # digits


def _rows(folder: str) -> list[dict]:
    return read_metrics(folder)


def table(results: list[dict]) -> str:
    lines = ["| task | family | model | params (M) | epochs | top-1 (%) | best top-1 (%) | wall (s) | train img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['task']} | {r['family']} | {r['model']} | {r['params_m']:.3f} | {r['epochs']} | "
                     f"{r['top1']:.1f} | {r['best_top1']:.1f} | {r['wall_s']:.0f} | {r['img_per_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m visionssm.bench.train_results", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--families", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--budget", type=float, default=300.0, help="seconds of training per model and task")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--probe-samples", type=int, default=None,
                   help="images in the speed probe (default: a whole epoch); small for a smoke run")
    p.add_argument("--num-samples", type=int, nargs=2, default=None, metavar=("TRAIN", "VAL"),
                   help="use only this many training / validation images (smoke runs)")
    p.add_argument("--out", default="results/train")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    machine = describe("cpu")
    print(f"machine: {machine}")
    results = []
    for task in args.tasks:
        for family in args.families:
            r = run_case(task, family, args.budget, args.out, args.max_epochs, args.probe_samples,
                         args.num_samples)
            results.append(r)
            print(f"{task} {family}: top-1 {r['top1']:.1f} after {r['epochs']} epochs, {r['wall_s']:.0f} s", flush=True)
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump(dict(machine=machine, budget_s=args.budget, results=results), f, indent=2)
    md = (f"Training from scratch, {args.budget:.0f} s of training per model ({machine}).\n\n"
          f"{table(results)}\n\nLearning curves (validation top-1 per epoch):\n\n"
          + "\n".join(f"- {r['task']} {r['family']}: " + ", ".join(f"{v:.1f}" for v in r["curve"]) for r in results))
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
