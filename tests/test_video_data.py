"""Video data: the built-in cue-probe generator, the official frame sampling, video folders and lists
decoded with PyAV (tiny videos written to tmp_path), and the clip transforms."""

import sys

import numpy as np
import pytest
import torch

from visionssm.data import DataError
from visionssm.video import (
    CUE_PROBE_COLOURS,
    CUE_PROBE_MEAN,
    CUE_PROBE_STD,
    CueProbe,
    VideoFolder,
    VideoTransform,
    create_video_dataset,
    decode_frames,
    require_av,
    segment_indices,
    video_length,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# --- cue-probe -------------------------------------------------------------------------------------


def test_cue_probe_is_deterministic_by_seed_and_split():
    a, b = CueProbe("train", 6, 32, 8, seed=3), CueProbe("train", 6, 32, 8, seed=3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(8))
    assert not torch.equal(a[0][0], CueProbe("train", 6, 32, 8, seed=4)[0][0])
    assert not torch.equal(a[0][0], CueProbe("val", 6, 32, 8, seed=3)[0][0])
    frames, label = a[5]
    assert frames.shape == (1, 6, 32, 32, 3) and frames.dtype == torch.uint8 and label == 1


def test_fresh_training_clips_are_new_at_every_read_and_follow_torch_seed():
    fresh = CueProbe("train", 4, 32, 8, seed=3, fresh=True)
    torch.manual_seed(0)
    first = [fresh[i][0] for i in range(8)]
    assert not any(torch.equal(first[i], fresh[i][0]) for i in range(8))  # a new clip at every read ...
    assert [fresh[i][1] for i in range(8)] == fresh.targets == [0, 1] * 4  # ... of the same label
    torch.manual_seed(0)
    assert all(torch.equal(first[i], fresh[i][0]) for i in range(8))  # reproducible from torch's seed
    # the training split of the task is fresh, validation fixed
    assert create_video_dataset("cue-probe", "train", 4, train=True).fresh
    assert not create_video_dataset("cue-probe", "val", 4).fresh


def test_cue_probe_labels_are_balanced():
    ds = CueProbe("train", 4, 32, 1000)
    assert ds.classes == ["next", "previous"]
    assert np.bincount(ds.targets).tolist() == [500] * 2
    assert len(CueProbe("train", 4)) == 5000 and len(CueProbe("val", 4)) == 1000


def square_colour(frames):
    """Per frame: the colour-wheel index (0..2) of the square it shows, -1 for none."""
    palette = torch.tensor(list(CUE_PROBE_COLOURS.values()), dtype=torch.uint8)
    counts = (frames[..., None, :] == palette).all(-1).flatten(-3, -2).sum(-2)  # (..., colours)
    return torch.where(counts.max(-1).values > 0, counts.argmax(-1), -1)


def table_rule_accuracy(features, labels):
    """Fit the best rule feature -> label (majority per feature value) on the first half, score the second."""
    n = len(labels) // 2
    rule = {}
    for f, y in zip(features[:n], labels[:n], strict=True):
        rule.setdefault(f, []).append(y)
    rule = {f: max(set(ys), key=ys.count) for f, ys in rule.items()}
    return np.mean([rule.get(f, -1) == y for f, y in zip(features[n:], labels[n:], strict=True)])


@pytest.fixture(scope="module")
def cue_probe_val():
    ds = CueProbe("val", 6, 32, 800, seed=1)
    return torch.stack([ds[i][0][0] for i in range(len(ds))]), list(ds.targets)  # (N, T, S, S, 3)


def test_no_single_frame_carries_the_label(cue_probe_val):
    frames, labels = cue_probe_val
    colour = square_colour(frames)  # (N, T)
    assert (colour[:, [0, -1]] >= 0).all() and (colour[:, 1:-1] == -1).all()
    palette = torch.tensor(list(CUE_PROBE_COLOURS.values()), dtype=torch.uint8)
    area = (frames[:, [0, -1], ..., None, :] == palette).all(-1).any(-1).sum((-2, -1))
    assert (area == 16 * 16).all()  # squares of half the frame's side, whole (drawn over the discs)
    # the normalisation the task uses is about the clips' own statistics
    pixels = frames.double().div(255).reshape(-1, 3)
    assert torch.allclose(pixels.mean(0), torch.tensor(CUE_PROBE_MEAN).double(), atol=0.02)
    assert torch.allclose(pixels.std(0), torch.tensor(CUE_PROBE_STD).double(), atol=0.03)
    # the colour of any one frame's square: a classifier of it stays at chance (50%) ...
    for t in range(6):
        assert table_rule_accuracy(colour[:, t].tolist(), labels) < 0.57, t
    for y in range(2):  # ... every colour as frequent under every label, first frame and last
        chosen = torch.tensor(labels) == y
        assert np.bincount(colour[chosen, 0].numpy(), minlength=3).min() >= 100, y
        assert np.bincount(colour[chosen, -1].numpy(), minlength=3).min() >= 100, y
    # while the first and the last frame together decide it: one step forwards or backwards around the wheel
    assert ((colour[:, -1] - colour[:, 0]) % 3 == 2).long().tolist() == labels
    # the rest of a frame carries nothing either: its mean colour per quadrant, coarsely, at chance too
    s = frames.shape[-2] // 2
    means = frames.float().reshape(len(labels), 6, 2, s, 2, s, 3).mean((3, 5))  # (N, T, 2, 2, 3)
    for t in (0, 3, 5):
        m = means[:, t].flatten(1)
        coarse = [tuple(v) for v in (m > m.median(0).values).int().tolist()]
        assert table_rule_accuracy(coarse, labels) < 0.57, t


def test_frames_in_no_order_carry_nothing(cue_probe_val):
    """What a frame-averaging model sees, the frames as a set, has the same law under both labels:
    the pair of square colours in no order is at chance, and the first and the last frame are
    exchangeable (each disc's path runs either way in time; without that, discs that bounced sit
    at a wall in the last frame, never in the first, and would give the order away)."""
    frames, labels = cue_probe_val
    colour = square_colour(frames)
    pairs = [tuple(sorted(p)) for p in colour[:, [0, -1]].tolist()]
    assert table_rule_accuracy(pairs, labels) < 0.57
    disc = (frames >= 70).all(-1).float()  # disc pixels; the noise and the saturated squares fall below
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    off_centre = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt()
    mean_off = (disc * off_centre).sum((-2, -1)) / disc.sum((-2, -1)).clamp_min(1)  # (N, T)
    assert abs(mean_off[:, 0].mean() - mean_off[:, -1].mean()) < 0.3


def test_cue_probe_needs_two_frames_and_room():
    with pytest.raises(ValueError, match="num_frames: expected at least 2 frames"):
        CueProbe("val", 1, 32, 4)[0]
    with pytest.raises(ValueError, match="img_size: expected at least 16"):
        CueProbe("val", 4, 8)


# --- frame sampling ----------------------------------------------------------------------------------


def test_training_takes_one_random_frame_per_segment():
    torch.manual_seed(0)
    seen = np.stack([segment_indices(100, 8, train=True) for _ in range(300)])
    seg = 99 / 8
    for i in range(8):
        assert seen[:, i].min() >= round(seg * i) and seen[:, i].max() <= round(seg * (i + 1))
        assert len(set(seen[:, i])) > 6  # every frame of the segment is drawn, not one
    assert (np.diff(seen, axis=1) >= 0).all()


def test_test_clips_are_evenly_offset_and_span_the_video():
    mid = segment_indices(100, 8, train=False)
    assert mid.tolist() == [6, 18, 31, 43, 56, 68, 80, 93]  # segment starts + 12.375 / 2
    clips = np.stack([segment_indices(100, 8, False, k, 4) for k in range(4)])
    assert (np.diff(clips, axis=0) > 0).all() and clips.min() >= 0 and clips.max() <= 99
    assert clips[:, 0].tolist() == [2, 4, 7, 9]  # (k + 1) / 5 of 12.375
    short = segment_indices(3, 8, train=False)
    assert short.max() <= 2 and len(short) == 8  # short videos repeat frames
    assert segment_indices(1, 4, train=True).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="clip: expected 0 <= clip < num_clips=2"):
        segment_indices(10, 4, False, 2, 2)


