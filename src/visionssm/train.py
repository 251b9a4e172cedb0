"""``visionssm train``, ``visionssm eval`` and ``visionssm predict``: one training loop, top to bottom.

The loop runs a task object: :class:`ClassificationTask` here, segmentation and detection in
``visionssm.dense.tasks``; a task builds the model and data sets and knows the loss and metrics.

    visionssm train --model vim_tiny_patch16_224 --data digits --model-kwargs embed_dim=64 depth=4 \\
        --epochs 20 --batch-size 64 --lr 2e-3 --output runs/vim-digits
    torchrun --nproc_per_node=8 -m visionssm train --model vim_tiny_patch16_224 --data /imagenet ...
    visionssm train --resume runs/vim-digits            # carries on from runs/vim-digits/last.pth
    visionssm eval --checkpoint runs/vim-digits/best.pth --data digits
    visionssm predict --checkpoint runs/vim-digits/best.pth a.png b.png
    visionssm train --task segmentation --model vmamba_tiny_s1l8 --data shapes   # see visionssm.dense.tasks

Flags are named as timm's ``train.py`` names them; ``--config FILE.yaml`` takes the same flags as
keys (``batch_size`` or ``batch-size``). One process per device under torchrun: DistributedDataParallel
(NCCL on GPUs, gloo on CPUs), a distributed sampler, metrics summed over ranks, and rank 0 alone
logs and writes checkpoints. Checkpoints are atomic (a temporary file, then ``os.replace``) and
hold everything a resume needs: model, EMA, optimizer, scheduler, scaler, epoch, step, every
rank's RNG states and the config. A resume from an epoch-end checkpoint continues the run exactly
as if it had not stopped; so does one from a ``--checkpoint-steps`` checkpoint with ``--workers 0``
(with workers, the augmentations of the rest of that epoch are drawn afresh).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import hashlib
import importlib.util
import itertools
import json
import math
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import visionssm  # noqa: F401  (registers the models with timm)
from visionssm.data import DataError, create_dataset, read_image
from visionssm.engine.models import ModelKwargs, create_model, model_from_checkpoint
from visionssm.models.checkpoint import CheckpointError, load_state_dict_checked, read_checkpoint

CHECKPOINT_VERSION = 1
TASKS = ("classification", "segmentation", "detection")
# what a run folder holds; a new run refuses a folder that has any of them (without --resume/--overwrite)
RUN_FILES = ("last.pth", "best.pth", "metrics.csv", "metrics.jsonl", "args.yaml", "summary.json")
# flags that describe this invocation, not the run: never restored by --resume
NOT_RESTORED = ("resume", "config", "output", "overwrite")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


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
    g.add_argument("--task", default="classification", choices=TASKS,
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


# --- devices and ranks ------------------------------------------------------------------------------


def init_distributed(device_arg: str | None):
    """(rank, world_size, device). torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; SLURM's variables are mapped."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    kind = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device: {kind!r} asked for, but CUDA is not available")
    device = torch.device(f"cuda:{local_rank}") if kind == "cuda" else torch.device(kind)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


def all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_object(obj):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --- RNG states ----------------------------------------------------------------------------------------


def get_rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- checkpoints ---------------------------------------------------------------------------------------


def save_checkpoint(state: dict, path: str) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_checkpoint(path: str) -> dict:
    """A checkpoint of ``visionssm train`` (a run folder means its last.pth), with clear errors."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pth")
    ckpt = read_checkpoint(path)
    if "model" not in ckpt and "state_dict" not in ckpt and not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"checkpoint {path!r}: expected a dict with 'model' (a state dict), "
                              f"got keys {sorted(ckpt)[:8]}")
    return ckpt


def load_run_checkpoint(path: str) -> dict:
    """A checkpoint to resume from: written by ``visionssm train``, of this checkpoint version."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict) or "epoch" not in ckpt:
        raise CheckpointError(f"--resume {path!r}: not a checkpoint of 'visionssm train' (no run state); "
                              "to start from its weights use --pretrained-path")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"--resume {path!r}: checkpoint version {ckpt.get('version')}, this visionssm "
                              f"reads version {CHECKPOINT_VERSION}")
    return ckpt


