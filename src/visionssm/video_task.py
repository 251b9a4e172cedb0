"""Video classification: the task of ``visionssm train --task video`` (VideoMamba on clips).

    visionssm train --task video --model videomamba_tiny_f8_224 --data cue-probe --num-frames 4 \\
        --model-kwargs embed_dim=64 depth=4 mamba_init=True --epochs 20 --train-num-samples 2000 -b 32 \\
        --lr 1e-3 --warmup-epochs 1 --smoothing 0 --clip-grad 1.0
    visionssm train --task video --model videomamba_tiny_f8_224 --data /data/k400 \\
        --pretrained-path videomamba_t16_in1k_res224.pth --lr 2e-4 --weight-decay 0.1 --drop-path 0.1
    visionssm eval --checkpoint runs/k400/best.pth --test-clips 4 --test-crops 3
    visionssm predict a.mp4 --checkpoint runs/k400/best.pth    # scored as evaluation scores a video

Clips are ``(batch, 3, frames, height, width)``; training samples one random frame per segment and
one random-resized crop per clip, validation the segment midpoints and the centre crop, and with
``--test-clips K --test-crops C`` every video is scored by its K x C views' averaged softmax, as the
official VideoMamba evaluation does. cue-probe's training clips are new every epoch (nothing to
memorise) and it is normalised with its own statistics; from scratch it needs ``mamba_init=True``
(the official initialisation leaves the path from one frame to another too weak to grow in a few
minutes), and then a small VideoMamba learns it while the frame-averaging baseline
``videomamba_tiny_frameavg_f8_224`` stays at chance (docs/benchmarks.md). Options beyond the shared
``visionssm train`` flags are read with defaults: ``num_frames`` (default: the model's),
``test_clips`` and ``test_crops`` (1).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.loss import LabelSmoothingCrossEntropy

from visionssm.classification import topk_metrics, topk_row
from visionssm.engine.distributed import seed_everything
from visionssm.engine.models import create_model
from visionssm.engine.task import TransformedDataset
from visionssm.video import BUILTIN_VIDEO, VideoTransform, create_video_dataset, read_test_clips


def _positive(args, name: str, flag: str) -> int:
    value = getattr(args, name, None)
    if value is None:
        return 1
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{flag}: expected an int >= 1, got {value!r}")
    return value


@torch.no_grad()
def evaluate_views(model: nn.Module, loader, device, autocast, num_classes: int) -> dict:
    """Loss, top-1 and top-k (k = min(5, classes)) over the whole split, summed across ranks.

    A batch of ``(batch, views, 3, T, H, W)`` is scored per video by the mean of its views' softmax
    (the official multi-clip x multi-crop test); the loss is the negative log of that mean.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        views = x.shape[1] if x.dim() == 6 else 1
        with autocast():
            logits = model(x.flatten(0, 1) if x.dim() == 6 else x)
        probs = logits.float().softmax(-1).reshape(len(y), views, -1).mean(1)
        loss_sum = F.nll_loss(probs.clamp_min(1e-12).log(), y, reduction="sum")
        totals += topk_row(loss_sum, probs, y, min(5, num_classes))
    model.train(was_training)
    res = topk_metrics(totals)
    return dict(val_loss=res.pop("loss"), **res)


def video_scores(model: nn.Module, data_config: dict, device, test_clips: int | None = None,
                 test_crops: int | None = None):
    """``path -> probabilities``: a video model's class scores for one video file, scored as
    :func:`evaluate_views` scores a validation video (the mean softmax of ``test_clips`` x
    ``test_crops`` views; default: the checkpoint's ``data_config``, else 1 x 1)."""
    clips = test_clips or data_config.get("test_clips") or 1
    crops = test_crops or data_config.get("test_crops") or 1
    transform = VideoTransform(data_config["img_size"], False, data_config.get("mean") or IMAGENET_DEFAULT_MEAN,
                               data_config.get("std") or IMAGENET_DEFAULT_STD, num_crops=crops)

    @torch.no_grad()
    def score(path: str) -> torch.Tensor:
        views = transform(read_test_clips(path, model.num_frames, clips))
        views = views[None] if views.dim() == 4 else views  # one view
        return model(views.to(device)).float().softmax(-1).mean(0)

    return score


