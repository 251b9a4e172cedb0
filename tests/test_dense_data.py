"""Dense prediction data: generated shapes, ADE20K / folder segmentation trees, COCO detection, transforms."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionssm.data import DataError
from visionssm.dense.data import create_dense_dataset
from visionssm.dense.detection_data import CocoDetection, collate_detection
from visionssm.dense.segmentation_data import ADE20K, ADE20K_CLASSES, SegmentationFolder
from visionssm.dense.shapes import SHAPES_CLASSES, ShapesDetection, ShapesSegmentation, shapes_sample
from visionssm.dense.shapes_files import write_shapes_coco
from visionssm.dense.transforms import SegmentationTransform

# pycocotools' mask decoding trips a NumPy 2 deprecation notice inside pycocotools itself
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def extent(mask) -> list[int]:
    """[x0, y0, x1, y1] of a mask's pixels, x1 and y1 exclusive."""
    mask = np.asarray(mask).astype(bool)
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_coco")
    return str(root), write_shapes_coco(str(root), split="val", num_images=6, img_size=64, seed=3)


# --- generated shapes --------------------------------------------------------------------------------


def test_shapes_sample_is_deterministic_and_its_masks_are_the_visible_parts():
    seen = []
    for index in range(10):
        image, instances = shapes_sample(64, seed=5, index=index)
        again, instances2 = shapes_sample(64, seed=5, index=index)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert np.array_equal(image, again) and len(instances) == len(instances2)
        assert all(np.array_equal(a["mask"], b["mask"]) for a, b in zip(instances, instances2))
        assert len(instances) <= 6
        assert image.reshape(-1, 3).std(0).max() > 5  # textured, not one colour
        cover = np.zeros((64, 64), dtype=int)
        for inst in instances:
            m = inst["mask"]
            assert m.shape == (64, 64) and m.dtype == bool
            assert inst["category_id"] in range(1, len(SHAPES_CLASSES) + 1)
            assert m.sum() >= 20
            cover += m
        assert cover.max() <= 1  # visible parts are disjoint
        seen.append(image)
    assert all(not np.array_equal(seen[0], other) for other in seen[1:])
    assert sum(len(shapes_sample(64, 5, i)[1]) for i in range(10)) >= 15  # most images hold several shapes
    assert not np.array_equal(shapes_sample(64, 6, 0)[0], seen[0])  # the seed matters
    image, _ = shapes_sample(32, 0, 0)
    assert image.shape == (32, 32, 3)
    with pytest.raises(DataError, match="size"):
        shapes_sample(16, 0, 0)


def test_shapes_later_shapes_occlude_earlier_ones():
    # somewhere in a few images one shape covers part of another: the later one keeps the shared pixels
    occluded = 0
    for index in range(30):
        _, instances = shapes_sample(64, seed=1, index=index)
        for inst in instances:
            m = inst["mask"]
            x0, y0, x1, y1 = extent(m)
            occluded += m[y0:y1, x0:x1].mean() < 0.3  # a sliver: cut by a later shape or the border
    assert occluded > 0


def test_shapes_segmentation():
    train = ShapesSegmentation("train", img_size=64, num_samples=4, seed=2)
    val = ShapesSegmentation("val", img_size=64, num_samples=4, seed=2)
    assert len(train) == 4 and train.classes == ["background", *SHAPES_CLASSES] and train.num_classes == 5
    assert len(ShapesSegmentation("train")) == 2000 and len(ShapesSegmentation("val")) == 200
    for index in range(4):
        image, mask = train[index]
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        assert mask.shape == (64, 64) and mask.dtype == torch.int64
        assert 0 <= mask.min() and mask.max() < 5
        # the semantic mask is the union of the instances of the same sample (train seed 2 -> generator seed 4)
        raw, instances = shapes_sample(64, 4, index)
        assert np.array_equal(image.permute(1, 2, 0).numpy(), raw)
        expected = np.zeros((64, 64), dtype=np.int64)
        for inst in instances:
            expected[inst["mask"]] = inst["category_id"]
        assert np.array_equal(mask.numpy(), expected)
        assert not torch.equal(image, val[index][0])  # train and val never share an image
    assert torch.equal(train[1][1], train[1][1])
    with pytest.raises(DataError, match="split"):
        ShapesSegmentation("test")


# --- COCO: written shapes, in-memory shapes, any COCO file ------------------------------------------------


