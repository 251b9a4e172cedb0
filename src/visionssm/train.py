"""``visionssm train``, ``visionssm eval`` and ``visionssm predict``: their flags, and the calls into the engine.

    visionssm train --model vim_tiny_patch16_224 --data digits --model-kwargs embed_dim=64 depth=4 \\
        --epochs 20 --batch-size 64 --lr 2e-3 --output runs/vim-digits
    torchrun --nproc_per_node=8 -m visionssm train --model vim_tiny_patch16_224 --data /imagenet ...
    visionssm train --resume runs/vim-digits            # the whole run restored; given flags override
    visionssm eval --checkpoint runs/vim-digits/best.pth --data digits
    visionssm predict --checkpoint runs/vim-digits/best.pth a.png b.png
    visionssm predict --checkpoint runs/k400/best.pth a.mp4 --test-clips 4 --test-crops 3   # a video model
    visionssm train --task segmentation --model vmamba_tiny_s1l8 --data shapes   # see visionssm.dense.tasks

Flags are named as timm's ``train.py`` names them; ``--config FILE.yaml`` takes the same flags as
keys (``batch_size`` or ``batch-size``). The loop is :mod:`visionssm.engine.loop`, the tasks
:mod:`visionssm.classification` and :mod:`visionssm.dense.tasks`, evaluation
:mod:`visionssm.engine.evaluate`.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from visionssm.data import read_image
from visionssm.engine import loop
from visionssm.engine.evaluate import evaluate_checkpoint
from visionssm.engine.models import ModelKwargs, model_from_checkpoint
from visionssm.engine.task import TASKS

# --- arguments ---------------------------------------------------------------------------------------


def int_at_least(low: int):
    """argparse type: an int >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an int >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


