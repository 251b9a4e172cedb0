"""The generated ``shapes`` set: no download, any size from 32 to 2048 px.

:func:`shapes_sample` draws one image: a textured background with up to six filled ellipses,
triangles, rectangles and pentagons that occlude each other. :class:`ShapesSegmentation` labels
its pixels (0 is the background, a class like the others); :class:`ShapesDetection` gives one
instance per visible shape in torchvision's detection format, with the same COCO ground truth that
:func:`visionssm.dense.shapes_files.write_shapes_coco` writes to disk.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw

from visionssm.data import DataError
from visionssm.dense.detection_data import DetectionDataset, coco_from_dict, detection_target, mask_bbox
from visionssm.dense.samples import check_num_samples, check_split, image_tensor

__all__ = ["SHAPES_CLASSES", "ShapesDetection", "ShapesSegmentation", "shapes_sample"]

SHAPES_CLASSES = ("ellipse", "triangle", "rectangle", "pentagon")
SHAPES_SIZES = {"segmentation": {"train": 2000, "val": 200}, "detection": {"train": 500, "val": 50}}


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


def shapes_seed(seed: int, split: str) -> int:
    """The generator seed of a split: train and val never share an image (for any seed)."""
    return 2 * int(seed) + (split == "val")


def shapes_count(task: str, split: str, num_samples: int | None) -> int:
    if num_samples is None:
        return SHAPES_SIZES[task][split]
    return int(check_num_samples(num_samples, "shapes"))


def _check_split_and_size(split: str, img_size: int) -> None:
    check_split("shapes", split)
    if isinstance(img_size, bool) or not isinstance(img_size, int) or not 32 <= img_size <= 2048:
        raise DataError(f"shapes: img_size expected an int from 32 to 2048, got {img_size!r}")


class ShapesSegmentation(torch.utils.data.Dataset):
    """Generated semantic segmentation (:func:`shapes_sample`): label 0 background, shape class k -> k.

    ``train`` holds 2000 images and ``val`` 200 by default (``num_samples`` sets the count); the two
    splits draw from separate seeds. Images are drawn in ``__getitem__`` (about 3 ms at 128 px),
    the same for the same index every time.
    """

    def __init__(self, split: str = "train", img_size: int = 128, num_samples: int | None = None, seed: int = 0):
        _check_split_and_size(split, img_size)
        self.split, self.img_size, self.seed = split, img_size, seed
        self.num_samples = shapes_count("segmentation", split, num_samples)
        self.classes = ["background", *SHAPES_CLASSES]
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        image, instances = shapes_sample(self.img_size, shapes_seed(self.seed, self.split), index % self.num_samples)
        mask = np.zeros(image.shape[:2], dtype=np.int64)
        for inst in instances:
            mask[inst["mask"]] = inst["category_id"]
        return image_tensor(image), torch.from_numpy(mask)


class ShapesDetection(DetectionDataset):
    """Generated detection / instance segmentation: the images and instances of
    :func:`~visionssm.dense.shapes_files.write_shapes_coco`.

    No files: images are drawn in ``__getitem__``, and ``coco`` (the same content the JSON holds)
    is built in memory on first use. ``train`` holds 500 images, ``val`` 50 by default. ``train``
    (horizontal flips) defaults to ``split == "train"``.
    """

    def __init__(self, split: str = "train", img_size: int = 128, num_samples: int | None = None, seed: int = 0,
                 train: bool | None = None, hflip: float = 0.5):
        _check_split_and_size(split, img_size)
        self.split, self.img_size, self.seed = split, img_size, seed
        self.num_samples = shapes_count("detection", split, num_samples)
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
                        shapes_sample(self.img_size, shapes_seed(self.seed, self.split), i)[1])
                       for i in range(self.num_samples)]
            self._coco = coco_from_dict(shapes_coco_dict(samples))
        return self._coco

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        image, instances = shapes_sample(self.img_size, shapes_seed(self.seed, self.split), image_id - 1)
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (mask_bbox(inst["mask"]) for inst in instances)]
        labels = [inst["category_id"] for inst in instances]
        target = detection_target(boxes, labels, [inst["mask"] for inst in instances], image_id,
                                  image.shape[0], image.shape[1])
        image = TF.to_dtype(image_tensor(image), torch.float32, scale=True)
        return self._augment(image, target)


def shapes_coco_dict(samples: list[tuple[int, str, int, list[dict]]]) -> dict:
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
                                    bbox=mask_bbox(m), area=float(m.sum()), iscrowd=0, segmentation=rle))
    categories = [dict(id=i, name=name, supercategory="shape") for i, name in enumerate(SHAPES_CLASSES, 1)]
    return dict(info=dict(description="visionssm generated shapes", version="1.0"), licenses=[],
                images=images, annotations=annotations, categories=categories)
