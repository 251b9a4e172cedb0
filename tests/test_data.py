"""Data sets: digits (fixed split), pathfinder (deterministic, labels checked by flood fill), image folders."""

import numpy as np
import pytest
from PIL import Image

from visionssm.data import DataError, Digits, ImageFolder, Pathfinder, create_dataset, pathfinder_sample


def components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean image (an independent flood fill, not the generator's)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    current = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        current += 1
        labels[start] = current
        queue = [start]
        while queue:
            y, x = queue.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = current
                        queue.append((ny, nx))
    return labels


def close_gaps(image: np.ndarray, radius: int) -> np.ndarray:
    """Lit pixels grown by ``radius`` in every direction (joins the dashes of one curve)."""
    lit = image > 0
    out = lit.copy()
    h, w = lit.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
                lit[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.mark.parametrize("size", [32, 64])
def test_pathfinder_labels_agree_with_a_flood_fill(size):
    radius = max(1, round(0.6 * size / 32))  # half the widest dash gap, well under the curves' spacing
    for index in range(12):
        image, label, (a, b) = pathfinder_sample(size, seed=7, index=index)
        assert image.shape == (size, size) and image.dtype == np.uint8 and set(np.unique(image)) <= {0, 255}
        assert image[a] and image[b]  # both markers are drawn
        labels = components(close_gaps(image, radius))
        assert (labels[a] == labels[b]) == bool(label), (size, index, label)
        # the picture is more than the markers: curves of several components
        assert len(np.unique(labels)) - 1 >= (2 if label else 3)


def test_pathfinder_is_deterministic_by_seed_and_balanced():
    a, la, ma = pathfinder_sample(48, seed=1, index=5)
    b, lb, mb = pathfinder_sample(48, seed=1, index=5)
    c, _, _ = pathfinder_sample(48, seed=2, index=5)
    assert np.array_equal(a, b) and la == lb and ma == mb
    assert not np.array_equal(a, c)
    ds = Pathfinder("train", img_size=32, num_samples=10, seed=3)
    again = Pathfinder("train", img_size=32, num_samples=10, seed=3)
    val = Pathfinder("val", img_size=32, num_samples=10, seed=3)
    assert np.array_equal(ds.images, again.images) and not np.array_equal(ds.images, val.images)
    assert ds.targets == [0, 1] * 5
    image, label = ds[3]
    assert image.size == (32, 32) and image.mode == "RGB" and label == 1
    assert pathfinder_sample(256, seed=0, index=0)[0].shape == (256, 256)
    for bad in (31, 257, 64.0):
        with pytest.raises(DataError, match="from 32 to 256"):
            pathfinder_sample(bad, seed=0, index=0)


def test_digits_split_is_fixed():
    train, val = Digits("train"), Digits("val")
    assert (len(train), len(val)) == (1497, 300)
    assert train.classes == [str(i) for i in range(10)] and sorted(set(val.targets)) == list(range(10))
    assert np.array_equal(Digits("val").images, val.images)
    image, label = val[0]
    assert image.size == (8, 8) and image.mode == "RGB" and 0 <= label <= 9
    assert val.images.max() == 255
    small = create_dataset("digits", "train", num_samples=50)
    assert len(small) == 50 and small.classes == train.classes and small.defaults.img_size == 32
    with pytest.raises(DataError, match="split expected 'train' or 'val'"):
        Digits("test")


def make_folder(root, classes, per_class=2):
    for split in ("train", "val"):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.new("L" if j else "RGB", (10 + j, 12), color=40 * i).save(root / split / name / f"{j}.png")


def test_image_folder_reads_train_and_val(tmp_path):
    make_folder(tmp_path, ["cat", "dog"])
    train = create_dataset(str(tmp_path), "train")
    val = create_dataset(str(tmp_path), "val", classes=train.classes)
    assert train.classes == ["cat", "dog"] and len(train) == len(val) == 4
    image, label = train[3]
    assert image.mode == "RGB" and label == 1


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="data folder .*nowhere.* does not exist"):
        create_dataset(str(tmp_path / "nowhere"), "train")
    with pytest.raises(DataError, match="neither a built-in data set"):
        create_dataset("cifar11", "train")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="has no 'train' sub-folder"):
        create_dataset(str(tmp_path / "flat"), "train")
    make_folder(tmp_path / "d", ["cat", "dog"])
    (tmp_path / "d" / "train" / "emu").mkdir()
    (tmp_path / "d" / "train" / "emu" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*emu.* holds no images"):
        create_dataset(str(tmp_path / "d"), "train")
    (tmp_path / "d" / "train" / "emu" / "notes.txt").unlink()
    (tmp_path / "d" / "train" / "emu").rmdir()
    (tmp_path / "d" / "val" / "cow").mkdir()
    with pytest.raises(DataError, match=r"classes differ .*not in train: \['cow'\]"):
        create_dataset(str(tmp_path / "d"), "val", classes=["cat", "dog"])
    (tmp_path / "e" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolder(str(tmp_path / "e" / "train"))
