"""Evaluation of dense prediction: semantic segmentation (mIoU, as mmseg counts it) and COCO-style
detection / instance segmentation (box and mask AP, as pycocotools counts it).

Segmentation is scored over the whole validation set: one confusion matrix sums every pixel of every
image, and IoU is total intersection over total union per class, not a mean over images. The matrix is
a torchmetrics metric, so under DDP ``compute()`` sums it over the ranks by itself (every rank must call
it). Detection results are converted to COCO's result format and scored with ``COCOeval``.

All scores are fractions in [0, 1]; a caller that logs percentages multiplies by 100.

torchmetrics and pycocotools are optional dependencies, imported when first needed: without them this
module still imports, and the feature that needs one says how to install it.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INSTALL_HINT = "pip install 'visionssm[dense]'"
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six of COCOeval.stats, in order
IOU_TYPES = ("bbox", "segm")

__all__ = ["SegmentationMetrics", "coco_evaluate", "detections_to_coco", "evaluate_detection",
           "evaluate_segmentation"]


# --- semantic segmentation ----------------------------------------------------------------------------

_CONFMAT_CLASS = None


def _confusion_matrix_class():
    """torchmetrics' MulticlassConfusionMatrix with a cheaper update (built on first use: torchmetrics is
    optional)."""
    global _CONFMAT_CLASS
    if _CONFMAT_CLASS is not None:
        return _CONFMAT_CLASS
    try:
        from torchmetrics.classification import MulticlassConfusionMatrix
    except ImportError:
        raise ImportError("segmentation metrics need torchmetrics, which is not installed: pip install torchmetrics "
                          f"(or {INSTALL_HINT})") from None

    class PixelConfusionMatrix(MulticlassConfusionMatrix):
        """Takes flat, already-validated, ignore-free label vectors. The parent's update would validate again
        (a ``torch.unique`` per batch) and, when deterministic algorithms are on, count with an
        (pixels x classes^2) comparison table; ``torch.bincount`` without weights is deterministic anyway.
        State, reduction (sum) and the DDP sync in ``compute`` are the parent's."""

        def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
            n = self.num_classes
            self.confmat += torch.bincount(target * n + preds, minlength=n * n).reshape(n, n)

    _CONFMAT_CLASS = PixelConfusionMatrix
    return _CONFMAT_CLASS


def _fmt_shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


