"""Dense-prediction benchmarks: segmentation memory against resolution, short trainings on generated data.

    visionssm bench dense memory [--resolutions 512 1024 2048] [--backbones ...]
    visionssm bench dense train [--tasks seg-vmamba seg-vim det-vmamba] [--epochs N]

``memory``: the UperNet segmentation model (batch 1, 150 classes as for ADE20K, inference under
no_grad) over VMamba-T and timm's ConvNeXt-T and Swin-T backbones at each resolution, each case in
a fresh process: the peak memory of one forward above what is resident before it (the resident-set
growth, :mod:`visionssm.bench.isolated`), and the time of that forward.
``train``: short CPU trainings on the generated ``shapes`` data (UperNet with a tiny VMamba and a
tiny Vim; Mask R-CNN with a tiny VMamba), through ``visionssm train``; mIoU / box and mask AP and
the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from visionssm.bench.isolated import run_isolated
from visionssm.bench.machine import describe

BACKBONES = ("vmamba_tiny_s1l8", "convnext_tiny", "swin_tiny_patch4_window7_224")
# tiny backbones for the CPU trainings: about 1-2M parameters
TINY = {
    "vmamba": ("vmamba_tiny_s1l8", ["dims=32", "depths=[1,1,2,1]"]),
    "vim": ("vim_tiny_patch16_224", ["embed_dim=96", "depth=6"]),
}
TRAIN_CASES = {  # name -> (task, family, extra flags)
    "seg-vmamba": ("segmentation", "vmamba", []),
    "seg-vim": ("segmentation", "vim", []),
    # fewer sampled regions than torchvision's COCO defaults: a few shapes per image, and a CPU
    "det-vmamba": ("detection", "vmamba", ["--detector-kwargs", "box_batch_size_per_image=128",
                                           "rpn_batch_size_per_image=128", "rpn_pre_nms_top_n_train=600",
                                           "rpn_post_nms_top_n_train=300", "rpn_pre_nms_top_n_test=300",
                                           "rpn_post_nms_top_n_test=100"]),
}


def memory_case(child, backbone: str, res: int, num_classes: int = 150):
    """Run in a fresh process: build the segmentor, warm it up at 64 px; the forward at ``res`` is
    the measured call."""
    import torch

    from visionssm.dense.models import build_segmentor

    torch.manual_seed(0)
    model = build_segmentor(backbone, num_classes, img_size=res).eval()
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    child.emit(params_m=sum(p.numel() for p in model.parameters()) / 1e6)

    def forward():
        with torch.no_grad():
            model(x)
    return forward


def run_memory(args) -> list[dict]:
    rows = []
    for res in args.resolutions:
        for backbone in args.backbones:
            got = run_isolated("visionssm.bench.dense:memory_case", dict(backbone=backbone, res=res), args.time_limit)
            row = dict(backbone=backbone, res=res)
            if got["status"] == "ok":
                row.update(params_m=got["params_m"], peak_mb=got["peak_mb"], forward_s=got["measured_s"])
            else:
                row["error"] = got.get("note") or got["status"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def memory_table(rows: list[dict]) -> str:
    lines = ["| backbone | resolution | params (M) | peak memory (MB) | forward (s) |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r['res']} | | {r['error']} | |")
        else:
            lines.append(f"| {r['backbone']} | {r['res']} | {r['params_m']:.1f} | {r['peak_mb']:.0f} | "
                         f"{r['forward_s']:.2f} |")
    return "\n".join(lines)


def run_train(args) -> list[dict]:
    from visionssm import train as T
    from visionssm.engine.checkpoints import load_checkpoint

    rows = []
    for case in args.tasks:
        task, family, extra = TRAIN_CASES[case]
        model, kwargs = TINY[family]
        folder = os.path.join(args.out, case)
        flags = ["--task", task, "--model", model, "--model-kwargs", *kwargs, "--data", "shapes",
                 "--img-size", str(args.img_size), "--train-num-samples", str(args.num_samples[0]),
                 "--val-num-samples", str(args.num_samples[1]), "--epochs", str(args.epochs), "-b", "8",
                 "--lr", "1e-3", "--weight-decay", "0.01", "--warmup-epochs", "1", "--workers", "0",
                 "--no-progress", "--seed", "0", "--output", folder, "--overwrite", *extra]
        if task == "segmentation":
            flags += ["--decode-channels", "64"]
        t0 = time.time()
        summary = T.train(T.parse_args(T.train_parser(), flags))
        row = dict(case=case, task=task, model=model, model_kwargs=" ".join(kwargs), params_m=summary["params_m"],
                   epochs=args.epochs, wall_s=time.time() - t0, img_per_s=summary["train_img_per_s"],
                   final={k: v for k, v in summary["final"].items() if not isinstance(v, list)})
        if task == "segmentation":  # per-class IoU of the best epoch, kept in the checkpoint
            ckpt = load_checkpoint(os.path.join(folder, "last.pth"))
            row["best_iou"] = dict(zip(ckpt["classes"], ckpt["best"]["IoU"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def train_table(rows: list[dict]) -> str:
    lines = ["| case | backbone (kwargs) | params (M) | epochs | result (%) | wall (s) | train img/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["final"]
        if r["task"] == "segmentation":
            result = f"mIoU {f['mIoU']:.1f}, aAcc {f['aAcc']:.1f}"
            if "best_iou" in r:
                result += " (IoU " + ", ".join(f"{k} {v:.1f}" for k, v in r["best_iou"].items()) + ")"
        else:
            result = ", ".join(f"{t} AP {f[t + '_AP']:.1f} / AP50 {f[t + '_AP50']:.1f}" for t in ("bbox", "segm")
                               if t + "_AP" in f)
        lines.append(f"| {r['case']} | {r['model']} ({r['model_kwargs']}) | {r['params_m']:.2f} | {r['epochs']} | "
                     f"{result} | {r['wall_s']:.0f} | {r['img_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="visionssm bench dense", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("memory", "train"))
    p.add_argument("--resolutions", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds per memory case")
    p.add_argument("--tasks", nargs="+", choices=list(TRAIN_CASES), default=list(TRAIN_CASES))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--img-size", type=int, default=96)
    p.add_argument("--num-samples", type=int, nargs=2, default=[400, 50], metavar=("TRAIN", "VAL"))
    p.add_argument("--out", default="bench-out/dense")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    machine = describe("cpu")
    print(f"machine: {machine}")
    if args.what == "memory":
        rows = run_memory(args)
        md = f"UperNet (150 classes), batch 1, inference; {machine}.\n\n{memory_table(rows)}\n"
    else:
        rows = run_train(args)
        md = f"Training on shapes ({args.img_size} px), {machine}.\n\n{train_table(rows)}\n"
    with open(os.path.join(args.out, f"{args.what}.json"), "w") as f:
        json.dump(dict(machine=machine, rows=rows), f, indent=1)
    with open(os.path.join(args.out, f"{args.what}.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
