"""Detection / instance segmentation data in torchvision's detection format, read from COCO files.

A set yields ``(image, target)``: a float image in [0, 1] and a dict with ``boxes`` (N, 4) xyxy in
pixels, ``labels`` (N,) in ``1 .. num_classes`` (0 is the background), ``masks`` (N, H, W) uint8
and ``image_id``. Each carries ``coco``, its ground truth as a ``pycocotools`` COCO object for
COCOeval, ``label_to_cat`` (contiguous label -> COCO category id) and ``image_ids`` (the images in
data set order). :func:`collate_detection` batches such samples for a DataLoader.
"""

from __future__ import annotations

import contextlib
import glob
import io
import math
import os

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from visionssm.data import DataError, read_image
from visionssm.dense.samples import check_num_samples, image_tensor

__all__ = ["CocoDetection", "DetectionDataset", "collate_detection", "coco_from_dict", "detection_target",
           "find_coco", "mask_bbox"]


def quiet(fn, *args):
    """Calls a pycocotools function without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO's ``[x, y, w, h]`` of a mask: the pixel extent (a one-pixel mask is 1 x 1)."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def coco_from_dict(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    quiet(coco.createIndex)
    return coco


def detection_target(boxes, labels, masks, image_id: int, h: int, w: int) -> dict:
    return dict(
        boxes=torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        labels=torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        masks=torch.from_numpy(np.stack(masks).astype(np.uint8) if len(masks) else np.zeros((0, h, w), np.uint8)),
        image_id=int(image_id))


def _hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image.flip(-1), dict(target, boxes=boxes, masks=target["masks"].flip(-1))


class DetectionDataset(torch.utils.data.Dataset):
    """What the detection sets share: their length is ``len(image_ids)``, and ``train`` sets flip
    horizontally with probability ``hflip`` (boxes and masks with the image)."""

    def __len__(self) -> int:
        return len(self.image_ids)

    def _augment(self, image: torch.Tensor, target: dict):
        if self.train and self.hflip > 0 and torch.rand(()).item() < self.hflip:
            return _hflip(image, target)
        return image, target


class CocoDetection(DetectionDataset):
    """A COCO instances file and its image folder, in torchvision's detection format.

    Crowd annotations are left out of the targets (COCOeval still sees them in ``coco``); boxes come
    from the ``bbox`` field (xywh -> xyxy), dropping those under one pixel wide or high; masks from
    the ``segmentation`` field (polygons or RLE; a box mask where an annotation has none).
    Labels are 1..K in the order of the sorted category ids (``label_to_cat`` maps them back).
    Images without annotations are kept, with empty targets. ``train`` flips horizontally with
    probability ``hflip``. ``num_samples`` keeps the first N images (sorted by id) in ``image_ids``
    while ``coco`` stays whole: evaluation must restrict COCOeval to ``image_ids``.
    """

    def __init__(self, img_dir: str, ann_file: str, train: bool = False, hflip: float = 0.5,
                 num_samples: int | None = None):
        if not os.path.isfile(ann_file):
            raise DataError(f"COCO: annotation file (ann_file) {ann_file!r} does not exist")
        if not os.path.isdir(img_dir):
            raise DataError(f"COCO: image folder (img_dir) {img_dir!r} does not exist")
        from pycocotools.coco import COCO

        try:
            self.coco = quiet(COCO, ann_file)
        except (ValueError, AssertionError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
            raise DataError(f"COCO: {ann_file!r} is not a COCO instances file ({type(e).__name__}: {e})") from e
        data = self.coco.dataset
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"COCO: {ann_file!r} has no {key!r} list (expected a COCO instances file)")
        cat_ids = sorted(self.coco.cats)
        if not cat_ids:
            raise DataError(f"COCO: {ann_file!r} has no categories")
        for ann in data["annotations"]:
            if ann.get("category_id") not in self.coco.cats:
                raise DataError(f"COCO: {ann_file!r}: annotation {ann.get('id')!r} has category_id "
                                f"{ann.get('category_id')!r}, which is not among the categories {cat_ids}")
            if ann.get("image_id") not in self.coco.imgs:
                raise DataError(f"COCO: {ann_file!r}: annotation {ann.get('id')!r} refers to image "
                                f"{ann.get('image_id')!r}, which is not among the images")
        self.img_dir, self.ann_file, self.train, self.hflip = img_dir, ann_file, train, hflip
        self.label_to_cat = {label: cat for label, cat in enumerate(cat_ids, 1)}
        self.cat_to_label = {cat: label for label, cat in self.label_to_cat.items()}
        self.classes = [self.coco.cats[c]["name"] for c in cat_ids]
        self.num_classes = len(self.classes)
        self.image_ids = sorted(self.coco.imgs)
        if check_num_samples(num_samples) is not None:
            self.image_ids = self.image_ids[:num_samples]

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        path = os.path.join(self.img_dir, info["file_name"])
        if not os.path.isfile(path):
            raise DataError(f"COCO: image {image_id} ({info['file_name']!r}) is missing: {path!r} does not exist")
        image = np.array(read_image(path))
        h, w = image.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise DataError(f"COCO: image {path!r} is {w}x{h} but {self.ann_file!r} says "
                            f"{info.get('width')}x{info.get('height')} (width x height)")
        boxes, labels, masks = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                continue
            x, y, bw, bh = ann["bbox"]
            if bw < 1 or bh < 1:
                continue
            if ann.get("segmentation"):
                m = self.coco.annToMask(ann)
            else:
                m = np.zeros((h, w), np.uint8)
                m[int(y):int(math.ceil(y + bh)), int(x):int(math.ceil(x + bw))] = 1
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.cat_to_label[ann["category_id"]])
            masks.append(m)
        target = detection_target(boxes, labels, masks, image_id, h, w)
        image = TF.to_dtype(image_tensor(image), torch.float32, scale=True)
        return self._augment(image, target)


def collate_detection(batch):
    """``[(image, target), ...] -> ([images], [targets])``: detection images differ in size, so no stacking."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


def find_coco(data: str, split: str) -> tuple[str, str] | None:
    """``(image folder, instances JSON)`` of a COCO tree: ``annotations/instances_<split>*.json`` + ``<split>*/``."""
    found = sorted(glob.glob(os.path.join(glob.escape(data), "annotations", f"instances_{glob.escape(split)}*.json")))
    exact = os.path.join(data, "annotations", f"instances_{split}.json")
    if exact in found:  # instances_val.json before instances_val2017.json
        found.remove(exact)
        found.insert(0, exact)
    for ann in found:
        suffix = os.path.basename(ann)[len("instances_"):-len(".json")]
        for img_dir in (os.path.join(data, suffix), os.path.join(data, "images", suffix)):
            if os.path.isdir(img_dir):
                return img_dir, ann
    if found:
        suffix = os.path.basename(found[0])[len("instances_"):-len(".json")]
        raise DataError(f"COCO folder {data!r}: found {found[0]!r} but not its image folder "
                        f"{os.path.join(data, suffix)!r}")
    return None