class SegmentationMetrics:
    """mIoU, aAcc and mAcc over a whole validation set, counted as mmseg counts them.

    ``update(pred, target)`` adds a batch to one confusion matrix (rows: ground truth, columns: prediction;
    pixels whose target is ``ignore_index`` are left out); ``compute()`` reads the scores from it:

    - ``IoU``: per class, intersection / union of all pixels of the set; nan for a class that is neither in
      the ground truth nor predicted (union 0).
    - ``mIoU``: mean of ``IoU`` over the classes that are not nan.
    - ``Acc``: per class, correct pixels / ground-truth pixels; nan for a class absent from the ground truth.
    - ``mAcc``: mean of ``Acc`` over the classes that are not nan.
    - ``aAcc``: correct pixels / all non-ignored pixels.

    Values are Python floats in [0, 1] (multiply by 100 for percentages). Under DDP every rank calls
    ``compute()``: torchmetrics sums the matrices of all ranks there (an all-gather) and keeps each rank's own
    matrix for further updates. The matrix lives on the device of the first update (or of ``to(device)``).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, class_names: list[str] | None = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index: expected an int or None, got {ignore_index!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index: expected a value outside the class labels 0..{num_classes - 1}, "
                             f"got {ignore_index}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names: expected {num_classes} names (num_classes), got {len(class_names)}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        # ignore pixels never reach the matrix (update drops them); validate_args is update's own job here
        self._confmat = _confusion_matrix_class()(num_classes, ignore_index=ignore_index, validate_args=False)
        self._device: torch.device | None = None

    def to(self, device) -> SegmentationMetrics:
        """Keep the matrix on ``device`` (under DDP with NCCL: this rank's GPU, even if it sees no batch)."""
        self._device = torch.device(device)
        self._confmat = self._confmat.to(self._device)
        return self

    @property
    def device(self) -> torch.device | None:
        return self._device

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: logits (N, C, H, W) float or labels (N, H, W) int; target: labels (N, H, W) int, where
        ``ignore_index`` marks pixels left out."""
        if not isinstance(pred, torch.Tensor):
            raise ValueError(f"pred: expected a tensor, logits (N, C, H, W) or labels (N, H, W), "
                             f"got {type(pred).__name__}")
        if not isinstance(target, torch.Tensor):
            raise ValueError(f"target: expected a tensor of labels (N, H, W), got {type(target).__name__}")
        if target.ndim != 3 or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ValueError(f"target: expected integer labels of shape (N, H, W), "
                             f"got {target.dtype} of shape {_fmt_shape(target)}")
        c = self.num_classes
        if pred.ndim == 4:
            if not pred.is_floating_point():
                raise ValueError(f"pred: expected float logits when 4-D (N, C, H, W), got {pred.dtype}")
            if pred.shape[1] != c:
                raise ValueError(f"pred: expected logits (N, C={c}, H, W) for num_classes={c}, "
                                 f"got shape {_fmt_shape(pred)}")
            if pred.shape[0] != target.shape[0] or pred.shape[2:] != target.shape[1:]:
                raise ValueError(f"pred and target: sizes differ: pred (N, C, H, W) is {_fmt_shape(pred)}, "
                                 f"target (N, H, W) is {_fmt_shape(target)}; expected the same N, H, W")
        elif pred.ndim == 3:
            if pred.is_floating_point() or pred.is_complex() or pred.dtype == torch.bool:
                raise ValueError(f"pred: expected integer labels when 3-D (N, H, W), got {pred.dtype}")
            if pred.shape != target.shape:
                raise ValueError(f"pred and target: sizes differ: pred (N, H, W) is {_fmt_shape(pred)}, "
                                 f"target (N, H, W) is {_fmt_shape(target)}; expected the same shape")
        else:
            raise ValueError(f"pred: expected logits (N, C, H, W) or labels (N, H, W), got shape {_fmt_shape(pred)}")

        if self._device is None:
            self.to(pred.device)
        pred = pred.to(self._device)
        target = target.to(self._device)
        if pred.ndim == 4:
            pred = pred.argmax(dim=1)
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()

        keep = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(target, dtype=bool)
        bad_target = keep & ((target < 0) | (target >= c))
        bad_pred = keep & ((pred < 0) | (pred >= c))
        if bool((bad_target | bad_pred).any()):  # one host sync per batch for both checks
            if bool(bad_target.any()):
                value = int(target[bad_target][0])
                raise ValueError(f"target: expected labels in 0..{c - 1} (num_classes={c}) or "
                                 f"ignore_index={self.ignore_index}, got {value}")
            value = int(pred[bad_pred][0])
            raise ValueError(f"pred: expected labels in 0..{c - 1} (num_classes={c}), got {value}")
        self._confmat.update(pred[keep], target[keep])

    def confusion_matrix(self) -> torch.Tensor:
        """The (num_classes, num_classes) pixel counts, rows ground truth, columns prediction, summed over
        the ranks under DDP (a collective: every rank calls it)."""
        with warnings.catch_warnings():
            # compute() before any update warns; an empty matrix is a fine answer (all scores nan)
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            return self._confmat.compute().detach().cpu()

    def compute(self) -> dict:
        """``mIoU``, ``aAcc``, ``mAcc`` (floats in [0, 1]) and per-class ``IoU``, ``Acc`` (lists of floats,
        nan for a class absent as described in the class docstring). Under DDP every rank calls it."""
        cm = self.confusion_matrix().double()
        inter = cm.diag()
        area_target = cm.sum(dim=1)
        area_pred = cm.sum(dim=0)
        union = area_target + area_pred - inter
        nan = torch.full_like(inter, float("nan"))
        iou = torch.where(union > 0, inter / union.clamp(min=1), nan)
        acc = torch.where(area_target > 0, inter / area_target.clamp(min=1), nan)
        total = cm.sum()
        return {
            "mIoU": float(iou.nanmean()),
            "aAcc": float(inter.sum() / total) if total > 0 else float("nan"),
            "mAcc": float(acc.nanmean()),
            "IoU": [float(v) for v in iou],
            "Acc": [float(v) for v in acc],
        }

    def reset(self) -> None:
        """Forget the accumulated pixels (the matrix stays on its device)."""
        self._confmat.reset()

    def format_table(self, result: dict, class_names: Sequence[str] | None = None) -> str:
        """A markdown table of per-class IoU and Acc (percent) from ``compute()``'s result, with the means
        in a last row. ``class_names`` defaults to the constructor's, then to the class indices."""
        names = class_names if class_names is not None else self.class_names
        n = len(result["IoU"])
        if names is None:
            names = [str(i) for i in range(n)]
        if len(names) != n:
            raise ValueError(f"class_names: expected {n} names (one per class in result), got {len(names)}")

        def pct(v: float) -> str:
            return "nan" if math.isnan(v) else f"{100 * v:.2f}"

        width = max([len("class"), len("mean")] + [len(str(s)) for s in names])
        lines = [f"| {'class':<{width}} |    IoU |    Acc |", f"|{'-' * (width + 2)}|-------:|-------:|"]
        for name, iou, acc in zip(names, result["IoU"], result["Acc"]):
            lines.append(f"| {str(name):<{width}} | {pct(iou):>6} | {pct(acc):>6} |")
        lines.append(f"| {'mean':<{width}} | {pct(result['mIoU']):>6} | {pct(result['mAcc']):>6} |")
        return "\n".join(lines)


def _segmentation_items(images, masks):
    """(images (N, 3, H, W), masks (N, H, W)) pieces of one batch: the batch itself, or one piece per image
    when the loader gives a list of differently sized images."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images: expected a batch (N, 3, H, W) or a list of (3, H, W) tensors, "
                             f"got shape {_fmt_shape(images)}")
        if not isinstance(masks, torch.Tensor):
            masks = torch.stack(list(masks))
        if masks.ndim == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        yield images, masks
        return
    if not isinstance(images, Sequence):
        raise ValueError(f"images: expected a tensor (N, 3, H, W) or a list of (3, H, W) tensors, "
                         f"got {type(images).__name__}")
    if len(masks) != len(images):
        raise ValueError(f"masks: expected one mask per image ({len(images)}), got {len(masks)}")
    for img, mask in zip(images, masks):
        if img.ndim == 3:
            img = img.unsqueeze(0)
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        yield img, mask


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader, device, num_classes: int,
                          autocast: Callable = contextlib.nullcontext, mode: str = "whole",
                          crop_size=None, stride=None, ignore_index: int = 255,
                          loss_fn: Callable | None = None, class_names: list[str] | None = None) -> dict:
    """mIoU / aAcc / mAcc (and per-class IoU, Acc) of ``model`` over ``loader``, the whole set at once.

    The loader yields ``(images, masks)``: images a tensor (N, 3, H, W) with masks (N, H, W), or lists of
    (3, H, W) images and (H, W) masks of different sizes (each image then runs alone). ``mode`` is
    ``"whole"`` (logits = ``model(images)["out"]``; a model returning a tensor is taken as the logits) or
    ``"slide"`` (``visionssm.dense.models.slide_inference`` with ``crop_size`` and ``stride``). Logits of a
    size other than the mask's are resized to it (bilinear), as mmseg resizes to the original image.
    ``autocast`` is a callable giving a context manager for the forward. With ``loss_fn(logits, masks)`` the
    result also holds ``loss``, the mean over images. Under DDP every rank calls this (the sums are
    collectives). Scores are fractions in [0, 1].
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode: expected 'whole' or 'slide', got {mode!r}")
    if mode == "slide":
        if crop_size is None or stride is None:
            raise ValueError(f"crop_size and stride: expected both for mode='slide', got crop_size={crop_size!r}, "
                             f"stride={stride!r}")
        from visionssm.dense.models import slide_inference
    device = torch.device(device)
    metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index, class_names=class_names).to(device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # loss * images, images
    was_training = model.training
    model.eval()
    try:
        for images, masks in loader:
            for x, y in _segmentation_items(images, masks):
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True).long()
                with autocast():
                    if mode == "whole":
                        out = model(x)
                        logits = out["out"] if isinstance(out, dict) else out
                    else:
                        logits = slide_inference(model, x, num_classes, crop_size, stride)
                logits = logits.float()
                if logits.ndim == 4 and y.ndim == 3 and logits.shape[-2:] != y.shape[-2:]:
                    logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
                metrics.update(logits, y)
                if loss_fn is not None:
                    loss = loss_fn(logits, y)
                    loss_sum[0] += float(loss) * x.shape[0]
                    loss_sum[1] += x.shape[0]
    finally:
        model.train(was_training)
    result = metrics.compute()
    if loss_fn is not None:
        _all_reduce_sum(loss_sum)
        result["loss"] = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else float("nan")
    return result


