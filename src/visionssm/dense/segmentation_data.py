"""Segmentation data sets read from label-map folders: ADE20K as distributed, and a generic tree.

Each yields ``(image, mask)``: a uint8 image tensor (3, H, W) and an int64 label map (H, W) with
the labels ``0 .. num_classes - 1`` and 255 for pixels to ignore. Folders and file pairs are
checked when a set is built, sizes and label values when a sample is read (or all at once by
``check_annotations``).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from visionssm.data import IMG_EXTENSIONS, DataError, read_image
from visionssm.dense.samples import IGNORE_INDEX, check_num_samples, image_tensor

__all__ = ["ADE20K", "ADE20K_CLASSES", "SegmentationFolder"]

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def _list_images(folder: str) -> dict[str, str]:
    """``{stem: path}`` of the images in ``folder`` (not recursive)."""
    out: dict[str, str] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        if entry.is_file() and ext.lower() in IMG_EXTENSIONS and not entry.name.startswith("."):
            if stem in out:
                raise DataError(f"image folder {folder!r} holds two images named {stem!r}: "
                                f"{os.path.basename(out[stem])!r} and {entry.name!r}")
            out[stem] = entry.path
    return out


class _LabelMapFolder(torch.utils.data.Dataset):
    """Pairs of an image and a single-channel label PNG with the same stem; labels checked when read."""

    name = "segmentation folder"

    def _pair(self, image_dir: str, mask_dir: str, num_samples: int | None) -> None:
        for folder, what in ((image_dir, "images"), (mask_dir, "annotations")):
            if not os.path.isdir(folder):
                raise DataError(f"{self.name}: the {what} folder {folder!r} does not exist")
        images = _list_images(image_dir)
        if not images:
            raise DataError(f"{self.name}: image folder {image_dir!r} holds no images "
                            f"(looked for {', '.join(IMG_EXTENSIONS)})")
        masks = {os.path.splitext(e.name)[0]: e.path for e in os.scandir(mask_dir)
                 if e.is_file() and e.name.lower().endswith(".png")}
        missing = [stem for stem in images if stem not in masks]
        if missing:
            raise DataError(f"{self.name}: {len(missing)} image(s) in {image_dir!r} have no annotation "
                            f"<name>.png in {mask_dir!r}, e.g. {os.path.basename(images[missing[0]])!r} "
                            f"(expected {os.path.join(mask_dir, missing[0] + '.png')!r})")
        self.samples = [(images[stem], masks[stem]) for stem in images]
        if check_num_samples(num_samples) is not None:
            self.samples = self.samples[:num_samples]
        self.image_dir, self.mask_dir = image_dir, mask_dir

    def __len__(self) -> int:
        return len(self.samples)

    def _labels(self, raw: np.ndarray, path: str) -> np.ndarray:
        """Raw annotation values -> training labels (0..num_classes-1, 255 ignore); overridden by ADE20K."""
        return raw.astype(np.int64)

    def _read_labels(self, mask_path: str, image_path: str, image_size: tuple[int, int]) -> np.ndarray:
        """The training labels of one annotation, checked against its image's (width, height) and the classes."""
        try:
            with Image.open(mask_path) as m:
                if m.mode not in ("L", "P", "I", "I;16", "1"):
                    raise DataError(f"{self.name}: annotation {mask_path!r} is a {m.mode} image, expected a "
                                    f"single-channel label PNG (mode L or P)")
                raw = np.array(m)
        except (OSError, SyntaxError) as e:
            raise DataError(f"{self.name}: annotation {mask_path!r} cannot be read ({e})") from None
        if raw.shape[::-1] != tuple(image_size):
            raise DataError(f"{self.name}: annotation {mask_path!r} is {raw.shape[1]}x{raw.shape[0]} but its image "
                            f"{image_path!r} is {image_size[0]}x{image_size[1]} (width x height)")
        labels = self._labels(raw, mask_path)
        bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX) | (labels < 0)
        if bad.any():
            value = int(raw[bad].max()) if (raw[bad] >= 0).all() else int(raw[bad].min())
            raise DataError(f"{self.name}: annotation {mask_path!r} holds the label {value}, outside the "
                            f"{self._label_range()}")
        return labels

    def check_annotations(self, progress: bool = False) -> None:
        """Read every annotation and its image's size: a bad mask is an error now, not after an epoch."""
        samples = self.samples
        if progress:
            from tqdm import tqdm
            samples = tqdm(samples, desc=f"checking {self.mask_dir}", leave=False)
        for image_path, mask_path in samples:
            try:
                with Image.open(image_path) as im:
                    size = im.size
            except (OSError, SyntaxError) as e:
                raise DataError(f"{self.name}: image {image_path!r} cannot be read ({e})") from None
            self._read_labels(mask_path, image_path, size)

    def __getitem__(self, index: int):
        image_path, mask_path = self.samples[index]
        image = np.array(read_image(image_path))
        labels = self._read_labels(mask_path, image_path, image.shape[1::-1])
        return image_tensor(image), torch.from_numpy(labels)

    def _label_range(self) -> str:
        return f"{self.num_classes} classes (expected 0..{self.num_classes - 1}, or 255 for ignore)"


