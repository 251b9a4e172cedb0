"""Video data for ``visionssm train --task video``: folders of video files, the official VideoMamba
frame sampling and test views, and a built-in long-range task that needs no download.

* a folder: ``DATA/train/<class>/<video>`` and ``DATA/val/<class>/<video>``, or Kinetics-style lists
  ``DATA/train.csv`` and ``DATA/val.csv`` (or ``.txt``), one ``path label`` a line (a comma or
  whitespace before the integer label; paths relative to DATA or absolute), with the class names in
  ``DATA/classes.txt`` (line i names label i; without it the classes are ``0 .. max label``);
* ``cue-probe``: generated clips whose label no single frame carries (see :class:`CueProbe`).

Frames are sampled as the official sparse loader does: training splits the video into ``num_frames``
equal segments and takes one random frame of each (TSN); testing takes ``num_clips`` evenly offset
clips, each spanning the whole video, and ``num_crops`` square crops along the long side, and the
task averages the softmax scores of the clips x crops views.

Decoding uses PyAV (``pip install av``, or ``pip install 'visionssm[video]'``); only reading video files
needs it, the built-in task does not.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from visionssm.data import DataDefaults, DataError

BUILTIN_VIDEO = ("cue-probe",)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")
LIST_EXTENSIONS = (".csv", ".txt")

__all__ = ["BUILTIN_VIDEO", "CUE_PROBE_COLOURS", "CUE_PROBE_MEAN", "CUE_PROBE_STD", "CueProbe", "VideoFolder",
           "VideoTransform", "create_video_dataset", "cue_probe_clip", "decode_frames", "is_video_file",
           "read_test_clips", "require_av", "segment_indices", "video_length"]


# --- decoding ----------------------------------------------------------------------------------------


def require_av():
    """The PyAV module, or an ImportError that says how to install it."""
    try:
        import av
    except ImportError:
        raise ImportError("reading video files needs PyAV (FFmpeg bindings): pip install av, or "
                          "pip install 'visionssm[video]'") from None
    return av


def _open(path: str):
    av = require_av()
    if not os.path.isfile(path):
        raise DataError(f"video {path!r} does not exist")
    try:
        container = av.open(path)
    except Exception as e:  # not a media file, unsupported container
        raise DataError(f"video {path!r} cannot be read ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"video {path!r} has no video stream")
    return container


def video_length(path: str) -> int:
    """Frames in the first video stream: the container's count, else the packets counted."""
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        try:
            n = sum(1 for packet in container.demux(stream) if packet.size)
        except Exception as e:
            raise DataError(f"video {path!r} cannot be read ({type(e).__name__}: {e})") from None
    if n == 0:
        raise DataError(f"video {path!r} holds no frames")
    return n


def decode_frames(path: str, indices) -> np.ndarray:
    """The frames at ``indices`` (any order, repeats allowed) as (len(indices), H, W, 3) uint8 RGB.

    Decoding stops after the last frame asked for. Frame numbers past the last decodable frame give
    that last frame, as the official loader clips them (a container's frame count can be too high).
    """
    indices = [int(i) for i in indices]
    wanted, got, last = set(indices), {}, None
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                last = i
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= max(indices):
                    break
        except Exception as e:  # a damaged stream
            raise DataError(f"video {path!r} cannot be decoded ({type(e).__name__}: {e})") from None
    if last is None:
        raise DataError(f"video {path!r} holds no frames")
    if last not in got:
        with _open(path) as container:  # the final frame, past every index asked for: read it again
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if i == last:
                    got[i] = frame.to_ndarray(format="rgb24")
    return np.stack([got[min(i, last)] for i in indices])