# --- COCO detection and instance segmentation ---------------------------------------------------------


def _pycocotools():
    try:
        from pycocotools import mask as mask_util
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("COCO evaluation needs pycocotools, which is not installed: pip install pycocotools "
                          f"(or {INSTALL_HINT})") from None
    return mask_util, COCOeval


def detections_to_coco(outputs: list[dict], image_ids: list[int], label_to_cat: dict[int, int],
                       mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detector outputs -> COCO result dicts.

    Each output holds ``boxes`` (K, 4) xyxy in the image's pixels, ``labels`` (K,), ``scores`` (K,) and
    optionally ``masks`` (K, 1, H, W) probabilities. A result is ``image_id``, ``category_id`` (the label
    through ``label_to_cat``), ``bbox`` [x, y, w, h], ``score``, and with masks ``segmentation``: the mask
    above ``mask_threshold`` as compressed RLE with ``counts`` a str (JSON-ready).
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"outputs and image_ids: expected one image id per output, got {len(outputs)} outputs "
                         f"and {len(image_ids)} image ids")
    results = []
    for out, image_id in zip(outputs, image_ids):
        for key in ("boxes", "labels", "scores"):
            if key not in out:
                raise ValueError(f"outputs: expected dicts with 'boxes', 'labels', 'scores' (and optionally 'masks'),"
                                 f" got keys {sorted(out)}")
        boxes = torch.as_tensor(out["boxes"]).detach().float().cpu().reshape(-1, 4)
        labels = torch.as_tensor(out["labels"]).detach().cpu().reshape(-1).tolist()
        scores = torch.as_tensor(out["scores"]).detach().float().cpu().reshape(-1).tolist()
        if not len(boxes) == len(labels) == len(scores):
            raise ValueError(f"outputs: expected as many boxes, labels and scores, got {len(boxes)}, {len(labels)}, "
                             f"{len(scores)} for image {image_id}")
        if not labels:
            continue
        unknown = sorted({int(lab) for lab in labels} - set(label_to_cat))
        if unknown:
            raise ValueError(f"label_to_cat: expected a category id for every predicted label, "
                             f"labels {unknown} have none (known: {sorted(label_to_cat)})")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        rles = None
        if out.get("masks") is not None:
            masks = torch.as_tensor(out["masks"]).detach().cpu()
            if masks.ndim == 4:
                masks = masks[:, 0]
            if masks.ndim != 3 or len(masks) != len(labels):
                raise ValueError(f"outputs: expected 'masks' (K, 1, H, W) with K={len(labels)}, "
                                 f"got shape {_fmt_shape(torch.as_tensor(out['masks']))} for image {image_id}")
            mask_util, _ = _pycocotools()
            binary = (masks > mask_threshold).numpy().astype(np.uint8)
            rles = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # (H, W, K) column-major
            for rle in rles:
                rle["counts"] = rle["counts"].decode("ascii")
        for k in range(len(labels)):
            res = {"image_id": int(image_id), "category_id": int(label_to_cat[int(labels[k])]),
                   "bbox": xywh[k], "score": scores[k]}
            if rles is not None:
                res["segmentation"] = rles[k]
            results.append(res)
    return results