# --- decoding and folders --------------------------------------------------------------------------


def write_video(path, num_frames=12, size=(24, 32), codec="mpeg4", step=20, fps=10):
    """A video whose frame i is a flat grey of level step * i."""
    av = pytest.importorskip("av")
    pix = "yuv444p" if codec == "ffv1" else "yuv420p"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], pix
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), step * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def levels(frames, step=20):
    return (frames.float().mean(dim=(-3, -2, -1)) / step).round().long()


@pytest.mark.parametrize("codec,ext", [("mpeg4", "mp4"), ("ffv1", "mkv")])
def test_decode_frames_at_indices(tmp_path, codec, ext):
    path = write_video(tmp_path / f"v.{ext}", codec=codec)
    assert video_length(path) == 12  # the mkv's container has no frame count: packets are counted
    frames = decode_frames(path, [7, 0, 3, 3, 11])
    assert frames.shape == (5, 24, 32, 3) and frames.dtype == np.uint8
    assert levels(torch.from_numpy(frames)).tolist() == [7, 0, 3, 3, 11]
    assert levels(torch.from_numpy(decode_frames(path, [11, 40]))).tolist() == [11, 11]  # past the end: the last


def class_folder(root, split, per_class=2):
    for c in ("archery", "bowling"):
        (root / split / c).mkdir(parents=True)
        for i in range(per_class):
            write_video(root / split / c / f"{c}{i}.mp4", num_frames=10 + i)