def test_write_shapes_coco_is_valid_coco(shapes_coco):
    root, path = shapes_coco
    assert path == os.path.join(root, "annotations", "instances_val.json")
    assert not [f for f in os.listdir(os.path.dirname(path)) if f != "instances_val.json"]  # no temp file left
    coco = quiet(COCO, path)
    assert sorted(coco.cats) == [1, 2, 3, 4] and [coco.cats[i]["name"] for i in (1, 2, 3, 4)] == list(SHAPES_CLASSES)
    assert len(coco.imgs) == 6
    for image_id, info in coco.imgs.items():
        assert (info["height"], info["width"]) == (64, 64)
        image = np.array(Image.open(os.path.join(root, "val", info["file_name"])))
        raw, instances = shapes_sample(64, 7, image_id - 1)  # val of seed 3 -> generator seed 7
        assert np.array_equal(image, raw)
        anns = coco.imgToAnns[image_id]
        assert [a["category_id"] for a in anns] == [i["category_id"] for i in instances]
        for ann, inst in zip(anns, instances):
            decoded = mask_util.decode(ann["segmentation"]).astype(bool)
            assert np.array_equal(decoded, inst["mask"])
            assert np.array_equal(coco.annToMask(ann).astype(bool), inst["mask"])
            x0, y0, x1, y1 = extent(inst["mask"])
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert ann["area"] == inst["mask"].sum() and ann["iscrowd"] == 0
    # the ground truth given back as detections scores a perfect AP, for boxes and for masks
    for iou_type in ("bbox", "segm"):
        key = "bbox" if iou_type == "bbox" else "segmentation"
        results = [dict(image_id=a["image_id"], category_id=a["category_id"], score=1.0, **{key: a[key]})
                   for a in coco.dataset["annotations"]]
        dt = quiet(coco.loadRes, results)
        ev = COCOeval(coco, dt, iou_type)
        quiet(ev.evaluate)
        quiet(ev.accumulate)
        quiet(ev.summarize)
        assert ev.stats[0] == pytest.approx(1.0), iou_type


def test_shapes_detection_agrees_with_the_written_file(shapes_coco):
    root, path = shapes_coco
    ds = ShapesDetection("val", img_size=64, num_samples=6, seed=3)
    assert not ds.train and ShapesDetection("train", 64, 2).train
    assert len(ShapesDetection("train")) == 500 and len(ShapesDetection("val")) == 50
    assert ds.classes == list(SHAPES_CLASSES) and ds.num_classes == 4
    assert ds.label_to_cat == {1: 1, 2: 2, 3: 3, 4: 4} and ds.image_ids == [1, 2, 3, 4, 5, 6]
    with open(path) as f:
        written = json.load(f)
    assert json.loads(json.dumps(ds.coco.dataset)) == written  # the same ground truth, in memory
    files = CocoDetection(os.path.join(root, "val"), path)
    assert files.image_ids == ds.image_ids and files.label_to_cat == ds.label_to_cat and files.classes == ds.classes
    for index in range(6):
        image, target = ds[index]
        image2, target2 = files[index]
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() <= image.max() <= 1
        assert torch.equal(image, image2)
        assert target["image_id"] == target2["image_id"] == ds.image_ids[index]
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape[1:] == (64, 64)
        for key in ("boxes", "labels", "masks"):
            assert torch.equal(target[key], target2[key]), key
        for box, m in zip(target["boxes"], target["masks"]):
            assert box.tolist() == extent(m)


def write_coco(root, images, annotations, categories):
    os.makedirs(os.path.join(root, "imgs"), exist_ok=True)
    for info in images:
        Image.new("RGB", (info["width"], info["height"]), (10, 200, 30)).save(os.path.join(root, "imgs",
                                                                                          info["file_name"]))
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return os.path.join(root, "imgs"), path


