"""Data sets for dense prediction: semantic segmentation, and detection / instance segmentation.

Segmentation sets yield ``(image, mask)``: a uint8 image tensor (3, H, W) and an int64 label map
(H, W) with the labels ``0 .. num_classes - 1`` and 255 for pixels to ignore.
:class:`SegmentationTransform` (:mod:`~visionssm.dense.transforms`) turns such a pair into a
normalised training or evaluation input.

* ``shapes`` (:class:`ShapesSegmentation`, :mod:`~visionssm.dense.shapes`): generated, no
  download: textured backgrounds with up to six filled ellipses, triangles, rectangles and
  pentagons that occlude each other (:func:`shapes_sample`); label 0 is the background, a class
  like the others;
* :class:`ADE20K` (:mod:`~visionssm.dense.segmentation_data`): the ``ADEChallengeData2016`` tree as
  distributed (150 classes, annotation 0 "other" ignored by default, as mmseg does);
* :class:`SegmentationFolder`: ``root/images/<split>/*`` with ``root/masks/<split>/*.png``
  (single-channel label PNGs) and the class names in ``root/classes.txt``.

Detection sets (:mod:`~visionssm.dense.detection_data`) yield ``(image, target)`` in torchvision's
detection format and carry their ground truth as a ``pycocotools`` COCO object:

* ``shapes`` (:class:`ShapesDetection`): the same generated images, one instance per visible shape;
  :func:`write_shapes_coco` (:mod:`~visionssm.dense.shapes_files`, the ``visionssm shapes``
  command) writes them as a COCO tree (PNG images and an instances JSON);
* :class:`CocoDetection`: any COCO instances file with its image folder.

:func:`create_dense_dataset` picks one of them from a name or a folder's layout; this module also
gathers the public names of the others, so ``from visionssm.dense.data import ...`` finds them all.
"""

from __future__ import annotations

import os

from visionssm.data import DataError
from visionssm.dense.detection_data import CocoDetection, collate_detection, find_coco
from visionssm.dense.samples import IGNORE_INDEX
from visionssm.dense.segmentation_data import ADE20K, ADE20K_CLASSES, SegmentationFolder
from visionssm.dense.shapes import SHAPES_CLASSES, ShapesDetection, ShapesSegmentation, shapes_sample
from visionssm.dense.shapes_files import shapes_main, write_shapes_coco, write_shapes_masks
from visionssm.dense.transforms import SegmentationTransform

__all__ = ["ADE20K", "ADE20K_CLASSES", "CocoDetection", "IGNORE_INDEX", "SHAPES_CLASSES", "SegmentationFolder",
           "SegmentationTransform", "ShapesDetection", "ShapesSegmentation", "collate_detection",
           "create_dense_dataset", "shapes_main", "shapes_sample", "write_shapes_coco", "write_shapes_masks"]


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
    found = find_coco(data, split)
    if found is None:
        raise DataError(
            f"detection data {data!r}: unknown layout; expected a COCO tree (annotations/instances_{split}.json or "
            f"instances_{split}2017.json, with the images in {split}/ or {split}2017/), or the built-in 'shapes'")
    img_dir, ann_file = found
    return CocoDetection(img_dir, ann_file, train=split == "train", num_samples=num_samples)
