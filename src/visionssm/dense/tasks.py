"""The segmentation and detection tasks of ``visionssm train --task ...`` and ``visionssm eval``.

Each is a :class:`visionssm.engine.task.Task`: it builds the model and the data sets and knows the
loss and the metrics; the engine's loop (AMP, DDP, EMA, checkpoints, exact resume, progress) and
evaluation are shared with classification. ``--model`` names the backbone: VMamba's four stages
feed the head directly, Vim (and plain ViTs) through the simple feature pyramid.

    visionssm train --task segmentation --model vmamba_tiny_s1l8 --data shapes --epochs 10 -b 8
    visionssm train --task segmentation --model vmamba_tiny_s1l8 --data /data/ADEChallengeData2016 \\
        --crop-size 512 --pretrained-path vssm1_tiny_0230s_ckpt_epoch_264.pth --lr 6e-5 --weight-decay 0.01
    visionssm train --task detection --model vim_tiny_patch16_224 --data /data/coco --epochs 12
    visionssm eval --checkpoint runs/seg/best.pth --eval-mode slide
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from visionssm.dense.data import create_dense_dataset
from visionssm.dense.detection_data import collate_detection
from visionssm.dense.evaluation import evaluate_detection, evaluate_segmentation
from visionssm.dense.models import (
    build_detector,
    build_segmentor,
    is_mmseg_checkpoint,
    load_mmseg_checkpoint,
    segmentation_loss,
)
from visionssm.dense.samples import IGNORE_INDEX
from visionssm.dense.transforms import SegmentationTransform
from visionssm.engine.distributed import gather_objects, seed_everything
from visionssm.engine.task import TransformedDataset
from visionssm.models.checkpoint import CheckpointError


def _backbone_kwargs(args: argparse.Namespace, whole_model_file: bool = False) -> dict:
    """--model-kwargs, --drop-path and --pretrained-path for the backbone; the path is left out when it
    holds the whole model (``whole_model_file``), which the task then loads itself."""
    kw = dict(args.model_kwargs or {})
    if args.drop_path is not None:
        kw["drop_path_rate"] = args.drop_path
    if args.pretrained_path and not whole_model_file:
        kw["pretrained_path"] = args.pretrained_path
    return kw


def _check_pretrained_path(args: argparse.Namespace) -> None:
    if args.pretrained_path and not os.path.isfile(args.pretrained_path):
        raise CheckpointError(f"--pretrained-path: {args.pretrained_path!r} does not exist")


def collate_eval(batch):
    """Stacked when the images share a size, else (list of images, list of masks): each keeps its own."""
    images, masks = zip(*batch)
    if len({im.shape for im in images}) == 1:
        return torch.stack(images), torch.stack(masks)
    return list(images), list(masks)


class SegmentationTask:
    """UperNet (+ FCN auxiliary head) over a backbone; cross-entropy ignoring label 255; mIoU."""

    score = "mIoU"
    eval_batch_size = 8
    fields = ["val_loss", "mIoU", "aAcc", "mAcc"]
    train_collate = None
    val_collate = staticmethod(collate_eval)

    def __init__(self, args: argparse.Namespace, progress: bool = False, train: bool = True):
        self.args = args
        val_ds = create_dense_dataset("segmentation", args.data, "val", args.img_size, args.val_num_samples,
                                      seed=args.seed)
        train_ds = (create_dense_dataset("segmentation", args.data, "train", args.img_size, args.train_num_samples,
                                         seed=args.seed) if train else None)
        self.classes = list(val_ds.classes)
        if train_ds is not None and list(train_ds.classes) != self.classes:
            raise ValueError(f"--data: the training classes {train_ds.classes} differ from the validation classes")
        for ds in (val_ds, train_ds):  # mask sizes and label values: an error now, not after an epoch
            if hasattr(ds, "check_annotations"):
                ds.check_annotations(progress)
        builtin = args.data == "shapes"
        crop = args.crop_size or args.img_size or (128 if builtin else 512)
        crop_or_none = None if builtin else crop  # shapes are generated at their size: no resize
        self.data_config = dict(img_size=crop, crop_size=crop, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                                resize_short=crop_or_none)
        seed_everything(args.seed)  # the model is built from one seed on every rank
        _check_pretrained_path(args)
        # --pretrained-path: a classifier's weights for the backbone, or a whole official UperNet
        whole = bool(args.pretrained_path) and is_mmseg_checkpoint(args.pretrained_path)
        self.model = build_segmentor(args.model, len(self.classes), img_size=crop, channels=args.decode_channels,
                                     aux=args.aux_weight > 0, backbone_kwargs=_backbone_kwargs(args, whole))
        if whole:
            load_mmseg_checkpoint(self.model, args.pretrained_path)
        if train_ds is not None:
            self.train_set = TransformedDataset(train_ds, SegmentationTransform(True, crop), joint=True)
        self.val_set = TransformedDataset(val_ds, SegmentationTransform(False, crop, resize_short=crop_or_none),
                                          joint=True)

    def loss(self, model: nn.Module, batch, device) -> tuple[torch.Tensor, int]:
        images, masks = (t.to(device, non_blocking=True) for t in batch)
        return segmentation_loss(model(images), masks, IGNORE_INDEX, self.args.aux_weight), images.shape[0]

    def evaluate(self, model: nn.Module, loader, device, autocast) -> dict:
        crop = self.data_config["crop_size"]
        res = evaluate_segmentation(
            model, loader, device, len(self.classes), autocast=autocast, mode=self.args.eval_mode, crop_size=crop,
            stride=self.args.eval_stride or max(1, crop * 2 // 3), ignore_index=IGNORE_INDEX,
            loss_fn=lambda logits, masks: segmentation_loss({"out": logits.float()}, masks, IGNORE_INDEX))
        return dict(val_loss=res["loss"], mIoU=100 * res["mIoU"], aAcc=100 * res["aAcc"], mAcc=100 * res["mAcc"],
                    IoU=[100 * v for v in res["IoU"]])

    def describe(self, val: dict) -> str:
        return f"val loss {val['val_loss']:.4f}, mIoU {val['mIoU']:.2f}, aAcc {val['aAcc']:.2f}, mAcc {val['mAcc']:.2f}"


def _gather_concat(items: list) -> list:
    return [x for part in gather_objects(items) for x in part]


class DetectionTask:
    """torchvision's Mask R-CNN (or Faster R-CNN) with the backbone + FPN; COCO box (and mask) AP."""

    score = "bbox_AP"
    eval_batch_size = 2  # every image's proposals go through the RoI heads at once
    train_collate = val_collate = staticmethod(collate_detection)

    def __init__(self, args: argparse.Namespace, progress: bool = False, train: bool = True):
        self.args = args
        self.val_set = create_dense_dataset("detection", args.data, "val", args.img_size, args.val_num_samples,
                                            seed=args.seed)
        train_ds = (create_dense_dataset("detection", args.data, "train", args.img_size, args.train_num_samples,
                                         seed=args.seed) if train else None)
        self.classes = list(self.val_set.classes)
        builtin = args.data == "shapes"
        min_size = args.min_size or args.img_size or (128 if builtin else 800)
        max_size = args.max_size or (min_size if builtin else 1333)
        self.data_config = dict(img_size=min_size, min_size=min_size, max_size=max_size)
        self.iou_types = ("bbox", "segm") if args.detector == "mask_rcnn" else ("bbox",)
        self.fields = [f"{t}_{m}" for t in self.iou_types for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        seed_everything(args.seed)  # the model is built from one seed on every rank
        _check_pretrained_path(args)
        self.model = build_detector(args.model, len(self.classes) + 1, kind=args.detector, img_size=min_size,
                                    min_size=min_size, max_size=max_size, backbone_kwargs=_backbone_kwargs(args),
                                    **(getattr(args, "detector_kwargs", None) or {}))
        if train_ds is not None:
            self.train_set = train_ds

    def loss(self, model: nn.Module, batch, device) -> tuple[torch.Tensor, int]:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        losses = model(images, targets)
        return sum(losses.values()), len(images)

    def evaluate(self, model: nn.Module, loader, device, autocast) -> dict:
        res = evaluate_detection(model, loader, device, self.val_set.coco, self.val_set.label_to_cat,
                                 autocast=autocast, iou_types=self.iou_types, gather=_gather_concat)
        return {k: 100 * res[k] for k in self.fields}

    def describe(self, val: dict) -> str:
        return ", ".join(f"{t} AP {val[f'{t}_AP']:.2f} (AP50 {val[f'{t}_AP50']:.2f})" for t in self.iou_types)