def segment_indices(length: int, num_segments: int, train: bool, clip: int = 0, num_clips: int = 1) -> np.ndarray:
    """Frame numbers of a clip of ``num_segments`` frames from a video of ``length`` frames.

    The video is split into equal segments (of ``(length - 1) / num_segments`` frames). Training takes
    one random frame of each (inclusive bounds; torch's random generator, so DataLoader workers
    differ); testing clip ``clip`` of ``num_clips`` takes the frame at fraction ``(clip + 1) /
    (num_clips + 1)`` into each segment (one clip: the segment midpoints). Short videos repeat frames.
    """
    if length < 1 or num_segments < 1:
        raise ValueError(f"length, num_segments: expected positive ints, got {length}, {num_segments}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip: expected 0 <= clip < num_clips={num_clips}, got {clip}")
    seg = max(0.0, (length - 1) / num_segments)
    starts = np.array([round(seg * i) for i in range(num_segments)])
    if train:
        ends = np.array([round(seg * (i + 1)) for i in range(num_segments)])
        idx = starts + (torch.rand(num_segments).numpy() * (ends - starts + 1)).astype(np.int64)
        idx = np.minimum(idx, ends)
    else:
        idx = starts + int((clip + 1) * seg / (num_clips + 1))
    return np.minimum(idx, length - 1)


def is_video_file(path: str) -> bool:
    """Whether ``path`` is named as a video (by its extension)."""
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


def read_test_clips(path: str, num_frames: int, num_clips: int = 1) -> torch.Tensor:
    """The ``num_clips`` test clips of one video file, as a folder's validation item holds them: uint8
    ``(num_clips, num_frames, H, W, 3)``. FFmpeg also reads a still image (PNG, JPEG, GIF) as a
    one-frame video; one is refused rather than repeated into a clip."""
    with _open(path) as container:
        fmt = container.format.name
    if fmt.endswith("_pipe") or fmt in ("image2", "gif"):
        raise DataError(f"{path}: expected a video file ({', '.join(VIDEO_EXTENSIONS[:4])}, ...), got an image "
                        f"(FFmpeg reads it as {fmt})")
    length = video_length(path)
    idx = np.concatenate([segment_indices(length, num_frames, False, k, num_clips) for k in range(num_clips)])
    frames = decode_frames(path, idx)
    return torch.from_numpy(frames).reshape(num_clips, num_frames, *frames.shape[1:])


# --- folders of videos -----------------------------------------------------------------------------


def _list_file(root: str, split: str) -> str | None:
    return next((p for p in (os.path.join(root, split + e) for e in LIST_EXTENSIONS) if os.path.isfile(p)), None)


