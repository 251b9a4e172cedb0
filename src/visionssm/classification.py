"""Image classification with any timm model: the task of ``visionssm train`` (the default ``--task``).

timm's transforms and mixup/cutmix, label smoothing, top-1/top-k over the whole validation split.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from visionssm.data import create_dataset
from visionssm.engine.distributed import all_sum, seed_everything
from visionssm.engine.models import create_model
from visionssm.engine.task import TransformedDataset


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



def topk_row(loss_sum: torch.Tensor, scores: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """One batch's (loss sum, top-1 hits, top-k hits, count) in float64, to be summed over batches and ranks."""
    hit = scores.topk(k, dim=1).indices.eq(y[:, None])
    return torch.stack([loss_sum.double(), hit[:, 0].sum().double(), hit.any(1).sum().double(),
                        torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)])


def topk_metrics(totals: torch.Tensor) -> dict:
    """loss, top1, top5 (percent; top-k with k = min(5, classes)) and count of summed :func:`topk_row` rows."""
    all_sum(totals)
    n = max(totals[3].item(), 1.0)
    return dict(loss=totals[0].item() / n, top1=100 * totals[1].item() / n, top5=100 * totals[2].item() / n,
                count=int(totals[3].item()))


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, autocast, num_classes: int) -> dict:
    """Loss, top-1 and top-k (k = min(5, classes)) over the whole split, summed across ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            logits = model(x)
        logits = logits.float()
        totals += topk_row(nn.functional.cross_entropy(logits, y, reduction="sum"), logits, y, min(5, num_classes))
    model.train(was_training)
    return topk_metrics(totals)


class ClassificationTask:
    """Image classification with any timm model: timm's transforms, mixup/cutmix, top-1/top-k.

    The :class:`visionssm.engine.task.Task` of ``--task classification``; ``model`` (evaluation of a
    file as released) takes the place of the model built from the flags.
    """

    score = "top1"  # the metric that picks best.pth
    fields = ["val_loss", "top1", "top5"]  # evaluate()'s values logged every epoch
    train_collate = val_collate = None
    eval_batch_size = 128

    def __init__(self, args: argparse.Namespace, progress: bool = False, train: bool = True,
                 model: nn.Module | None = None):
        mixup_on = train and (args.mixup > 0 or args.cutmix > 0)
        if mixup_on and args.batch_size % 2:
            raise ValueError(f"--batch-size: mixup/cutmix need an even batch size, got {args.batch_size}")
        # every rank reads the same lists; the samplers split them
        skip = getattr(args, "skip_bad_images", False)
        train_ds = create_dataset(args.data, "train", args.img_size, args.train_num_samples, args.train_split,
                                  seed=args.seed, progress=progress, skip_bad_images=skip) if train else None
        val_ds = create_dataset(args.data, args.val_split, args.img_size, args.val_num_samples, args.val_split,
                                classes=train_ds.classes if train else None, seed=args.seed, progress=progress,
                                skip_bad_images=skip)
        self.classes = list((train_ds or val_ds).classes)
        defaults = (train_ds or val_ds).defaults
        seed_everything(args.seed)  # the model is built from one seed on every rank
        self.model = model if model is not None else create_model(
            args.model, len(self.classes), args.img_size or defaults.img_size, args.model_kwargs, args.drop,
            args.drop_path, args.pretrained_path)
        self.data_config = data_config(args, defaults, self.model)
        if train:
            self.train_set = TransformedDataset(train_ds, train_transform(args, defaults, self.data_config))
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