def test_coco_detection_polygons_crowds_empty_images_and_errors(tmp_path):
    images = [dict(id=10, file_name="a.png", height=40, width=50), dict(id=11, file_name="b.png", height=30, width=20)]
    categories = [dict(id=7, name="cat"), dict(id=3, name="dog")]
    square = [[10.0, 5.0, 30.0, 5.0, 30.0, 25.0, 10.0, 25.0]]  # a polygon of the square x 10..30, y 5..25
    annotations = [
        dict(id=1, image_id=10, category_id=7, bbox=[10, 5, 20, 20], area=400, iscrowd=0, segmentation=square),
        dict(id=2, image_id=10, category_id=3, bbox=[0, 0, 5, 5], area=25, iscrowd=1, segmentation=square),
        dict(id=3, image_id=10, category_id=3, bbox=[40, 30, 0.5, 4], area=2, iscrowd=0, segmentation=square),
    ]
    img_dir, ann = write_coco(str(tmp_path), images, annotations, categories)
    ds = CocoDetection(img_dir, ann)
    assert ds.classes == ["dog", "cat"] and ds.num_classes == 2 and ds.label_to_cat == {1: 3, 2: 7}
    assert ds.image_ids == [10, 11] and len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 40, 50) and target["image_id"] == 10
    assert target["labels"].tolist() == [2]  # the crowd and the degenerate box are left out
    assert target["boxes"].tolist() == [[10, 5, 30, 25]]
    m = target["masks"][0]
    assert m.shape == (40, 50) and m[15, 20] == 1 and m[0, 0] == 0 and m.sum() > 300
    image, target = ds[1]  # no annotations: empty targets of the right shapes
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, 30, 20)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert CocoDetection(img_dir, ann, num_samples=1).image_ids == [10]
    images_b, targets_b = collate_detection([ds[0], ds[1]])
    assert [i.shape[1:] for i in images_b] == [(40, 50), (30, 20)] and [t["image_id"] for t in targets_b] == [10, 11]

    with pytest.raises(DataError, match="ann_file"):
        CocoDetection(img_dir, str(tmp_path / "nope.json"))
    with pytest.raises(DataError, match="img_dir"):
        CocoDetection(str(tmp_path / "nope"), ann)
    bad = tmp_path / "bad"
    bad.mkdir()
    annotations[0] = dict(annotations[0], id=42, category_id=99)
    img_dir, ann = write_coco(str(bad), images, annotations, categories)
    with pytest.raises(DataError, match="annotation 42"):
        CocoDetection(img_dir, ann)


def test_coco_detection_flip_keeps_boxes_on_masks(shapes_coco):
    root, path = shapes_coco
    plain = CocoDetection(os.path.join(root, "val"), path)
    flipped = CocoDetection(os.path.join(root, "val"), path, train=True, hflip=1.0)
    for index in range(len(plain)):
        image, target = plain[index]
        image_f, target_f = flipped[index]
        assert torch.equal(image_f, image.flip(-1)) and torch.equal(target_f["masks"], target["masks"].flip(-1))
        w = image.shape[-1]
        for box, box_f, m_f in zip(target["boxes"], target_f["boxes"], target_f["masks"]):
            assert box_f.tolist() == [w - box[2], box[1], w - box[0], box[3]]
            assert box_f.tolist() == extent(m_f)
    shapes = ShapesDetection("val", 64, 6, seed=3, train=True, hflip=1.0)
    image, target = shapes[0]
    for box, m in zip(target["boxes"], target["masks"]):
        assert box.tolist() == extent(m)


# --- segmentation trees --------------------------------------------------------------------------------


def ade_pair(root, sub, name, size, labels):
    w, h = size
    rng = np.random.default_rng(len(name) + w)
    os.makedirs(os.path.join(root, "images", sub), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations", sub), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(root, "images", sub,
                                                                                       name + ".jpg"))
    Image.fromarray(labels.astype(np.uint8)).save(os.path.join(root, "annotations", sub, name + ".png"))


