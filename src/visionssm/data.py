"""Data sets for ``visionssm train``: an image folder, and two built-in sets that need no download.

* an ImageFolder tree: ``DATA/train/<class>/*.jpg`` and ``DATA/val/<class>/*.jpg``;
* ``digits``: the 1797 real 8x8 handwritten digits that scikit-learn ships, as RGB images
  (upsampled by the transform), with a fixed train/val split (300 held out);
* ``pathfinder``: the image idea of the Long Range Arena's Pathfinder/Path-X, generated on the fly:
  dashed curves, two of whose end points carry a marker disc; the label says whether one curve
  joins the two markers (1) or they sit on different curves (0). Any resolution from 32 to 256,
  deterministic by seed and index. Deciding it needs a receptive field as long as the curves.

Every set yields ``(PIL image, label)`` so timm's ``create_transform`` applies unchanged, and
carries ``classes`` (the class names) and ``defaults`` (input size, normalisation and the
augmentations that keep its labels true: no flips for digits, no crops for pathfinder).
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

BUILTIN = ("digits", "pathfinder")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

__all__ = ["BUILTIN", "DataError", "Digits", "ImageFolder", "Pathfinder", "create_dataset",
           "components", "pathfinder_sample", "read_image"]


class DataError(ValueError):
    """A data set that cannot be used as given (missing folder, empty class, unknown name)."""


@dataclass
class DataDefaults:
    """What a data set suggests for the flags left unset (None keeps timm's default)."""

    img_size: int | None = None
    mean: tuple | None = None
    std: tuple | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    aug: dict = field(default_factory=dict)  # create_transform keywords: scale, ratio, hflip, ...


# --- image folder --------------------------------------------------------------------------------


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with 16- and 32-bit integer images scaled to 8 bits (PIL's convert would clip them to white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else float(2**31 - 1)
        im = Image.fromarray(np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def read_image(path: str) -> Image.Image:
    """An image file as RGB; a DataError names a file that is missing or cannot be decoded."""
    try:
        with open(path, "rb") as f:
            im = Image.open(f)
            im.load()
    except FileNotFoundError:
        raise DataError(f"image {path!r} does not exist") from None
    except Exception as e:  # truncated, not an image, unsupported format
        raise DataError(f"image {path!r} cannot be read ({type(e).__name__}: {e}); remove or replace it, or "
                        "pass --skip-bad-images to leave out the unreadable images of a folder") from None
    return to_rgb(im)


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>``; the class list is the sorted sub-folders (or ``classes`` if given)."""

    def __init__(self, root: str, classes: list[str] | None = None):
        if not os.path.isdir(root):
            raise DataError(f"data folder {root!r} does not exist")
        found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not found:
            raise DataError(f"data folder {root!r} has no class sub-folders (expected {root}/<class>/<image>)")
        if classes is not None and found != list(classes):
            extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
            raise DataError(f"data folder {root!r}: its classes differ from the training split's "
                            f"(not in train: {extra}, missing here: {missing})")
        self.root, self.classes = root, found
        self.samples = []
        for label, name in enumerate(found):
            folder = os.path.join(root, name)
            files = sorted(
                os.path.join(dirpath, f)
                for dirpath, _, files in os.walk(folder, followlinks=True)
                for f in files if f.lower().endswith(IMG_EXTENSIONS))
            if not files:
                raise DataError(f"class folder {folder!r} holds no images (looked for {', '.join(IMG_EXTENSIONS)})")
            self.samples += [(f, label) for f in files]
        self.targets = [t for _, t in self.samples]
        self.defaults = DataDefaults()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return read_image(path), label

    def drop_unreadable(self, progress: bool = False) -> list[str]:
        """Decode every image and leave out those that cannot be read; return their paths."""
        samples = self.samples
        if progress:
            from tqdm import tqdm
            samples = tqdm(samples, desc=f"checking {self.root}", leave=False)
        bad = []
        for path, _ in samples:
            try:
                read_image(path)
            except DataError:
                bad.append(path)
        self.samples = [s for s in self.samples if s[0] not in set(bad)]
        self.targets = [t for _, t in self.samples]
        if not self.samples:
            raise DataError(f"data folder {self.root!r}: no image could be read")
        return bad


# --- digits ----------------------------------------------------------------------------------------


def _digits_table() -> np.ndarray:
    """scikit-learn's digits.csv.gz (what ``load_digits`` reads), without importing all of scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if path is None or not os.path.isfile(path):
        raise DataError("the 'digits' data set is the one scikit-learn ships: pip install scikit-learn")
    return np.loadtxt(path, delimiter=",")  # 1797 rows: 64 pixels (0..16), then the label


class Digits(torch.utils.data.Dataset):
    """scikit-learn's handwritten digits (UCI, 1797 images of 8x8, 10 classes), as RGB PIL images.

    The split is fixed: a permutation drawn with seed 0 holds out the last 300 images for ``val``.
    """

    VAL_SIZE = 300

    def __init__(self, split: str = "train"):
        if split not in ("train", "val"):
            raise DataError(f"digits: split expected 'train' or 'val', got {split!r}")
        table = _digits_table()
        order = np.random.RandomState(0).permutation(len(table))
        index = order[:-self.VAL_SIZE] if split == "train" else order[-self.VAL_SIZE:]
        images = table[index, :64].reshape(-1, 8, 8)
        self.images = np.round(images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
        self.targets = table[index, 64].astype(int).tolist()
        self.classes = [str(i) for i in range(10)]
        self.defaults = DataDefaults(
            img_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, interpolation="bilinear",
            aug=dict(scale=(0.7, 1.0), ratio=(0.85, 1.18), hflip=0.0, color_jitter=0.0))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]).convert("RGB"), self.targets[index]


# --- pathfinder ------------------------------------------------------------------------------------


def _pathfinder_geometry(size: int) -> dict:
    # lengths grow with the image: 256 px is the 32-px task drawn on 64 times the pixels (Path-X's idea)
    s = size / 32
    bridge = math.ceil((s + 1) / 2)  # a dilation by this joins the dashes of one curve ...
    return dict(
        width=1.0 * s,                    # stroke width
        dash=2.2 * s,                     # dash length (arc length)
        gap=1.0 * s,                      # gap between dashes
        step=0.8 * s,                     # walk step
        bridge=bridge,
        margin=2 * bridge + 2 + 1.6 * s,  # ... but never two curves, kept this far apart (centre lines)
        marker=1.6 * s,                   # marker disc radius
        length=0.7 * size,                # arc length of every curve
        curves=3,                         # curves per image, two of them carry the markers
        turn=0.3,                         # largest turn per step (radians): smooth curves
    )


def _walk(rng: np.random.Generator, taken: np.ndarray, size: int, geo: dict, tries: int = 40) -> list | None:
    """A smooth random curve of arc length ``geo['length']`` that keeps ``margin`` from ``taken``.

    It grows forwards from a random start and, if it runs into a wall or another curve, on from
    its other end; a curve that still falls short is drawn again.
    """
    n = int(geo["length"] / geo["step"])
    lo, hi = geo["marker"] + 0.5, size - 1.5 - geo["marker"]
    turns = np.linspace(-geo["turn"], geo["turn"], 9).tolist()

    def free(pts, x, y, a):
        nx, ny = x + geo["step"] * math.cos(a), y + geo["step"] * math.sin(a)
        return lo <= nx <= hi and lo <= ny <= hi and not taken[int(ny), int(nx)] \
            and not _near_self(pts, nx, ny, geo["margin"], geo["step"])

    def grow(pts, angle, steps):
        x, y = pts[-1]
        curvature = 0.0
        for _ in range(steps):
            curvature = min(max(curvature + rng.normal(0, geo["turn"] / 3), -geo["turn"]), geo["turn"])
            if not free(pts, x, y, angle + curvature):
                # steer away from walls and curves: the other turns, nearest to the drawn one first
                for c in sorted(turns, key=lambda t: abs(t - curvature)):
                    if free(pts, x, y, angle + c):
                        curvature = c
                        break
                else:
                    return pts
            angle += curvature
            x, y = x + geo["step"] * math.cos(angle), y + geo["step"] * math.sin(angle)
            pts.append((x, y))
        return pts

    for _ in range(tries):
        x, y = rng.uniform(lo, hi, size=2)
        if taken[int(y), int(x)]:
            continue
        angle = rng.uniform(0, 2 * math.pi)
        pts = grow([(x, y)], angle, n)
        if len(pts) <= n:  # stuck: carry on from the start, the other way
            (x0, y0), (x1, y1) = pts[0], pts[1] if len(pts) > 1 else (x + math.cos(angle), y + math.sin(angle))
            pts = grow(pts[::-1], math.atan2(y0 - y1, x0 - x1), n + 1 - len(pts))
        if len(pts) > n:
            return pts
    return None


def _near_self(pts: list, x: float, y: float, margin: float, step: float) -> bool:
    # a curve may not come back close to its own earlier part (that would look like a junction)
    m2 = margin * margin
    return any((px - x) ** 2 + (py - y) ** 2 < m2 for px, py in pts[:-(int(1.6 * margin / step) + 2)])


def _disc_mask(size: int, pts: list, radius: float) -> np.ndarray:
    """Pixels whose centre lies within ``radius`` of any point (a thick polyline when the points are dense)."""
    mask = np.zeros((size, size), dtype=bool)
    if not pts:
        return mask
    r = int(math.ceil(radius)) + 1
    dy, dx = (d.ravel() for d in np.mgrid[-r:r + 1, -r:r + 1])
    xy = np.asarray(pts, dtype=np.float64)
    rows = np.floor(xy[:, 1:2]).astype(np.int64) + dy  # (points, window)
    cols = np.floor(xy[:, 0:1]).astype(np.int64) + dx
    hit = ((cols + 0.5 - xy[:, 0:1]) ** 2 + (rows + 0.5 - xy[:, 1:2]) ** 2 <= radius * radius) \
        & (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    mask[rows[hit], cols[hit]] = True
    return mask


def _densify(pts: list, spacing: float = 0.35) -> list:
    out = []
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
        k = max(1, int(math.hypot(x1 - x0, y1 - y0) / spacing))
        out += [(x0 + (x1 - x0) * t / k, y0 + (y1 - y0) * t / k) for t in range(k)]
    return out + [pts[-1]]


def components(image: np.ndarray, bridge: int) -> np.ndarray:
    """Labels (1, 2, ...) of the lit pixels' groups once gaps up to ``2 * bridge + 1`` pixels are closed.

    The lit pixels grown by ``bridge`` in every direction (a square), then 8-connected labelling.
    """
    lit = image > 0
    grown = ndimage.binary_dilation(lit, structure=np.ones((2 * bridge + 1,) * 2, bool)) if bridge else lit
    labels, _ = ndimage.label(grown, structure=np.ones((3, 3), bool))
    return labels * lit


def pathfinder_sample(size: int, seed: int, index: int, label: int | None = None):
    """One Pathfinder image: ``(uint8 image (size, size), label, markers)``.

    ``markers`` are the two marker centres as (row, col). In a positive (label 1) they sit on the
    two ends of one curve; in a negative on the ends of two different curves. Every curve has the
    same length, and the curves keep apart by much more than a dash gap: the generator checks by
    flood fill (:func:`components`) that each curve is one group and that no two touch.
    Deterministic in ``(size, seed, index, label)``.
    """
    if not isinstance(size, int) or not 32 <= size <= 256:
        raise DataError(f"pathfinder: img_size expected an int from 32 to 256, got {size!r}")
    rng = np.random.default_rng([seed, index, size])
    label = int(rng.integers(2)) if label is None else int(label)
    geo = _pathfinder_geometry(size)
    period = geo["dash"] + geo["gap"]
    for _ in range(50):  # redraw the whole picture in the rare case it does not fit or check
        taken = np.zeros((size, size), dtype=bool)
        curves = []
        for _c in range(geo["curves"]):
            pts = _walk(rng, taken, size, geo)
            if pts is None:
                break
            curves.append(pts)
            taken |= _disc_mask(size, _densify(pts, geo["margin"] / 3), geo["margin"])
        if len(curves) < geo["curves"]:
            continue
        image = np.zeros((size, size), dtype=bool)
        for pts in curves:
            dense = _densify(pts, max(0.35, geo["width"] / 4))
            arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(np.array(dense), axis=0).T))])
            # the first dash starts at the curve's start, the last ends at its end: the markers cover them
            phase = rng.uniform(0, geo["gap"])
            image |= _disc_mask(size, [p for p, s in zip(dense, arc) if (s + phase) % period < geo["dash"]],
                                geo["width"] / 2)
        ends = [curves[0][0], curves[0][-1]] if label == 1 else [curves[0][0], curves[1][-1]]
        image |= _disc_mask(size, ends, geo["marker"])
        markers = [(int(y), int(x)) for x, y in ends]
        # every curve one group, apart from the others: what a flood fill sees is what the label says
        labels = components(image, geo["bridge"])
        if labels.max() == len(curves) and (labels[markers[0]] == labels[markers[1]]) == bool(label):
            return image.astype(np.uint8) * 255, label, markers
    raise RuntimeError(f"pathfinder: could not draw image {index} at size {size} (seed {seed})")


