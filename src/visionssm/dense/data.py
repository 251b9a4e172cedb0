"""Data sets for dense prediction: semantic segmentation, and detection / instance segmentation.

Segmentation sets yield ``(image, mask)``: a uint8 image tensor (3, H, W) and an int64 label map
(H, W) with the labels ``0 .. num_classes - 1`` and 255 for pixels to ignore.
:class:`SegmentationTransform` turns such a pair into a normalised training or evaluation input.

* ``shapes`` (:class:`ShapesSegmentation`): generated, no download: textured backgrounds with up
  to six filled ellipses, triangles, rectangles and pentagons that occlude each other
  (:func:`shapes_sample`); label 0 is the background, a class like the others;
* :class:`ADE20K`: the ``ADEChallengeData2016`` tree as distributed (150 classes, annotation 0
  "other" ignored by default, as mmseg does);
* :class:`SegmentationFolder`: ``root/images/<split>/*`` with ``root/masks/<split>/*.png``
  (single-channel label PNGs) and the class names in ``root/classes.txt``.

Detection sets yield ``(image, target)`` in torchvision's detection format: a float image in
[0, 1] and a dict with ``boxes`` (N, 4) xyxy in pixels, ``labels`` (N,) in ``1 .. num_classes``
(0 is the background), ``masks`` (N, H, W) uint8 and ``image_id``. Each carries ``coco``, its
ground truth as a ``pycocotools`` COCO object for COCOeval, ``label_to_cat`` (contiguous label ->
COCO category id) and ``image_ids`` (the images in data set order).

* ``shapes`` (:class:`ShapesDetection`): the same generated images, one instance per visible shape;
  :func:`write_shapes_coco` writes them as a COCO tree (PNG images and an instances JSON);
* :class:`CocoDetection`: any COCO instances file with its image folder.

:func:`create_dense_dataset` picks one of them from a name or a folder's layout, and
:func:`collate_detection` batches detection samples for a DataLoader.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os
import tempfile

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from visionssm.data import IMG_EXTENSIONS, DataError, read_image

__all__ = ["ADE20K", "ADE20K_CLASSES", "CocoDetection", "SHAPES_CLASSES", "SegmentationFolder",
           "SegmentationTransform", "ShapesDetection", "ShapesSegmentation", "collate_detection",
           "create_dense_dataset", "shapes_main", "shapes_sample", "write_shapes_coco", "write_shapes_masks"]

IGNORE_INDEX = 255

SHAPES_CLASSES = ("ellipse", "triangle", "rectangle", "pentagon")

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

_SPLITS = ("train", "val")
_SHAPES_SIZES = {"segmentation": {"train": 2000, "val": 200}, "detection": {"train": 500, "val": 50}}


# --- generated shapes --------------------------------------------------------------------------------


def _smooth_field(rng: np.random.Generator, size: int, cells: int, amplitude: float) -> np.ndarray:
    """A smooth random colour field (size, size, 3) in [-amplitude, amplitude]: a coarse grid, upsampled."""
    grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32)
    return (field - 127.5) * (amplitude / 127.5)


def _texture(rng: np.random.Generator, colour: np.ndarray, ys: np.ndarray, xs: np.ndarray,
             period_range: tuple[float, float], size: int, centre: tuple[float, float], extent: float) -> np.ndarray:
    """``colour`` over the pixel grid (ys (h, 1), xs (1, w)) with a random linear gradient and maybe stripes.

    The gradient changes the colour by up to 60 per channel over ``extent`` pixels from ``centre`` (x, y);
    stripe periods are fractions of ``size``.
    """
    angle = rng.uniform(0, 2 * math.pi)
    along = ((xs - centre[0]) * math.cos(angle) + (ys - centre[1]) * math.sin(angle)) / extent  # (h, w)
    shift = rng.uniform(-60, 60, size=3).astype(np.float32)
    out = colour + along[..., None] * shift
    if rng.random() < 0.5:  # stripes of a random period, direction and tint
        period = rng.uniform(*period_range) * size
        angle = rng.uniform(0, 2 * math.pi)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
        tint = rng.uniform(-35, 35, size=3).astype(np.float32)
        out = out + np.sin(phase)[..., None] * tint
    return out


def _shape_polygon(rng: np.random.Generator, kind: int, cx: float, cy: float, radius: float) -> list:
    """Vertices (x, y) of a shape of class ``kind`` (index into SHAPES_CLASSES) inside a circle of ``radius``."""
    rot = rng.uniform(0, 2 * math.pi)
    if kind == 0:  # ellipse: a dense polygon, so that it can be rotated
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        a, b = radius, radius * rng.uniform(0.45, 1.0)
        px, py = a * np.cos(t), b * np.sin(t)
    elif kind == 1:  # triangle: three vertices on the circle, spread apart
        t = np.arange(3) * (2 * math.pi / 3) + rng.uniform(-0.35, 0.35, size=3)
        px, py = radius * np.cos(t), radius * np.sin(t)
    elif kind == 2:  # rectangle
        a, b = radius / math.sqrt(2), radius / math.sqrt(2) * rng.uniform(0.4, 1.0)
        px, py = np.array([-a, a, a, -a]), np.array([-b, -b, b, b])
    else:  # regular pentagon
        t = np.arange(5) * (2 * math.pi / 5)
        px, py = radius * np.cos(t), radius * np.sin(t)
    c, s = math.cos(rot), math.sin(rot)
    return list(zip((cx + c * px - s * py).tolist(), (cy + s * px + c * py).tolist()))


def shapes_sample(size: int, seed: int, index: int) -> tuple[np.ndarray, list[dict]]:
    """One generated image and its instances: ``(uint8 image (size, size, 3), [dict(category_id, mask)])``.

    A textured background (smooth colour gradients and blobs, maybe stripes) with 1 to 6 filled
    shapes of the classes :data:`SHAPES_CLASSES` (``category_id`` 1..4), each 8% to 40% of the
    image across, rotated, with a textured colour, drawn in order so that later shapes occlude
    earlier ones; pixel noise over everything. ``mask`` is the bool (size, size) map of the
    shape's VISIBLE pixels, so the masks are disjoint. A shape whose visible part is smaller than
    0.5% of the image (and at least 20 pixels) is not drawn at all, and the visibility of the
    others is worked out again, so that every painted shape pixel belongs to an instance.
    Instances are in drawing order. Deterministic in ``(seed, index)``: the same layout, scaled,
    at every ``size`` (32 to 2048).
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 32 <= size <= 2048:
        raise DataError(f"shapes: size expected an int from 32 to 2048, got {size!r}")
    size = int(size)
    rng = np.random.default_rng([seed, index])
    ys = np.arange(size, dtype=np.float32)[:, None]
    xs = np.arange(size, dtype=np.float32)[None, :]

    # background: a gradient between random colours, smooth colour blobs, maybe stripes
    base = rng.uniform(30, 225, size=3).astype(np.float32)
    image = _texture(rng, base, ys, xs, (0.03, 0.15), size, (size / 2, size / 2), size / 2)
    image += _smooth_field(rng, size, int(rng.integers(2, 7)), rng.uniform(15, 60))

    # shapes: full masks first, then who is visible where
    min_area = max(20, 0.005 * size * size)
    shapes = []
    for _ in range(int(rng.integers(1, 7))):
        kind = int(rng.integers(len(SHAPES_CLASSES)))
        radius = rng.uniform(0.08, 0.40) * size / 2
        cx, cy = rng.uniform(0.5 * radius, size - 0.5 * radius, size=2)
        poly = _shape_polygon(rng, kind, cx, cy, radius)
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon(poly, fill=1)
        full = np.asarray(canvas, dtype=bool)
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        shapes.append(dict(kind=kind, full=full, colour=colour, centre=(cx, cy), radius=radius,
                           tex_rng=int(rng.integers(2 ** 31))))
    kept = [s for s in shapes if s["full"].any()]
    while True:  # dropping a shape only uncovers the others: repeat until every one left is large enough
        owner = np.zeros((size, size), dtype=np.uint8)
        for i, s in enumerate(kept, 1):
            owner[s["full"]] = i
        areas = np.bincount(owner.ravel(), minlength=len(kept) + 1)[1:]
        if (areas >= min_area).all():
            break
        kept = [s for s, a in zip(kept, areas) if a >= min_area]

    instances = []
    for i, s in enumerate(kept, 1):
        visible = owner == i
        rows, cols = np.nonzero(visible.any(1))[0], np.nonzero(visible.any(0))[0]
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        tex = _texture(np.random.default_rng(s["tex_rng"]), s["colour"], ys[y0:y1], xs[:, x0:x1],
                       (0.02, 0.08), size, s["centre"], s["radius"])
        sub = visible[y0:y1, x0:x1]
        image[y0:y1, x0:x1][sub] = tex[sub]
        instances.append(dict(category_id=s["kind"] + 1, mask=visible))
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(3, 14)
    return np.clip(image, 0, 255).astype(np.uint8), instances