@pytest.fixture
def ade_tree(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[:, 10:20], labels[:, 20:] = 1, 150
    for i, size in enumerate([(30, 20), (24, 16), (40, 32)]):
        lab = labels if i == 0 else np.resize(np.arange(151, dtype=np.uint8), (size[1], size[0]))
        ade_pair(str(root), "training", f"ADE_train_{i:08d}", size, lab)
    for i, size in enumerate([(26, 18), (18, 26)]):
        ade_pair(str(root), "validation", f"ADE_val_{i:08d}", size, np.full((size[1], size[0]), 5, np.uint8))
    return tmp_path, root


def test_ade20k(ade_tree):
    parent, root = ade_tree
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ADE20K_CLASSES[-2:] == ("clock", "flag")
    for given in (str(root), str(parent)):
        train, val = ADE20K(given, "train"), ADE20K(given, "val")
        assert len(train) == 3 and len(val) == 2 and train.num_classes == 150 and train.classes == list(ADE20K_CLASSES)
        image, mask = train[0]
        assert image.shape == (3, 20, 30) and image.dtype == torch.uint8 and mask.dtype == torch.int64
        assert (mask[:, :10] == 255).all() and (mask[:, 10:20] == 0).all() and (mask[:, 20:] == 149).all()
        assert val[1][0].shape == (3, 26, 18) and (val[1][1] == 4).all()
        assert set(train[2][1].unique().tolist()) == set(range(150)) | {255}
    raw = ADE20K(str(root), "train", reduce_zero_label=False)
    assert raw.num_classes == 151 and raw.classes[0] == "other"
    mask = raw[0][1]
    assert (mask[:, :10] == 0).all() and (mask[:, 10:20] == 1).all() and (mask[:, 20:] == 150).all()
    assert len(ADE20K(str(root), "train", num_samples=2)) == 2


def test_ade20k_errors(ade_tree):
    _, root = ade_tree
    # a label above 150: found when the sample is read, naming the file and the value
    ade_pair(str(root), "training", "ADE_train_00000009", (20, 20), np.full((20, 20), 151, np.uint8))
    ds = ADE20K(str(root), "train")
    with pytest.raises(DataError, match=r"ADE_train_00000009\.png.*151"):
        ds[3]
    # an annotation of another size than its image: found when the sample is read
    Image.fromarray(np.ones((10, 10), np.uint8)).save(root / "annotations" / "training" / "ADE_train_00000009.png")
    with pytest.raises(DataError, match=r"ADE_train_00000009\.png.*10x10.*20x20"):
        ds[3]
    # an image without annotation: found when the set is built
    os.remove(root / "annotations" / "training" / "ADE_train_00000009.png")
    with pytest.raises(DataError, match=r"ADE_train_00000009\.jpg"):
        ADE20K(str(root), "train")
    # no annotations folder
    os.rename(root / "annotations", root / "moved")
    with pytest.raises(DataError, match="annotations"):
        ADE20K(str(root), "val")
    with pytest.raises(DataError, match="split"):
        ADE20K(str(root), "test")


def folder_tree(root, classes=("sky", "road", "car")):
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "masks", split), exist_ok=True)
        for name in names:
            Image.new("RGB", (12, 8), (1, 2, 3)).save(os.path.join(root, "images", split, name + ".png"))
            labels = np.zeros((8, 12), np.uint8)
            labels[:, 4:], labels[:, 8:] = 2, 255
            Image.fromarray(labels).save(os.path.join(root, "masks", split, name + ".png"))
    if classes:
        with open(os.path.join(root, "classes.txt"), "w") as f:
            f.write("\n".join(classes) + "\n")


def test_segmentation_folder(tmp_path):
    folder_tree(str(tmp_path))
    ds = SegmentationFolder(str(tmp_path), "train")
    assert ds.classes == ["sky", "road", "car"] and ds.num_classes == 3 and len(ds) == 2
    image, mask = ds[1]
    assert image.shape == (3, 8, 12) and mask.tolist()[0] == [0] * 4 + [2] * 4 + [255] * 4
    assert SegmentationFolder(str(tmp_path), "val", classes=["a", "b", "c", "d"]).num_classes == 4
    with pytest.raises(DataError, match=r"label 2\b.*2 classes"):
        SegmentationFolder(str(tmp_path), "val", classes=["a", "b"])[0]
    os.remove(tmp_path / "classes.txt")
    with pytest.raises(DataError, match="classes.txt"):
        SegmentationFolder(str(tmp_path), "val")


# --- transform ------------------------------------------------------------------------------------------

PALETTE = torch.tensor([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], dtype=torch.uint8)