def _read_list(path: str, root: str) -> list[tuple[str, int]]:
    """``path label`` lines (comma or whitespace before the label); blank lines and # comments skipped."""
    samples = []
    with open(path, newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(",", 1) if "," in line else line.rsplit(None, 1)
            name, label = (parts[0].strip(), parts[1].strip()) if len(parts) == 2 else ("", line)
            if not name or not label.lstrip("-").isdigit() or int(label) < 0:
                raise DataError(f"{path}:{n}: expected 'path label' with a label >= 0, got {line!r}")
            samples.append((name if os.path.isabs(name) else os.path.join(root, name), int(label)))
    if not samples:
        raise DataError(f"video list {path!r} names no videos")
    return samples


def _list_classes(root: str, samples: list[tuple[str, int]]) -> list[str]:
    """``root/classes.txt`` if there is one, else '0' .. the largest label of every list in ``root``."""
    names = os.path.join(root, "classes.txt")
    if os.path.isfile(names):
        with open(names) as f:
            classes = [line.strip() for line in f if line.strip()]
        if not classes:
            raise DataError(f"{names} names no classes")
        return classes
    top = max(label for _, label in samples)
    for entry in sorted(os.listdir(root)):
        if entry.endswith(LIST_EXTENSIONS) and entry != "classes.txt":
            top = max(top, *(label for _, label in _read_list(os.path.join(root, entry), root)))
    return [str(i) for i in range(top + 1)]


class VideoFolder(torch.utils.data.Dataset):
    """Videos of ``root`` for ``split``: from the list file ``root/<split>.csv|.txt`` when there is one,
    else from the class folders ``root/<split>/<class>/``.

    An item is ``(frames, label)``: uint8 frames ``(num_clips, num_frames, H, W, 3)``; one clip
    sampled at random per segment with ``train``, else ``num_clips`` test clips.
    ``num_frames`` may be set after construction (the task learns it from the model).
    """

    def __init__(self, root: str, split: str, num_frames: int | None = None, train: bool = False, num_clips: int = 1,
                 classes: list[str] | None = None, num_samples: int | None = None, seed: int = 0):
        if not os.path.isdir(root):
            raise DataError(f"data folder {root!r} does not exist")
        if num_clips < 1:
            raise ValueError(f"num_clips: expected an int >= 1, got {num_clips}")
        listed = _list_file(root, split)
        if listed:
            samples = _read_list(listed, root)
            found = _list_classes(root, samples)
            bad = [s for s in samples if s[1] >= len(found)]
            if bad:
                raise DataError(f"{listed}: label {bad[0][1]} of {bad[0][0]!r} is beyond the {len(found)} classes of "
                                f"{os.path.join(root, 'classes.txt')}")
        else:
            samples, found = self._scan(root, split)
        if classes is not None and list(classes) != found:
            raise DataError(f"data folder {root!r}: the classes of {split!r} {found[:6]} differ from the training "
                            f"split's {list(classes)[:6]}")
        if num_samples is not None and num_samples < len(samples):  # a random subset, not the first classes
            keep = np.sort(np.random.RandomState(seed % 2**32).permutation(len(samples))[:num_samples])
            samples = [samples[i] for i in keep]
        self.root, self.split, self.classes, self.samples = root, split, found, samples
        self.targets = [label for _, label in samples]
        self.num_frames, self.train, self.num_clips = num_frames, train, num_clips

    @staticmethod
    def _scan(root: str, split: str) -> tuple[list[tuple[str, int]], list[str]]:
        sub = os.path.join(root, split)
        if not os.path.isdir(sub):
            raise DataError(f"data folder {root!r} has neither a {split!r} sub-folder (one folder per class) nor a "
                            f"list {os.path.join(root, split + '.csv')} ('path label' lines)")
        classes = sorted(e.name for e in os.scandir(sub) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(f"data folder {sub!r} has no class sub-folders (expected {sub}/<class>/<video>)")
        samples = []
        for label, name in enumerate(classes):
            folder = os.path.join(sub, name)
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder, followlinks=True) for f in fs
                           if f.lower().endswith(VIDEO_EXTENSIONS))
            if not files:
                raise DataError(f"class folder {folder!r} holds no videos (looked for {', '.join(VIDEO_EXTENSIONS)})")
            samples += [(f, label) for f in files]
        return samples, classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        if not self.num_frames:
            raise ValueError("num_frames: expected the clip length to be set, got None")
        path, label = self.samples[index]
        length = video_length(path)
        clips = ([segment_indices(length, self.num_frames, True)] if self.train else
                 [segment_indices(length, self.num_frames, False, k, self.num_clips) for k in range(self.num_clips)])
        frames = decode_frames(path, np.concatenate(clips))
        return torch.from_numpy(frames).reshape(len(clips), self.num_frames, *frames.shape[1:]), label


# --- the built-in long-range task -----------------------------------------------------------------------


# the colour wheel of the squares: red -> green -> blue -> red; saturated, far from the greyish discs
CUE_PROBE_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 70, 230)}
# about the mean and standard deviation of its pixels (/ 255) at 4 to 8 frames, for the normalisation
CUE_PROBE_MEAN, CUE_PROBE_STD = (0.19, 0.19, 0.19), (0.14, 0.14, 0.14)