def _check_split(name: str, split: str) -> None:
    if split not in _SPLITS:
        raise DataError(f"{name}: split expected 'train' or 'val', got {split!r}")


def _shapes_seed(seed: int, split: str) -> int:
    """The generator seed of a split: train and val never share an image (for any seed)."""
    return 2 * int(seed) + (split == "val")


def _shapes_count(task: str, split: str, num_samples: int | None) -> int:
    if num_samples is None:
        return _SHAPES_SIZES[task][split]
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise DataError(f"shapes: num_samples expected a positive int, got {num_samples!r}")
    return int(num_samples)


def _limit(num_samples: int | None) -> int | None:
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer))
                                    or num_samples < 1):
        raise DataError(f"num_samples expected a positive int or None, got {num_samples!r}")
    return num_samples


def _image_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


class ShapesSegmentation(torch.utils.data.Dataset):
    """Generated semantic segmentation (:func:`shapes_sample`): label 0 background, shape class k -> k.

    ``train`` holds 2000 images and ``val`` 200 by default (``num_samples`` sets the count); the two
    splits draw from separate seeds. Images are drawn in ``__getitem__`` (about 3 ms at 128 px),
    the same for the same index every time.
    """

    def __init__(self, split: str = "train", img_size: int = 128, num_samples: int | None = None, seed: int = 0):
        _check_split("shapes", split)
        if isinstance(img_size, bool) or not isinstance(img_size, int) or not 32 <= img_size <= 2048:
            raise DataError(f"shapes: img_size expected an int from 32 to 2048, got {img_size!r}")
        self.split, self.img_size, self.seed = split, img_size, seed
        self.num_samples = _shapes_count("segmentation", split, num_samples)
        self.classes = ["background", *SHAPES_CLASSES]
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        image, instances = shapes_sample(self.img_size, _shapes_seed(self.seed, self.split), index % self.num_samples)
        mask = np.zeros(image.shape[:2], dtype=np.int64)
        for inst in instances:
            mask[inst["mask"]] = inst["category_id"]
        return _image_tensor(image), torch.from_numpy(mask)