positive_int, nonnegative_int = int_at_least(1), int_at_least(0)


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionssm train",
                                description="Train an image classifier (any timm model), or a segmentation or "
                                            "detection model over one of them.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", default=None, help="YAML file whose keys are these flags")
    g = p.add_argument_group("model and data")
    g.add_argument("--task", default="classification", choices=sorted(TASKS),
                   help="what to train: a classifier, or a backbone under UperNet (segmentation) or Mask R-CNN")
    g.add_argument("--model", default=None, help="timm model name, e.g. vim_tiny_patch16_224 (required); "
                   "the backbone for segmentation/detection")
    g.add_argument("--model-kwargs", nargs="*", default={}, action=ModelKwargs, metavar="KEY=VALUE",
                   help="extra model constructor arguments, e.g. embed_dim=64 depth=4")
    g.add_argument("--pretrained-path", default=None,
                   help="start from this weights file, loaded as the model's pretrained weights (head adapted)")
    g.add_argument("--data", default=None,
                   help="'digits', 'pathfinder', or a folder with train/ and val/ (one sub-folder per class)")
    g.add_argument("--train-split", default="train", help="training sub-folder of --data")
    g.add_argument("--val-split", default="val", help="validation sub-folder of --data")
    g.add_argument("--train-num-samples", type=positive_int, default=None, help="use only the first N training images")
    g.add_argument("--val-num-samples", type=positive_int, default=None, help="use only the first N validation images")
    g.add_argument("--img-size", type=int, default=None, help="input size (default: the data set's, else the model's)")
    g.add_argument("--drop", type=float, default=None, help="dropout rate (model default if unset)")
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (model default if unset)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in the backward pass")
    g.add_argument("--sync-bn", action="store_true",
                   help="under DDP, BatchNorm statistics over the global batch (the dense heads' BatchNorm layers)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=100)
    g.add_argument("-b", "--batch-size", type=positive_int, default=128, help="images per device per step")
    g.add_argument("--grad-accum-steps", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--opt", default="adamw")
    g.add_argument("--opt-eps", type=float, default=None)
    g.add_argument("--opt-betas", type=float, nargs=2, default=None)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--weight-decay", type=float, default=0.05,
                   help="not applied to biases, norms, position embeddings, class tokens, A_log and D")
    g.add_argument("--layer-decay", type=float, default=None)
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this")
    g.add_argument("--sched", default="cosine")
    g.add_argument("--warmup-epochs", type=float, default=5)
    g.add_argument("--warmup-lr", type=float, default=1e-5)
    g.add_argument("--min-lr", type=float, default=1e-6)
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--model-ema", action="store_true", help="keep an exponential moving average of the weights")
    g.add_argument("--model-ema-decay", type=float, default=0.9998)
    g.add_argument("--model-ema-warmup", action="store_true", help="ramp the EMA decay up from 0")
    g.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 on CPU)")
    g.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"],
                   help="default: float16 on CUDA, bfloat16 on CPU (the only one there)")
    g = p.add_argument_group("augmentation (timm's create_transform; unset: the data set's defaults)")
    g.add_argument("--no-aug", action="store_true")
    g.add_argument("--scale", type=float, nargs=2, default=None)
    g.add_argument("--ratio", type=float, nargs=2, default=None)
    g.add_argument("--hflip", type=float, default=None)
    g.add_argument("--vflip", type=float, default=None)
    g.add_argument("--color-jitter", type=float, default=None)
    g.add_argument("--aa", default=None, help="auto-augment policy, e.g. rand-m9-mstd0.5-inc1")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--interpolation", default=None)
    g.add_argument("--mean", type=float, nargs="+", default=None)
    g.add_argument("--std", type=float, nargs="+", default=None)
    g.add_argument("--crop-pct", type=float, default=None)
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--mixup-mode", default="batch")
    g = p.add_argument_group("segmentation and detection (--task segmentation|detection)")
    g.add_argument("--crop-size", type=int, default=None,
                   help="segmentation: training crop (default: --img-size, else 512 for folders, 128 for shapes)")
    g.add_argument("--decode-channels", type=int, default=512, help="segmentation: UperNet head width")
    g.add_argument("--aux-weight", type=float, default=0.4,
                   help="segmentation: weight of the FCN auxiliary head's loss (0: no auxiliary head)")
    g.add_argument("--eval-mode", default="whole", choices=("whole", "slide"),
                   help="segmentation: whole-image or sliding-window inference")
    g.add_argument("--eval-stride", type=int, default=None,
                   help="segmentation: sliding-window stride (default: 2/3 of --crop-size)")
    g.add_argument("--detector", default="mask_rcnn", choices=("mask_rcnn", "faster_rcnn"))
    g.add_argument("--detector-kwargs", nargs="*", default={}, action=ModelKwargs, metavar="KEY=VALUE",
                   help="detection: torchvision detector arguments, e.g. box_batch_size_per_image=128")
    g.add_argument("--min-size", type=int, default=None,
                   help="detection: the detector resizes the short side to this (default: 800, shapes: its size)")
    g.add_argument("--max-size", type=int, default=None, help="detection: longest side (default: 1333)")
    g = p.add_argument_group("video (--task video)")
    g.add_argument("--num-frames", type=positive_int, default=None, help="frames per clip (default: the model's)")
    g.add_argument("--test-clips", type=positive_int, default=1,
                   help="evaluation: clips per video, scores averaged (the official recipe: 4)")
    g.add_argument("--test-crops", type=positive_int, default=1,
                   help="evaluation: spatial crops per clip, scores averaged (the official recipe: 3)")
    g = p.add_argument_group("run")
    g.add_argument("--output", default=None, help="run folder (default: output/train/<time>-<model>)")
    g.add_argument("--resume", default=None, help="run folder (its last.pth), or checkpoint file, to carry on from; "
                   "restores the run's whole configuration, and flags given here override it")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output folder that holds an earlier run, deleting its files")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="image folders: decode every image before training and leave out the unreadable ones "
                        "(listed); without it, an unreadable image stops the run, naming the file")
    g.add_argument("--checkpoint-steps", type=nonnegative_int, default=0,
                   help="also write last.pth every N optimizer steps (0: at epoch ends only)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("-j", "--workers", type=int, default=2, help="data loading processes per device")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--log-interval", type=positive_int, default=10, help="progress bar refresh, in optimizer steps")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Command line over YAML config over defaults (as timm's train.py does)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        import yaml

        if not os.path.isfile(known.config):
            parser.error(f"--config: file {known.config!r} does not exist")
        with open(known.config) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            parser.error(f"--config: expected a mapping of flag: value in {known.config!r}")
        dests = {a.dest for a in parser._actions}
        cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
        unknown = sorted(set(cfg) - dests)
        if unknown:
            parser.error(f"--config: unknown keys {unknown} in {known.config!r}")
        parser.set_defaults(**cfg)
    args = parser.parse_args(argv)
    # which flags were given (command line or config file): a --resume restores the others
    given = {k for k, v in vars(_parse_without_defaults(parser, argv)).items() if v is not _UNSET}
    args._given = sorted(given | (set(cfg) if known.config else set()))
    return args


_UNSET = object()


def _parse_without_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    saved = {a.dest: a.default for a in parser._actions}
    try:
        for a in parser._actions:
            a.default = _UNSET
        saved_set = dict(parser._defaults)
        parser._defaults.clear()
        return parser.parse_args(argv)
    finally:
        for a in parser._actions:
            a.default = saved[a.dest]
        parser._defaults.update(saved_set)


# --- the commands ------------------------------------------------------------------------------------


def train_defaults() -> dict:
    return vars(train_parser().parse_args([]))


def train(args: argparse.Namespace) -> dict:
    """Run (or resume) the training run ``args`` describes (see :func:`visionssm.engine.loop.train`)."""
    return loop.train(args, train_defaults())


def main(argv: list[str] | None = None) -> int:
    parser = train_parser()
    train(parse_args(parser, sys.argv[1:] if argv is None else list(argv)))
    return 0


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionssm eval", description="Top-1/top-5 and loss of a checkpoint "
                                "(mIoU of a segmentation one, box/mask AP of a detection one).")
    p.add_argument("--checkpoint", required=True, help="a 'visionssm train' checkpoint, or an official weights file")
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's)")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ModelKwargs, metavar="KEY=VALUE")
    p.add_argument("--data", default=None, help="as for train (default: the checkpoint's)")
    p.add_argument("--split", default="val", help="sub-folder (or built-in split) to evaluate")
    p.add_argument("--num-samples", type=positive_int, default=None, help="only N images")
    p.add_argument("--img-size", type=positive_int, default=None, help="evaluate at this resolution")
    p.add_argument("--use-ema", action="store_true", help="the checkpoint's EMA weights")
    p.add_argument("-b", "--batch-size", type=positive_int, default=None,
                   help="images per batch (default: the task's: 128 classification, 8 segmentation, 2 detection)")
    p.add_argument("-j", "--workers", type=nonnegative_int, default=2)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"])
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=42, help="pathfinder's seed (the trained one by default)")
    p.add_argument("--eval-mode", default=None, choices=("whole", "slide"),
                   help="segmentation checkpoints: whole-image or sliding-window inference (default: the trained)")
    p.add_argument("--eval-stride", type=positive_int, default=None, help="segmentation: sliding-window stride")
    p.add_argument("--test-clips", type=positive_int, default=None, help="video: clips per video (default: trained)")
    p.add_argument("--test-crops", type=positive_int, default=None, help="video: crops per clip (default: the trained)")
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    evaluate_checkpoint(eval_parser().parse_args(argv), train_defaults())
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="visionssm predict",
                                description="Top classes of each image (of each video, for a video model).")
    p.add_argument("files", nargs="+", metavar="FILE", help="image files; video files for a video model")
    p.add_argument("--checkpoint", required=True, help="a 'visionssm train' checkpoint, or a file as released")
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's)")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ModelKwargs, metavar="KEY=VALUE")
    p.add_argument("--img-size", type=positive_int, default=None)
    p.add_argument("--use-ema", action="store_true")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--test-clips", type=positive_int, default=None,
                   help="video: clips per video, scores averaged (default: the checkpoint's, else 1)")
    p.add_argument("--test-crops", type=positive_int, default=None,
                   help="video: crops per clip, scores averaged (default: the checkpoint's, else 1)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, info = model_from_checkpoint(args.checkpoint, args.model, args.model_kwargs, args.use_ema, args.img_size)
    model.to(device)
    if getattr(model, "num_frames", None) is not None:  # a video model: (batch, 3, frames, height, width)
        from visionssm.video_task import video_scores

        scores = video_scores(model, info["data_config"], device, args.test_clips, args.test_crops)
    else:
        scores = _image_scores(model, info["data_config"], device, args)
    classes = info["classes"]
    for path in args.files:
        top = scores(path).topk(min(args.topk, len(classes)))
        print(path + ": " + ", ".join(f"{classes[i]} {p:.3f}" for p, i in zip(top.values.tolist(),
                                                                          top.indices.tolist())))
    return 0


def _image_scores(model, data_config: dict, device, args: argparse.Namespace):
    """``path -> probabilities`` of an image model; a video file or a video flag is refused."""
    from visionssm.classification import eval_transform
    from visionssm.video import is_video_file

    for flag in ("--test-clips", "--test-crops"):
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            raise ValueError(f"{flag}: only for video models; the model of {args.checkpoint} takes images")
    for path in filter(is_video_file, args.files):  # all refused before any is scored
        raise ValueError(f"{path}: expected an image file (the model of {args.checkpoint} takes images), "
                         "got a video; videos need a video model such as videomamba_tiny_f8_224")
    transform = eval_transform(data_config)

    @torch.no_grad()
    def score(path: str) -> torch.Tensor:
        return model(transform(read_image(path))[None].to(device)).float().softmax(-1)[0]

    return score


if __name__ == "__main__":
    sys.exit(main())