def write_json(obj, path: str) -> None:
    """Write JSON atomically (a temporary file, then os.replace)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def param_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- model, data ------------------------------------------------------------------------------------------


def data_config(args, defaults, model) -> dict:
    """Input size, normalisation, interpolation: the flag, else the data set's, else the model's."""
    pcfg = getattr(model, "pretrained_cfg", None) or {}

    def pick(flag, own, model_key, last):
        return next(v for v in (flag, own, pcfg.get(model_key), last) if v is not None)

    return dict(
        img_size=args.img_size or defaults.img_size or (pcfg.get("input_size") or (3, 224, 224))[-1],
        mean=tuple(pick(args.mean, defaults.mean, "mean", (0.485, 0.456, 0.406))),
        std=tuple(pick(args.std, defaults.std, "std", (0.229, 0.224, 0.225))),
        interpolation=pick(args.interpolation, defaults.interpolation, "interpolation", "bicubic"),
        crop_pct=pick(args.crop_pct, defaults.crop_pct, "crop_pct", 0.875),
    )


def train_transform(args, defaults, cfg):
    def flag(name, default):
        return next(v for v in (getattr(args, name), defaults.aug.get(name), default) if v is not None)

    return create_transform(
        cfg["img_size"], is_training=True, no_aug=args.no_aug, scale=tuple(flag("scale", (0.08, 1.0))),
        ratio=tuple(flag("ratio", (3 / 4, 4 / 3))), hflip=flag("hflip", 0.5), vflip=flag("vflip", 0.0),
        color_jitter=flag("color_jitter", 0.4), auto_augment=args.aa, interpolation=cfg["interpolation"],
        mean=cfg["mean"], std=cfg["std"], re_prob=args.reprob, re_mode=args.remode, re_count=args.recount)


def eval_transform(cfg):
    return create_transform(cfg["img_size"], is_training=False, interpolation=cfg["interpolation"],
                            mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"])


class TransformedDataset(torch.utils.data.Dataset):
    """(image, label) samples with ``transform`` applied to the image, or with ``joint`` to the pair
    (segmentation: the mask is cropped and flipped with its image)."""

    def __init__(self, ds, transform, joint: bool = False):
        self.ds, self.transform, self.joint = ds, transform, joint

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        image, label = self.ds[i]
        return self.transform(image, label) if self.joint else (self.transform(image), label)


class ResumableSampler(DistributedSampler):
    """The distributed sampler (one shard per rank, reshuffled per epoch), able to start part-way in."""

    skip = 0

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self):
        return super().__len__() - self.skip


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: rank r takes samples r, r + world, ...; no padding, so every image counts once."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = range(rank, n, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, autocast, num_classes: int) -> dict:
    """Loss, top-1 and top-k (k = min(5, classes)) over the whole split, summed across ranks."""
    was_training = model.training
    model.eval()
    k = min(5, num_classes)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-k, count
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        logits = logits.float()
        top = logits.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        totals += torch.stack([nn.functional.cross_entropy(logits, y, reduction="sum").double(),
                               hit[:, 0].sum().double(), hit.any(1).sum().double(),
                               torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    all_sum(totals)
    model.train(was_training)
    n = max(totals[3].item(), 1.0)
    return dict(loss=totals[0].item() / n, top1=100 * totals[1].item() / n, top5=100 * totals[2].item() / n,
                count=int(totals[3].item()))


def autocast_for(device, enabled: bool, dtype_name: str | None):
    if not enabled:
        return contextlib.nullcontext, None
    if device.type == "cpu":
        if dtype_name == "float16":
            print("visionssm train: --amp-dtype float16 is not supported on the CPU; using bfloat16", file=sys.stderr)
        dtype = torch.bfloat16
    else:
        dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux: process peak RSS


# --- the training run ------------------------------------------------------------------------------------


class ClassificationTask:
    """Image classification with any timm model: timm's transforms, mixup/cutmix, top-1/top-k.

    A task builds the model and the two data sets and knows the loss and the metrics; ``train``
    runs the same loop over any task (``visionssm.dense.tasks`` has segmentation and detection).
    """

    score = "top1"  # the metric that picks best.pth
    fields = ["val_loss", "top1", "top5"]  # evaluate()'s values logged every epoch
    train_collate = val_collate = None

    def __init__(self, args: argparse.Namespace, progress: bool):
        mixup_on = args.mixup > 0 or args.cutmix > 0
        if mixup_on and args.batch_size % 2:
            raise ValueError(f"--batch-size: mixup/cutmix need an even batch size, got {args.batch_size}")
        # every rank reads the same lists; the samplers split them
        skip = getattr(args, "skip_bad_images", False)
        train_ds = create_dataset(args.data, "train", args.img_size, args.train_num_samples, args.train_split,
                                  seed=args.seed, progress=progress, skip_bad_images=skip)
        val_ds = create_dataset(args.data, "val", args.img_size, args.val_num_samples, args.val_split,
                                classes=train_ds.classes, seed=args.seed, progress=progress, skip_bad_images=skip)
        self.classes = list(train_ds.classes)
        seed_everything(args.seed)  # the model is built from one seed on every rank
        self.model = create_model(args.model, len(self.classes), args.img_size or train_ds.defaults.img_size,
                                  args.model_kwargs, args.drop, args.drop_path, args.pretrained_path)
        self.data_config = data_config(args, train_ds.defaults, self.model)
        self.train_set = TransformedDataset(train_ds, train_transform(args, train_ds.defaults, self.data_config))
        self.val_set = TransformedDataset(val_ds, eval_transform(self.data_config))
        self.mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                              switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                              label_smoothing=args.smoothing, num_classes=len(self.classes)) if mixup_on else None
        if mixup_on:
            self.loss_fn = SoftTargetCrossEntropy()  # the smoothing is in the mixed targets
        elif args.smoothing > 0:
            self.loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        else:
            self.loss_fn = nn.CrossEntropyLoss()

    def loss(self, model: nn.Module, batch, device) -> tuple[torch.Tensor, int]:
        """(loss, images in the batch), run under the caller's autocast."""
        x, y = (t.to(device, non_blocking=True) for t in batch)
        if self.mixup_fn is not None:
            x, y = self.mixup_fn(x, y)
        return self.loss_fn(model(x), y), x.shape[0]

    def evaluate(self, model: nn.Module, loader, device, autocast) -> dict:
        res = evaluate(model, loader, device, autocast, len(self.classes))
        return dict(val_loss=res["loss"], top1=res["top1"], top5=res["top5"], count=res["count"])

    def describe(self, val: dict) -> str:
        return (f"val loss {val['val_loss']:.4f}, top-1 {val['top1']:.2f}, "
                f"top-{min(5, len(self.classes))} {val['top5']:.2f}")