def cue_probe_clip(rng: np.random.Generator, label: int, num_frames: int, size: int) -> np.ndarray:
    """One cue-probe clip, (num_frames, size, size, 3) uint8.

    Every frame: a dark noisy background and two greyish discs gliding across it (bouncing off the
    edges). The first frame also shows a coloured square of half the frame's side (the cue), the
    last frame another (the probe), each anywhere; the probe's colour is the cue's next one around
    the colour wheel (red, green, blue) for ``label`` 0, its previous one for 1. The cue's colour is uniform, so is the
    probe's whatever the label, and nothing else depends on it: no single frame, even knowing which
    frame it is, says anything about the label. Each disc's path runs forwards or backwards in time
    at random, so the frames taken as a set, in no order, have the same law under either label: a
    model blind to frame order is at chance; only the order of cue and probe decides the label.
    """
    side = size // 2  # a quarter of the frame: a smaller square leaves too little colour in its patches
    colours = np.array(list(CUE_PROBE_COLOURS.values()), dtype=np.float64)
    cue = int(rng.integers(3))
    frames = np.clip(rng.normal(40, 12, (num_frames, size, size, 3)), 0, 255)
    yy, xx = np.mgrid[:size, :size]
    radius = size / 10
    for _ in range(2):
        pos = rng.uniform(radius, size - radius, 2)
        vel = rng.uniform(-1, 1, 2) * size / max(num_frames, 2)
        grey = rng.uniform(70, 150, 3)
        path = []
        for _ in range(num_frames):
            path.append(pos)
            pos = pos + vel
            for axis in range(2):  # bounce
                if not radius <= pos[axis] <= size - radius:
                    vel[axis] = -vel[axis]
                    pos[axis] = np.clip(pos[axis], radius, size - radius)
        if rng.random() < 0.5:  # time-reversal symmetric: the first and the last frame exchangeable
            path.reverse()
        for t, centre in enumerate(path):
            frames[t][(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2] = grey
    for t, colour in ((0, cue), (num_frames - 1, (cue + (1 if label == 0 else -1)) % 3)):
        top, left = rng.integers(size - side + 1, size=2)
        frames[t, top:top + side, left:left + side] = colours[colour]
    return frames.astype(np.uint8)


class CueProbe(torch.utils.data.Dataset):
    """The built-in ``cue-probe`` task: is the last frame's square the next colour around the wheel
    from the first frame's, or the previous one?

    Balanced (label = index mod 2). Solving it needs the first frame remembered until the last one
    (or the last until the first) and their order known: a model that sees one frame at a time, or
    that averages over frames, or that forgets over ``num_frames`` x tokens-per-frame steps, stays at
    chance (50%). Validation clips are fixed by (seed, split, index); with ``fresh`` (the training
    split) every read of an index draws a new clip from torch's random state (seeded per epoch and
    worker by the training loop, as augmentations are), so there is no fixed set to memorise.
    Items are ``(frames, label)`` with uint8 frames ``(1, num_frames, img_size, img_size, 3)``.
    """

    classes = ["next", "previous"]
    # normalised with its own statistics: ImageNet's would leave every token dominated by the dark
    # background's offset and the squares' colour a small part of it
    defaults = DataDefaults(img_size=32, mean=CUE_PROBE_MEAN, std=CUE_PROBE_STD)

    def __init__(self, split: str = "train", num_frames: int | None = None, img_size: int = 32,
                 num_samples: int | None = None, seed: int = 0, fresh: bool = False):
        if img_size < 16:
            raise ValueError(f"img_size: expected at least 16 for cue-probe, got {img_size}")
        self.split, self.img_size, self.seed, self.fresh = split, img_size, seed, fresh
        self.num_frames = num_frames
        self.num_samples = num_samples or (5000 if split == "train" else 1000)
        self.targets = [i % 2 for i in range(self.num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not self.num_frames or self.num_frames < 2:
            raise ValueError(f"num_frames: expected at least 2 frames for cue-probe, got {self.num_frames}")
        draw = [int(torch.randint(2**62, ()))] if self.fresh else []
        rng = np.random.default_rng([self.seed % 2**32, zlib.crc32(self.split.encode()), index, *draw])
        frames = cue_probe_clip(rng, self.targets[index], self.num_frames, self.img_size)
        return torch.from_numpy(frames)[None], self.targets[index]


def create_video_dataset(data: str, split: str, num_frames: int | None = None, img_size: int | None = None,
                         num_samples: int | None = None, train: bool = False, num_clips: int = 1,
                         classes: list[str] | None = None, seed: int = 0):
    """``data`` is ``cue-probe`` or a folder (see the module docstring); ``num_samples`` keeps N samples
    (of a folder a random subset drawn with ``seed``, of cue-probe N generated ones)."""
    if num_samples is not None and num_samples < 1:
        raise DataError(f"num_samples: expected an int >= 1, got {num_samples}")
    if data == "cue-probe":
        if num_clips != 1:
            raise ValueError(f"--test-clips: cue-probe clips are generated at the clip length, one view each; "
                             f"got {num_clips} clips")
        return CueProbe(split, num_frames, img_size or 32, num_samples, seed, fresh=train)
    if os.path.isdir(data):
        return VideoFolder(data, split, num_frames, train, num_clips, classes, num_samples, seed)
    if os.sep in data or data.startswith((".", "~")):
        raise DataError(f"data folder {data!r} does not exist")
    raise DataError(f"--data: {data!r} is neither a built-in video data set {list(BUILTIN_VIDEO)} "
                    "nor an existing folder")


# --- transforms ----------------------------------------------------------------------------------------


class VideoTransform:
    """uint8 frames ``(clips, T, H, W, 3)`` (or one clip ``(T, H, W, 3)``) -> normalised float views.

    Training: one random-resized crop (``scale``, ``ratio``; the same box for every frame and clip)
    to ``size``, and a horizontal flip with probability ``hflip``. Evaluation: the short side resized
    to ``size``, then ``num_crops`` square crops spread evenly along the long side (1: the centre).
    ``resize=False`` leaves frames of the right size alone (the generated set). Resizing is bilinear,
    as the official loader's. Returns ``(3, T, size, size)`` for one view, else
    ``(clips * num_crops, 3, T, size, size)``, clip-major.
    """

    def __init__(self, size: int, train: bool, mean, std, num_crops: int = 1, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), hflip: float = 0.5):
        if num_crops < 1:
            raise ValueError(f"num_crops: expected an int >= 1, got {num_crops}")
        self.size, self.train, self.num_crops = size, train, num_crops
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() == 4:
            frames = frames[None]
        if frames.dim() != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected uint8 (clips, frames, height, width, 3), got {tuple(frames.shape)}")
        clips, t, h, w, _ = frames.shape
        x = frames.permute(0, 1, 4, 2, 3).reshape(clips * t, 3, h, w).float().div_(255)
        if self.train:
            top, left, ch, cw = RandomResizedCrop.get_params(x, self.scale, self.ratio)
            x = self._resize(x[..., top:top + ch, left:left + cw], (self.size, self.size))
            if self.hflip > 0 and torch.rand(()) < self.hflip:
                x = x.flip(-1)
            views = [x]
        else:
            scale = self.size / min(h, w)
            x = self._resize(x, (max(self.size, round(h * scale)), max(self.size, round(w * scale))))
            h, w = x.shape[-2:]
            views = []
            for k in range(self.num_crops):
                frac = 0.5 if self.num_crops == 1 else k / (self.num_crops - 1)
                top = round((h - self.size) * (frac if h > w else 0.5))
                left = round((w - self.size) * (frac if w >= h else 0.5))
                views.append(x[..., top:top + self.size, left:left + self.size])
        # (clips * T, 3, S, S) per crop -> (clips, crops, 3, T, S, S)
        x = torch.stack(views, 1).reshape(clips, t, len(views), 3, self.size, self.size).permute(0, 2, 3, 1, 4, 5)
        x = (x - self.mean) / self.std
        x = x.reshape(clips * len(views), 3, t, self.size, self.size)
        return x[0] if len(x) == 1 else x
