"""The generated ``shapes`` set written to disk (``visionssm shapes``): a COCO tree of PNG images with an
instances JSON, and the same images as a :class:`~visionssm.dense.segmentation_data.SegmentationFolder`."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np
from PIL import Image

from visionssm.dense.samples import check_split
from visionssm.dense.shapes import ShapesSegmentation, shapes_coco_dict, shapes_count, shapes_sample, shapes_seed

__all__ = ["shapes_main", "write_shapes_coco", "write_shapes_masks"]


def write_shapes_coco(out_dir: str, split: str = "train", num_images: int = 100, img_size: int = 128,
                      seed: int = 0) -> str:
    """Writes the generated shapes as a COCO tree; returns the path of the instances JSON.

    ``out_dir/<split>/<image id, 6 digits>.png`` and ``out_dir/annotations/instances_<split>.json``
    (RLE masks, categories 1..4 of :data:`SHAPES_CLASSES`). Image ids are 1..num_images and image
    ``i`` is sample ``i - 1`` of ``ShapesSegmentation(split, img_size, seed=seed)``. The JSON is
    written atomically.
    """
    check_split("shapes", split)
    num_images = shapes_count("detection", split, num_images)
    image_dir, ann_dir = os.path.join(out_dir, split), os.path.join(out_dir, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    samples = []
    for index in range(num_images):
        image, instances = shapes_sample(img_size, shapes_seed(seed, split), index)
        file_name = f"{index + 1:06d}.png"
        Image.fromarray(image).save(os.path.join(image_dir, file_name))
        samples.append((index + 1, file_name, img_size, instances))
    path = os.path.join(ann_dir, f"instances_{split}.json")
    fd, tmp = tempfile.mkstemp(dir=ann_dir, prefix=f".instances_{split}.", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(shapes_coco_dict(samples), f)
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