def require_dense(task: str) -> None:
    missing = [m for m in ("torchmetrics", "pycocotools") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"--task {task}: needs {' and '.join(missing)}; pip install 'visionssm[dense]'")


def create_task(args: argparse.Namespace, progress: bool):
    if args.task == "classification":
        return ClassificationTask(args, progress)
    require_dense(args.task)
    from visionssm.dense.tasks import TASKS

    return TASKS[args.task](args, progress)


def train(args: argparse.Namespace) -> dict:
    """Run (or resume) a training run; return the summary that is also written to summary.json."""
    resume_ckpt, overrides = None, []
    if args.resume:
        resume_ckpt = load_run_checkpoint(args.resume)
        overrides = restore_config(args, resume_ckpt["config"])
        if args.output is None:  # the run folder the checkpoint is in
            args.output = args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
    if not args.model or not args.data:
        raise ValueError("--model and --data are required (on the command line or in --config)")
    for name in ("epochs", "batch_size", "grad_accum_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    out = args.output or os.path.join("output", "train", time.strftime("%Y%m%d-%H%M%S") + f"-{args.model}")
    prepare_run_folder(out, args)
    if resume_ckpt is not None and resume_ckpt["epoch"] >= args.epochs and resume_ckpt["step_in_epoch"] == 0:
        summary_path = os.path.join(out, "summary.json")
        if os.path.isfile(summary_path):  # finished: nothing to do, nothing rewritten
            print(f"{args.resume}: the run has finished its {resume_ckpt['epoch']} epochs; nothing to do "
                  f"(--epochs N with N > {resume_ckpt['epoch']} trains it longer)")
            with open(summary_path) as f:
                return json.load(f)

    rank, world, device = init_distributed(args.device)
    main_process = rank == 0
    log = print if main_process else (lambda *a, **k: None)
    for line in overrides:
        log(f"--resume: {line}")
    try:
        progress = main_process and not args.no_progress
        task = create_task(args, progress)
        model, classes, cfg, score = task.model, task.classes, task.data_config, task.score
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(device)
        ema = (ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup)
               if args.model_ema else None)
        opt_kwargs = {k: v for k, v in dict(eps=args.opt_eps, betas=args.opt_betas).items() if v is not None}
        optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                        momentum=args.momentum, layer_decay=args.layer_decay, **opt_kwargs)
        autocast, amp_dtype = autocast_for(device, args.amp, args.amp_dtype)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        raw_model = model
        if world > 1:
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        # loaders: per-rank shards, reshuffled each epoch from (seed, epoch); worker seeds from a
        # generator of their own, so loading never touches the global RNG streams
        train_set, val_set = task.train_set, task.val_set
        sampler = ResumableSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                   drop_last=True)
        loader_gen = torch.Generator()
        train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                  drop_last=True, pin_memory=device.type == "cuda", generator=loader_gen,
                                  persistent_workers=False, collate_fn=task.train_collate)
        val_loader = DataLoader(val_set, batch_size=args.batch_size, sampler=ShardSampler(len(val_set), rank, world),
                                num_workers=args.workers, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(0), collate_fn=task.val_collate)
        updates_per_epoch = len(sampler) // args.batch_size // args.grad_accum_steps
        if updates_per_epoch < 1:
            raise DataError(f"--batch-size: {args.batch_size} x {args.grad_accum_steps} accumulation steps x "
                            f"{world} ranks is more than the {len(train_set)} training images")
        lr_scheduler, _ = create_scheduler_v2(
            optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
            warmup_lr=args.warmup_lr, min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)

        # state that a resume restores
        start_epoch, step, skip_steps, epoch_loss_sum = 0, 0, 0, 0.0
        earlier = (0.0, 0)  # training time and images of the resumed epoch before the checkpoint
        best = {score: -math.inf, "epoch": -1}
        seed_everything(args.seed + rank)  # different augmentations on each rank
        if resume_ckpt is not None:
            ckpt = resume_ckpt
            if ckpt["config"].get("task", "classification") != args.task:
                raise CheckpointError(f"--resume {args.resume!r}: a {ckpt['config'].get('task', 'classification')} "
                                      f"checkpoint, but --task is {args.task!r}")
            load_state_dict_checked(raw_model, ckpt["model"], args.resume)
            if ema is not None:
                if ckpt.get("model_ema") is None:
                    raise CheckpointError(f"--resume {args.resume!r}: --model-ema is on but the checkpoint has no EMA")
                load_state_dict_checked(ema.module, ckpt["model_ema"], args.resume)
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
                if not any(line.split(":")[0] in SCHEDULE_FLAGS for line in overrides):
                    lr_scheduler.load_state_dict(ckpt["scheduler"])  # else: rebuilt for the new settings
                scaler.load_state_dict(ckpt["scaler"])
            except (KeyError, ValueError) as e:
                raise CheckpointError(f"--resume {args.resume!r}: optimizer/scheduler/scaler state does not fit "
                                      f"({type(e).__name__}: {e})") from e
            start_epoch, step, skip_steps = ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]
            epoch_loss_sum, best = ckpt["epoch_loss_sum"], ckpt["best"]
            earlier = (ckpt.get("epoch_time_s", 0.0), ckpt.get("epoch_images", 0))
            rng = ckpt["rng"]
            if len(rng) == world:
                set_rng_state(rng[rank])
            else:
                log(f"note: the checkpoint was written by {len(rng)} ranks, this run has {world}; RNG re-seeded")
                seed_everything(args.seed + rank + 1000 * step)
            lr_scheduler.step_update(num_updates=step)
            log(f"resumed from {args.resume} at epoch {start_epoch}, step {step}")

        # run folder and logs (rank 0)
        out = broadcast_object(out)
        fields = ["epoch", "step", "lr", "train_loss", *task.fields, f"ema_{score}", "epoch_time_s",
                  "train_img_per_s"]
        if main_process:
            os.makedirs(out, exist_ok=True)
            import yaml

            with open(os.path.join(out, "args.yaml"), "w") as f:
                yaml.safe_dump(_config(args), f)
            _truncate_metrics(out, start_epoch, fields)
        writer = _tensorboard(out) if main_process else None

        def checkpoint(epoch_next: int, step_in_epoch: int, loss_sum: float, time_s: float = 0.0, images: int = 0,
                       path: str = "last.pth"):
            rngs = gather_objects(get_rng_state())  # every rank takes part
            if main_process:
                save_checkpoint(dict(
                    version=CHECKPOINT_VERSION, model=raw_model.state_dict(),
                    model_ema=ema.module.state_dict() if ema is not None else None,
                    optimizer=optimizer.state_dict(), scheduler=lr_scheduler.state_dict(),
                    scaler=scaler.state_dict(), epoch=epoch_next, step=step, step_in_epoch=step_in_epoch,
                    epoch_loss_sum=loss_sum, epoch_time_s=time_s, epoch_images=images, best=best, rng=rngs,
                    config=_config(args), classes=classes,
                    data_config=cfg, world_size=world), os.path.join(out, path))

        log(f"{args.model} ({args.task}): {sum(p.numel() for p in raw_model.parameters()) / 1e6:.3f}M parameters, "
            f"{len(train_set)} training / {len(val_set)} validation images, {len(classes)} classes, "
            f"{cfg['img_size']} px, {world} process(es) on {device}, {updates_per_epoch} steps per epoch")

        # the loop
        run_start, images_seen, train_time, metrics = time.time(), 0, 0.0, {}
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch)
            sampler.skip = skip_steps * args.grad_accum_steps * args.batch_size
            loader_gen.manual_seed(args.seed * 100003 + epoch * 1009 + rank)
            model.train()
            step_in_epoch, loss_sum, micro, loss_acc = skip_steps, epoch_loss_sum, 0, 0.0
            (done_time, done_images), skip_steps, epoch_loss_sum, earlier = earlier, 0, 0.0, (0.0, 0)
            bar = _progress(updates_per_epoch, step_in_epoch, f"epoch {epoch}", progress)
            t0, seen = time.time(), 0
            for batch in train_loader:
                if step_in_epoch >= updates_per_epoch:
                    break  # a tail too short for a whole accumulation is left out
                micro += 1
                last_micro = micro % args.grad_accum_steps == 0
                # under DDP the gradients are averaged across ranks on the last micro-batch only
                sync = model.no_sync() if world > 1 and not last_micro else contextlib.nullcontext()
                with sync:
                    with autocast():
                        loss, n = task.loss(model, batch, device)
                    scaler.scale(loss / args.grad_accum_steps).backward()
                loss_acc = loss_acc + loss.detach().float()
                seen += n
                if not last_micro:
                    continue

                # one optimizer step; the loss check is collective, so every rank stops together
                stats = all_sum(torch.stack([loss_acc / args.grad_accum_steps,
                                             (~torch.isfinite(loss_acc)).float()]).to(device))
                if stats[1] > 0:
                    raise NonFiniteLossError(
                        f"the training loss became {loss_acc.item()} at step {step + 1} (epoch {epoch}, step "
                        f"{step_in_epoch + 1} of the epoch); stopped before the update. The last checkpoint is "
                        f"{os.path.join(out, 'last.pth')}; try a lower --lr, --clip-grad, or no --amp")
                if args.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(raw_model.parameters(), args.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_in_epoch += 1
                if ema is not None:
                    ema.update(raw_model, step=step)
                lr_scheduler.step_update(num_updates=step)
                step_loss = stats[0].item() / world
                loss_sum += step_loss
                loss_acc = 0.0
                if bar is not None and (step % args.log_interval == 0 or step_in_epoch == updates_per_epoch):
                    dt = max(time.time() - t0, 1e-9)
                    bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                    img_s=f"{seen * world / dt:.0f}")
                if bar is not None:
                    bar.update(1)
                if args.checkpoint_steps and step % args.checkpoint_steps == 0 and step_in_epoch < updates_per_epoch:
                    checkpoint(epoch, step_in_epoch, loss_sum, done_time + time.time() - t0, done_images + seen * world)
            if bar is not None:
                bar.close()
            epoch_time, epoch_images = done_time + time.time() - t0, done_images + seen * world
            train_time += epoch_time
            images_seen += epoch_images
            lr_scheduler.step(epoch + 1)
            if world > 1:  # BatchNorm statistics: every rank takes rank 0's, as the checkpoint does
                for buf in raw_model.buffers():
                    dist.broadcast(buf, 0)
            # trained, not yet evaluated: a failing evaluation (a bad validation image) loses no training;
            # a resume from here evaluates this epoch and goes on
            checkpoint(epoch, step_in_epoch, loss_sum, epoch_time, epoch_images)

            val = task.evaluate(raw_model, val_loader, device, autocast)
            ema_val = task.evaluate(ema.module, val_loader, device, autocast) if ema is not None else {}
            metrics = dict(epoch=epoch, step=step, lr=optimizer.param_groups[0]["lr"],
                           train_loss=loss_sum / max(step_in_epoch, 1), **{k: val[k] for k in task.fields},
                           **{f"ema_{score}": ema_val.get(score)}, epoch_time_s=epoch_time,
                           train_img_per_s=epoch_images / max(epoch_time, 1e-9))
            improved = max(val[score], ema_val.get(score, -math.inf)) > best[score]
            if improved:
                best = dict(val if val[score] >= ema_val.get(score, -math.inf) else ema_val, epoch=epoch)
            if main_process:  # before the checkpoint: a resume from it drops rows of epochs it re-runs
                _write_metrics(out, metrics, fields, writer)
                ema_note = f", EMA {score} {ema_val[score]:.2f}" if ema_val else ""
                log(f"epoch {epoch}: train loss {metrics['train_loss']:.4f}, {task.describe(val)}{ema_note}, "
                    f"{epoch_time:.1f} s, {metrics['train_img_per_s']:.0f} img/s")
            if improved:  # best before last: a kill between the two leaves last.pth to redo this step
                checkpoint(epoch + 1, 0, 0.0, path="best.pth")
            checkpoint(epoch + 1, 0, 0.0)

        digests = gather_objects(param_digest(raw_model))
        rows = read_metrics(out) if main_process else []  # the whole run's, resumed parts included
        summary = dict(
            task=args.task, model=args.model, data=args.data, epochs=args.epochs, steps=step, world_size=world,
            device=str(device), params_m=sum(p.numel() for p in raw_model.parameters()) / 1e6,
            img_size=cfg["img_size"], final=rows[-1] if rows else metrics, **{f"best_{score}": best[score]},
            best_epoch=best["epoch"], wall_s=time.time() - run_start,
            train_img_per_s=_run_throughput(rows) if rows else images_seen / max(train_time, 1e-9),
            peak_memory_mb=peak_memory_mb(device), rank_param_digests=digests, output=out)
        if len(set(digests)) > 1:
            raise RuntimeError(f"the ranks' weights differ after training (digests {digests}); this is a bug")
        if main_process:
            write_json(summary, os.path.join(out, "summary.json"))
            if writer is not None:
                writer.close()
            if summary["final"]:
                metrics = summary["final"]
                log(f"done: {score} {metrics[score]:.2f} (best {best[score]:.2f} at epoch {best['epoch']}), "
                    f"{summary['train_img_per_s']:.0f} img/s, peak memory {summary['peak_memory_mb']:.0f} MB, "
                    f"{summary['wall_s']:.1f} s; checkpoints in {out}")
        return summary
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _config(args: argparse.Namespace) -> dict:
    """The run's configuration as plain Python values (tuples to lists), loadable with weights_only=True."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(args).items()) if not k.startswith("_")}


# flags whose change on a resume rebuilds the learning-rate schedule instead of restoring it
SCHEDULE_FLAGS = ("epochs", "sched", "warmup_epochs", "warmup_lr", "min_lr", "lr")


def restore_config(args: argparse.Namespace, config: dict) -> list[str]:
    """Take every flag of a resumed run's configuration that was not given now; [what was overridden]."""
    given = getattr(args, "_given", None)
    if given is None:  # a Namespace built in Python: what differs from the defaults was given
        defaults = vars(train_parser().parse_args([]))
        given = [k for k, v in vars(args).items() if k in defaults and v != defaults[k]]
    overrides = []
    for key, value in config.items():
        if key in NOT_RESTORED or not hasattr(args, key):
            continue
        now = getattr(args, key)
        if key not in given:
            setattr(args, key, value)
        elif (list(now) if isinstance(now, tuple) else now) != value:
            overrides.append(f"{key}: {value!r} in the run, {now!r} now")
    return overrides