class ADE20K(_LabelMapFolder):
    """ADE20K (SceneParsing, ``ADEChallengeData2016``): 150 classes, images in ``images/{training,validation}``
    and label PNGs of the same stem in ``annotations/{training,validation}``.

    ``root`` is the ``ADEChallengeData2016`` folder or its parent. With ``reduce_zero_label`` (the
    default, mmseg's convention) the annotation value 0 ("other") becomes 255 (ignored) and
    ``v`` becomes ``v - 1``, so the labels are 0..149 for :data:`ADE20K_CLASSES`; without it the
    labels are the annotation values and class 0 is ``"other"`` (151 classes). A value of 255 is
    ignored in both cases. Folders and file pairs are checked when the set is built, sizes and
    label values when a sample is read. ``num_samples`` keeps the first N images (sorted by name).
    """

    name = "ADE20K"

    def __init__(self, root: str, split: str = "train", reduce_zero_label: bool = True,
                 num_samples: int | None = None):
        if split not in ("train", "val", "training", "validation"):
            raise DataError(f"ADE20K: split expected 'train' or 'val', got {split!r}")
        sub = {"train": "training", "val": "validation"}.get(split, split)
        if not os.path.isdir(root):
            raise DataError(f"ADE20K: folder {root!r} does not exist")
        inner = os.path.join(root, "ADEChallengeData2016")
        if not os.path.isdir(os.path.join(root, "images")) and os.path.isdir(inner):
            root = inner
        if not os.path.isdir(os.path.join(root, "images")):
            raise DataError(f"ADE20K: {root!r} has no 'images' folder (expected ADEChallengeData2016/images/"
                            f"{{training,validation}} and ADEChallengeData2016/annotations/{{training,validation}})")
        self.root, self.split, self.reduce_zero_label = root, split, reduce_zero_label
        self._pair(os.path.join(root, "images", sub), os.path.join(root, "annotations", sub), num_samples)
        self.classes = list(ADE20K_CLASSES) if reduce_zero_label else ["other", *ADE20K_CLASSES]
        self.num_classes = len(self.classes)

    def _labels(self, raw: np.ndarray, path: str) -> np.ndarray:
        labels = raw.astype(np.int64)
        if self.reduce_zero_label:
            ignore = (labels == 0) | (labels == IGNORE_INDEX)
            labels = labels - 1
            labels[ignore] = IGNORE_INDEX
        return labels

    def _label_range(self) -> str:
        if self.reduce_zero_label:
            return "150 classes of ADE20K (expected annotation values 0..150, 0 = other, or 255)"
        return super()._label_range()


class SegmentationFolder(_LabelMapFolder):
    """A generic segmentation tree: ``root/images/<split>/<name>.<jpg|png|...>`` and ``root/masks/<split>/<name>.png``.

    Masks are single-channel label PNGs: values 0..num_classes-1, 255 = ignore. Class names come
    from ``classes`` or from ``root/classes.txt`` (one name per line). ``num_samples`` keeps the first
    N images (sorted by name).
    """

    name = "segmentation folder"

    def __init__(self, root: str, split: str = "train", classes: list[str] | None = None,
                 num_samples: int | None = None):
        if not os.path.isdir(root):
            raise DataError(f"segmentation folder {root!r} does not exist")
        if classes is None:
            path = os.path.join(root, "classes.txt")
            if not os.path.isfile(path):
                raise DataError(f"segmentation folder {root!r}: no class names: pass classes=[...] or write "
                                f"{path!r} (one class name per line, in label order)")
            with open(path, encoding="utf-8") as f:
                classes = [line.strip() for line in f if line.strip()]
        classes = list(classes)
        if not 1 <= len(classes) <= IGNORE_INDEX:
            raise DataError(f"segmentation folder {root!r}: expected 1 to 255 class names, got {len(classes)}")
        self.root, self.split = root, split
        self.classes, self.num_classes = classes, len(classes)
        self._pair(os.path.join(root, "images", split), os.path.join(root, "masks", split), num_samples)