class VideoTask:
    """Video classification with a video model (``videomamba_*_f*_224``): the
    :class:`visionssm.engine.task.Task` of ``--task video``; ``model`` (evaluation of a file as
    released) takes the place of the model built from the flags."""

    score = "top1"
    fields = ["val_loss", "top1", "top5"]
    train_collate = val_collate = None
    eval_batch_size = 4  # every video brings clips x crops views
    sample_units = ("clips", "clips/s")

    def __init__(self, args: argparse.Namespace, progress: bool = False, train: bool = True,
                 model: nn.Module | None = None):
        for flag in ("mixup", "cutmix"):
            if (getattr(args, flag, 0) or 0) > 0:
                raise ValueError(f"--{flag}: not supported by --task video, got {getattr(args, flag)}")
        num_frames = getattr(args, "num_frames", None)
        if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 1):
            raise ValueError(f"--num-frames: expected an int >= 1, got {num_frames!r}")
        clips, crops = _positive(args, "test_clips", "--test-clips"), _positive(args, "test_crops", "--test-crops")
        builtin = args.data in BUILTIN_VIDEO
        size = args.img_size or (32 if builtin else 224)
        # every rank reads the same lists; the samplers split them
        train_ds = create_video_dataset(args.data, getattr(args, "train_split", "train"), num_frames, size,
                                        args.train_num_samples, train=True, seed=args.seed) if train else None
        val_ds = create_video_dataset(args.data, getattr(args, "val_split", "val"), num_frames, size,
                                      args.val_num_samples, num_clips=clips,
                                      classes=train_ds.classes if train else None, seed=args.seed)
        self.classes = list(val_ds.classes)
        seed_everything(args.seed)  # the model is built from one seed on every rank
        self.model = model if model is not None else create_model(
            args.model, len(self.classes), size, args.model_kwargs, args.drop, args.drop_path, args.pretrained_path,
            optional=dict(num_frames=num_frames) if num_frames else None)
        if getattr(self.model, "num_frames", None) is None:
            raise ValueError(f"--model: expected a video model, one that takes (batch, 3, frames, height, width) "
                             f"such as videomamba_tiny_f8_224; got {args.model!r}")
        num_frames = num_frames or self.model.num_frames  # other clip lengths resample its temporal table
        for ds in (train_ds, val_ds):
            if ds is not None:
                ds.num_frames = num_frames
        own = getattr(val_ds, "defaults", None)  # the generated set's own normalisation
        mean = tuple(getattr(args, "mean", None) or getattr(own, "mean", None) or IMAGENET_DEFAULT_MEAN)
        std = tuple(getattr(args, "std", None) or getattr(own, "std", None) or IMAGENET_DEFAULT_STD)
        self.data_config = dict(img_size=size, num_frames=num_frames, mean=mean, std=std, test_clips=clips,
                                test_crops=crops)
        if train:
            # the generated clips' labels depend on where things are: no crops, no flips
            augment = not builtin and not getattr(args, "no_aug", False)
            hflip = getattr(args, "hflip", None)
            self.train_set = TransformedDataset(train_ds, VideoTransform(
                size, augment, mean, std, scale=getattr(args, "scale", None) or (0.08, 1.0),
                ratio=getattr(args, "ratio", None) or (3 / 4, 4 / 3), hflip=0.5 if hflip is None else hflip))
        self.val_set = TransformedDataset(val_ds, VideoTransform(size, False, mean, std, num_crops=crops))
        smoothing = getattr(args, "smoothing", 0.0) or 0.0
        self.loss_fn = LabelSmoothingCrossEntropy(smoothing=smoothing) if smoothing > 0 else nn.CrossEntropyLoss()

    def loss(self, model: nn.Module, batch, device) -> tuple[torch.Tensor, int]:
        """(loss, clips in the batch), run under the caller's autocast."""
        x, y = (t.to(device, non_blocking=True) for t in batch)
        return self.loss_fn(model(x), y), x.shape[0]

    def evaluate(self, model: nn.Module, loader, device, autocast) -> dict:
        return evaluate_views(model, loader, device, autocast, len(self.classes))

    def describe(self, val: dict) -> str:
        views = self.data_config["test_clips"] * self.data_config["test_crops"]
        return (f"val loss {val['val_loss']:.4f}, top-1 {val['top1']:.2f}, top-{min(5, len(self.classes))} "
                f"{val['top5']:.2f}" + (f" ({self.data_config['test_clips']} clips x "
                                        f"{self.data_config['test_crops']} crops)" if views > 1 else ""))