def prepare_run_folder(out: str, args: argparse.Namespace) -> None:
    """Refuse a folder that holds another run (unless resuming it, or --overwrite); tidy a resumed one."""
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    resuming_here = args.resume is not None and os.path.isdir(out) and os.path.samefile(
        out, args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume)))
    if found and not resuming_here:
        if not args.overwrite:
            raise ValueError(f"--output: {out!r} holds an earlier run ({', '.join(found)}); resume it with "
                             f"--resume {out}, choose another --output, or pass --overwrite to delete it")
        for f in found:
            os.remove(os.path.join(out, f))
    for tmp in glob.glob(os.path.join(glob.escape(out), ".*.tmp")) + glob.glob(os.path.join(glob.escape(out), "*.tmp")):
        with contextlib.suppress(OSError):  # left by a write that was killed
            os.remove(tmp)


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _tensorboard(out: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: TensorBoard is not installed
        return None
    return SummaryWriter(os.path.join(out, "tensorboard"))


def _write_metrics(out: str, row: dict, fields: list[str], writer) -> None:
    path = os.path.join(out, "metrics.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        for k, v in row.items():
            if k not in ("epoch", "step") and v is not None:
                writer.add_scalar(k, v, row["epoch"])
        writer.flush()


def read_metrics(out: str) -> list[dict]:
    """The rows of metrics.jsonl; a torn last line (a kill while writing) is left out."""
    rows = []
    with contextlib.suppress(FileNotFoundError), open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict) and "epoch" in r]