# --- segmentation folders ----------------------------------------------------------------------------


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
        if _limit(num_samples) is not None:
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
        return _image_tensor(image), torch.from_numpy(labels)

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


# --- segmentation transform --------------------------------------------------------------------------


class SegmentationTransform:
    """``(uint8 image (3, H, W), label mask (H, W)) -> (normalised float image, int64 mask)``, aligned.

    Training (mmseg's recipe, without photometric changes): rescale by a random factor ``f`` in
    ``scale`` so that the short side becomes ``crop_size * f`` (the long side at most four times
    that, keeping the aspect), take a random ``crop_size`` square (padding the bottom and right
    with 0 in the image and 255 in the mask where the image is smaller), flip horizontally with
    probability ``hflip``. Evaluation: resize the short side to ``resize_short`` if given (keeping
    the aspect), nothing else. Images are resized bilinearly (antialiased), masks by nearest
    neighbour on the same pixel centres. Random draws use torch's generator (seeded per worker).
    """

    def __init__(self, train: bool, crop_size: int, scale: tuple[float, float] = (0.5, 2.0), hflip: float = 0.5,
                 mean: tuple = IMAGENET_DEFAULT_MEAN, std: tuple = IMAGENET_DEFAULT_STD,
                 resize_short: int | None = None):
        if not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"SegmentationTransform: crop_size expected a positive int, got {crop_size!r}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"SegmentationTransform: scale expected (low, high) with 0 < low <= high, got {scale!r}")
        self.train, self.crop_size, self.scale, self.hflip = train, crop_size, tuple(scale), hflip
        self.mean, self.std, self.resize_short = list(mean), list(std), resize_short

    def __repr__(self) -> str:
        return (f"SegmentationTransform(train={self.train}, crop_size={self.crop_size}, scale={self.scale}, "
                f"hflip={self.hflip}, resize_short={self.resize_short})")

    @staticmethod
    def _resize(image: torch.Tensor, mask: torch.Tensor, h: int, w: int):
        if (h, w) == tuple(image.shape[-2:]):
            return image, mask
        image = TF.resize(image, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        mask = TF.resize(mask[None], [h, w], interpolation=TF.InterpolationMode.NEAREST_EXACT)[0]
        return image, mask

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or mask.shape != image.shape[1:]:
            raise ValueError(f"SegmentationTransform: expected an image (3, H, W) and a mask (H, W), got "
                             f"{tuple(image.shape)} and {tuple(mask.shape)}")
        mask = mask.to(torch.int64)
        h, w = image.shape[-2:]
        if self.train:
            lo, hi = self.scale
            target = self.crop_size * (lo + (hi - lo) * torch.rand(()).item())
            s = min(target / min(h, w), 4 * target / max(h, w))
            image, mask = self._resize(image, mask, max(1, round(h * s)), max(1, round(w * s)))
            h, w = image.shape[-2:]
            c = self.crop_size
            if h < c or w < c:  # pad right and bottom
                pad = [0, 0, max(0, c - w), max(0, c - h)]
                image, mask = TF.pad(image, pad, fill=0), TF.pad(mask[None], pad, fill=IGNORE_INDEX)[0]
                h, w = image.shape[-2:]
            top = int(torch.randint(h - c + 1, ()).item())
            left = int(torch.randint(w - c + 1, ()).item())
            image, mask = image[:, top:top + c, left:left + c], mask[top:top + c, left:left + c]
            if torch.rand(()).item() < self.hflip:
                image, mask = image.flip(-1), mask.flip(-1)
        elif self.resize_short:
            s = self.resize_short / min(h, w)
            image, mask = self._resize(image, mask, max(1, round(h * s)), max(1, round(w * s)))
        image = TF.to_dtype(image, torch.float32, scale=True)
        image = TF.normalize(image, self.mean, self.std)
        return image.contiguous(), mask.contiguous()


# --- detection -----------------------------------------------------------------------------------------


def _quiet(fn, *args):
    """Calls a pycocotools function without its progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO's ``[x, y, w, h]`` of a mask: the pixel extent (a one-pixel mask is 1 x 1)."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def _shapes_coco_dict(samples: list[tuple[int, str, int, list[dict]]]) -> dict:
    """The COCO instances dict of generated images: ``samples`` are ``(image_id, file_name, size, instances)``."""
    from pycocotools import mask as mask_util

    images, annotations = [], []
    for image_id, file_name, size, instances in samples:
        images.append(dict(id=image_id, file_name=file_name, height=size, width=size))
        for inst in instances:
            m = inst["mask"]
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=int(inst["category_id"]),
                                    bbox=_mask_bbox(m), area=float(m.sum()), iscrowd=0, segmentation=rle))
    categories = [dict(id=i, name=name, supercategory="shape") for i, name in enumerate(SHAPES_CLASSES, 1)]
    return dict(info=dict(description="visionssm generated shapes", version="1.0"), licenses=[],
                images=images, annotations=annotations, categories=categories)


def _coco_from_dict(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def write_shapes_coco(out_dir: str, split: str = "train", num_images: int = 100, img_size: int = 128,
                      seed: int = 0) -> str:
    """Writes the generated shapes as a COCO tree; returns the path of the instances JSON.

    ``out_dir/<split>/<image id, 6 digits>.png`` and ``out_dir/annotations/instances_<split>.json``
    (RLE masks, categories 1..4 of :data:`SHAPES_CLASSES`). Image ids are 1..num_images and image
    ``i`` is sample ``i - 1`` of ``ShapesSegmentation(split, img_size, seed=seed)``. The JSON is
    written atomically.
    """
    _check_split("shapes", split)
    num_images = _shapes_count("detection", split, num_images)
    image_dir, ann_dir = os.path.join(out_dir, split), os.path.join(out_dir, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    samples = []
    for index in range(num_images):
        image, instances = shapes_sample(img_size, _shapes_seed(seed, split), index)
        file_name = f"{index + 1:06d}.png"
        Image.fromarray(image).save(os.path.join(image_dir, file_name))
        samples.append((index + 1, file_name, img_size, instances))
    path = os.path.join(ann_dir, f"instances_{split}.json")
    fd, tmp = tempfile.mkstemp(dir=ann_dir, prefix=f".instances_{split}.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_shapes_coco_dict(samples), f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path


def write_shapes_masks(out_dir: str, split: str = "train", num_images: int | None = None, img_size: int = 128,
                       seed: int = 0) -> str:
    """Writes the generated shapes in the :class:`SegmentationFolder` layout; returns ``out_dir``.

    ``out_dir/images/<split>/<6 digits>.png``, ``out_dir/masks/<split>/<6 digits>.png`` (labels as
    pixel values) and ``out_dir/classes.txt``: the images of ``write_shapes_coco`` (same names), so
    one folder serves both tasks.
    """
    ds = ShapesSegmentation(split, img_size, num_images, seed)
    image_dir, mask_dir = os.path.join(out_dir, "images", split), os.path.join(out_dir, "masks", split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    for index in range(len(ds)):
        image, mask = ds[index]
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(os.path.join(image_dir, f"{index + 1:06d}.png"))
        Image.fromarray(mask.numpy().astype(np.uint8)).save(os.path.join(mask_dir, f"{index + 1:06d}.png"))
    with open(os.path.join(out_dir, "classes.txt"), "w") as f:
        f.write("\n".join(ds.classes) + "\n")
    return out_dir


def shapes_main(argv: list[str] | None = None) -> int:
    """``visionssm shapes``: the generated set on disk, as COCO instances and as image + mask folders."""
    import argparse

    p = argparse.ArgumentParser(prog="visionssm shapes", description=shapes_main.__doc__.split(": ", 1)[1])
    p.add_argument("--out", required=True, help="folder to write (train/, val/, annotations/, images/, masks/)")
    p.add_argument("--num-images", type=int, nargs=2, default=(500, 50), metavar=("TRAIN", "VAL"))
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for split, n in zip(("train", "val"), args.num_images):
        if n < 1:
            p.error(f"--num-images: expected positive counts, got {n} for {split}")
        ann = write_shapes_coco(args.out, split, n, args.img_size, args.seed)
        write_shapes_masks(args.out, split, n, args.img_size, args.seed)
        print(f"{split}: {n} images of {args.img_size} px, {ann}, {os.path.join(args.out, 'masks', split)}")
    return 0


def _target(boxes, labels, masks, image_id: int, h: int, w: int) -> dict:
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


class _DetectionBase(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return len(self.image_ids)

    def _augment(self, image: torch.Tensor, target: dict):
        if self.train and self.hflip > 0 and torch.rand(()).item() < self.hflip:
            return _hflip(image, target)
        return image, target


class CocoDetection(_DetectionBase):
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
            self.coco = _quiet(COCO, ann_file)
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
        if _limit(num_samples) is not None:
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
        target = _target(boxes, labels, masks, image_id, h, w)
        image = TF.to_dtype(_image_tensor(image), torch.float32, scale=True)
        return self._augment(image, target)


class ShapesDetection(_DetectionBase):
    """Generated detection / instance segmentation: the images and instances of :func:`write_shapes_coco`.

    No files: images are drawn in ``__getitem__``, and ``coco`` (the same content the JSON holds)
    is built in memory on first use. ``train`` holds 500 images, ``val`` 50 by default. ``train``
    (horizontal flips) defaults to ``split == "train"``.
    """

    def __init__(self, split: str = "train", img_size: int = 128, num_samples: int | None = None, seed: int = 0,
                 train: bool | None = None, hflip: float = 0.5):
        _check_split("shapes", split)
        if isinstance(img_size, bool) or not isinstance(img_size, int) or not 32 <= img_size <= 2048:
            raise DataError(f"shapes: img_size expected an int from 32 to 2048, got {img_size!r}")
        self.split, self.img_size, self.seed = split, img_size, seed
        self.num_samples = _shapes_count("detection", split, num_samples)
        self.train = split == "train" if train is None else bool(train)
        self.hflip = hflip
        self.classes = list(SHAPES_CLASSES)
        self.num_classes = len(self.classes)
        self.label_to_cat = {i: i for i in range(1, self.num_classes + 1)}
        self.image_ids = list(range(1, self.num_samples + 1))
        self._coco = None

    @property
    def coco(self):
        """The ground truth as a pycocotools COCO object (drawn once, on first use)."""
        if self._coco is None:
            samples = [(i + 1, f"{i + 1:06d}.png", self.img_size,
                        shapes_sample(self.img_size, _shapes_seed(self.seed, self.split), i)[1])
                       for i in range(self.num_samples)]
            self._coco = _coco_from_dict(_shapes_coco_dict(samples))
        return self._coco

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        image, instances = shapes_sample(self.img_size, _shapes_seed(self.seed, self.split), image_id - 1)
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (_mask_bbox(inst["mask"]) for inst in instances)]
        labels = [inst["category_id"] for inst in instances]
        target = _target(boxes, labels, [inst["mask"] for inst in instances], image_id, image.shape[0],
                         image.shape[1])
        image = TF.to_dtype(_image_tensor(image), torch.float32, scale=True)
        return self._augment(image, target)


def collate_detection(batch):
    """``[(image, target), ...] -> ([images], [targets])``: detection images differ in size, so no stacking."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


# --- entry point -----------------------------------------------------------------------------------


def _find_coco(data: str, split: str) -> tuple[str, str] | None:
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


def create_dense_dataset(task: str, data: str, split: str, img_size: int | None = None,
                         num_samples: int | None = None, seed: int = 0):
    """A dense prediction data set from a name or a folder's layout.

    ``task`` is ``"segmentation"`` or ``"detection"``. ``data`` is ``"shapes"`` (generated at
    ``img_size``, default 128) or a folder:

    * segmentation: an ADE20K tree (``ADEChallengeData2016`` or its parent, or any folder with
      ``images/training``), or ``images/<split>`` with ``masks/<split>`` (:class:`SegmentationFolder`);
    * detection: a COCO tree, ``annotations/instances_<split>*.json`` with the image folder of the
      same suffix (``train2017/`` for ``instances_train2017.json``); flips when ``split == "train"``.

    ``img_size`` only applies to ``shapes`` (for folders the transform sets the size).
    ``num_samples`` keeps the first N images (for ``shapes``: draws N).
    """
    if task not in ("segmentation", "detection"):
        raise ValueError(f"task expected 'segmentation' or 'detection', got {task!r}")
    if data == "shapes":
        cls = ShapesSegmentation if task == "segmentation" else ShapesDetection
        return cls(split, img_size or 128, num_samples, seed)
    if isinstance(data, (str, os.PathLike)) and not os.path.isdir(data) and (
            os.sep in os.fspath(data) or os.fspath(data).startswith((".", "~"))):
        raise DataError(f"--data: data folder {os.fspath(data)!r} does not exist")
    if not isinstance(data, (str, os.PathLike)) or not os.path.isdir(data):
        raise DataError(f"--data: {data!r} is neither the built-in data set 'shapes' nor an existing folder")
    data = os.fspath(data)
    if task == "segmentation":
        if (os.path.basename(os.path.normpath(data)) == "ADEChallengeData2016"
                or os.path.isdir(os.path.join(data, "ADEChallengeData2016"))
                or os.path.isdir(os.path.join(data, "images", "training"))):
            return ADE20K(data, split, num_samples=num_samples)
        if os.path.isdir(os.path.join(data, "images", split)) and os.path.isdir(os.path.join(data, "masks", split)):
            return SegmentationFolder(data, split, num_samples=num_samples)
        raise DataError(
            f"segmentation data {data!r}: unknown layout; expected one of: an ADE20K tree "
            f"(ADEChallengeData2016/images/{{training,validation}} with annotations/{{training,validation}}, "
            f"given as the ADEChallengeData2016 folder or its parent); a folder with images/{split}/<name>.<ext> "
            f"and masks/{split}/<name>.png (label PNGs, 255 = ignore) and classes.txt; or the built-in 'shapes'")
    found = _find_coco(data, split)
    if found is None:
        raise DataError(
            f"detection data {data!r}: unknown layout; expected a COCO tree (annotations/instances_{split}.json or "
            f"instances_{split}2017.json, with the images in {split}/ or {split}2017/), or the built-in 'shapes'")
    img_dir, ann_file = found
    return CocoDetection(img_dir, ann_file, train=split == "train", num_samples=num_samples)