_PATHFINDER_CACHE: dict = {}


class Pathfinder(torch.utils.data.Dataset):
    """Procedural Pathfinder: ``num_samples`` images of ``img_size`` pixels, drawn when it is built.

    Labels alternate (index % 2), so every split is balanced; ``train`` and ``val`` draw from
    separate seed streams, so they never share an image. Drawing takes about 4 ms an image at
    32 and 64 pixels and 40 ms at 256 on one core.
    """

    def __init__(self, split: str = "train", img_size: int = 32, num_samples: int | None = None, seed: int = 0,
                 progress: bool = False):
        if split not in ("train", "val"):
            raise DataError(f"pathfinder: split expected 'train' or 'val', got {split!r}")
        if not isinstance(img_size, int) or not 32 <= img_size <= 256:
            raise DataError(f"pathfinder: img_size expected an int from 32 to 256, got {img_size!r}")
        self.num_samples = num_samples or (20000 if split == "train" else 2000)
        self.img_size, self.seed = img_size, seed * 2 + (split == "val")
        self.classes = ["disconnected", "connected"]
        self.targets = [i % 2 for i in range(self.num_samples)]
        indices = range(self.num_samples)
        if progress:
            from tqdm import tqdm
            indices = tqdm(indices, desc=f"drawing pathfinder {split} ({img_size} px)", leave=False)
        key = (img_size, self.seed, self.num_samples)
        if key not in _PATHFINDER_CACHE:  # drawn once per process (a benchmark builds it many times)
            if len(_PATHFINDER_CACHE) >= 4:
                _PATHFINDER_CACHE.pop(next(iter(_PATHFINDER_CACHE)))
            _PATHFINDER_CACHE[key] = np.stack([pathfinder_sample(img_size, self.seed, i, label=i % 2)[0]
                                               for i in indices])
        self.images = _PATHFINDER_CACHE[key]
        self.defaults = DataDefaults(
            img_size=img_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0, interpolation="nearest",
            # flips keep connectivity; crops could cut a marker off
            aug=dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, vflip=0.5, color_jitter=0.0))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]).convert("RGB"), self.targets[index]