def coco_evaluate(coco_gt, results: list[dict], image_ids: list[int] | None = None,
                  iou_types: Sequence[str] = IOU_TYPES, verbose: bool = False) -> dict:
    """Score COCO result dicts against ``coco_gt`` (a ``pycocotools.coco.COCO``) with COCOeval.

    Returns ``{iou_type}_AP``, ``_AP50``, ``_AP75``, ``_APs``, ``_APm``, ``_APl`` for each iou type (``bbox``,
    ``segm``) as floats in [0, 1]. Where COCOeval reports -1 (no ground-truth object of that size), the value
    is nan. With ``image_ids`` only those images count. No results (or no images) give 0 everywhere.
    ``segm`` is scored on the masks with the mask area (a result's box is dropped for it, as detectron2 does,
    so small/medium/large follow the mask), ``bbox`` on the boxes. COCOeval's printing shows only with
    ``verbose``. ``results`` are not modified.
    """
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    for t in iou_types:
        if t not in IOU_TYPES:
            raise ValueError(f"iou_types: expected a subset of {IOU_TYPES}, got {tuple(iou_types)!r}")
    _, COCOeval = _pycocotools()
    out = {}
    if not results or (image_ids is not None and len(image_ids) == 0):
        for t in iou_types:
            out.update({f"{t}_{name}": 0.0 for name in COCO_STAT_NAMES})
        return out
    known = set(coco_gt.getImgIds())
    strangers = sorted({r["image_id"] for r in results} - known)
    if strangers:
        raise ValueError(f"results: expected image ids of coco_gt, got ids it does not have: {strangers[:10]}")
    if "segm" in iou_types and any("segmentation" not in r for r in results):
        raise ValueError("results: expected a 'segmentation' in every result for iou_types with 'segm' "
                         "(a detector without masks is scored with iou_types=('bbox',))")
    drop = {"bbox": ("segmentation", "area", "id", "iscrowd"), "segm": ("bbox", "area", "id", "iscrowd")}
    for t in iou_types:
        # loadRes writes into the dicts (id, area, ...) and takes the box area for both types when a box is there
        dets = [{k: v for k, v in r.items() if k not in drop[t]} for r in results]
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, iouType=t)
            if image_ids is not None:
                ev.params.imgIds = sorted({int(i) for i in image_ids})
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for name, value in zip(COCO_STAT_NAMES, ev.stats[:6]):
            out[f"{t}_{name}"] = float("nan") if value < 0 else float(value)
    return out


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader, device, coco_gt, label_to_cat: dict[int, int],
                       autocast: Callable = contextlib.nullcontext, iou_types: Sequence[str] = IOU_TYPES,
                       gather: Callable[[list], list] | None = None, mask_threshold: float = 0.5,
                       verbose: bool = False) -> dict:
    """Box (and mask) AP of a torchvision-style detector over ``loader``, scored by ``coco_evaluate``.

    The loader yields ``(images, targets)``: lists of (3, H, W) tensors and of dicts with ``image_id``.
    Outputs are converted on the CPU by ``detections_to_coco``. ``gather`` (for DDP: a list -> the lists of
    all ranks concatenated, e.g. over ``torch.distributed.all_gather_object``) is applied once, to the
    per-image entries (image id, results, whether the model gave masks); an image seen twice (a distributed
    sampler pads the last shards with repeats) counts once. Every rank scores the gathered set. ``segm`` is
    dropped when the model gives no masks (Faster R-CNN).
    """
    _pycocotools()  # fail before the loop if pycocotools is missing
    device = torch.device(device)
    entries = []  # (image_id, results, has_masks) per image
    was_training = model.training
    model.eval()
    try:
        for images, targets in loader:
            if isinstance(images, torch.Tensor) and images.ndim == 3:
                images = [images]
            images = [img.to(device, non_blocking=True) for img in images]
            if len(targets) != len(images):
                raise ValueError(f"targets: expected one target per image ({len(images)}), got {len(targets)}")
            ids = [int(t["image_id"]) for t in targets]
            with autocast():
                outputs = model(images)
            for image_id, output in zip(ids, outputs):
                output = {k: v.detach().float().cpu() if k in ("boxes", "scores", "masks") else v.detach().cpu()
                          for k, v in output.items() if isinstance(v, torch.Tensor)}
                entries.append((image_id, detections_to_coco([output], [image_id], label_to_cat, mask_threshold),
                                "masks" in output))
    finally:
        model.train(was_training)
    if gather is not None:
        entries = gather(entries)
    seen, results, image_ids, has_masks = set(), [], [], False
    for image_id, dets, masks in entries:
        has_masks = has_masks or masks
        if image_id in seen:
            continue
        seen.add(image_id)
        image_ids.append(image_id)
        results.extend(dets)
    if isinstance(iou_types, str):
        iou_types = (iou_types,)
    iou_types = tuple(t for t in iou_types if t != "segm" or has_masks)
    return coco_evaluate(coco_gt, results, image_ids=image_ids, iou_types=iou_types, verbose=verbose)