def coloured_blocks(h, w, seed):
    """A label map of random 6x6 blocks and the image whose colour is the label's palette entry."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, ((h + 5) // 6, (w + 5) // 6), generator=g)
    labels = labels.repeat_interleave(6, 0).repeat_interleave(6, 1)[:h, :w]
    return PALETTE[labels].permute(2, 0, 1).contiguous(), labels


def test_segmentation_transform_keeps_image_and_mask_aligned():
    torch.manual_seed(0)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    t = SegmentationTransform(train=True, crop_size=32, scale=(0.5, 2.0))
    for seed in range(12):
        image, labels = coloured_blocks(30 + seed, 44, seed)
        out, mask = t(image, labels)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and mask.shape == (32, 32)
        assert mask.dtype == torch.int64
        colour = (out * std + mean) * 255
        # pixels whose 3x3 neighbourhood has one label, not on the crop's edge: away from interpolation borders
        padded = torch.nn.functional.pad(mask.float(), (1, 1, 1, 1), value=-1)
        same = torch.ones_like(mask, dtype=torch.bool)
        for dy in range(3):
            for dx in range(3):
                same &= padded[dy:dy + 32, dx:dx + 32] == mask
        for k in range(5):
            sel = same & (mask == k)
            if sel.any():
                assert (colour[:, sel] - PALETTE[k][:, None].float()).abs().max() < 12, (seed, k)
        sel = same & (mask == 255)
        if sel.any():
            assert colour[:, sel].abs().max() < 1e-3  # padding is black in the image where the mask is 255
        assert same.float().mean() > 0.3


def test_segmentation_transform_sizes_and_padding():
    image, labels = coloured_blocks(20, 30, 0)
    torch.manual_seed(0)
    out, mask = SegmentationTransform(train=True, crop_size=64, scale=(0.5, 0.5), hflip=0.0)(image, labels)
    # rescaled so the short side is 32: 32x48, padded at the bottom and right to 64x64
    assert out.shape == (3, 64, 64) and mask.shape == (64, 64)
    assert (mask[32:] == 255).all() and (mask[:, 48:] == 255).all() and (mask[:32, :48] != 255).all()
    assert (out[:, 32:] == out[:, -1:, -1:]).all() and (out[:, :, 48:] == out[:, -1:, -1:]).all()  # black
    out, mask = SegmentationTransform(train=False, crop_size=64, resize_short=48)(image, labels)
    assert out.shape == (3, 48, 72) and mask.shape == (48, 72) and set(mask.unique().tolist()) <= set(range(5))
    # nearest neighbour on pixel centres: output pixel i samples input pixel floor((i + 0.5) / 2.4)
    rows, cols = ((torch.arange(48) + 0.5) / 2.4).long(), ((torch.arange(72) + 0.5) / 2.4).long()
    assert torch.equal(mask, labels[rows][:, cols])
    out, mask = SegmentationTransform(train=False, crop_size=64)(image, labels)
    assert out.shape == (3, 20, 30) and torch.equal(mask, labels)
    with pytest.raises(ValueError, match="mask"):
        SegmentationTransform(train=False, crop_size=64)(image, labels[:5])


# --- entry point ------------------------------------------------------------------------------------------


def test_create_dense_dataset(tmp_path, ade_tree, shapes_coco):
    seg = create_dense_dataset("segmentation", "shapes", "val", img_size=48, num_samples=3)
    assert isinstance(seg, ShapesSegmentation) and len(seg) == 3 and seg[0][0].shape == (3, 48, 48)
    det = create_dense_dataset("detection", "shapes", "train", num_samples=2, seed=1)
    assert isinstance(det, ShapesDetection) and len(det) == 2 and det.img_size == 128 and det.train

    parent, root = ade_tree
    for given in (parent, root):
        ds = create_dense_dataset("segmentation", str(given), "val", num_samples=1)
        assert isinstance(ds, ADE20K) and len(ds) == 1
    folder = tmp_path / "folder"
    folder_tree(str(folder))
    assert isinstance(create_dense_dataset("segmentation", str(folder), "train"), SegmentationFolder)

    coco_root, _ = shapes_coco
    ds = create_dense_dataset("detection", coco_root, "val", num_samples=4)
    assert isinstance(ds, CocoDetection) and ds.image_ids == [1, 2, 3, 4] and not ds.train
    assert len(ds.coco.imgs) == 6  # the ground truth stays whole: evaluation keeps to image_ids
    # the 2017 naming: instances_val2017.json with val2017/
    coco17 = tmp_path / "coco17"
    (coco17 / "annotations").mkdir(parents=True)
    os.symlink(os.path.join(coco_root, "val"), coco17 / "val2017")
    os.symlink(os.path.join(coco_root, "annotations", "instances_val.json"),
               coco17 / "annotations" / "instances_val2017.json")
    ds = create_dense_dataset("detection", str(coco17), "val")
    assert ds.img_dir.endswith("val2017") and len(ds) == 6

    with pytest.raises(DataError, match="ADEChallengeData2016.*masks/val"):
        create_dense_dataset("segmentation", str(coco17), "val")
    with pytest.raises(DataError, match="COCO"):
        create_dense_dataset("detection", str(folder), "val")
    with pytest.raises(DataError, match="does-not-exist"):
        create_dense_dataset("segmentation", str(tmp_path / "does-not-exist"), "val")
    with pytest.raises(ValueError, match="task"):
        create_dense_dataset("classification", "shapes", "val")