def test_video_folder_with_class_sub_folders(tmp_path):
    class_folder(tmp_path, "train")
    class_folder(tmp_path, "val", per_class=1)
    ds = VideoFolder(str(tmp_path), "train", num_frames=4, train=True)
    assert ds.classes == ["archery", "bowling"] and ds.targets == [0, 0, 1, 1] and len(ds) == 4
    torch.manual_seed(0)
    frames, label = ds[3]
    assert frames.shape == (1, 4, 24, 32, 3) and label == 1
    got = levels(frames[0]).tolist()
    assert got == sorted(got) and all(round(2.5 * i) <= g <= round(2.5 * (i + 1)) for i, g in enumerate(got))
    test = VideoFolder(str(tmp_path), "val", 4, train=False, num_clips=2, classes=ds.classes)
    frames, label = test[1]
    assert frames.shape == (2, 4, 24, 32, 3)
    assert levels(frames[0]).tolist() == [0, 2, 4, 7] and levels(frames[1]).tolist() == [1, 3, 5, 8]  # round half even
    sub = create_video_dataset(str(tmp_path), "train", 4, num_samples=3, seed=0)
    assert len(sub) == 3 and sub.classes == ds.classes


def test_video_lists_csv_and_txt(tmp_path):
    for i in range(3):
        write_video(tmp_path / f"clip {i}.mp4", num_frames=8)
    (tmp_path / "train.csv").write_text("clip 0.mp4,2\nclip 1.mp4,0\n\n# a comment\n")
    (tmp_path / "val.txt").write_text(f"{tmp_path / 'clip 2.mp4'} 1\n")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    train = create_video_dataset(str(tmp_path), "train", 4, train=True)
    assert train.classes == ["a", "b", "c"] and train.targets == [2, 0]
    val = create_video_dataset(str(tmp_path), "val", 4, classes=train.classes)
    assert val.targets == [1] and val[0][0].shape == (1, 4, 24, 32, 3)
    (tmp_path / "classes.txt").unlink()
    assert create_video_dataset(str(tmp_path), "val", 4).classes == ["0", "1", "2"]  # labels of every list
    (tmp_path / "val.txt").write_text("clip 2.mp4 one\n")
    with pytest.raises(DataError, match=r"val.txt:1: expected 'path label'"):
        create_video_dataset(str(tmp_path), "val", 4)


def test_unusable_data_is_refused_with_the_path(tmp_path):
    with pytest.raises(DataError, match="neither a built-in video data set"):
        create_video_dataset("kinetics", "train")
    with pytest.raises(DataError, match="does not exist"):
        create_video_dataset(str(tmp_path / "nope"), "train")
    with pytest.raises(DataError, match="has neither a 'train' sub-folder .* nor a list"):
        create_video_dataset(str(tmp_path), "train")
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no videos"):
        create_video_dataset(str(tmp_path), "train")
    pytest.importorskip("av")
    (tmp_path / "train" / "empty" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    ds = create_video_dataset(str(tmp_path), "train", 4)
    with pytest.raises(DataError, match="broken.mp4.*cannot be read"):
        ds[0]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.csv").write_text("x.mp4,5\n")
    (tmp_path / "bad" / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="label 5 .* beyond the 2 classes"):
        create_video_dataset(str(tmp_path / "bad"), "train")
    (tmp_path / "bad" / "train.csv").write_text("x.mp4,1\n")
    with pytest.raises(DataError, match="x.mp4' does not exist"):
        create_video_dataset(str(tmp_path / "bad"), "train", 4)[0]
    with pytest.raises(ValueError, match="--test-clips: cue-probe"):
        create_video_dataset("cue-probe", "val", 4, num_clips=2)


def test_missing_pyav_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"pip install av"):
        require_av()


# --- transforms ----------------------------------------------------------------------------------------


def test_train_transform_crops_every_frame_alike():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (40, 60, 3), dtype=torch.uint8)
    clip = frame.expand(5, 40, 60, 3)[None]
    out = VideoTransform(16, True, MEAN, STD, hflip=0.5)(clip)
    assert out.shape == (3, 5, 16, 16) and out.dtype == torch.float32
    assert all(torch.equal(out[:, 0], out[:, t]) for t in range(5))


def test_eval_transform_resizes_the_short_side_and_takes_crops_along_the_long_one():
    ramp = torch.arange(64).repeat_interleave(4).clamp(max=255).to(torch.uint8)  # 256 wide, brighter to the right
    clip = ramp.view(1, 1, 256, 1).expand(2, 3, 32, 256, 3).clone()  # 2 clips, 3 frames, 32 x 256
    single = VideoTransform(16, False, (0, 0, 0), (1, 1, 1))(clip[:1])
    assert single.shape == (3, 3, 16, 16)
    views = VideoTransform(16, False, (0, 0, 0), (1, 1, 1), num_crops=3)(clip)
    assert views.shape == (6, 3, 3, 16, 16)  # 2 clips x 3 crops, clip-major
    left, centre, right = (views[k].mean().item() for k in range(3))
    assert left < centre < right and abs(centre - single.mean().item()) < 1e-6
    assert torch.equal(views[:3], views[3:])
    same = VideoTransform(32, False, MEAN, STD)(clip[:1, :, :, :32])
    assert torch.allclose(same[:, 0], (clip[0, 0, :, :32].permute(2, 0, 1) / 255 - 0.5) / 0.25)
    with pytest.raises(ValueError, match=r"frames: expected uint8 \(clips, frames, height, width, 3\)"):
        VideoTransform(16, False, MEAN, STD)(torch.zeros(2, 3, 8, 8))