# --- entry point -----------------------------------------------------------------------------------


def create_dataset(data: str, split: str, img_size: int | None = None, num_samples: int | None = None,
                   split_dir: str | None = None, classes: list[str] | None = None, seed: int = 0,
                   progress: bool = False, skip_bad_images: bool = False):
    """``data`` is a built-in name (``digits``, ``pathfinder``) or a folder with ``train/`` and ``val/``.

    ``num_samples`` keeps N samples of a split: of a folder a random subset drawn with ``seed``
    (not the first classes), of digits the first N of its fixed shuffled order, of pathfinder
    N generated ones. ``skip_bad_images`` (folders) decodes every image first and leaves out, with
    a warning listing them, those that cannot be read.
    """
    if num_samples is not None and num_samples < 1:
        raise DataError(f"num_samples: expected an int >= 1, got {num_samples}")
    if data == "digits":
        ds = Digits(split)
    elif data == "pathfinder":
        return Pathfinder(split, img_size or 32, num_samples, seed, progress)
    elif os.path.isdir(data):
        sub = os.path.join(data, split_dir or split)
        if not os.path.isdir(sub):
            raise DataError(f"data folder {data!r} has no {split_dir or split!r} sub-folder (expected "
                            f"{os.path.join(data, 'train')} and {os.path.join(data, 'val')}, each with one "
                            f"folder per class)")
        ds = ImageFolder(sub, classes)
        if skip_bad_images:
            bad = ds.drop_unreadable(progress)
            if bad:
                print(f"warning: left out {len(bad)} unreadable image(s) of {sub}: {', '.join(bad[:5])}"
                      + (", ..." if len(bad) > 5 else ""), file=sys.stderr)
    elif os.sep in data or data.startswith((".", "~")):
        raise DataError(f"data folder {data!r} does not exist")
    else:
        raise DataError(f"--data: {data!r} is neither a built-in data set {list(BUILTIN)} nor an existing folder")
    if num_samples is not None and num_samples < len(ds):
        if isinstance(ds, ImageFolder):  # sorted by class: a random subset, not the first classes
            keep = np.sort(np.random.RandomState(seed % 2**32).permutation(len(ds))[:num_samples]).tolist()
        else:
            keep = list(range(num_samples))
        sub = torch.utils.data.Subset(ds, keep)
        sub.classes, sub.defaults, sub.targets = ds.classes, ds.defaults, [ds.targets[i] for i in keep]
        return sub
    return ds