def _run_throughput(rows: list[dict]) -> float:
    images = sum(r.get("train_img_per_s", 0) * r.get("epoch_time_s", 0) for r in rows)
    return images / max(sum(r.get("epoch_time_s", 0) for r in rows), 1e-9)


def _truncate_metrics(out: str, start_epoch: int, fields: list[str]) -> None:
    """On a resume, keep the rows of the epochs before ``start_epoch`` (the others run again), in both files."""
    if not os.path.exists(os.path.join(out, "metrics.jsonl")):
        return
    rows = [r for r in read_metrics(out) if r["epoch"] < start_epoch]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


# --- evaluation and prediction ---------------------------------------------------------------------------


def _model_from_checkpoint(args):
    """(model, data config, class names) of ``--checkpoint`` (ours, or a file as released with --model)."""
    model, info = model_from_checkpoint(args.checkpoint, args.model, args.model_kwargs, args.use_ema, args.img_size)
    return model, info["data_config"], info["classes"]


def _few(names, n: int = 6) -> str:
    names = list(names)
    return str(names[:n])[:-1] + (", ...]" if len(names) > n else "]")


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionssm eval", description="Top-1/top-5 and loss of a checkpoint "
                                "(mIoU of a segmentation one, box/mask AP of a detection one).")
    p.add_argument("--checkpoint", required=True, help="a 'visionssm train' checkpoint, or an official weights file")
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's)")
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ModelKwargs, metavar="KEY=VALUE")
    p.add_argument("--data", default=None, help="as for train (default: the checkpoint's)")
    p.add_argument("--split", default="val", help="sub-folder (or built-in split) to evaluate")
    p.add_argument("--num-samples", type=positive_int, default=None, help="only the first N images")
    p.add_argument("--img-size", type=int, default=None, help="evaluate at this resolution")
    p.add_argument("--use-ema", action="store_true", help="the checkpoint's EMA weights")
    p.add_argument("-b", "--batch-size", type=positive_int, default=128)
    p.add_argument("-j", "--workers", type=nonnegative_int, default=2)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"])
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=42, help="pathfinder's seed (the trained one by default)")
    p.add_argument("--eval-mode", default=None, choices=("whole", "slide"),
                   help="segmentation checkpoints: whole-image or sliding-window inference (default: the trained)")
    p.add_argument("--eval-stride", type=int, default=None, help="segmentation: sliding-window stride")
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    args = eval_parser().parse_args(argv)
    rank, world, device = init_distributed(args.device)
    try:
        ckpt = read_checkpoint(args.checkpoint)
        ckpt_cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        if ckpt_cfg.get("task", "classification") != "classification":
            require_dense(ckpt_cfg["task"])
            from visionssm.dense.tasks import evaluate_checkpoint

            return evaluate_checkpoint(args, ckpt, rank, world, device)
        data = args.data or ckpt_cfg.get("data")
        if not data:
            raise ValueError("--data: required (the checkpoint does not name its data)")
        seed = ckpt_cfg.get("seed", args.seed) if args.data in (None, ckpt_cfg.get("data")) else args.seed
        model, dcfg, classes = _model_from_checkpoint(args)
        ds = create_dataset(data, args.split, args.img_size or dcfg["img_size"], args.num_samples, args.split,
                            seed=seed)
        if ckpt_cfg and list(ds.classes) != list(classes):
            raise DataError(f"--data: the classes of {data} {_few(ds.classes)} are not the checkpoint's "
                            f"{_few(classes)}")
        if not ckpt_cfg and len(ds.classes) != len(classes):  # a file as released knows no class names
            raise DataError(f"--data: {data} has {len(ds.classes)} classes, the checkpoint's head {len(classes)}")
        model.to(device)
        autocast, _ = autocast_for(device, args.amp, args.amp_dtype)
        loader = DataLoader(TransformedDataset(ds, eval_transform(dcfg)), batch_size=args.batch_size,
                            sampler=ShardSampler(len(ds), rank, world), num_workers=args.workers)
        t0 = time.time()
        res = evaluate(model, loader, device, autocast, len(classes))
        res.update(img_size=dcfg["img_size"], images_per_s=res["count"] / (time.time() - t0),
                   peak_memory_mb=peak_memory_mb(device))
        if rank == 0:
            k = min(5, len(classes))
            print(f"{args.checkpoint} on {data}/{args.split} ({res['count']} images, {dcfg['img_size']} px): "
                  f"top-1 {res['top1']:.2f}, top-{k} {res['top5']:.2f}, loss {res['loss']:.4f}, "
                  f"{res['images_per_s']:.0f} img/s")
            print(json.dumps(res))
        return 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def predict_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="visionssm predict", description="Top classes of each image.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--model-kwargs", nargs="*", default={}, action=ModelKwargs, metavar="KEY=VALUE")
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--use-ema", action="store_true")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, dcfg, classes = _model_from_checkpoint(args)
    model.to(device)
    tf = eval_transform(dcfg)
    for path in args.images:
        x = tf(read_image(path))[None].to(device)
        with torch.no_grad():
            probs = model(x).float().softmax(-1)[0]
        top = probs.topk(min(args.topk, len(classes)))
        print(path + ": " + ", ".join(f"{classes[i]} {p:.3f}" for p, i in zip(top.values.tolist(),
                                                                          top.indices.tolist())))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = train_parser()
    args = parse_args(parser, sys.argv[1:] if argv is None else list(argv))
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
